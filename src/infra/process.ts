import { spawn } from 'node:child_process';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** Log sink used by the infra helpers; `undefined` means quiet. */
export type InfraLogger = (msg: string) => void;

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Asks the kernel for a free TCP port on `host` by binding port 0 and releasing it. */
export function getFreePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ port: 0, host, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('could not allocate a free port'))));
    });
  });
}

/** True when nothing accepts TCP connections on `host:port`. */
export function isPortFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host });
    const done = (free: boolean) => {
      socket.removeAllListeners();
      socket.destroy();
      resolve(free);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('connect', () => done(false));
    socket.once('error', (err: NodeJS.ErrnoException) => done(err.code === 'ECONNREFUSED'));
  });
}

/** True when a process with this pid exists (EPERM means it exists but belongs to someone else). */
export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Sends `signal` to `pid`, ignoring a process that is already gone. */
export function trySignal(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

/** Polls until `pid` is gone; resolves false if it is still alive after `timeoutMs`. */
export async function waitForPidExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isProcessAlive(pid)) {
    if (Date.now() >= deadline) return false;
    await sleep(50);
  }
  return true;
}

/**
 * Stops a process by pid: `signal`, then SIGKILL after `graceMs`.
 * Resolves once it is gone (or after a final short wait following SIGKILL).
 */
export async function terminatePid(pid: number, signal: NodeJS.Signals, graceMs: number): Promise<void> {
  if (!isProcessAlive(pid)) return;
  trySignal(pid, signal);
  if (await waitForPidExit(pid, graceMs)) return;
  trySignal(pid, 'SIGKILL');
  await waitForPidExit(pid, 5000);
}

/**
 * Polls `probe` until it returns a value other than `undefined`.
 * `check` runs before every attempt and may throw to abort early (e.g. the server process died).
 * @throws Error naming `what` and the last probe error after `timeoutMs`.
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  opts: { timeoutMs: number; intervalMs?: number; check?: () => void },
): Promise<T> {
  const deadline = Date.now() + opts.timeoutMs;
  let lastError: unknown;
  for (;;) {
    opts.check?.();
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      lastError = err;
    }
    opts.check?.();
    if (Date.now() >= deadline) {
      const reason = lastError instanceof Error ? `: ${lastError.message}` : '';
      throw new Error(`timed out after ${opts.timeoutMs} ms waiting for ${what}${reason}`);
    }
    await sleep(opts.intervalMs ?? 200);
  }
}

/** Keeps the last `max` characters written to it, for error messages about a child process. */
export class OutputTail {
  private text = '';
  constructor(private readonly max = 8000) {}

  push(chunk: string): void {
    this.text += chunk;
    if (this.text.length > this.max) this.text = this.text.slice(this.text.length - this.max);
  }

  toString(): string {
    return this.text.trim();
  }
}

// Runs detached in its own node process. Argument layout: parentPid graceMs pid:signal...
// The parent counts as dead once this process is re-parented (ppid changes) or the pid is gone, so a
// zombie parent that nobody reaped still triggers the cleanup.
const WATCHDOG_SOURCE = `
const [parentArg, graceArg, ...specs] = process.argv.slice(1);
const parent = Number(parentArg), grace = Number(graceArg), firstPpid = process.ppid;
const targets = specs.map((s) => { const [pid, signal] = s.split(':'); return { pid: Number(pid), signal }; });
process.title = 'infra-watchdog ' + specs.join(' ');
const alive = (pid) => { try { process.kill(pid, 0); return true; } catch (e) { return e.code === 'EPERM'; } };
const send = (pid, sig) => { try { process.kill(pid, sig); } catch {} };
const timer = setInterval(() => {
  const live = targets.filter((t) => alive(t.pid));
  if (live.length === 0) process.exit(0);
  if (process.ppid === firstPpid && alive(parent)) return;
  clearInterval(timer);
  for (const t of live) send(t.pid, t.signal);
  const deadline = Date.now() + grace;
  setInterval(() => {
    const rest = live.filter((t) => alive(t.pid));
    if (rest.length === 0) process.exit(0);
    if (Date.now() > deadline) { for (const t of rest) send(t.pid, 'SIGKILL'); process.exit(0); }
  }, 100);
}, 500);
`;

/** A cleanup guard around a child process; release it once the child has been stopped normally. */
export interface ProcessGuard {
  release(): void;
}

/**
 * Makes sure `pid` dies with this Node process, however this process ends:
 * - `process.exit` or the end of the event loop: an `exit` hook sends `signal`;
 * - a fatal signal with no handler, including SIGKILL (no hook runs): a small detached watchdog process notices
 *   within ~0.5 s, sends `signal`, and SIGKILLs after `graceMs`.
 * The watchdog exits by itself once the target is gone.
 */
export function guardChildProcess(pid: number, signal: NodeJS.Signals, graceMs = 10_000): ProcessGuard {
  const onExit = () => trySignal(pid, signal);
  process.on('exit', onExit);
  const watchdog = spawn(
    process.execPath,
    ['-e', WATCHDOG_SOURCE, String(process.pid), String(graceMs), `${pid}:${signal}`],
    { detached: true, stdio: 'ignore', env: {} },
  );
  watchdog.on('error', () => undefined);
  watchdog.unref();
  let released = false;
  return {
    release() {
      if (released) return;
      released = true;
      process.removeListener('exit', onExit);
      if (watchdog.pid !== undefined) trySignal(watchdog.pid, 'SIGKILL');
    },
  };
}

const OWNER_FILE = 'owner.pid';

/**
 * A temp directory `<tmpdir>/<prefix>XXXX` owned by this process, readable by the `postgres` OS user (embedded
 * Postgres runs as that user when we are root; mkdtemp's 0700 would lock it out). Directories of earlier runs
 * whose owner died without cleaning up (killed hard; their servers die with their watchdogs) are removed first.
 */
export function ownedTempDir(prefix: string): string {
  for (const name of fs.readdirSync(os.tmpdir())) {
    if (!name.startsWith(prefix)) continue;
    const dir = path.join(os.tmpdir(), name);
    try {
      const owner = Number(fs.readFileSync(path.join(dir, OWNER_FILE), 'utf8'));
      if (owner > 0 && !isProcessAlive(owner)) fs.rmSync(dir, { recursive: true, force: true });
    } catch {
      // not ours, or being created right now
    }
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, 0o755);
  fs.writeFileSync(path.join(dir, OWNER_FILE), String(process.pid));
  return dir;
}
