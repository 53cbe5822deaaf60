import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { ValidationError } from '../../domain/errors';
import { StatusCode } from '../../domain/job';
import type {
  GetNodeMetricsRequest,
  HeartbeatRequest,
  JobAcceptedRequest,
  RegisterNodeRequest,
  ReportCompletionRequest,
  ReportJobResultRequest,
  ReportProgressRequest,
  UpdateJobStatusRequest,
} from '../../protocol/types';
import type { NodeService } from '../../services/nodes-service';
import { int64, MAX_METRICS, metricsValue, optionalText, peerIp, progressValue, requireId, toNodeRegistration } from './mappers';
import { walletOrNone } from '../../services/wallet-links';
import type { CallerOf } from './auth';
import { statusAndError, unary } from './unary';

export interface NodeHandlerDeps {
  nodes: NodeService;
  log: Logger;
  /** The verified user behind a call (auth on): only a node's owner registers it again or reports for it. */
  caller?: CallerOf;
  /** The verified user's wallet (its token's wallet_address claim): a node registered without one is paid there. */
  callerWallet?: CallerOf;
}

const DEFAULT_METRICS_WINDOW_S = 3600;
/** The last second of the year 9999: later instants are not dates Postgres (or a client) can hold. */
const MAX_UNIX_S = 253_402_300_799;

/** A unix time in seconds from the wire, 0 when unset. */
function unixSeconds(value: Parameters<typeof int64>[0], field: string): number {
  const s = int64(value, field);
  if (s > MAX_UNIX_S) throw new ValidationError(field, `is after the year 9999 (${s} s)`);
  return s;
}

/** A node's verdict on its job, from a StatusCode it reports. */
function verdict(status: number): 'completed' | 'failed' | 'progress' {
  if (status === StatusCode.SUCCESS || status === StatusCode.COMPLETED) return 'completed';
  if (status === StatusCode.FAILED || status === StatusCode.ERROR || status === StatusCode.CANCELLED) return 'failed';
  return 'progress';
}

/** A StatusCode a node reports; `final` ones must say how the job ended. @throws ValidationError */
function reportedStatus(status: number | undefined, field: string, final = false): number {
  const v = status ?? StatusCode.UNKNOWN;
  if (!Number.isInteger(v) || v < StatusCode.UNKNOWN || v > StatusCode.CANCELLED) throw new ValidationError(field, `has no value ${v}`);
  if (final && verdict(v) === 'progress') throw new ValidationError(field, `must say how the job ended (SUCCESS, COMPLETED, FAILED, ERROR or CANCELLED), got ${v}`);
  return v;
}

/** A node's free-text message (a failure's reason, a log line): bounded, no control characters. */
const nodeMessage = (value: string | undefined, field: string) => optionalText(value, field, 4096);

/** NodeService (as served by the central server) and JobStatusService: what nodes call. */
export function createNodeHandlers(deps: NodeHandlerDeps) {
  const { nodes, log } = deps;
  const caller = deps.caller ?? (() => undefined);
  /** The token's wallet claim when it is a Solana address ('' otherwise: it is the user's, not the node's, to fix). */
  const accountWallet = (call: { metadata: grpc.Metadata }) => walletOrNone(deps.callerWallet?.(call));

  const RegisterNode = unary<RegisterNodeRequest, object>(
    log,
    'RegisterNode',
    async (req, call) => {
      const address = peerIp(call.getPeer());
      const { claimedId, reg } = toNodeRegistration(req.info, address);
      const { nodeId, created } = await nodes.register(claimedId, reg, { caller: caller(call), address, accountWallet: accountWallet(call) });
      log.info({ nodeId, created, endpoint: `${reg.ipAddress}:${reg.port}`, devices: reg.devices.length }, 'node registered');
      return { status: StatusCode.SUCCESS, node_id: nodeId, session_token: `session_${nodeId}` };
    },
    (f) => ({ ...statusAndError(f), node_id: '', session_token: '' }),
  );

  const Heartbeat = unary<HeartbeatRequest, object>(
    log,
    'Heartbeat',
    async (req, call) => {
      const nodeId = requireId(req.node_id, 'node_id');
      const s = req.current_status;
      const ram = s && { ramAvailable: int64(s.ram_available, 'current_status.ram_available'), ramTotal: int64(s.ram_total, 'current_status.ram_total') };
      const jobsToCancel = await nodes.heartbeat(nodeId, ram || undefined, () => ({ owner: caller(call), address: peerIp(call.getPeer()) }));
      return { status: StatusCode.SUCCESS, keep_alive: true, jobs_to_cancel: jobsToCancel };
    },
    // keep_alive stays true: a shipping node treats false as a failed heartbeat and drops its pending jobs.
    (f) => ({ ...statusAndError(f), keep_alive: true, jobs_to_cancel: [] }),
  );

  const NotifyJobAccepted = unary<JobAcceptedRequest, object>(
    log,
    'NotifyJobAccepted',
    async (req) => {
      await nodes.accepted(requireId(req.node_id, 'node_id'), requireId(req.job_id, 'job_id'));
      return { status: StatusCode.SUCCESS, acknowledged: true };
    },
    (f) => ({ ...statusAndError(f), acknowledged: false }),
  );

  async function report(nodeId: string, jobId: string, status: number, progress: number | undefined, epoch: number | undefined, metrics: Record<string, number>, message: string) {
    switch (verdict(status)) {
      case 'completed':
        return { kind: 'completed' as const, ...(await nodes.completed(nodeId, jobId, { finalMetrics: metrics })) };
      case 'failed':
        await nodes.failed(nodeId, jobId, message);
        return { kind: 'failed' as const };
      default:
        await nodes.progress({ nodeId, jobId, progress, epoch, metrics });
        return { kind: 'progress' as const };
    }
  }

  const ReportProgress = unary<ReportProgressRequest, object>(
    log,
    'ReportProgress',
    async (req, call) => {
      const nodeId = requireId(req.node_id, 'node_id');
      const jobId = requireId(req.job_id, 'job_id');
      await nodes.requireNodeOwner(nodeId, caller(call));
      const s = req.status;
      // Both maps of the report, still at most MAX_METRICS names together.
      const merged = { ...metricsValue(s?.metrics, 'status.metrics'), ...metricsValue(req.current_metrics, 'current_metrics') };
      const metrics = Object.fromEntries(Object.entries(merged).slice(0, MAX_METRICS));
      const progress = s ? progressValue(s.progress, 'status.progress') : undefined;
      const epoch = s && s.current_epoch >= 0 ? s.current_epoch : undefined;
      const status = s ? reportedStatus(s.status, 'status.status') : StatusCode.IN_PROGRESS;
      const outcome = await report(nodeId, jobId, status, progress, epoch, metrics, nodeMessage(s?.error?.message, 'status.error.message'));
      return { status: StatusCode.SUCCESS, continue_job: outcome.kind === 'progress' };
    },
    // Stop when the job is not this node's to run (refused, finished, unknown) or the node said it ended; the
    // server's own trouble (STATUS_ERROR: Temporal or Postgres away for a moment) must not make it drop a job.
    (f, req) => ({ ...statusAndError(f), continue_job: f.status === StatusCode.ERROR && verdict(req.status?.status ?? StatusCode.IN_PROGRESS) === 'progress' }),
  );

  const ReportCompletion = unary<ReportCompletionRequest, object>(
    log,
    'ReportCompletion',
    async (req, call) => {
      const nodeId = requireId(req.node_id, 'node_id');
      const jobId = requireId(req.job_id, 'job_id');
      await nodes.requireNodeOwner(nodeId, caller(call));
      const r = req.result;
      // Unset (0) means completed: the call itself is the completion report.
      const resultStatus = r && r.status !== StatusCode.UNKNOWN ? reportedStatus(r.status, 'result.status', true) : StatusCode.SUCCESS;
      if (verdict(resultStatus) === 'failed') {
        await nodes.failed(nodeId, jobId, `node reported status ${resultStatus}`);
        return { status: StatusCode.SUCCESS, payment_released: false, payment_tx_hash: '' };
      }
      const receipt = await nodes.completed(nodeId, jobId, {
        finalMetrics: metricsValue(r?.final_metrics, 'result.final_metrics'),
        modelWeightsUri: optionalText(r?.model_weights_uri, 'result.model_weights_uri'),
        modelWeightsHash: optionalText(r?.model_weights_hash, 'result.model_weights_hash', 256),
      });
      return { status: StatusCode.SUCCESS, payment_released: receipt.paymentReleased, payment_tx_hash: receipt.txRef };
    },
    (f) => ({ ...statusAndError(f), payment_released: false, payment_tx_hash: '' }),
  );

  const GetNodeMetrics = unary<GetNodeMetricsRequest, object>(
    log,
    'GetNodeMetrics',
    async (req) => {
      const nodeId = requireId(req.node_id, 'node_id');
      const nowS = Math.floor(Date.now() / 1000);
      const end = unixSeconds(req.end_time, 'end_time') || nowS;
      const start = unixSeconds(req.start_time, 'start_time') || end - DEFAULT_METRICS_WINDOW_S;
      if (start > end) throw new ValidationError('start_time', 'must not be after end_time');
      const rows = await nodes.metrics(nodeId, new Date(start * 1000), new Date(end * 1000));
      return {
        metrics: rows.map((m) => ({
          timestamp: String(Math.floor(m.at.getTime() / 1000)),
          cpu_usage: m.cpuUsage,
          gpu_usage: m.gpuUsage,
          memory_usage: m.memoryUsage,
          network_throughput: m.networkThroughput,
          power_consumption: m.powerConsumption,
        })),
      };
    },
    (f) => ({ metrics: [], error: f.error }),
  );

  const AssignJob: grpc.handleUnaryCall<unknown, unknown> = (_call, callback) =>
    callback({ code: grpc.status.UNIMPLEMENTED, details: 'AssignJob is served by nodes, not by the central server' });

  const UpdateJobStatus = unary<UpdateJobStatusRequest, object>(
    log,
    'UpdateJobStatus',
    async (req, call) => {
      const nodeId = requireId(req.node_id, 'node_id');
      const jobId = requireId(req.job_id, 'job_id');
      await nodes.requireNodeOwner(nodeId, caller(call));
      const outcome = await report(
        nodeId,
        jobId,
        reportedStatus(req.status, 'status'),
        progressValue(req.progress, 'progress'),
        req.current_epoch >= 0 ? req.current_epoch : undefined,
        metricsValue(req.metrics, 'metrics'),
        nodeMessage(req.log_message, 'log_message'),
      );
      return { status: StatusCode.SUCCESS, should_continue: outcome.kind === 'progress' };
    },
    (f, req) => ({ ...statusAndError(f), should_continue: f.status === StatusCode.ERROR && verdict(req.status ?? StatusCode.IN_PROGRESS) === 'progress' }),
  );

  const ReportJobResult = unary<ReportJobResultRequest, object>(
    log,
    'ReportJobResult',
    async (req, call) => {
      const nodeId = requireId(req.node_id, 'node_id');
      const jobId = requireId(req.job_id, 'job_id');
      await nodes.requireNodeOwner(nodeId, caller(call));
      const metrics = metricsValue(req.final_metrics, 'final_metrics');
      const finalStatus = reportedStatus(req.final_status, 'final_status', true);
      const message = nodeMessage(req.error_message, 'error_message');
      if (verdict(finalStatus) === 'completed') {
        await nodes.completed(nodeId, jobId, {
          finalMetrics: metrics,
          modelWeightsUri: optionalText(req.model_weights_uri, 'model_weights_uri'),
          modelWeightsHash: optionalText(req.model_weights_hash, 'model_weights_hash', 256),
        });
      } else {
        await nodes.failed(nodeId, jobId, message || `node reported status ${finalStatus}`);
      }
      return { status: StatusCode.SUCCESS };
    },
    statusAndError,
  );

  return {
    node: { RegisterNode, Heartbeat, AssignJob, ReportProgress, ReportCompletion, GetNodeMetrics, NotifyJobAccepted },
    jobStatus: { UpdateJobStatus, ReportJobResult },
  };
}
