/**
 * Records the job workflow's histories that test/replay/job-workflow.replay.test.ts replays.
 *
 *   npx tsx scripts/record-histories.ts                     # every scenario
 *   npx tsx scripts/record-histories.ts happy owed          # only the named ones
 *   npx tsx scripts/record-histories.ts --keep-as=<label>   # first keeps the current files in histories/previous/<label>/
 *
 * Each scenario runs the real workflow on a local Temporal dev server (the `temporal` CLI, found like the test
 * setup finds it; TEMPORAL_CLI overrides) with the fake activities of the workflow tests, and writes
 * test/replay/histories/<scenario>.json. Re-record only on purpose: a workflow change that needs new histories
 * must stay replay-compatible with the old ones (patched), so keep the old files next to the new ones: pass
 * --keep-as=<label> (say, the commit the old files were recorded against) and the replay test replays them too.
 */
import fs from 'node:fs';
import path from 'node:path';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import type { JobSpec } from '../src/domain/job';
import { ensureTemporalCli } from '../src/infra/temporal-cli';
import { createJobWorkflowGateway } from '../src/services/job-workflows';
import { PaymentFailures } from '../src/domain/payments';
import { acceptedSignal, acceptedUpdate, cancelUpdate, completeUpdate, nodesChangedSignal, progressSignal, walletRegisteredSignal } from '../src/workflows/messages';
import {
  createJobTestEnv,
  createJobWorker,
  FakeCluster,
  FAST_OPTIONS,
  jobSpec,
  keepAlive,
  runHistories,
  runWorkerUntil,
  startJob,
  uniqueTaskQueue,
  waitForStatus,
  waitUntil,
  type JobHandle,
} from '../test/workflows/job-harness';
import { HISTORIES_DIR as OUT_DIR, PREVIOUS_DIR, replayWorkflowId } from '../test/replay/histories';

interface Scenario {
  nodes: string[];
  options?: Partial<typeof FAST_OPTIONS>;
  spec?: Parameters<typeof jobSpec>[1];
  /** Sets the fakes up before the job starts (a node without a wallet, a refused escrow). */
  setup?(cluster: FakeCluster): void;
  /** Drives the job to its end (as nodes and clients would). */
  drive(ctx: { env: TestWorkflowEnvironment; handle: JobHandle; jobId: string; cluster: FakeCluster }): Promise<void>;
  /** Which runs to keep when the job continued as new: default only the first. */
  runs?: 'first' | 'first-and-last';
  /** Starts the job other than as SubmitJob does (default startJob). */
  start?(ctx: { env: TestWorkflowEnvironment; taskQueue: string; spec: JobSpec }): Promise<JobHandle>;
}

/** `nodeId`, holding the job's `attempt` and heartbeating meanwhile, accepts it and reports it completed. */
async function acceptAndComplete(env: TestWorkflowEnvironment, handle: JobHandle, jobId: string, nodeId: string, attempt = 1): Promise<void> {
  const alive = keepAlive(env.client, jobId, attempt);
  try {
    await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId }] });
    await handle.executeUpdate(completeUpdate, { args: [{ nodeId }], updateId: `complete/${nodeId}` });
  } finally {
    alive.stop();
  }
}

/** node-a accepts and completes the job at once; it ends completed with node-a's payment owed. */
async function completedOwed(env: TestWorkflowEnvironment, handle: JobHandle, jobId: string): Promise<void> {
  await waitForStatus(handle, (v) => v.phase === 'assigned');
  await acceptAndComplete(env, handle, jobId, 'node-a');
  await waitForStatus(handle, (v) => v.phase === 'completed' && v.escrow === 'owed');
}

/** node-a takes the job (`accept`) and never reports its end: completed at the end of its 1 s run and grace. */
function unreportedEnd(accept: (handle: JobHandle) => Promise<unknown>): Scenario {
  return {
    nodes: ['node-a'],
    options: { unreportedEndGraceMs: 600 },
    spec: { estimatedDuration: 1 },
    async drive({ env, handle, jobId }) {
      await waitForStatus(handle, (v) => v.phase === 'assigned');
      const alive = keepAlive(env.client, jobId, 1);
      try {
        await accept(handle);
        await handle.result();
      } finally {
        alive.stop();
      }
    },
  };
}

const scenarios: Record<string, Scenario> = {
  /** escrow → assigned → running (progress) → completed, paid. */
  happy: {
    nodes: ['node-a'],
    async drive({ env, handle, jobId }) {
      await waitForStatus(handle, (v) => v.phase === 'assigned');
      const alive = keepAlive(env.client, jobId, 1);
      try {
        await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
        await handle.signal(progressSignal, { nodeId: 'node-a', progress: 0.5, epoch: 1 });
        await waitForStatus(handle, (v) => v.progress === 0.5);
        await handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a', finalMetrics: { loss: 0.1 } }], updateId: 'complete/node-a' });
      } finally {
        alive.stop();
      }
    },
  },
  /** node-a goes silent (heartbeat timeout) → queued → node-b → completed. */
  'node-lost-reassigned': {
    nodes: ['node-a', 'node-b'],
    options: { heartbeatTimeoutMs: 1500 },
    async drive({ env, handle, jobId }) {
      await waitForStatus(handle, (v) => v.phase === 'assigned');
      await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
      await waitForStatus(handle, (v) => v.attempt === 2 && v.phase === 'assigned');
      await acceptAndComplete(env, handle, jobId, 'node-b', 2);
    },
  },
  /** Recorded while Temporal was away, cancelled before the sweep started it: started with the cancel, nothing escrowed. */
  'cancelled-before-start': {
    nodes: ['node-a'],
    async start({ env, taskQueue, spec }) {
      const gateway = createJobWorkflowGateway({ client: env.client, taskQueue, options: FAST_OPTIONS, tokenDecimals: 9 });
      await gateway.cancel(spec.jobId, 'changed my mind', spec);
      const { runId } = await env.client.workflow.getHandle(spec.jobId).describe();
      return Object.assign(env.client.workflow.getHandle(spec.jobId), { firstExecutionRunId: runId }) as JobHandle;
    },
    async drive() {},
  },
  /** running on node-a → the client cancels → refunded. */
  cancelled: {
    nodes: ['node-a'],
    async drive({ env, handle, jobId }) {
      await waitForStatus(handle, (v) => v.phase === 'assigned');
      const alive = keepAlive(env.client, jobId, 1);
      try {
        await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
        await waitForStatus(handle, (v) => v.phase === 'running');
        await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'changed my mind' }], updateId: 'cancel' });
      } finally {
        alive.stop();
      }
    },
  },
  /** Both attempts go silent → failed → refunded. */
  failed: {
    nodes: ['node-a', 'node-b'],
    options: { heartbeatTimeoutMs: 1500, maxAttempts: 2 },
    async drive({ handle }) {
      await handle.result();
    },
  },
  /**
   * node-a has no wallet: completed with its payment owed; a walletRegistered signal while it still has none (owed
   * again); it registers one, the next signal pays it (released).
   */
  owed: {
    nodes: [],
    setup(cluster) {
      cluster.register('node-a', 'accept', { wallet: false });
    },
    async drive({ env, handle, jobId, cluster }) {
      await completedOwed(env, handle, jobId);
      await handle.signal(walletRegisteredSignal);
      await waitUntil(() => cluster.releaseOutcomes.length === 2, 10_000, 'the second (still owed) release');
      cluster.registerWallet('node-a');
      await handle.signal(walletRegisteredSignal);
    },
  },
  /**
   * node-a has no wallet: completed with its payment owed; it registers one that cannot receive tokens yet (no
   * token account): still owed, the new reason recorded on the job; then it can, and the next signal pays it.
   */
  'owed-why': {
    nodes: [],
    setup(cluster) {
      cluster.register('node-a', 'accept', { wallet: false });
      cluster.oweBecause('node-a', 'until it registers a wallet');
    },
    async drive({ env, handle, jobId, cluster }) {
      await completedOwed(env, handle, jobId);
      cluster.oweBecause('node-a', 'until its wallet can receive them: W has no token account for M');
      await handle.signal(walletRegisteredSignal);
      await waitUntil(() => cluster.releaseOutcomes.length === 2, 10_000, 'the second (still owed) release');
      cluster.registerWallet('node-a');
      await handle.signal(walletRegisteredSignal);
    },
  },
  /**
   * Queued; node-slow comes and answers every offer after the offer's activity gave up (each try's record lands
   * late): the job is recorded back in the queue, the node told to stop; node-a comes and completes it.
   */
  'offer-unknown': {
    nodes: [],
    options: { requeueIntervalMs: 60_000 },
    async drive({ env, handle, jobId, cluster }) {
      await waitForStatus(handle, (v) => v.phase === 'queued');
      cluster.register('node-slow', 'slow');
      await handle.signal(nodesChangedSignal);
      await waitUntil(() => cluster.transitions.some((t) => t.to === 'queued' && t.cancelOnNode === 'node-slow'), 15_000, 'the job back in the queue');
      cluster.register('node-a');
      await handle.signal(nodesChangedSignal);
      await waitForStatus(handle, (v) => v.phase === 'assigned' && v.nodeId === 'node-a');
      await acceptAndComplete(env, handle, jobId, 'node-a');
    },
  },
  /** The payer has no funds: the escrow is refused for good → failed (402), never matched. */
  'escrow-refused': {
    nodes: ['node-a'],
    setup(cluster) {
      cluster.escrowRefusal = { type: PaymentFailures.insufficientFunds, message: 'escrow of the job: insufficient funds' };
    },
    async drive({ handle }) {
      await handle.result();
    },
  },
  /** A node that accepts and never reports its end, as shipping nodes do: completed at the end of its expected run. */
  'unreported-end': unreportedEnd((handle) => handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] })),
  /** As unreported-end, the acceptance coming as the acceptedLate signal (no worker took the update in time). */
  'accepted-late': unreportedEnd((handle) => handle.signal(acceptedSignal, { nodeId: 'node-a' })),
  /** Progress reports push the history past its limit: the run continues as new, then completes. */
  'continued-as-new': {
    nodes: ['node-a'],
    options: { historyEventLimit: 40 },
    runs: 'first-and-last',
    async drive({ env, handle, jobId }) {
      await waitForStatus(handle, (v) => v.phase === 'assigned');
      const alive = keepAlive(env.client, jobId, 1);
      try {
        await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
        for (let i = 1; i <= 30; i++) await handle.signal(progressSignal, { nodeId: 'node-a', progress: i / 100, epoch: i });
        await waitForStatus(handle, (v) => v.epoch === 30);
        await handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a' }], updateId: 'complete/node-a' });
      } finally {
        alive.stop();
      }
    },
  },
};

async function record(env: TestWorkflowEnvironment, bundle: WorkflowBundleWithSourceMap, name: string): Promise<string[]> {
  const scenario = scenarios[name]!;
  const cluster = new FakeCluster(scenario.nodes);
  scenario.setup?.(cluster);
  const taskQueue = uniqueTaskQueue(`record-${name}`);
  const jobId = replayWorkflowId(name);
  const worker = await createJobWorker(env, bundle, taskQueue, cluster);
  const written: string[] = [];
  await runWorkerUntil(worker, cluster, async () => {
    const spec = jobSpec(jobId, scenario.spec);
    const handle = scenario.start ? await scenario.start({ env, taskQueue, spec }) : await startJob(env.client, taskQueue, spec, { ...FAST_OPTIONS, ...scenario.options });
    await scenario.drive({ env, handle, jobId, cluster });
    const result = await handle.result();
    const runs = await runHistories(env.client, jobId, handle.firstExecutionRunId);
    const keep =
      scenario.runs === 'first-and-last' ? [runs[0]!, runs[runs.length - 1]!] : [runs[0]!];
    if (scenario.runs === 'first-and-last' && runs.length < 2) throw new Error(`${name}: the job did not continue as new`);
    keep.forEach((run, i) => {
      const file = path.join(OUT_DIR, keep.length > 1 ? `${name}.run-${i === 0 ? 'first' : 'last'}.json` : `${name}.json`);
      fs.writeFileSync(file, `${historyToJSON({ events: run.events })}\n`);
      written.push(`${path.relative(process.cwd(), file)} (${run.events.length} events)`);
    });
    process.stdout.write(`${name}: ${result.phase} after ${result.attempts} attempt(s), ${runs.length} run(s)\n`);
  });
  return written;
}

/** Copies the recorded histories as they are now to histories/previous/<label>/, which the replay test replays too. */
function keepPrevious(label: string): void {
  if (!/^[\w.-]+$/.test(label)) throw new Error(`--keep-as: use letters, digits, '.', '_' or '-', not ${JSON.stringify(label)}`);
  const target = path.join(PREVIOUS_DIR, label);
  if (fs.existsSync(target)) throw new Error(`${path.relative(process.cwd(), target)} exists already`);
  const files = fs.existsSync(OUT_DIR) ? fs.readdirSync(OUT_DIR).filter((f) => f.endsWith('.json')) : [];
  if (files.length === 0) throw new Error('--keep-as: there are no recorded histories to keep');
  fs.mkdirSync(target, { recursive: true });
  for (const file of files) fs.copyFileSync(path.join(OUT_DIR, file), path.join(target, file));
  process.stdout.write(`kept ${files.length} histories in ${path.relative(process.cwd(), target)}\n`);
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const keepAs = args.find((a) => a.startsWith('--keep-as='))?.slice('--keep-as='.length);
  const wanted = args.filter((a) => !a.startsWith('--'));
  const unknown = wanted.filter((n) => !(n in scenarios));
  if (unknown.length) throw new Error(`unknown scenario(s) ${unknown.join(', ')}; known: ${Object.keys(scenarios).join(', ')}`);
  const names = wanted.length ? wanted : Object.keys(scenarios);

  if (keepAs !== undefined) keepPrevious(keepAs);
  fs.mkdirSync(OUT_DIR, { recursive: true });
  const { env, bundle } = await createJobTestEnv(await ensureTemporalCli((m) => process.stderr.write(`${m}\n`)));
  try {
    for (const name of names) {
      for (const line of await record(env, bundle, name)) process.stdout.write(`  wrote ${line}\n`);
    }
  } finally {
    await env.teardown();
  }
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
