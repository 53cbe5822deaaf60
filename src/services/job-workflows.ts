import {
  ActivityCancelledError,
  ActivityNotFoundError,
  ApplicationFailure,
  isGrpcServiceError,
  ServiceError,
  WorkflowExecutionAlreadyStartedError,
  WorkflowIdConflictPolicy,
  WorkflowIdReusePolicy,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  WithStartWorkflowOperation,
  type Client,
} from '@temporalio/client';
import { ConflictError, ForbiddenError, UnavailableError, ValidationError } from '../domain/errors';
import type { JobSpec } from '../domain/job';
import { unitsToTokenString } from '../domain/money';
import { jobWorkflow, type JobWorkflowInput, type JobWorkflowOptions } from '../workflows/job-workflow';
import { watchActivityId } from '../workflows/job-workflow';
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
  type CancelReceipt,
  type JobOutcomeReport,
  type NodeProgress,
  type SettlementReceipt,
} from '../workflows/messages';
import { JobSearchAttributes as SA } from '../workflows/search-attributes';
import { keyedThrottle } from './keyed-throttle';
import { LATE, temporalCalls } from './temporal-calls';
import { TemporalAwayError, temporalUnavailable } from './temporal-errors';

export interface JobWorkflowGatewayDeps {
  client: Client;
  taskQueue: string;
  options: JobWorkflowOptions;
  tokenDecimals: number;
  /** Progress reports of one attempt reach its workflow at most this often (the first always). Default 10 s. */
  progressSignalIntervalMs?: number;
  /** How long one call to Temporal may take, retries included; default 20 s. */
  callLimitMs?: number;
  /** CancelJob answers within this long of its start once the cancel is accepted; default CANCEL_ANSWER_MS. */
  cancelAnswerMs?: number;
}

/** The shipping Engine gives CancelJob 10 s and takes the job as cancelled only on a SUCCESS reply. */
const CANCEL_ANSWER_MS = 8_000;
/** After that, how long the job's escrow state may take to be asked (the reply still within the 10 s). */
const CANCEL_QUERY_MS = 1_000;

/**
 * The one place that talks to job workflows: starts them and delivers node and client messages,
 * translating Temporal's errors into domain errors.
 */
export function createJobWorkflowGateway(deps: JobWorkflowGatewayDeps) {
  const { client } = deps;
  const handle = (jobId: string) => client.workflow.getHandle(jobId);
  const { limited, acceptedThen, acceptedWithin } = temporalCalls(client, deps.callLimitMs);

  /** Starts the job's workflow; starting an existing job is a no-op (workflow id = job id). */
  async function start(spec: JobSpec): Promise<void> {
    try {
      await limited(() => startWorkflow(spec));
    } catch (err) {
      throw translate(err);
    }
  }

  async function startWorkflow(spec: JobSpec): Promise<void> {
    try {
      await client.workflow.start(jobWorkflow, startOptions(spec));
    } catch (err) {
      if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err; // else finished earlier: same job
    }
  }

  function startOptions(spec: JobSpec) {
    return {
      workflowId: spec.jobId,
      taskQueue: deps.taskQueue,
      args: [{ spec, options: deps.options }] as [JobWorkflowInput],
      workflowIdConflictPolicy: WorkflowIdConflictPolicy.USE_EXISTING,
      workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
      typedSearchAttributes: [
        { key: SA.status, value: 'pending' },
        { key: SA.jobType, value: spec.jobType },
        { key: SA.deviceType, value: spec.requiredDevice },
        { key: SA.submitter, value: spec.paymentAddress },
        { key: SA.escrowState, value: 'none' },
        { key: SA.attempt, value: 0 },
      ],
      staticSummary: summary(spec, deps.tokenDecimals),
      staticDetails: staticDetails(spec, deps.tokenDecimals),
    };
  }

  async function nodesChanged(jobIds: string[]): Promise<void> {
    await Promise.all(jobIds.map((id) => limited(() => handle(id).signal(nodesChangedSignal)).catch(() => undefined)));
  }

  /** Jobs owing this node money can pay it now. */
  async function walletRegistered(jobIds: string[]): Promise<void> {
    await Promise.all(jobIds.map((id) => limited(() => handle(id).signal(walletRegisteredSignal)).catch(() => undefined)));
  }

  // A progress report is a workflow task and four history events. The node's copy in Postgres is what
  // GetJobStatus, StreamJobUpdates and REST read; the workflow's copy (its status query and the Web UI's
  // details) needs the first report of an attempt (the node started) and then one per interval, so a node
  // reporting every epoch of a long job does not fill the job's history.
  const progressThrottle = keyedThrottle(deps.progressSignalIntervalMs ?? 10_000);

  /**
   * Passes a node's progress on the job's current attempt to its workflow: the first report of the attempt,
   * then at most one per `progressSignalIntervalMs`.
   * @returns whether the workflow was told
   */
  async function progress(jobId: string, attempt: number, p: NodeProgress): Promise<boolean> {
    const key = `${jobId}/${attempt}`;
    const now = Date.now();
    if (!progressThrottle.pass(key, now)) return false;
    try {
      await limited(() => handle(jobId).signal(progressSignal, p));
      return true;
    } catch (err) {
      progressThrottle.undo(key, now);
      throw translate(err);
    }
  }

  /**
   * Tells the job's workflow that its node started it. When no worker takes the update in time (a worker outage or
   * rollout), sent as a signal instead, which Temporal keeps until a worker runs: the shipping node sends its
   * acceptance once, and a job whose acceptance is lost ends as never started (refunded, the node unpaid).
   */
  async function accepted(jobId: string, nodeId: string): Promise<{ acknowledged: boolean }> {
    try {
      return await update(() => limited(() => handle(jobId).executeUpdate(acceptedUpdate, { args: [{ nodeId }] })));
    } catch (err) {
      if (!(err instanceof UnavailableError)) throw err;
      await limited(() => handle(jobId).signal(acceptedSignal, { nodeId })).catch(() => {
        throw err;
      });
      return { acknowledged: true };
    }
  }

  async function complete(jobId: string, report: JobOutcomeReport): Promise<SettlementReceipt> {
    return update(() =>
      acceptedThen(
        (waitForStage) => handle(jobId).startUpdate(completeUpdate, { args: [report], updateId: `complete/${report.nodeId}`, waitForStage }),
        `${jobId}/complete/${report.nodeId}`,
      ),
    );
  }

  async function fail(jobId: string, nodeId: string, message: string): Promise<{ acknowledged: boolean }> {
    return update(() => limited(() => handle(jobId).executeUpdate(failUpdate, { args: [{ nodeId, message }], updateId: `fail/${nodeId}` })));
  }

  /**
   * Cancels the job; resolves with the refund once it is made, or, when it takes longer than `cancelAnswerMs`
   * (a slow chain), as soon as the cancel is accepted: `refundIssued` then says whether the workflow answered,
   * within CANCEL_QUERY_MS, that the escrow is held, so its refund decided (it lands later; its signature is on
   * the job's payments).
   * @param recorded the job's spec when its row is still pending: a job recorded while Temporal was away has no
   *   workflow yet, and is started to be cancelled
   */
  async function cancel(jobId: string, reason: string, recorded?: JobSpec): Promise<CancelReceipt> {
    return update(async () => {
      const receipt = await acceptedWithin(async (waitForStage) => {
        const args: [{ reason: string }] = [{ reason }];
        try {
          return await handle(jobId).startUpdate(cancelUpdate, { args, updateId: 'cancel', waitForStage });
        } catch (err) {
          if (!recorded || !(err instanceof WorkflowNotFoundError)) throw err;
          // Recorded while Temporal was away, its workflow not started yet (the worker's sweep would): started
          // with the cancel in its first task, so that it ends before anything is escrowed or claimed.
          return client.workflow.startUpdateWithStart(cancelUpdate, {
            args,
            updateId: 'cancel',
            waitForStage,
            startWorkflowOperation: new WithStartWorkflowOperation(jobWorkflow, startOptions(recorded)),
          });
        }
      }, deps.cancelAnswerMs ?? CANCEL_ANSWER_MS, `${jobId}/cancel`);
      if (receipt !== LATE) return receipt;
      const view = await limited(() => handle(jobId).query(jobStatusQuery), CANCEL_QUERY_MS).catch(() => undefined);
      return { refundIssued: view?.escrow === 'held' || view?.escrow === 'refunded', txRef: '' };
    });
  }

  // Each heartbeat is a write to the workflow's state on the Temporal server. Like the SDK's own heartbeat
  // throttling, at most one per watch per tenth of its timeout is sent: a chatty node (a report per second,
  // every heartbeat) costs Temporal no more than that, and a silent node is still noticed on time.
  // A watch starts after its attempt's assignment, so the assignment counts as its first heartbeat: the same
  // tenth of the timeout passes before a sign of life is passed on. A job shorter than that costs no heartbeat.
  const aliveThrottle = keyedThrottle(Math.max(1, Math.floor(deps.options.heartbeatTimeoutMs / 10)));

  /**
   * Tells the watch over the job's current attempt that its node is alive. Misses are harmless: the
   * watch may not have started yet or may have ended.
   * @param assignedAt when the attempt was assigned (the jobs row's assigned_at), if known
   * @param deadlineMs how long the call may take (retries included) before it is given up
   */
  async function nodeAlive(jobId: string, attempt: number, details: Record<string, unknown>, assignedAt?: Date | null, deadlineMs?: number): Promise<void> {
    const key = `${jobId}/${attempt}`;
    const now = Date.now();
    if (!aliveThrottle.pass(key, now, assignedAt?.getTime())) return;
    try {
      const send = () => client.activity.heartbeat({ workflowId: jobId, activityId: watchActivityId(attempt) }, details);
      await (deadlineMs === undefined ? send() : client.connection.withDeadline(now + deadlineMs, send));
    } catch (err) {
      // Not told: the next sign of life tries again.
      aliveThrottle.undo(key, now);
      if (err instanceof ActivityNotFoundError || err instanceof ActivityCancelledError) return;
      throw err;
    }
  }

  return { start, nodesChanged, walletRegistered, progress, accepted, complete, fail, cancel, nodeAlive };
}

export type JobWorkflowGateway = ReturnType<typeof createJobWorkflowGateway>;

/** gRPC status INVALID_ARGUMENT: Temporal refused the request itself (for example a payload over its limit). */
const GRPC_INVALID_ARGUMENT = 3;

async function update<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    throw translate(err);
  }
}

/** Temporal errors → domain errors. */
function translate(err: unknown): Error {
  if (err instanceof WorkflowUpdateFailedError) {
    const cause = err.cause;
    if (cause instanceof ApplicationFailure) {
      if (cause.type === JobRejections.notHolder) return new ForbiddenError(cause.message);
      if (cause.type === JobRejections.finished) return new ConflictError(cause.message);
    }
    return new ConflictError(cause?.message ?? err.message);
  }
  if (err instanceof WorkflowNotFoundError) return new ConflictError(`the job's workflow is not running: ${err.message}`);
  // Started with an update, a workflow that ran already (closed since) is not run again.
  if (err instanceof WorkflowExecutionAlreadyStartedError) return new ConflictError(`the job's workflow is not running: it ran already (${err.message})`);
  // Temporal refused the start itself (a payload over its size limit, say): the client wraps the gRPC error.
  const grpcError = isGrpcServiceError(err) ? err : err instanceof ServiceError && isGrpcServiceError(err.cause) ? err.cause : undefined;
  if (grpcError?.code === GRPC_INVALID_ARGUMENT) {
    const why = grpcError.details || grpcError.message;
    // The cluster, not the job: its namespace lacks the job search attributes (no worker has registered them).
    // Registered by every worker at its start: the job is started once one has run (the sweep).
    if (/search attribute/i.test(why)) return new TemporalAwayError(`Temporal refused the job's search attributes (are they registered in the namespace?): ${why}`);
    return new ValidationError('config', why);
  }
  return temporalUnavailable(err) ?? (err as Error);
}

function summary(spec: JobSpec, decimals: number): string {
  const mem = spec.estimatedMemory > 0 ? ` ≥${(spec.estimatedMemory / 2 ** 30).toFixed(1)} GiB` : '';
  return `${spec.jobType} · ${spec.requiredDevice}${mem} · ${unitsToTokenString(BigInt(spec.paymentUnits), decimals)} CYXWIZ · ${spec.epochs} epochs`.slice(0, 200);
}

function staticDetails(spec: JobSpec, decimals: number): string {
  return [
    `**Job** \`${spec.jobId}\` (${spec.jobType}, priority ${spec.priority})`,
    `**Needs** ${spec.requiredDevice} device, ${spec.estimatedMemory} bytes, ~${spec.estimatedDuration} s`,
    `**Dataset** ${spec.datasetUri}`,
    `**Batch** ${spec.batchSize} × ${spec.epochs} epochs`,
    `**Escrow** ${unitsToTokenString(BigInt(spec.paymentUnits), decimals)} CYXWIZ (${spec.paymentUnits} units) from ${spec.paymentAddress || 'the server payer'}`,
  ].join('\n\n');
}
