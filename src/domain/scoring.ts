import { DEVICE_TYPES, type DeviceType } from './job';
import { fitsJob, type DeviceCapsSpec } from './node';
import { estimateCostUnits, MINIMUM_BILLED_S } from './pricing';

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
  if (m.excludeNodeIds.has(c.id)) return 'failed or refused this job';
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
  if (m.budget) {
    const cost = estimateCostUnits(c.pricePerHour, m.budget.durationSeconds, m.budget.decimals);
    const billed = Math.max(m.budget.durationSeconds, MINIMUM_BILLED_S);
    if (cost > m.budget.units) return `over budget (${cost} units for ${billed} s, the job pays ${m.budget.units})`;
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
 * The highest hourly price a budget affords, as a float. estimateCostUnits charges whole micro-tokens per hour
 * (the price rounded to 6 decimals), so a price more than CEILING_SLACK below it always fits and one more than
 * CEILING_SLACK above it never does; only prices in between need the exact (bigint) check.
 */
function budgetCeiling(budget: NonNullable<MatchCriteria['budget']>): number {
  return (Number(budget.units) * 3600) / (Math.ceil(Math.max(budget.durationSeconds, MINIMUM_BILLED_S)) * 10 ** budget.decimals);
}
const CEILING_SLACK = 1e-6;

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
  const budget = m.budget;
  const ceiling = budget ? budgetCeiling(budget) : Infinity;
  return (c) => {
    if (m.excludeNodeIds.has(c.id)) return 'failed or refused this job';
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
    if (budget && c.pricePerHour > ceiling - CEILING_SLACK) {
      if (c.pricePerHour > ceiling + CEILING_SLACK) return 'over budget';
      if (estimateCostUnits(c.pricePerHour, budget.durationSeconds, budget.decimals) > budget.units) return 'over budget';
    }
    return undefined;
  };
}

/**
 * Ranks the nodes that can take a job and explains the rest: one pass to filter (and find the price range),
 * one to score, keeping only the best `top` (no full sort), so it stays linear in the number of nodes. Ties
 * are broken by node id so the result is deterministic. A CandidateTable gives the same result as the
 * Candidate objects it holds, several times faster (see rankTable).
 */
export function rankCandidates(
  candidates: readonly Candidate[] | CandidateTable,
  m: MatchCriteria,
  limits: { top?: number; rejectedSample?: number } = {},
): Ranking {
  if (candidates instanceof CandidateTable) return rankTable(candidates, m, limits);
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

/** No ban: compares below every instant. */
const NOT_BANNED = -Infinity;

/**
 * Candidates as columns (struct of arrays): what a match reads of each node sits in typed arrays, so ranking
 * 100k nodes walks a few contiguous arrays instead of 100k objects. Rows keep the order they were added in;
 * ids are unique. A registry that keeps candidates between matches (NodeCache) updates rows in place.
 */
export class CandidateTable {
  /** Rows in use (the arrays may be longer). */
  size = 0;
  ids: string[] = [];
  reservedBy: (string | null)[] = [];
  ramTotal: Float64Array;
  /** The largest memory per device type as memoryByType gives it; NaN where the node has none of that type. */
  memory: Record<DeviceType, Float64Array>;
  computeScore: Float64Array;
  reputation: Float64Array;
  activeJobs: Float64Array;
  capacity: Float64Array;
  pricePerHour: Float64Array;
  /** Epoch ms; -Infinity when not banned. */
  bannedUntil: Float64Array;
  /**
   * Epoch ms until which the node counts as online (the match's `now` must be before it): +Infinity or
   * -Infinity for a Candidate's `online`; a registry stores its last heartbeat plus the offline threshold, so
   * liveness is judged at each match's instant without touching the table.
   */
  onlineUntil: Float64Array;
  /** 1 when held by a reservation (reservedBy set). */
  reserved: Uint8Array;
  /** Index into `regions`. */
  region: Int32Array;
  /**
   * The regions of the rows, as written (rejection reasons quote them); a slot no row uses any more is '' until
   * a new region takes it, so the list is as long as the most regions in use at once, however many nodes come
   * and go or change their region.
   */
  readonly regions: string[] = [];
  /** Each slot's region trimmed and lower-cased, as region rules compare them. */
  readonly regionKeys: string[] = [];
  private readonly regionRows: number[] = [];
  private readonly freeRegions: number[] = [];
  private readonly regionIndex = new Map<string, number>();
  private readonly rowOf = new Map<string, number>();
  /** Scratch for rankTable: indices of the eligible rows, each row's rejection kind, excluded rows. */
  scratch: Int32Array;
  kinds: Uint8Array;
  mark: Uint8Array;

  constructor(capacity = 1024) {
    this.ramTotal = new Float64Array(capacity);
    this.memory = Object.fromEntries(DEVICE_TYPES.map((t) => [t, new Float64Array(capacity)])) as Record<DeviceType, Float64Array>;
    this.computeScore = new Float64Array(capacity);
    this.reputation = new Float64Array(capacity);
    this.activeJobs = new Float64Array(capacity);
    this.capacity = new Float64Array(capacity);
    this.pricePerHour = new Float64Array(capacity);
    this.bannedUntil = new Float64Array(capacity);
    this.onlineUntil = new Float64Array(capacity);
    this.reserved = new Uint8Array(capacity);
    this.region = new Int32Array(capacity);
    this.scratch = new Int32Array(capacity);
    this.kinds = new Uint8Array(capacity);
    this.mark = new Uint8Array(capacity);
  }

  /** A table holding these candidates, in this order. @throws Error on a repeated id. */
  static of(candidates: readonly Candidate[]): CandidateTable {
    const t = new CandidateTable(Math.max(16, candidates.length));
    for (const c of candidates) t.push(c);
    return t;
  }

  /** The row holding this node, if any. */
  indexOf(id: string): number | undefined {
    return this.rowOf.get(id);
  }

  /** Appends a node. @returns its row. @throws Error when the id is already in the table. */
  push(c: Candidate): number {
    if (this.rowOf.has(c.id)) throw new Error(`node ${c.id} is already in the table`);
    if (this.size === this.ramTotal.length) this.grow(this.size * 2);
    const i = this.size++;
    this.rowOf.set(c.id, i);
    this.region[i] = -1; // holds no region yet
    this.set(i, c);
    return i;
  }

  /** Overwrites row i with c (the same node: its id is not re-indexed). */
  set(i: number, c: Candidate): void {
    this.ids[i] = c.id;
    this.reservedBy[i] = c.reservedBy ?? null;
    this.reserved[i] = c.reservedBy ? 1 : 0;
    this.ramTotal[i] = c.ramTotal;
    const memory = c.memory ?? memoryByType(c);
    for (const t of DEVICE_TYPES) this.memory[t][i] = memory[t] ?? Number.NaN;
    this.computeScore[i] = c.computeScore;
    this.reputation[i] = c.reputation;
    this.activeJobs[i] = c.activeJobs;
    this.capacity[i] = c.capacity;
    this.pricePerHour[i] = c.pricePerHour;
    this.bannedUntil[i] = c.bannedUntil ? c.bannedUntil.getTime() : NOT_BANNED;
    this.onlineUntil[i] = c.online ? Infinity : -Infinity;
    const r = this.acquireRegion(c.region);
    if (this.region[i] >= 0) this.releaseRegion(this.region[i]);
    this.region[i] = r;
  }

  private acquireRegion(region: string): number {
    let r = this.regionIndex.get(region);
    if (r === undefined) {
      r = this.freeRegions.pop() ?? this.regions.length;
      this.regions[r] = region;
      this.regionKeys[r] = region.trim().toLowerCase();
      this.regionRows[r] = 0;
      this.regionIndex.set(region, r);
    }
    this.regionRows[r] += 1;
    return r;
  }

  private releaseRegion(r: number): void {
    if (--this.regionRows[r] > 0) return;
    this.regionIndex.delete(this.regions[r]);
    this.regions[r] = '';
    this.regionKeys[r] = '';
    this.freeRegions.push(r);
  }

  /**
   * Row i as a Candidate object, online as of `at` (for explanations; not on the per-node path). Its devices are
   * one per type with that type's largest memory: what matching and rejectionReason read of them (the table
   * keeps no device lists, which at 100k nodes would hold a few hundred MB for the garbage collector to walk).
   */
  get(i: number, at = Date.now()): Candidate {
    const memory: Partial<Record<DeviceType, number>> = {};
    for (const t of DEVICE_TYPES) if (!Number.isNaN(this.memory[t][i])) memory[t] = this.memory[t][i];
    const banned = this.bannedUntil[i];
    return {
      id: this.ids[i],
      devices: DEVICE_TYPES.filter((t) => memory[t] !== undefined).map((t) => ({ deviceType: t, vramTotal: memory[t]!, memoryTotal: memory[t]! })),
      ramTotal: this.ramTotal[i],
      computeScore: this.computeScore[i],
      reputation: this.reputation[i],
      activeJobs: this.activeJobs[i],
      capacity: this.capacity[i],
      region: this.regions[this.region[i]],
      pricePerHour: this.pricePerHour[i],
      online: this.onlineUntil[i] > at,
      bannedUntil: banned === NOT_BANNED ? null : new Date(banned),
      reservedBy: this.reservedBy[i],
      memory,
    };
  }

  /** Removes row i; the rows after it move up one. */
  remove(i: number): void {
    const last = this.size - 1;
    this.rowOf.delete(this.ids[i]);
    this.releaseRegion(this.region[i]);
    for (const col of [this.ramTotal, ...Object.values(this.memory), this.computeScore, this.reputation, this.activeJobs, this.capacity, this.pricePerHour, this.bannedUntil, this.onlineUntil, this.reserved, this.region]) {
      col.copyWithin(i, i + 1, this.size);
    }
    this.ids.splice(i, 1);
    this.reservedBy.splice(i, 1);
    this.size = last;
    for (let k = i; k < last; k++) this.rowOf.set(this.ids[k], k);
  }

  private grow(rows: number): void {
    const widen = <A extends Float64Array | Uint8Array | Int32Array>(a: A): A => {
      const b = new (a.constructor as new (n: number) => A)(rows);
      b.set(a);
      return b;
    };
    this.ramTotal = widen(this.ramTotal);
    for (const t of DEVICE_TYPES) this.memory[t] = widen(this.memory[t]);
    this.computeScore = widen(this.computeScore);
    this.reputation = widen(this.reputation);
    this.activeJobs = widen(this.activeJobs);
    this.capacity = widen(this.capacity);
    this.pricePerHour = widen(this.pricePerHour);
    this.bannedUntil = widen(this.bannedUntil);
    this.onlineUntil = widen(this.onlineUntil);
    this.reserved = widen(this.reserved);
    this.region = widen(this.region);
    this.scratch = new Int32Array(rows);
    this.kinds = new Uint8Array(rows);
    this.mark = new Uint8Array(rows);
  }
}

// Rejection kinds as rankTable counts them, by code (0 = eligible). Plain constants, not an object: the hot
// loop must not load properties on paths it rarely takes (V8 would deoptimise it there).
const K_EXCLUDED = 1;
const K_OFFLINE = 2;
const K_RESERVED = 3;
const K_BANNED = 4;
const K_FULL = 5;
const K_NO_DEVICE = 6;
const K_MEMORY = 7;
const K_BLOCKED = 8;
const K_NOT_ALLOWED = 9;
const K_PRICE = 10;
const K_BUDGET = 11;
/** Names as counted in rejectedCounts; K_NO_DEVICE's is filled per match. */
const KIND_NAMES = ['', 'failed or refused this job', 'offline', 'reserved', 'banned', 'at capacity', '', 'not enough memory', 'region blocked', 'region not allowed', 'price above limit', 'over budget'];

/**
 * rankCandidates over a CandidateTable: the same filters in the same order, the same kinds, scores, top-K and
 * id tie-break, and the same sampled rejection reasons (built from the row only for the sampled nodes). The
 * per-node loops read typed arrays and allocate nothing; whatever depends only on the job (region rules,
 * price ceiling, excluded rows) is settled before them.
 */
function rankTable(t: CandidateTable, m: MatchCriteria, limits: { top?: number; rejectedSample?: number }): Ranking {
  const top = limits.top ?? 10;
  const sample = limits.rejectedSample ?? 20;
  const n = t.size;
  const names = KIND_NAMES.slice();
  names[K_NO_DEVICE] = `no ${m.requiredDevice} device`;

  // Region rules and the region part of the score, once per distinct region.
  const blocked = m.blockedRegions?.length ? new Set(m.blockedRegions.map((r) => r.trim().toLowerCase())) : undefined;
  const allowed = m.allowedRegions?.length ? new Set(m.allowedRegions.map((r) => r.trim().toLowerCase())) : undefined;
  const preferred = m.preferredRegion?.trim().toLowerCase();
  const regionKind = new Uint8Array(t.regions.length);
  const regionPart = new Float64Array(t.regions.length);
  for (let r = 0; r < t.regions.length; r++) {
    const key = t.regionKeys[r];
    regionKind[r] = blocked?.has(key) ? K_BLOCKED : allowed && !allowed.has(key) ? K_NOT_ALLOWED : 0;
    regionPart[r] = preferred ? (key === preferred ? 1 : 0) : 0.5;
  }

  const budget = m.budget;
  const ceiling = budget ? budgetCeiling(budget) : Infinity;
  const job: FilterJob = {
    now: m.now.getTime(),
    minMemory: m.minMemory,
    priceLimit: m.maxPricePerHour !== undefined && m.maxPricePerHour > 0 ? m.maxPricePerHour : Infinity,
    maybeOver: ceiling - CEILING_SLACK,
    surelyOver: ceiling + CEILING_SLACK,
    // Only for prices within CEILING_SLACK of the ceiling (rare): the exact bigint cost.
    overBudget: (price) => budget !== undefined && estimateCostUnits(price, budget.durationSeconds, budget.decimals) > budget.units,
  };

  // Excluded rows are marked in a scratch column for the walk, and unmarked after it.
  const excluded: number[] = [];
  for (const id of m.excludeNodeIds) {
    const row = t.indexOf(id);
    if (row !== undefined && row < n) excluded.push(row);
  }
  for (const row of excluded) t.mark[row] = 1;
  // (a device type no node can have: every row has "no such device")
  const memory = t.memory[m.requiredDevice] ?? new Float64Array(n).fill(Number.NaN);
  const counts = new Int32Array(KIND_NAMES.length);
  const prices = [Infinity, -Infinity];
  let eligibleCount: number;
  try {
    eligibleCount = classify(t, memory, regionKind, job, counts, prices);
  } finally {
    for (const row of excluded) t.mark[row] = 0;
  }

  // The kinds in the order they first appear (as counted over objects) and the sample: from the first rows.
  const kinds = t.kinds;
  const firstSeen: number[] = [];
  const rejected: Rejected[] = [];
  let unseen = 0;
  for (let k = 1; k < counts.length; k++) if (counts[k] > 0) unseen++;
  const wanted = Math.min(sample, n - eligibleCount);
  const seen = new Uint8Array(counts.length);
  for (let i = 0; i < n && (unseen > 0 || rejected.length < wanted); i++) {
    const kind = kinds[i];
    if (kind === 0) continue;
    if (seen[kind] === 0) {
      seen[kind] = 1;
      firstSeen.push(kind);
      unseen--;
    }
    if (rejected.length < wanted) rejected.push({ nodeId: t.ids[i], reason: rejectionReason(t.get(i, job.now), m) ?? names[kind] });
  }
  const rejectedCounts: Record<string, number> = {};
  for (const kind of firstSeen) rejectedCounts[names[kind]] = counts[kind];

  const ranked = topScores(t, t.scratch, eligibleCount, memory, regionPart, job.minMemory, prices[0], prices[1], top);
  return { ranked, rejected, rejectedCounts, eligible: eligibleCount };
}

interface FilterJob {
  now: number;
  minMemory: number;
  priceLimit: number;
  maybeOver: number;
  surelyOver: number;
  overBudget(price: number): boolean;
}

/**
 * Settles each row: its rejection kind (0 = eligible: the first check it fails, in rejectionReason's order) into
 * t.kinds and counted in `counts`; eligible rows into t.scratch, their price range into `prices` ([min, max]).
 * @returns how many rows are eligible.
 */
function classify(t: CandidateTable, memory: Float64Array, regionKind: Uint8Array, job: FilterJob, counts: Int32Array, prices: number[]): number {
  const { mark, onlineUntil, reserved, bannedUntil, activeJobs, capacity, region, pricePerHour, size, kinds, scratch } = t;
  const { now, minMemory, priceLimit, maybeOver, surelyOver } = job;
  let eligible = 0;
  let minPrice = Infinity;
  let maxPrice = -Infinity;
  for (let i = 0; i < size; i++) {
    let kind = 0;
    let rk = 0;
    const mem = memory[i];
    const price = pricePerHour[i];
    if (mark[i] === 1) kind = K_EXCLUDED;
    else if (!(onlineUntil[i] > now)) kind = K_OFFLINE;
    else if (reserved[i] === 1) kind = K_RESERVED;
    else if (bannedUntil[i] > now) kind = K_BANNED;
    else if (activeJobs[i] >= capacity[i]) kind = K_FULL;
    else if (mem !== mem) kind = K_NO_DEVICE;
    else if (mem < minMemory) kind = K_MEMORY;
    else if ((rk = regionKind[region[i]]) !== 0) kind = rk;
    else if (price > priceLimit) kind = K_PRICE;
    else if (price > maybeOver && (price > surelyOver || job.overBudget(price))) kind = K_BUDGET;
    else {
      scratch[eligible++] = i;
      if (price < minPrice) minPrice = price;
      if (price > maxPrice) maxPrice = price;
    }
    kinds[i] = kind;
    counts[kind]++;
  }
  prices[0] = minPrice;
  prices[1] = maxPrice;
  return eligible;
}

/** The best `top` of the eligible rows, best first, scored exactly as rankCandidates scores objects. */
function topScores(
  t: CandidateTable,
  eligible: Int32Array,
  count: number,
  memory: Float64Array,
  regionPart: Float64Array,
  minMemory: number,
  minPrice: number,
  maxPrice: number,
  top: number,
): Ranked[] {
  const { ids, computeScore, reputation: reputations, activeJobs, capacity, region, pricePerHour } = t;
  const priceSpan = maxPrice - minPrice;
  const W = SCORE_WEIGHTS;
  const wFit = W.fit;
  const wReputation = W.reputation;
  const wLoad = W.load;
  const wRegion = W.region;
  const wPrice = W.price;
  const snug = minMemory > 0;
  const best: Ranked[] = [];
  let worst = -Infinity;
  for (let k = 0; k < count; k++) {
    const i = eligible[k];
    const mem = memory[i];
    // The same expressions, in the same order, as rankCandidates over objects: scores agree to the last bit.
    const fit = 0.5 * (snug && mem > 0 ? Math.min(1, minMemory / mem) : 0.5) + 0.5 * Math.min(1, computeScore[i] / 2000);
    const rep = reputations[i];
    const reputation = rep < 0 ? 0 : rep > 1 ? 1 : rep;
    const load = capacity[i] > 0 ? 1 - activeJobs[i] / capacity[i] : 0;
    const regionScore = regionPart[region[i]];
    const price = priceSpan > 0 ? (maxPrice - pricePerHour[i]) / priceSpan : 1;
    const score = Math.round((wFit * fit + wReputation * reputation + wLoad * load + wRegion * regionScore + wPrice * price) * 10_000) / 10_000;
    if (score < worst) continue;
    if (best.length === top && !(score > worst || ids[i] < best[top - 1].nodeId)) continue;
    insert(best, top, { nodeId: ids[i], score, parts: { fit, reputation, load, region: regionScore, price } });
    if (best.length === top) worst = best[top - 1].score;
  }
  return best;
}

/** Puts a ranked node into the top list (kept sorted, at most `top` long). */
function insert(best: Ranked[], top: number, entry: Ranked): void {
  if (best.length < top) best.push(entry);
  else best[top - 1] = entry;
  for (let j = best.length - 1; j > 0 && betterRanked(best[j], best[j - 1]); j--) [best[j], best[j - 1]] = [best[j - 1], best[j]];
}

const betterRanked = (a: Ranked, b: Ranked) => a.score > b.score || (a.score === b.score && a.nodeId < b.nodeId);
