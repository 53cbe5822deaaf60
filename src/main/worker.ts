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
  let stopping = false;
  onShutdownSignal(log, () => {
    stopping = true;
    return worker.stop();
  });
  await worker.done;
  // Ended without being stopped (a fatal worker error): exit 1, for a supervisor to restart it.
  if (!stopping) {
    log.error('the worker stopped on its own');
    process.exit(1);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
