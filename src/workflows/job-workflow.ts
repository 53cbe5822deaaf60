import {
  ActivityCancellationType,
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  condition,
  makeContinueAsNewFunc,
  isCancellation,
  proxyActivities,
  proxyLocalActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  TemporalFailure,
  TimeoutFailure,
  upsertMemo,
  upsertSearchAttributes,
  workflowInfo,
  allHandlersFinished,
  patched,
} from '@temporalio/workflow';
import { TimeoutType, type RetryPolicy } from '@temporalio/common';
import type { createAssignActivity, createDispatchActivities } from '../activities/dispatch';
import type { createJobActivities, MatchedNode, MatchResult } from '../activities/jobs';
import type { createPaymentActivities } from '../activities/payments';
import type { Transition } from '../db/jobs-repo';
import { isTerminal, type JobPhase, type JobSpec } from '../domain/job';
import { PAYMENT_NON_RETRYABLE } from '../domain/payments';
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
  type JobOutcomeReport,
  type JobView,
} from './messages';
import { confirmLoss, watchLapsed } from './liveness';
import { JobSearchAttributes as SA } from './search-attributes';

type JobActivities = ReturnType<typeof createJobActivities>;
type PaymentActivities = ReturnType<typeof createPaymentActivities>;
type DispatchActivities = ReturnType<typeof createDispatchActivities>['activities'] & ReturnType<typeof createAssignActivity>;

/** Settings fixed when a job starts, so a config change never alters a running job's replay. */
export interface JobWorkflowOptions {
  heartbeatTimeoutMs: number;
  maxAttempts: number;
  maxRuntimeMs: number;
  requeueIntervalMs: number;
  assignTimeoutMs: number;
  /** Continue-as-new once a run's history is this long (Temporal's hard limit is 51,200 events). */
  historyEventLimit: number;
  /**
   * Shipping nodes and Engines never report a job's end (CYXWIZ-PROTOCOL.md §6.2). An attempt whose node has
   * sent no progress report is ended this long after its expected run time (estimated_duration, else
   * DEFAULT_EXPECTED_RUN_S): completed when the node accepted it, else failed and refunded. 0 or absent (jobs
   * started before this option existed): wait for a report until maxRuntimeMs.
   */
  unreportedEndGraceMs?: number;
}

/** The expected run time of a job submitted without estimated_duration: the 10 minutes a job is charged at least. */
export const DEFAULT_EXPECTED_RUN_S = 600;

/** Everything a run carries over to the next one through continue-as-new. */
export interface JobState {
  phase: JobPhase;
  attempt: number;
  /** When the current attempt was assigned (workflow time), so continue-as-new keeps its run-time budget. */
  attemptStartedAt: number;
  nodeId: string | null;
  failedNodes: string[];
  refusedNodes: string[];
  nodeStarted: boolean;
  /** The node has sent a progress report in this attempt: it reports, so its end is awaited, not assumed. */
  reported?: boolean;
  progress: number;
  epoch: number;
  escrow: JobView['escrow'];
  seq: number;
  lastReason: string;
  error: { code: number; message: string } | null;
  /** Why the node's payment is owed, as the job last recorded it. */
  owedBecause?: string;
}

export interface JobWorkflowInput {
  spec: JobSpec;
  options: JobWorkflowOptions;
  resume?: JobState;
}

export interface JobWorkflowResult {
  jobId: string;
  phase: 'completed' | 'failed' | 'cancelled';
  attempts: number;
  nodeId: string | null;
  reason: string;
  /** Reference of the node's payment (completed) or of the refund (failed, cancelled). */
  txRef: string;
}

/** Activity id of the watch over one attempt; the API heartbeats it by this id. */
export const watchActivityId = (attempt: number) => `watch-${attempt}`;

type Outcome =
  | { kind: 'completed'; report: JobOutcomeReport }
  | { kind: 'failed'; nodeId: string; message: string };

/**
 * Retries of local activities that keep failing (Postgres or the chain away) back off to LOCAL_RETRY_MAX: once a
 * wait is longer than the SDK's local retry threshold (1 minute) it is a workflow timer, a few events per try.
 * Retried inside the worker instead, the workflow task is extended every few seconds, three events each: an
 * outage of a day and a half would fill a job's history.
 */
const LOCAL_RETRY_MAX = '5 minutes';

const registry = proxyLocalActivities<JobActivities>({
  startToCloseTimeout: '10 seconds',
  retry: { initialInterval: '200 milliseconds', backoffCoefficient: 2, maximumInterval: LOCAL_RETRY_MAX },
});

const moneyRetry: RetryPolicy = {
  initialInterval: '1 second',
  backoffCoefficient: 2,
  maximumInterval: '1 minute',
  nonRetryableErrorTypes: PAYMENT_NON_RETRYABLE,
};

const money = proxyActivities<PaymentActivities>({
  // A settlement attempt waits for its confirmation (CHAIN_CONFIRM_TIMEOUT_MS) and heartbeats meanwhile.
  startToCloseTimeout: '3 minutes',
  heartbeatTimeout: '15 seconds',
  retry: moneyRetry,
});

/**
 * The escrow runs as a local activity so that it can run beside the first match in the job's first workflow
 * task: a scheduled activity only leaves with the task's completion, which waits for the match. Exactly once
 * all the same (a re-run after a crash finds the leg's row), and a dead worker surfaces as the task's timeout.
 */
const escrowMoney = proxyLocalActivities<PaymentActivities>({
  startToCloseTimeout: '3 minutes',
  retry: { ...moneyRetry, maximumInterval: LOCAL_RETRY_MAX },
});

/** An owed payment is retried at least this often even without a wallet registration signal. */
const OWED_RECHECK = '1 hour';

/** Patch: a match's offer and its 'assigned' record are one local activity (assignToNode), not two. */
const ASSIGN_IN_ONE_ACTIVITY = 'assign-in-one-activity';
/**
 * Patch: the per-attempt timer for a node that never reports its end (JobWorkflowOptions.unreportedEndGraceMs),
 * and a queued job continuing as new whatever woke it (before, only after a quiet re-check).
 */
const UNREPORTED_END_TIMER = 'unreported-end-timer';
/**
 * Patch: the workflow as of this version, the one marker a run records. A run started with it behaves as with
 * every patch above (whose markers it no longer records: two history events fewer per job); a node's failure
 * or loss that comes together with a cancel still counts against the node; and a failed attempt's outcome (a ban
 * with it) is recorded before its capacity is given back.
 */
const JOB_WORKFLOW_V3 = 'job-workflow-v3';
/**
 * Patch: the workflow as of this version, the one marker a run records (in place of v3's, whose behaviour it
 * has). A job that ends unpaid is recorded ended — its node told to stop — before its refund, which may wait
 * (the chain away, or the payer's token account closed), and the refund is recorded when it lands (before, the
 * job showed its old phase and its node ran on until then); an owed payment whose reason changes records the
 * new one on the job.
 */
const JOB_WORKFLOW_V4 = 'job-workflow-v4';
/**
 * Patch: the workflow as of this version, the one marker a run records (in place of v4's, whose behaviour it
 * has). After an offer that failed, an `assigned` record that landed all the same (its activity gave up while
 * the node took the job) is followed by one putting the job back where it is, the node told to stop it
 * (withdrawAssignment): before, a job that was queued already stayed shown as assigned to that node. A watch
 * that lapses is confirmed before the node counts as lost (confirmNodeLost): a lapse while the heartbeat relay
 * was down (an API restart, a Temporal or Postgres outage) no longer takes every running job from its node.
 */
const JOB_WORKFLOW_V5 = 'job-workflow-v5';
/**
 * Patch, asked only where it applies: a job whose cancel came with its start (recorded while Temporal was away and
 * cancelled before the sweep started it: CancelJob starts it with the cancel) ends before anything is escrowed or
 * claimed. A job its payer funded with their own transfer still escrows it, to refund it.
 */
export const CANCEL_BEFORE_ESCROW = 'cancel-before-escrow';
/** Patch, asked only where it applies: the acceptedLate signal (an acceptance no worker took in time) counts. */
export const ACCEPTED_LATE = 'accepted-late';

/**
 * One compute job, from escrow to payment: escrow → match → assign → await the node → complete or retry
 * on another node → release (90/10) or refund. The workflow id is the job id.
 */
export async function jobWorkflow(input: JobWorkflowInput): Promise<JobWorkflowResult> {
  const { spec, options } = input;
  const jobId = spec.jobId;
  // Asked once, first thing in a run: a patch asked right after local activities return could be answered
  // differently on replay when a workflow task ended between their start and their markers.
  // Runs of v3 ask no earlier patch (they have all of them); runs recorded before it find their own markers.
  const v5 = patched(JOB_WORKFLOW_V5);
  const v4 = v5 || patched(JOB_WORKFLOW_V4);
  const v3 = v4 || patched(JOB_WORKFLOW_V3);
  const assignInOneActivity = v3 || patched(ASSIGN_IN_ONE_ACTIVITY);
  // The per-attempt timer for nodes that never report: also gated by the patch, so a job started with the option
  // but run first by a worker without it (a skewed deploy) replays without the timer it never had.
  const thisVersion = v3 || patched(UNREPORTED_END_TIMER);
  const s: JobState = input.resume ?? {
    phase: 'pending',
    attempt: 0,
    attemptStartedAt: 0,
    nodeId: null,
    failedNodes: [],
    refusedNodes: [],
    nodeStarted: false,
    progress: 0,
    epoch: 0,
    escrow: 'none',
    seq: 0,
    lastReason: 'submitted',
    error: null,
  };
  // A state carried over by an earlier version has no attempt clock: count the attempt from this run.
  s.attemptStartedAt ??= workflowInfo().runStartTime.getTime();
  let outcome: Outcome | undefined;
  let cancelRequest: { reason: string } | undefined;
  let nodesChanged = false;
  let walletRegistered = false;
  let final: { phase: JobWorkflowResult['phase']; txRef: string } | undefined;
  /** A match claimed node capacity that no assignment holds yet: whoever ends the job gives it back. */
  let unassignedClaim = false;

  // Local, like the match and the transitions: offer and 'assigned' complete in the task that matched.
  const dispatch = proxyLocalActivities<DispatchActivities>({
    startToCloseTimeout: options.assignTimeoutMs + 2000,
    retry: { maximumAttempts: 2, initialInterval: '500 milliseconds' },
  });

  // ---- messages -------------------------------------------------------------------------------
  // Set while a failed or lost attempt is wound down (its node still recorded until the job is queued again):
  // that node's reports are refused from the moment the attempt is given up, not only once the job moved on.
  let givingUpAttempt = false;
  const holds = (nodeId: string) => !givingUpAttempt && s.nodeId === nodeId && (s.phase === 'assigned' || s.phase === 'running');
  const assertHolder = (nodeId: string) => {
    if (!holds(nodeId)) {
      throw ApplicationFailure.create({ type: JobRejections.notHolder, message: `node ${nodeId} does not hold job ${jobId}` });
    }
    if (outcome || cancelRequest) {
      throw ApplicationFailure.create({ type: JobRejections.finished, message: `job ${jobId} is already finishing` });
    }
  };

  setHandler(jobStatusQuery, () => view());
  setHandler(nodesChangedSignal, () => {
    nodesChanged = true;
  });
  setHandler(walletRegisteredSignal, () => {
    walletRegistered = true;
  });
  setHandler(progressSignal, (p) => {
    if (!holds(p.nodeId) || outcome) return;
    s.progress = p.progress ?? s.progress;
    s.epoch = p.epoch ?? s.epoch;
    s.nodeStarted = true;
    s.reported = true;
    details();
  });
  setHandler(
    acceptedUpdate,
    () => {
      s.nodeStarted = true;
      return { acknowledged: true };
    },
    { validator: ({ nodeId }) => assertHolder(nodeId) },
  );
  setHandler(acceptedSignal, ({ nodeId }) => {
    // Behind a patch: a worker without this handler took such a signal as nothing, and replays must agree.
    if (holds(nodeId) && !outcome && !cancelRequest && patched(ACCEPTED_LATE)) s.nodeStarted = true;
  });
  setHandler(
    completeUpdate,
    async (report) => {
      outcome ??= { kind: 'completed', report };
      // Answered with how the job ended, also when an operator's cancel came meanwhile.
      await CancellationScope.nonCancellable(() => condition(() => final !== undefined));
      const paid = final!.phase === 'completed' && final!.txRef !== '';
      return { paymentReleased: paid, txRef: paid ? final!.txRef : '' };
    },
    {
      validator: (report) => {
        // A retried completion from the same node joins the first one.
        if (outcome?.kind === 'completed' && outcome.report.nodeId === report.nodeId) return;
        assertHolder(report.nodeId);
      },
    },
  );
  setHandler(
    failUpdate,
    ({ nodeId, message }) => {
      outcome ??= { kind: 'failed', nodeId, message };
      return { acknowledged: true };
    },
    { validator: ({ nodeId }) => assertHolder(nodeId) },
  );
  setHandler(
    cancelUpdate,
    async ({ reason }) => {
      cancelRequest ??= { reason: reason || 'cancelled by the client' };
      await CancellationScope.nonCancellable(() => condition(() => final !== undefined));
      const refunded = final!.phase !== 'completed' && final!.txRef !== '';
      return { refundIssued: refunded, txRef: refunded ? final!.txRef : '' };
    },
    {
      validator: (_request) => {
        if (isTerminal(s.phase) || outcome?.kind === 'completed') {
          throw ApplicationFailure.create({ type: JobRejections.finished, message: `job ${jobId} has already finished` });
        }
      },
    },
  );

  // ---- helpers --------------------------------------------------------------------------------
  function view(): JobView {
    return {
      jobId,
      phase: s.phase,
      attempt: s.attempt,
      maxAttempts: options.maxAttempts,
      nodeId: s.nodeId,
      failedNodes: [...s.failedNodes],
      progress: s.progress,
      epoch: s.epoch,
      escrow: s.escrow,
      lastReason: s.lastReason,
      error: s.error,
    };
  }

  function details(): void {
    const lines = [
      `**${s.phase}** · attempt ${s.attempt}/${options.maxAttempts} · escrow ${s.escrow}`,
      s.nodeId ? `node \`${s.nodeId}\` · progress ${(s.progress * 100).toFixed(0)} % · epoch ${s.epoch}` : 'no node',
      `last: ${s.lastReason}`,
    ];
    if (s.failedNodes.length) lines.push(`failed on: ${s.failedNodes.join(', ')}`);
    setCurrentDetails(lines.join('\n\n'));
  }

  function publish(): void {
    upsertSearchAttributes([
      { key: SA.status, value: s.phase },
      { key: SA.nodeId, value: s.nodeId ?? '' },
      { key: SA.attempt, value: s.attempt },
      { key: SA.escrowState, value: s.escrow },
    ]);
    details();
  }

  type TransitionExtra = Omit<Transition, 'jobId' | 'seq' | 'from' | 'to' | 'reason' | 'actor' | 'attempt'>;

  /** The next state change's record (the next sequence number), for the attempt and node given or current. */
  function nextTransition(to: JobPhase, reason: string, actor: string, extra: TransitionExtra = {}, attempt = s.attempt, nodeId = s.nodeId): Transition {
    return { jobId, seq: s.seq + 1, from: s.phase, to, reason, actor, attempt, nodeId, ...extra };
  }

  /** Takes a recorded state change into the workflow's state. */
  function applyTransition(t: Transition): void {
    s.seq = t.seq;
    s.phase = t.to;
    s.lastReason = t.reason;
    publish();
  }

  async function transition(to: JobPhase, reason: string, actor: string, extra: TransitionExtra = {}): Promise<void> {
    const t = nextTransition(to, reason, actor, extra);
    s.seq = t.seq;
    await registry.recordTransition(t);
    applyTransition(t);
  }

  const historyTooLong = () =>
    workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > options.historyEventLimit;

  async function continueWithFreshHistory(): Promise<never> {
    await condition(allHandlersFinished);
    // The memo (the match explanation operators read) goes along; a new run starts with its start memo only.
    const next = makeContinueAsNewFunc<typeof jobWorkflow>({ memo: workflowInfo().memo });
    return next({ spec, options, resume: { ...s } });
  }

  /**
   * A money movement is never abandoned half-way by a cancellation: it finishes, so the workflow knows
   * whether the money moved before it compensates.
   */
  function moneyStep<T>(step: () => Promise<T>): Promise<T> {
    return CancellationScope.nonCancellable(step);
  }

  // ---- steps ----------------------------------------------------------------------------------
  /** Matches and assigns until a node accepts the job, or the job is cancelled. */
  async function place(first?: MatchResult): Promise<void> {
    let heldBack = 0;
    for (;;) {
      if (cancelRequest) return; // the main loop refunds and gives back a claim
      // Whatever woke it (a wake-up, the re-check timer, a refusal): a long wait goes on in a fresh history.
      // Not with `first` in hand: that match has claimed a node. (Runs of the earlier version: after a quiet wait.)
      if (thisVersion && !first && historyTooLong()) await continueWithFreshHistory();
      // A wake-up that came while the first match (beside the escrow) was on its way stays set: the job
      // looks again at once instead of waiting for the next one.
      if (!first) nodesChanged = false;
      const match = first ?? (await findNode());
      first = undefined;
      if (match.node) {
        const node = match.node;
        const attempt = s.attempt + 1;
        const reason = `assigned to node ${node.nodeId} (attempt ${attempt}/${options.maxAttempts})`;
        const extra = { assignedNodeId: node.nodeId, attempts: attempt, data: { endpoint: node.endpoint, match: match.explanation, refusedBy: s.refusedNodes } };
        // Offer and record in one local activity (runs started before this patch offer, then record).
        const assigned = assignInOneActivity ? nextTransition('assigned', reason, 'workflow', extra, attempt, node.nodeId) : undefined;
        const offered = await offer(node, assigned);
        const refusal = offered?.why;
        if (!refusal) {
          s.attempt = attempt;
          givingUpAttempt = false;
          s.attemptStartedAt = Date.now();
          s.nodeId = node.nodeId;
          s.nodeStarted = false;
          s.reported = false;
          s.progress = 0;
          s.epoch = 0;
          outcome = undefined;
          if (assigned) applyTransition(assigned);
          else await transition('assigned', reason, 'workflow', extra);
          unassignedClaim = false;
          upsertMemo({ match: { nodeId: match.node.nodeId, attempt: s.attempt, ...match.explanation } });
          s.refusedNodes = [];
          return;
        }
        // The offer's local activity may have recorded `assigned` before it failed: never reuse that number.
        if (assigned) s.seq = Math.max(s.seq, assigned.seq);
        if (assigned && v5) {
          // Its record may have landed after the activity gave up (the node took the job late): if the job's row
          // shows it, the job is recorded back where it is, and the node told to stop it. When the activity ran out
          // of time, its record may still be on its way: recorded back all the same (a later record of the
          // assignment does not set the row back).
          const back = nextTransition(s.phase, `${refusal}; not assigned to it`, 'workflow', { assignedNodeId: null, cancelOnNode: node.nodeId });
          await registry.withdrawAssignment({ assigned, back: { ...back, from: 'assigned' }, always: offered!.timedOut });
          s.seq = back.seq;
        }
        await registry.releaseNode({ jobId });
        unassignedClaim = false;
        s.refusedNodes.push(match.node.nodeId);
        s.lastReason = refusal;
        details();
        continue;
      }
      // Nothing fits now. Nodes that refused (busy) get another chance after the wait.
      s.refusedNodes = [];
      if (s.phase !== 'queued') {
        await transition('queued', `waiting for a node (${queueNote(match.explanation)})`, 'workflow', { data: { match: match.explanation } });
      } else {
        s.lastReason = `waiting for a node (${queueNote(match.explanation)})`;
        details();
      }
      upsertMemo({ match: match.explanation });
      // Held back only because jobs ahead wanted the same nodes: they settle within moments, so look again
      // soon (backing off), not after the full re-check interval.
      heldBack = match.explanation.claimedByOthers.length > 0 ? heldBack + 1 : 0;
      const wait = heldBack > 0 ? Math.min(options.requeueIntervalMs, 500 * 2 ** Math.min(heldBack, 10)) : options.requeueIntervalMs;
      await condition(() => nodesChanged || cancelRequest !== undefined, wait);
      if (!thisVersion && !nodesChanged && !cancelRequest && historyTooLong()) await continueWithFreshHistory();
    }
  }

  /** Matches the job and claims capacity on the best node that is free (see matchNode). */
  async function findNode(): Promise<MatchResult> {
    // Not cancellable: a claim the activity took must be known, so that it is given back.
    const match = await CancellationScope.nonCancellable(() =>
      registry.matchNode({
        jobId,
        requiredDevice: spec.requiredDevice,
        estimatedMemory: spec.estimatedMemory,
        excludeNodeIds: [...s.failedNodes, ...s.refusedNodes],
        paymentUnits: spec.paymentUnits,
        estimatedDuration: spec.estimatedDuration,
      }),
    );
    if (match.node) unassignedClaim = true;
    return match;
  }

  /**
   * Offers the job to the node (and records `assigned` with it when given). @returns why the node did not take it,
   * and whether the offer's activity itself ran out of time (its record may still be on its way).
   */
  async function offer(node: MatchedNode, assigned?: Transition): Promise<{ why: string; timedOut: boolean } | undefined> {
    try {
      const input = { jobId, nodeId: node.nodeId, assignEndpoint: node.assignEndpoint, spec };
      const result = assigned ? await dispatch.assignToNode({ ...input, assigned }) : await dispatch.dispatchToNode(input);
      return result.accepted ? undefined : { why: `node ${node.nodeId} refused: ${result.reason}`, timedOut: false };
    } catch (err) {
      const cause = activityCause(err);
      if (cause) return { why: `node ${node.nodeId} unreachable: ${cause.message}`, timedOut: cause instanceof TimeoutFailure };
      throw err;
    }
  }

  /** Waits for the node holding the job to finish it, fail it, or go silent; or for a cancel. */
  async function supervise(): Promise<void> {
    const nodeId = s.nodeId!;
    const watch = proxyActivities<JobActivities>({
      activityId: watchActivityId(s.attempt),
      heartbeatTimeout: options.heartbeatTimeoutMs,
      // What is left of the attempt's run-time budget (a continued run does not start it over).
      startToCloseTimeout: Math.max(1000, options.maxRuntimeMs - (Date.now() - s.attemptStartedAt)),
      retry: { maximumAttempts: 1 },
      cancellationType: ActivityCancellationType.TRY_CANCEL,
    });
    const scope = new CancellationScope();
    let watchEnded: { error: unknown } | undefined;
    scope.run(() => watch.watchNode({ jobId, nodeId, attempt: s.attempt })).then(
      () => (watchEnded = { error: undefined }),
      (error) => (watchEnded = { error }),
    );
    // One timer per attempt for a node that never reports (see unreportedEndAt).
    const endBy = unreportedEndAt();
    const endByScope = new CancellationScope();
    let endByPassed = false;
    if (endBy !== undefined) {
      endByScope.run(() => sleep(Math.max(1, endBy - Date.now()))).then(
        () => (endByPassed = true),
        () => undefined,
      );
    }
    const unreported = () => endByPassed && !s.reported;

    for (;;) {
      await condition(
        () =>
          outcome !== undefined ||
          cancelRequest !== undefined ||
          watchEnded !== undefined ||
          (s.nodeStarted && s.phase === 'assigned') ||
          unreported() ||
          historyTooLong(),
      );
      if (outcome || cancelRequest || watchEnded) break;
      if (s.nodeStarted && s.phase === 'assigned') {
        await transition('running', `node ${nodeId} started the job`, `node:${nodeId}`, { started: true });
        continue;
      }
      if (unreported()) break;
      scope.cancel();
      endByScope.cancel();
      await continueWithFreshHistory();
    }
    if (!watchEnded) scope.cancel();
    if (endBy !== undefined && !endByPassed) endByScope.cancel();

    if (cancelRequest && outcome?.kind !== 'completed') {
      // A failure or loss that came in the same moment as the cancel is the node's all the same (runs of v3).
      const failure = outcome?.kind === 'failed' ? `node reported failure: ${outcome.message}` : watchEnded ? describeWatchEnd(watchEnded.error, options) : undefined;
      if (v3 && failure) await registry.recordNodeOutcome({ nodeId, outcome: 'failed', jobId, reason: failure });
      return; // the main loop refunds
    }
    if (outcome?.kind === 'completed') return settleCompleted(nodeId);
    if (outcome?.kind === 'failed') return attemptFailed(nodeId, `node reported failure: ${outcome.message}`, `node:${nodeId}`);
    if (watchEnded) {
      if (v5 && watchLapsed(watchEnded.error)) {
        // Heard only through the API's relay: a lapse while it was down (a restart, an outage) is not the node's.
        // A report or a cancel that comes meanwhile goes first (the main loop, or the next watch, takes it): their
        // answers must not wait for the relay.
        const verdict = await confirmLoss(nodeId, options.heartbeatTimeoutMs, () => outcome !== undefined || cancelRequest !== undefined);
        if (outcome || cancelRequest || !verdict) return;
        if (!verdict.lost) {
          s.lastReason = `node ${nodeId} watched again: ${verdict.why}`;
          details();
          return;
        }
        if (verdict.why) return attemptFailed(nodeId, `${describeWatchEnd(watchEnded.error, options)} (${verdict.why})`, 'workflow');
      }
      return attemptFailed(nodeId, describeWatchEnd(watchEnded.error, options), 'workflow');
    }
    // Nothing reported by the end of the expected run, the node alive throughout.
    const waited = `its expected ${Math.round((endBy! - s.attemptStartedAt) / 1000)} s run time and grace`;
    if (s.phase === 'running') {
      // Decided: from here the job is finishing as completed (a cancel is refused, a late report joins it).
      outcome = { kind: 'completed', report: { nodeId } };
      return settleCompleted(nodeId, { how: `no end reported within ${waited}`, actor: 'workflow' });
    }
    givingUpAttempt = true; // the node's reports are refused from here
    s.error = { code: 408, message: `node ${nodeId} never started the job within ${waited}: the Engine did not connect to it` };
    return refundAndEnd('failed', s.error.message, 'workflow', nodeId);
  }

  /**
   * When an attempt whose node sends no progress reports ends by itself: its expected run time plus the grace
   * after it was assigned. Undefined when that is off, or reaches past the attempt's maximum run time anyway.
   */
  function unreportedEndAt(): number | undefined {
    const grace = options.unreportedEndGraceMs;
    if (!grace || !thisVersion || s.reported) return undefined;
    const expectedMs = (spec.estimatedDuration > 0 ? spec.estimatedDuration : DEFAULT_EXPECTED_RUN_S) * 1000;
    if (expectedMs + grace >= options.maxRuntimeMs) return undefined;
    return s.attemptStartedAt + expectedMs + grace;
  }

  /**
   * Pays the node 90/10 for the completed job (or records what it is owed) and ends the job completed. Not
   * cancellable once begun: an operator's cancel meanwhile must not leave the money paid but the job unrecorded
   * (nor try to refund an escrow that was just released).
   */
  function settleCompleted(nodeId: string, end: { how: string; actor: string } = { how: '', actor: `node:${nodeId}` }): Promise<void> {
    return CancellationScope.nonCancellable(() => settleCompletedNow(nodeId, end));
  }

  async function settleCompletedNow(nodeId: string, end: { how: string; actor: string }): Promise<void> {
    await registry.releaseNode({ jobId });
    const outcome = await moneyStep(() => money.release({ jobId, nodeId }));
    await registry.recordNodeOutcome({ nodeId, outcome: 'completed', jobId, reason: end.how ? `completed the job (${end.how})` : 'completed the job' });
    const done = end.how ? `completed on node ${nodeId} (${end.how})` : `completed on node ${nodeId}`;
    if (outcome.owed) {
      s.escrow = 'owed';
      s.owedBecause = outcome.because;
      await transition('completed', `${done}; its ${outcome.nodeAmount} units are owed ${outcome.because ?? 'until it registers a wallet'}`, end.actor, {
        ended: true,
        error: null,
        data: { owed: outcome },
      });
      final = { phase: 'completed', txRef: '' };
      return;
    }
    s.escrow = 'released';
    await transition('completed', `${done}; paid ${outcome.node.amount} to the node, ${outcome.platform.amount} to the platform`, end.actor, {
      ended: true,
      error: null,
      data: { release: outcome },
    });
    final = { phase: 'completed', txRef: outcome.node.txRef };
  }

  /** Waits until the node can be paid (a wallet registered, or the hourly re-check), then releases what it is owed. */
  async function payOwed(nodeId: string): Promise<void> {
    for (;;) {
      await condition(() => walletRegistered, OWED_RECHECK);
      walletRegistered = false;
      const outcome = await moneyStep(() => money.release({ jobId, nodeId }));
      if (outcome.owed && outcome.because && outcome.because !== s.owedBecause && v4) {
        // Still owed, for another reason now (a wallet registered that cannot receive tokens yet): the job says so.
        s.owedBecause = outcome.because;
        await transition('completed', `its ${outcome.nodeAmount} units are still owed ${outcome.because}`, 'workflow', { data: { owed: outcome } });
      }
      if (!outcome.owed) {
        s.escrow = 'released';
        await transition('completed', `owed payment released: ${outcome.node.amount} to node ${nodeId}, ${outcome.platform.amount} to the platform`, 'workflow', {
          data: { release: outcome },
        });
        final = { phase: 'completed', txRef: outcome.node.txRef };
        return;
      }
      // A wallet registered meanwhile is acted on first (the flag does not travel to the next run).
      if (historyTooLong() && !(thisVersion && walletRegistered)) await continueWithFreshHistory();
    }
  }

  async function attemptFailed(nodeId: string, reason: string, actor: string): Promise<void> {
    givingUpAttempt = true;
    s.failedNodes.push(nodeId);
    // v3: the failure is recorded (a ban with it) before the capacity is given back, whose release wakes
    // waiting jobs for this very node.
    if (v3) await registry.recordNodeOutcome({ nodeId, outcome: 'failed', jobId, reason });
    await registry.releaseNode({ jobId });
    if (!v3) await registry.recordNodeOutcome({ nodeId, outcome: 'failed', jobId, reason });
    outcome = undefined;
    if (s.attempt >= options.maxAttempts) {
      s.error = { code: 500, message: `failed after ${s.attempt} attempt(s); last: ${reason}` };
      await refundAndEnd('failed', s.error.message, actor, nodeId, nodeId);
      return;
    }
    s.nodeId = null;
    await transition('queued', `${reason}; reassigning (${s.attempt}/${options.maxAttempts} attempts used)`, actor, {
      assignedNodeId: null,
      cancelOnNode: nodeId,
      excludeNode: nodeId,
      data: { lostNode: nodeId },
    });
  }

  async function refundAndEnd(
    phase: 'failed' | 'cancelled',
    reason: string,
    actor: string,
    stopNode: string | null,
    excludeNode?: string,
  ): Promise<void> {
    if (stopNode || unassignedClaim) await registry.releaseNode({ jobId });
    unassignedClaim = false;
    const ending = {
      ended: true,
      error: s.error,
      ...(stopNode && { cancelOnNode: stopNode }),
      ...(excludeNode && { excludeNode }),
    };
    if (s.escrow === 'held' && v4) {
      // Not cancellable once begun: an operator's cancel meanwhile must not end the ended job again, nor leave
      // its refund unrecorded.
      await CancellationScope.nonCancellable(async () => {
        await transition(phase, `${reason}; refunding the escrow`, actor, { ...ending, data: { refund: null } });
        const refund = await money.refund({ jobId });
        s.escrow = 'refunded';
        await transition(phase, `${reason}; escrow refunded: ${refund.amount} to ${refund.to}`, 'workflow', { data: { refund } });
        final = { phase, txRef: refund.txRef };
      });
      return;
    }
    const receipt = s.escrow === 'held' ? await moneyStep(() => money.refund({ jobId })) : undefined;
    if (receipt) s.escrow = 'refunded';
    await transition(phase, reason, actor, {
      ...ending,
      data: { refund: receipt ?? null },
    });
    final = { phase, txRef: receipt?.txRef ?? '' };
  }

  /**
   * Escrows the payment while the first match runs. No node is offered the job before the money is held; a
   * refusal no retry can fix (no funds, a bad escrow transaction) gives back what the match claimed and fails
   * the job. @returns the first match when the escrow is held.
   */
  async function escrowWhileMatching(): Promise<MatchResult | undefined> {
    // Not cancellable (findNode): whatever happens next must know whether it claimed a node.
    const match = findNode();
    let refusal: string | undefined;
    try {
      await moneyStep(() =>
        escrowMoney.escrow({ jobId, amount: spec.paymentUnits, payer: spec.paymentAddress, escrowTxHash: spec.escrowTxHash || undefined }),
      );
      s.escrow = 'held';
      details(); // the search attributes follow with the next transition, in this same task
    } catch (err) {
      const cause = activityCause(err);
      const permanent = cause instanceof ApplicationFailure && (cause.nonRetryable || PAYMENT_NON_RETRYABLE.includes(cause.type ?? ''));
      if (!permanent) throw err;
      refusal = cause.message;
    }
    const first = await match;
    if (refusal === undefined) return first;
    if (unassignedClaim) await registry.releaseNode({ jobId });
    unassignedClaim = false;
    s.error = { code: 402, message: `escrow refused: ${refusal}` };
    await transition('failed', s.error.message, 'workflow', { ended: true, error: s.error });
    final = { phase: 'failed', txRef: '' };
    return undefined;
  }

  // ---- the script -----------------------------------------------------------------------------
  // A run continued from another shows where the job stands from its start (current details are not carried).
  if (input.resume) details();
  try {
    const unstarted = s.escrow === 'none' && s.phase === 'pending';
    const cancelledAtStart = unstarted && cancelRequest !== undefined && !spec.escrowTxHash && patched(CANCEL_BEFORE_ESCROW);
    let first = unstarted && !cancelledAtStart ? await escrowWhileMatching() : undefined;
    while (!isTerminal(s.phase)) {
      if (cancelRequest) {
        await refundAndEnd('cancelled', `cancelled: ${cancelRequest.reason}`, 'client', s.nodeId);
        break;
      }
      if (s.phase === 'pending' || s.phase === 'queued') await place(first);
      else await supervise();
      first = undefined;
    }
  } catch (err) {
    if (!isCancellation(err)) throw err;
    // Cancelled from Temporal itself (Web UI, CLI): refund before going.
    await CancellationScope.nonCancellable(() =>
      refundAndEnd('cancelled', 'workflow cancelled by an operator', 'operator', s.nodeId),
    );
    throw err;
  }
  // The node earned what it is owed: waiting for its wallet is not cancellable (an operator can still terminate).
  if (s.escrow === 'owed' && s.nodeId) await CancellationScope.nonCancellable(() => payOwed(s.nodeId!));
  await CancellationScope.nonCancellable(() => condition(allHandlersFinished));
  return {
    jobId,
    phase: s.phase as JobWorkflowResult['phase'],
    attempts: s.attempt,
    nodeId: s.nodeId,
    reason: s.lastReason,
    txRef: final?.txRef ?? '',
  };
}

/**
 * Why an activity failed: the cause of an ActivityFailure, or the failure itself, as a local activity's
 * failure reaches the workflow unwrapped. Undefined for cancellations and anything else.
 */
function activityCause(err: unknown): TemporalFailure | undefined {
  if (isCancellation(err)) return undefined;
  if (err instanceof ActivityFailure) return err.cause instanceof TemporalFailure ? err.cause : err;
  return err instanceof ApplicationFailure || err instanceof TimeoutFailure ? err : undefined;
}

function queueNote(e: { eligible: number; rejectedCounts: Record<string, number>; claimedByOthers: string[]; queuePosition?: number }): string {
  const passed = Object.entries(e.rejectedCounts)
    .map(([reason, n]) => `${n} ${reason}`)
    .join(', ');
  return [
    e.queuePosition !== undefined ? `${e.queuePosition} ahead in the queue` : '',
    e.claimedByOthers.length ? `${e.claimedByOthers.length} held for jobs ahead or filled meanwhile` : '',
    passed ? `passed over: ${passed}` : 'no nodes registered',
  ]
    .filter(Boolean)
    .join('; ');
}

function describeWatchEnd(error: unknown, options: JobWorkflowOptions): string {
  const cause = error instanceof ActivityFailure ? error.cause : error;
  if (cause instanceof TimeoutFailure) {
    if (cause.timeoutType === TimeoutType.HEARTBEAT) {
      return `node lost: silent for ${Math.round(options.heartbeatTimeoutMs / 1000)} s`;
    }
    if (cause.timeoutType === TimeoutType.START_TO_CLOSE) {
      return `exceeded the maximum run time of ${Math.round(options.maxRuntimeMs / 1000)} s`;
    }
  }
  return `supervision ended unexpectedly: ${(cause as Error | undefined)?.message ?? 'no reason'}`;
}
