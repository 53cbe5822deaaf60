import { getFreePort } from '../../src/infra/process';
import { grpcServing, restHealthy } from '../../src/infra/probes';
import type { Infra } from './infra';
import { Child } from './proc';
import { sleep } from './util';

/**
 * The real system as `npm run start:api` / `start:worker` run it: a migrate process, then one worker and one
 * API process against the bench's Postgres, Temporal dev server and local ledger (the same entries
 * test/support/system.ts spawns). Configuration is the default except what `env` overrides.
 */
export interface BenchSystem {
  grpcAddress: string;
  restUrl: string;
  databaseUrl: string;
  taskQueue: string;
  api: Child;
  worker: Child;
  stop(): Promise<void>;
}


export async function startBenchSystem(infra: Infra, opts: { name: string; env?: Record<string, string>; nodeArgs?: string[] }): Promise<BenchSystem> {
  const databaseUrl = await infra.createDatabase(opts.name);
  const [grpcPort, restPort] = [await getFreePort(), await getFreePort()];
  const taskQueue = `bench-${opts.name}`;
  const env: Record<string, string> = {
    DATABASE_URL: databaseUrl,
    TEMPORAL_ADDRESS: infra.temporalAddress,
    TEMPORAL_NAMESPACE: 'default',
    TEMPORAL_TASK_QUEUE: taskQueue,
    GRPC_HOST: '127.0.0.1',
    GRPC_PORT: String(grpcPort),
    REST_HOST: '127.0.0.1',
    REST_PORT: String(restPort),
    DATA_DIR: `${infra.tmpDir}/data-${opts.name}`,
    // Every simulated node and Engine calls from 127.0.0.1: one address may otherwise make 60 new nodes and submit
    // 600 jobs a minute.
    NEW_NODES_PER_MINUTE: '0',
    SUBMIT_JOBS_PER_MINUTE: '0',
    ...infra.chainEnv,
    ...opts.env,
  };
  const migrate = new Child({ name: 'migrate', entry: 'src/main/migrate.ts', env });
  const { code } = await migrate.exited;
  if (code !== 0) throw new Error(`migrate failed (code ${code}):\n${migrate.tail()}`);

  const worker = new Child({ name: 'worker', entry: 'src/main/worker.ts', env, nodeArgs: opts.nodeArgs });
  const api = new Child({ name: 'api', entry: 'src/main/api.ts', env, nodeArgs: opts.nodeArgs });
  const grpcAddress = `127.0.0.1:${grpcPort}`;
  const restUrl = `http://127.0.0.1:${restPort}`;
  const stop = async () => {
    await Promise.all([api.stop('SIGTERM', 15_000), worker.stop('SIGTERM', 15_000)]);
  };
  try {
    await Promise.all([
      worker.waitForLine((l) => l.includes('"worker running"'), 120_000, 'worker start'),
      (async () => {
        const deadline = Date.now() + 90_000;
        for (;;) {
          if (!api.running) throw new Error(`the API exited while starting:\n${api.tail()}`);
          if ((await grpcServing(grpcAddress)) && (await restHealthy(restUrl))) return;
          if (Date.now() > deadline) throw new Error(`the API is not ready after 90 s:\n${api.tail()}`);
          await sleep(200);
        }
      })(),
    ]);
  } catch (err) {
    await stop();
    throw err;
  }
  return { grpcAddress, restUrl, databaseUrl, taskQueue, api, worker, stop };
}
