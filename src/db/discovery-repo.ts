import { and, asc, desc, eq, gte, inArray, lte, notInArray, sql, type SQL } from 'drizzle-orm';
import type { DeviceType } from '../domain/job';
import type { DbOrTx } from './client';
import type { NodeRow } from './nodes-repo';
import { jobs, nodes } from './schema';

/**
 * Read side of NodeDiscoveryService: filtering, ordering, keyset paging and statistics over `nodes`, all in
 * SQL. A page is one query and its counts one more, whatever the number of nodes; a node's active jobs come
 * from one grouped subquery over the partial index `jobs_node_idx`, never from a query per node.
 */

/** Orders of FindNodesRequest.SortBy. Each has a natural direction (price ascending, the others descending). */
export type DiscoverySort = 'price' | 'performance' | 'reputation' | 'availability';

/** The instant liveness and bans are judged at. */
export interface Liveness {
  now: Date;
  /** A node is online when its status is 'online' and its last heartbeat is after this. */
  onlineSince: Date;
}

/** Conditions a node must meet; an absent field does not filter. Region strings are lower-case. */
export interface NodeFilter {
  /** Only live nodes (status online and a fresh heartbeat). */
  onlineOnly?: boolean;
  /** Only nodes a job could be placed on now: live, not banned, fewer active jobs than capacity. */
  availableOnly?: boolean;
  /** A device of this type; CPU is also met by a node that reports RAM but no CPU device, as in matching. */
  device?: Exclude<DeviceType, 'UNKNOWN'>;
  /** Region equal to this, ignoring case. */
  region?: string;
  minPricePerHour?: number;
  maxPricePerHour?: number;
  /** RAM, bytes. */
  minRam?: number;
  /** Memory of one device (VRAM for GPUs), bytes: a device of `device`'s type when given, else any device. */
  minDeviceMemory?: number;
  minReputation?: number;
  minComputeScore?: number;
  /** profile.stakedAmount, whole tokens. */
  minStake?: number;
  allowedRegions?: string[];
  blockedRegions?: string[];
  /** Announced usd_equivalent, else price_per_hour (see {@link usdPerHour}). */
  maxPriceUsd?: number;
  /** The announced NodePricing.BillingModel; a node that announced no pricing bills hourly (0). */
  billingModel?: number;
  /** Only nodes that announced free_tier_available. */
  freeTierOnly?: boolean;
}

export interface SortOrder {
  key: DiscoverySort;
  /** Reverses the natural direction of the key. */
  reversed: boolean;
  /** Nodes whose region contains this (lower-case) come first, each group in the order of `key`. */
  preferredRegion?: string;
}

/** Position after a row in a sort order: its key values and id. */
export interface Cursor {
  keys: (number | string)[];
  id: string;
}

/** A node as discovery sees it: its row plus what is derived at the query's instant. */
export type DiscoveredNode = NodeRow & {
  /** Jobs assigned to or running on it. */
  activeJobs: number;
  /** Live: status online and a heartbeat after `onlineSince`. */
  online: boolean;
  banned: boolean;
  /** Jobs it could take now: capacity − active jobs when live and not banned, else 0. */
  freeCapacity: number;
  /** last_heartbeat in microseconds since the epoch (exact, for cursors). */
  heartbeatMicros: string;
};

export interface ListStats {
  /** Nodes matching the filter. */
  total: number;
  /** Live nodes among them. */
  online: number;
  /** Mean price_per_hour of every live node in the network (not only the matching ones); 0 when none. */
  networkAvgPrice: number;
  /** Sum of compute_score of every live node in the network. */
  networkTotalCompute: number;
}

export interface MatchStats {
  total: number;
  /** Over all matching nodes; 0 when none match. */
  avgPrice: number;
  minPrice: number;
  maxPrice: number;
}

/**
 * The node's active jobs (assigned or running), counted per node through the partial index
 * `jobs_node_idx` in a lateral subquery: only nodes that pass the other conditions are counted, and the
 * planner cannot fall into joining every node with every node's aggregate.
 */
function activeJobsByNode(db: DbOrTx) {
  return db
    .select({ activeJobs: sql<number>`count(*)::int`.as('active_jobs') })
    .from(jobs)
    .where(sql`${jobs.assignedNodeId} = ${nodes.id} and ${jobs.status} in ('assigned', 'running')`)
    .as('aj');
}
type ActiveJobs = ReturnType<typeof activeJobsByNode>;

const ts = (d: Date) => sql`${d.toISOString()}::timestamptz`;

/** A number stored in a jsonb object, or null when absent or not a number (a bad value must not fail the query). */
const jsonNumber = (column: typeof nodes.pricing | typeof nodes.profile, key: string) =>
  sql`(case when jsonb_typeof(${column}->${key}::text) = 'number' then (${column}->>${key}::text)::float8 end)`;

/**
 * The hourly price in USD a node offers: its announced usd_equivalent when positive, else price_per_hour
 * (nodes price in CYXWIZ; the discovery mapper applies the same rule to NodePricing.usd_equivalent).
 */
export const usdPerHour = sql<number>`coalesce(nullif(greatest(${jsonNumber(nodes.pricing, 'usd_equivalent')}, 0), 0), ${nodes.pricePerHour})`;

/** Memory a device (an element of nodes.devices) offers: VRAM when reported, else its memory (as deviceMemory()). */
const DEVICE_MEMORY = sql.raw(
  `(case when coalesce((d->>'vramTotal')::numeric, 0) > 0 then (d->>'vramTotal')::numeric else coalesce((d->>'memoryTotal')::numeric, 0) end)`,
);

function expressions(live: Liveness, aj: ActiveJobs) {
  const online = sql<boolean>`(${nodes.status} = 'online' and ${nodes.lastHeartbeat} > ${ts(live.onlineSince)})`;
  const banned = sql<boolean>`(${nodes.bannedUntil} is not null and ${nodes.bannedUntil} > ${ts(live.now)})`;
  const activeJobs = sql<number>`${aj.activeJobs}`;
  const freeCapacity = sql<number>`(case when ${online} and not ${banned} then greatest(${nodes.capacity} - ${activeJobs}, 0) else 0 end)`;
  const heartbeatMicros = sql<string>`(extract(epoch from ${nodes.lastHeartbeat}) * 1000000)::bigint`;
  return { online, banned, activeJobs, freeCapacity, heartbeatMicros };
}
type Expressions = ReturnType<typeof expressions>;

function hasDevice(device: Exclude<DeviceType, 'UNKNOWN'>): SQL {
  const listed = sql`${device}::text = any(${nodes.deviceTypes})`;
  return device === 'CPU' ? sql`(${listed} or ${nodes.ramTotal} > 0)` : listed;
}

function deviceMemoryAtLeast(bytes: number, device: NodeFilter['device']): SQL {
  const onDevice = (type: string) =>
    sql`exists (select 1 from jsonb_array_elements(${nodes.devices}) d where d->>'deviceType' = ${type} and ${DEVICE_MEMORY} >= ${bytes})`;
  if (!device) return gte(nodes.maxDeviceMemory, bytes);
  // A CPU job's memory is RAM unless the node reports a CPU device with more.
  if (device === 'CPU') return sql`(${nodes.ramTotal} >= ${bytes} or ${onDevice('CPU')})`;
  // The indexed column first: it rules most nodes out before the per-device check.
  return and(gte(nodes.maxDeviceMemory, bytes), onDevice(device))!;
}

function conditions(f: NodeFilter, e: Expressions): SQL | undefined {
  const lowerRegion = sql`lower(${nodes.region})`;
  return and(
    f.onlineOnly || f.availableOnly ? e.online : undefined,
    f.availableOnly ? sql`not ${e.banned} and ${e.activeJobs} < ${nodes.capacity}` : undefined,
    f.device ? hasDevice(f.device) : undefined,
    f.region !== undefined ? sql`${lowerRegion} = ${f.region}` : undefined,
    f.minPricePerHour !== undefined ? gte(nodes.pricePerHour, f.minPricePerHour) : undefined,
    f.maxPricePerHour !== undefined ? lte(nodes.pricePerHour, f.maxPricePerHour) : undefined,
    f.minRam !== undefined ? gte(nodes.ramTotal, f.minRam) : undefined,
    f.minDeviceMemory !== undefined ? deviceMemoryAtLeast(f.minDeviceMemory, f.device) : undefined,
    f.minReputation !== undefined ? gte(nodes.reputation, f.minReputation) : undefined,
    f.minComputeScore !== undefined ? gte(nodes.computeScore, f.minComputeScore) : undefined,
    f.minStake !== undefined ? sql`coalesce(${jsonNumber(nodes.profile, 'stakedAmount')}, 0) >= ${f.minStake}` : undefined,
    f.allowedRegions?.length ? inArray(lowerRegion, f.allowedRegions) : undefined,
    f.blockedRegions?.length ? notInArray(lowerRegion, f.blockedRegions) : undefined,
    f.maxPriceUsd !== undefined ? sql`${usdPerHour} <= ${f.maxPriceUsd}` : undefined,
    f.billingModel !== undefined ? sql`coalesce(${jsonNumber(nodes.pricing, 'billing_model')}, 0) = ${f.billingModel}` : undefined,
    f.freeTierOnly ? sql`${nodes.pricing}->'free_tier_available' = 'true'::jsonb` : undefined,
  );
}

/** The key expressions of a sort order, most significant first (the node id breaks ties after them). */
function sortKeys(key: DiscoverySort, e: Expressions): SQL[] {
  switch (key) {
    case 'price':
      return [sql`${nodes.pricePerHour}`];
    case 'performance':
      return [sql`${nodes.computeScore}`];
    case 'reputation':
      return [sql`${nodes.reputation}`];
    case 'availability':
      return [e.freeCapacity, e.heartbeatMicros];
  }
}

/** Price is cheapest first; performance, reputation and availability are best first. */
const naturallyAscending = (key: DiscoverySort) => key === 'price';

/** SQL casts of a cursor's key values, matching {@link sortKeys}. */
const KEY_TYPES: Record<DiscoverySort, string[]> = {
  price: ['float8'],
  performance: ['float8'],
  reputation: ['float8'],
  availability: ['int', 'bigint'],
};

/** The cursor after `node` in order `key`. */
export function cursorAfter(node: DiscoveredNode, key: DiscoverySort): Cursor {
  switch (key) {
    case 'price':
      return { keys: [node.pricePerHour], id: node.id };
    case 'performance':
      return { keys: [node.computeScore], id: node.id };
    case 'reputation':
      return { keys: [node.reputation], id: node.id };
    case 'availability':
      return { keys: [node.freeCapacity, node.heartbeatMicros], id: node.id };
  }
}

/** Whether `keys` has the shape of a cursor of order `key` (a token from the client must be checked). */
export function isCursorFor(key: DiscoverySort, keys: unknown[]): boolean {
  const types = KEY_TYPES[key];
  return (
    keys.length === types.length &&
    keys.every((v, i) =>
      types[i] === 'bigint' ? typeof v === 'string' && /^-?\d{1,19}$/.test(v) : typeof v === 'number' && Number.isFinite(v),
    )
  );
}

function selection(e: Expressions) {
  return {
    node: nodes,
    activeJobs: e.activeJobs,
    online: e.online,
    banned: e.banned,
    freeCapacity: e.freeCapacity,
    heartbeatMicros: sql<string>`${e.heartbeatMicros}::text`,
  };
}

type SelectedRow = { node: NodeRow; activeJobs: number; online: boolean; banned: boolean; freeCapacity: number; heartbeatMicros: string };
const flatten = (r: SelectedRow): DiscoveredNode => ({
  ...r.node,
  activeJobs: r.activeJobs,
  online: r.online,
  banned: r.banned,
  freeCapacity: r.freeCapacity,
  heartbeatMicros: r.heartbeatMicros,
});

/**
 * Up to `limit` nodes matching `filter` in `sort` order, starting after `after` (keyset paging: a node whose
 * sort key does not change while a client pages is returned exactly once).
 */
export async function discoverNodes(
  db: DbOrTx,
  q: { filter: NodeFilter; sort: SortOrder; after?: Cursor; limit: number; live: Liveness },
): Promise<DiscoveredNode[]> {
  const aj = activeJobsByNode(db);
  const e = expressions(q.live, aj);
  const keys = sortKeys(q.sort.key, e);
  const ascending = naturallyAscending(q.sort.key) !== q.sort.reversed;
  const direction = ascending ? asc : desc;

  let keyset: SQL | undefined;
  if (q.after) {
    const values = q.after.keys.map((v, i) => sql`${v}::${sql.raw(KEY_TYPES[q.sort.key][i])}`);
    const row = sql.join([...keys, sql`${nodes.id}`], sql`, `);
    const bound = sql.join([...values, sql`${q.after.id}::text`], sql`, `);
    // The redundant bound on the first key lets Postgres walk an index on it (price) instead of sorting.
    keyset = ascending
      ? sql`(${row}) > (${bound}) and ${keys[0]} >= ${values[0]}`
      : sql`(${row}) < (${bound}) and ${keys[0]} <= ${values[0]}`;
  }

  const regionFirst = q.sort.preferredRegion
    ? [sql`(position(${q.sort.preferredRegion} in lower(${nodes.region})) > 0) desc`]
    : [];
  const rows = await db
    .select(selection(e))
    .from(nodes)
    .crossJoinLateral(aj)
    .where(and(conditions(q.filter, e), keyset))
    .orderBy(...regionFirst, ...keys.map((k) => direction(k)), direction(nodes.id))
    .limit(q.limit);
  return rows.map(flatten);
}

/** One node as discovery sees it, or undefined. */
export async function getDiscoveredNode(db: DbOrTx, id: string, live: Liveness): Promise<DiscoveredNode | undefined> {
  const aj = activeJobsByNode(db);
  const e = expressions(live, aj);
  const [row] = await db.select(selection(e)).from(nodes).crossJoinLateral(aj).where(eq(nodes.id, id));
  return row && flatten(row);
}

/** Counts of the nodes matching `filter`, and the network's live price and compute, in one scan. */
export async function listStats(db: DbOrTx, filter: NodeFilter, live: Liveness): Promise<ListStats> {
  const aj = activeJobsByNode(db);
  const e = expressions(live, aj);
  const match = conditions(filter, e) ?? sql`true`;
  const query = db
    .select({
      total: sql<number>`count(*) filter (where ${match})::int`,
      online: sql<number>`count(*) filter (where ${match} and ${e.online})::int`,
      networkAvgPrice: sql<number>`coalesce(avg(${nodes.pricePerHour}) filter (where ${e.online}), 0)::float8`,
      networkTotalCompute: sql<number>`coalesce(sum(${nodes.computeScore}) filter (where ${e.online}), 0)::float8`,
    })
    .from(nodes)
    .$dynamic();
  // Active jobs matter only to the availability filter; without it the counts need no join.
  const [row] = await (filter.availableOnly ? query.crossJoinLateral(aj) : query);
  return row;
}

/** How many nodes match `filter` and their price range. */
export async function matchStats(db: DbOrTx, filter: NodeFilter, live: Liveness): Promise<MatchStats> {
  const aj = activeJobsByNode(db);
  const e = expressions(live, aj);
  const [row] = await db
    .select({
      total: sql<number>`count(*)::int`,
      avgPrice: sql<number>`coalesce(avg(${nodes.pricePerHour}), 0)::float8`,
      minPrice: sql<number>`coalesce(min(${nodes.pricePerHour}), 0)::float8`,
      maxPrice: sql<number>`coalesce(max(${nodes.pricePerHour}), 0)::float8`,
    })
    .from(nodes)
    .crossJoinLateral(aj)
    .where(conditions(filter, e));
  return row;
}
