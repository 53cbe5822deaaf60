import { WorkflowNotFoundError, type Client as TemporalClient } from '@temporalio/client';
import { and, desc, eq, inArray, lt, notInArray } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Db } from '../db/client';
import * as jobsRepo from '../db/jobs-repo';
import { releaseClaims } from '../db/node-cache';
import * as reservationsRepo from '../db/reservations-repo';
import { jobEvents, jobs, payments, reservations } from '../db/schema';
import type { JobWorkflowGateway } from './job-workflows';

export interface OrphanSweepDeps {
  db: Db;
  client: TemporalClient;
  gateway: Pick<JobWorkflowGateway, 'start'>;
  log: Logger;
  /** Rows younger than this are left to the request that is still creating them. */
  olderThanMs: number;
  now?: () => number;
}

/** How far back the sweep looks for job workflows closed outside the server. */
const ABANDONED_LOOKBACK_MS = 24 * 3600_000;

/** Why a reservation released by the sweep ended, as its row and GetReservation show it. */
export const NEVER_STARTED_REASON = 'never started: the server stopped before its workflow began; nothing was escrowed';

/**
 * Finds what an API process left half-done when it stopped between writing a row and starting its workflow
 * (a crash, Temporal unreachable), and jobs whose workflow was closed outside the server, and finishes them:
 * - a job still pending is started (starting is idempotent: workflow id = job id);
 * - a reservation still pending with no workflow gives its node back and fails with {@link NEVER_STARTED_REASON}.
 *   Nothing was escrowed for it. One with a workflow is left alone: its workflow owns it, even while its
 *   escrow is pending;
 * - a job or reservation whose workflow was terminated, timed out or failed is failed, naming why (see
 *   endAbandoned).
 */
export function createOrphanSweep(deps: OrphanSweepDeps) {
  const { db, log } = deps;
  const now = deps.now ?? Date.now;

  async function startRecordedJobs(before: Date): Promise<void> {
    const rows = await db
      .select({ config: jobs.config })
      .from(jobs)
      .where(and(eq(jobs.status, 'pending'), lt(jobs.createdAt, before)))
      .orderBy(jobs.createdAt)
      .limit(500);
    for (const { config: spec } of rows) {
      await deps.gateway.start(spec).catch((err) => log.warn({ jobId: spec.jobId, err: String(err) }, 'could not start recorded job'));
    }
  }

  async function releaseOrphanedHolds(before: Date): Promise<void> {
    const stale = await db
      .select({ id: reservations.id, nodeId: reservations.nodeId })
      .from(reservations)
      .where(and(eq(reservations.status, 'pending'), lt(reservations.createdAt, before)))
      .limit(100);
    for (const r of stale) {
      try {
        await deps.client.workflow.getHandle(r.id).describe();
        continue;
      } catch (err) {
        if (!(err instanceof WorkflowNotFoundError)) continue; // Temporal unreachable: look again next time
      }
      await db.transaction(async (tx) => {
        await reservationsRepo.updateReservation(tx, r.id, { status: 'failed', endReason: NEVER_STARTED_REASON, endedAt: new Date(now()) });
        await reservationsRepo.releaseHold(tx, r.id, r.nodeId);
      });
      log.warn({ reservationId: r.id, nodeId: r.nodeId }, 'released the node of a reservation that never started');
    }
  }

  /**
   * A job or reservation workflow closed by something other than its own code (an operator's terminate in the
   * Web UI, a run timeout, a workflow bug) leaves its row unfinished: a queued job would hold back every job
   * behind it for good, an assigned one its node's capacity, a reservation its whole node. Such a row is failed
   * here, naming why, and its claims or its node's hold go back. Its escrow is not touched (whether money moved
   * is the dead workflow's to know): the reason says so.
   */
  async function endAbandoned(): Promise<void> {
    const since = new Date(now() - ABANDONED_LOOKBACK_MS).toISOString();
    const closed = { jobWorkflow: new Set<string>(), reservationWorkflow: new Set<string>() };
    const query =
      `(WorkflowType = 'jobWorkflow' OR WorkflowType = 'reservationWorkflow') AND CloseTime > '${since}' AND ` +
      `(ExecutionStatus = 'Terminated' OR ExecutionStatus = 'TimedOut' OR ExecutionStatus = 'Failed')`;
    for await (const wf of deps.client.workflow.list({ query, pageSize: 500 })) {
      closed[wf.type as keyof typeof closed]?.add(wf.workflowId);
    }
    const jobIds = [...closed.jobWorkflow];
    for (let i = 0; i < jobIds.length; i += 500) await endAbandonedJobs(jobIds.slice(i, i + 500));
    const reservationIds = [...closed.reservationWorkflow];
    for (let i = 0; i < reservationIds.length; i += 500) await endAbandonedReservations(reservationIds.slice(i, i + 500));
  }

  /** How the latest run of a workflow ended, when it is closed outside the server (not after a Reset: then it runs). */
  async function closedOutside(id: string): Promise<string | undefined> {
    const latest = await deps.client.workflow.getHandle(id).describe().catch(() => undefined);
    if (!latest || !['TERMINATED', 'TIMED_OUT', 'FAILED'].includes(latest.status.name)) return undefined;
    return latest.status.name.toLowerCase().replace('_', ' ');
  }

  const abandonedReason = (how: string, escrowAt: string) =>
    `its workflow was ${how} outside the server; any escrow it held is still in its escrow account ` +
    `(see its payments in ${escrowAt}) for an operator to settle`;

  async function endAbandonedJobs(ids: string[]): Promise<void> {
    const open = await db
      .select({ id: jobs.id, status: jobs.status, eventSeq: jobs.eventSeq, attempts: jobs.attempts, nodeId: jobs.assignedNodeId })
      .from(jobs)
      .where(and(inArray(jobs.id, ids), notInArray(jobs.status, ['completed', 'failed', 'cancelled'])));
    for (const job of open) {
      const how = await closedOutside(job.id);
      if (!how) continue;
      const reason = abandonedReason(how, `GET /api/jobs/${job.id}`);
      await jobsRepo.recordTransition(db, {
        jobId: job.id, seq: job.eventSeq + 1, from: job.status, to: 'failed', reason, actor: 'sweep', attempt: job.attempts,
        assignedNodeId: null, error: { code: 500, message: reason }, ended: true, cancelOnNode: job.nodeId ?? undefined,
      });
      await releaseClaims(db, job.id);
      log.warn({ jobId: job.id, workflow: how }, 'failed a job whose workflow was closed outside the server');
    }
    await noteUnrefundedEnds(ids);
  }

  /**
   * A job that ended unpaid is recorded ended before its refund (job-workflow-v4): if its workflow was closed
   * outside the server meanwhile, the row looks finished while its escrow is still held. Such a job gets one more
   * event saying so, for an operator to settle (once: not again while that is its latest event).
   */
  async function noteUnrefundedEnds(ids: string[]): Promise<void> {
    const ended = await db
      .select({ id: jobs.id, status: jobs.status, eventSeq: jobs.eventSeq, attempts: jobs.attempts })
      .from(jobs)
      .where(and(inArray(jobs.id, ids), inArray(jobs.status, ['failed', 'cancelled'])));
    for (const job of ended) {
      const legs = await db.select({ leg: payments.leg, state: payments.state, lastError: payments.lastError }).from(payments).where(eq(payments.jobId, job.id));
      const held = legs.some((l) => l.leg === 'escrow' && l.state === 'confirmed') && !legs.some((l) => l.leg !== 'escrow' && l.state === 'confirmed');
      if (!held) continue;
      // A refund sent may still land (the reconciliation finishes it): said so, not that none was made.
      const onItsWay = legs.some((l) => l.leg === 'refund' && l.state === 'sent');
      // A refund recorded and not sent is paid by the reconciliation (settleQuietRefunds), unless it failed for good.
      const recorded = legs.some((l) => l.leg === 'refund' && (l.state === 'pending' || (l.state === 'failed' && l.lastError?.startsWith('the refund waits:'))));
      const [latest] = await db
        .select({ actor: jobEvents.actor })
        .from(jobEvents)
        .where(eq(jobEvents.jobId, job.id))
        .orderBy(desc(jobEvents.seq))
        .limit(1);
      if (latest?.actor === 'sweep') continue;
      const how = await closedOutside(job.id);
      if (!how) continue;
      const refund = onItsWay
        ? 'its refund was sent and may still land (the reconciliation records it if it does, and pays it again if it expires)'
        : recorded
          ? `its refund is recorded, and the reconciliation pays it once its payer's token account can receive (see its payments in GET /api/jobs/${job.id})`
          : `its refund was not decided: the escrow is in its escrow account (see its payments in GET /api/jobs/${job.id}) for an operator to settle`;
      const reason = `${job.status}, and then its workflow ${how === 'failed' ? 'failed' : `was ${how} outside the server`} before its refund landed: ${refund}`;
      await jobsRepo.recordTransition(db, {
        jobId: job.id, seq: job.eventSeq + 1, from: job.status, to: job.status, reason, actor: 'sweep', attempt: job.attempts,
      });
      if (recorded || onItsWay) log.warn({ jobId: job.id, workflow: how }, 'a job whose workflow was closed outside the server before its refund landed: the reconciliation settles it');
      else log.error({ jobId: job.id, workflow: how }, 'a job whose workflow was closed outside the server before its refund still holds its escrow');
    }
  }

  async function endAbandonedReservations(ids: string[]): Promise<void> {
    const open = await db
      .select({ id: reservations.id, nodeId: reservations.nodeId, status: reservations.status, endReason: reservations.endReason })
      .from(reservations)
      .where(and(inArray(reservations.id, ids), inArray(reservations.status, ['pending', 'active', 'completing'])));
    for (const r of open) {
      const how = await closedOutside(r.id);
      if (!how) continue;
      await db.transaction(async (tx) => {
        // Stopped while settling (a settlement the chain refused for good): some pots may be settled already.
        const endReason =
          r.status === 'completing'
            ? `its workflow was ${how} outside the server while settling (${r.endReason ?? 'ended'}); what moved is in its payment legs ` +
              `(GET /api/reservations/${r.id}), an operator settles the rest`
            : abandonedReason(how, `GET /api/reservations/${r.id}`);
        await reservationsRepo.updateReservation(tx, r.id, { status: 'failed', endReason, endedAt: new Date(now()) });
        await reservationsRepo.releaseHold(tx, r.id, r.nodeId);
      });
      log.warn({ reservationId: r.id, nodeId: r.nodeId, workflow: how }, 'failed a reservation whose workflow was closed outside the server');
    }
  }

  /** One pass over all three. */
  let running: Promise<void> | undefined;

  /** One pass; a pass asked for while one runs (Temporal slow or down) joins it instead of piling up beside it. */
  function sweep(): Promise<void> {
    running ??= (async () => {
      const before = new Date(now() - deps.olderThanMs);
      await startRecordedJobs(before);
      await releaseOrphanedHolds(before);
      await endAbandoned();
    })().finally(() => (running = undefined));
    return running;
  }

  return { sweep };
}
