import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';

export const ROOT = path.resolve(__dirname, '../..');

/**
 * Runs first in every child: it kills itself once re-parented, i.e. as soon as the bench process is gone,
 * however it ended (as test/support/system.ts does for its children).
 */
const ORPHAN_GUARD = 'const p=process.ppid;setInterval(()=>{if(process.ppid!==p)process.kill(process.pid,"SIGKILL")},500).unref();';

export interface ChildOptions {
  /** Label for logs. */
  name: string;
  /** Path of the TypeScript entry, relative to the project root. */
  entry: string;
  env?: Record<string, string>;
  /** Extra node flags (e.g. --cpu-prof). */
  nodeArgs?: string[];
  /** Arguments passed to the entry (process.argv.slice(2) there... see argvOf). */
  args?: string[];
  /** Open an IPC channel (process.send in the child). */
  ipc?: boolean;
  /** Echo the child's output lines to stderr as they come. */
  echo?: boolean;
}

/** A child process running a TypeScript entry with `node -r tsx/cjs`, its output tail kept for errors. */
export class Child {
  readonly proc: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private lines: string[] = [];
  private waiters: { match: (line: string) => boolean; resolve: (line: string) => void }[] = [];
  private messageWaiters: { match: (m: any) => boolean; resolve: (m: any) => void; reject: (e: Error) => void }[] = [];
  private done = false;
  private unclaimed: any[] = [];

  constructor(readonly opts: ChildOptions) {
    const script = `${ORPHAN_GUARD}process.argv.splice(1,0,${JSON.stringify(opts.entry)});require(${JSON.stringify(path.join(ROOT, opts.entry))});`;
    this.proc = spawn(process.execPath, [...(opts.nodeArgs ?? []), '-r', 'tsx/cjs', '-e', script, ...(opts.args ?? [])], {
      cwd: ROOT,
      env: { PATH: process.env.PATH, HOME: process.env.HOME, TMPDIR: process.env.TMPDIR, ...opts.env },
      stdio: opts.ipc ? ['ignore', 'pipe', 'pipe', 'ipc'] : ['ignore', 'pipe', 'pipe'],
    });
    for (const stream of [this.proc.stdout!, this.proc.stderr!]) {
      let partial = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        const parts = (partial + chunk).split('\n');
        partial = parts.pop() ?? '';
        for (const line of parts) this.onLine(line);
      });
    }
    this.proc.on('message', (m) => {
      const i = this.messageWaiters.findIndex((w) => w.match(m));
      if (i >= 0) this.messageWaiters.splice(i, 1)[0].resolve(m);
      else if (this.unclaimed.push(m) > 100) this.unclaimed.shift();
    });
    this.exited = new Promise((resolve) => {
      this.proc.once('exit', (code, signal) => {
        this.done = true;
        const err = new Error(`${opts.name} exited (code ${code}, signal ${signal}):\n${this.tail(40)}`);
        for (const w of this.messageWaiters.splice(0)) w.reject(err);
        resolve({ code, signal });
      });
      this.proc.on('error', (e) => {
        // Spawn failures end the child; IPC send errors (channel closed while it exits) are only reported.
        if (this.proc.pid !== undefined && this.proc.exitCode === null && this.proc.signalCode === null && !this.done) {
          this.onLine(`[child process error: ${e.message}]`);
          return;
        }
        this.done = true;
        for (const w of this.messageWaiters.splice(0)) w.reject(e);
        resolve({ code: null, signal: null });
      });
    });
  }

  get pid(): number | undefined {
    return this.proc.pid;
  }

  get running(): boolean {
    return !this.done;
  }

  private onLine(line: string): void {
    if (!line) return;
    const clipped = line.length > 2000 ? `${line.slice(0, 2000)}… [${line.length - 2000} more]` : line;
    this.lines.push(clipped);
    if (this.lines.length > 400) this.lines.splice(0, this.lines.length - 400);
    if (this.opts.echo) process.stderr.write(`  ${this.opts.name}| ${clipped}\n`);
    for (const w of [...this.waiters]) {
      if (w.match(line)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  }

  tail(n = 60): string {
    return this.lines.slice(-n).map((l) => `    ${this.opts.name}| ${l}`).join('\n');
  }

  /** Resolves with the first output line matching; rejects when the child exits first or after `timeoutMs`. */
  waitForLine(match: (line: string) => boolean, timeoutMs: number, what: string): Promise<string> {
    const seen = this.lines.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.opts.name}: no ${what} after ${timeoutMs} ms:\n${this.tail(40)}`)), timeoutMs);
      const waiter = {
        match,
        resolve: (line: string) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      this.waiters.push(waiter);
      void this.exited.then(() => {
        clearTimeout(timer);
        reject(new Error(`${this.opts.name} exited while waiting for ${what}:\n${this.tail(40)}`));
      });
    });
  }

  /** Resolves with the first IPC message matching (e.g. the child's `{ready: true}`). */
  waitForMessage<T = any>(match: (m: any) => boolean, timeoutMs: number, what: string): Promise<T> {
    const seen = this.unclaimed.findIndex(match);
    if (seen >= 0) return Promise.resolve(this.unclaimed.splice(seen, 1)[0] as T);
    if (this.done) return Promise.reject(new Error(`${this.opts.name} is not running:\n${this.tail(40)}`));
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.opts.name}: no ${what} after ${timeoutMs} ms:\n${this.tail(40)}`)), timeoutMs);
      this.messageWaiters.push({
        match,
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
    });
  }

  /** Sends a command over IPC and resolves with the reply carrying the same id. */
  request<T = any>(cmd: Record<string, unknown>, timeoutMs: number): Promise<T> {
    if (this.done) return Promise.reject(new Error(`${this.opts.name} is not running:\n${this.tail(40)}`));
    const id = Math.random().toString(36).slice(2);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.opts.name}: no reply to ${String(cmd.cmd)} after ${timeoutMs} ms:\n${this.tail(40)}`)), timeoutMs);
      this.messageWaiters.push({
        match: (m) => m && m.id === id,
        resolve: (m) => {
          clearTimeout(timer);
          if (m.error) reject(new Error(`${this.opts.name}: ${String(cmd.cmd)} failed: ${m.error}`));
          else resolve(m.result as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.proc.send({ ...cmd, id });
    });
  }

  /** SIGTERM (or `signal`), then SIGKILL after `graceMs`; resolves once gone. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 10_000): Promise<void> {
    if (this.done) return;
    this.proc.kill(signal);
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

/** In a child started with `ipc`: answers commands `{cmd, id, ...}` with `{id, result}` or `{id, error}`. */
export function serveCommands(handlers: Record<string, (msg: any) => Promise<unknown> | unknown>): void {
  process.on('message', (msg: any) => {
    const handler = handlers[msg?.cmd];
    if (!handler) {
      process.send?.({ id: msg?.id, error: `unknown command ${String(msg?.cmd)}` });
      return;
    }
    Promise.resolve()
      .then(() => handler(msg))
      .then(
        (result) => process.send?.({ id: msg.id, result }),
        (err) => process.send?.({ id: msg.id, error: String((err as Error)?.stack ?? err) }),
      );
  });
}
