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
import { ApplicationFailure, type Duration } from '@temporalio/common';
import type { temporal } from '@temporalio/proto';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { bundleWorkflowCode, DefaultLogger, Runtime, Worker, type WorkerOptions, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { createAssignActivity, type createDispatchActivities, type DispatchInput, type DispatchResult } from '../../src/activities/dispatch';
import type { createJobActivities, MatchedNode, MatchInput, MatchResult } from '../../src/activities/jobs';
import type { createPaymentActivities, LegReceipt, ReleaseOutcome } from '../../src/activities/payments';
import type { Transition } from '../../src/db/jobs-repo';
import type { JobSpec } from '../../src/domain/job';
import { PAYMENT_NON_RETRYABLE, PaymentFailures } from '../../src/domain/payments';
import { jobWorkflow, watchActivityId, type JobState, type JobWorkflowOptions } from '../../src/workflows/job-workflow';
import { jobStatusQuery, type JobView } from '../../src/workflows/messages';
import { JobSearchAttributes } from '../../src/workflows/search-attributes';

/** Every activity the job workflow calls, with the production signatures. */
export type JobWorkflowActivities = ReturnType<typeof createJobActivities> &
  ReturnType<typeof createPaymentActivities> &
  ReturnType<typeof createDispatchActivities>['activities'] &
  ReturnType<typeof createAssignActivity>;

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

/**
 * What dispatchToNode does for a node: `slow` accepts after SLOW_DISPATCH_MS, longer than the offer's activity
 * waits with the harness's options (the activity attempt gives up and goes on in the background).
 */
export type DispatchBehaviour = 'accept' | 'refuse' | 'slow';
export const SLOW_DISPATCH_MS = 3500;

/** The non-retryable refusals of the escrow the fake can play (src/domain/payments.ts). */
export type EscrowRefusalType = typeof PaymentFailures.insufficientFunds | typeof PaymentFailures.escrowRejected;

/** The wallet a fake node registers unless told otherwise. */
export const walletOf = (nodeId: string) => `wallet:${nodeId}`;

/**
 * The outside world of one job as its activities see it: nodes that may register (with or without a wallet), a
 * ledger that refuses to pay twice and owes a node without a wallet, and logs of every call in order.
 */
export class FakeCluster {
  /** Online nodes in matching order (the first not excluded wins). */
  readonly online: MatchedNode[] = [];
  readonly dispatchBehaviour = new Map<string, DispatchBehaviour>();

  readonly transitions: Transition[] = [];
  readonly matchCalls: MatchInput[] = [];
  readonly dispatchCalls: DispatchInput[] = [];
  /** Watch activities started, with the wall-clock time the worker ran each. */
  readonly watchCalls: { jobId: string; nodeId: string; attempt: number; at: number }[] = [];
  readonly nodeOutcomes: { nodeId: string; outcome: 'completed' | 'failed' }[] = [];
  readonly escrowCalls: { jobId: string; amount: string; payer: string; escrowTxHash?: string }[] = [];
  /** Every release call, whether it paid or found the payment owed. */
  readonly releaseCalls: { jobId: string; nodeId: string }[] = [];
  /** What each release call reported, in call order. */
  readonly releaseOutcomes: ('paid' | 'owed')[] = [];
  readonly refundCalls: { jobId: string }[] = [];
  /** Completed money legs, in ledger order. */
  readonly ledger: LegReceipt[] = [];
  /** Ordered log of notable moments, for "X happened before Y" assertions. */
  readonly timeline: string[] = [];

  /** Held while set: the activity waits for the gate before touching the ledger. */
  releaseGate: Gate | undefined;
  refundGate: Gate | undefined;
  escrowGate: Gate | undefined;
  /** Held while set: recordNodeOutcome logs `node-outcome:waiting` and waits for the gate. */
  outcomeGate: Gate | undefined;
  /**
   * Held while set: recording a transition to `to` logs `transition:<to>:waiting` and waits for the gate; with
   * `after`, it is recorded first, then logs `transition:<to>:recorded-waiting` and waits.
   */
  transitionGate: { to: Transition['to']; gate: Gate; after?: boolean } | undefined;

  /**
   * Set: the escrow is refused for good, as the settlement refuses a payer without funds (InsufficientFunds) or a
   * bad escrow transaction (EscrowRejected): a non-retryable ApplicationFailure of that type.
   */
  escrowRefusal: { type: EscrowRefusalType; message: string } | undefined;

  /** Registered wallet of each node (null: none, so a release to it is owed). */
  private readonly wallets = new Map<string, string | null>();

  constructor(nodeIds: string[] = []) {
    for (const id of nodeIds) this.register(id);
  }

  /**
   * A node comes online (the fake registry starts returning it). It has a wallet unless `wallet: false`; a release
   * to a node without one reports the payment owed.
   */
  register(nodeId: string, behaviour: DispatchBehaviour = 'accept', opts: { wallet?: boolean } = {}): void {
    this.online.push({ nodeId, endpoint: `10.0.0.${this.online.length + 1}:50052`, assignEndpoint: `10.0.0.${this.online.length + 1}:50055` });
    this.dispatchBehaviour.set(nodeId, behaviour);
    this.wallets.set(nodeId, opts.wallet === false ? null : walletOf(nodeId));
  }

  /** Why a release to each node is owed, as the settlement says (none: an outcome without a reason, as before). */
  private readonly owedReasons = new Map<string, string>();

  /** From now on a release owed to `nodeId` says why: `because`. */
  oweBecause(nodeId: string, because: string): void {
    this.owedReasons.set(nodeId, because);
  }

  /** The node registers a wallet (the API then signals `walletRegistered` to the jobs owing it). */
  registerWallet(nodeId: string, address = walletOf(nodeId)): void {
    this.wallets.set(nodeId, address);
  }

  hasWallet(nodeId: string): boolean {
    return !!this.wallets.get(nodeId);
  }

  /**
   * Opens every gate. Call it before the worker shuts down: a worker waits for its running activities, so a
   * test that fails while an activity waits at a gate would otherwise hang until jest's timeout.
   */
  openGates(): void {
    for (const gate of [this.releaseGate, this.refundGate, this.escrowGate, this.outcomeGate, this.transitionGate?.gate, this.confirmGate]) gate?.open();
  }

  hasLeg(leg: LegReceipt['leg']): boolean {
    return this.ledger.some((l) => l.leg === leg);
  }

  /** confirmNodeLost calls, and how many more of them find the node alive (its lapse the relay's). */
  readonly confirmCalls: { nodeId: string; silentForMs: number }[] = [];
  aliveAfterLapse = 0;
  /** Held while set: confirmNodeLost waits for the gate (as it waits for a relay to come back). */
  confirmGate: Gate | undefined;
  /** confirmNodeLost fails for good (as after its retries). */
  confirmFails = false;

  readonly activities: JobWorkflowActivities = {
    withdrawAssignment: async (input: { assigned: Transition; back: Transition; always?: boolean }): Promise<boolean> => {
      // As on the job's row: only when the latest record is that assignment (or always, when asked).
      const latest = this.transitions.filter((t) => t.jobId === input.assigned.jobId).sort((a, b) => b.seq - a.seq)[0];
      if (!input.always && (!latest || latest.seq !== input.assigned.seq || latest.to !== 'assigned')) return false;
      this.transitions.push(input.back);
      this.timeline.push(`transition:${input.back.to}:withdrawn`);
      return true;
    },
    confirmNodeLost: async (input: { nodeId: string; silentForMs: number }): Promise<{ lost: boolean; why: string }> => {
      this.confirmCalls.push(input);
      this.timeline.push(`confirm-lost:${input.nodeId}`);
      if (this.confirmFails) throw ApplicationFailure.nonRetryable('Postgres away for good', 'Unreachable');
      await this.confirmGate?.opened;
      if (this.aliveAfterLapse > 0) {
        this.aliveAfterLapse -= 1;
        return { lost: false, why: 'its heartbeats reached the server: the relay to its watch lapsed, not the node' };
      }
      return { lost: true, why: '' };
    },
    recordTransition: async (t: Transition): Promise<void> => {
      // Idempotent per seq, like jobs-repo.recordTransition.
      if (this.transitions.some((x) => x.jobId === t.jobId && x.seq === t.seq)) return;
      const gate = this.transitionGate?.to === t.to ? this.transitionGate : undefined;
      if (gate && !gate.after) {
        this.timeline.push(`transition:${t.to}:waiting`);
        await gate.gate.opened;
      }
      this.transitions.push(t);
      this.timeline.push(`transition:${t.to}`);
      if (gate?.after) {
        // Recorded, and its activity not done yet (as when a worker is slow to report what it wrote).
        this.timeline.push(`transition:${t.to}:recorded-waiting`);
        await gate.gate.opened;
      }
    },
    matchNode: async (input: MatchInput): Promise<MatchResult> => {
      this.matchCalls.push(structuredClone(input));
      const node = this.online.find((n) => !input.excludeNodeIds.includes(n.nodeId)) ?? null;
      return {
        node,
        explanation: { ranked: node ? [{ nodeId: node.nodeId, score: 1, parts: { fit: 1, reputation: 1, load: 1, region: 1, price: 1 } }] : [], rejected: [], rejectedCounts: {}, eligible: node ? 1 : 0, claimedByOthers: [] },
      };
    },
    releaseNode: async (input: { jobId: string }): Promise<void> => {
      this.timeline.push(`release-node:${input.jobId}`);
    },
    watchNode: async (input: { jobId: string; nodeId: string; attempt: number }): Promise<void> => {
      this.watchCalls.push({ ...input, at: Date.now() });
      throw new CompleteAsyncError();
    },
    recordNodeOutcome: async (input: { nodeId: string; outcome: 'completed' | 'failed'; jobId: string; reason: string }): Promise<void> => {
      if (this.outcomeGate) {
        this.timeline.push('node-outcome:waiting');
        await this.outcomeGate.opened;
      }
      this.nodeOutcomes.push({ nodeId: input.nodeId, outcome: input.outcome });
    },
    escrow: async (input: { jobId: string; amount: string; payer: string; escrowTxHash?: string }): Promise<LegReceipt> => {
      this.escrowCalls.push({ jobId: input.jobId, amount: input.amount, payer: input.payer, escrowTxHash: input.escrowTxHash });
      await this.escrowGate?.opened;
      if (this.escrowRefusal) {
        this.timeline.push('escrow:refused');
        throw ApplicationFailure.create({ ...this.escrowRefusal, nonRetryable: true });
      }
      const existing = this.ledger.find((l) => l.leg === 'escrow');
      if (existing) return existing;
      const leg: LegReceipt = { leg: 'escrow', amount: input.amount, to: `escrow:${input.jobId}`, txRef: `ledger:${input.jobId}/escrow` };
      this.ledger.push(leg);
      this.timeline.push('escrow');
      return leg;
    },
    release: async (input: { jobId: string; nodeId: string }): Promise<ReleaseOutcome> => {
      this.releaseCalls.push({ jobId: input.jobId, nodeId: input.nodeId });
      this.timeline.push('release:start');
      await this.releaseGate?.opened;
      const escrow = this.ledger.find((l) => l.leg === 'escrow');
      if (!escrow) throw ApplicationFailure.nonRetryable(`job ${input.jobId} has no escrow`, PaymentFailures.escrowMissing);
      if (this.hasLeg('refund')) {
        throw ApplicationFailure.nonRetryable(`escrow of job ${input.jobId} was refunded`, PaymentFailures.alreadySettled);
      }
      const total = BigInt(escrow.amount);
      const platform = total / 10n;
      const paidNode = this.ledger.find((l) => l.leg === 'release_node');
      const paidFee = this.ledger.find((l) => l.leg === 'release_platform');
      if (paidNode && paidFee) {
        // Exactly once: a repeated release returns the legs already paid.
        this.releaseOutcomes.push('paid');
        this.timeline.push('release:done');
        return { owed: false, node: paidNode, platform: paidFee };
      }
      const wallet = this.wallets.get(input.nodeId);
      if (!wallet) {
        // Like the settlement: nothing moves while the node has no wallet; the escrow stays held for it.
        this.releaseOutcomes.push('owed');
        this.timeline.push('release:owed');
        const because = this.owedReasons.get(input.nodeId);
        return { owed: true, nodeAmount: (total - platform).toString(), platformAmount: platform.toString(), ...(because && { because }) };
      }
      const node: LegReceipt = { leg: 'release_node', amount: (total - platform).toString(), to: wallet, txRef: `ledger:${input.jobId}/release_node` };
      const fee: LegReceipt = { leg: 'release_platform', amount: platform.toString(), to: 'platform:treasury', txRef: `ledger:${input.jobId}/release_platform` };
      this.ledger.push(node, fee);
      this.releaseOutcomes.push('paid');
      this.timeline.push('release:done');
      return { owed: false, node, platform: fee };
    },
    refund: async (input: { jobId: string }): Promise<LegReceipt> => {
      this.refundCalls.push(input);
      this.timeline.push('refund:start');
      await this.refundGate?.opened;
      const escrow = this.ledger.find((l) => l.leg === 'escrow');
      if (!escrow) throw ApplicationFailure.nonRetryable(`job ${input.jobId} has no escrow`, PaymentFailures.escrowMissing);
      if (this.hasLeg('release_node')) {
        throw ApplicationFailure.nonRetryable(`escrow of job ${input.jobId} was released`, PaymentFailures.alreadySettled);
      }
      const leg: LegReceipt = { leg: 'refund', amount: escrow.amount, to: 'payer-wallet', txRef: `ledger:${input.jobId}/refund` };
      if (!this.hasLeg('refund')) this.ledger.push(leg);
      this.timeline.push('refund:done');
      return leg;
    },
    dispatchToNode: async (input: DispatchInput): Promise<DispatchResult> => {
      this.dispatchCalls.push(structuredClone(input));
      if (this.dispatchBehaviour.get(input.nodeId) === 'refuse') return { accepted: false, reason: 'busy with another job', code: 409 };
      if (this.dispatchBehaviour.get(input.nodeId) === 'slow') await new Promise((r) => setTimeout(r, SLOW_DISPATCH_MS));
      return { accepted: true };
    },
    // The production composition over the two fakes above.
    assignToNode: (input) =>
      createAssignActivity({ dispatchToNode: this.activities.dispatchToNode, recordTransition: this.activities.recordTransition }).assignToNode(input),
  };
}

/**
 * WARN and up, minus the worker's "Activity failed" warning for the payment refusals the fakes throw on purpose
 * (non-retryable types of src/domain/payments.ts): an escrow-refused test would otherwise print a stack each run.
 */
class QuietLogger extends DefaultLogger {
  constructor() {
    super('WARN');
  }
  override log(level: Parameters<DefaultLogger['log']>[0], message: string, meta?: Record<string, unknown>): void {
    const error = meta?.error;
    if (message === 'Activity failed' && error instanceof ApplicationFailure && PAYMENT_NON_RETRYABLE.includes(error.type ?? '')) return;
    super.log(level, message, meta);
  }
}

/** Installs a quiet runtime logger once per process (module registry). */
let runtimeInstalled = false;
export function installQuietRuntime(): void {
  if (runtimeInstalled) return;
  runtimeInstalled = true;
  try {
    Runtime.install({ logger: new QuietLogger() });
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
export function uniqueTaskQueue(label: string, prefix = 'jobs'): string {
  queueCounter += 1;
  return `${prefix}-${label.replace(/[^a-z0-9]+/gi, '-').slice(0, 40)}-${process.pid}-${queueCounter}-${Date.now().toString(36)}`;
}

/** A worker of the bundled workflows with a fake world's activities (a FakeCluster, or the reservation harness's). */
export async function createJobWorker(
  env: TestWorkflowEnvironment,
  bundle: WorkflowBundleWithSourceMap,
  taskQueue: string,
  cluster: { activities: object },
  /** E.g. `{ maxCachedWorkflows: 0 }`: every workflow task is then replayed from the history. */
  workerOptions: Partial<WorkerOptions> = {},
): Promise<Worker> {
  return Worker.create({
    connection: env.nativeConnection,
    namespace: env.namespace ?? 'default',
    taskQueue,
    workflowBundle: bundle,
    activities: cluster.activities,
    ...workerOptions,
  });
}

/**
 * Runs `body` while `worker` polls, then shuts the worker down; the cluster's gates are opened first so an
 * activity held at one cannot keep the worker (and the test) from ending.
 */
export async function runWorkerUntil<T>(worker: Worker, cluster: { openGates(): void }, body: () => Promise<T>): Promise<T> {
  return worker.runUntil(async () => {
    try {
      return await body();
    } finally {
      cluster.openGates();
    }
  });
}

/**
 * Starts a job workflow with the id policies the API uses (src/services/job-workflows.ts); with `resume`, as the
 * next run of a job that continued as new with that state.
 */
export async function startJob(
  client: Client,
  taskQueue: string,
  spec: JobSpec,
  options: JobWorkflowOptions,
  resume?: JobState,
  /** A workflow task timeout other than the server's default (10 s). */
  workflowTaskTimeout?: Duration,
): Promise<JobHandle> {
  return client.workflow.start(jobWorkflow, {
    workflowId: spec.jobId,
    taskQueue,
    ...(workflowTaskTimeout && { workflowTaskTimeout }),
    args: [{ spec, options, ...(resume && { resume }) }],
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

/** A running heartbeat loop on one activity (see heartbeatActivity). */
export interface Heartbeats {
  stop(): void;
  beats(): number;
  /** When the last heartbeat was accepted (ms since the epoch; 0 before the first). */
  lastBeatAt(): number;
}

/**
 * Heartbeats an async-completed activity by id every `everyMs`, as the API's nodeAlive does, until stopped.
 * Misses (the activity not started yet, between runs, ended) are ignored like the API ignores them.
 */
export function heartbeatActivity(client: Client, id: { workflowId: string; activityId: string }, everyMs: number, details: () => object): Heartbeats {
  let beats = 0;
  let lastBeatAt = 0;
  let stopped = false;
  const beat = async () => {
    try {
      await client.activity.heartbeat(id, details());
      beats += 1;
      lastBeatAt = Date.now();
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
    lastBeatAt: () => lastBeatAt,
  };
}

/** Heartbeats the watch activity of one attempt of a job. */
export function keepAlive(client: Client, jobId: string, attempt: number, everyMs = 200): Heartbeats {
  let n = 0;
  return heartbeatActivity(client, { workflowId: jobId, activityId: watchActivityId(attempt) }, everyMs, () => ({ beat: n++ }));
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
