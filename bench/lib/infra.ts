import fs from 'node:fs';
import path from 'node:path';
import { Connection as SolanaConnection } from '@solana/web3.js';
import { Client } from 'pg';
import { ensureLocalChain, type LocalChainSetup } from '../../src/chain/bootstrap';
import { startLocalLedger } from '../../src/chain/local-ledger';
import { startEmbeddedPostgres } from '../../src/infra/embedded-postgres';
import { getFreePort, ownedTempDir } from '../../src/infra/process';
import { ensureTemporalCli } from '../../src/infra/temporal-cli';
import { startTemporalDevServer } from '../../src/infra/temporal-dev-server';
import { SEARCH_ATTRIBUTE_TYPES } from '../../src/workflows/search-attributes';
import { log } from './util';

export interface Infra {
  tmpDir: string;
  /** Maintenance URL of the embedded server (database `bench`). */
  pgUrl: string;
  pgPid: number;
  temporalAddress: string;
  temporalPid: number;
  ledgerUrl: string;
  chain: LocalChainSetup;
  /** Environment the API and worker need to settle on the local ledger. */
  chainEnv: Record<string, string>;
  createDatabase(name: string): Promise<string>;
  stop(): Promise<void>;
}

export interface InfraOptions {
  /** Temporal history in a SQLite file with WAL (as `npm start`) or in memory (as the tests). */
  temporalDb: 'file' | 'memory';
  /** Postgres with fsync off (as the tests) or durable (as `npm start`). */
  pgFast: boolean;
}

/**
 * Embedded Postgres, the Temporal dev server and the local Solana ledger (LiteSVM over JSON-RPC, in memory),
 * in a temp directory, all on 127.0.0.1 — the same functions `npm start` and the test setup use.
 * Everything started is stopped by `stop()` (and by the infra watchdogs if this process dies).
 */
const TMP_PREFIX = 'cyxwiz-bench-';


export async function startInfra(opts: InfraOptions): Promise<Infra> {
  const tmpDir = ownedTempDir(TMP_PREFIX);
  const stops: { name: string; stop: () => Promise<void> }[] = [];
  const stop = async () => {
    const results = await Promise.allSettled(stops.splice(0).reverse().map((s) => s.stop()));
    results.forEach((r) => r.status === 'rejected' && log(`stopping failed: ${String(r.reason)}`));
    fs.rmSync(tmpDir, { recursive: true, force: true });
  };
  try {
    const cli = await ensureTemporalCli((m) => log(m));
    const settled = await Promise.allSettled([
      (async () => {
        const s = await startEmbeddedPostgres({
          dataDir: path.join(tmpDir, 'pg'),
          port: await getFreePort(),
          database: 'bench',
          fast: opts.pgFast,
          postgresFlags: ['-c', 'max_connections=300', '-c', 'shared_buffers=256MB'],
        });
        stops.push({ name: 'postgres', stop: s.stop });
        return s;
      })(),
      (async () => {
        const s = await startTemporalDevServer({
          cli,
          ip: '127.0.0.1',
          port: await getFreePort(),
          namespace: 'default',
          headless: true,
          searchAttributes: SEARCH_ATTRIBUTE_TYPES,
          ...(opts.temporalDb === 'file' && { dbFile: path.join(tmpDir, 'temporal.db') }),
        });
        stops.push({ name: 'temporal', stop: s.stop });
        return s;
      })(),
      (async () => {
        const s = await startLocalLedger({ port: await getFreePort() });
        stops.push({ name: 'ledger', stop: s.stop });
        return s;
      })(),
    ] as const);
    for (const r of settled) if (r.status === 'rejected') throw r.reason;
    const [pg, temporal, ledger] = settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as [
      Awaited<ReturnType<typeof startEmbeddedPostgres>>,
      Awaited<ReturnType<typeof startTemporalDevServer>>,
      Awaited<ReturnType<typeof startLocalLedger>>,
    ];
    const chain = await ensureLocalChain(new SolanaConnection(ledger.url, 'confirmed'), path.join(tmpDir, 'keys'));
    const chainEnv = {
      SOLANA_RPC_URL: ledger.url,
      SOLANA_CLUSTER: 'localnet',
      CYXWIZ_MINT: chain.mint,
      PLATFORM_TREASURY: chain.treasury,
      ESCROW_AUTHORITY_KEYPAIR: chain.keyFiles.escrowAuthority,
      PAYER_KEYPAIR: chain.keyFiles.payer,
      TOKEN_DECIMALS: String(chain.decimals),
    };
    const createDatabase = async (name: string) => {
      const client = new Client({ connectionString: pg.url });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE ${client.escapeIdentifier(name)}`);
      } finally {
        await client.end();
      }
      const url = new URL(pg.url);
      url.pathname = `/${name}`;
      return url.toString();
    };
    return {
      tmpDir,
      pgUrl: pg.url,
      pgPid: pg.pid,
      temporalAddress: temporal.address,
      temporalPid: temporal.pid,
      ledgerUrl: ledger.url,
      chain,
      chainEnv,
      createDatabase,
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}
