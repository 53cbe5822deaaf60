import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { NotFoundError, TooManyRequestsError, ValidationError } from '../../domain/errors';
import { isTerminal, JOB_TYPES, LIST_DEPTH, statusCodeToPhases, StatusCode } from '../../domain/job';
import type { JobStatus } from '../../protocol/types';
import type {
  CancelJobRequest,
  DeleteJobRequest,
  GetJobStatusRequest,
  ListJobsRequest,
  SubmitJobRequest,
} from '../../protocol/types';
import type { JobChangeFeed } from '../../services/job-change-feed';
import type { CallerGate } from '../../services/heartbeat-hub';
import type { JobService } from '../../services/jobs-service';
import type { CallerOf } from './auth';
import { sendRefusalMetadata, toProtocolFailure } from './errors';
import { echoId, optionalText, peerIp, requireId, toJobSpec, toJobStatus } from './mappers';
import { statusAndError, summarize, unary } from './unary';

export interface JobHandlerDeps {
  jobs: JobService;
  feed: JobChangeFeed;
  tokenDecimals: number;
  log: Logger;
  /** The verified user behind a call (auth on), who may act only on their own jobs. */
  caller?: CallerOf;
  /** The verified user's wallet (its token's wallet_address claim), for jobs the user pays with their own transfer. */
  callerWallet?: CallerOf;
  /** Whether the caller may submit one more job now (SUBMIT_JOBS_PER_MINUTE); absent = no limit. */
  maySubmitJob?: CallerGate;
}

const DEFAULT_PAGE_SIZE = 100;
const MAX_PAGE_SIZE = 1000;

function decodePageToken(token: string): number {
  if (!token) return 0;
  const text = Buffer.from(token, 'base64url').toString();
  // Only what encodePageToken writes: digits, encoded back to the very same token.
  if (!/^\d{1,15}$/.test(text) || encodePageToken(Number(text)) !== token || Number(text) > LIST_DEPTH) {
    throw new ValidationError('page_token', 'is not a token this server issued');
  }
  return Number(text);
}

const encodePageToken = (offset: number) => Buffer.from(String(offset)).toString('base64url');

/** Open StreamJobUpdates calls one job may have, and one API process in all. */
const MAX_STREAMS_PER_JOB = 100;
const MAX_STREAMS = 10_000;

/** JobService: the Engine's legacy job flow. */
export function createJobHandlers(deps: JobHandlerDeps) {
  const { jobs, log } = deps;
  const caller = deps.caller ?? (() => undefined);

  const SubmitJob = unary<SubmitJobRequest, object>(
    log,
    'SubmitJob',
    async (req, call) => {
      if (deps.maySubmitJob && !deps.maySubmitJob({ owner: caller(call), address: peerIp(call.getPeer()) })) {
        throw new TooManyRequestsError('too many jobs submitted by this caller in the last minute: submit again in a minute');
      }
      const spec = toJobSpec(req.config, deps.tokenDecimals);
      const { jobId, startDeferred } = await jobs.submit(spec, caller(call), deps.callerWallet?.(call));
      if (startDeferred) log.warn({ jobId, why: startDeferred }, 'job recorded while Temporal is away: the worker starts it once Temporal is back');
      return { job_id: jobId, status: StatusCode.SUCCESS, estimated_start_time: String(Math.floor(Date.now() / 1000)) };
    },
    (f) => ({ job_id: '', ...statusAndError(f) }),
  );

  const GetJobStatus = unary<GetJobStatusRequest, object>(
    log,
    'GetJobStatus',
    async (req, call) => {
      const { job, assignment } = await jobs.status(requireId(req.job_id, 'job_id'), caller(call));
      return {
        status: toJobStatus(job),
        node_assignment: assignment && {
          node_id: assignment.nodeId,
          node_endpoint: assignment.endpoint,
          auth_token: assignment.authToken,
          token_expires_at: String(assignment.tokenExpiresAt),
          node_public_key: '',
        },
      };
    },
    // The Engine copies the JobStatus into its job record: an error keeps the job's id there.
    (f, req) => ({ status: { job_id: echoId(req.job_id), status: f.status, error: f.error }, error: f.error }),
  );

  const CancelJob = unary<CancelJobRequest, object>(
    log,
    'CancelJob',
    async (req, call) => {
      const jobId = requireId(req.job_id, 'job_id');
      const reason = optionalText(req.reason, 'reason', 1024);
      const { refundIssued, txRef } = await jobs.cancel(jobId, reason, caller(call));
      // CancelJobResponse has no field for it: the refund's transaction signature travels as metadata.
      if (txRef) {
        const md = new grpc.Metadata();
        md.set('x-cyxwiz-refund-tx', txRef);
        call.sendMetadata(md);
      }
      return { status: StatusCode.SUCCESS, refund_issued: refundIssued };
    },
    (f) => ({ ...statusAndError(f), refund_issued: false }),
  );

  const DeleteJob = unary<DeleteJobRequest, object>(
    log,
    'DeleteJob',
    async (req, call) => {
      try {
        await jobs.remove(requireId(req.job_id, 'job_id'), caller(call));
      } catch (err) {
        // As the original server: deleting a job that is not there (unknown, or deleted by an earlier try whose
        // reply was lost) succeeds, so the Engine drops it from its list.
        if (!(err instanceof NotFoundError)) throw err;
      }
      return { status: StatusCode.SUCCESS };
    },
    statusAndError,
  );

  /** With auth on, a user lists only its own jobs (the Engine asks without user_id, and polls each job it gets). */
  async function listJobs(req: ListJobsRequest, owner: string | undefined) {
    if (req.page_size < 0) throw new ValidationError('page_size', 'must not be negative');
    if (req.filter_type < 0 || req.filter_type >= JOB_TYPES.length) {
      throw new ValidationError('filter_type', `has no value ${req.filter_type}`);
    }
    const phases = statusCodeToPhases(req.filter_status);
    if (phases && phases.length === 0) throw new ValidationError('filter_status', `has no value ${req.filter_status}`);
    const limit = Math.min(req.page_size || DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
    const offset = decodePageToken(req.page_token);
    const { rows, total } = await jobs.list({
      submitter: optionalText(req.user_id, 'user_id', 128) || undefined,
      owner,
      jobType: req.filter_type ? JOB_TYPES[req.filter_type] : undefined,
      phases,
      limit,
      offset,
    });
    const next = offset + rows.length;
    return { jobs: rows.map(toJobStatus), next_page_token: next < total ? encodePageToken(next) : '', total_count: total };
  }

  const ListJobs = unary<ListJobsRequest, object>(
    log,
    'ListJobs',
    async (req, call) => {
      try {
        return await listJobs(req, caller(call));
      } catch (err) {
        sendRefusalMetadata(call as grpc.ServerUnaryCall<unknown, unknown>, err);
        throw err;
      }
    },
    // ListJobsResponse has no error field: a refused request is an empty page.
    () => ({ jobs: [], next_page_token: '', total_count: 0 }),
  );

  // Streams of one job share their reads: a change notification wakes them all in the same tick, and each joins
  // the read already on its way if that read began after the notification the stream answers (10,000 streams on
  // a job cost one read per change, not 10,000; a read begun before the change is never taken for it).
  const reads = new Map<string, { startedAt: number; result: Promise<unknown> }>();
  const sharedRead = <T>(key: string, since: number, read: () => Promise<T>): Promise<T> => {
    const current = reads.get(key);
    if (current && current.startedAt >= since) return current.result as Promise<T>;
    const entry = { startedAt: performance.now(), result: Promise.resolve() as Promise<unknown> };
    entry.result = read().finally(() => {
      if (reads.get(key) === entry) reads.delete(key);
    });
    reads.set(key, entry);
    return entry.result as Promise<T>;
  };
  /** Open streams by job, and in all: bounded, each holding a listener and a call. */
  const streamsByJob = new Map<string, number>();
  let streams = 0;

  /** Pushes the job's status at once, then at every change, and ends when the job ends. */
  const StreamJobUpdates: grpc.handleServerStreamingCall<GetJobStatusRequest, object> = (call) => {
    let last = '';
    let ended = false;
    let reading = Promise.resolve();
    /** A read is queued and not yet begun: the notifications meanwhile are answered by it. */
    let readQueued = false;
    /** The latest event's log line, re-read only when the job's event sequence moves (not on progress). */
    let logged = { seq: -1, line: '' };
    let counted = false;
    // A reader that does not keep up (or never reads) must not make the process keep every update for it: while
    // the stream's buffer is full, only the latest update waits, and goes out once it drains. The last one, with
    // the job's end, always goes.
    let blocked = false;
    let waiting: object | undefined;
    const send = (message: object, final = false) => {
      if (blocked && !final) {
        waiting = message;
        return;
      }
      waiting = undefined;
      if (call.write(message) || final) return;
      blocked = true;
      call.once('drain', () => {
        blocked = false;
        if (waiting && !ended) send(waiting);
      });
    };
    const end = (unsubscribe?: () => void) => {
      if (ended) return;
      ended = true;
      unsubscribe?.();
      if (counted) {
        streams -= 1;
        const left = (streamsByJob.get(jobId) ?? 1) - 1;
        if (left > 0) streamsByJob.set(jobId, left);
        else streamsByJob.delete(jobId);
      }
      call.end();
    };
    let jobId: string;
    try {
      jobId = requireId(call.request.job_id, 'job_id');
      if ((streamsByJob.get(jobId) ?? 0) >= MAX_STREAMS_PER_JOB || streams >= MAX_STREAMS) {
        throw new TooManyRequestsError(`too many open streams (at most ${MAX_STREAMS_PER_JOB} a job, ${MAX_STREAMS} in all): ask GetJobStatus, or stream again later`);
      }
    } catch (err) {
      const { failure } = toProtocolFailure(err);
      call.write({ job_id: call.request.job_id ?? '', status: { job_id: '', status: failure.status, error: failure.error }, log_message: failure.error.message });
      return end();
    }
    /** When the latest notification this stream answers came: its read must begin after it. */
    let askedAt = 0;
    const push = () => {
      askedAt = performance.now();
      if (readQueued) return;
      readQueued = true;
      reading = reading.then(async () => {
        readQueued = false;
        if (ended) return;
        try {
          const job = await sharedRead(`job ${jobId}`, askedAt, () => jobs.get(jobId));
          const status: JobStatus = toJobStatus(job);
          const key = JSON.stringify([status.status, status.progress, status.current_node_id, status.current_epoch, status.metrics, job.eventSeq]);
          if (key !== last) {
            last = key;
            if (logged.seq !== job.eventSeq) {
              const latest = await sharedRead(`event ${jobId} ${job.eventSeq}`, 0, () => jobs.lastEvent(jobId));
              logged = { seq: job.eventSeq, line: latest ? `${latest.toStatus}: ${latest.reason}` : '' };
            }
            send({ job_id: jobId, status, live_metrics: job.metrics, log_message: logged.line }, isTerminal(job.status));
          }
          if (isTerminal(job.status)) end(unsubscribe);
        } catch (err) {
          const { failure, unexpected } = toProtocolFailure(err);
          if (unexpected) log.error({ err: summarize(err), jobId }, 'StreamJobUpdates failed');
          send({ job_id: jobId, status: { job_id: jobId, status: failure.status, error: failure.error }, log_message: failure.error.message }, true);
          end(unsubscribe);
        }
      });
    };
    counted = true;
    streams += 1;
    streamsByJob.set(jobId, (streamsByJob.get(jobId) ?? 0) + 1);
    const unsubscribe = deps.feed.subscribe(jobId, push);
    call.on('cancelled', () => end(unsubscribe));
    call.on('close', () => end(unsubscribe));
    push();
  };

  return { SubmitJob, GetJobStatus, CancelJob, StreamJobUpdates, ListJobs, DeleteJob };
}
