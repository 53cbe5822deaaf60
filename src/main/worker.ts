import { loadConfig } from '../config';
import { onShutdownSignal, required } from './lifecycle';
import { createLogger } from './logger';
import { startWorker } from './worker-app';
import { connectConfiguredChain } from './chain-setup';

/** `npm run start:worker`: a Temporal worker for job workflows against an external Postgres and Temporal. */
async function main(): Promise<void> {
  const config = loadConfig();
  const log = createLogger(config, 'cyxwiz-worker');
  const worker = await startWorker(config, {
    databaseUrl: required(config.database.url, 'DATABASE_URL'),
    temporalAddress: required(config.temporal.address, 'TEMPORAL_ADDRESS'),
    chain: await connectConfiguredChain(config),
    log,
  });
  onShutdownSignal(log, worker.stop);
  await worker.done;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
