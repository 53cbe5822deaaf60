import { and, asc, count, desc, eq, gte, isNull, lte, ne, or, sql } from 'drizzle-orm';
import type { AnyPgColumn } from 'drizzle-orm/pg-core';
import type { DeviceType } from '../domain/job';
import { deviceMemory, type DeviceCapsSpec } from '../domain/node';
import { computeScore, listPricePerHour } from '../domain/pricing';
import type { Db, DbOrTx } from './client';
import { preparedStatement } from './prepared';
import { applyDelta, BAN_HOURS, BAN_THRESHOLD, type ReputationEvent } from '../domain/reputation';
import { jobEvents, nodeClaims, nodeJobCancels, nodeMetrics, nodes, reputationEvents, type NodeProfile } from './schema';

export type NodeRow = typeof nodes.$inferSelect;

export interface NodeRegistration {
  name: string;
  cpuCores: number;
  ramTotal: number;
  ramAvailable: number;
  devices: DeviceCapsSpec[];
  ipAddress: string;
  port: number;
  region: string;
  walletAddress: string;
  profile: NodeProfile;
  /** The NodePricing the node announced (snake_case as on the wire), if it announced a price. */
  pricing?: Record<string, unknown> & { price_per_hour: number };
}

/**
 * The id of the node this registration belongs to, if the server knows it. A registration that names an id is
 * that node or a new one: the shipping node always names one (its saved id, or `node_<ts>` at its first run, which
 * its P2P service keeps using), and a farm's machines share a wallet and, across LANs, an endpoint. One that names
 * none is known by its wallet, else its endpoint.
 */
export async function findRegisteredNode(
  db: DbOrTx,
  key: { nodeId: string; walletAddress: string; ipAddress: string; port: number; owner?: string },
): Promise<string | undefined> {
  // Only among the caller's nodes (and unowned ones) when it is known: another user's node is not this one,
  // whatever id it claims (a copied registration file) and however it shares a LAN address and the shipping port.
  const mine = key.owner === undefined ? undefined : or(isNull(nodes.owner), eq(nodes.owner, key.owner));
  if (key.nodeId) {
    const [byId] = await db.select({ id: nodes.id }).from(nodes).where(and(eq(nodes.id, key.nodeId), mine));
    return byId?.id;
  }
  if (key.walletAddress) {
    const [byWallet] = await db
      .select({ id: nodes.id })
      .from(nodes)
      .where(and(eq(nodes.walletAddress, key.walletAddress), mine))
      .orderBy(desc(nodes.lastHeartbeat))
      .limit(1);
    if (byWallet) return byWallet.id;
  }
  if (key.ipAddress && key.port) {
    const [byEndpoint] = await db
      .select({ id: nodes.id })
      .from(nodes)
      .where(and(eq(nodes.ipAddress, key.ipAddress), eq(nodes.port, key.port), mine))
      .orderBy(desc(nodes.lastHeartbeat))
      .limit(1);
    if (byEndpoint) return byEndpoint.id;
  }
  return undefined;
}

/** Columns derived from a registration, for indexed matching and discovery. */
function derived(r: NodeRegistration) {
  const accelerators = r.devices.filter((d) => d.deviceType !== 'CPU' && d.deviceType !== 'UNKNOWN').length;
  return {
    deviceTypes: [...new Set(r.devices.map((d) => d.deviceType))] as DeviceType[],
    maxDeviceMemory: Math.max(0, ...r.devices.map(deviceMemory)),
    computeScore: computeScore(r),
    pricePerHour: r.pricing && r.pricing.price_per_hour > 0 ? r.pricing.price_per_hour : listPricePerHour(r),
    pricing: r.pricing ?? {},
    capacity: Math.max(1, accelerators),
  };
}

/**
 * Pays the owner's nodes that have no wallet, and those paid to `from` from the owner's account, to `to` (taken
 * from the account; '' leaves them without one). @returns the ids of the nodes changed.
 */
export async function moveAccountWallet(db: DbOrTx, owner: string, from: string, to: string): Promise<string[]> {
  const rows = await db
    .update(nodes)
    .set({ walletAddress: to, walletFromAccount: to !== '' })
    .where(
      and(
        eq(nodes.owner, owner),
        ne(nodes.walletAddress, to),
        or(eq(nodes.walletAddress, ''), from ? and(eq(nodes.walletAddress, from), eq(nodes.walletFromAccount, true)) : undefined),
      ),
    )
    .returning({ id: nodes.id });
  return rows.map((r) => r.id);
}

/** What a registration does to a recorded node's wallet: see upsertNode. */
function walletChange(named: string, fromAccount: boolean) {
  if (named) return { walletAddress: sql`excluded.wallet_address`, walletFromAccount: false };
  // Taken from the account only where the node named none (or the account's wallet is the one it has).
  const followsAccount = sql`(${nodes.walletAddress} = '' or ${nodes.walletFromAccount})`;
  if (fromAccount) return { walletAddress: sql`case when ${followsAccount} then excluded.wallet_address else ${nodes.walletAddress} end`, walletFromAccount: followsAccount };
  return { walletAddress: sql`${nodes.walletAddress}`, walletFromAccount: sql`${nodes.walletFromAccount}` };
}

/**
 * Creates or refreshes a node from its registration; it is online from now. `owner`: the registering user (auth
 * on). `accountWallet`: the user's wallet, the node's while it has named none (it follows the user's).
 */
export async function upsertNode(db: DbOrTx, id: string, r: NodeRegistration, owner?: string, accountWallet = ''): Promise<NodeRow> {
  const now = new Date();
  const { pricing: _announced, ...fields } = r;
  const walletFromAccount = !r.walletAddress && !!accountWallet;
  const values = {
    ...fields,
    walletAddress: r.walletAddress || accountWallet,
    walletFromAccount,
    ...derived(r),
    owner: owner || null,
    status: 'online',
    lastHeartbeat: now,
    updatedAt: now,
  };
  // No devices is "not sent" too: the shipping node's reconnect (RetryConnection) registers without any, its
  // device detection being off. Its hardware, and what it sets (matching columns, capacity, list price), stays.
  const { devices: _d, deviceTypes: _t, maxDeviceMemory: _m, computeScore: _c, capacity: _k, pricePerHour: _p, ...withoutHardware } = values;
  const { pricing: _kept, ...withoutPricing } = withoutHardware;
  const announces = !!r.pricing && r.pricing.price_per_hour > 0;
  // Its announced pricing too, unless this registration announces one: the price it charges stays the one it shows.
  const updated = r.devices.length > 0 ? values : announces ? { ...withoutHardware, pricePerHour: values.pricePerHour } : withoutPricing;
  const [row] = await db
    .insert(nodes)
    .values({ id, ...values })
    .onConflictDoUpdate({
      target: nodes.id,
      // An empty wallet is proto3's "not sent" (shipping nodes always send ""): a wallet the node named stays;
      // one taken from its user's account follows the account's.
      // An owner, once set, stays (the service refuses another user's registration before this).
      set: {
        ...updated,
        ...walletChange(r.walletAddress, walletFromAccount),
        owner: sql`coalesce(${nodes.owner}, excluded.owner)`,
      },
    })
    .returning();
  return row;
}

/**
 * Creates a bare record for a node that heartbeats with an id the server does not know (shipping nodes
 * never re-register on their own). It matches nothing until it registers its hardware again. `owner`: the
 * beating user (auth on), so that nobody else registers the id meanwhile.
 * @returns whether a record was created.
 */
export async function ensureNode(db: DbOrTx, id: string, owner?: string): Promise<boolean> {
  const inserted = await db
    .insert(nodes)
    .values({ id, name: `node-${id.slice(0, 8)}`, owner: owner || null })
    .onConflictDoNothing()
    .returning({ id: nodes.id });
  return inserted.length > 0;
}

const nodeExistsById = preparedStatement((db) => db.select({ id: nodes.id }).from(nodes).where(eq(nodes.id, sql.placeholder('id'))).prepare('nodes_exists'));

/** Whether Postgres has a record for this node id. */
export async function nodeExists(db: DbOrTx, id: string): Promise<boolean> {
  return (await nodeExistsById(db).execute({ id })).length > 0;
}

/**
 * Marks at most `limit` registered nodes offline since before `silentBefore` dormant: node caches drop them at
 * their next refresh (updated_at moves), so matching does not scan nodes that left long ago. A dormant node's
 * next heartbeat makes it an online candidate again (applyHeartbeats). @returns the ids made dormant.
 */
export async function markNodesDormant(db: DbOrTx, silentBefore: Date, limit: number, now = new Date()): Promise<string[]> {
  // updated_at on this process's clock, like every writer the node caches' watermark is compared with.
  const rows = await db.execute<{ id: string }>(sql`
    update ${nodes} n set status = 'dormant', updated_at = ${now.toISOString()}::timestamptz
    where n.id = any(array(
      select c.id from ${nodes} c
      where c.status = 'offline' and c.last_heartbeat < ${silentBefore.toISOString()}::timestamptz and c.port > 0
      limit ${limit}))
      -- Asked again of the row changed: a beat written since the list was made keeps it.
      and n.status = 'offline' and n.last_heartbeat < ${silentBefore.toISOString()}::timestamptz
    returning n.id`);
  return rows.rows.map((r) => r.id);
}

/**
 * Deletes at most `limit` records made for heartbeats from unknown ids (ensureNode) that never registered (no
 * endpoint) and have been silent since `silentBefore`. Without an endpoint a node is never matched or reserved
 * (holdNode refuses it); the checks below say so of the row all the same. A node that beats again later gets a
 * new record. @returns the ids deleted.
 */
export async function pruneUnregisteredNodes(db: DbOrTx, silentBefore: Date, limit: number): Promise<string[]> {
  const rows = await db.execute<{ id: string }>(sql`
    delete from ${nodes} n where n.id = any(array(
      select c.id from ${nodes} c
      where c.port = 0 and c.last_heartbeat < ${silentBefore.toISOString()}::timestamptz
        and c.reserved_by is null and c.total_jobs_completed = 0 and c.total_jobs_failed = 0
        and not exists (select 1 from ${nodeClaims} k where k.node_id = c.id)
        and not exists (select 1 from ${reputationEvents} e where e.node_id = c.id)
      limit ${limit}))
      -- Asked again of the row deleted: a beat or registration written since the list was made keeps it.
      and n.port = 0 and n.last_heartbeat < ${silentBefore.toISOString()}::timestamptz
    returning n.id`);
  return rows.rows.map((r) => r.id);
}

// Read for every match, report and status the Engine asks for.
const nodeById = preparedStatement((db) => db.select().from(nodes).where(eq(nodes.id, sql.placeholder('id'))).prepare('nodes_get'));

export async function getNode(db: DbOrTx, id: string): Promise<NodeRow | undefined> {
  const [row] = await nodeById(db).execute({ id });
  return row;
}

export interface HeartbeatSample {
  nodeId: string;
  at: Date;
  ramAvailable?: number;
}

/**
 * Writes a batch of heartbeats in one statement. The gap since a node's previous heartbeat is added to its
 * online time (online_ms) when the node was online until now, i.e. the gap is no longer than the offline
 * timeout (`offlineBefore`); a node coming back adds nothing for the time it was away.
 * @returns `back`: the ids of nodes that were offline (status or stale heartbeat) and are now back; `missing`:
 * those with no record to write to (deleted since the beat was taken).
 */
export async function applyHeartbeats(db: DbOrTx, beats: HeartbeatSample[], offlineBefore: Date, now = new Date()): Promise<{ back: string[]; missing: string[] }> {
  if (beats.length === 0) return { back: [], missing: [] };
  const ids = beats.map((b) => b.nodeId);
  const ats = beats.map((b) => b.at.toISOString());
  const rams = beats.map((b) => (b.ramAvailable === undefined ? null : String(Math.trunc(b.ramAvailable))));
  const result = await db.execute<{ id: string; was_offline: boolean }>(sql`
    with beat as (
      select * from unnest(${sql.param(ids)}::text[], ${sql.param(ats)}::timestamptz[], ${sql.param(rams)}::bigint[]) as b(id, at, ram)
    ), prev as (
      select n.id, (n.status <> 'online' or n.last_heartbeat < ${offlineBefore.toISOString()}::timestamptz) as was_offline
      from nodes n join beat on beat.id = n.id
    )
    update nodes n
       set last_heartbeat = greatest(n.last_heartbeat, beat.at),
           online_ms = n.online_ms + case when prev.was_offline then 0
             else greatest(0, (extract(epoch from beat.at - greatest(n.last_heartbeat, n.uptime_since)) * 1000)::bigint) end,
           status = 'online',
           -- A dormant node is out of the node caches until its row changes: its return is such a change.
           updated_at = case when n.status = 'dormant' then ${now.toISOString()}::timestamptz else n.updated_at end,
           ram_available = coalesce(beat.ram, n.ram_available)
      from beat, prev
     where n.id = beat.id and prev.id = beat.id
    returning n.id, prev.was_offline`);
  const written = new Set(result.rows.map((r) => r.id));
  return { back: result.rows.filter((r) => r.was_offline).map((r) => r.id), missing: ids.filter((id) => !written.has(id)) };
}

/** Node counts for /api/stats; busy: holding at least one capacity claim (what matching counts). */
export async function nodeCounts(db: DbOrTx, onlineSince: Date): Promise<{ total: number; online: number; busy: number }> {
  const [row] = await db
    .select({
      total: count(),
      online: sql<number>`count(*) filter (where ${nodes.status} = 'online' and ${nodes.lastHeartbeat} > ${onlineSince.toISOString()}::timestamptz)::int`,
      busy: sql<number>`count(*) filter (where exists (select 1 from ${nodeClaims} c where c.node_id = ${nodes.id}))::int`,
    })
    .from(nodes);
  return row;
}

/** Marks nodes silent since before `before` offline. @returns their ids. */
export async function markStaleNodesOffline(db: DbOrTx, before: Date): Promise<string[]> {
  const rows = await db
    .update(nodes)
    .set({ status: 'offline', updatedAt: new Date() })
    .where(and(eq(nodes.status, 'online'), lte(nodes.lastHeartbeat, before)))
    .returning({ id: nodes.id });
  return rows.map((r) => r.id);
}

/**
 * Counts a finished attempt and moves the node's reputation by the event's documented amount, once per
 * (node, job, event): the event row is the evidence, and a retried activity finds it and changes nothing.
 * The attempt's time on the node — from the job's latest 'assigned' event there to now — is added to its
 * compute_ms in the same transaction, so exactly once as well (only this node's attempt counts).
 * @returns the reputation after the event, by how much this call changed it, and whether it recorded the event
 * (false on a retry: nothing changed); undefined for an unknown node.
 */
export async function recordReputationEvent(
  db: Db,
  e: {
    nodeId: string;
    jobId: string;
    kind: ReputationEvent;
    reason: string;
    now?: Date;
    /**
     * For node_lost: a node whose last heartbeat reached Postgres after this moment was not silent, the server
     * was (its liveness never reached the job's watch: an API, Postgres or Temporal outage). The loss is still
     * recorded, citing the job, but costs the node nothing.
     */
    beatAfterExcuses?: Date;
  },
): Promise<{ reputation: number; change: number; recorded: boolean } | undefined> {
  return db.transaction(async (tx) => {
    const [node] = await tx.select().from(nodes).where(eq(nodes.id, e.nodeId)).for('update');
    if (!node) return undefined;
    const excused = e.kind === 'node_lost' && e.beatAfterExcuses !== undefined && node.lastHeartbeat > e.beatAfterExcuses;
    const reason = excused ? `${e.reason}; not the node's fault: its heartbeats reached the server until ${node.lastHeartbeat.toISOString()}` : e.reason;
    const after = excused ? node.reputation : applyDelta(node.reputation, e.kind);
    const now = e.now ?? new Date();
    let bannedUntil: Date | null = null;
    // Only a loss of reputation bans: a node still below the threshold when its ban expires works its way back up.
    if (after < BAN_THRESHOLD && after < node.reputation && !(node.bannedUntil && node.bannedUntil > now)) {
      const [{ bans }] = await tx
        .select({ bans: count() })
        .from(reputationEvents)
        .where(and(eq(reputationEvents.nodeId, e.nodeId), eq(reputationEvents.kind, 'ban')));
      bannedUntil = new Date(now.getTime() + BAN_HOURS * 3600_000 * (bans + 1));
    }
    const inserted = await tx
      .insert(reputationEvents)
      .values({ nodeId: e.nodeId, jobId: e.jobId, kind: e.kind, delta: after - node.reputation, reputationAfter: after, reason, at: now })
      .onConflictDoNothing()
      .returning({ id: reputationEvents.id });
    if (inserted.length === 0) return { reputation: node.reputation, change: 0, recorded: false };
    const [assigned] = await tx
      .select({ at: jobEvents.at })
      .from(jobEvents)
      .where(and(eq(jobEvents.jobId, e.jobId), eq(jobEvents.nodeId, e.nodeId), eq(jobEvents.toStatus, 'assigned')))
      .orderBy(desc(jobEvents.seq))
      .limit(1);
    const attemptMs = assigned ? Math.max(0, now.getTime() - assigned.at.getTime()) : 0;
    await tx
      .update(nodes)
      .set({
        reputation: after,
        updatedAt: now,
        ...(attemptMs > 0 && { computeMs: sql`${nodes.computeMs} + ${attemptMs}` }),
        ...(e.kind === 'job_completed'
          ? { totalJobsCompleted: sql`${nodes.totalJobsCompleted} + 1` }
          : !excused && { totalJobsFailed: sql`${nodes.totalJobsFailed} + 1` }),
        ...(bannedUntil && { bannedUntil }),
      })
      .where(eq(nodes.id, e.nodeId));
    if (bannedUntil) {
      await tx.insert(reputationEvents).values({
        nodeId: e.nodeId,
        jobId: e.jobId,
        kind: 'ban',
        delta: 0,
        reputationAfter: after,
        reason: `reputation ${after} below ${BAN_THRESHOLD}`,
        bannedUntil,
      }).onConflictDoNothing();
    }
    return { reputation: after, change: after - node.reputation, recorded: true };
  });
}

/** Whether the node has a reputation event of this kind citing this job (or reservation). */
export async function hasReputationEvent(db: DbOrTx, nodeId: string, jobId: string, kind: ReputationEvent): Promise<boolean> {
  const rows = await db
    .select({ id: reputationEvents.id })
    .from(reputationEvents)
    .where(and(eq(reputationEvents.nodeId, nodeId), eq(reputationEvents.jobId, jobId), eq(reputationEvents.kind, kind)))
    .limit(1);
  return rows.length > 0;
}

/** The node's reputation history, newest first. */
export async function reputationHistory(db: DbOrTx, nodeId: string, limit = 100) {
  return db.select().from(reputationEvents).where(eq(reputationEvents.nodeId, nodeId)).orderBy(desc(reputationEvents.at), desc(reputationEvents.id)).limit(limit);
}

export type MetricRow = typeof nodeMetrics.$inferInsert;

export async function insertMetrics(db: DbOrTx, rows: MetricRow[]): Promise<void> {
  if (rows.length > 0) await db.insert(nodeMetrics).values(rows);
}

/** What a heartbeat tells about a node's memory; a total of null means "the registered one". */
export interface MetricSample {
  nodeId: string;
  at: Date;
  ramAvailable: number | null;
  ramTotal: number | null;
}

/**
 * Writes one node_metrics row per sample, in one statement: memory_usage = 1 − available / total (clamped to
 * 0..1), the total taken from the node's registration when the sample has none; 0 when either is unknown.
 */
export async function insertSamples(db: DbOrTx, samples: MetricSample[]): Promise<void> {
  if (samples.length === 0) return;
  const ids = samples.map((s) => s.nodeId);
  const ats = samples.map((s) => s.at.toISOString());
  const available = samples.map((s) => s.ramAvailable);
  const totals = samples.map((s) => s.ramTotal);
  await db.execute(sql`
    insert into ${nodeMetrics} (node_id, at, memory_usage)
    select b.node_id, b.at,
           case when b.ram_available is null or coalesce(b.ram_total, n.ram_total, 0) <= 0 then 0
                else least(1, greatest(0, 1 - b.ram_available / coalesce(b.ram_total, n.ram_total))) end
    from unnest(${sql.param(ids)}::text[], ${sql.param(ats)}::timestamptz[], ${sql.param(available)}::float8[], ${sql.param(totals)}::float8[])
           as b(node_id, at, ram_available, ram_total)
    left join ${nodes} n on n.id = b.node_id`);
}

/**
 * The node's samples from `from` to `to`, oldest first, at most `maxPoints` of them: a longer range is divided
 * into equal buckets (whole seconds) and each bucket's samples are averaged, so the whole range is always covered.
 */
export async function getMetrics(db: DbOrTx, nodeId: string, from: Date, to: Date, maxPoints = 10_000) {
  // Whole seconds, wider than range / maxPoints: the buckets from `from` through `to` (inclusive) are at most maxPoints.
  const bucketS = Math.floor((to.getTime() - from.getTime()) / 1000 / maxPoints) + 1;
  // Inlined (a computed integer), so the select, group by and order by are one expression to Postgres.
  const width = sql.raw(String(bucketS));
  // Buckets start at `from`, so no point is stamped before it.
  const origin = sql.raw(String(from.getTime() / 1000));
  const bucket = sql`floor((extract(epoch from ${nodeMetrics.at}) - ${origin}) / ${width})`;
  const avg = (column: AnyPgColumn) => sql<number>`avg(${column})::float8`;
  return db
    .select({
      at: sql<Date>`to_timestamp(${origin} + ${bucket} * ${width})`.mapWith((v: string | Date) => new Date(v)),
      cpuUsage: avg(nodeMetrics.cpuUsage),
      gpuUsage: avg(nodeMetrics.gpuUsage),
      memoryUsage: avg(nodeMetrics.memoryUsage),
      networkThroughput: avg(nodeMetrics.networkThroughput),
      powerConsumption: avg(nodeMetrics.powerConsumption),
    })
    .from(nodeMetrics)
    .where(and(eq(nodeMetrics.nodeId, nodeId), gte(nodeMetrics.at, from), lte(nodeMetrics.at, to)))
    .groupBy(bucket)
    .orderBy(bucket);
}

/**
 * Deletes at most `limit` samples taken at or before `before` (oldest rows first by the BRIN index on `at`), so
 * that no statement holds a large delete; call again while it returns `limit`. @returns the rows deleted.
 */
export async function pruneMetrics(db: DbOrTx, before: Date, limit = 10_000): Promise<number> {
  const result = await db.execute(sql`
    delete from ${nodeMetrics} where id = any(array(
      select id from ${nodeMetrics} where ${nodeMetrics.at} <= ${before.toISOString()}::timestamptz limit ${limit}))`);
  return result.rowCount ?? 0;
}

/** Every pending stop order, by node. */
export async function pendingCancels(db: DbOrTx): Promise<Map<string, string[]>> {
  const rows = await db.select({ nodeId: nodeJobCancels.nodeId, jobId: nodeJobCancels.jobId }).from(nodeJobCancels);
  const out = new Map<string, string[]>();
  for (const r of rows) out.set(r.nodeId, [...(out.get(r.nodeId) ?? []), r.jobId]);
  return out;
}

/** Stop orders older than `before` have been delivered by enough heartbeats; forget them. */
export async function pruneCancels(db: DbOrTx, before: Date): Promise<void> {
  await db.delete(nodeJobCancels).where(lte(nodeJobCancels.createdAt, before));
}

/**
 * Nodes for operators, by id (an order heartbeats do not move, so consecutive pages neither repeat nor skip a
 * node), with their active jobs (capacity claims, as matching counts them).
 */
export async function listNodes(db: DbOrTx, limit: number, offset: number) {
  const activeJobs = sql<number>`(select count(*)::int from ${nodeClaims} c where c.node_id = ${nodes.id})`;
  const [rows, [{ total }]] = await Promise.all([
    db.select({ node: nodes, activeJobs }).from(nodes).orderBy(asc(nodes.id)).limit(limit).offset(offset),
    db.select({ total: count() }).from(nodes),
  ]);
  return { rows, total };
}

/**
 * Marks the heartbeat relay `id` (one API process's hub) alive now, by the database's clock. A mark more than
 * `gapMs` after its last one starts its uptime anew: the relay was down (or could not reach Postgres) meanwhile.
 */
export async function markRelay(db: DbOrTx, id: string, gapMs: number): Promise<void> {
  await db.execute(sql`
    insert into heartbeat_relays (id, up_since, at) values (${id}, clock_timestamp(), clock_timestamp())
    on conflict (id) do update set
      up_since = case when heartbeat_relays.at < clock_timestamp() - ${gapMs}::int * interval '1 millisecond'
                      then clock_timestamp() else heartbeat_relays.up_since end,
      at = clock_timestamp()`);
}

/**
 * How long the heartbeat relays have all been up without a gap, in ms: counted from the latest start among those
 * marked within `freshMs` (a relay that started or came back lately may not have passed every node's beats on
 * yet). 0 when none is marked within `freshMs`, or one marked within `windowMs` no longer is.
 */
export async function relaysUpForMs(db: DbOrTx, freshMs: number, windowMs: number): Promise<number> {
  // A relay that stopped marking within `windowMs` (its process died or restarted) counts as down: nodes it relayed
  // may not have reached another yet.
  const result = await db.execute<{ up_for: number | null; gone: boolean }>(sql`
    select floor(extract(epoch from clock_timestamp() - max(up_since) filter (where at > clock_timestamp() - ${freshMs}::int * interval '1 millisecond')) * 1000)::float8 as up_for,
           bool_or(at <= clock_timestamp() - ${freshMs}::int * interval '1 millisecond') as gone
      from heartbeat_relays where at > clock_timestamp() - ${windowMs}::int * interval '1 millisecond'`);
  const row = result.rows[0];
  if (!row || row.gone) return 0;
  return Math.max(0, Number(row.up_for ?? 0));
}

/** Forgets relays not marked since `before` (API processes gone). */
export async function pruneRelays(db: DbOrTx, before: Date): Promise<void> {
  await db.execute(sql`delete from heartbeat_relays where at < ${before.toISOString()}::timestamptz`);
}
