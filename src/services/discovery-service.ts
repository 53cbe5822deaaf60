import type { Db } from '../db/client';
import * as discoveryRepo from '../db/discovery-repo';
import type { Cursor, DiscoverySort, Liveness, NodeFilter } from '../db/discovery-repo';
import { NotFoundError, ValidationError } from '../domain/errors';
import { isId } from '../domain/ids';
import type { DeviceType } from '../domain/job';
import { nodeStats, type NodeStats } from '../domain/node-stats';

export type { DiscoverySort } from '../db/discovery-repo';

/** A node as discovery answers it: its row, its liveness and its track record at the query's instant. */
export type DiscoveredNode = discoveryRepo.DiscoveredNode & NodeStats;
type ListedNode = discoveryRepo.ListedNode & NodeStats;

/*
 * How discovery answers (and where it departs from the original server, CYXWIZ-PROTOCOL.md §4.7, §6.7, §6.16):
 * - Reputation is 0..1 in storage, on the wire and in min_reputation (a value above 1 is refused, not
 *   silently matched against a 0..100 scale).
 * - is_online is liveness only: status online and a heartbeat within config.nodes.offlineAfterMs. A busy or
 *   banned node is online; FindNodes leaves it out (it returns only nodes a job could be placed on now), and
 *   the availability order puts it last (free capacity 0).
 * - A node held by a live reservation is unavailable until the reservation ends, whatever its heartbeats say
 *   (the original flipped it back on the next heartbeat, §6.4): FindNodes and online_only ListNodes leave it
 *   out; without online_only it is listed with free capacity 0.
 * - Every filter of the request is honoured. Regions compare ignoring case; filter_region, allowed_regions and
 *   blocked_regions are equality. preferred_region is a preference, not a filter: nodes whose region contains
 *   it rank first (the original's substring match, without excluding anyone).
 * - Prices are each node's effective hourly price (announced, else the list price), the one jobs are charged.
 *   max_price_usd uses the announced usd_equivalent, else that price. preferred_billing filters on the announced
 *   billing model, a node that announced none billing hourly; HOURLY (0) cannot be asked for, as it is the
 *   proto3 default meaning "any".
 * - ListNodes pages with an opaque keyset token (sort key and id of the last node). A node whose sort key does
 *   not change while a client pages is seen exactly once; in the availability order the key (free capacity)
 *   moves with jobs, never with heartbeats, so only a node that takes or ends a job can cross a page boundary. total_count and online_count count the
 *   filtered nodes; network_avg_price and network_total_compute describe every live node in the network.
 * - FindNodes statistics (total_matching, avg/min/max price) cover every match before max_results truncates.
 * - Busy capacity is the node's capacity claims (node_claims), exactly what matching counts: a node whose every
 *   unit is claimed is not in FindNodes and sorts with free capacity 0, even before its job's row says assigned.
 * - total_compute_hours and uptime_percentage come from counters on the node's row (domain/node-stats.ts has
 *   the definitions); the original server sent 0 and a fixed 100.
 */

export interface DiscoveryServiceDeps {
  db: Db;
  /** A node is online while its last heartbeat is younger than this (config.nodes.offlineAfterMs). */
  offlineAfterMs: number;
  /** Discovery answers whose scan took at least this long are reused (default SLOW_SCAN_MS)… */
  slowScanMs?: number;
  /** …for this long (default REUSE_MS). */
  reuseMs?: number;
}

/**
 * ListNodes' counts (total_count, online and the network's price and compute) and FindNodes' matches take a
 * scan of every node: a few ms on a small network, tens of ms at 20k nodes and more at 100k. When a scan took
 * at least SLOW_SCAN_MS, its answer is reused for REUSE_MS by identical requests (the next pages' counts of
 * the same listing, other Engines browsing the same way), and identical requests meanwhile share one scan.
 * A small network is always scanned afresh. ListNodes' pages themselves are always read afresh.
 */
export const SLOW_SCAN_MS = 25;
export const REUSE_MS = 1000;
/** Distinct requests whose answers are kept (the oldest goes first). */
const KEPT_ANSWERS = 256;
/** Distinct requests whose last scan time is remembered (numbers only). */
const KEPT_SCAN_TIMES = 10_000;

interface KeptAnswer<T> {
  startedAt: number;
  /** How long the scan took, once it is done. */
  scanMs?: number;
  /** How long the scan before it took (0 if none). */
  previousScanMs: number;
  answer: Promise<T>;
}

/**
 * Answers by request key, reused within `reuseMs` when their scan took at least `slowMs` (see SLOW_SCAN_MS). An
 * answer is kept no longer than that (a few hundred node rows each: kept for good, distinct requests would pin
 * gigabytes); only how long its scan took stays, for the next request of the same key.
 */
function reuseSlowAnswers<T>(slowMs: number, reuseMs: number) {
  const byKey = new Map<string, KeptAnswer<T>>();
  const scanTimes = new Map<string, number>();
  return (key: string, now: number, scan: () => Promise<T>): Promise<T> => {
    // The map is in the order of the scans: the stale ones are at its front.
    for (const [k, old] of byKey) {
      if (now - old.startedAt < reuseMs) break;
      byKey.delete(k);
      scanTimes.delete(k);
      scanTimes.set(k, old.scanMs ?? old.previousScanMs);
      if (scanTimes.size > KEPT_SCAN_TIMES) scanTimes.delete(scanTimes.keys().next().value!);
    }
    const kept = byKey.get(key);
    // A scan still on its way counts as slow when the one before it was.
    if (kept && (kept.scanMs ?? kept.previousScanMs) >= slowMs) return kept.answer;
    const entry: KeptAnswer<T> = { startedAt: now, previousScanMs: kept?.scanMs ?? kept?.previousScanMs ?? scanTimes.get(key) ?? 0, answer: scan() };
    entry.answer.then(
      () => (entry.scanMs = Date.now() - now),
      () => byKey.get(key) === entry && byKey.delete(key),
    );
    byKey.delete(key); // re-inserted last: the map's order is the order of the scans
    if (byKey.size >= KEPT_ANSWERS) byKey.delete(byKey.keys().next().value!);
    byKey.set(key, entry);
    return entry.answer;
  };
}

export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 500;
export const DEFAULT_MAX_RESULTS = 50;
export const MAX_RESULTS = 500;

/** ListNodes. Absent numbers do not filter; regions are compared ignoring case. */
export interface ListNodesQuery {
  /** Default 50, at most 500 (larger values are capped). */
  pageSize?: number;
  /** '' for the first page, else the `nextPageToken` of the previous one. */
  pageToken: string;
  onlineOnly: boolean;
  device: DeviceType;
  region: string;
  minPricePerHour?: number;
  maxPricePerHour?: number;
  sort: DiscoverySort;
  /**
   * sort_descending: true is descending whatever the key; false (proto3's default, also "not set") is the key's
   * natural direction: price cheapest first, performance, reputation and availability best first.
   */
  descending: boolean;
}

export interface NodePage extends discoveryRepo.ListStats {
  nodes: ListedNode[];
  /** '' on the last page. */
  nextPageToken: string;
}

/** FindNodes. Absent numbers do not filter; regions are compared ignoring case. */
export interface FindNodesQuery {
  device: DeviceType;
  /** RAM, bytes. */
  minRam?: number;
  /** Memory of one device of the required type (of any accelerator when none is required), bytes. */
  minDeviceMemory?: number;
  /** 0..1. */
  minReputation?: number;
  minComputeScore?: number;
  minStake?: number;
  /** Nodes whose region contains this rank first; it excludes no node. */
  preferredRegion: string;
  allowedRegions: string[];
  blockedRegions: string[];
  maxPricePerHour?: number;
  maxPriceUsd?: number;
  /** NodePricing.BillingModel the node announced; nodes that announced none bill hourly (0). */
  billingModel?: number;
  requireFreeTier: boolean;
  /** Default 50, at most 500 (larger values are capped). */
  maxResults?: number;
  sort: DiscoverySort;
}

export interface NodeMatches {
  nodes: DiscoveredNode[];
  /** Matching nodes before truncation to maxResults. */
  totalMatching: number;
  /** Over every matching node (not only those returned); 0 when none match. */
  avgPricePerHour: number;
  minPricePerHour: number;
  maxPricePerHour: number;
}

const TOKEN_VERSION = 1;
const SORT_CODES: Record<DiscoverySort, string> = { price: 'p', performance: 'c', reputation: 'r', availability: 'a' };

/** An opaque ListNodes page token: the sort it belongs to and the position after the page's last node. */
function encodePageToken(sort: DiscoverySort, descending: boolean, cursor: Cursor): string {
  return Buffer.from(JSON.stringify([TOKEN_VERSION, SORT_CODES[sort], descending ? 1 : 0, cursor.keys, cursor.id])).toString('base64url');
}

/** @throws ValidationError (page_token) for a token this server did not issue or one of another sort order. */
function decodePageToken(token: string, sort: DiscoverySort, descending: boolean): Cursor {
  const invalid = () => new ValidationError('page_token', 'is not a token this server issued');
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
  } catch {
    throw invalid();
  }
  if (!Array.isArray(parsed) || parsed.length !== 5 || parsed[0] !== TOKEN_VERSION) throw invalid();
  const [, sortCode, reversed, keys, id] = parsed as [unknown, unknown, unknown, unknown, unknown];
  if (!Array.isArray(keys) || typeof id !== 'string' || !isId(id)) throw invalid();
  if (sortCode !== SORT_CODES[sort] || reversed !== (descending ? 1 : 0)) {
    throw new ValidationError('page_token', 'belongs to another sort order; start again without a token');
  }
  if (!discoveryRepo.isCursorFor(sort, keys)) throw invalid();
  return { keys: keys as number[], id };
}

const lower = (s: string) => s.trim().toLowerCase();
const positive = (n: number | undefined) => (n !== undefined && n > 0 ? n : undefined);
const deviceFilter = (d: DeviceType) => (d === 'UNKNOWN' ? undefined : d);

/** NodeDiscoveryService use-cases: what Engines browse before they reserve a node or submit a job. */
export function createDiscoveryService(deps: DiscoveryServiceDeps) {
  const { db } = deps;
  const slowMs = deps.slowScanMs ?? SLOW_SCAN_MS;
  const reuseMs = deps.reuseMs ?? REUSE_MS;
  const listStats = reuseSlowAnswers<discoveryRepo.ListStats>(slowMs, reuseMs);
  const findMatches = reuseSlowAnswers<Awaited<ReturnType<typeof discoveryRepo.findMatches>>>(slowMs, reuseMs);

  function liveness(): Liveness {
    const now = Date.now();
    return { now: new Date(now), onlineSince: new Date(now - deps.offlineAfterMs) };
  }

  /** The node with its compute hours and uptime at the query's instant. */
  function withStats<T extends discoveryRepo.DiscoveredNode>(node: T, live: Liveness): T & NodeStats {
    return { ...node, ...nodeStats(node, { now: live.now, online: node.online }) };
  }

  /**
   * One page of nodes with the network's counts. is_online is liveness alone; whether a node can take a job
   * now (not banned, free capacity) shows in the availability order, where such nodes come first.
   * @throws ValidationError (page_token).
   */
  async function list(q: ListNodesQuery): Promise<NodePage> {
    const after = q.pageToken ? decodePageToken(q.pageToken, q.sort, q.descending) : undefined;
    const limit = Math.min(q.pageSize || DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
    const filter: NodeFilter = {
      onlineOnly: q.onlineOnly,
      device: deviceFilter(q.device),
      region: q.region.trim() ? lower(q.region) : undefined,
      minPricePerHour: positive(q.minPricePerHour),
      maxPricePerHour: positive(q.maxPricePerHour),
    };
    const live = liveness();
    // Only price runs ascending by nature: descending reverses it and leaves the others as they are.
    const sort = { key: q.sort, reversed: q.descending && q.sort === 'price' };
    const [rows, stats] = await Promise.all([
      // One row more than the page tells whether another page follows.
      discoveryRepo.discoverNodes(db, { filter, sort, after, limit: limit + 1, live }),
      listStats(JSON.stringify(filter), live.now.getTime(), () => discoveryRepo.listStats(db, filter, live)),
    ]);
    const page = rows.slice(0, limit);
    const nextPageToken =
      rows.length > limit ? encodePageToken(q.sort, q.descending, page[page.length - 1].cursor) : '';
    return { ...stats, nodes: page.map((n) => withStats(n, live)), nextPageToken };
  }

  /**
   * Nodes a job could be placed on now (live, not banned, with free capacity) that meet every condition of
   * the query, best first, with the price range of all of them.
   */
  async function find(q: FindNodesQuery): Promise<NodeMatches> {
    const filter: NodeFilter = {
      availableOnly: true,
      device: deviceFilter(q.device),
      minRam: positive(q.minRam),
      minDeviceMemory: positive(q.minDeviceMemory),
      minReputation: positive(q.minReputation),
      minComputeScore: positive(q.minComputeScore),
      minStake: positive(q.minStake),
      allowedRegions: q.allowedRegions.map(lower).filter(Boolean),
      blockedRegions: q.blockedRegions.map(lower).filter(Boolean),
      maxPricePerHour: positive(q.maxPricePerHour),
      maxPriceUsd: positive(q.maxPriceUsd),
      billingModel: positive(q.billingModel),
      freeTierOnly: q.requireFreeTier,
    };
    const limit = Math.min(q.maxResults || DEFAULT_MAX_RESULTS, MAX_RESULTS);
    const live = liveness();
    const preferredRegion = q.preferredRegion.trim() ? lower(q.preferredRegion) : undefined;
    const query = { filter, sort: { key: q.sort, reversed: false, preferredRegion }, limit };
    const found = await findMatches(JSON.stringify(query), live.now.getTime(), () => discoveryRepo.findMatches(db, { ...query, live }));
    return {
      nodes: found.nodes.map((n) => withStats(n, live)),
      totalMatching: found.total,
      avgPricePerHour: found.avgPrice,
      minPricePerHour: found.minPrice,
      maxPricePerHour: found.maxPrice,
    };
  }

  /** @throws NotFoundError when no node has this id. */
  async function get(nodeId: string): Promise<DiscoveredNode> {
    const live = liveness();
    const node = await discoveryRepo.getDiscoveredNode(db, nodeId, live);
    if (!node) throw new NotFoundError('node', nodeId);
    return withStats(node, live);
  }

  return { list, find, get };
}

export type DiscoveryService = ReturnType<typeof createDiscoveryService>;
