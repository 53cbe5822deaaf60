import path from 'node:path';
import { mkdirSync } from 'node:fs';
import { loadConfig } from '../config';
import { migrateDatabase, openDatabase } from '../db/client';
import { startEmbeddedPostgres } from '../infra/embedded-postgres';
import { ensureTemporalCli } from '../infra/temporal-cli';
import { startTemporalDevServer } from '../infra/temporal-dev-server';
import { SEARCH_ATTRIBUTE_TYPES } from '../workflows/search-attributes';
import { startApi } from './api-app';
import { onShutdownSignal } from './lifecycle';
import { createLogger } from './logger';
import { startWorker } from './worker-app';
import { startEmbeddedChain } from './chain-setup';

/** Where, as root, the embedded cluster of a DATA_DIR the postgres OS user cannot reach lives. */
const EMBEDDED_PG_RELOCATION = '/var/lib/cyxwiz-central';

/**
 * `npm start`: the whole system on one machine. Embedded Postgres and the Temporal dev server (with its
 * Web UI) keep their data in DATA_DIR, unless DATABASE_URL / TEMPORAL_ADDRESS point elsewhere; then
 * migrations, the worker, gRPC and REST.
 */
async function main(): Promise<void> {
  const config = loadConfig();
  const log = createLogger(config, 'cyxwiz-central');
  mkdirSync(config.dataDir, { recursive: true });
  const stops: { name: string; stop: () => Promise<void> }[] = [];
  let stoppingAll: Promise<void> | undefined;
  /** Stops what started, last first; once, however many ask (a signal, a failed start, a server that died). */
  const stopAll = () =>
    (stoppingAll ??= (async () => {
      for (const { name, stop } of [...stops].reverse()) {
        const t0 = Date.now();
        await stop().catch((err) => log.error({ err, name }, 'stop failed'));
        log.info({ ms: Date.now() - t0 }, `${name} stopped`);
      }
    })());
  onShutdownSignal(log, stopAll);
  /** An embedded server that dies on its own leaves the system useless: all of it stops, exiting 1 for a supervisor. */
  const stopIfItDies = (exited: Promise<string>) =>
    void exited.then((how) => {
      if (stoppingAll) return;
      log.error({ how }, 'an embedded server died: stopping everything');
      process.exitCode = 1; // also when a signal's stop finishes first
      void stopAll().finally(() => process.exit(1));
    });

  try {
    let databaseUrl = config.database.url;
    let pgDataDir = '';
    if (!databaseUrl) {
      const pg = await startEmbeddedPostgres({
        dataDir: path.join(config.dataDir, 'postgres'),
        // As root, a DATA_DIR the postgres OS user cannot reach (a checkout under /root) keeps its cluster here.
        relocateWhenUnreachable: EMBEDDED_PG_RELOCATION,
        port: config.database.embeddedPort,
        database: 'cyxwiz',
        logger: (msg) => log.debug({ component: 'postgres' }, msg),
      });
      stops.push({ name: 'postgres', stop: pg.stop });
      stopIfItDies(pg.exited);
      databaseUrl = pg.url;
      pgDataDir = pg.dataDir;
    }
    const database = openDatabase(databaseUrl, { max: 1 });
    await migrateDatabase(database.db);
    await database.close();

    let temporalAddress = config.temporal.address;
    let uiUrl: string | undefined;
    if (!temporalAddress) {
      const cli = await ensureTemporalCli((msg) => log.info({ component: 'temporal' }, msg));
      const temporal = await startTemporalDevServer({
        cli,
        dbFile: path.join(config.dataDir, 'temporal.db'),
        port: config.temporal.port,
        uiPort: config.temporal.uiPort,
        ip: '127.0.0.1',
        namespace: config.temporal.namespace,
        searchAttributes: SEARCH_ATTRIBUTE_TYPES,
        logger: (msg) => log.debug({ component: 'temporal' }, msg),
      });
      stops.push({ name: 'temporal dev server', stop: temporal.stop });
      stopIfItDies(temporal.exited);
      temporalAddress = temporal.address;
      uiUrl = temporal.uiUrl;
    }

    const embedded = await startEmbeddedChain(config, log);
    if (embedded.ledger) stops.push({ name: 'local ledger', stop: embedded.ledger.stop });
    const { chain } = embedded;

    const worker = await startWorker(config, { databaseUrl, temporalAddress, chain, log: log.child({ component: 'worker' }) });
    stops.push({ name: 'worker', stop: worker.stop });
    const api = await startApi(config, { databaseUrl, temporalAddress, chain, log: log.child({ component: 'api' }) });
    stops.push({ name: 'api', stop: api.stop });

    const lines = [
      'CyxWiz Central is up',
      `  gRPC         ${config.grpc.host}:${api.grpcPort}  (package cyxwiz.protocol, grpc.health.v1)`,
      `  REST         http://localhost:${api.restPort}/api/health  /api/stats  /api/jobs`,
      `  Temporal     ${temporalAddress}  namespace ${config.temporal.namespace}, task queue ${config.temporal.taskQueue}`,
      uiUrl ? `  Web UI       ${uiUrl}` : `  Web UI       (external cluster: see its own UI)`,
      `  Postgres     ${config.database.url ? 'external (DATABASE_URL)' : `embedded, data in ${pgDataDir}`}`,
      `  Solana       ${embedded.rpcUrl} (${chain.cluster}${embedded.ledger ? `, local ledger in ${path.join(config.dataDir, 'ledger')}` : ''}, commitment ${chain.commitment})`,
      `    mint       ${chain.mint.toBase58()} (${chain.decimals} decimals)`,
      `    treasury   ${chain.treasury.toBase58()}`,
      `    escrow authority ${chain.authority.publicKey.toBase58()}`,
      ...(chain.payer ? [`    payer      ${chain.payer.publicKey.toBase58()}`] : []),
      ...Object.entries(embedded.setup?.demoWallets ?? {}).map(
        ([name, key]) => `    demo ${name.padEnd(6)} ${key} (keypair ${embedded.setup!.keyFiles.demo[name]})`,
      ),
      '  Ctrl-C stops everything.',
    ];
    console.log(lines.join('\n'));
    await worker.done;
    // Ended without being stopped (a fatal worker error): the rest is useless without it.
    if (!stoppingAll) {
      log.error('the worker stopped on its own: stopping everything');
      process.exitCode = 1;
      await stopAll();
      process.exit(1);
    }
  } catch (err) {
    log.error({ err }, 'startup failed');
    await stopAll();
    process.exit(1);
  }
}

void main();
