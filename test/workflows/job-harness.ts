/**
 * Harness for running the real job workflow against a Temporal server with fake activities: an in-memory
 * node registry, ledger and job-event log that record every call. Shared by the workflow tests and by
 * scripts/record-histories.ts, so it must not use jest globals.
 */
import { CompleteAsyncError } from '@temporalio/activity';
import {
  ActivityCancelledError,
  ActivityNotFoundError,
  WorkflowIdConflictPolicy,
  WorkflowIdReusePolicy,
  type Client,
  type WorkflowHandleWithFirstExecutionRunId,
} from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { temporal } from '@temporalio/proto';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { bundleWorkflowCode, DefaultLogger, Runtime, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import type { createDispatchActivities, DispatchInput, DispatchResult } from '../../src/activities/dispatch';
import type { createJobActivities, MatchedNode, MatchInput, MatchResult } from '../../src/activities/jobs';
import type { createPaymentActivities, LegReceipt, ReleaseReceipt } from '../../src/activities/payments';
import type { Transition } from '../../src/db/jobs-repo';
import type { JobSpec } from '../../src/domain/job';
import { jobWorkflow, watchActivityId, type JobWorkflowOptions } from '../../src/workflows/job-workflow';
import { jobStatusQuery, type JobView } from '../../src/workflows/messages';
import { JobSearchAttributes } from '../../src/workflows/search-attributes';

/** Every activity the job workflow calls, with the production signatures. */
export type JobWorkflowActivities = ReturnType<typeof createJobActivities> &
  ReturnType<typeof createPaymentActivities> &
  ReturnType<typeof createDispatchActivities>['activities'];

export type JobHandle = WorkflowHandleWithFirstExecutionRunId<typeof jobWorkflow>;

/** Short settings so real-time tests stay fast; tests override what they exercise. */
export const FAST_OPTIONS: JobWorkflowOptions = {
  heartbeatTimeoutMs: 2000,
  maxAttempts: 3,
  maxRuntimeMs: 10 * 60_000,
  requeueIntervalMs: 500,
  assignTimeoutMs: 1000,
  historyEventLimit: 10_000,
};

export function jobSpec(jobId: string, overrides: Partial<JobSpec> = {}): JobSpec {
  return {
    jobId,
    jobType: 'TRAINING',
    priority: 'NORMAL',
    modelDefinition: '{"layers":[]}',
    hyperparameters: { lr: '0.01' },
    datasetUri: 'ipfs://dataset',
    batchSize: 32,
    epochs: 3,
    requiredDevice: 'CPU',
    estimatedMemory: 1 << 30,
    estimatedDuration: 60,
    paymentUnits: '1000000',
    paymentAddress: 'payer-wallet',
    escrowTxHash: '',
    reservationDurationMinutes: 0,
    ...overrides,
  };
}

/** A promise the test resolves when it chooses. */
export class Gate {
  readonly opened: Promise<void>;
  open!: () => void;
  constructor() {
    this.opened = new Promise<void>((resolve) => (this.open = resolve));
  }
}

/** What dispatchToNode does for a node. */
export type DispatchBehaviour = 'accept' | 'refuse';

/**
 * The outside world of one job as its activities see it: nodes that may register, a ledger that refuses
 * to pay twice, and logs of every call in order.
 */
export class FakeCluster {
  /** Online nodes in matching order (the first not excluded wins). */
  readonly online: MatchedNode[] = [];
  readonly dispatchBehaviour = new Map<string, DispatchBehaviour>();

  readonly transitions: Transition[] = [];
  readonly matchCalls: MatchInput[] = [];
  readonly dispatchCalls: DispatchInput[] = [];
  readonly watchCalls: { jobId: string; nodeId: string; attempt: number }[] = [];
  readonly nodeOutcomes: { nodeId: string; outcome: 'completed' | 'failed' }[] = [];
  readonly escrowCalls: { jobId: string; amount: string; payer: string }[] = [];
  readonly releaseCalls: { jobId: string; nodeId: string }[] = [];
  readonly refundCalls: { jobId: string }[] = [];
  /** Completed money legs, in ledger order. */
  readonly ledger: LegReceipt[] = [];
  /** Ordered log of notable moments, for "X happened before Y" assertions. */
  readonly timeline: string[] = [];

  /** Held while set: the activity waits for the gate before touching the ledger. */
  releaseGate: Gate | undefined;
  refundGate: Gate | undefined;
  escrowGate: Gate | undefined;

  constructor(nodeIds: string[] = []) {
    for (const id of nodeIds) this.register(id);
  }

  /** A node comes online (the fake registry starts returning it). */
  register(nodeId: string, behaviour: DispatchBehaviour = 'accept'): void {
    this.online.push({ nodeId, endpoint: `10.0.0.${this.online.length + 1}:50052`, assignEndpoint: `10.0.0.${this.online.length + 1}:50055` });
    this.dispatchBehaviour.set(nodeId, behaviour);
  }

  hasLeg(leg: LegReceipt['leg']): boolean {
    return this.ledger.some((l) => l.leg === leg);
  }

  readonly activities: JobWorkflowActivities = {
    recordTransition: async (t: Transition): Promise<void> => {
      // Idempotent per seq, like jobs-repo.recordTransition.
      if (this.transitions.some((x) => x.jobId === t.jobId && x.seq === t.seq)) return;
      this.transitions.push(t);
      this.timeline.push(`transition:${t.to}`);
    },
    matchNode: async (input: MatchInput): Promise<MatchResult> => {
      this.matchCalls.push(structuredClone(input));
      const node = this.online.find((n) => !input.excludeNodeIds.includes(n.nodeId)) ?? null;
      return { node, rejected: [] };
    },
    watchNode: async (input: { jobId: string; nodeId: string; attempt: number }): Promise<void> => {
      this.watchCalls.push(input);
      throw new CompleteAsyncError();
    },
    recordNodeOutcome: async (input: { nodeId: string; outcome: 'completed' | 'failed' }): Promise<void> => {
      this.nodeOutcomes.push(input);
    },
    escrow: async (input: { jobId: string; amount: string; payer: string }): Promise<LegReceipt> => {
      this.escrowCalls.push(input);
      await this.escrowGate?.opened;
      const existing = this.ledger.find((l) => l.leg === 'escrow');
      if (existing) return existing;
      const leg: LegReceipt = { leg: 'escrow', amount: input.amount, to: `escrow:${input.jobId}`, txRef: `ledger:${input.jobId}/escrow` };
      this.ledger.push(leg);
      this.timeline.push('escrow');
      return leg;
    },
    release: async (input: { jobId: string; nodeId: string }): Promise<ReleaseReceipt> => {
      this.releaseCalls.push(input);
      this.timeline.push('release:start');
      await this.releaseGate?.opened;
      const escrow = this.ledger.find((l) => l.leg === 'escrow');
      if (!escrow) throw ApplicationFailure.nonRetryable(`job ${input.jobId} has no escrow`, 'EscrowMissing');
      if (this.hasLeg('refund')) throw ApplicationFailure.nonRetryable(`escrow of job ${input.jobId} was refunded`, 'EscrowAlreadySettled');
      const total = BigInt(escrow.amount);
      const platform = total / 10n;
      const node: LegReceipt = { leg: 'release_node', amount: (total - platform).toString(), to: `node:${input.nodeId}`, txRef: `ledger:${input.jobId}/release_node` };
      const fee: LegReceipt = { leg: 'release_platform', amount: platform.toString(), to: 'platform:treasury', txRef: `ledger:${input.jobId}/release_platform` };
      if (!this.hasLeg('release_node')) this.ledger.push(node, fee);
      this.timeline.push('release:done');
      return { node, platform: fee };
    },
    refund: async (input: { jobId: string }): Promise<LegReceipt> => {
      this.refundCalls.push(input);
      this.timeline.push('refund:start');
      await this.refundGate?.opened;
      const escrow = this.ledger.find((l) => l.leg === 'escrow');
      if (!escrow) throw ApplicationFailure.nonRetryable(`job ${input.jobId} has no escrow`, 'EscrowMissing');
      if (this.hasLeg('release_node')) throw ApplicationFailure.nonRetryable(`escrow of job ${input.jobId} was released`, 'EscrowAlreadySettled');
      const leg: LegReceipt = { leg: 'refund', amount: escrow.amount, to: 'payer-wallet', txRef: `ledger:${input.jobId}/refund` };
      if (!this.hasLeg('refund')) this.ledger.push(leg);
      this.timeline.push('refund:done');
      return leg;
    },
    dispatchToNode: async (input: DispatchInput): Promise<DispatchResult> => {
      this.dispatchCalls.push(structuredClone(input));
      if (this.dispatchBehaviour.get(input.nodeId) === 'refuse') return { accepted: false, reason: 'busy with another job', code: 409 };
      return { accepted: true };
    },
  };
}

/** Installs a quiet runtime logger once per process (module registry). */
let runtimeInstalled = false;
export function installQuietRuntime(): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  try {
    Runtime.install({ logger: new DefaultLogger('WARN') });
  } catch {
    // Another module registry in this process installed it first; its logger is fine.
  }
}

/**
 * A local Temporal dev server (the `temporal` CLI at `cliPath`) with the job search attributes registered,
 * plus the job workflow bundled once.
 */
export async function createJobTestEnv(cliPath: string): Promise<{ env: TestWorkflowEnvironment; bundle: WorkflowBundleWithSourceMap }> {
  installQuietRuntime();
  const [env, bundle] = await Promise.all([
    TestWorkflowEnvironment.createLocal({
      server: {
        executable: { type: 'existing-path', path: cliPath },
        searchAttributes: Object.values(JobSearchAttributes),
        // Queries racing a continue-as-new make the server log retryable errors; the tests retry them.
        log: { format: 'pretty', level: 'never' },
      },
    }),
    bundleWorkflowCode({ workflowsPath: require.resolve('../../src/workflows'), logger: new DefaultLogger('WARN') }),
  ]);
  return { env, bundle };
}

let queueCounter = 0;
export function uniqueTaskQueue(label: string): string {
  queueCounter += 1;
  return `jobs-${label.replace(/[^a-z0-9]+/gi, '-').slice(0, 40)}-${process.pid}-${queueCounter}-${Date.now().toString(36)}`;
}

export async function createJobWorker(
  env: TestWorkflowEnvironment,
  bundle: WorkflowBundleWithSourceMap,
  taskQueue: string,
  cluster: FakeCluster,
): Promise<Worker> {
  return Worker.create({
    connection: env.nativeConnection,
    namespace: env.namespace ?? 'default',
    taskQueue,
    workflowBundle: bundle,
    activities: cluster.activities,
  });
}

/** Starts a job workflow with the id policies the API uses (src/services/job-workflows.ts). */
export async function startJob(
  client: Client,
  taskQueue: string,
  spec: JobSpec,
  options: JobWorkflowOptions,
): Promise<JobHandle> {
  return client.workflow.start(jobWorkflow, {
    workflowId: spec.jobId,
    taskQueue,
    args: [{ spec, options }],
    workflowIdConflictPolicy: WorkflowIdConflictPolicy.USE_EXISTING,
    workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
  });
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Polls the status query until `predicate` holds.
 * @throws Error with the last status seen when it does not hold within `timeoutMs`.
 */
export async function waitForStatus(
  handle: JobHandle,
  predicate: (view: JobView) => boolean,
  timeoutMs = 10_000,
  what = 'the expected job status',
): Promise<JobView> {
  const deadline = Date.now() + timeoutMs;
  let last: JobView | undefined;
  let lastError: unknown;
  for (;;) {
    try {
      last = await handle.query(jobStatusQuery);
      if (predicate(last)) return last;
    } catch (err) {
      lastError = err; // e.g. no worker has picked the workflow up yet
    }
    if (Date.now() >= deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}; last status: ${JSON.stringify(last)}` +
          (lastError && !last ? `; last error: ${String(lastError)}` : ''),
      );
    }
    await sleep(50);
  }
}

/**
 * Heartbeats the watch activity of one attempt by id, as the API's nodeAlive does, until stopped.
 * Misses (watch not started yet, between runs, ended) are ignored like the API ignores them.
 */
export function keepAlive(client: Client, jobId: string, attempt: number, everyMs = 200): { stop(): void; beats(): number } {
  let beats = 0;
  let stopped = false;
  const beat = async () => {
    try {
      await client.activity.heartbeat({ workflowId: jobId, activityId: watchActivityId(attempt) }, { beat: beats });
      beats += 1;
    } catch (err) {
      if (!(err instanceof ActivityNotFoundError || err instanceof ActivityCancelledError)) throw err;
    }
  };
  const timer = setInterval(() => {
    if (!stopped) void beat().catch(() => undefined);
  }, everyMs);
  void beat().catch(() => undefined);
  return {
    stop: () => {
      stopped = true;
      clearInterval(timer);
    },
    beats: () => beats,
  };
}

export type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

/** The runs of a workflow id in order, following continue-as-new from `firstRunId`, with their histories. */
export async function runHistories(
  client: Client,
  workflowId: string,
  firstRunId: string,
): Promise<{ runId: string; events: HistoryEvent[] }[]> {
  const runs: { runId: string; events: HistoryEvent[] }[] = [];
  let runId: string | undefined = firstRunId;
  while (runId) {
    const history: temporal.api.history.v1.IHistory = await client.workflow.getHandle(workflowId, runId).fetchHistory();
    const events: HistoryEvent[] = history.events ?? [];
    runs.push({ runId, events });
    const last: HistoryEvent | undefined = events[events.length - 1];
    runId = last?.workflowExecutionContinuedAsNewEventAttributes?.newExecutionRunId ?? undefined;
  }
  return runs;
}

/**
 * Polls `predicate` until it holds.
 * @throws Error naming `what` when it does not hold within `timeoutMs`.
 */
export async function waitUntil(predicate: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'a condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}
