import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Client } from 'pg';
import type { SearchAttributeDefinitions } from '../../src/infra/search-attributes';
import { SEARCH_ATTRIBUTE_TYPES } from '../../src/workflows/search-attributes';
import type { LocalChainSetup } from '../../src/chain/bootstrap';

/** The custom search attributes the project registers (the job workflow's). */
export const TEST_SEARCH_ATTRIBUTES: SearchAttributeDefinitions = SEARCH_ATTRIBUTE_TYPES;

/** Namespace of the shared dev server. */
export const TEST_TEMPORAL_NAMESPACE = 'default';

/** Every test database name starts with this, followed by the run id. */
export const TEST_DATABASE_PREFIX = 'cyxwiz_t_';

/** The variables that test/support/global-setup.ts publishes, by field. */
export const TEST_ENV = {
  databaseUrl: 'TEST_DATABASE_URL',
  temporalAddress: 'TEST_TEMPORAL_ADDRESS',
  temporalNamespace: 'TEST_TEMPORAL_NAMESPACE',
  temporalCli: 'TEST_TEMPORAL_CLI',
  runId: 'TEST_RUN_ID',
  solanaRpcUrl: 'TEST_SOLANA_RPC_URL',
  chainSetup: 'TEST_CHAIN_SETUP',
} as const;

/** Points at a JSON copy of the TEST_* values, for a process that did not inherit them. */
export const TEST_INFRA_FILE_VAR = 'TEST_INFRA_FILE';

export type TestInfraValues = Partial<Record<keyof typeof TEST_ENV, string>>;

/** The published values: environment first, then the JSON file named by TEST_INFRA_FILE. */
export function readTestInfra(env: NodeJS.ProcessEnv = process.env): TestInfraValues {
  let fromFile: TestInfraValues = {};
  const file = env[TEST_INFRA_FILE_VAR];
  if (file && fs.existsSync(file)) fromFile = JSON.parse(fs.readFileSync(file, 'utf8')) as TestInfraValues;
  const values: TestInfraValues = {};
  for (const [key, variable] of Object.entries(TEST_ENV) as [keyof typeof TEST_ENV, string][]) {
    const value = env[variable] || fromFile[key];
    if (value) values[key] = value;
  }
  return values;
}

function required(key: keyof typeof TEST_ENV): string {
  const value = readTestInfra()[key];
  if (!value) {
    throw new Error(
      `${TEST_ENV[key]} is not set: this test needs the shared test infrastructure started by ` +
        'test/support/global-setup.ts (run it through jest.config.js, e.g. `npm test -- --selectProjects integration`)',
    );
  }
  return value;
}

/** URL of the shared test Postgres server (a maintenance database; use {@link createTestDatabase} for tests). */
export function testDatabaseUrl(): string {
  return required('databaseUrl');
}

/** `host:port` of the shared Temporal dev server. */
export function testTemporalAddress(): string {
  return required('temporalAddress');
}

/** Namespace on the shared Temporal dev server. */
export function testTemporalNamespace(): string {
  return readTestInfra().temporalNamespace ?? TEST_TEMPORAL_NAMESPACE;
}

/** Path of the `temporal` CLI, for `TestWorkflowEnvironment.createLocal({ server: { executable: { type: 'existing-path', path } } })`. */
export function testTemporalCli(): string {
  return required('temporalCli');
}

function currentTestFileName(): string | undefined {
  const testPath = typeof expect === 'undefined' ? undefined : expect.getState().testPath;
  return testPath ? path.basename(testPath).replace(/\.test\.[jt]s$/, '') : undefined;
}

/**
 * Creates a fresh, uniquely named database on the shared test server and returns its URL.
 * The name defaults to the current test file's name; a random suffix keeps it unique.
 */
export async function createTestDatabase(name?: string): Promise<string> {
  const serverUrl = testDatabaseUrl();
  const runId = readTestInfra().runId ?? 'adhoc';
  const label = (name ?? currentTestFileName() ?? 'db')
    .toLowerCase()
    .replace(/[^a-z0-9_]+/g, '_')
    .slice(0, 30);
  const database = `${TEST_DATABASE_PREFIX}${runId}_${label}_${randomBytes(4).toString('hex')}`.slice(0, 63);

  const client = new Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE ${client.escapeIdentifier(database)}`);
  } finally {
    await client.end();
  }
  return withDatabase(serverUrl, database);
}

/** Drops a database made by {@link createTestDatabase}, disconnecting its remaining sessions. */
export async function dropTestDatabase(url: string): Promise<void> {
  const database = decodeURIComponent(new URL(url).pathname.slice(1));
  if (!database.startsWith(TEST_DATABASE_PREFIX)) throw new Error(`refusing to drop non-test database ${database}`);
  const client = new Client({ connectionString: testDatabaseUrl() });
  await client.connect();
  try {
    await client.query(`DROP DATABASE IF EXISTS ${client.escapeIdentifier(database)} WITH (FORCE)`);
  } finally {
    await client.end();
  }
}

/** `url` with its database replaced by `database`. */
export function withDatabase(url: string, database: string): string {
  const parsed = new URL(url);
  parsed.pathname = `/${encodeURIComponent(database)}`;
  return parsed.toString();
}

/** JSON-RPC URL of the shared local Solana ledger. */
export function testSolanaRpcUrl(): string {
  return required('solanaRpcUrl');
}

/** The shared local ledger's setup (mint, treasury, key files of the escrow authority, payer and demo wallets). */
export function testChainSetup(): LocalChainSetup {
  return JSON.parse(fs.readFileSync(required('chainSetup'), 'utf8')) as LocalChainSetup;
}

/** The variables a server process needs to settle on the shared local ledger. */
export function testChainEnv(): Record<string, string> {
  const setup = testChainSetup();
  return {
    SOLANA_RPC_URL: testSolanaRpcUrl(),
    SOLANA_CLUSTER: 'localnet',
    CYXWIZ_MINT: setup.mint,
    PLATFORM_TREASURY: setup.treasury,
    ESCROW_AUTHORITY_KEYPAIR: setup.keyFiles.escrowAuthority,
    PAYER_KEYPAIR: setup.keyFiles.payer,
    TOKEN_DECIMALS: String(setup.decimals),
  };
}
