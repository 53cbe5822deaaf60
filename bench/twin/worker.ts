import { DefaultLogger, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { twinActivities } from './activities';

/**
 * Worker of the bare twin: its own process and task queue, the same worker settings as src/main/worker-app.ts
 * (SDK defaults, WARN logging). Usage: worker.ts <temporal address> <task queue>. Prints "twin worker running".
 */
async function main(): Promise<void> {
  const [address, taskQueue] = process.argv.slice(2);
  Runtime.install({ logger: new DefaultLogger('WARN') });
  const connection = await NativeConnection.connect({ address });
  const worker = await Worker.create({
    connection,
    namespace: 'default',
    taskQueue,
    workflowsPath: require.resolve('./workflow'),
    activities: twinActivities,
    shutdownGraceTime: '10 seconds',
    // Experiments only (the bench runs the twin with the system worker's settings): extra WorkerOptions as JSON.
    ...(process.env.BENCH_TWIN_WORKER_OPTIONS ? JSON.parse(process.env.BENCH_TWIN_WORKER_OPTIONS) : {}),
  });
  const stop = () => worker.getState() === 'RUNNING' && worker.shutdown();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  const done = worker.run();
  console.log('twin worker running');
  await done;
  await connection.close();
  process.exit(0);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
