import { createHash } from 'node:crypto';
import type { Db } from '../db/client';
import * as jobsRepo from '../db/jobs-repo';
import * as nodesRepo from '../db/nodes-repo';
import * as reservationsRepo from '../db/reservations-repo';
import { eq } from 'drizzle-orm';
import { jobEvents, jobs } from '../db/schema';
import { ConflictError, NotFoundError, requireOwner, UnavailableError, ValidationError } from '../domain/errors';
import { isReservedId, isUuid } from '../domain/ids';
import { isTerminal, type JobPhase, type JobSpec } from '../domain/job';
import { hostPort } from '../domain/endpoint';
import type { JobWorkflowGateway } from './job-workflows';
import { signP2PToken } from './p2p-token';
import { TemporalAwayError } from './temporal-errors';
import { requireUsersWallet, type WalletLinks } from './wallet-links';

export interface JobServiceDeps {
  db: Db;
  workflows: JobWorkflowGateway;
  /**
   * Checks a payer's escrow transaction before the job is accepted.
   * @throws ValidationError naming config.escrow_tx_hash
   */
  verifyEscrow(p: { jobId: string; amount: bigint; payer: string; signature: string }): Promise<void>;
  p2p: { secret: string; tokenTtlS: number };
  /** With auth on, a job funded by a payer's own transaction is submitted only by that payer's user (default true). */
  bindWallet?: boolean;
  /** Wallets users linked to themselves: theirs to pay from, like their token's claim. */
  walletLinks?: Pick<WalletLinks, 'isUsersWallet'>;
  now?: () => number;
}

/** Where and how the Engine connects to the node holding its job. */
export interface NodeAssignmentView {
  nodeId: string;
  endpoint: string;
  authToken: string;
  tokenExpiresAt: number;
}

export interface JobStatusView {
  job: jobsRepo.JobRow;
  assignment: NodeAssignmentView | null;
}

/** Stable hash of what was submitted, to tell a retried submission from a conflicting one. */
export function configHash(spec: JobSpec): string {
  const canonical = JSON.stringify(spec, Object.keys(spec).sort());
  const hyper = JSON.stringify(Object.entries(spec.hyperparameters).sort());
  return createHash('sha256').update(canonical).update(hyper).digest('hex');
}

/** Use-cases of the job lifecycle shared by gRPC and REST. */
export function createJobService(deps: JobServiceDeps) {
  const { db, workflows } = deps;
  const now = deps.now ?? Date.now;

  /**
   * Records the job and starts its workflow. Submitting the same job id again with the same config is a
   * no-op that returns the same job; with a different config it is a conflict. With Temporal away the job is
   * recorded all the same and started by the worker's sweep once Temporal is back: `startDeferred` says why.
   * @throws ConflictError; ValidationError (Temporal refused the job itself, and nothing of it is kept).
   */
  async function submit(spec: JobSpec, caller?: string, callerWallet?: string): Promise<{ jobId: string; created: boolean; startDeferred?: string }> {
    if (isReservedId(spec.jobId)) throw new ValidationError('config.job_id', `${spec.jobId} is reserved for the server's own workflows`);
    // A reservation's workflow and ledger entries go by its id: a job taking that id would be neither
    // started nor funded as its own.
    if (isUuid(spec.jobId) && (await reservationsRepo.getReservation(db, spec.jobId))) {
      throw new ConflictError(`config.job_id ${spec.jobId} is the id of a reservation`);
    }
    const hash = configHash(spec);
    // The payer's escrow transaction is checked for a new job only (one round trip saved for the others).
    if (spec.escrowTxHash && !(await jobsRepo.getJob(db, spec.jobId))) {
      if (!spec.paymentAddress) throw new ValidationError('config.payment_address', 'is required with config.escrow_tx_hash (the payer)');
      // The payer's money becomes the job's, and the job its submitter's: with auth on, only the payer's own user
      // may submit it (else whoever saw the transfer on chain could take it over and have their node paid).
      if (caller !== undefined && deps.bindWallet !== false) {
        await requireUsersWallet(deps.walletLinks, { userId: caller, claim: callerWallet, wallet: spec.paymentAddress, field: 'config.payment_address' });
      }
      await deps.verifyEscrow({ jobId: spec.jobId, amount: BigInt(spec.paymentUnits), payer: spec.paymentAddress, signature: spec.escrowTxHash });
    }
    const inserted = await jobsRepo.insertJob(db, { spec, configHash: hash, owner: caller });
    const created = inserted.created;
    if (!inserted.created) {
      requireOwner(inserted.row.owner, caller, `job ${spec.jobId}`);
      if (inserted.row.configHash !== hash) throw new ConflictError(`job_id ${spec.jobId} already exists with a different config`);
      if (inserted.row.deletedAt) throw new ConflictError(`job_id ${spec.jobId} was used by a job that has been deleted`);
    }
    try {
      await workflows.start(inserted.created ? spec : inserted.row.config);
    } catch (err) {
      // Temporal away: the job is recorded, and the worker's sweep starts it once Temporal is back. It is the
      // caller's job all the same (the shipping Engine tracks a job only on SUCCESS with its id, and submitting
      // again, without an id of its own, would run and escrow a second one).
      if (err instanceof TemporalAwayError) return { jobId: spec.jobId, created, startDeferred: err.message };
      // Temporal refused this job for good: keep nothing of it.
      if (created && !(err instanceof UnavailableError)) {
        await db.transaction(async (tx) => {
          await tx.delete(jobEvents).where(eq(jobEvents.jobId, spec.jobId));
          await tx.delete(jobs).where(eq(jobs.id, spec.jobId));
        });
      }
      // Said with its id: a client that let the server choose it could not otherwise tell the job exists, and
      // submitting again would run (and escrow) a second one.
      if (err instanceof UnavailableError) {
        throw new UnavailableError(`${err.message}; job ${spec.jobId} is recorded and starts once the cluster takes it (follow it with GetJobStatus rather than submitting it again)`);
      }
      throw err;
    }
    return { jobId: spec.jobId, created };
  }

  /** @throws NotFoundError */
  async function get(jobId: string): Promise<jobsRepo.JobRow> {
    const job = await jobsRepo.getJob(db, jobId);
    if (!job) throw new NotFoundError('job', jobId);
    return job;
  }

  /**
   * The job and, while a node holds it, how the Engine reaches that node with a fresh P2P token: for its owner
   * only (with auth on; others see the status, as ListJobs shows it, without the way in).
   * @throws NotFoundError
   */
  async function status(jobId: string, caller?: string): Promise<JobStatusView> {
    const job = await get(jobId);
    const othersJob = caller !== undefined && !!job.owner && job.owner !== caller;
    if (othersJob || !job.assignedNodeId || (job.status !== 'assigned' && job.status !== 'running')) {
      return { job, assignment: null };
    }
    const node = await nodesRepo.getNode(db, job.assignedNodeId);
    if (!node) return { job, assignment: null };
    const expiresAt = Math.floor(now() / 1000) + deps.p2p.tokenTtlS;
    const { token } = signP2PToken(deps.p2p.secret, {
      sub: job.submitter || 'cyxwiz-engine',
      jobId: job.id,
      nodeId: node.id,
      expiresAt,
      now: now(),
    });
    return {
      job,
      assignment: { nodeId: node.id, endpoint: hostPort(node.ipAddress, node.port), authToken: token, tokenExpiresAt: expiresAt },
    };
  }

  /**
   * Cancels an unfinished job; resolves once the escrow is refunded, or once the cancel is accepted when the
   * refund takes longer than the Engine waits (JobWorkflowGateway.cancel).
   * @throws NotFoundError; ConflictError when the job has finished.
   */
  async function cancel(jobId: string, reason: string, caller?: string): Promise<{ refundIssued: boolean; txRef: string }> {
    const job = await get(jobId);
    requireOwner(job.owner, caller, `job ${jobId}`);
    if (job.status === 'cancelled') {
      // Ended while its refund may still be on its way: a retry of the cancel that ended it gets that cancel's
      // answer (the same update id); anything else was over already.
      try {
        return await workflows.cancel(jobId, reason);
      } catch (err) {
        if (err instanceof UnavailableError) throw err;
      }
    }
    if (isTerminal(job.status)) throw new ConflictError(`job ${jobId} has already finished (${job.status})`);
    return workflows.cancel(jobId, reason, job.status === 'pending' ? job.config : undefined);
  }

  async function list(q: jobsRepo.JobListQuery) {
    return jobsRepo.listJobs(db, q);
  }

  /**
   * Deletes a finished job from listings (its events and payments stay for audit).
   * @throws NotFoundError; ConflictError while the job is active.
   */
  async function remove(jobId: string, caller?: string): Promise<void> {
    const job = await get(jobId);
    requireOwner(job.owner, caller, `job ${jobId}`);
    if (!isTerminal(job.status)) throw new ConflictError(`job ${jobId} is ${job.status}: cancel it before deleting it`);
    if (!(await jobsRepo.softDeleteFinishedJob(db, jobId))) throw new NotFoundError('job', jobId);
  }

  return {
    submit,
    get,
    status,
    cancel,
    list,
    remove,
    events: (jobId: string) => jobsRepo.getJobEvents(db, jobId),
    lastEvent: (jobId: string) => jobsRepo.lastJobEvent(db, jobId),
  };
}

export type JobService = ReturnType<typeof createJobService>;
export type { JobPhase };
