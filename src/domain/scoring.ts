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

/** The memory of the node's device that would run the job. */
function bestMemory(c: Candidate, device: DeviceType): number {
  const pick = c.devices.filter((d) => device === 'UNKNOWN' || d.deviceType === device);
  const mem = Math.max(0, ...pick.map((d) => (d.vramTotal > 0 ? d.vramTotal : d.memoryTotal)));
  return device === 'CPU' || device === 'UNKNOWN' ? Math.max(mem, c.ramTotal) : mem;
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

/** The kind of a rejection reason, for counting ("at capacity (1/1 jobs)" → "at capacity"). */
const reasonKind = (reason: string) => reason.replace(/\s*\(.*$/, '').replace(/ \d.*$/, '').replace(/^(region) .*/, '$1');

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
  for (const c of candidates) {
    const reason = rejectionReason(c, m);
    if (reason) {
      const kind = reasonKind(reason);
      rejectedCounts[kind] = (rejectedCounts[kind] ?? 0) + 1;
      if (rejected.length < sample) rejected.push({ nodeId: c.id, reason });
      continue;
    }
    eligible.push(c);
    if (c.pricePerHour < minPrice) minPrice = c.pricePerHour;
    if (c.pricePerHour > maxPrice) maxPrice = c.pricePerHour;
  }
  const better = (a: Ranked, b: Ranked) => a.score > b.score || (a.score === b.score && a.nodeId < b.nodeId);
  const best: Ranked[] = [];
  for (const c of eligible) {
    const memory = bestMemory(c, m.requiredDevice);
    const snug = m.minMemory > 0 && memory > 0 ? Math.min(1, m.minMemory / memory) : 0.5;
    const parts = {
      fit: 0.5 * snug + 0.5 * Math.min(1, c.computeScore / 2000),
      reputation: Math.min(1, Math.max(0, c.reputation)),
      load: c.capacity > 0 ? 1 - c.activeJobs / c.capacity : 0,
      region: m.preferredRegion ? (regionEq(m.preferredRegion, c.region) ? 1 : 0) : 0.5,
      price: maxPrice > minPrice ? (maxPrice - c.pricePerHour) / (maxPrice - minPrice) : 1,
    };
    const score =
      Math.round(
        (SCORE_WEIGHTS.fit * parts.fit +
          SCORE_WEIGHTS.reputation * parts.reputation +
          SCORE_WEIGHTS.load * parts.load +
          SCORE_WEIGHTS.region * parts.region +
          SCORE_WEIGHTS.price * parts.price) *
          10_000,
      ) / 10_000;
    const entry = { nodeId: c.id, score, parts };
    if (best.length < top) {
      best.push(entry);
      for (let i = best.length - 1; i > 0 && better(best[i], best[i - 1]); i--) [best[i], best[i - 1]] = [best[i - 1], best[i]];
    } else if (better(entry, best[top - 1])) {
      best[top - 1] = entry;
      for (let i = top - 1; i > 0 && better(best[i], best[i - 1]); i--) [best[i], best[i - 1]] = [best[i - 1], best[i]];
    }
  }
  return { ranked: best, rejected, rejectedCounts, eligible: eligible.length };
}
