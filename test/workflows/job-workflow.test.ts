/**
 * The job workflow against a real Temporal dev server (the `temporal` CLI, started by TestWorkflowEnvironment.createLocal)
 * with typed fake activities. Node liveness is real time: the test heartbeats the watch activity by id, as the API does,
 * and a silent node surfaces as the server's heartbeat timeout.
 *
 * Why not the time-skipping test server: it runs this workflow (after registering the search attributes through the
 * operator API), but it never skips time while an activity is outstanding, and the async-completed watch is
 * outstanding for the whole life of an attempt; measured, a 20 s heartbeat timeout took 20 s of real time there too.
 * So it would buy no speed, while the dev server is the server production runs (update id dedupe on closed runs,
 * id conflict policies, continue-as-new under incoming signals) and starts just as fast (about 0.2 s).
 */
import {
  WorkflowExecutionAlreadyStartedError,
  WorkflowFailedError,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  type Client,
} from '@temporalio/client';
import { ApplicationFailure, CancelledFailure, type Duration } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { WorkerOptions, WorkflowBundleWithSourceMap } from '@temporalio/worker';
import type { JobSpec } from '../../src/domain/job';
import { UnavailableError } from '../../src/domain/errors';
import { PaymentFailures } from '../../src/domain/payments';
import { createJobWorkflowGateway } from '../../src/services/job-workflows';
import type { JobState, JobWorkflowOptions } from '../../src/workflows/job-workflow';
import {
  acceptedSignal,
  acceptedUpdate,
  cancelUpdate,
  completeUpdate,
  failUpdate,
  JobRejections,
  jobStatusQuery,
  nodesChangedSignal,
  progressSignal,
  walletRegisteredSignal,
} from '../../src/workflows/messages';
import { JobSearchAttributes as SA } from '../../src/workflows/search-attributes';
import { testTemporalCli } from '../support/env';
import {
  createJobTestEnv,
  createJobWorker,
  FakeCluster,
  FAST_OPTIONS,
  Gate,
  jobSpec,
  keepAlive,
  runHistories,
  runWorkerUntil,
  sleep,
  startJob,
  uniqueTaskQueue,
  waitForStatus,
  waitUntil,
  walletOf,
  type EscrowRefusalType,
  type JobHandle,
} from './job-harness';

const EventType = temporal.api.enums.v1.EventType;

// The slowest case takes about 8 s; a hung one should fail well before the global 120 s.
jest.setTimeout(30_000);

let env: TestWorkflowEnvironment;
let bundle: WorkflowBundleWithSourceMap;
const handles: JobHandle[] = [];

// Starting a dev server and bundling the workflows is the slow part on a loaded machine: the global timeout's.
beforeAll(async () => {
  ({ env, bundle } = await createJobTestEnv(testTemporalCli()));
}, 120_000);

afterEach(async () => {
  // A failed test may leave its job waiting; nothing polls its task queue any more, but end it anyway.
  await Promise.all(handles.splice(0).map((h) => h.terminate('test finished').catch(() => undefined)));
});

afterAll(async () => {
  await env?.teardown();
});

interface JobCtx {
  client: Client;
  start(spec: JobSpec, options: JobWorkflowOptions, resume?: JobState, workflowTaskTimeout?: Duration): Promise<JobHandle>;
}

/** Runs `body` while a worker with `cluster`'s activities polls a task queue of its own. */
async function withWorker(
  label: string,
  cluster: FakeCluster,
  body: (ctx: JobCtx) => Promise<void>,
  workerOptions: Partial<WorkerOptions> = {},
): Promise<void> {
  const taskQueue = uniqueTaskQueue(label);
  const worker = await createJobWorker(env, bundle, taskQueue, cluster, workerOptions);
  const ctx: JobCtx = {
    client: env.client,
    start: async (spec, options, resume, workflowTaskTimeout) => {
      const handle = await startJob(env.client, taskQueue, spec, options, resume, workflowTaskTimeout);
      handles.push(handle);
      return handle;
    },
  };
  await runWorkerUntil(worker, cluster, () => body(ctx));
}

let jobCounter = 0;
const newJobId = (label: string) => `job-${label}-${Date.now().toString(36)}-${++jobCounter}`;

/**
 * The rejection an update validator threw, asserting its type. A validator rejects at once; an update that was
 * admitted instead may wait (for a gated payment, say), so it is given up on after `withinMs`.
 */
async function expectUpdateRejected(promise: Promise<unknown>, type: string, withinMs = 5000): Promise<ApplicationFailure> {
  let timer: NodeJS.Timeout | undefined;
  const err = await Promise.race([
    promise.then(
      () => new Error('the update was admitted and completed'),
      (e: unknown) => e,
    ),
    new Promise<Error>((resolve) => {
      timer = setTimeout(() => resolve(new Error(`the update was admitted: no rejection within ${withinMs} ms`)), withinMs);
    }),
  ]).finally(() => clearTimeout(timer));
  expect(err).toBeInstanceOf(WorkflowUpdateFailedError);
  const cause = (err as WorkflowUpdateFailedError).cause;
  expect(cause).toBeInstanceOf(ApplicationFailure);
  expect((cause as ApplicationFailure).type).toBe(type);
  return cause as ApplicationFailure;
}

/** The history length once the workflow is idle (two equal readings 300 ms apart). */
async function settledHistoryLength(handle: JobHandle): Promise<number> {
  let previous = -1;
  for (;;) {
    const length = (await handle.describe()).historyLength;
    if (length === previous) return length;
    previous = length;
    await sleep(300);
  }
}

const phases = (cluster: FakeCluster) => cluster.transitions.map((t) => t.to);

describe('jobWorkflow', () => {
  test('happy path: escrow → match → dispatch → assigned → running → completed, paid once after release', async () => {
    const cluster = new FakeCluster(['node-a']);
    cluster.releaseGate = new Gate();
    const jobId = newJobId('happy');

    await withWorker('happy', cluster, async ({ client, start }) => {
      const handle = await start(jobSpec(jobId), FAST_OPTIONS);

      const assigned = await waitForStatus(handle, (v) => v.phase === 'assigned', 10_000, 'assignment');
      expect(assigned).toMatchObject({ nodeId: 'node-a', attempt: 1, escrow: 'held', progress: 0 });
      expect(cluster.escrowCalls).toEqual([{ jobId, amount: '1000000', payer: 'payer-wallet' }]);
      expect(cluster.matchCalls).toEqual([
        { jobId, requiredDevice: 'CPU', estimatedMemory: 1 << 30, excludeNodeIds: [], paymentUnits: '1000000', estimatedDuration: 60 },
      ]);
      expect(cluster.dispatchCalls.map((c) => [c.nodeId, c.assignEndpoint, c.spec.jobId])).toEqual([['node-a', '10.0.0.1:50055', jobId]]);
      expect(cluster.timeline.indexOf('escrow')).toBeLessThan(cluster.timeline.indexOf('transition:assigned'));

      // The API heartbeats the watch whenever the node shows life.
      const alive = keepAlive(client, jobId, 1);
      try {
        expect(await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] })).toEqual({ acknowledged: true });
        await waitForStatus(handle, (v) => v.phase === 'running', 5000, 'running');

        await handle.signal(progressSignal, { nodeId: 'node-a', progress: 0.5, epoch: 2 });
        await waitForStatus(handle, (v) => v.progress === 0.5 && v.epoch === 2, 5000, 'progress 0.5');

        // Heartbeats keep a node alive past the heartbeat timeout.
        await sleep(FAST_OPTIONS.heartbeatTimeoutMs + 700);
        expect(await handle.query(jobStatusQuery)).toMatchObject({ phase: 'running', attempt: 1, nodeId: 'node-a', failedNodes: [] });
        expect(alive.beats()).toBeGreaterThan(5);

        let settled = false;
        const completion = handle
          .executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a', finalMetrics: { loss: 0.1 } }], updateId: 'complete/node-a' })
          .finally(() => (settled = true));
        await waitUntil(() => cluster.releaseCalls.length === 1, 5000, 'release to start');
        // A retried completion from the same node joins the first one.
        const retried = handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a' }], updateId: 'complete/node-a/retry' });
        await sleep(300);
        expect(settled).toBe(false); // the receipt waits for the money

        cluster.releaseGate!.open();
        const receipt = { paymentReleased: true, txRef: `ledger:${jobId}/release_node` };
        expect(await completion).toEqual(receipt);
        expect(await retried).toEqual(receipt);
      } finally {
        alive.stop();
      }

      expect(await handle.result()).toEqual({
        jobId,
        phase: 'completed',
        attempts: 1,
        nodeId: 'node-a',
        reason: expect.stringContaining('completed on node node-a'),
        txRef: `ledger:${jobId}/release_node`,
      });
      expect(cluster.transitions.map((t) => [t.seq, t.from, t.to, t.attempt])).toEqual([
        [1, 'pending', 'assigned', 1],
        [2, 'assigned', 'running', 1],
        [3, 'running', 'completed', 1],
      ]);
      expect(cluster.transitions[0]).toMatchObject({ assignedNodeId: 'node-a', attempts: 1, actor: 'workflow' });
      expect(cluster.transitions[2]).toMatchObject({ actor: 'node:node-a', ended: true });
      expect(cluster.releaseCalls).toEqual([{ jobId, nodeId: 'node-a' }]);
      expect(cluster.refundCalls).toEqual([]);
      expect(cluster.nodeOutcomes).toEqual([{ nodeId: 'node-a', outcome: 'completed' }]);
      expect(cluster.timeline.indexOf('release:done')).toBeLessThan(cluster.timeline.indexOf('transition:completed'));

      const description = await handle.describe();
      expect(description.typedSearchAttributes.get(SA.status)).toBe('completed');
      expect(description.typedSearchAttributes.get(SA.nodeId)).toBe('node-a');
      expect(description.typedSearchAttributes.get(SA.escrowState)).toBe('released');
      expect(description.typedSearchAttributes.get(SA.attempt)).toBe(1);
    });
  });

  test('a watch that lapsed while the heartbeat relay was down (the node beat all along) → watched again, the job stays on its node; a second lapse, confirmed → reassigned', async () => {
    const cluster = new FakeCluster(['node-a', 'node-b']);
    cluster.aliveAfterLapse = 1;
    const jobId = newJobId('relay-lapse');
    const options = { ...FAST_OPTIONS, heartbeatTimeoutMs: 1500 };

    await withWorker('relay-lapse', cluster, async ({ start }) => {
      const handle = await start(jobSpec(jobId), options);
      await waitForStatus(handle, (v) => v.phase === 'assigned' && v.nodeId === 'node-a');
      await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
      await waitForStatus(handle, (v) => v.phase === 'running');
      // Nobody heartbeats the watch: it lapses, the node is found alive (the relay's lapse), and is watched again.
      await waitUntil(() => cluster.watchCalls.length === 2, 10_000, 'the second watch');
      expect(cluster.confirmCalls).toEqual([{ nodeId: 'node-a', silentForMs: 1500 }]);
      expect(await handle.query(jobStatusQuery)).toMatchObject({ phase: 'running', attempt: 1, nodeId: 'node-a', failedNodes: [] });
      expect(cluster.transitions.some((t) => t.to === 'queued')).toBe(false);
      expect(cluster.nodeOutcomes).toEqual([]);
      // The second lapse is confirmed: the node is lost.
      const reassigned = await waitForStatus(handle, (v) => v.phase === 'assigned' && v.attempt === 2, 10_000, 'reassignment');
      expect(reassigned).toMatchObject({ nodeId: 'node-b', failedNodes: ['node-a'] });
      expect(cluster.confirmCalls).toHaveLength(2);
      expect(cluster.nodeOutcomes).toEqual([{ nodeId: 'node-a', outcome: 'failed' }]);
      await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'end of test' }] });
    });
  });

  test('a completion that comes while a lapse is being confirmed is answered at once (the confirmation is dropped); a confirmation that fails for good counts as a loss', async () => {
    const cluster = new FakeCluster(['node-a', 'node-b']);
    cluster.confirmGate = new Gate(); // the relay is not back yet
    const jobId = newJobId('confirm-interrupted');
    const options = { ...FAST_OPTIONS, heartbeatTimeoutMs: 1500 };

    await withWorker('confirm-interrupted', cluster, async ({ client, start }) => {
      const handle = await start(jobSpec(jobId), options);
      await waitForStatus(handle, (v) => v.phase === 'assigned' && v.nodeId === 'node-a');
      await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
      await waitUntil(() => cluster.confirmCalls.length === 1, 10_000, 'the confirmation of the lapse');
      const alive = keepAlive(client, jobId, 1);
      try {
        expect(await handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a' }] })).toEqual({ paymentReleased: true, txRef: `ledger:${jobId}/release_node` });
      } finally {
        alive.stop();
      }
      expect(await handle.result()).toMatchObject({ phase: 'completed', nodeId: 'node-a', attempts: 1 });
      expect(cluster.nodeOutcomes).toEqual([{ nodeId: 'node-a', outcome: 'completed' }]);
    });

    const failing = new FakeCluster(['node-a', 'node-b']);
    failing.confirmFails = true;
    const lostId = newJobId('confirm-fails');
    await withWorker('confirm-fails', failing, async ({ start }) => {
      const handle = await start(jobSpec(lostId), options);
      await waitForStatus(handle, (v) => v.phase === 'assigned' && v.nodeId === 'node-a');
      const reassigned = await waitForStatus(handle, (v) => v.phase === 'assigned' && v.attempt === 2, 10_000, 'reassignment');
      expect(reassigned).toMatchObject({ nodeId: 'node-b', failedNodes: ['node-a'] });
      expect(failing.transitions.find((t) => t.to === 'queued')!.reason).toContain('its loss could not be confirmed');
      await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'end of test' }] });
    });
  });

  test('node lost (no heartbeats) → back to the queue → reassigned to another node, never the lost one', async () => {
    const cluster = new FakeCluster(['node-a', 'node-b']);
    const jobId = newJobId('lost');
    const options = { ...FAST_OPTIONS, heartbeatTimeoutMs: 1500 };

    await withWorker('lost', cluster, async ({ client, start }) => {
      const handle = await start(jobSpec(jobId), options);
      await waitForStatus(handle, (v) => v.phase === 'assigned' && v.nodeId === 'node-a');
      await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
      await waitForStatus(handle, (v) => v.phase === 'running');

      // Nobody heartbeats watch-1: the server times it out and the workflow moves on.
      const reassigned = await waitForStatus(handle, (v) => v.phase === 'assigned' && v.attempt === 2, 10_000, 'reassignment');
      expect(Date.now() - cluster.watchCalls[0]!.at).toBeGreaterThanOrEqual(options.heartbeatTimeoutMs - 100);
      expect(reassigned).toMatchObject({ nodeId: 'node-b', failedNodes: ['node-a'] });
      const lost = cluster.transitions.find((t) => t.to === 'queued');
      expect(lost).toMatchObject({
        from: 'running',
        reason: expect.stringContaining('node lost'),
        cancelOnNode: 'node-a',
        assignedNodeId: null,
        data: { lostNode: 'node-a' },
      });
      expect(cluster.matchCalls.at(-1)!.excludeNodeIds).toContain('node-a');
      expect(cluster.dispatchCalls.map((c) => c.nodeId)).toEqual(['node-a', 'node-b']);

      // The lost node comes back too late: its reports are stale.
      await expectUpdateRejected(handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a' }] }), JobRejections.notHolder);

      const alive = keepAlive(client, jobId, 2);
      try {
        await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-b' }] });
        expect(await handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-b' }] })).toEqual({
          paymentReleased: true,
          txRef: `ledger:${jobId}/release_node`,
        });
      } finally {
        alive.stop();
      }

      expect(await handle.result()).toMatchObject({ phase: 'completed', attempts: 2, nodeId: 'node-b' });
      expect(cluster.transitions.map((t) => [t.seq, t.to, t.nodeId])).toEqual([
        [1, 'assigned', 'node-a'],
        [2, 'running', 'node-a'],
        [3, 'queued', null],
        [4, 'assigned', 'node-b'],
        [5, 'running', 'node-b'],
        [6, 'completed', 'node-b'],
      ]);
      expect(cluster.transitions[3]).toMatchObject({ assignedNodeId: 'node-b', attempts: 2 });
      expect(cluster.watchCalls.map((w) => [w.nodeId, w.attempt])).toEqual([
        ['node-a', 1],
        ['node-b', 2],
      ]);
      expect(cluster.nodeOutcomes).toEqual([
        { nodeId: 'node-a', outcome: 'failed' },
        { nodeId: 'node-b', outcome: 'completed' },
      ]);
      expect(cluster.releaseCalls).toEqual([{ jobId, nodeId: 'node-b' }]);
      expect(cluster.refundCalls).toEqual([]);
    });
  });

  test('a lost node\'s report is refused from the moment its attempt is given up, while the job is still being requeued', async () => {
    const cluster = new FakeCluster(['node-a', 'node-b']);
    const jobId = newJobId('lost-race');
    const options = { ...FAST_OPTIONS, heartbeatTimeoutMs: 1500 };
    cluster.outcomeGate = new Gate();

    await withWorker('lost-race', cluster, async ({ client, start }) => {
      // A 2 s workflow task timeout: the task running a long local activity is heartbeated (completed and
      // continued) after ~80 % of it, and the messages that arrived meanwhile are delivered then.
      const handle = await start(jobSpec(jobId), options, undefined, '2 seconds');
      await waitForStatus(handle, (v) => v.phase === 'assigned' && v.nodeId === 'node-a');
      // node-a goes silent; the workflow gives the attempt up and records the loss, which waits at the gate. The
      // reports node-a sends meanwhile are validated at the next heartbeat of that task, node-a still recorded.
      await waitUntil(() => cluster.timeline.includes('node-outcome:waiting'), 10_000, 'the loss to be recorded');
      await Promise.all([
        expectUpdateRejected(handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a' }] }), JobRejections.notHolder, 10_000),
        expectUpdateRejected(handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] }), JobRejections.notHolder, 10_000),
      ]);
      expect((await handle.query(jobStatusQuery)).nodeId).toBe('node-a');
      cluster.outcomeGate!.open();

      await waitForStatus(handle, (v) => v.phase === 'assigned' && v.nodeId === 'node-b', 10_000, 'reassignment');
      const alive = keepAlive(client, jobId, 2);
      try {
        expect(await handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-b' }] })).toMatchObject({ paymentReleased: true });
      } finally {
        alive.stop();
      }
      expect(cluster.releaseCalls).toEqual([{ jobId, nodeId: 'node-b' }]);
    });
  });

  test('replayed from its history at every workflow task (no workflow cache), a job is placed, lost, placed again and paid', async () => {
    const cluster = new FakeCluster(['node-a', 'node-b']);
    const jobId = newJobId('no-cache');
    const options = { ...FAST_OPTIONS, heartbeatTimeoutMs: 1500 };

    await withWorker(
      'no-cache',
      cluster,
      async ({ client, start }) => {
        const handle = await start(jobSpec(jobId), options);
        await waitForStatus(handle, (v) => v.phase === 'assigned' && v.nodeId === 'node-a');
        await waitForStatus(handle, (v) => v.phase === 'assigned' && v.attempt === 2, 10_000, 'reassignment');
        const alive = keepAlive(client, jobId, 2);
        try {
          await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-b' }] });
          await handle.signal(progressSignal, { nodeId: 'node-b', progress: 0.5, epoch: 1 });
          expect(await handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-b' }] })).toMatchObject({ paymentReleased: true });
        } finally {
          alive.stop();
        }
        expect(await handle.result()).toMatchObject({ phase: 'completed', attempts: 2, nodeId: 'node-b' });
        const [run] = await runHistories(client, jobId, handle.firstExecutionRunId);
        expect(run!.events.filter((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)).toEqual([]);
        expect(cluster.transitions.map((t) => t.to)).toEqual(['assigned', 'queued', 'assigned', 'running', 'completed']);
      },
      { maxCachedWorkflows: 0 },
    );
  });

  test('attempts exhausted (every node silent) → failed and refunded once, never paid', async () => {
    const cluster = new FakeCluster(['node-a', 'node-b', 'node-c']);
    const jobId = newJobId('exhausted');
    const options = { ...FAST_OPTIONS, heartbeatTimeoutMs: 1500, maxAttempts: 2 };

    await withWorker('exhausted', cluster, async ({ start }) => {
      const handle = await start(jobSpec(jobId), options);
      const result = await handle.result();

      expect(result).toMatchObject({
        phase: 'failed',
        attempts: 2,
        nodeId: 'node-b',
        reason: expect.stringContaining('failed after 2 attempt(s)'),
        txRef: `ledger:${jobId}/refund`,
      });
      expect(phases(cluster)).toEqual(['assigned', 'queued', 'assigned', 'failed', 'failed']);
      expect(cluster.transitions.at(-2)).toMatchObject({
        ended: true,
        cancelOnNode: 'node-b',
        error: { code: 500, message: expect.stringContaining('node lost') },
      });
      expect(cluster.dispatchCalls.map((c) => c.nodeId)).toEqual(['node-a', 'node-b']); // node-c was never tried
      expect(cluster.refundCalls).toEqual([{ jobId }]);
      expect(cluster.releaseCalls).toEqual([]);
      expect(cluster.ledger.map((l) => l.leg)).toEqual(['escrow', 'refund']);

      const description = await handle.describe();
      expect(description.typedSearchAttributes.get(SA.status)).toBe('failed');
      expect(description.typedSearchAttributes.get(SA.escrowState)).toBe('refunded');
      expect(description.typedSearchAttributes.get(SA.attempt)).toBe(2);
    });
  });

  describe('cancel', () => {
    test('while its refund waits (the chain away, or the payer\'s account closed): ended at once, its node told to stop; an operator\'s cancel meanwhile changes nothing; the refund recorded when it lands', async () => {
      const cluster = new FakeCluster(['node-a']);
      const jobId = newJobId('cancel-refund-waits');

      await withWorker('cancel-refund-waits', cluster, async ({ start }) => {
        const handle = await start(jobSpec(jobId), FAST_OPTIONS);
        await waitForStatus(handle, (v) => v.phase === 'assigned');
        cluster.refundGate = new Gate();
        const cancel = handle.executeUpdate(cancelUpdate, { args: [{ reason: 'no longer needed' }], updateId: 'cancel' });
        await waitUntil(() => cluster.refundCalls.length === 1, 5000, 'the refund to start');

        // Ended before the refund: the job shows it, its node is told to stop, its escrow still held.
        expect(await handle.query(jobStatusQuery)).toMatchObject({ phase: 'cancelled', escrow: 'held' });
        expect(phases(cluster)).toEqual(['assigned', 'cancelled']);
        expect(cluster.transitions.at(-1)).toMatchObject({ actor: 'client', cancelOnNode: 'node-a', ended: true, reason: 'cancelled: no longer needed; refunding the escrow' });
        expect((await handle.describe()).typedSearchAttributes.get(SA.escrowState)).toBe('held');

        // An operator cancels the workflow meanwhile: the refund and its record go on, the job is not ended again.
        await handle.cancel();
        await sleep(300);
        cluster.refundGate.open();
        expect(await cancel).toEqual({ refundIssued: true, txRef: `ledger:${jobId}/refund` });
        await handle.result().catch(() => undefined);
        expect(phases(cluster)).toEqual(['assigned', 'cancelled', 'cancelled']);
        expect(cluster.transitions.at(-1)).toMatchObject({ actor: 'workflow', reason: 'cancelled: no longer needed; escrow refunded: 1000000 to payer-wallet' });
        expect(cluster.refundCalls).toHaveLength(1);
        expect(cluster.ledger.map((l) => l.leg)).toEqual(['escrow', 'refund']);
        expect((await handle.describe()).typedSearchAttributes.get(SA.escrowState)).toBe('refunded');
      });
    });

    describe('of a job recorded while Temporal was away, before its workflow started (CancelJob starts it with the cancel)', () => {
      /** Cancels `spec`'s job as CancelJob does for a job still pending, with a worker polling. */
      async function cancelUnstarted(label: string, cluster: FakeCluster, spec: JobSpec) {
        const taskQueue = uniqueTaskQueue(label);
        const gateway = createJobWorkflowGateway({ client: env.client, taskQueue, options: FAST_OPTIONS, tokenDecimals: 9 });
        const handle = env.client.workflow.getHandle(spec.jobId) as JobHandle;
        handles.push(handle);
        let receipt: unknown;
        await runWorkerUntil(await createJobWorker(env, bundle, taskQueue, cluster), cluster, async () => {
          receipt = await gateway.cancel(spec.jobId, 'changed my mind', spec);
          await handle.result();
          // Asked again (the API's retry): the same answer.
          expect(await gateway.cancel(spec.jobId, 'changed my mind', spec)).toEqual(receipt);
        });
        return { receipt, result: await handle.result() };
      }

      test('paid by the server: ended before anything is escrowed or claimed', async () => {
        const cluster = new FakeCluster(['node-a']);
        const jobId = newJobId('cancel-unstarted');
        const { receipt, result } = await cancelUnstarted('cancel-unstarted', cluster, jobSpec(jobId));
        expect(receipt).toEqual({ refundIssued: false, txRef: '' });
        expect(result).toMatchObject({ phase: 'cancelled', attempts: 0, nodeId: null });
        expect(cluster.transitions.map((t) => [t.from, t.to, t.actor, t.reason])).toEqual([['pending', 'cancelled', 'client', 'cancelled: changed my mind']]);
        expect(cluster.escrowCalls).toEqual([]);
        expect(cluster.matchCalls).toEqual([]);
        expect(cluster.refundCalls).toEqual([]);
      });

      test('paid by its payer\'s own transfer: escrowed, so that it is refunded', async () => {
        const cluster = new FakeCluster(['node-a']);
        const jobId = newJobId('cancel-unstarted-funded');
        const { receipt, result } = await cancelUnstarted('cancel-unstarted-funded', cluster, jobSpec(jobId, { escrowTxHash: 'payer-transfer' }));
        expect(receipt).toEqual({ refundIssued: true, txRef: `ledger:${jobId}/refund` });
        expect(result).toMatchObject({ phase: 'cancelled' });
        expect(cluster.ledger.map((l) => l.leg)).toEqual(['escrow', 'refund']);
        expect(cluster.dispatchCalls).toEqual([]);
      });
    });

    test('while assigned → refunded once; a later cancel is rejected and changes nothing', async () => {
      const cluster = new FakeCluster(['node-a']);
      const jobId = newJobId('cancel-assigned');

      await withWorker('cancel-assigned', cluster, async ({ start }) => {
        const handle = await start(jobSpec(jobId), FAST_OPTIONS);
        await waitForStatus(handle, (v) => v.phase === 'assigned');

        const receipt = await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'changed my mind' }], updateId: 'cancel' });
        expect(receipt).toEqual({ refundIssued: true, txRef: `ledger:${jobId}/refund` });
        expect(await handle.result()).toMatchObject({ phase: 'cancelled', attempts: 1, reason: 'cancelled: changed my mind; escrow refunded: 1000000 to payer-wallet' });
        // Ended (the node told to stop at its next heartbeat) before the refund, which is recorded when it lands.
        expect(phases(cluster)).toEqual(['assigned', 'cancelled', 'cancelled']);
        expect(cluster.transitions.at(-2)).toMatchObject({ actor: 'client', cancelOnNode: 'node-a', ended: true, reason: 'cancelled: changed my mind; refunding the escrow', data: { refund: null } });
        expect(cluster.transitions.at(-1)).toMatchObject({ actor: 'workflow', data: { refund: { leg: 'refund', txRef: `ledger:${jobId}/refund` } } });

        // The job is over: a new cancel is refused (the run is closed, so the server answers, not the validator).
        const again = await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'again' }], updateId: 'cancel-2' }).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(again).toBeInstanceOf(WorkflowNotFoundError);
        // The API's own retry (same update id) gets the first receipt back instead of a second refund.
        expect(await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'retry' }], updateId: 'cancel' })).toEqual(receipt);

        expect(cluster.refundCalls).toEqual([{ jobId }]);
        expect(cluster.releaseCalls).toEqual([]);
        expect((await handle.describe()).typedSearchAttributes.get(SA.status)).toBe('cancelled');
      });
    });

    test('while the completion is being paid → rejected with JobFinished, the node is paid, nothing refunded', async () => {
      const cluster = new FakeCluster(['node-a']);
      cluster.releaseGate = new Gate();
      const jobId = newJobId('cancel-late');

      await withWorker('cancel-late', cluster, async ({ client, start }) => {
        const handle = await start(jobSpec(jobId), FAST_OPTIONS);
        await waitForStatus(handle, (v) => v.phase === 'assigned');
        const alive = keepAlive(client, jobId, 1);
        try {
          const completion = handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a' }] });
          await waitUntil(() => cluster.releaseCalls.length === 1, 5000, 'release to start');

          await expectUpdateRejected(handle.executeUpdate(cancelUpdate, { args: [{ reason: 'too late' }] }), JobRejections.finished);

          cluster.releaseGate!.open();
          expect(await completion).toMatchObject({ paymentReleased: true });
        } finally {
          alive.stop();
        }
        expect(await handle.result()).toMatchObject({ phase: 'completed' });
        expect(cluster.refundCalls).toEqual([]);
        expect(cluster.releaseCalls).toHaveLength(1);
      });
    });

    test('while queued (no node fits) → refunded, never dispatched', async () => {
      const cluster = new FakeCluster([]);
      const jobId = newJobId('cancel-queued');

      await withWorker('cancel-queued', cluster, async ({ start }) => {
        const handle = await start(jobSpec(jobId), { ...FAST_OPTIONS, requeueIntervalMs: 60_000 });
        await waitForStatus(handle, (v) => v.phase === 'queued');

        expect(await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'no hurry' }] })).toEqual({
          refundIssued: true,
          txRef: `ledger:${jobId}/refund`,
        });
        expect(await handle.result()).toMatchObject({ phase: 'cancelled', attempts: 0, nodeId: null });
        expect(cluster.transitions.map((t) => [t.seq, t.from, t.to])).toEqual([
          [1, 'pending', 'queued'],
          [2, 'queued', 'cancelled'],
          [3, 'cancelled', 'cancelled'],
        ]);
        expect(cluster.transitions.at(-1)!.cancelOnNode).toBeUndefined();
        expect(cluster.dispatchCalls).toEqual([]);
        expect(cluster.refundCalls).toEqual([{ jobId }]);
      });
    });
  });

  test('duplicate submit → one run, one escrow; a start after the job finished is rejected', async () => {
    const cluster = new FakeCluster(['node-a']);
    const jobId = newJobId('dup');

    await withWorker('dup', cluster, async ({ start }) => {
      const spec = jobSpec(jobId);
      const first = await start(spec, FAST_OPTIONS);
      const second = await start(spec, FAST_OPTIONS);
      expect(second.firstExecutionRunId).toBe(first.firstExecutionRunId);

      await waitForStatus(first, (v) => v.phase === 'assigned');
      await sleep(300); // room for a second run's escrow, were there one
      expect(cluster.escrowCalls).toHaveLength(1);
      expect(cluster.matchCalls).toHaveLength(1);

      await first.executeUpdate(cancelUpdate, { args: [{ reason: 'done testing' }] });
      await first.result();

      await expect(start(spec, FAST_OPTIONS)).rejects.toBeInstanceOf(WorkflowExecutionAlreadyStartedError);
      expect((await first.describe()).runId).toBe(first.firstExecutionRunId);
      expect(cluster.escrowCalls).toHaveLength(1);
    });
  });

  test('stale reports from a node that does not hold the job are rejected and change nothing', async () => {
    const cluster = new FakeCluster(['node-a']);
    const jobId = newJobId('stale');

    await withWorker('stale', cluster, async ({ client, start }) => {
      const handle = await start(jobSpec(jobId), FAST_OPTIONS);
      await waitForStatus(handle, (v) => v.phase === 'assigned');
      const alive = keepAlive(client, jobId, 1);
      try {
        await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
        await handle.signal(progressSignal, { nodeId: 'node-a', progress: 0.3, epoch: 1 });
        const before = await waitForStatus(handle, (v) => v.phase === 'running' && v.progress === 0.3);

        await expectUpdateRejected(handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-x' }] }), JobRejections.notHolder);
        await expectUpdateRejected(handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-x' }] }), JobRejections.notHolder);
        await expectUpdateRejected(
          handle.executeUpdate(failUpdate, { args: [{ nodeId: 'node-x', message: 'not mine' }] }),
          JobRejections.notHolder,
        );
        await handle.signal(progressSignal, { nodeId: 'node-x', progress: 0.9, epoch: 7 });
        // The holder's next report (no epoch) lands after node-x's; node-x's epoch must not have stuck.
        await handle.signal(progressSignal, { nodeId: 'node-a', progress: 0.4 });
        const after = await waitForStatus(handle, (v) => v.progress === 0.4);
        expect(after).toEqual({ ...before, progress: 0.4 });

        expect(phases(cluster)).toEqual(['assigned', 'running']);
        expect(cluster.nodeOutcomes).toEqual([]);
        expect(cluster.releaseCalls).toEqual([]);
        expect(cluster.refundCalls).toEqual([]);
        // Validator rejections never reach the history: only node-a's `accepted` was admitted.
        const events = (await handle.fetchHistory()).events ?? [];
        const admitted = events.filter((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED);
        expect(admitted).toHaveLength(1);

        await handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a' }] });
      } finally {
        alive.stop();
      }
      expect(await handle.result()).toMatchObject({ phase: 'completed', nodeId: 'node-a', attempts: 1 });
    });
  });

  test('a node that refuses → the next node, without using an attempt', async () => {
    const cluster = new FakeCluster();
    cluster.register('node-a', 'refuse');
    cluster.register('node-b');
    const jobId = newJobId('refuse');

    await withWorker('refuse', cluster, async ({ start }) => {
      const handle = await start(jobSpec(jobId), FAST_OPTIONS);
      const view = await waitForStatus(handle, (v) => v.phase === 'assigned');
      expect(view).toMatchObject({ nodeId: 'node-b', attempt: 1, failedNodes: [] });
      expect(cluster.dispatchCalls.map((c) => c.nodeId)).toEqual(['node-a', 'node-b']);
      expect(cluster.matchCalls.map((m) => m.excludeNodeIds)).toEqual([[], ['node-a']]);
      expect(cluster.transitions).toHaveLength(1);
      expect(cluster.transitions[0]).toMatchObject({
        from: 'pending',
        to: 'assigned',
        attempt: 1,
        assignedNodeId: 'node-b',
        data: expect.objectContaining({ refusedBy: ['node-a'] }),
      });
      await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'end of test' }] });
    });
  });

  test('no node fits → queued; a nodesChanged signal after a node registers assigns it at once', async () => {
    const cluster = new FakeCluster([]);
    const jobId = newJobId('nodes-changed');
    const options = { ...FAST_OPTIONS, requeueIntervalMs: 60_000 };

    await withWorker('nodes-changed', cluster, async ({ start }) => {
      const handle = await start(jobSpec(jobId), options);
      await waitForStatus(handle, (v) => v.phase === 'queued');
      await sleep(500);
      expect(cluster.matchCalls).toHaveLength(1); // the requeue timer is long: nothing else re-matches

      cluster.register('node-a');
      const signalledAt = Date.now();
      await handle.signal(nodesChangedSignal);
      const view = await waitForStatus(handle, (v) => v.phase === 'assigned', 5000, 'assignment after nodesChanged');
      expect(Date.now() - signalledAt).toBeLessThan(5000); // far below requeueIntervalMs
      expect(view).toMatchObject({ nodeId: 'node-a', attempt: 1 });
      expect(cluster.matchCalls).toHaveLength(2);
      expect(phases(cluster)).toEqual(['queued', 'assigned']);
      await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'end of test' }] });
    });
  });

  test('an offer whose activity gives up while the node takes the job after all: recorded back in the queue, the node told to stop, the late assignment record not shown', async () => {
    const cluster = new FakeCluster([]);
    const jobId = newJobId('offer-unknown');
    const options = { ...FAST_OPTIONS, requeueIntervalMs: 60_000 };

    await withWorker('offer-unknown', cluster, async ({ start }) => {
      const handle = await start(jobSpec(jobId), options);
      await waitForStatus(handle, (v) => v.phase === 'queued');
      // A node that answers later than the offer waits (both tries): each try's record lands after it gave up.
      cluster.register('node-slow', 'slow');
      await handle.signal(nodesChangedSignal);
      await waitUntil(() => cluster.dispatchCalls.length === 2, 10_000, 'the second try of the offer');
      const backInQueue = () => cluster.transitions.find((t) => t.to === 'queued' && t.cancelOnNode === 'node-slow');
      await waitUntil(() => backInQueue() !== undefined, 10_000, 'the job recorded back in the queue');
      const requeued = backInQueue()!;
      expect(requeued).toMatchObject({ from: 'assigned', to: 'queued', assignedNodeId: null, reason: expect.stringMatching(/node node-slow unreachable.*; not assigned to it$/) });
      const assigned = cluster.transitions.find((t) => t.to === 'assigned')!;
      expect(requeued.seq).toBeGreaterThan(assigned.seq); // the row shows the later record: queued
      expect((await handle.query(jobStatusQuery)).phase).toBe('queued');
      expect(cluster.transitions.filter((t) => t.to === 'queued')).toHaveLength(2); // the first wait, and this one
      await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'end of test' }] });
    });
  });

  test('a wake-up while the escrow is on its way, after the first match found nothing, is not lost: the job looks again at once', async () => {
    const cluster = new FakeCluster([]);
    cluster.escrowGate = new Gate();
    const jobId = newJobId('woken-in-escrow');
    const options = { ...FAST_OPTIONS, requeueIntervalMs: 60_000 };

    await withWorker('woken-in-escrow', cluster, async ({ start }) => {
      const handle = await start(jobSpec(jobId), options);
      await waitUntil(() => cluster.matchCalls.length === 1 && cluster.escrowCalls.length === 1, 5000, 'first match and escrow');
      await sleep(300); // the first match has answered: no node
      cluster.register('node-a');
      await handle.signal(nodesChangedSignal); // as the API wakes a pending job that waits (waiting_since)
      cluster.escrowGate!.open();
      const view = await waitForStatus(handle, (v) => v.phase === 'assigned', 5000, 'assignment right after the escrow');
      expect(view).toMatchObject({ nodeId: 'node-a', attempt: 1 });
      expect(cluster.matchCalls).toHaveLength(2); // far below requeueIntervalMs: no timer in between
      expect(phases(cluster)).toEqual(['queued', 'assigned']);
      await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'end of test' }] });
    });
  });

  test('a queued job woken again and again (nodesChanged) still continues as new before its history grows long', async () => {
    const cluster = new FakeCluster([]);
    const jobId = newJobId('woken-often');
    // The re-check timer never fires here: only the wake-ups move the loop.
    const options = { ...FAST_OPTIONS, requeueIntervalMs: 60_000, historyEventLimit: 60 };

    await withWorker('woken-often', cluster, async ({ start }) => {
      const handle = await start(jobSpec(jobId), options);
      await waitForStatus(handle, (v) => v.phase === 'queued');
      for (let i = 0; i < 40 && (await handle.describe()).runId === handle.firstExecutionRunId; i++) {
        await handle.signal(nodesChangedSignal);
        await sleep(50);
      }
      expect((await handle.describe()).runId).not.toBe(handle.firstExecutionRunId);
      // The next run still waits, with the same single escrow.
      expect(await handle.query(jobStatusQuery)).toMatchObject({ phase: 'queued', escrow: 'held' });
      expect(cluster.escrowCalls).toHaveLength(1);
      await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'end of test' }] });
      expect(cluster.refundCalls).toEqual([{ jobId }]);
    });
  });

  test('a node-reported failure (fail update) → reassigned to another node as attempt 2', async () => {
    const cluster = new FakeCluster(['node-a', 'node-b']);
    const jobId = newJobId('fail');

    await withWorker('fail', cluster, async ({ client, start }) => {
      const handle = await start(jobSpec(jobId), FAST_OPTIONS);
      await waitForStatus(handle, (v) => v.phase === 'assigned' && v.nodeId === 'node-a');
      const aliveA = keepAlive(client, jobId, 1);
      try {
        await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
        await waitForStatus(handle, (v) => v.phase === 'running');
        expect(
          await handle.executeUpdate(failUpdate, { args: [{ nodeId: 'node-a', message: 'CUDA out of memory' }], updateId: 'fail/node-a' }),
        ).toEqual({ acknowledged: true });
        const view = await waitForStatus(handle, (v) => v.phase === 'assigned' && v.attempt === 2, 5000, 'reassignment');
        expect(view).toMatchObject({ nodeId: 'node-b', failedNodes: ['node-a'] });
      } finally {
        aliveA.stop();
      }
      expect(cluster.transitions.find((t) => t.to === 'queued')).toMatchObject({
        actor: 'node:node-a',
        reason: expect.stringContaining('node reported failure: CUDA out of memory'),
      });
      expect(cluster.matchCalls.at(-1)!.excludeNodeIds).toEqual(['node-a']);
      expect(cluster.nodeOutcomes).toEqual([{ nodeId: 'node-a', outcome: 'failed' }]);

      const aliveB = keepAlive(client, jobId, 2);
      try {
        await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-b' }] });
        await handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-b' }] });
      } finally {
        aliveB.stop();
      }
      expect(await handle.result()).toMatchObject({ phase: 'completed', attempts: 2, nodeId: 'node-b' });
      expect(phases(cluster)).toEqual(['assigned', 'running', 'queued', 'assigned', 'running', 'completed']);
      expect(cluster.releaseCalls).toEqual([{ jobId, nodeId: 'node-b' }]);
      expect(cluster.refundCalls).toEqual([]);
    });
  });

  test('a node\'s failure that arrives together with a cancel: refunded, and the failure still counts against the node', async () => {
    const cluster = new FakeCluster(['node-a']);
    const jobId = newJobId('fail-and-cancel');

    await withWorker('fail-and-cancel', cluster, async ({ client, start }) => {
      const handle = await start(jobSpec(jobId), FAST_OPTIONS);
      await waitForStatus(handle, (v) => v.phase === 'assigned');
      const alive = keepAlive(client, jobId, 1);
      try {
        // The 'running' record waits at a gate: the workflow task stays open, and both updates that come
        // meanwhile reach the workflow in the next one, together.
        const gate = new Gate();
        cluster.transitionGate = { to: 'running', gate };
        await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
        await waitUntil(() => cluster.timeline.includes('transition:running:waiting'), 5000, 'the running record');
        // The failure first (a cancel handled before it would refuse it: the job would already be finishing).
        const failed = handle.executeUpdate(failUpdate, { args: [{ nodeId: 'node-a', message: 'CUDA out of memory' }], updateId: 'fail/node-a' });
        await sleep(300);
        const cancelled = handle.executeUpdate(cancelUpdate, { args: [{ reason: 'not needed' }], updateId: 'cancel' });
        await sleep(300);
        gate.open();
        expect(await failed).toEqual({ acknowledged: true });
        expect(await cancelled).toEqual({ refundIssued: true, txRef: `ledger:${jobId}/refund` });
      } finally {
        alive.stop();
      }
      expect(await handle.result()).toMatchObject({ phase: 'cancelled', attempts: 1 });
      expect(cluster.nodeOutcomes).toEqual([{ nodeId: 'node-a', outcome: 'failed' }]);
      expect(cluster.refundCalls).toEqual([{ jobId }]);
      expect(cluster.releaseCalls).toEqual([]);
      expect(phases(cluster)).toEqual(['assigned', 'running', 'cancelled', 'cancelled']);
    });
  });

  test('continue-as-new keeps the job: same attempt and node, progress kept, one escrow, one release', async () => {
    const cluster = new FakeCluster(['node-a', 'node-b']);
    const jobId = newJobId('can');
    const options = { ...FAST_OPTIONS, historyEventLimit: 40 };

    await withWorker('can', cluster, async ({ client, start }) => {
      const handle = await start(jobSpec(jobId), options);
      await waitForStatus(handle, (v) => v.phase === 'assigned');
      const alive = keepAlive(client, jobId, 1);
      try {
        await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
        for (let i = 1; i <= 60; i++) await handle.signal(progressSignal, { nodeId: 'node-a', progress: i / 100, epoch: i });
        await waitUntil(async () => (await handle.describe()).runId !== handle.firstExecutionRunId, 10_000, 'continue-as-new');
        const view = await waitForStatus(handle, (v) => v.progress === 0.6, 10_000, 'the last progress');
        expect(view).toMatchObject({ phase: 'running', attempt: 1, nodeId: 'node-a', epoch: 60, escrow: 'held', failedNodes: [] });
        // What operators read in the Web UI goes along: the match explanation (memo) and the current details.
        expect((await handle.describe()).memo?.match).toMatchObject({ nodeId: 'node-a', attempt: 1 });
        const metadata = (await handle.query('__temporal_workflow_metadata')) as { currentDetails?: string };
        expect(metadata.currentDetails).toContain('**running** · attempt 1/');

        expect(await handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a' }] })).toMatchObject({ paymentReleased: true });
      } finally {
        alive.stop();
      }
      expect(await handle.result()).toMatchObject({ phase: 'completed', attempts: 1, nodeId: 'node-a' });

      const runs = await runHistories(client, jobId, handle.firstExecutionRunId);
      expect(runs.length).toBeGreaterThanOrEqual(2);
      for (const run of runs.slice(0, -1)) {
        expect(run.events.at(-1)!.eventType).toBe(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW);
      }
      expect(runs.at(-1)!.events.at(-1)!.eventType).toBe(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED);
      expect(cluster.escrowCalls).toHaveLength(1);
      expect(cluster.matchCalls).toHaveLength(1);
      expect(cluster.releaseCalls).toEqual([{ jobId, nodeId: 'node-a' }]);
      expect(cluster.transitions.map((t) => [t.seq, t.to])).toEqual([
        [1, 'assigned'],
        [2, 'running'],
        [3, 'completed'],
      ]);
      // Every run watched the same attempt on the same node.
      expect(new Set(cluster.watchCalls.map((w) => `${w.nodeId}/${w.attempt}`))).toEqual(new Set(['node-a/1']));
    });
  });

  test('a run continued as new by the previous workflow version (state without attemptStartedAt) keeps watching its node', async () => {
    const cluster = new FakeCluster(['node-a', 'node-b']);
    cluster.ledger.push({ leg: 'escrow', amount: '1000000', to: 'escrow', txRef: 'ledger:escrow' });
    const jobId = newJobId('resume-v1');
    // What continueAsNew of the version before attemptStartedAt (54a77f9) passed on; see
    // test/replay/histories/previous/54a77f9-postgres-ledger/continued-as-new.run-last.json.
    const { attemptStartedAt: _absent, ...previousVersionState }: JobState = {
      phase: 'running',
      attempt: 1,
      attemptStartedAt: 0,
      nodeId: 'node-a',
      failedNodes: [],
      refusedNodes: [],
      nodeStarted: true,
      progress: 0.17,
      epoch: 17,
      escrow: 'held',
      seq: 2,
      lastReason: 'node node-a started the job',
      error: null,
    };

    await withWorker('resume-v1', cluster, async ({ client, start }) => {
      const handle = await start(jobSpec(jobId), FAST_OPTIONS, previousVersionState as JobState);
      const alive = keepAlive(client, jobId, 1);
      try {
        await sleep(1500);
        // The node is working and alive: the run must go on watching it, not fail the attempt.
        expect(cluster.transitions.map((t) => `${t.to}: ${t.reason}`)).toEqual([]);
        expect(cluster.watchCalls.map((w) => [w.nodeId, w.attempt])).toEqual([['node-a', 1]]);
        expect(await handle.query(jobStatusQuery)).toMatchObject({ phase: 'running', attempt: 1, nodeId: 'node-a', failedNodes: [] });
      } finally {
        alive.stop();
      }
    });
  });

  describe('a node that never reports its end (shipping nodes and Engines, CYXWIZ-PROTOCOL §6.2)', () => {
    // Expected run 1 s (estimated_duration) + 0.6 s of grace after the assignment.
    const options = { ...FAST_OPTIONS, unreportedEndGraceMs: 600 };
    const spec = (jobId: string) => jobSpec(jobId, { estimatedDuration: 1 });

    test('accepted, alive, silent about the end → completed and paid at the end of its expected run and grace', async () => {
      const cluster = new FakeCluster(['node-a']);
      const jobId = newJobId('unreported');
      await withWorker('unreported', cluster, async ({ client, start }) => {
        const handle = await start(spec(jobId), options);
        await waitForStatus(handle, (v) => v.phase === 'assigned');
        const alive = keepAlive(client, jobId, 1);
        try {
          await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
          const result = await handle.result();
          expect(result).toMatchObject({ phase: 'completed', nodeId: 'node-a', txRef: `ledger:${jobId}/release_node` });
          expect(result.reason).toContain('no end reported within its expected 2 s run time and grace');
        } finally {
          alive.stop();
        }
        expect(cluster.transitions.map((t) => t.to)).toEqual(['assigned', 'running', 'completed']);
        expect(cluster.transitions[2]).toMatchObject({ actor: 'workflow', ended: true });
        expect(cluster.releaseCalls).toEqual([{ jobId, nodeId: 'node-a' }]);
        expect(cluster.refundCalls).toEqual([]);
        expect(cluster.nodeOutcomes).toEqual([{ nodeId: 'node-a', outcome: 'completed' }]);
      });
    });

    test('accepted by a signal (no worker took the update in time) → the same: completed and paid; one from a node not holding it is ignored', async () => {
      const cluster = new FakeCluster(['node-a']);
      const jobId = newJobId('accepted-late');
      await withWorker('accepted-late', cluster, async ({ client, start }) => {
        // A longer grace than the others here: the job must not end as never started while the test looks.
        const handle = await start(spec(jobId), { ...options, unreportedEndGraceMs: 4000 });
        await waitForStatus(handle, (v) => v.phase === 'assigned');
        const alive = keepAlive(client, jobId, 1);
        try {
          await handle.signal(acceptedSignal, { nodeId: 'node-b' });
          await waitUntil(
            async () => {
              const events = (await handle.fetchHistory()).events ?? [];
              const signalled = events.findIndex((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED);
              return signalled >= 0 && events.slice(signalled).some((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED);
            },
            10_000,
            'the workflow task that took the signal',
          );
          expect(phases(cluster)).toEqual(['assigned']);
          await handle.signal(acceptedSignal, { nodeId: 'node-a' });
          expect(await handle.result()).toMatchObject({ phase: 'completed', nodeId: 'node-a' });
        } finally {
          alive.stop();
        }
        expect(phases(cluster)).toEqual(['assigned', 'running', 'completed']);
        expect(cluster.releaseCalls).toEqual([{ jobId, nodeId: 'node-a' }]);
        expect(cluster.refundCalls).toEqual([]);
      });
    });

    test('once the job completes by time, a cancel is refused as finished and the node is paid once', async () => {
      const cluster = new FakeCluster(['node-a']);
      cluster.releaseGate = new Gate();
      const jobId = newJobId('unreported-cancel');
      await withWorker('unreported-cancel', cluster, async ({ client, start }) => {
        const handle = await start(spec(jobId), options);
        await waitForStatus(handle, (v) => v.phase === 'assigned');
        const alive = keepAlive(client, jobId, 1);
        try {
          await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
          await waitUntil(() => cluster.releaseCalls.length === 1, 10_000, 'the release by time');
          await expectUpdateRejected(handle.executeUpdate(cancelUpdate, { args: [{ reason: 'too late' }] }), JobRejections.finished);
          cluster.releaseGate!.open();
          expect(await handle.result()).toMatchObject({ phase: 'completed' });
        } finally {
          alive.stop();
        }
        expect(cluster.refundCalls).toEqual([]);
        expect(cluster.releaseCalls).toHaveLength(1);
      });
    });

    test('never accepted (the Engine did not connect) → failed with 408 and refunded; the node is not penalized', async () => {
      const cluster = new FakeCluster(['node-a']);
      const jobId = newJobId('never-started');
      await withWorker('never-started', cluster, async ({ client, start }) => {
        const handle = await start(spec(jobId), options);
        await waitForStatus(handle, (v) => v.phase === 'assigned');
        const alive = keepAlive(client, jobId, 1);
        try {
          expect(await handle.result()).toMatchObject({ phase: 'failed', attempts: 1, txRef: `ledger:${jobId}/refund` });
        } finally {
          alive.stop();
        }
        const ended = cluster.transitions.at(-2)!;
        expect(ended).toMatchObject({ to: 'failed', actor: 'workflow', cancelOnNode: 'node-a', error: { code: 408 } });
        expect(ended.reason).toContain('the Engine did not connect');
        expect(cluster.refundCalls).toEqual([{ jobId }]);
        expect(cluster.releaseCalls).toEqual([]);
        expect(cluster.nodeOutcomes).toEqual([]);
      });
    });

    test('a node that reports progress is waited for: its end is not assumed, its completion report ends the job', async () => {
      const cluster = new FakeCluster(['node-a']);
      const jobId = newJobId('reporting');
      await withWorker('reporting', cluster, async ({ client, start }) => {
        const handle = await start(spec(jobId), options);
        await waitForStatus(handle, (v) => v.phase === 'assigned');
        const alive = keepAlive(client, jobId, 1);
        try {
          await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
          await handle.signal(progressSignal, { nodeId: 'node-a', progress: 0.1, epoch: 1 });
          await sleep(2500); // past the expected run and grace
          expect(await handle.query(jobStatusQuery)).toMatchObject({ phase: 'running', attempt: 1, nodeId: 'node-a' });
          await handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a' }] });
        } finally {
          alive.stop();
        }
        expect(await handle.result()).toMatchObject({ phase: 'completed', reason: expect.not.stringContaining('no end reported') });
        expect(cluster.transitions.at(-1)).toMatchObject({ actor: 'node:node-a' });
      });
    });

    test('off (jobs started without the option, as before it existed): a silent node holds the job until its maximum run time', async () => {
      const cluster = new FakeCluster(['node-a']);
      const jobId = newJobId('unreported-off');
      await withWorker('unreported-off', cluster, async ({ client, start }) => {
        const handle = await start(spec(jobId), FAST_OPTIONS);
        await waitForStatus(handle, (v) => v.phase === 'assigned');
        const alive = keepAlive(client, jobId, 1);
        try {
          await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
          await sleep(2500);
          expect(await handle.query(jobStatusQuery)).toMatchObject({ phase: 'running' });
          await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'end of test' }] });
        } finally {
          alive.stop();
        }
      });
    });
  });

  describe('maximum run time of an attempt', () => {
    /** Keeps node-a alive and reporting until the attempt on it ends or `forMs` passes; returns the status then. */
    async function runBusyNode(client: Client, handle: JobHandle, jobId: string, forMs: number) {
      await waitForStatus(handle, (v) => v.phase === 'assigned');
      const alive = keepAlive(client, jobId, 1);
      try {
        await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
        const deadline = Date.now() + forMs;
        for (let epoch = 1; Date.now() < deadline; epoch++) {
          const view = await handle.query(jobStatusQuery);
          if (view.attempt > 1 || view.phase !== 'running') return view;
          await handle.signal(progressSignal, { nodeId: 'node-a', progress: Math.min(epoch / 1000, 0.99), epoch });
          await sleep(50);
        }
        return handle.query(jobStatusQuery);
      } finally {
        alive.stop();
      }
    }

    const maxRuntimeMs = 3000;

    test('an attempt running longer than maxRuntimeMs counts as failed and the job moves to another node', async () => {
      const cluster = new FakeCluster(['node-a', 'node-b']);
      const jobId = newJobId('max-runtime');
      await withWorker('max-runtime', cluster, async ({ client, start }) => {
        const handle = await start(jobSpec(jobId), { ...FAST_OPTIONS, maxRuntimeMs });
        await runBusyNode(client, handle, jobId, maxRuntimeMs + 2500);
        const view = await waitForStatus(handle, (v) => v.attempt === 2, 2000, 'reassignment after the maximum run time');
        expect(view).toMatchObject({ nodeId: 'node-b', failedNodes: ['node-a'] });
        expect(cluster.transitions.find((t) => t.to === 'queued')!.reason).toContain('exceeded the maximum run time of 3 s');
        await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'end of test' }] });
      });
    });

    test('continue-as-new does not restart the clock of the attempt', async () => {
      const cluster = new FakeCluster(['node-a', 'node-b']);
      const jobId = newJobId('max-runtime-can');
      await withWorker('max-runtime-can', cluster, async ({ client, start }) => {
        // A small history limit makes the busy node's reports continue the run as new about every second.
        const handle = await start(jobSpec(jobId), { ...FAST_OPTIONS, maxRuntimeMs, historyEventLimit: 40 });
        await runBusyNode(client, handle, jobId, maxRuntimeMs + 2500);
        expect((await handle.describe()).runId).not.toBe(handle.firstExecutionRunId);
        const view = await waitForStatus(handle, (v) => v.attempt === 2, 2000, 'reassignment after the maximum run time');
        expect(view).toMatchObject({ nodeId: 'node-b', failedNodes: ['node-a'] });
        expect(cluster.transitions.find((t) => t.to === 'queued')!.reason).toContain('exceeded the maximum run time of 3 s');
        await handle.executeUpdate(cancelUpdate, { args: [{ reason: 'end of test' }] });
      });
    });
  });

  test('cancelled by an operator (Temporal cancel) while assigned → refunded, the node told to stop', async () => {
    const cluster = new FakeCluster(['node-a']);
    const jobId = newJobId('operator-cancel-assigned');

    await withWorker('operator-cancel-assigned', cluster, async ({ start }) => {
      const handle = await start(jobSpec(jobId), FAST_OPTIONS);
      await waitForStatus(handle, (v) => v.phase === 'assigned');
      await handle.cancel();
      const err = await handle.result().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect((err as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);
      expect(cluster.transitions.at(-2)).toMatchObject({ from: 'assigned', to: 'cancelled', actor: 'operator', cancelOnNode: 'node-a' });
      expect(cluster.refundCalls).toEqual([{ jobId }]);
      expect(cluster.ledger.map((l) => l.leg)).toEqual(['escrow', 'refund']);
    });
  });

  test('cancelled by an operator (Temporal cancel) while a completion comes → the completion is refused (the job is already ended), refunded, no update left running', async () => {
    const cluster = new FakeCluster(['node-a']);
    const jobId = newJobId('operator-cancel-refuses');

    await withWorker('operator-cancel-refuses', cluster, async ({ client, start }) => {
      const handle = await start(jobSpec(jobId), FAST_OPTIONS);
      await waitForStatus(handle, (v) => v.phase === 'assigned');
      const alive = keepAlive(client, jobId, 1);
      try {
        // The 'cancelled' record waits at a gate, so the node's completion reaches the workflow in the task that
        // applies it: it is judged after the job has ended, so no handler waits on the closing workflow.
        const gate = new Gate();
        cluster.transitionGate = { to: 'cancelled', gate };
        await handle.cancel();
        await waitUntil(() => cluster.timeline.includes('transition:cancelled:waiting'), 5000, 'the cancelled record');
        const completion = handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a' }] }).then(
          () => undefined,
          (e: unknown) => e,
        );
        await sleep(300);
        gate.open();
        const refused = await completion;
        expect(refused).toBeInstanceOf(WorkflowUpdateFailedError);
        expect((refused as WorkflowUpdateFailedError).cause).toMatchObject({ type: JobRejections.notHolder });
      } finally {
        alive.stop();
      }
      const err = await handle.result().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect((err as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);
      expect(cluster.refundCalls).toEqual([{ jobId }]);
      expect(cluster.releaseCalls).toEqual([]);
      expect(cluster.ledger.map((l) => l.leg)).toEqual(['escrow', 'refund']);
    });
  });

  test('cancelled by an operator (Temporal cancel) while the offer that recorded the assignment is still running → the end is recorded after it, the node told to stop', async () => {
    const cluster = new FakeCluster(['node-a']);
    const jobId = newJobId('operator-cancel-offer');

    await withWorker('operator-cancel-offer', cluster, async ({ start }) => {
      // The offer's activity has recorded `assigned` and not returned yet when the cancel comes.
      const gate = new Gate();
      cluster.transitionGate = { to: 'assigned', gate, after: true };
      const handle = await start(jobSpec(jobId), FAST_OPTIONS);
      await waitUntil(() => cluster.timeline.includes('transition:assigned:recorded-waiting'), 5000, 'the assigned record');
      await handle.cancel();
      const err = await handle.result().then(
        () => undefined,
        (e: unknown) => e,
      );
      gate.open();
      expect((err as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);
      const assigned = cluster.transitions.find((t) => t.to === 'assigned')!;
      const ended = cluster.transitions.filter((t) => t.to === 'cancelled');
      // The offer is waited for (its attempt times out and its retry finds the record in place): the end is
      // recorded after the assignment, not under its number (which would make it a no-op), and the node told to stop.
      expect(ended.length).toBeGreaterThan(0);
      expect(ended[0].seq).toBeGreaterThan(assigned.seq);
      expect(ended[0]).toMatchObject({ actor: 'operator', cancelOnNode: 'node-a', ended: true });
      expect(cluster.ledger.map((l) => l.leg)).toEqual(['escrow', 'refund']);
    });
  });

  test('cancelled by an operator (Temporal cancel) while the completion is being paid → the job completes, paid once, nothing refunded', async () => {
    const cluster = new FakeCluster(['node-a']);
    cluster.releaseGate = new Gate();
    const jobId = newJobId('operator-cancel-paying');

    await withWorker('operator-cancel-paying', cluster, async ({ client, start }) => {
      const handle = await start(jobSpec(jobId), FAST_OPTIONS);
      await waitForStatus(handle, (v) => v.phase === 'assigned');
      const alive = keepAlive(client, jobId, 1);
      try {
        const completion = handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a' }] });
        await waitUntil(() => cluster.releaseCalls.length === 1, 5000, 'release to start');
        await handle.cancel();
        await sleep(300);
        cluster.releaseGate!.open();
        expect(await completion).toMatchObject({ paymentReleased: true });
      } finally {
        alive.stop();
      }
      expect(await handle.result()).toMatchObject({ phase: 'completed', txRef: `ledger:${jobId}/release_node` });
      expect(cluster.transitions.at(-1)).toMatchObject({ to: 'completed', ended: true });
      expect(cluster.nodeOutcomes).toEqual([{ nodeId: 'node-a', outcome: 'completed' }]);
      expect(cluster.refundCalls).toEqual([]);
      expect(cluster.ledger.map((l) => l.leg)).toEqual(['escrow', 'release_node', 'release_platform']);
    });
  });

  test('cancelled by an operator (Temporal cancel) while the escrow is in flight → the escrow is still refunded', async () => {
    const cluster = new FakeCluster(['node-a']);
    cluster.escrowGate = new Gate();
    const jobId = newJobId('operator-cancel');

    await withWorker('operator-cancel', cluster, async ({ start }) => {
      const handle = await start(jobSpec(jobId), FAST_OPTIONS);
      await waitUntil(() => cluster.escrowCalls.length === 1, 5000, 'escrow to start');
      await handle.cancel();
      await sleep(500); // the workflow sees the cancellation while the ledger call is still running
      // The escrow runs in a non-cancellable scope: the workflow waits for it, so it knows the money moved.
      cluster.escrowGate!.open();
      await waitUntil(() => cluster.hasLeg('escrow'), 5000, 'the escrow leg');
      const err = await handle.result().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(WorkflowFailedError);
      expect((err as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);

      expect(cluster.transitions.at(-2)).toMatchObject({ to: 'cancelled', actor: 'operator' });
      // Money invariant: an escrow that exists is refunded when the job ends unpaid.
      expect(cluster.ledger.map((l) => l.leg)).toEqual(['escrow', 'refund']);
    });
  });

  describe('a node without a wallet is owed its payment', () => {
    /** Runs node-a (no wallet) to a completion whose payment is owed; returns the complete update's receipt. */
    async function completeOwed(client: Client, handle: JobHandle, jobId: string) {
      await waitForStatus(handle, (v) => v.phase === 'assigned');
      const alive = keepAlive(client, jobId, 1);
      try {
        await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
        await waitForStatus(handle, (v) => v.phase === 'running');
        return await handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a' }], updateId: 'complete/node-a' });
      } finally {
        alive.stop();
      }
    }

    test('completed with EscrowState owed; walletRegistered once it has a wallet → released, paid exactly once', async () => {
      const cluster = new FakeCluster();
      cluster.register('node-a', 'accept', { wallet: false });
      const jobId = newJobId('owed');

      await withWorker('owed', cluster, async ({ client, start }) => {
        const handle = await start(jobSpec(jobId), FAST_OPTIONS);
        // The node's report is answered at once: the job is done, its payment waits for a wallet.
        expect(await completeOwed(client, handle, jobId)).toEqual({ paymentReleased: false, txRef: '' });

        const owed = await waitForStatus(handle, (v) => v.phase === 'completed' && v.escrow === 'owed', 5000, 'completed, owed');
        expect(owed).toMatchObject({ nodeId: 'node-a', attempt: 1, error: null });
        expect(cluster.transitions.map((t) => [t.seq, t.from, t.to])).toEqual([
          [1, 'pending', 'assigned'],
          [2, 'assigned', 'running'],
          [3, 'running', 'completed'],
        ]);
        expect(cluster.transitions[2]).toMatchObject({
          actor: 'node:node-a',
          ended: true,
          error: null,
          reason: expect.stringContaining('900000 units are owed until it registers a wallet'),
          data: { owed: { owed: true, nodeAmount: '900000', platformAmount: '100000' } },
        });
        expect(cluster.nodeOutcomes).toEqual([{ nodeId: 'node-a', outcome: 'completed' }]);
        expect(cluster.releaseOutcomes).toEqual(['owed']);
        expect(cluster.ledger.map((l) => l.leg)).toEqual(['escrow']); // nothing moved: the escrow holds the money
        let description = await handle.describe();
        expect(description.status.name).toBe('RUNNING'); // the workflow stays open to pay
        expect(description.typedSearchAttributes.get(SA.status)).toBe('completed');
        expect(description.typedSearchAttributes.get(SA.escrowState)).toBe('owed');

        // A retried report from the node gets the same answer; a cancel is refused (the job is done).
        expect(
          await handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a' }], updateId: 'complete/node-a/retry' }),
        ).toEqual({ paymentReleased: false, txRef: '' });
        await expectUpdateRejected(handle.executeUpdate(cancelUpdate, { args: [{ reason: 'too late' }] }), JobRejections.finished);

        // A signal while the node still has no wallet: released again, still owed, the workflow keeps waiting.
        await handle.signal(walletRegisteredSignal);
        await waitUntil(() => cluster.releaseOutcomes.length === 2, 5000, 'the second release');
        expect(cluster.releaseOutcomes).toEqual(['owed', 'owed']);
        await sleep(300);
        expect(await handle.query(jobStatusQuery)).toMatchObject({ phase: 'completed', escrow: 'owed' });
        expect((await handle.describe()).status.name).toBe('RUNNING');

        // The node registers a wallet; the API signals the jobs owing it.
        cluster.registerWallet('node-a');
        await handle.signal(walletRegisteredSignal);
        const result = await handle.result();
        expect(result).toMatchObject({
          jobId,
          phase: 'completed',
          attempts: 1,
          nodeId: 'node-a',
          reason: expect.stringContaining('owed payment released'),
        });

        expect(cluster.releaseCalls).toEqual([
          { jobId, nodeId: 'node-a' },
          { jobId, nodeId: 'node-a' },
          { jobId, nodeId: 'node-a' },
        ]);
        expect(cluster.releaseOutcomes).toEqual(['owed', 'owed', 'paid']);
        // Paid exactly once, to the wallet it registered.
        expect(cluster.ledger).toEqual([
          expect.objectContaining({ leg: 'escrow' }),
          { leg: 'release_node', amount: '900000', to: walletOf('node-a'), txRef: `ledger:${jobId}/release_node` },
          { leg: 'release_platform', amount: '100000', to: 'platform:treasury', txRef: `ledger:${jobId}/release_platform` },
        ]);
        expect(cluster.refundCalls).toEqual([]);
        expect(cluster.transitions.map((t) => [t.seq, t.from, t.to])).toEqual([
          [1, 'pending', 'assigned'],
          [2, 'assigned', 'running'],
          [3, 'running', 'completed'],
          [4, 'completed', 'completed'],
        ]);
        expect(cluster.transitions[3]).toMatchObject({
          actor: 'workflow',
          reason: 'owed payment released: 900000 to node node-a, 100000 to the platform',
          data: { release: { owed: false, node: { leg: 'release_node', txRef: `ledger:${jobId}/release_node` } } },
        });
        expect(cluster.nodeOutcomes).toEqual([{ nodeId: 'node-a', outcome: 'completed' }]); // counted once

        description = await handle.describe();
        expect(description.status.name).toBe('COMPLETED');
        expect(description.typedSearchAttributes.get(SA.status)).toBe('completed');
        expect(description.typedSearchAttributes.get(SA.escrowState)).toBe('released');
      });
    });

    test('an owed payment whose reason changes (a wallet that cannot receive tokens yet) is recorded on the job once per change', async () => {
      const cluster = new FakeCluster();
      cluster.register('node-a', 'accept', { wallet: false });
      cluster.oweBecause('node-a', 'until it registers a wallet');
      const jobId = newJobId('owed-why');

      await withWorker('owed-why', cluster, async ({ client, start }) => {
        const handle = await start(jobSpec(jobId), FAST_OPTIONS);
        expect(await completeOwed(client, handle, jobId)).toEqual({ paymentReleased: false, txRef: '' });
        await waitForStatus(handle, (v) => v.phase === 'completed' && v.escrow === 'owed', 5000, 'completed, owed');
        expect(cluster.transitions[2].reason).toMatch(/900000 units are owed until it registers a wallet$/);

        // The same reason on a re-check records nothing new.
        await handle.signal(walletRegisteredSignal);
        await waitUntil(() => cluster.releaseOutcomes.length === 2, 5000, 'the second release');
        await sleep(200);
        expect(cluster.transitions).toHaveLength(3);

        // A wallet registered that has no token account yet: still owed, and the job says why, once.
        const why = 'until its wallet can receive them: W has no token account for M';
        cluster.oweBecause('node-a', why);
        for (const n of [3, 4]) {
          await handle.signal(walletRegisteredSignal);
          await waitUntil(() => cluster.releaseOutcomes.length === n, 5000, `release ${n}`);
        }
        await sleep(200);
        expect(cluster.transitions.map((t) => [t.seq, t.from, t.to])).toEqual([
          [1, 'pending', 'assigned'],
          [2, 'assigned', 'running'],
          [3, 'running', 'completed'],
          [4, 'completed', 'completed'],
        ]);
        expect(cluster.transitions[3]).toMatchObject({ actor: 'workflow', reason: `its 900000 units are still owed ${why}`, data: { owed: { owed: true, because: why } } });
        expect(await handle.query(jobStatusQuery)).toMatchObject({ phase: 'completed', escrow: 'owed' });

        cluster.registerWallet('node-a');
        await handle.signal(walletRegisteredSignal);
        expect(await handle.result()).toMatchObject({ phase: 'completed', reason: expect.stringContaining('owed payment released') });
        expect(cluster.releaseOutcomes).toEqual(['owed', 'owed', 'owed', 'owed', 'paid']);
      });
    });

    test("the finished workflow's result names the node's payment once the owed payment is released", async () => {
      const cluster = new FakeCluster();
      cluster.register('node-a', 'accept', { wallet: false });
      const jobId = newJobId('owed-result');

      await withWorker('owed-result', cluster, async ({ client, start }) => {
        const handle = await start(jobSpec(jobId), FAST_OPTIONS);
        await completeOwed(client, handle, jobId);
        await waitForStatus(handle, (v) => v.escrow === 'owed', 5000, 'the payment owed');
        cluster.registerWallet('node-a');
        await handle.signal(walletRegisteredSignal);
        // JobWorkflowResult.txRef: "reference of the node's payment (completed)"; the node was paid, by this leg.
        expect(await handle.result()).toMatchObject({ phase: 'completed', txRef: `ledger:${jobId}/release_node` });
        expect(cluster.hasLeg('release_node')).toBe(true);
      });
    });
  });

  describe('escrow refused for good', () => {
    const refusals: [EscrowRefusalType, string, Partial<JobSpec>][] = [
      [PaymentFailures.insufficientFunds, 'escrow of job: insufficient funds', {}],
      [PaymentFailures.escrowRejected, 'escrow_tx_hash sig-1: not a transfer to the escrow account', { escrowTxHash: 'sig-1' }],
    ];

    test.each(refusals)('%s → failed with 402 at once, never offered to a node, nothing refunded', async (type, message, overrides) => {
      const cluster = new FakeCluster(['node-a']);
      cluster.escrowRefusal = { type, message };
      const jobId = newJobId(`refused-${type}`);

      await withWorker(`refused-${type}`, cluster, async ({ start }) => {
        const handle = await start(jobSpec(jobId, overrides), FAST_OPTIONS);
        const error = { code: 402, message: `escrow refused: ${message}` };

        expect(await handle.result()).toEqual({ jobId, phase: 'failed', attempts: 0, nodeId: null, reason: error.message, txRef: '' });
        expect(await handle.query(jobStatusQuery)).toMatchObject({ phase: 'failed', escrow: 'none', attempt: 0, error });
        expect(cluster.transitions).toEqual([
          { jobId, seq: 1, from: 'pending', to: 'failed', reason: error.message, actor: 'workflow', attempt: 0, nodeId: null, ended: true, error },
        ]);
        // Non-retryable: one attempt. The payer's own escrow transaction, when given, is what was checked.
        expect(cluster.escrowCalls).toEqual([{ jobId, amount: '1000000', payer: 'payer-wallet', escrowTxHash: overrides.escrowTxHash }]);
        // The first match runs beside the escrow; what it claimed is given back before the job fails.
        expect(cluster.matchCalls).toHaveLength(1);
        expect(cluster.timeline.indexOf(`release-node:${jobId}`)).toBeLessThan(cluster.timeline.indexOf('transition:failed'));
        expect(cluster.dispatchCalls).toEqual([]);
        expect(cluster.refundCalls).toEqual([]);
        expect(cluster.releaseCalls).toEqual([]);
        expect(cluster.ledger).toEqual([]);

        const description = await handle.describe();
        expect(description.typedSearchAttributes.get(SA.status)).toBe('failed');
        expect(description.typedSearchAttributes.get(SA.escrowState)).toBe('none');
        expect(description.typedSearchAttributes.get(SA.attempt)).toBe(0);
      });
    });

    test('a client cancel while the refused escrow is in flight → refused as finished, no refund', async () => {
      const cluster = new FakeCluster(['node-a']);
      cluster.escrowGate = new Gate();
      cluster.escrowRefusal = { type: PaymentFailures.insufficientFunds, message: 'insufficient funds' };
      const jobId = newJobId('refused-cancel');

      await withWorker('refused-cancel', cluster, async ({ start }) => {
        const handle = await start(jobSpec(jobId), FAST_OPTIONS);
        await waitUntil(() => cluster.escrowCalls.length === 1, 5000, 'escrow to start');
        const cancel = handle.executeUpdate(cancelUpdate, { args: [{ reason: 'changed my mind' }], updateId: 'cancel' }).then(
          (receipt) => receipt,
          (err: unknown) => err,
        );
        await sleep(300); // sent while the escrow (a local activity of the first workflow task) is in flight
        cluster.escrowGate!.open();

        expect(await handle.result()).toMatchObject({ phase: 'failed', txRef: '' });
        expect(cluster.refundCalls).toEqual([]);
        expect(cluster.ledger).toEqual([]);
        // The task that ran the escrow also failed the job, so the cancel finds it finished (the API answers
        // CancelJob with a conflict either way) and never reports a refund.
        const outcome = await cancel;
        expect(outcome instanceof WorkflowNotFoundError || outcome instanceof WorkflowUpdateFailedError).toBe(true);
      });
    });
  });

  test('with no worker to accept them, the API gives up on a node\'s updates within its limit (503) instead of waiting for ever; an acceptance is kept as a signal', async () => {
    const gateway = createJobWorkflowGateway({ client: env.client, taskQueue: uniqueTaskQueue('no-worker'), options: FAST_OPTIONS, tokenDecimals: 9, callLimitMs: 1500 });
    const jobId = newJobId('no-worker');
    await gateway.start(jobSpec(jobId));
    handles.push(env.client.workflow.getHandle(jobId) as JobHandle);
    for (const call of [() => gateway.complete(jobId, { nodeId: 'node-a' }), () => gateway.cancel(jobId, 'no worker')]) {
      await expect(call()).rejects.toBeInstanceOf(UnavailableError);
    }
    // An acceptance is kept instead, as a signal the workflow takes once a worker runs.
    expect(await gateway.accepted(jobId, 'node-a')).toEqual({ acknowledged: true });
    const history = await env.client.workflow.getHandle(jobId).fetchHistory();
    const signals = history.events!.filter((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED);
    expect(signals.map((e) => e.workflowExecutionSignaledEventAttributes?.signalName)).toEqual(['acceptedLate']);
  });

  test('history stays bounded: 1,000 progress reports and many heartbeats keep every run far below 10,000 events', async () => {
    const cluster = new FakeCluster(['node-a']);
    const jobId = newJobId('bounded');
    const options = { ...FAST_OPTIONS, historyEventLimit: 1000 };

    await withWorker('bounded', cluster, async ({ client, start }) => {
      const handle = await start(jobSpec(jobId), options);
      await waitForStatus(handle, (v) => v.phase === 'assigned');
      const reports = 1000;
      const alive = keepAlive(client, jobId, 1, 100);
      try {
        await handle.executeUpdate(acceptedUpdate, { args: [{ nodeId: 'node-a' }] });
        await waitForStatus(handle, (v) => v.phase === 'running');

        // Heartbeats are not history events.
        const quietBefore = await settledHistoryLength(handle);
        for (let i = 0; i < 100; i++) {
          await client.activity.heartbeat({ workflowId: jobId, activityId: 'watch-1' }, { i });
        }
        expect((await handle.describe()).historyLength).toBe(quietBefore);

        const batch = 20;
        for (let i = 1; i < reports; i += batch) {
          const sends: Promise<void>[] = [];
          for (let j = i; j < Math.min(i + batch, reports); j++) {
            sends.push(handle.signal(progressSignal, { nodeId: 'node-a', progress: j / (reports + 1), epoch: j }));
          }
          await Promise.all(sends);
        }
        await handle.signal(progressSignal, { nodeId: 'node-a', progress: 1, epoch: reports });
        await waitForStatus(handle, (v) => v.epoch === reports, 20_000, 'the last progress report');

        expect(await handle.executeUpdate(completeUpdate, { args: [{ nodeId: 'node-a' }] })).toMatchObject({ paymentReleased: true });
        expect(alive.beats()).toBeGreaterThan(10);
      } finally {
        alive.stop();
      }
      expect(await handle.result()).toMatchObject({ phase: 'completed', attempts: 1, nodeId: 'node-a' });

      const runs = await runHistories(client, jobId, handle.firstExecutionRunId);
      const sizes = runs.map((r) => r.events.length);
      const signals = runs.flatMap((r) => r.events).filter((e) => e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED);
      expect(signals).toHaveLength(reports);
      expect(runs.length).toBeGreaterThanOrEqual(2);
      // The limit is a soft one (signals keep arriving while a run closes), but every run stays near it.
      expect(Math.max(...sizes)).toBeLessThan(options.historyEventLimit + 500);
      expect(cluster.releaseCalls).toHaveLength(1);
      expect(cluster.escrowCalls).toHaveLength(1);
    });
  }, 90_000);
});
