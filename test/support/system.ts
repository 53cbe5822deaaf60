import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { Client } from 'pg';
import { getFreePort } from '../../src/infra/process';
import { grpcServing, restHealthy } from '../../src/infra/probes';
import { createTestDatabase, dropTestDatabase, testChainEnv, testTemporalAddress, testTemporalNamespace } from './env';

/**
 * The whole system as separate processes — `src/main/migrate.ts`, `src/main/worker.ts`, `src/main/api.ts` —
 * against the shared test Postgres and Temporal dev server, for e2e tests that drive it over gRPC and REST
 * the way nodes and Engines do. Every system gets its own database, task queue and ports.
 */

const ROOT = path.resolve(__dirname, '../..');
const ENTRY = {
  migrate: 'src/main/migrate.ts',
  worker: 'src/main/worker.ts',
  api: 'src/main/api.ts',
} as const;
type Role = keyof typeof ENTRY;

/**
 * Runs before the entry in every child: the child kills itself once it is re-parented, i.e. as soon as the
 * test process is gone, however it ended (normal exit, crash, SIGKILL). An exit hook would not do: inside a
 * jest sandbox `process` is a copy whose 'exit' event never fires. Cheaper than a watchdog process per child.
 */
const ORPHAN_GUARD = 'const p=process.ppid;setInterval(()=>{if(process.ppid!==p)process.kill(process.pid,"SIGKILL")},500).unref();';

/** Output lines kept of all processes together; the oldest are dropped first. */
const MAX_LINES = 15_000;
/** Lines per process printed for a failed test. */
const PRINT_LINES = 300;
/** Characters kept of one output line (an error log may carry a whole request). */
const MAX_LINE = 2000;
const READY_TIMEOUT_MS = 60_000;
const STOP_GRACE_MS = 15_000;

export interface SystemOptions {
  /** Label of the database, task queue and output (defaults to the test file's name). */
  name?: string;
  /** Extra environment of the worker and API (config variables of src/config/index.ts). */
  env?: Record<string, string | number>;
}

export interface OutputLine {
  at: number;
  proc: string;
  text: string;
}

export interface RunningSystem {
  /** `127.0.0.1:port` of the gRPC API. */
  grpcAddress: string;
  /** `http://127.0.0.1:port` of the REST API. */
  restUrl: string;
  /** The system's own test database. */
  databaseUrl: string;
  taskQueue: string;
  /** The environment the worker and API run with. */
  env: Readonly<Record<string, string>>;
  /** Graceful stop (SIGTERM, SIGKILL after a grace period). */
  stopWorker(): Promise<void>;
  /** SIGKILL: no shutdown code runs. */
  killWorker(): Promise<void>;
  /** Starts a worker process (again); resolves once it polls. */
  startWorker(): Promise<void>;
  stopApi(): Promise<void>;
  killApi(): Promise<void>;
  /** Starts the API process (again) on the same ports; resolves once gRPC health and REST health answer. */
  startApi(): Promise<void>;
  /** Stops everything and drops the database. Safe to call twice. */
  stop(): Promise<void>;
  /** Captured output of every process, oldest first. */
  output(sinceMs?: number): OutputLine[];
  /** Runs `sql` on the system's database. */
  query<T extends Record<string, unknown> = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<T[]>;
}

const clip = (text: string) => (text.length > MAX_LINE ? `${text.slice(0, MAX_LINE)}… [${text.length - MAX_LINE} more characters]` : text);

/** One child process with its output captured line by line. */
class ManagedProcess {
  child?: ChildProcess;
  exited?: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private generation = 0;

  constructor(
    readonly role: Role,
    private readonly env: NodeJS.ProcessEnv,
    private readonly sink: (line: OutputLine) => void,
  ) {}

  get running(): boolean {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }

  start(): void {
    if (this.running) throw new Error(`${this.role} is already running`);
    this.generation += 1;
    const label = this.generation > 1 ? `${this.role}#${this.generation}` : this.role;
    // `node -r tsx/cjs` runs the TypeScript entry in this one process (the `tsx` CLI would add a parent
    // process that a SIGKILL would orphan); `-e` lets the guard run first without switching to the ESM loader.
    const script = `${ORPHAN_GUARD}require(${JSON.stringify(path.join(ROOT, ENTRY[this.role]))});`;
    const child = spawn(process.execPath, ['-r', 'tsx/cjs', '-e', script], {
      cwd: ROOT,
      env: this.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    for (const stream of [child.stdout!, child.stderr!]) {
      let partial = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        const lines = (partial + chunk).split('\n');
        partial = lines.pop() ?? '';
        for (const text of lines) if (text) this.sink({ at: Date.now(), proc: label, text: clip(text) });
      });
      stream.on('end', () => partial && this.sink({ at: Date.now(), proc: label, text: clip(partial) }));
    }
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.sink({ at: Date.now(), proc: label, text: `[process exited: code ${code}, signal ${signal}]` });
        resolve({ code, signal });
      });
      child.once('error', (err) => {
        this.sink({ at: Date.now(), proc: label, text: `[spawn error: ${err.message}]` });
        resolve({ code: null, signal: null });
      });
    });
  }

  /** Sends `signal`, then SIGKILL after `graceMs`; resolves once the process is gone. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = STOP_GRACE_MS): Promise<void> {
    const child = this.child;
    if (!child || !this.running) return;
    child.kill(signal);
    let timer: NodeJS.Timeout | undefined;
    const forced = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        child.kill('SIGKILL');
        resolve();
      }, graceMs);
    });
    await Promise.race([this.exited, forced]);
    clearTimeout(timer);
    await this.exited;
  }

}

function formatLines(lines: OutputLine[]): string {
  return lines.map((l) => `${new Date(l.at).toISOString().slice(11, 23)} ${l.proc.padEnd(9)} ${l.text}`).join('\n');
}

/**
 * Prints a system's captured output to stderr when a test (or a hook) of this file fails, and only then.
 * Uses jest-circus's event handlers, which live on the test file's global.
 */
function printOutputOnFailure(system: RunningSystem, label: string): () => void {
  const handlers = (globalThis as Record<symbol, unknown>)[Symbol.for('EVENT_HANDLERS')] as
    | Array<(event: { name: string; test?: { name: string; errors: unknown[] }; hook?: { type: string } }) => void>
    | undefined;
  if (!Array.isArray(handlers)) return () => undefined;
  let testStarted = 0;
  const handler: (typeof handlers)[number] = (event) => {
    if (event.name === 'test_start') testStarted = Date.now();
    const failedTest = event.name === 'test_done' && event.test && event.test.errors.length > 0;
    const failedHook = event.name === 'hook_failure';
    if (!failedTest && !failedHook) return;
    const what = failedTest ? `test "${event.test!.name}"` : `${event.hook?.type ?? 'a'} hook`;
    // For a failed test: what happened during it, plus a little context before.
    const since = failedTest ? testStarted - 2000 : 0;
    const byProc = new Map<string, OutputLine[]>();
    for (const line of system.output(since)) byProc.set(line.proc, [...(byProc.get(line.proc) ?? []), line]);
    const parts = [...byProc].map(([proc, lines]) => {
      const shown = lines.slice(-PRINT_LINES);
      const skipped = lines.length - shown.length;
      return `--- ${proc}${skipped ? ` (last ${shown.length} of ${lines.length} lines)` : ''} ---\n${formatLines(shown)}`;
    });
    process.stderr.write(`\n===== output of system "${label}" for failed ${what} =====\n${parts.join('\n')}\n===== end of output =====\n`);
  };
  handlers.push(handler);
  return () => {
    const i = handlers.indexOf(handler);
    if (i >= 0) handlers.splice(i, 1);
  };
}


const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Starts a fresh system: creates its database, runs the migrate process, then starts the worker and API
 * processes and resolves once the worker polls and the API answers gRPC health and REST /api/health.
 * Output of every process is captured and printed only for a failing test. Processes never outlive the test
 * process (see ORPHAN_GUARD).
 * @throws Error with the captured output when a process exits early or is not ready in time.
 */
export async function startSystem(opts: SystemOptions = {}): Promise<RunningSystem> {
  const label = (opts.name ?? currentTestFileName() ?? 'e2e').toLowerCase().replace(/[^a-z0-9_-]+/g, '-');
  const databaseUrl = await createTestDatabase(label);
  const taskQueue = `e2e-${label}-${randomBytes(3).toString('hex')}`;
  const [grpcPort, restPort] = [await getFreePort(), await getFreePort()];
  const grpcAddress = `127.0.0.1:${grpcPort}`;
  const restUrl = `http://127.0.0.1:${restPort}`;

  const env: Record<string, string> = {
    DATABASE_URL: databaseUrl,
    TEMPORAL_ADDRESS: testTemporalAddress(),
    TEMPORAL_NAMESPACE: testTemporalNamespace(),
    TEMPORAL_TASK_QUEUE: taskQueue,
    GRPC_HOST: '127.0.0.1',
    GRPC_PORT: String(grpcPort),
    REST_HOST: '127.0.0.1',
    REST_PORT: String(restPort),
    LOG_LEVEL: 'debug',
    JOB_HEARTBEAT_TIMEOUT_S: '3',
    JOB_REQUEUE_INTERVAL_S: '2',
    HEARTBEAT_FLUSH_MS: '300',
    NODE_ASSIGN_TIMEOUT_MS: '3000',
    CHAIN_CONFIRM_TIMEOUT_MS: '10000',
    ...testChainEnv(),
    ...Object.fromEntries(Object.entries(opts.env ?? {}).map(([k, v]) => [k, String(v)])),
  };
  const childEnv: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    TMPDIR: process.env.TMPDIR,
    ...env,
  };

  const lines: OutputLine[] = [];
  const sink = (line: OutputLine) => {
    lines.push(line);
    if (lines.length > MAX_LINES) lines.splice(0, lines.length - MAX_LINES);
  };
  const procs = {
    worker: new ManagedProcess('worker', childEnv, sink),
    api: new ManagedProcess('api', childEnv, sink),
  };
  const output = (sinceMs = 0) => lines.filter((l) => l.at >= sinceMs);
  const failure = (message: string) =>
    new Error(`${message}\n----- output of system "${label}" -----\n${formatLines(lines.slice(-200))}`);

  /** Waits for `ready`, failing fast when `proc` exits. */
  async function awaitReady(proc: ManagedProcess, what: string, ready: () => Promise<boolean>): Promise<void> {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      if (!proc.running) throw failure(`${proc.role} exited while starting`);
      if (await ready()) return;
      if (Date.now() > deadline) throw failure(`${what} not ready after ${READY_TIMEOUT_MS} ms`);
      await sleep(100);
    }
  }

  async function startWorker(): Promise<void> {
    const from = Date.now();
    procs.worker.start();
    // worker-app logs this once Worker.create (bundling, connecting) is done and run() is polling.
    await awaitReady(procs.worker, 'worker', async () =>
      output(from).some((l) => l.proc.startsWith('worker') && l.text.includes('"worker running"')),
    );
  }

  async function startApi(): Promise<void> {
    procs.api.start();
    await awaitReady(procs.api, 'API', async () => (await grpcServing(grpcAddress)) && (await restHealthy(restUrl)));
  }

  let client: Client | undefined;
  async function query<T extends Record<string, unknown>>(sql: string, params: unknown[] = []): Promise<T[]> {
    if (!client) {
      client = new Client({ connectionString: databaseUrl });
      await client.connect();
    }
    return (await client.query<T>(sql, params)).rows;
  }

  let stopped = false;
  let detach = () => undefined as void;

  async function stop(): Promise<void> {
    if (stopped) return;
    stopped = true;
    await Promise.all([procs.api.stop('SIGTERM', 5000), procs.worker.stop('SIGTERM', 5000)]);
    await client?.end().catch(() => undefined);
    await dropTestDatabase(databaseUrl).catch(() => undefined);
    // Keep printing output for failures in later hooks of this file; detach at the very end.
    detach();
  }

  const system: RunningSystem = {
    grpcAddress,
    restUrl,
    databaseUrl,
    taskQueue,
    env,
    stopWorker: () => procs.worker.stop(),
    killWorker: () => procs.worker.stop('SIGKILL'),
    startWorker,
    stopApi: () => procs.api.stop(),
    killApi: () => procs.api.stop('SIGKILL'),
    startApi,
    stop,
    output,
    query,
  };
  detach = printOutputOnFailure(system, label);

  try {
    const migrate = new ManagedProcess('migrate', childEnv, sink);
    migrate.start();
    const { code, signal } = await migrate.exited!;
    if (code !== 0) throw failure(`migrate failed (code ${code}, signal ${signal})`);
    await Promise.all([startWorker(), startApi()]);
  } catch (err) {
    await stop();
    throw err;
  }
  return system;
}

/**
 * Starts one system for the enclosing describe block (beforeAll) and stops it afterwards (afterAll).
 * @returns a getter for the running system.
 */
export function useSystem(opts: SystemOptions = {}): () => RunningSystem {
  let system: RunningSystem | undefined;
  beforeAll(async () => {
    system = await startSystem(opts);
  }, 180_000);
  afterAll(async () => {
    await system?.stop();
  }, 60_000);
  return () => {
    if (!system) throw new Error('the system did not start (see the beforeAll failure)');
    return system;
  };
}

/** A port P for a simulated node such that P + 3 (where it serves AssignJob) is free. */
export async function freeNodePort(): Promise<number> {
  for (;;) {
    const assignPort = await getFreePort();
    if (assignPort > 1027) return assignPort - 3;
  }
}

/** Polls `probe` until it returns something other than undefined/false. */
export async function eventually<T>(what: string, probe: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 20_000, intervalMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value as T;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message ?? String(last)}` : ''}`);
    }
    await sleep(intervalMs);
  }
}

function currentTestFileName(): string | undefined {
  const testPath = typeof expect === 'undefined' ? undefined : expect.getState().testPath;
  return testPath ? path.basename(testPath).replace(/\.(e2e\.)?test\.[jt]s$/, '') : undefined;
}
