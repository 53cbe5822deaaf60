import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Connection } from '@temporalio/client';
import { guardChildProcess, isPortFree, OutputTail, waitFor, type InfraLogger } from './process';
import { listCustomSearchAttributes, type SearchAttributeDefinitions } from './search-attributes';

/** Options for {@link startTemporalDevServer}. */
export interface TemporalDevServerOptions {
  /** Path of the `temporal` CLI (see `findTemporalCli`). */
  cli: string;
  /** SQLite file that keeps workflow histories across restarts; omit for an in-memory server (tests). */
  dbFile?: string;
  /** Address the frontend binds to. Default 127.0.0.1. */
  ip?: string;
  /** Frontend gRPC port. */
  port: number;
  /** Web UI port; default `port + 1000`. Ignored when headless. */
  uiPort?: number;
  /** Namespace created at launch (`default` always exists too). */
  namespace: string;
  /** Disable the Web UI. */
  headless?: boolean;
  /** Custom search attributes registered at launch (also fine when the db file already has them). */
  searchAttributes: SearchAttributeDefinitions;
  /** Extra `--dynamic-config-value KEY=JSON` entries, over {@link DEV_SERVER_DYNAMIC_CONFIG}. */
  dynamicConfig?: Readonly<Record<string, unknown>>;
  /** Time allowed until the server answers; default 30 s. */
  readyTimeoutMs?: number;
  /** Receives the server's own log lines (warn level and above); quiet when omitted. */
  logger?: InfraLogger;
}

/** A running dev server. */
export interface TemporalDevServer {
  /** `host:port` of the frontend, for `Connection.connect({ address })`. */
  address: string;
  /** Web UI URL unless headless. */
  uiUrl?: string;
  /** The server process id. */
  pid: number;
  /** SIGTERM, then SIGKILL after a grace period (SIGKILL right away when in-memory). Safe to call twice. */
  stop(): Promise<void>;
  /** Resolves, with how, when the server process exits: asked to by stop(), or not (then its output's tail too). */
  exited: Promise<string>;
}

const STOP_GRACE_MS = 10_000;

/**
 * Dynamic config every dev server started here gets. The history service reads its task queues (transfer: every
 * new workflow or activity task on its way to matching; timer: timers and timeouts; visibility: search attribute
 * updates) at most 20 times a second each by default. As soon as a few dozen workflows are busy, each new task
 * then waits for the next read, about 25 ms on average and 50 ms at worst, before a worker can pick it up;
 * measured here with a worker and 8 workflow starts a second, a first workflow task's pickup went from 25 ms
 * (p50) to 2 ms. A cluster needs the same (README, *Operating it*; deploy/temporal-dynamicconfig.yaml is the
 * docker-compose cluster's copy, checked against this one).
 */
export const DEV_SERVER_DYNAMIC_CONFIG: Readonly<Record<string, unknown>> = {
  'history.transferProcessorMaxPollRPS': 1000,
  'history.timerProcessorMaxPollRPS': 1000,
  'history.visibilityProcessorMaxPollRPS': 1000,
};

/**
 * Spawns `temporal server start-dev` and resolves once the frontend answers, the namespace exists and the
 * search attributes are listed. The process dies with this Node process (exit hook + watchdog).
 * @throws Error when the port is taken, the process exits early (with its stderr tail) or it is not ready in time.
 */
export async function startTemporalDevServer(opts: TemporalDevServerOptions): Promise<TemporalDevServer> {
  const ip = opts.ip ?? '127.0.0.1';
  const address = `${ip}:${opts.port}`;
  const uiPort = opts.uiPort ?? opts.port + 1000;
  if (!(await isPortFree(opts.port, ip))) {
    throw new Error(`cannot start the Temporal dev server: ${address} is already in use (a leftover server?)`);
  }

  const args = ['server', 'start-dev', '--ip', ip, '--port', String(opts.port), '--namespace', opts.namespace];
  if (opts.headless) args.push('--headless');
  else args.push('--ui-port', String(uiPort), '--ui-disable-news-fetch');
  if (opts.dbFile) {
    fs.mkdirSync(path.dirname(path.resolve(opts.dbFile)), { recursive: true });
    // WAL + synchronous=NORMAL: a crash of the server loses nothing; only an OS crash may lose the last commits.
    args.push(
      '--db-filename',
      path.resolve(opts.dbFile),
      '--sqlite-pragma',
      'journal_mode=WAL',
      '--sqlite-pragma',
      'synchronous=NORMAL',
    );
  }
  for (const [name, type] of Object.entries(opts.searchAttributes)) args.push('--search-attribute', `${name}=${type}`);
  for (const [key, value] of Object.entries({ ...DEV_SERVER_DYNAMIC_CONFIG, ...opts.dynamicConfig })) {
    args.push('--dynamic-config-value', `${key}=${JSON.stringify(value)}`);
  }
  args.push('--log-level', 'warn');

  // Own process group: a terminal Ctrl-C reaches only the app, which then stops the server after its workers.
  const child = spawn(opts.cli, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const tail = new OutputTail();
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  let spawnError: Error | undefined;
  const exitPromise = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      resolve();
    });
    child.once('error', (err) => {
      spawnError = err;
      exited ??= { code: null, signal: null };
      resolve();
    });
  });
  for (const stream of [child.stdout, child.stderr]) {
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      tail.push(chunk);
      if (opts.logger) for (const line of chunk.split('\n')) if (line.trim()) opts.logger(line);
    });
  }

  const guard = child.pid !== undefined ? guardChildProcess(child.pid, 'SIGTERM', STOP_GRACE_MS) : undefined;

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (!exited) {
        // An in-memory server has nothing to flush; its graceful shutdown would only cost a second.
        child.kill(opts.dbFile ? 'SIGTERM' : 'SIGKILL');
        const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
        await exitPromise;
        clearTimeout(timer);
      }
      guard?.release();
    })();
    return stopping;
  };

  const checkAlive = () => {
    if (exited) {
      const how = spawnError
        ? spawnError.message
        : `exited with ${exited.signal ? `signal ${exited.signal}` : `code ${String(exited.code)}`}`;
      throw new Error(`Temporal dev server (${opts.cli}) ${how} before it was ready:\n${tail.toString() || '(no output)'}`);
    }
  };

  let connection: Connection | undefined;
  try {
    await waitFor(
      `the Temporal dev server at ${address}`,
      async () => {
        // gRPC backs off for a second after a refused connect; a plain TCP probe first keeps the start fast.
        if (!connection && (await isPortFree(opts.port, ip))) return undefined;
        connection ??= await Connection.connect({ address, connectTimeout: 2000 });
        await connection.workflowService.getSystemInfo({});
        await connection.workflowService.describeNamespace({ namespace: opts.namespace });
        const listed = await listCustomSearchAttributes(connection, opts.namespace);
        const missing = Object.keys(opts.searchAttributes).filter((name) => listed[name] === undefined);
        if (missing.length > 0) throw new Error(`search attributes not registered yet: ${missing.join(', ')}`);
        return true;
      },
      { timeoutMs: opts.readyTimeoutMs ?? 30_000, intervalMs: 100, check: checkAlive },
    );
  } catch (err) {
    await stop();
    throw err;
  } finally {
    await connection?.close().catch(() => undefined);
  }

  if (child.pid === undefined) throw new Error('Temporal dev server has no pid');
  return {
    address,
    uiUrl: opts.headless ? undefined : `http://${ip}:${uiPort}`,
    pid: child.pid,
    stop,
    exited: exitPromise.then(() => {
      const how = spawnError ? spawnError.message : `exited with ${exited?.signal ? `signal ${exited.signal}` : `code ${String(exited?.code)}`}`;
      return `Temporal dev server ${how}${stopping ? '' : `:\n${tail.toString() || '(no output)'}`}`;
    }),
  };
}
