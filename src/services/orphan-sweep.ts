import { WorkflowNotFoundError, type Client as TemporalClient } from '@temporalio/client';
import { and, eq, lt } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Db } from '../db/client';
import * as reservationsRepo from '../db/reservations-repo';
import { jobs, reservations } from '../db/schema';
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

/** Why a reservation released by the sweep ended, as its row and GetReservation show it. */
export const NEVER_STARTED_REASON = 'never started: the server stopped before its workflow began; nothing was escrowed';

/**
 * Finds what an API process left half-done when it stopped between writing a row and starting its workflow
 * (a crash, Temporal unreachable), and finishes it:
 * - a job still pending is started (starting is idempotent: workflow id = job id);
 * - a reservation still pending with no workflow gives its node back and fails with {@link NEVER_STARTED_REASON}.
 *   Nothing was escrowed for it. One with a workflow is left alone: its workflow owns it, even while its
 *   escrow is pending.
 */
export function createOrphanSweep(deps: OrphanSweepDeps) {
  const { db, log } = deps;
  const now = deps.now ?? Date.now;

  async function startRecordedJobs(before: Date): Promise<void> {
    const rows = await db
      .select({ config: jobs.config })
      .from(jobs)
      .where(and(eq(jobs.status, 'pending'), lt(jobs.createdAt, before)))
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

  /** One pass over both. */
  async function sweep(): Promise<void> {
    const before = new Date(now() - deps.olderThanMs);
    await startRecordedJobs(before);
    await releaseOrphanedHolds(before);
  }

  return { sweep };
}
