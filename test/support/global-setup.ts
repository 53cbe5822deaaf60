import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Connection } from '@temporalio/client';
import { Client } from 'pg';
import { startEmbeddedPostgres } from '../../src/infra/embedded-postgres';
import { getFreePort, ownedTempDir, type InfraLogger } from '../../src/infra/process';
import { ensureSearchAttributes } from '../../src/infra/search-attributes';
import { ensureTemporalCli } from '../../src/infra/temporal-cli';
import { startTemporalDevServer } from '../../src/infra/temporal-dev-server';
import { startLocalLedger } from '../../src/chain/local-ledger';
import { ensureLocalChain } from '../../src/chain/bootstrap';
import { Connection as SolanaConnection } from '@solana/web3.js';
import {
  TEST_DATABASE_PREFIX,
  TEST_ENV,
  TEST_INFRA_FILE_VAR,
  TEST_SEARCH_ATTRIBUTES,
  TEST_TEMPORAL_NAMESPACE,
  type TestInfraValues,
} from './env';

/** Projects whose tests talk to the shared servers; a run that selects none of them skips starting them. */
const SERVER_PROJECTS = ['integration', 'e2e'];

/** Kept on globalThis: jest loads globalSetup and globalTeardown as separate modules in the same process. */
const STATE_KEY = Symbol.for('cyxwiz.test-infra');

/** Per-run temp directories; each holds the pid of the jest process that owns it. */
const TMP_PREFIX = 'cyxwiz-test-';

interface InfraState {
  runId: string;
  tmpDir: string;
  stops: Array<{ name: string; stop: () => Promise<void> }>;
  /** Set when tests use an existing server: its run databases are dropped at teardown. */
  externalDatabaseUrl?: string;
  published: string[];
}

type GlobalWithState = typeof globalThis & { [STATE_KEY]?: InfraState };

const debugLogger: InfraLogger | undefined = process.env.TEST_INFRA_DEBUG
  ? (msg) => process.stderr.write(`[test-infra] ${msg}\n`)
  : undefined;

function say(msg: string): void {
  process.stderr.write(`[test-infra] ${msg}\n`);
}


/**
 * The values of a jest CLI option such as `--selectProjects a b` / `--selectProjects=a` (undefined when absent).
 * Jest keeps these out of the config it hands to globalSetup, so they are read from this process's argv.
 */
function projectOption(argv: readonly string[], names: readonly string[]): string[] | undefined {
  let values: string[] | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? '';
    const eq = names.find((name) => arg.startsWith(`--${name}=`));
    if (eq) {
      (values ??= []).push(arg.slice(eq.length + 3));
    } else if (names.some((name) => arg === `--${name}`)) {
      values ??= [];
      while (i + 1 < argv.length && !(argv[i + 1] ?? '-').startsWith('-')) values.push(argv[++i] ?? '');
    }
  }
  return values;
}

/** False only when the CLI selection rules out every server-backed project (e.g. `--selectProjects workflows`). */
function wantsServers(argv: readonly string[] = process.argv): boolean {
  const selected = projectOption(argv, ['selectProjects', 'select-projects']) ?? SERVER_PROJECTS;
  const ignored = projectOption(argv, ['ignoreProjects', 'ignore-projects']) ?? [];
  return selected.some((name) => SERVER_PROJECTS.includes(name) && !ignored.includes(name));
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(2)} s`;
}

/**
 * Jest globalSetup: starts Postgres and one Temporal dev server for the whole run and publishes them as
 * TEST_* environment variables (inherited by runInBand tests and by workers) plus a JSON copy in TEST_INFRA_FILE.
 * DATABASE_URL / TEST_DATABASE_URL and TEST_TEMPORAL_ADDRESS select existing servers instead.
 */
export default async function globalSetup(): Promise<void> {
  const started = performance.now();
  const state: InfraState = {
    runId: randomBytes(3).toString('hex'),
    tmpDir: ownedTempDir(TMP_PREFIX),
    stops: [],
    published: [],
  };
  (globalThis as GlobalWithState)[STATE_KEY] = state;

  try {
    const cli = await ensureTemporalCli(say);
    const values: TestInfraValues = {
      runId: state.runId,
      temporalCli: cli,
      temporalNamespace: TEST_TEMPORAL_NAMESPACE,
    };

    const timings: string[] = [];
    if (wantsServers()) {
      const timed = async <T>(label: string, fn: () => Promise<T>): Promise<T> => {
        const t0 = performance.now();
        const result = await fn();
        timings.push(`${label} ${seconds(performance.now() - t0)}`);
        return result;
      };
      // Started side by side; a failure of either is reported after both settle so nothing is left running.
      const [database, temporal, chain] = await Promise.allSettled([
        timed('postgres', () => setUpDatabase(state)),
        timed('temporal', () => setUpTemporal(state, cli)),
        timed('solana', () => setUpChain(state)),
      ]);
      if (database.status === 'rejected') throw database.reason;
      if (temporal.status === 'rejected') throw temporal.reason;
      if (chain.status === 'rejected') throw chain.reason;
      values.databaseUrl = database.value;
      values.temporalAddress = temporal.value;
      values.solanaRpcUrl = chain.value.rpcUrl;
      values.chainSetup = chain.value.setupFile;
    }

    const infraFile = path.join(state.tmpDir, 'infra.json');
    fs.writeFileSync(infraFile, JSON.stringify(values, null, 2));
    publish(state, TEST_INFRA_FILE_VAR, infraFile);
    for (const [key, variable] of Object.entries(TEST_ENV) as [keyof typeof TEST_ENV, string][]) {
      publish(state, variable, values[key] ?? '');
    }
    say(`ready in ${seconds(performance.now() - started)}${timings.length ? ` (${timings.join(', ')})` : ''}`);
  } catch (err) {
    await teardownTestInfra();
    throw err;
  }
}

function publish(state: InfraState, variable: string, value: string): void {
  process.env[variable] = value;
  state.published.push(variable);
}

async function setUpDatabase(state: InfraState): Promise<string> {
  const external = process.env.TEST_DATABASE_URL || process.env.DATABASE_URL;
  if (external) {
    const client = new Client({ connectionString: external });
    try {
      await client.connect();
      await client.query('SELECT 1');
    } catch (err) {
      throw new Error(`cannot use the test database server from (TEST_)DATABASE_URL: ${(err as Error).message}`);
    } finally {
      await client.end().catch(() => undefined);
    }
    state.externalDatabaseUrl = external;
    return external;
  }
  const pg = await startEmbeddedPostgres({
    dataDir: path.join(state.tmpDir, 'pg'),
    port: await getFreePort(),
    database: 'cyxwiz_test',
    fast: true,
    postgresFlags: ['-c', 'max_connections=200'],
    logger: debugLogger,
  });
  state.stops.push({ name: 'postgres', stop: pg.stop });
  return pg.url;
}

async function setUpTemporal(state: InfraState, cli: string): Promise<string> {
  const external = process.env.TEST_TEMPORAL_ADDRESS;
  if (external) {
    const connection = await Connection.connect({ address: external, connectTimeout: 5000 });
    try {
      await ensureSearchAttributes(connection, TEST_TEMPORAL_NAMESPACE, TEST_SEARCH_ATTRIBUTES);
    } finally {
      await connection.close();
    }
    return external;
  }
  const server = await startTemporalDevServer({
    cli,
    ip: '127.0.0.1',
    port: await getFreePort(),
    namespace: TEST_TEMPORAL_NAMESPACE,
    headless: true,
    searchAttributes: TEST_SEARCH_ATTRIBUTES,
    logger: debugLogger,
  });
  state.stops.push({ name: 'temporal', stop: server.stop });
  return server.address;
}

/** One local Solana ledger (LiteSVM over JSON-RPC, in memory) with a mint, treasury, escrow authority and payer. */
async function setUpChain(state: InfraState): Promise<{ rpcUrl: string; setupFile: string }> {
  const ledger = await startLocalLedger({ port: await getFreePort() });
  state.stops.push({ name: 'solana', stop: ledger.stop });
  const keysDir = path.join(state.tmpDir, 'keys');
  await ensureLocalChain(new SolanaConnection(ledger.url, 'confirmed'), keysDir);
  return { rpcUrl: ledger.url, setupFile: path.join(keysDir, 'chain.json') };
}

/** Stops what {@link globalSetup} started and removes its files; a no-op when nothing was started. */
export async function teardownTestInfra(): Promise<void> {
  const holder = globalThis as GlobalWithState;
  const state = holder[STATE_KEY];
  if (!state) return;
  delete holder[STATE_KEY];
  const started = performance.now();

  if (state.externalDatabaseUrl) await dropRunDatabases(state.externalDatabaseUrl, state.runId);
  const results = await Promise.allSettled(state.stops.map(({ stop }) => stop()));
  results.forEach((result, i) => {
    if (result.status === 'rejected') say(`stopping ${state.stops[i]?.name} failed: ${String(result.reason)}`);
  });
  fs.rmSync(state.tmpDir, { recursive: true, force: true });
  for (const variable of state.published) delete process.env[variable];
  if (state.stops.length > 0) say(`stopped in ${seconds(performance.now() - started)}`);
}

async function dropRunDatabases(serverUrl: string, runId: string): Promise<void> {
  const client = new Client({ connectionString: serverUrl });
  try {
    await client.connect();
    const { rows } = await client.query<{ datname: string }>(
      "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
      [`${TEST_DATABASE_PREFIX}${runId}_`],
    );
    for (const { datname } of rows) {
      await client.query(`DROP DATABASE IF EXISTS ${client.escapeIdentifier(datname)} WITH (FORCE)`);
    }
  } catch (err) {
    say(`could not drop this run's test databases: ${(err as Error).message}`);
  } finally {
    await client.end().catch(() => undefined);
  }
}
