import { count, eq, gt, sql } from 'drizzle-orm';
import { CandidateTable } from '../domain/scoring';
import type { Db } from './client';
import { preparedStatement } from './prepared';
import { nodeClaims, nodes } from './schema';

/** Rows changed within this long before a refresh began are read again by the next one (commits racing the read). */
const OVERLAP_MS = 5000;
/** Rows applied between two turns of the event loop, so a match never waits long behind a refresh. */
const ROWS_PER_TURN = 1000;
const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * An in-memory copy of what matching needs of every node with an endpoint, kept as a CandidateTable so a match
 * scores the whole network in one pass over typed arrays, without a query. It is brought up to date in the
 * background (`start()`, every `refreshEveryMs`): a refresh reads the capabilities of nodes whose row changed
 * (registration, reputation, ban, reservation, going offline: writers bump `updated_at`) and re-counts claims;
 * every `livenessEveryMs` it also reads the liveness of nodes that heartbeated (three narrow columns: the
 * heartbeat write leaves `updated_at` alone). A match reads the table as it is; only one that could place
 * nothing asks for a refresh (see matchNode). The claim itself is taken in Postgres, under a row lock, so a
 * stale table can cost a retry but never a double placement.
 */
export function createNodeCache(deps: {
  db: Db;
  offlineAfterMs: number;
  /**
   * Pause between background refreshes (after one ends, the next starts this much later; default 1 s, the age
   * the table could reach before, when matches refreshed it).
   */
  refreshEveryMs?: number;
  /**
   * How often a refresh also reads heartbeats (default: a sixth of `offlineAfterMs`, at most 5 s). Liveness only
   * has to be as fresh as the offline threshold needs; a match that places nothing refreshes it at once.
   */
  livenessEveryMs?: number;
  /** A background refresh failed (the table stays as it was; the next one retries). */
  onError?: (err: unknown) => void;
}) {
  const every = deps.refreshEveryMs ?? 1000;
  const livenessEvery = deps.livenessEveryMs ?? Math.min(5000, deps.offlineAfterMs / 6);
  const table = new CandidateTable();
  let since = new Date(0);
  let beatsSince = new Date(0);
  let beatsReadAt = 0;
  let forceBeats = false;
  let loads = 0;
  let running: Promise<void> | undefined;
  let queued: Promise<void> | undefined;
  let timer: NodeJS.Timeout | undefined;
  let started = false;

  async function load(): Promise<void> {
    // Changes are stamped by the database's clock as their statements run (migration 0022), so their watermark is
    // taken from it too: a writer's skewed clock, or its wait for a connection, cannot put a change behind it.
    // The overlap covers changes stamped before this read whose transactions commit after it. Heartbeats carry
    // the API's clock (a missed one is made good by the node's next beat): theirs stays on this process's.
    const wall = Date.now();
    const [clock] = (await deps.db.execute<{ at: number }>(sql`select floor(extract(epoch from statement_timestamp()) * 1000)::float8 as at`)).rows;
    const began = new Date(Number(clock.at) - OVERLAP_MS);
    const beatsBegan = new Date(wall - OVERLAP_MS);
    const first = loads === 0;
    const readBeats = !first && (wall - beatsReadAt >= livenessEvery || forceBeats);
    forceBeats = false;
    const changed = await deps.db
      .select({
        id: nodes.id,
        devices: nodes.devices,
        ramTotal: nodes.ramTotal,
        computeScore: nodes.computeScore,
        reputation: nodes.reputation,
        capacity: nodes.capacity,
        region: nodes.region,
        pricePerHour: nodes.pricePerHour,
        bannedUntil: nodes.bannedUntil,
        reservedBy: nodes.reservedBy,
        status: nodes.status,
        lastHeartbeat: nodes.lastHeartbeat,
        port: nodes.port,
      })
      .from(nodes)
      .where(gt(nodes.updatedAt, since));
    // Heartbeats touch only last_heartbeat (and status): most refreshes read just these three narrow columns.
    const beats = !readBeats
      ? { rows: [] }
      : await deps.db.execute<{ id: string; up: boolean; at: number }>(sql`
          select id, status = 'online' as up, floor(extract(epoch from last_heartbeat) * 1000)::float8 as at
            from nodes where last_heartbeat > ${beatsSince.toISOString()}::timestamptz`);
    const counted = await deps.db.select({ nodeId: nodeClaims.nodeId, n: count() }).from(nodeClaims).groupBy(nodeClaims.nodeId);

    // Applied a slice at a time; a match in between sees some rows already refreshed, each one whole (its
    // capabilities and liveness from this read, its claims from the last count).
    let applied = 0;
    for (const r of changed) {
      if (++applied % ROWS_PER_TURN === 0) await nextTurn();
      let i = table.indexOf(r.id);
      if (r.port <= 0 || r.status === 'dormant') {
        // No endpoint (yet), or silent for a day: not a candidate. A registration, or a dormant node's next
        // beat, bumps updated_at and brings it back.
        if (i !== undefined) table.remove(i);
        continue;
      }
      const candidate = {
        id: r.id,
        devices: r.devices,
        ramTotal: r.ramTotal,
        computeScore: r.computeScore,
        reputation: r.reputation,
        capacity: r.capacity,
        region: r.region,
        pricePerHour: r.pricePerHour,
        bannedUntil: r.bannedUntil,
        reservedBy: r.reservedBy,
        online: false,
        activeJobs: i === undefined ? 0 : table.activeJobs[i],
      };
      if (i === undefined) i = table.push(candidate);
      else table.set(i, candidate);
      table.onlineUntil[i] = onlineUntil(r.status === 'online', r.lastHeartbeat.getTime());
    }
    for (const b of beats.rows) {
      if (++applied % ROWS_PER_TURN === 0) await nextTurn();
      const i = table.indexOf(b.id);
      if (i === undefined) continue;
      table.onlineUntil[i] = onlineUntil(b.up, b.at);
    }
    // Claims at once: a match sees the whole count or none of it.
    table.activeJobs.fill(0, 0, table.size);
    for (const c of counted) {
      const i = table.indexOf(c.nodeId);
      if (i !== undefined) table.activeJobs[i] = c.n;
    }
    since = began;
    if (first || readBeats) {
      beatsSince = beatsBegan;
      beatsReadAt = wall;
    }
    loads++;
  }

  /** A node is online while its status says so and its last heartbeat is younger than the threshold. */
  function onlineUntil(up: boolean, lastHeartbeatMs: number): number {
    return up ? lastHeartbeatMs + deps.offlineAfterMs : -Infinity;
  }

  /**
   * Brings the table up to date, heartbeats included, with a refresh that starts after this call (so it sees
   * whatever was committed before it); concurrent callers share one.
   */
  function refresh(): Promise<void> {
    forceBeats = true;
    return schedule();
  }

  /** The next refresh: the one queued, else one now, else one after the one running. */
  function schedule(): Promise<void> {
    if (queued) return queued;
    if (!running) {
      running = load().finally(() => (running = undefined));
      return running;
    }
    queued = running
      .catch(() => undefined)
      .then(() => {
        queued = undefined;
        return schedule();
      });
    return queued;
  }

  /** Refreshes now and then every `refreshEveryMs` until stop(). */
  function start(): void {
    if (started) return;
    started = true;
    const tick = () => {
      void schedule()
        .catch((err) => deps.onError?.(err))
        .finally(() => {
          if (!started) return;
          timer = setTimeout(tick, every);
          timer.unref();
        });
    };
    tick();
  }

  /** Stops the background refresh and waits for one in flight. */
  async function stop(): Promise<void> {
    started = false;
    clearTimeout(timer);
    await Promise.allSettled([running, queued]);
  }

  /**
   * Every node with an endpoint, as matching sees it: the last refresh plus the claims noted since (liveness is
   * judged at the match's instant). Not a copy: a refresh updates it in place.
   */
  function candidates(): CandidateTable {
    return table;
  }

  /** Counts a claim taken through this process at once, before the next refresh sees it. */
  function noteClaim(nodeId: string): void {
    const i = table.indexOf(nodeId);
    if (i !== undefined) table.activeJobs[i] += 1;
  }

  return { start, stop, refresh, candidates, noteClaim, loaded: () => loads > 0, refreshes: () => loads, size: () => table.size };
}

export type NodeCache = ReturnType<typeof createNodeCache>;

/**
 * Takes one unit of the node's capacity for the job, unless the node is full or reserved, or a job ahead of this one in
 * the queue (higher priority, or as urgent and older) is waiting for a node like it. Idempotent per job.
 * @returns whether the job holds a claim on the node.
 */
export async function claimNode(db: Db, jobId: string, nodeId: string, tokenDecimals: number): Promise<boolean> {
  // One round trip: claim_node (migration 0009) locks the node's row, then counts and inserts, so the count
  // sees every claim committed by whoever held the lock before, and the lock is held only while it runs.
  const result = await db.execute<{ claimed: boolean }>(sql`select claim_node(${jobId}, ${nodeId}, ${tokenDecimals}::int) as claimed`);
  return result.rows[0]?.claimed === true;
}

const claimOfJob = preparedStatement((db) =>
  db.select({ nodeId: nodeClaims.nodeId }).from(nodeClaims).where(eq(nodeClaims.jobId, sql.placeholder('jobId'))).limit(1).prepare('node_claims_of_job'),
);

/** The node the job holds a claim on, if any. */
export async function heldClaim(db: Db, jobId: string): Promise<string | undefined> {
  const [row] = await claimOfJob(db).execute({ jobId });
  return row?.nodeId;
}

/** Gives back whatever capacity the job holds (its attempt ended, or the node refused it). @returns the nodes freed. */
export async function releaseClaims(db: Db, jobId: string): Promise<string[]> {
  const result = await db.execute<{ node_id: string }>(sql`delete from node_claims where job_id = ${jobId} returning node_id`);
  return result.rows.map((r) => r.node_id);
}

/**
 * Where a waiting job stands: how many waiting jobs are ahead of it (priority, then age), whatever nodes they
 * need; whether one of them holds this job back depends on the node (see claim_node).
 */
export async function queuePosition(db: Db, jobId: string): Promise<number> {
  const result = await db.execute<{ ahead: number }>(waitingAhead(jobId));
  return result.rows[0]?.ahead ?? 0;
}

/** The count of waiting jobs ahead of the job, as `ahead`. */
const waitingAhead = (jobId: string) => sql`
  select count(*)::int as ahead from jobs q, jobs me
   where me.id = ${jobId} and q.id <> me.id and job_is_waiting(q)
     and (q.priority_rank, q.created_at, q.id) < (me.priority_rank, me.created_at, me.id)`;

/**
 * Records that a match found no node for the job (it waits from now, unless it already did: a job whose
 * escrow is still on its way is woken, and holds its place, from this moment) and @returns its queue position.
 */
export async function markWaiting(db: Db, jobId: string): Promise<number> {
  const result = await db.execute<{ ahead: number }>(sql`
    with mark as (update jobs set waiting_since = coalesce(waiting_since, now()) where id = ${jobId}) ${waitingAhead(jobId)}`);
  return result.rows[0]?.ahead ?? 0;
}
