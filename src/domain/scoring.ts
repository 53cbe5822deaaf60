import type { DeviceType } from './job';
import { fitsJob, type DeviceCapsSpec } from './node';
import { estimateCostUnits } from './pricing';

/** What matching knows about a node. */
export interface Candidate {
  id: string;
  devices: Pick<DeviceCapsSpec, 'deviceType' | 'vramTotal' | 'memoryTotal'>[];
  ramTotal: number;
  computeScore: number;
  /** 0..1 */
  reputation: number;
  activeJobs: number;
  /** Jobs the node runs at once. */
  capacity: number;
  region: string;
  pricePerHour: number;
  online: boolean;
  bannedUntil: Date | null;
  /** The reservation holding the whole node, if any: it takes no jobs until the reservation ends. */
  reservedBy?: string | null;
  /**
   * The largest memory per device type (bytes), and RAM under 'CPU'. Derived from `devices` and `ramTotal`;
   * a registry that keeps candidates between matches fills it once (see memoryByType).
   */
  memory?: Partial<Record<DeviceType, number>>;
}

/** The largest memory a node offers per device type; CPU jobs run in RAM or on a CPU device. */
export function memoryByType(c: Pick<Candidate, 'devices' | 'ramTotal'>): Partial<Record<DeviceType, number>> {
  const out: Partial<Record<DeviceType, number>> = c.ramTotal > 0 ? { CPU: c.ramTotal } : {};
  let any = c.ramTotal;
  for (const d of c.devices) {
    const mem = d.vramTotal > 0 ? d.vramTotal : d.memoryTotal;
    if (mem > (out[d.deviceType] ?? -1)) out[d.deviceType] = mem;
    if (mem > any) any = mem;
  }
  out.UNKNOWN = any;
  return out;
}

export interface MatchCriteria {
  requiredDevice: DeviceType;
  minMemory: number;
  excludeNodeIds: ReadonlySet<string>;
  preferredRegion?: string;
  allowedRegions?: readonly string[];
  blockedRegions?: readonly string[];
  maxPricePerHour?: number;
  /** What the job pays: a node whose price for the estimated duration exceeds it cannot take the job. */
  budget?: { units: bigint; durationSeconds: number; decimals: number };
  now: Date;
}

/**
 * Weights of the match score (sum 1). Each part is in 0..1:
 * - fit: how snugly the job fills the node's best matching device (big nodes stay free for big jobs), blended
 *   with the node's compute score;
 * - reputation: the node's 0..1 reputation;
 * - load: the share of its capacity that is free;
 * - region: 1 in the preferred region, 0.5 without a preference, 0 elsewhere;
 * - price: 1 for the cheapest eligible node, 0 for the dearest.
 */
export const SCORE_WEIGHTS = { fit: 0.3, reputation: 0.3, load: 0.2, region: 0.1, price: 0.1 } as const;

export interface Ranked {
  nodeId: string;
  score: number;
  parts: Record<keyof typeof SCORE_WEIGHTS, number>;
}

export interface Rejected {
  nodeId: string;
  reason: string;
}

const regionEq = (a: string, b: string) => a.trim().toLowerCase() === b.trim().toLowerCase();

/** Why a node cannot take the job, or undefined when it can. */
export function rejectionReason(c: Candidate, m: MatchCriteria): string | undefined {
  if (m.excludeNodeIds.has(c.id)) return 'already failed this job';
  if (!c.online) return 'offline';
  if (c.reservedBy) return `reserved (reservation ${c.reservedBy})`;
  if (c.bannedUntil && c.bannedUntil > m.now) return `banned until ${c.bannedUntil.toISOString()}`;
  if (c.activeJobs >= c.capacity) return `at capacity (${c.activeJobs}/${c.capacity} jobs)`;
  const fit = fitsJob({ devices: c.devices, ramTotal: c.ramTotal }, { requiredDevice: m.requiredDevice, estimatedMemory: m.minMemory });
  if (!fit.fits) return fit.reason;
  if (m.blockedRegions?.some((r) => regionEq(r, c.region))) return `region ${c.region} is blocked`;
  if (m.allowedRegions?.length && !m.allowedRegions.some((r) => regionEq(r, c.region))) return `region ${c.region || '(none)'} is not allowed`;
  if (m.maxPricePerHour !== undefined && m.maxPricePerHour > 0 && c.pricePerHour > m.maxPricePerHour) {
    return `price ${c.pricePerHour}/h above ${m.maxPricePerHour}/h`;
  }
  if (m.budget && m.budget.durationSeconds > 0) {
    const cost = estimateCostUnits(c.pricePerHour, m.budget.durationSeconds, m.budget.decimals);
    if (cost > m.budget.units) return `over budget (${cost} units for ${m.budget.durationSeconds} s, the job pays ${m.budget.units})`;
  }
  return undefined;
}


export interface Ranking {
  /** The best eligible nodes, best first (at most `top`). */
  ranked: Ranked[];
  /** Some of the nodes that cannot take the job, with why (at most `rejectedSample`). */
  rejected: Rejected[];
  /** How many nodes were passed over for each kind of reason. */
  rejectedCounts: Record<string, number>;
  eligible: number;
}

/**
 * The same decision as rejectionReason, without building strings: returns the kind of reason (as counted in
 * rejectedCounts) or undefined. Runs once per node per match, so it avoids allocation; the budget becomes one
 * price ceiling, checked exactly only near it.
 */
function fastCheck(m: MatchCriteria): (c: Candidate) => string | undefined {
  const now = m.now.getTime();
  const device = m.requiredDevice;
  const blocked = m.blockedRegions?.length ? new Set(m.blockedRegions.map((r) => r.trim().toLowerCase())) : undefined;
  const allowed = m.allowedRegions?.length ? new Set(m.allowedRegions.map((r) => r.trim().toLowerCase())) : undefined;
  const maxPrice = m.maxPricePerHour !== undefined && m.maxPricePerHour > 0 ? m.maxPricePerHour : Infinity;
  const budget = m.budget && m.budget.durationSeconds > 0 ? m.budget : undefined;
  const ceiling = budget
    ? (Number(budget.units) * 3600) / (Math.max(budget.durationSeconds, 600) * 10 ** budget.decimals)
    : Infinity;
  return (c) => {
    if (m.excludeNodeIds.has(c.id)) return 'already failed this job';
    if (!c.online) return 'offline';
    if (c.reservedBy) return 'reserved';
    if (c.bannedUntil && c.bannedUntil.getTime() > now) return 'banned';
    if (c.activeJobs >= c.capacity) return 'at capacity';
    const mem = (c.memory ?? memoryByType(c))[device];
    if (mem === undefined) return `no ${device} device`;
    if (mem < m.minMemory) return 'not enough memory';
    if (blocked || allowed) {
      const region = c.region.trim().toLowerCase();
      if (blocked?.has(region)) return 'region blocked';
      if (allowed && !allowed.has(region)) return 'region not allowed';
    }
    if (c.pricePerHour > maxPrice) return 'price above limit';
    if (budget && c.pricePerHour > ceiling * 0.999999) {
      if (estimateCostUnits(c.pricePerHour, budget.durationSeconds, budget.decimals) > budget.units) return 'over budget';
    }
    return undefined;
  };
}

/**
 * Ranks the nodes that can take a job and explains the rest: one pass to filter (and find the price range),
 * one to score, keeping only the best `top` (no full sort), so it stays linear in the number of nodes. Ties
 * are broken by node id so the result is deterministic.
 */
export function rankCandidates(
  candidates: readonly Candidate[],
  m: MatchCriteria,
  limits: { top?: number; rejectedSample?: number } = {},
): Ranking {
  const top = limits.top ?? 10;
  const sample = limits.rejectedSample ?? 20;
  const rejected: Rejected[] = [];
  const rejectedCounts: Record<string, number> = {};
  const eligible: Candidate[] = [];
  let minPrice = Infinity;
  let maxPrice = -Infinity;
  const fast = fastCheck(m);
  for (const c of candidates) {
    const kind = fast(c);
    if (kind) {
      rejectedCounts[kind] = (rejectedCounts[kind] ?? 0) + 1;
      if (rejected.length < sample) rejected.push({ nodeId: c.id, reason: rejectionReason(c, m) ?? kind });
      continue;
    }
    eligible.push(c);
    if (c.pricePerHour < minPrice) minPrice = c.pricePerHour;
    if (c.pricePerHour > maxPrice) maxPrice = c.pricePerHour;
  }
  const better = (a: Ranked, b: Ranked) => a.score > b.score || (a.score === b.score && a.nodeId < b.nodeId);
  const preferred = m.preferredRegion?.trim().toLowerCase();
  const priceSpan = maxPrice - minPrice;
  const W = SCORE_WEIGHTS;
  const best: Ranked[] = [];
  // Scores are computed without allocating; a node's parts are built only when it makes the top.
  const partsOf = (c: Candidate) => {
    const memory = (c.memory ?? memoryByType(c))[m.requiredDevice] ?? 0;
    return {
      fit: 0.5 * (m.minMemory > 0 && memory > 0 ? Math.min(1, m.minMemory / memory) : 0.5) + 0.5 * Math.min(1, c.computeScore / 2000),
      reputation: Math.min(1, Math.max(0, c.reputation)),
      load: c.capacity > 0 ? 1 - c.activeJobs / c.capacity : 0,
      region: preferred ? (c.region.trim().toLowerCase() === preferred ? 1 : 0) : 0.5,
      price: priceSpan > 0 ? (maxPrice - c.pricePerHour) / priceSpan : 1,
    };
  };
  for (const c of eligible) {
    const memory = (c.memory ?? memoryByType(c))[m.requiredDevice] ?? 0;
    const fit = 0.5 * (m.minMemory > 0 && memory > 0 ? Math.min(1, m.minMemory / memory) : 0.5) + 0.5 * Math.min(1, c.computeScore / 2000);
    const reputation = c.reputation < 0 ? 0 : c.reputation > 1 ? 1 : c.reputation;
    const load = c.capacity > 0 ? 1 - c.activeJobs / c.capacity : 0;
    const region = preferred ? (c.region.trim().toLowerCase() === preferred ? 1 : 0) : 0.5;
    const price = priceSpan > 0 ? (maxPrice - c.pricePerHour) / priceSpan : 1;
    const score = Math.round((W.fit * fit + W.reputation * reputation + W.load * load + W.region * region + W.price * price) * 10_000) / 10_000;
    if (best.length === top && !(score > best[top - 1].score || (score === best[top - 1].score && c.id < best[top - 1].nodeId))) continue;
    const entry: Ranked = { nodeId: c.id, score, parts: partsOf(c) };
    if (best.length < top) best.push(entry);
    else best[top - 1] = entry;
    for (let i = best.length - 1; i > 0 && better(best[i], best[i - 1]); i--) [best[i], best[i - 1]] = [best[i - 1], best[i]];
  }
  return { ranked: best, rejected, rejectedCounts, eligible: eligible.length };
}
