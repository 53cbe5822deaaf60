import { nodeHealth } from '../../src/domain/health';
import { estimateCostUnits, listPricePerHour, computeScore } from '../../src/domain/pricing';
import { applyDelta, failureKind, REPUTATION_DELTAS } from '../../src/domain/reputation';
import { rankCandidates, rejectionReason, SCORE_WEIGHTS, type Candidate, type MatchCriteria } from '../../src/domain/scoring';

const GiB = 2 ** 30;
const now = new Date('2026-11-27T12:00:00Z');

function node(id: string, over: Partial<Candidate> = {}): Candidate {
  return {
    id,
    devices: [{ deviceType: 'CUDA', vramTotal: 16 * GiB, memoryTotal: 16 * GiB }],
    ramTotal: 64 * GiB,
    computeScore: 1000,
    reputation: 0.5,
    activeJobs: 0,
    capacity: 1,
    region: 'eu-west',
    pricePerHour: 0.5,
    online: true,
    bannedUntil: null,
    ...over,
  };
}

const criteria = (over: Partial<MatchCriteria> = {}): MatchCriteria => ({
  requiredDevice: 'CUDA',
  minMemory: 8 * GiB,
  excludeNodeIds: new Set(),
  now,
  ...over,
});

describe('match score', () => {
  it('weights sum to one', () => {
    expect(Object.values(SCORE_WEIGHTS).reduce((a, b) => a + b, 0)).toBeCloseTo(1);
  });

  it('says why each ineligible node is passed over', () => {
    const m = criteria({ excludeNodeIds: new Set(['failed']), blockedRegions: ['us-east'], allowedRegions: ['eu-west', 'us-east'], maxPricePerHour: 1 });
    expect(rejectionReason(node('failed'), m)).toBe('already failed this job');
    expect(rejectionReason(node('off', { online: false }), m)).toBe('offline');
    expect(rejectionReason(node('ban', { bannedUntil: new Date(now.getTime() + 1000) }), m)).toMatch(/^banned until/);
    expect(rejectionReason(node('expired-ban', { bannedUntil: new Date(now.getTime() - 1000) }), m)).toBeUndefined();
    expect(rejectionReason(node('busy', { activeJobs: 1 }), m)).toBe('at capacity (1/1 jobs)');
    expect(rejectionReason(node('small', { devices: [{ deviceType: 'CUDA', vramTotal: 4 * GiB, memoryTotal: 4 * GiB }] }), m)).toMatch(/needs/);
    expect(rejectionReason(node('cpu', { devices: [{ deviceType: 'CPU', vramTotal: 0, memoryTotal: 0 }] }), m)).toBe('no CUDA device');
    expect(rejectionReason(node('us', { region: 'US-EAST' }), m)).toBe('region US-EAST is blocked');
    expect(rejectionReason(node('ap', { region: 'ap-south' }), m)).toBe('region ap-south is not allowed');
    expect(rejectionReason(node('dear', { pricePerHour: 2 }), m)).toBe('price 2/h above 1/h');
    // a job paying 0.25 tokens for an hour cannot afford a 0.5/h node, can a 0.2/h one
    const budget = criteria({ budget: { units: 250_000_000n, durationSeconds: 3600, decimals: 9 } });
    expect(rejectionReason(node('pricey'), budget)).toBe('over budget (500000000 units for 3600 s, the job pays 250000000)');
    expect(rejectionReason(node('cheap', { pricePerHour: 0.2 }), budget)).toBeUndefined();
  });

  it('prefers reputation, free capacity, the preferred region, a snug fit and a lower price, each by its weight', () => {
    const m = criteria({ preferredRegion: 'eu-west' });
    const base = node('a');
    const better = (over: Partial<Candidate>) => rankCandidates([base, node('b', over)], m).ranked[0].nodeId;
    expect(better({ reputation: 0.9 })).toBe('b');
    expect(rankCandidates([node('a', { capacity: 2, activeJobs: 1 }), node('b', { capacity: 2 })], m).ranked[0].nodeId).toBe('b');
    expect(better({ region: 'us-east' })).toBe('a');
    expect(better({ devices: [{ deviceType: 'CUDA', vramTotal: 8 * GiB, memoryTotal: 8 * GiB }] })).toBe('b');
    expect(better({ pricePerHour: 0.25 })).toBe('b');
    const { ranked } = rankCandidates([node('x', { reputation: 1, pricePerHour: 0.1 }), node('y', { reputation: 0 })], m);
    expect(ranked[0].parts).toMatchObject({ reputation: 1, price: 1, region: 1, load: 1 });
    expect(ranked[1].parts).toMatchObject({ reputation: 0, price: 0 });
    expect(ranked[0].score - ranked[1].score).toBeCloseTo(SCORE_WEIGHTS.reputation + SCORE_WEIGHTS.price, 4);
  });

  it('keeps only the best few, deterministically, and counts the rejected by reason', () => {
    const nodes = Array.from({ length: 1000 }, (_, i) => node(`n${String(i).padStart(4, '0')}`, { reputation: (i % 100) / 100, online: i % 10 !== 0 }));
    const r = rankCandidates(nodes, criteria(), { top: 5, rejectedSample: 3 });
    expect(r.ranked).toHaveLength(5);
    expect(r.ranked.map((x) => x.score)).toEqual([...r.ranked.map((x) => x.score)].sort((a, b) => b - a));
    expect(r.ranked[0].parts.reputation).toBe(0.99);
    expect(r.rejected).toHaveLength(3);
    expect(r.rejectedCounts).toEqual({ offline: 100 });
    expect(r.eligible).toBe(900);
    expect(rankCandidates(nodes, criteria(), { top: 5 }).ranked).toEqual(r.ranked);
  });
});

describe('prices and cost', () => {
  it('uses the list price of the original server for nodes that announce none', () => {
    expect(listPricePerHour({ devices: [{ deviceType: 'CUDA', vramTotal: 24 * GiB, memoryTotal: 0 }], cpuCores: 8 })).toBeCloseTo(0.25 + 0.48);
    expect(listPricePerHour({ devices: [{ deviceType: 'OPENCL', vramTotal: 0, memoryTotal: 8 * GiB }], cpuCores: 8 })).toBeCloseTo(0.23);
    expect(listPricePerHour({ devices: [], cpuCores: 16 })).toBeCloseTo(0.13);
    expect(computeScore({ devices: [{ deviceType: 'CUDA', vramTotal: 8 * GiB, memoryTotal: 0 }], cpuCores: 8, ramTotal: 32 * GiB })).toBe(80 + 160 + 500 + 160);
  });

  it('charges price × hours in whole smallest units, rounding up, with a 10-minute minimum', () => {
    expect(estimateCostUnits(0.5, 3600, 9)).toBe(500_000_000n);
    expect(estimateCostUnits(0.5, 60, 9)).toBe(83_333_334n); // 10-minute minimum, rounded up
    expect(estimateCostUnits(0.123456, 7200, 9)).toBe(246_912_000n);
    expect(estimateCostUnits(0, 3600, 9)).toBe(0n);
    expect(() => estimateCostUnits(Number.NaN, 1, 9)).toThrow(RangeError);
  });
});

describe('reputation', () => {
  it('moves by the documented amounts and stays in 0..1', () => {
    expect(applyDelta(0.5, 'job_completed')).toBeCloseTo(0.52);
    expect(applyDelta(0.5, 'node_lost')).toBeCloseTo(0.4);
    expect(applyDelta(0.99, 'job_completed')).toBe(1);
    expect(applyDelta(0.03, 'node_lost')).toBe(0);
    expect(REPUTATION_DELTAS).toEqual({ job_completed: 0.02, job_failed: -0.05, timeout: -0.05, node_lost: -0.1 });
  });

  it('tells a lost node, a timeout and a reported failure apart', () => {
    expect(failureKind('node lost: silent for 30 s')).toBe('node_lost');
    expect(failureKind('exceeded the maximum run time of 60 s')).toBe('timeout');
    expect(failureKind('node reported failure: CUDA out of memory')).toBe('job_failed');
  });
});

describe('node health', () => {
  const at = (secondsAgo: number) => new Date(now.getTime() - secondsAgo * 1000);
  it('grades a node by the age of its last heartbeat', () => {
    expect(nodeHealth(at(5), now, 30_000)).toBe('healthy');
    expect(nodeHealth(at(20), now, 30_000)).toBe('suspect');
    expect(nodeHealth(at(45), now, 30_000)).toBe('unhealthy');
    expect(nodeHealth(at(120), now, 30_000)).toBe('lost');
  });
});
