import { count, eq, gt, or, sql } from 'drizzle-orm';
import { memoryByType, type Candidate } from '../domain/scoring';
import type { Db } from './client';
import { nodeClaims, nodes } from './schema';

interface CachedNode {
  /** Kept between matches (so a match allocates nothing per node); online and activeJobs are set per match. */
  candidate: Candidate;
  status: string;
  lastHeartbeat: number;
  hasEndpoint: boolean;
}

/**
 * An in-memory copy of what matching needs of every node, so a match scores the whole network in one pass
 * without a query per job. It reloads what changed since its last refresh (registrations, heartbeats,
 * reputation) at most every `maxAgeMs`; claims (each node's occupied capacity) are re-counted each refresh.
 * The claim itself is taken in Postgres, under a row lock, so a stale cache can cost a retry but never a
 * double placement.
 */
export function createNodeCache(deps: { db: Db; offlineAfterMs: number; maxAgeMs?: number; now?: () => number }) {
  const now = deps.now ?? Date.now;
  const maxAge = deps.maxAgeMs ?? 1000;
  const byId = new Map<string, CachedNode>();
  let claims = new Map<string, number>();
  let since = new Date(0);
  let refreshedAt = 0;
  let list: CachedNode[] = [];
  let refreshing: Promise<void> | undefined;

  async function load(): Promise<void> {
    const started = new Date(now() - 5000); // overlap: rows committed while we read are read again next time
    const rows = await deps.db
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
      .where(or(gt(nodes.updatedAt, since), gt(nodes.lastHeartbeat, since)));
    for (const r of rows) {
      const candidate: Candidate = {
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
        activeJobs: 0,
        memory: memoryByType({ devices: r.devices, ramTotal: r.ramTotal }),
      };
      byId.set(r.id, { candidate, status: r.status, lastHeartbeat: r.lastHeartbeat.getTime(), hasEndpoint: r.port > 0 });
    }
    list = [...byId.values()].filter((n) => n.hasEndpoint);
    const counted = await deps.db.select({ nodeId: nodeClaims.nodeId, n: count() }).from(nodeClaims).groupBy(nodeClaims.nodeId);
    claims = new Map(counted.map((c) => [c.nodeId, c.n]));
    since = started;
    refreshedAt = now();
  }

  /** Brings the cache up to date if it is older than `maxAgeMs` (concurrent callers share one refresh). */
  async function refresh(force = false): Promise<void> {
    if (!force && now() - refreshedAt < maxAge) return;
    refreshing ??= load().finally(() => (refreshing = undefined));
    await refreshing;
  }

  /** Every node with an endpoint, as matching sees it now. */
  function candidates(): Candidate[] {
    const onlineSince = now() - deps.offlineAfterMs;
    const out = new Array<Candidate>(list.length);
    for (let i = 0; i < list.length; i++) {
      const n = list[i];
      n.candidate.online = n.status === 'online' && n.lastHeartbeat > onlineSince;
      n.candidate.activeJobs = claims.get(n.candidate.id) ?? 0;
      out[i] = n.candidate;
    }
    return out;
  }

  /** Counts a claim taken through this process at once, before the next refresh sees it. */
  function noteClaim(nodeId: string): void {
    claims.set(nodeId, (claims.get(nodeId) ?? 0) + 1);
  }

  return { refresh, candidates, noteClaim, size: () => byId.size };
}

export type NodeCache = ReturnType<typeof createNodeCache>;

/**
 * Takes one unit of the node's capacity for the job, unless the node is full or reserved, or a job ahead of this one in
 * the queue (higher priority, or as urgent and older) is waiting for a node like it. Idempotent per job.
 * @returns whether the job holds a claim on the node.
 */
export async function claimNode(db: Db, jobId: string, nodeId: string): Promise<boolean> {
  return db.transaction(async (tx) => {
    // Lock first, count after: under READ COMMITTED each statement reads a fresh snapshot, so the count below
    // sees every claim committed by whoever held the lock before us (one statement would count from a
    // snapshot taken before the lock wait and could overfill the node).
    const locked = await tx.execute(sql`select id from nodes where id = ${nodeId} for update`);
    if (locked.rows.length === 0) return false;
    const result = await tx.execute<{ node_id: string }>(sql`
      with node as (
        select id, capacity, device_types, max_device_memory, ram_total from nodes where id = ${nodeId} and reserved_by is null
      ), me as (
        select priority_rank, created_at from jobs where id = ${jobId}
      )
      insert into node_claims (node_id, job_id)
      select node.id, ${jobId} from node, me
       where (select count(*) from node_claims c where c.node_id = node.id and c.job_id <> ${jobId}) < node.capacity
         and not exists (
           select 1 from jobs q
            where q.status = 'queued' and q.id <> ${jobId}
              and (q.priority_rank, q.created_at, q.id) < (me.priority_rank, me.created_at, ${jobId})
              and not (node.id = any(q.excluded_nodes))
              and (q.required_device in ('UNKNOWN', 'CPU') or q.required_device = any(node.device_types))
              and q.estimated_memory <= greatest(node.max_device_memory, case when q.required_device in ('UNKNOWN', 'CPU') then node.ram_total else 0 end)
              and not exists (select 1 from node_claims held where held.job_id = q.id)
         )
      on conflict (node_id, job_id) do update set claimed_at = node_claims.claimed_at
      returning node_id`);
    return result.rows.length > 0;
  });
}

/** The node the job holds a claim on, if any. */
export async function heldClaim(db: Db, jobId: string): Promise<string | undefined> {
  const [row] = await db.select({ nodeId: nodeClaims.nodeId }).from(nodeClaims).where(eq(nodeClaims.jobId, jobId)).limit(1);
  return row?.nodeId;
}

/** Gives back whatever capacity the job holds (its attempt ended, or the node refused it). */
export async function releaseClaims(db: Db, jobId: string): Promise<void> {
  await db.execute(sql`delete from node_claims where job_id = ${jobId}`);
}

/** Where a waiting job stands: how many jobs are ahead of it in the queue. */
export async function queuePosition(db: Db, jobId: string): Promise<number> {
  const result = await db.execute<{ ahead: number }>(sql`
    select count(*)::int as ahead from jobs q, jobs me
     where me.id = ${jobId} and q.id <> me.id and q.status in ('pending', 'queued')
       and (q.priority_rank, q.created_at, q.id) < (me.priority_rank, me.created_at, me.id)`);
  return result.rows[0]?.ahead ?? 0;
}
