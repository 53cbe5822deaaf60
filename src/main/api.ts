import { loadConfig } from '../config';
import { startApi } from './api-app';
import { connectConfiguredChain } from './chain-setup';
import { onShutdownSignal, required } from './lifecycle';
import { createLogger } from './logger';

/** `npm run start:api`: the gRPC and REST API against an external Postgres and Temporal. */
async function main(): Promise<void> {
  const config = loadConfig();
  const log = createLogger(config, 'cyxwiz-api');
  const api = await startApi(config, {
    databaseUrl: required(config.database.url, 'DATABASE_URL'),
    temporalAddress: required(config.temporal.address, 'TEMPORAL_ADDRESS'),
    chain: await connectConfiguredChain(config),
    log,
  });
  log.info({ grpc: `${config.grpc.host}:${api.grpcPort}`, rest: `${config.rest.host}:${api.restPort}` }, 'API listening');
  onShutdownSignal(log, api.stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
