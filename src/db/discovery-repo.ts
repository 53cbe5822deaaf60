import { and, eq, gte, inArray, lte, notInArray, sql, type SQL } from 'drizzle-orm';
import type { DeviceType } from '../domain/job';
import type { DbOrTx } from './client';
import type { NodeRow } from './nodes-repo';
import { nodeClaims, nodes } from './schema';

/**
 * Read side of NodeDiscoveryService: filtering, ordering, keyset paging and statistics over `nodes`, all in
 * SQL. A page is one query and its statistics one more, whatever the number of nodes. The page query sorts
 * narrow rows (id and sort keys) and reads whole rows only for the page. A node's busy capacity is its
 * count of `node_claims` — the claims matching takes and counts, so discovery and matching agree on who is
 * full — probed through that table's primary key (node_id, job_id), only where the query needs it
 * (availability), never by a query per node.
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
  /** Only nodes a job could be placed on now: live, not banned, not reserved, fewer claims than capacity. */
  availableOnly?: boolean;
  /** A device of this type; CPU is also met by a node that reports RAM but no CPU device, as in matching. */
  device?: Exclude<DeviceType, 'UNKNOWN'>;
  /** Region equal to this, ignoring case. */
  region?: string;
  minPricePerHour?: number;
  maxPricePerHour?: number;
  /** RAM, bytes. */
  minRam?: number;
  /** Memory of one device (VRAM for GPUs), bytes: a device of `device`'s type when given, else any accelerator (not a CPU device). */
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
  keys: number[];
  id: string;
}

/** A node as discovery sees it: its row and its liveness at the query's instant. */
export type DiscoveredNode = NodeRow & {
  /** Live: status online and a heartbeat after `onlineSince`. */
  online: boolean;
};

/** A node in a listing, with the position after it (for the next page). */
export type ListedNode = DiscoveredNode & { cursor: Cursor };

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
 * The capacity a node's jobs hold: its rows in `node_claims` (taken at the match, given back when the attempt
 * ends), for a lateral join: one probe of the primary key (node_id, job_id) per node that passed the other
 * conditions. Linear in those nodes whatever plan Postgres picks (a join against a grouped aggregate can turn
 * into a nested loop over it under a LIMIT).
 */
function activeJobsOfNode(db: DbOrTx) {
  return db
    .select({ activeJobs: sql<number>`count(*)::int`.as('active_jobs') })
    .from(nodeClaims)
    .where(sql`${nodeClaims.nodeId} = ${nodes.id}`)
    .as('aj');
}
type ActiveJobs = ReturnType<typeof activeJobsOfNode>;

const ts = (d: Date) => sql`${d.toISOString()}::timestamptz`;

/** A number stored in a jsonb object, or null when absent or not a number (a bad value must not fail the query). */
const jsonNumber = (column: typeof nodes.pricing | typeof nodes.profile, key: string) =>
  sql`(case when jsonb_typeof(${column}->${key}::text) = 'number' then (${column}->>${key}::text)::float8 end)`;

/**
 * The hourly price in USD a node offers: its announced usd_equivalent when positive, else price_per_hour
 * (nodes price in CYXWIZ; the discovery mapper applies the same rule to NodePricing.usd_equivalent).
 */
const usdPerHour = sql<number>`coalesce(nullif(greatest(${jsonNumber(nodes.pricing, 'usd_equivalent')}, 0), 0), ${nodes.pricePerHour})`;

const isOnline = (live: Liveness) => sql<boolean>`(${nodes.status} = 'online' and ${nodes.lastHeartbeat} > ${ts(live.onlineSince)})`;

function expressions(live: Liveness, aj: ActiveJobs) {
  const online = isOnline(live);
  const banned = sql<boolean>`(${nodes.bannedUntil} is not null and ${nodes.bannedUntil} > ${ts(live.now)})`;
  /** Held whole by a live reservation: unavailable to everyone else until it ends. */
  const reserved = sql<boolean>`(${nodes.reservedBy} is not null)`;
  const activeJobs = sql<number>`${aj.activeJobs}`;
  /** Jobs the node could take now: capacity − claims when live, not banned and not reserved, else 0. */
  const freeCapacity = sql<number>`(case when ${online} and not ${banned} and not ${reserved} then greatest(${nodes.capacity} - ${activeJobs}, 0) else 0 end)`;
  return { online, banned, reserved, activeJobs, freeCapacity };
}
type Expressions = ReturnType<typeof expressions>;

function hasDevice(device: Exclude<DeviceType, 'UNKNOWN'>): SQL {
  const listed = sql`${device}::text = any(${nodes.deviceTypes})`;
  return device === 'CPU' ? sql`(${listed} or ${nodes.ramTotal} > 0)` : listed;
}

/**
 * Some device of `type` offers `bytes`: its VRAM when it reports VRAM, else its memory (as deviceMemory()).
 * A jsonpath over nodes.devices, passed as a parameter (an enum name and an integer, nothing from the
 * client's text); jsonpath is much cheaper per row than expanding the array in a subquery.
 */
function deviceWithMemory(type: Exclude<DeviceType, 'UNKNOWN'> | 'accelerator', bytes: number): SQL {
  const kind = type === 'accelerator' ? '@.deviceType != "CPU" && @.deviceType != "UNKNOWN"' : `@.deviceType == "${type}"`;
  const path = `$[*] ? (${kind} && ((@.vramTotal > 0 && @.vramTotal >= ${bytes}) || (!(@.vramTotal > 0) && @.memoryTotal >= ${bytes})))`;
  return sql`${nodes.devices} @? ${path}::jsonpath`;
}

function deviceMemoryAtLeast(bytes: number, device: NodeFilter['device']): SQL {
  // min_vram without a device type: the memory of an accelerator (GPU), not of a CPU device.
  if (!device) return and(gte(nodes.maxDeviceMemory, bytes), deviceWithMemory('accelerator', bytes))!;
  // A CPU job's memory is RAM unless the node reports a CPU device with more.
  if (device === 'CPU') return sql`(${nodes.ramTotal} >= ${bytes} or ${deviceWithMemory('CPU', bytes)})`;
  // The plain column first: it rules most nodes out before the per-device check.
  return and(gte(nodes.maxDeviceMemory, bytes), deviceWithMemory(device, bytes))!;
}

function conditions(f: NodeFilter, e: Expressions): SQL | undefined {
  const lowerRegion = sql`lower(${nodes.region})`;
  return and(
    f.onlineOnly || f.availableOnly ? e.online : undefined,
    // A reserved node is live but not on offer: online-only listings (the Engine's browse list) leave it out.
    f.onlineOnly || f.availableOnly ? sql`not ${e.reserved}` : undefined,
    // A bare record (a heartbeat from an id this server did not know) has no endpoint until the node registers:
    // nothing can reach or reserve it, so it is not on offer.
    f.onlineOnly || f.availableOnly ? sql`${nodes.port} > 0` : undefined,
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

/** Key expressions of an order and their SQL types, most significant first; the node id breaks ties after them. */
function sortKeys(key: DiscoverySort, e: Expressions): { expr: SQL; type: 'float8' | 'int' }[] {
  switch (key) {
    case 'price':
      return [{ expr: sql`${nodes.pricePerHour}`, type: 'float8' }];
    case 'performance':
      return [{ expr: sql`${nodes.computeScore}`, type: 'float8' }];
    case 'reputation':
      return [{ expr: sql`${nodes.reputation}`, type: 'float8' }];
    case 'availability':
      // Free capacity, then the id: no key that moves with every heartbeat, or a page boundary would skip
      // every node that beat since the previous page was read.
      return [{ expr: e.freeCapacity, type: 'int' }];
  }
}

/** Price is cheapest first; performance, reputation and availability are best first. */
const naturallyAscending = (key: DiscoverySort) => key === 'price';

/** Cursor key values of an order, as JSON carries them. */
const KEY_SHAPES: Record<DiscoverySort, ('number' | 'integer')[]> = {
  price: ['number'],
  performance: ['number'],
  reputation: ['number'],
  availability: ['integer'],
};

const INT4_MAX = 2 ** 31 - 1;

/** Whether `keys` have the shape of a cursor of order `key` (a token from a client must be checked). */
export function isCursorFor(key: DiscoverySort, keys: unknown[]): boolean {
  const shapes = KEY_SHAPES[key];
  return (
    keys.length === shapes.length &&
    keys.every(
      (v, i) => typeof v === 'number' && (shapes[i] === 'integer' ? Number.isInteger(v) && Math.abs(v) <= INT4_MAX : Number.isFinite(v)),
    )
  );
}

/**
 * The nodes matching `filter` as narrow rows — id, price, preferred-region flag and the sort key k0 —
 * so that ordering and counting never carry whole rows (devices, profile, pricing).
 */
function narrowMatches(db: DbOrTx, filter: NodeFilter, sort: SortOrder, live: Liveness, after?: Cursor) {
  const aj = activeJobsOfNode(db);
  const e = expressions(live, aj);
  const keys = sortKeys(sort.key, e);
  const regionMatch = sort.preferredRegion
    ? sql<boolean>`position(${sort.preferredRegion} in lower(${nodes.region})) > 0`
    : sql<boolean>`false`;
  const query = db
    .select({
      id: nodes.id,
      price: sql<number>`${nodes.pricePerHour}`.as('price'),
      regionMatch: regionMatch.as('region_match'),
      k0: keys[0].expr.as('k0'),
    })
    .from(nodes)
    .$dynamic();
  const needsActiveJobs = filter.availableOnly || sort.key === 'availability';
  return (needsActiveJobs ? query.crossJoinLateral(aj) : query).where(and(conditions(filter, e), after && keysetAfter(sort, keys, after)));
}

/** Rows after `after` in `sort` order (keyset paging). */
function keysetAfter(sort: SortOrder, keys: ReturnType<typeof sortKeys>, after: Cursor): SQL {
  const values = after.keys.map((v, i) => sql`${v}::${sql.raw(keys[i].type)}`);
  const row = sql.join([...keys.map((k) => k.expr), sql`${nodes.id}`], sql`, `);
  const bound = sql.join([...values, sql`${after.id}::text`], sql`, `);
  // The redundant bound on the first key lets Postgres start an index scan on it (price) at the cursor.
  return ascending(sort)
    ? sql`(${row}) > (${bound}) and ${keys[0].expr} >= ${values[0]}`
    : sql`(${row}) < (${bound}) and ${keys[0].expr} <= ${values[0]}`;
}

const ascending = (sort: SortOrder) => naturallyAscending(sort.key) !== sort.reversed;

/**
 * ORDER BY over the columns of {@link narrowMatches} (of `table` when given): the preferred region first,
 * then the keys, then the id, all in the order's direction (so reversing an order reverses the list exactly).
 */
function orderOfNarrow(sort: SortOrder, table?: string): SQL[] {
  const column = (name: string) => (table ? sql`${sql.identifier(table)}.${sql.identifier(name)}` : sql.identifier(name));
  const direction = ascending(sort) ? sql.raw('asc') : sql.raw('desc');
  return [
    ...(sort.preferredRegion ? [sql`${column('region_match')} desc`] : []),
    sql`${column('k0')} ${direction}`,
    sql`${column('id')} ${direction}`,
  ];
}

/**
 * Up to `limit` nodes matching `filter` in `sort` order, starting after `after` (keyset paging: a node whose
 * sort key does not change while a client pages is returned exactly once).
 */
export async function discoverNodes(
  db: DbOrTx,
  q: { filter: NodeFilter; sort: SortOrder; after?: Cursor; limit: number; live: Liveness },
): Promise<ListedNode[]> {
  const page = narrowMatches(db, q.filter, q.sort, q.live, q.after)
    .orderBy(...orderOfNarrow(q.sort))
    .limit(q.limit)
    .as('page');
  const rows = await db
    .select({ node: nodes, online: isOnline(q.live), k0: sql<number>`${page.k0}::float8` })
    .from(page)
    .innerJoin(nodes, eq(nodes.id, page.id))
    .orderBy(...orderOfNarrow(q.sort, 'page'));
  return rows.map((r) => ({
    ...r.node,
    online: r.online,
    cursor: { keys: [r.k0], id: r.node.id },
  }));
}

/**
 * The first `limit` nodes matching `filter` in `sort` order, and how many match at what prices, from one
 * pass over the nodes (so the statistics describe exactly the set the page was taken from); whole rows are
 * then read for the page only.
 */
export async function findMatches(
  db: DbOrTx,
  q: { filter: NodeFilter; sort: SortOrder; limit: number; live: Liveness },
): Promise<MatchStats & { nodes: DiscoveredNode[] }> {
  const matches = narrowMatches(db, q.filter, q.sort, q.live);
  const result = await db.execute<{ total: number; avg_price: number; min_price: number; max_price: number; ids: string[] }>(sql`
    with m as (${matches})
    select s.total, s.avg_price, s.min_price, s.max_price, p.ids
      from (select count(*)::int as total,
                   coalesce(avg(price), 0)::float8 as avg_price,
                   coalesce(min(price), 0)::float8 as min_price,
                   coalesce(max(price), 0)::float8 as max_price
              from m) s,
           (select coalesce(array_agg(id order by ${sql.join(orderOfNarrow(q.sort), sql`, `)}), '{}') as ids
              from (select * from m order by ${sql.join(orderOfNarrow(q.sort), sql`, `)} limit ${q.limit}) top) p`);
  const { total, avg_price, min_price, max_price, ids } = result.rows[0];
  const rows = ids.length
    ? await db.select({ node: nodes, online: isOnline(q.live) }).from(nodes).where(inArray(nodes.id, ids))
    : [];
  const position = new Map(ids.map((id, i) => [id, i]));
  const found = rows.map((r) => ({ ...r.node, online: r.online })).sort((a, b) => position.get(a.id)! - position.get(b.id)!);
  return { total, avgPrice: avg_price, minPrice: min_price, maxPrice: max_price, nodes: found };
}

/** One node as discovery sees it, or undefined. */
export async function getDiscoveredNode(db: DbOrTx, id: string, live: Liveness): Promise<DiscoveredNode | undefined> {
  const [row] = await db.select({ node: nodes, online: isOnline(live) }).from(nodes).where(eq(nodes.id, id));
  return row && { ...row.node, online: row.online };
}

/** Counts of the nodes matching `filter`, and the network's live price and compute, in one scan. */
export async function listStats(db: DbOrTx, filter: NodeFilter, live: Liveness): Promise<ListStats> {
  const aj = activeJobsOfNode(db);
  const e = expressions(live, aj);
  const match = conditions(filter, e) ?? sql`true`;
  const query = db
    .select({
      total: sql<number>`count(*) filter (where ${match})::int`,
      online: sql<number>`count(*) filter (where ${match} and ${e.online})::int`,
      // Registered nodes only: a bare record (port 0, from a heartbeat of an unknown id) offers nothing.
      networkAvgPrice: sql<number>`coalesce(avg(${nodes.pricePerHour}) filter (where ${e.online} and ${nodes.port} > 0), 0)::float8`,
      networkTotalCompute: sql<number>`coalesce(sum(${nodes.computeScore}) filter (where ${e.online} and ${nodes.port} > 0), 0)::float8`,
    })
    .from(nodes)
    .$dynamic();
  const [row] = await (filter.availableOnly ? query.crossJoinLateral(aj) : query);
  return row;
}
