import { and, desc, eq, gt, inArray, isNull, lt, or, sql } from 'drizzle-orm';
import { ConflictError, NotFoundError } from '../domain/errors';
import { hostPort } from '../domain/endpoint';
import { HOLDING_STATUSES } from '../domain/reservation';
import type { Db, DbOrTx } from './client';
import { nodes, payments, reservationJobs, reservations } from './schema';

export type ReservationRow = typeof reservations.$inferSelect;

/** What the reservation's owner can see of the node it holds. */
export interface ReservationWithNode extends ReservationRow {
  nodeEndpoint: string;
  nodeWallet: string;
}

export interface NewHold {
  id: string;
  nodeId: string;
  userWallet: string;
  /** The reserving user (auth on). */
  owner?: string;
  minutes: number;
  pricePerHourUnits: bigint;
  escrowUnits: bigint;
  jobConfig: Record<string, unknown>;
  /** Length of a reserved minute (60,000 ms outside tests and demos). */
  minuteMs: number;
  /** A node is live when its last heartbeat is after this. */
  onlineSince: Date;
  now: Date;
}

/**
 * Takes the whole node for a new reservation (status pending until its escrow is on chain). Under the node's
 * row lock, which job claims take too, so a reservation and a job never both get the node; the partial unique
 * index on live reservations stops two reservations whatever happens.
 * @throws NotFoundError (unknown node), ConflictError (offline, banned, reserved, running jobs).
 */
export async function holdNode(db: Db, h: NewHold): Promise<ReservationRow> {
  try {
    return await db.transaction(async (tx) => {
      const [node] = await tx
        .select({ id: nodes.id, status: nodes.status, lastHeartbeat: nodes.lastHeartbeat, reservedBy: nodes.reservedBy, bannedUntil: nodes.bannedUntil, port: nodes.port })
        .from(nodes)
        .where(eq(nodes.id, h.nodeId))
        .for('update');
      if (!node) throw new NotFoundError('node', h.nodeId);
      if (node.status !== 'online' || node.lastHeartbeat <= h.onlineSince || node.port <= 0) {
        throw new ConflictError(`node ${h.nodeId} is not available: it is offline`);
      }
      if (node.reservedBy) throw new ConflictError(`node ${h.nodeId} is already reserved`);
      if (node.bannedUntil && node.bannedUntil > h.now) {
        throw new ConflictError(`node ${h.nodeId} is not available: banned until ${node.bannedUntil.toISOString()}`);
      }
      const busy = await tx.execute<{ n: number }>(sql`select count(*)::int as n from node_claims where node_id = ${h.nodeId}`);
      const running = busy.rows[0]?.n ?? 0;
      if (running > 0) throw new ConflictError(`node ${h.nodeId} is not available: it is running ${running} job(s)`);
      const [row] = await tx
        .insert(reservations)
        .values({
          id: h.id,
          nodeId: h.nodeId,
          userWallet: h.userWallet,
          owner: h.owner || null,
          status: 'pending',
          durationMinutes: h.minutes,
          pricePerHourUnits: h.pricePerHourUnits,
          escrowUnits: h.escrowUnits,
          jobConfig: h.jobConfig,
          startAt: h.now,
          endAt: new Date(h.now.getTime() + h.minutes * h.minuteMs),
          engineLastHeartbeat: h.now,
        })
        .returning();
      await tx.update(nodes).set({ reservedBy: h.id, updatedAt: h.now }).where(eq(nodes.id, h.nodeId));
      return row;
    });
  } catch (err) {
    const text = `${(err as Error).message} ${String((err as { cause?: Error }).cause?.message ?? '')}`;
    if (/reservations_live_node_idx/.test(text)) throw new ConflictError(`node ${h.nodeId} is already reserved`);
    throw err;
  }
}

/** Gives the node back (the reservation ended, or never started); only the reservation holding it can. */
export async function releaseHold(db: DbOrTx, id: string, nodeId: string, now = new Date()): Promise<void> {
  await db
    .update(nodes)
    .set({ reservedBy: null, updatedAt: now })
    .where(and(eq(nodes.id, nodeId), eq(nodes.reservedBy, id)));
}

export async function getReservation(db: DbOrTx, id: string): Promise<ReservationWithNode | undefined> {
  const [row] = await db
    .select({ r: reservations, ip: nodes.ipAddress, port: nodes.port, wallet: nodes.walletAddress })
    .from(reservations)
    .leftJoin(nodes, eq(nodes.id, reservations.nodeId))
    .where(eq(reservations.id, id));
  return row && withNode(row);
}

const withNode = (row: { r: ReservationRow; ip: string | null; port: number | null; wallet: string | null }): ReservationWithNode => ({
  ...row.r,
  nodeEndpoint: row.ip && row.port ? hostPort(row.ip, row.port) : '',
  nodeWallet: row.wallet ?? '',
});

/**
 * Gives up a reservation that is still pending (its escrow not confirmed): cancelled, its node given back. Its
 * workflow then finds it no longer pending and refunds whatever its escrow brings in (activatePending).
 * @returns false when it is no longer pending (active already, or ended).
 */
export async function abandonPending(db: Db, id: string, reason: string, now = new Date()): Promise<boolean> {
  return db.transaction(async (tx) => {
    const [row] = await tx
      .update(reservations)
      .set({ status: 'cancelled', endReason: reason, updatedAt: now })
      .where(and(eq(reservations.id, id), eq(reservations.status, 'pending')))
      .returning({ nodeId: reservations.nodeId });
    if (!row) return false;
    await releaseHold(tx, id, row.nodeId, now);
    return true;
  });
}

/** Makes a pending reservation active. @returns false when it is no longer pending. */
export async function activatePending(
  db: DbOrTx,
  id: string,
  set: Pick<ReservationRow, 'startAt' | 'endAt' | 'escrowAccount' | 'fundedBy'>,
): Promise<boolean> {
  const rows = await db
    .update(reservations)
    .set({ ...set, status: 'active', updatedAt: new Date() })
    .where(and(eq(reservations.id, id), eq(reservations.status, 'pending')))
    .returning({ id: reservations.id });
  return rows.length > 0;
}

export async function updateReservation(db: DbOrTx, id: string, set: Partial<Omit<ReservationRow, 'id'>>): Promise<void> {
  await db.update(reservations).set({ ...set, updatedAt: new Date() }).where(eq(reservations.id, id));
}

/**
 * Records an extension's new term, unless a later one is recorded already (two extensions finishing together,
 * or a retry, must not write an older end over a newer one).
 */
export async function recordExtension(
  db: DbOrTx,
  id: string,
  e: { extensions: number; durationMinutes: number; escrowUnits: bigint; endAt: Date },
): Promise<void> {
  await db
    .update(reservations)
    .set({ ...e, updatedAt: new Date() })
    .where(and(eq(reservations.id, id), lt(reservations.extensions, e.extensions)));
}

/**
 * Marks that one side (the Engine or the node) reported the reservation's end, in one statement.
 * @returns whether both sides have now reported it (exactly one of two racing reports sees both).
 */
export async function reportEnd(db: DbOrTx, id: string, side: 'engine' | 'node'): Promise<boolean> {
  const [row] = await db
    .update(reservations)
    .set(side === 'engine' ? { engineReportedEnd: true, updatedAt: new Date() } : { nodeReportedEnd: true, updatedAt: new Date() })
    .where(eq(reservations.id, id))
    .returning({ engine: reservations.engineReportedEnd, node: reservations.nodeReportedEnd });
  return !!row && row.engine && row.node;
}

/**
 * Counts a job of the reservation in its jobs_completed, once per job id whoever reports it and however often;
 * a job counted now also ends the training shown on the reservation.
 * @returns the reservation's count after the report, and whether this report added the job.
 */
export async function countJob(
  db: DbOrTx,
  r: { reservationId: string; jobId: string; reportedBy: 'node' | 'engine'; success: boolean },
): Promise<{ jobs: number; counted: boolean }> {
  const result = await db.execute<{ jobs: number | null }>(sql`
    with added as (
      insert into ${reservationJobs} (reservation_id, job_id, reported_by, success)
      values (${r.reservationId}, ${r.jobId}, ${r.reportedBy}, ${r.success})
      on conflict do nothing
      returning job_id
    ), counted as (
      update ${reservations}
         set jobs_completed = jobs_completed + 1, training_active = false, current_job_id = '', updated_at = now()
       where id = ${r.reservationId} and exists (select 1 from added)
      returning jobs_completed
    )
    select (select jobs_completed from counted) as jobs`);
  const jobs = result.rows[0]?.jobs;
  if (jobs !== null && jobs !== undefined) return { jobs, counted: true };
  // Counted before (perhaps by a report racing this one, whose count this statement's snapshot may predate).
  const [row] = await db.select({ jobs: reservations.jobsCompleted }).from(reservations).where(eq(reservations.id, r.reservationId));
  return { jobs: row?.jobs ?? 0, counted: false };
}

/** A wallet's reservations that hold their node and have not reached their end. */
export async function activeForWallet(db: DbOrTx, wallet: string, now: Date): Promise<ReservationWithNode[]> {
  const rows = await db
    .select({ r: reservations, ip: nodes.ipAddress, port: nodes.port, wallet: nodes.walletAddress })
    .from(reservations)
    .leftJoin(nodes, eq(nodes.id, reservations.nodeId))
    .where(and(eq(reservations.userWallet, wallet), inArray(reservations.status, HOLDING_STATUSES), gt(reservations.endAt, now)))
    .orderBy(desc(reservations.createdAt));
  return rows.map(withNode);
}

/** One page of reservations, newest first, with a keyset cursor (created_at, id). */
export async function listReservations(
  db: DbOrTx,
  q: { wallet?: string; activeOnly: boolean; limit: number; after?: { createdAt: Date; id: string }; visibleTo?: string },
): Promise<{ rows: ReservationWithNode[]; total: number }> {
  const filter = and(
    q.wallet ? eq(reservations.userWallet, q.wallet) : undefined,
    // A signed-in user's own, and those made without auth (no owner), as requireOwner lets them act on.
    q.visibleTo !== undefined ? or(isNull(reservations.owner), eq(reservations.owner, q.visibleTo)) : undefined,
    q.activeOnly ? inArray(reservations.status, HOLDING_STATUSES) : undefined,
  );
  const page = and(
    filter,
    q.after
      ? or(lt(reservations.createdAt, q.after.createdAt), and(eq(reservations.createdAt, q.after.createdAt), lt(reservations.id, q.after.id)))
      : undefined,
  );
  const [rows, [{ total }]] = await Promise.all([
    db
      .select({ r: reservations, ip: nodes.ipAddress, port: nodes.port, wallet: nodes.walletAddress })
      .from(reservations)
      .leftJoin(nodes, eq(nodes.id, reservations.nodeId))
      .where(page)
      .orderBy(desc(reservations.createdAt), desc(reservations.id))
      .limit(q.limit),
    db.select({ total: sql<number>`count(*)::int` }).from(reservations).where(filter),
  ]);
  return { rows: rows.map(withNode), total };
}

/**
 * Active reservations on any of these nodes (the heartbeat hub keeps their node watches alive). Reads the few
 * active reservations by the status index and intersects in memory: a batch can hold 100,000 node ids.
 */
export async function liveOnNodes(db: DbOrTx, beating: ReadonlySet<string>): Promise<{ id: string; nodeId: string }[]> {
  const active = await db
    .select({ id: reservations.id, nodeId: reservations.nodeId })
    .from(reservations)
    .where(eq(reservations.status, 'active'));
  return active.filter((r) => beating.has(r.nodeId));
}

/** Reservations owing a node money it can now receive (it registered a wallet). */
export async function owingNode(db: DbOrTx, nodeId: string): Promise<string[]> {
  const result = await db.execute<{ id: string }>(sql`
    select distinct r.id from reservations r
      join payments p on p.job_id = r.id or p.job_id like r.id || '/ext-%'
     where r.node_id = ${nodeId} and p.leg = 'release_node' and p.state = 'owed'`);
  return result.rows.map((r) => r.id);
}

/** Records the Engine's heartbeat. @returns the row after it, or undefined for an unknown id. */
export async function engineHeartbeat(
  db: DbOrTx,
  id: string,
  hb: { at: Date; trainingActive: boolean; progress: number; metrics: Record<string, number>; jobId: string },
  /** With auth on, the caller: a reservation another user owns is left untouched (see requireOwner). */
  caller?: string,
): Promise<ReservationRow | undefined> {
  const [row] = await db
    .update(reservations)
    .set({
      engineLastHeartbeat: hb.at,
      trainingActive: hb.trainingActive,
      jobProgress: hb.progress,
      currentMetrics: hb.metrics,
      ...(hb.jobId && { currentJobId: hb.jobId }),
      updatedAt: hb.at,
    })
    .where(
      and(
        eq(reservations.id, id),
        inArray(reservations.status, HOLDING_STATUSES),
        caller === undefined ? undefined : or(isNull(reservations.owner), eq(reservations.owner, caller)),
      ),
    )
    .returning();
  return row;
}

/** What the reservation's pots pay the node, and whether any of it waits for the node's wallet. */
export async function nodeLegs(db: DbOrTx, id: string): Promise<{ amount: bigint; owed: boolean }> {
  const result = await db.execute<{ amount: string | null; owed: boolean | null }>(sql`
    select sum(amount)::text as amount, bool_or(state = 'owed') as owed from payments
     where (job_id = ${id} or job_id like ${id} || '/ext-%') and leg = 'release_node'`);
  const row = result.rows[0];
  return { amount: BigInt(row?.amount ?? '0'), owed: row?.owed ?? false };
}

/** Every payment leg of the reservation's pots (its first escrow and each extension), oldest first. */
export async function potPayments(db: DbOrTx, id: string) {
  return db
    .select()
    .from(payments)
    .where(or(eq(payments.jobId, id), sql`${payments.jobId} like ${`${id}/ext-%`}`))
    .orderBy(payments.id);
}
