import { and, asc, count, desc, eq, getTableColumns, inArray, isNull, or, sql } from 'drizzle-orm';
import { LIST_DEPTH, type JobPhase, type JobSpec } from '../domain/job';
import type { DbOrTx } from './client';
import { preparedStatement } from './prepared';
import { jobEvents, jobs, nodeClaims, payments } from './schema';

export type JobRow = typeof jobs.$inferSelect;
export type JobEventRow = typeof jobEvents.$inferSelect;

/** Postgres NOTIFY channel carrying the id of a job whose row changed (read by StreamJobUpdates). */
export const JOB_CHANGES_CHANNEL = 'job_changes';

export interface NewJob {
  spec: JobSpec;
  configHash: string;
  /** The submitting user (AUTH_JWT_SECRET set). */
  owner?: string;
}

/** Queue order of a priority: CRITICAL 0 … LOW 3. */
export function priorityRank(priority: JobSpec['priority']): number {
  return { CRITICAL: 0, HIGH: 1, NORMAL: 2, LOW: 3 }[priority];
}

/**
 * Inserts a job with its first event ('submitted', seq 0) unless one with its id exists, in one statement.
 * @returns whether this call created it; when it did not, the stored row.
 */
export async function insertJob(db: DbOrTx, job: NewJob): Promise<{ created: true } | { created: false; row: JobRow }> {
  const { spec } = job;
  const row = db
    .insert(jobs)
    .values({
      id: spec.jobId,
      status: 'pending',
      jobType: spec.jobType,
      priority: spec.priority,
      priorityRank: priorityRank(spec.priority),
      requiredDevice: spec.requiredDevice,
      estimatedMemory: spec.estimatedMemory,
      config: spec,
      configHash: job.configHash,
      submitter: spec.paymentAddress,
      owner: job.owner || null, // a token without sub owns nothing
      paymentUnits: BigInt(spec.paymentUnits),
    })
    .onConflictDoNothing({ target: jobs.id })
    .returning({ id: jobs.id });
  // (Drizzle wraps each embedded query in parentheses.)
  const result = await db.execute<{ created: boolean }>(sql`with j as ${row},
    e as (insert into ${jobEvents} (job_id, seq, from_status, to_status, reason, actor) select id, 0, null, 'pending', 'submitted', 'client' from j)
    select exists (select 1 from j) as created`);
  if (result.rows[0]?.created) return { created: true };
  const [existing] = await db.select().from(jobs).where(eq(jobs.id, spec.jobId));
  return { created: false, row: existing };
}

// The API reads a job on every report and every change it streams.
const jobById = preparedStatement((db) =>
  db
    .select()
    .from(jobs)
    .where(and(eq(jobs.id, sql.placeholder('id')), isNull(jobs.deletedAt)))
    .prepare('jobs_get'),
);
const eventsOfJob = preparedStatement((db) =>
  db.select().from(jobEvents).where(eq(jobEvents.jobId, sql.placeholder('id'))).orderBy(asc(jobEvents.seq)).prepare('job_events_get'),
);

/** A job that has not been deleted. */
export async function getJob(db: DbOrTx, id: string): Promise<JobRow | undefined> {
  const [row] = await jobById(db).execute({ id });
  return row;
}

export async function getJobEvents(db: DbOrTx, id: string): Promise<JobEventRow[]> {
  return eventsOfJob(db).execute({ id });
}

const lastEventOfJob = preparedStatement((db) =>
  db.select().from(jobEvents).where(eq(jobEvents.jobId, sql.placeholder('id'))).orderBy(desc(jobEvents.seq)).limit(1).prepare('job_events_last'),
);

/** The job's latest event (what StreamJobUpdates logs with each change). */
export async function lastJobEvent(db: DbOrTx, id: string): Promise<JobEventRow | undefined> {
  const [row] = await lastEventOfJob(db).execute({ id });
  return row;
}

export interface Transition {
  jobId: string;
  /** Per-job sequence number chosen by the workflow; a retried transition with the same seq is a no-op. */
  seq: number;
  from: JobPhase | null;
  to: JobPhase;
  reason: string;
  actor: string;
  nodeId?: string | null;
  attempt: number;
  data?: Record<string, unknown>;
  /** Row fields that change with this transition. */
  assignedNodeId?: string | null;
  attempts?: number;
  error?: { code: number; message: string } | null;
  started?: boolean;
  ended?: boolean;
  /** Tell this node to stop the job at its next heartbeat. */
  cancelOnNode?: string;
  /** This node failed or lost the job: never match it again. */
  excludeNode?: string;
}

/** A job event's reason is at most this long (what a node said is quoted in it). */
const MAX_REASON_CHARS = 4000;
/** Text Postgres stores: without NUL characters. */
const storable = (text: string) => text.replace(/\u0000/g, '');

/**
 * Appends a job event and applies the state change to the job row, atomically and exactly once per seq, in one
 * statement (one round trip): the row changes only when the event row was inserted by this call, and only
 * forward (a record that lands after a later one, from an activity attempt that went on after it was given up,
 * stays in the history but does not set the row back).
 * @returns whether this call applied it (false: an earlier try already did, or a later record is in).
 */
export async function recordTransition(db: DbOrTx, given: Transition): Promise<boolean> {
  // Reasons quote what nodes say (a refusal, a gRPC status message): Postgres text takes no NUL, and one in a
  // reason must not fail the job's bookkeeping for good. Bounded too.
  const t = { ...given, reason: storable(given.reason).slice(0, MAX_REASON_CHARS) };
  const data = JSON.stringify(t.data ?? {}, (_key, value: unknown) => (typeof value === 'string' ? storable(value) : value));
  const now = new Date();
  // Hand-written rather than built from query builders: three of these run per job, and building the
  // statement cost more CPU than running it.
  const sets = [sql`status = ${t.to}`, sql`event_seq = ${t.seq}`, sql`updated_at = ${now}`];
  if (t.assignedNodeId !== undefined) sets.push(sql`assigned_node_id = ${t.assignedNodeId}`);
  if (t.attempts !== undefined) sets.push(sql`attempts = ${t.attempts}`);
  if (t.error !== undefined) sets.push(sql`error_code = ${t.error?.code ?? null}`, sql`error_message = ${t.error?.message ?? null}`);
  if (t.started) sets.push(sql`started_at = ${now}`);
  if (t.ended) sets.push(sql`ended_at = ${now}`);
  if (t.to === 'completed') sets.push(sql`progress = 1`);
  // A new node starts the job from scratch: no progress of the previous one shows, from the moment the job
  // goes back to the queue (a lost node's late report, stored while its attempt was being given up, included).
  if (t.to === 'queued') sets.push(sql`progress = 0`, sql`current_epoch = 0`, sql`metrics = '{}'::jsonb`);
  if (t.to === 'assigned') {
    sets.push(
      sql`assigned_at = ${now}`,
      sql`progress = 0`,
      sql`current_epoch = 0`,
      sql`metrics = '{}'::jsonb`,
      sql`waiting_since = null`,
      sql`refused_nodes = '{}'::text[]`,
    );
  }
  if (t.excludeNode) sets.push(sql`excluded_nodes = array_append(excluded_nodes, ${t.excludeNode}::text)`);
  // Data-modifying CTEs all run, from one snapshot, whether or not the outer query reads them.
  // An ended job holds no capacity, whatever claim a stray late match may have left (claim_node refuses it
  // after this).
  const unclaim = t.ended ? sql`, d as (delete from node_claims where job_id = (select job_id from e))` : sql``;
  const cancel = t.cancelOnNode
    ? sql`, c as (insert into node_job_cancels (node_id, job_id, reason) select ${t.cancelOnNode}::text, job_id, ${t.reason}::text from e on conflict do nothing)`
    : t.to === 'assigned' && t.assignedNodeId
      ? // Assigned to a node told earlier to stop it (an offer whose outcome was unknown): the order is void.
        sql`, c as (delete from node_job_cancels where node_id = ${t.assignedNodeId}::text and job_id = (select job_id from e) and exists (select 1 from u))`
      : sql``;
  const result = await db.execute<{ id: string }>(sql`
    with e as (
      insert into job_events (job_id, seq, from_status, to_status, reason, actor, node_id, attempt, data)
      values (${t.jobId}, ${t.seq}, ${t.from}, ${t.to}, ${t.reason}, ${t.actor}, ${t.nodeId ?? null}, ${t.attempt}, ${data}::jsonb)
      on conflict do nothing returning job_id
    ), u as (
      update jobs set ${sql.join(sets, sql`, `)} where id = (select job_id from e) and event_seq < ${t.seq} returning id
    )${cancel}${unclaim}
    select id, pg_notify(${JOB_CHANGES_CHANNEL}, id) from u`);
  return result.rows.length > 0;
}

/** Metric names a job keeps from its node's reports (one report carries at most 100). */
export const JOB_METRICS_KEPT = 200;

export interface ProgressUpdate {
  progress?: number;
  epoch?: number;
  metrics?: Record<string, number>;
}

/**
 * Stores a node's progress report, only while that node holds the job and the job is active.
 * @returns the job's attempt, or undefined when the node does not hold the job (the report is stale and must be
 * rejected).
 */
export async function updateProgress(
  db: DbOrTx,
  jobId: string,
  nodeId: string,
  p: ProgressUpdate,
): Promise<{ id: string; attempts: number; assignedAt: Date | null } | undefined> {
  const sets = [sql`updated_at = ${new Date()}`];
  if (p.progress !== undefined) sets.push(sql`progress = ${p.progress}`);
  if (p.epoch !== undefined) sets.push(sql`current_epoch = ${p.epoch}`);
  if (p.metrics !== undefined) {
    // Reports merge into the job's metrics, up to JOB_METRICS_KEPT names: past that the latest report's replace
    // them, so a node inventing names at every report cannot grow the replies that carry them without end.
    const reported = JSON.stringify(p.metrics);
    sets.push(sql`metrics = case when (select count(*) from jsonb_object_keys(metrics || ${reported}::jsonb)) <= ${JOB_METRICS_KEPT}
                                 then metrics || ${reported}::jsonb else ${reported}::jsonb end`);
  }
  // The update and its notification in one statement (one round trip per report).
  const result = await db.execute<{ id: string; attempts: number; assigned_at: string | Date | null }>(sql`
    with u as (
      update jobs set ${sql.join(sets, sql`, `)}
       where id = ${jobId} and assigned_node_id = ${nodeId} and status in ('assigned', 'running')
      returning id, attempts, assigned_at
    )
    select id, attempts, assigned_at, pg_notify(${JOB_CHANGES_CHANNEL}, id) from u`);
  const [row] = result.rows;
  return row && { id: row.id, attempts: row.attempts, assignedAt: row.assigned_at === null ? null : new Date(row.assigned_at) };
}

export interface JobListQuery {
  submitter?: string;
  /** Only the jobs of this user (the verified token's `sub`, with auth on). */
  owner?: string;
  jobType?: string;
  phases?: JobPhase[];
  limit: number;
  offset: number;
}

/** A job as lists show it: without its config (up to 1.5 MiB each; a page of a thousand would read gigabytes). */
export type ListedJob = Omit<JobRow, 'config'>;
const { config: _config, ...listedColumns } = getTableColumns(jobs);

/** Newest first. `total` counts at most LIST_DEPTH. */
export async function listJobs(db: DbOrTx, q: JobListQuery): Promise<{ rows: ListedJob[]; total: number }> {
  const where = and(
    isNull(jobs.deletedAt),
    q.submitter ? eq(jobs.submitter, q.submitter) : undefined,
    q.owner !== undefined ? eq(jobs.owner, q.owner) : undefined,
    q.jobType ? eq(jobs.jobType, q.jobType) : undefined,
    q.phases ? inArray(jobs.status, q.phases) : undefined,
  );
  const [rows, [{ total }]] = await Promise.all([
    db.select(listedColumns).from(jobs).where(where).orderBy(desc(jobs.createdAt), desc(jobs.id)).limit(q.limit).offset(q.offset),
    db.select({ total: count() }).from(db.select({ one: sql`1`.as('one') }).from(jobs).where(where).limit(LIST_DEPTH).as('counted')),
  ]);
  return { rows, total };
}

/** Hides a finished job from every read. @returns false when the job is not finished (or not found). */
export async function softDeleteFinishedJob(db: DbOrTx, id: string): Promise<boolean> {
  const updated = await db
    .update(jobs)
    .set({ deletedAt: new Date() })
    .where(and(eq(jobs.id, id), isNull(jobs.deletedAt), inArray(jobs.status, ['completed', 'failed', 'cancelled'])))
    .returning({ id: jobs.id });
  return updated.length > 0;
}

/**
 * Jobs currently held by any of these nodes. The ids go as one array parameter: a heartbeat batch can hold 100,000
 * nodes, past the 65,535 parameters a statement may have.
 */
export async function activeJobsOnNodes(
  db: DbOrTx,
  nodeIds: string[],
): Promise<{ id: string; nodeId: string; attempts: number; assignedAt: Date | null }[]> {
  if (nodeIds.length === 0) return [];
  const rows = await db
    .select({ id: jobs.id, nodeId: jobs.assignedNodeId, attempts: jobs.attempts, assignedAt: jobs.assignedAt })
    .from(jobs)
    .where(and(sql`${jobs.assignedNodeId} = any(${sql.param(nodeIds)}::text[])`, inArray(jobs.status, ['assigned', 'running'])));
  return rows.map((r) => ({ id: r.id, nodeId: r.nodeId as string, attempts: r.attempts, assignedAt: r.assignedAt }));
}

/**
 * Waiting jobs (queued, or pending after a match found none: job_is_waiting; none that holds a claim, being
 * offered a node right now) that could run on one of these nodes (job_wants_node: not excluded, the memory for
 * their device, a price their escrow covers), most urgent first: the ones to wake when the nodes register, come
 * back or give capacity back. As many as could fill the nodes twice over (at least 8 a node: the first takes it,
 * and a woken job that cannot is passed), at most 500. Waking only these keeps a long queue's workflows from a
 * signal for every node that frees up anywhere.
 */
export async function waitingJobsFor(db: DbOrTx, nodeIds: readonly string[], decimals: number): Promise<string[]> {
  if (nodeIds.length === 0) return [];
  // Read no more than the most these nodes could want (2 × 64 GPUs a node): `wanted` trims it to their own.
  const rows = await waitingFor(db).execute({ nodeIds: [...nodeIds], decimals, limit: Math.min(500, 128 * nodeIds.length) });
  const wanted = rows.length > 0 ? Number(rows[0].wanted) : 0;
  return rows.slice(0, wanted).map((r) => r.id);
}

// Asked each time a job gives back node capacity: prepared.
const waitingFor = preparedStatement((db) =>
  db
    .select({
      id: jobs.id,
      // How many to wake (the same on every row: computed once).
      wanted: sql<number>`(select least(500, coalesce(sum(greatest(8, 2 * n.capacity)), 0)) from nodes n
                            where n.id = any(${sql.placeholder('nodeIds')}::text[]))`,
    })
    .from(jobs)
    .where(
      sql`job_is_waiting(${jobs}) and exists (
        select 1 from nodes n
         where n.id = any(${sql.placeholder('nodeIds')}::text[]) and n.port > 0
           and job_wants_node(${jobs}, n, ${sql.placeholder('decimals')}::int))
        and not exists (select 1 from ${nodeClaims} held where held.job_id = ${jobs.id})`,
    )
    .orderBy(asc(jobs.priorityRank), asc(jobs.createdAt), asc(jobs.id))
    .limit(sql.placeholder('limit'))
    .prepare('jobs_waiting_for_nodes_by_capacity'),
);

/** Notes that a node did not take the job (refused or unreachable); cleared by its next assignment. */
export async function recordRefusal(db: DbOrTx, jobId: string, nodeId: string): Promise<void> {
  await db.execute(sql`
    update jobs set refused_nodes = array_append(refused_nodes, ${nodeId}::text)
     where id = ${jobId} and not (${nodeId}::text = any(refused_nodes))`);
}

/**
 * Nodes that came back (online again, or registered again) get another chance from the waiting jobs they
 * refused or could not be reached by: those jobs want them again, are woken for them and hold them back from
 * the jobs behind, as before the refusal.
 */
export async function forgetRefusals(db: DbOrTx, nodeIds: readonly string[]): Promise<void> {
  if (nodeIds.length === 0) return;
  const ids = sql.param([...nodeIds]);
  await db.execute(sql`
    update jobs set refused_nodes = array(select r from unnest(refused_nodes) r where not (r = any(${ids}::text[])))
     where status in ('pending', 'queued') and refused_nodes && ${ids}::text[]`);
}

/**
 * Drops the capacity claims of jobs that have ended: a stray late match racing a job's last transition can leave
 * one (its claim commits after the transition's delete looked). @returns the nodes freed.
 */
export async function dropClaimsOfEndedJobs(db: DbOrTx): Promise<string[]> {
  const result = await db.execute<{ node_id: string }>(sql`
    delete from node_claims c using jobs j
     where j.id = c.job_id and j.status in ('completed', 'failed', 'cancelled')
    returning c.node_id`);
  return [...new Set(result.rows.map((r) => r.node_id))];
}

export async function jobCountsByStatus(db: DbOrTx): Promise<Record<JobPhase, number>> {
  const rows = await db
    .select({ status: jobs.status, n: count() })
    .from(jobs)
    .where(isNull(jobs.deletedAt))
    .groupBy(jobs.status);
  const out = { pending: 0, queued: 0, assigned: 0, running: 0, completed: 0, failed: 0, cancelled: 0 };
  for (const r of rows) out[r.status] = r.n;
  return out;
}

/** The transaction signature of a completed job's confirmed payment to its node. */
export async function releaseTxRef(db: DbOrTx, jobId: string): Promise<string | undefined> {
  const [row] = await db
    .select({ txRef: payments.txRef })
    .from(payments)
    .where(and(eq(payments.jobId, jobId), eq(payments.leg, 'release_node'), eq(payments.state, 'confirmed')));
  return row?.txRef ?? undefined;
}

/**
 * Every leg that moved money through the job's escrow account, as operators read it: the job's own and those of
 * reclaims of stray transfers into it (ledger ids `<job id>/reclaim/<signature>`), oldest first.
 */
export async function escrowAccountLedger(db: DbOrTx, jobId: string, escrowAccount: string) {
  // The ledgers whose money went into the job's escrow account (its own and its reclaims, also of a job that was
  // never funded), by the indexed to_account: a LIKE on job ids would read the whole table under a linguistic
  // collation.
  const ledgers = db.select({ id: payments.jobId }).from(payments).where(and(eq(payments.leg, 'escrow'), eq(payments.toAccount, escrowAccount)));
  return db
    .select()
    .from(payments)
    .where(or(eq(payments.jobId, jobId), inArray(payments.jobId, ledgers)))
    .orderBy(asc(payments.id));
}

/** Completed jobs whose payment to this node waits for its wallet. */
export async function jobsOwingNode(db: DbOrTx, nodeId: string): Promise<string[]> {
  const rows = await db
    .selectDistinct({ id: jobs.id })
    .from(jobs)
    .innerJoin(payments, eq(payments.jobId, jobs.id))
    .where(and(eq(jobs.assignedNodeId, nodeId), eq(payments.leg, 'release_node'), eq(payments.state, 'owed')));
  return rows.map((r) => r.id);
}

/** A wallet's ledger legs (paid from or to it), newest first; `total` counts at most LIST_DEPTH. */
export async function walletPayments(db: DbOrTx, wallet: string, limit: number, offset: number) {
  const where = or(eq(payments.fromAccount, wallet), eq(payments.toAccount, wallet));
  const [rows, [{ total }]] = await Promise.all([
    db.select().from(payments).where(where).orderBy(desc(payments.createdAt), desc(payments.id)).limit(limit).offset(offset),
    db.select({ total: count() }).from(db.select({ one: sql`1`.as('one') }).from(payments).where(where).limit(LIST_DEPTH).as('counted')),
  ]);
  return { rows, total };
}
