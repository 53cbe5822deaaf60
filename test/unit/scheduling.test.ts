import { createAssignActivity, type DispatchResult } from '../../src/activities/dispatch';
import { nodeHealth } from '../../src/domain/health';
import { estimateCostUnits, estimateTrainingSeconds, listPricePerHour, computeScore, NODE_TIERS } from '../../src/domain/pricing';
import { createCostEstimator } from '../../src/services/cost-estimate';
import { applyDelta, failureKind, REPUTATION_DELTAS } from '../../src/domain/reputation';
import { CandidateTable, memoryByType, rankCandidates, rejectionReason, SCORE_WEIGHTS, type Candidate, type MatchCriteria } from '../../src/domain/scoring';
import { seededRandom } from '../support/random';

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
    expect(rejectionReason(node('failed'), m)).toBe('failed or refused this job');
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


describe('match score over a CandidateTable', () => {
  const REGIONS = ['eu-west', ' EU-West ', 'us-east', 'ap-south', ''];
  const TYPES = ['CPU', 'CUDA', 'OPENCL', 'METAL', 'UNKNOWN'] as const;

  /** Nodes with every kind of reason to be passed over, coarse values (so scores tie) and prices near the budgets. */
  function randomNodes(rnd: () => number, n: number): Candidate[] {
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];
    return Array.from({ length: n }, (_, i) => {
      const devices = Array.from({ length: Math.floor(rnd() * 4) }, () => {
        const mem = pick([0, 4, 8, 16, 24, 80]) * GiB;
        return rnd() < 0.5 ? { deviceType: pick(TYPES), vramTotal: mem, memoryTotal: 0 } : { deviceType: pick(TYPES), vramTotal: 0, memoryTotal: mem };
      });
      const capacity = 1 + Math.floor(rnd() * 4);
      const roll = rnd();
      return node(`n${(i * 7919) % n}-${Math.floor(rnd() * 1e6)}`, {
        devices,
        ramTotal: pick([0, 8, 32, 64]) * GiB,
        computeScore: pick([0, 500, 1000, 2500]),
        reputation: pick([-0.1, 0, 0.5, 0.5, 0.9, 1, 1.2]),
        activeJobs: Math.floor(rnd() * (capacity + 1)),
        capacity: rnd() < 0.05 ? 0 : capacity,
        region: pick(REGIONS),
        pricePerHour: rnd() < 0.5 ? pick([0, 0.1, 0.25, 0.5, 1, 2]) : 0.25 + (Math.floor(rnd() * 41) - 20) * 1e-7,
        online: rnd() > 0.1,
        bannedUntil: roll < 0.05 ? new Date(now.getTime() + 1000) : roll < 0.1 ? new Date(now.getTime() - 1000) : null,
        reservedBy: rnd() < 0.05 ? `res-${i}` : rnd() < 0.5 ? null : undefined,
      });
    });
  }

  function randomCriteria(rnd: () => number, ids: string[]): MatchCriteria {
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];
    const m = criteria({
      requiredDevice: pick(TYPES),
      minMemory: pick([0, 1, 8, 16, 64]) * GiB,
      excludeNodeIds: new Set(Array.from({ length: Math.floor(rnd() * 4) }, () => (rnd() < 0.8 ? pick(ids) : 'not-a-node'))),
    });
    if (rnd() < 0.5) m.preferredRegion = pick(REGIONS);
    if (rnd() < 0.3) m.allowedRegions = [pick(REGIONS), pick(REGIONS)];
    if (rnd() < 0.3) m.blockedRegions = [pick(REGIONS)];
    if (rnd() < 0.3) m.maxPricePerHour = pick([0, 0.5, 1]);
    // about 0.25 tokens an hour (the prices above sit within a few micro-tokens of it), or other budgets
    if (rnd() < 0.6) {
      m.budget = rnd() < 0.6
        ? { units: pick([250_000_000n, 250_000_900n, 249_999_600n]), durationSeconds: 3600, decimals: 9 }
        : { units: BigInt(Math.floor(rnd() * 1e9)), durationSeconds: pick([0, 60, 600, 5400]), decimals: 9 };
    }
    return m;
  }

  it('ranks, explains and counts exactly as over Candidate objects, on random networks and jobs', () => {
    const rnd = seededRandom(2026);
    for (let round = 0; round < 40; round++) {
      const nodes = randomNodes(rnd, 1 + Math.floor(rnd() * 400));
      const table = CandidateTable.of(nodes);
      for (let j = 0; j < 10; j++) {
        const m = randomCriteria(rnd, nodes.map((c) => c.id));
        const limits = { top: 1 + Math.floor(rnd() * 12), rejectedSample: Math.floor(rnd() * 30) };
        const expected = rankCandidates(nodes, m, limits);
        const actual = rankCandidates(table, m, limits);
        expect(actual).toEqual(expected);
        expect(Object.keys(actual.rejectedCounts)).toEqual(Object.keys(expected.rejectedCounts));
      }
    }
  });

  it('passes over exactly the nodes rejectionReason rejects, budgets down to the micro-token', () => {
    const rnd = seededRandom(7);
    const nodes = randomNodes(rnd, 3000);
    const table = CandidateTable.of(nodes);
    for (let j = 0; j < 40; j++) {
      const m = randomCriteria(rnd, nodes.map((c) => c.id));
      const expected = nodes.flatMap((c) => {
        const reason = rejectionReason(c, m);
        return reason === undefined ? [] : [{ nodeId: c.id, reason }];
      });
      // every rejected node in the sample: its reason is rejectionReason's own (never the kind as a fallback)
      expect(rankCandidates(table, m, { rejectedSample: nodes.length }).rejected).toEqual(expected);
      expect(rankCandidates(nodes, m, { rejectedSample: nodes.length }).rejected).toEqual(expected);
    }
  });

  it('keeps rows in place through updates, growth and removal', () => {
    const nodes = randomNodes(seededRandom(3), 3000);
    const table = new CandidateTable(4);
    for (const c of nodes) table.push(c);
    expect(() => table.push(nodes[0])).toThrow(/already/);
    table.set(5, { ...nodes[5], reputation: 0.123, online: false, reservedBy: 'r', bannedUntil: new Date(now.getTime() + 5) });
    nodes[5] = { ...nodes[5], reputation: 0.123, online: false, reservedBy: 'r', bannedUntil: new Date(now.getTime() + 5) };
    table.remove(10);
    nodes.splice(10, 1);
    expect(table.size).toBe(nodes.length);
    for (const i of [0, 5, 9, 10, 11, nodes.length - 1]) {
      const { memory, devices, ...rest } = table.get(i);
      const { memory: _m, devices: original, reservedBy, ...want } = nodes[i];
      expect(rest).toEqual({ ...want, reservedBy: reservedBy ?? null });
      expect(table.indexOf(nodes[i].id)).toBe(i);
      expect(memory).toEqual(Object.fromEntries(Object.entries(memoryByType(nodes[i])).filter(([, v]) => v !== undefined)));
      // one device per type with its largest memory: the same fit (and reasons) for every kind of job
      expect(memoryByType({ devices, ramTotal: rest.ramTotal })).toEqual(memoryByType({ devices: original, ramTotal: rest.ramTotal }));
    }
    const m = criteria({ requiredDevice: 'UNKNOWN', minMemory: 0 });
    expect(rankCandidates(table, m, { top: 50, rejectedSample: 50 })).toEqual(rankCandidates(nodes, m, { top: 50, rejectedSample: 50 }));
  });

  it('holds only the regions in use: nodes that change region or leave free theirs, so a node re-registering with ever new regions cannot grow the table or every match', () => {
    const nodes = randomNodes(seededRandom(11), 40);
    const table = CandidateTable.of(nodes);
    for (let round = 0; round < 500; round++) {
      const i = round % nodes.length;
      nodes[i] = { ...nodes[i], region: `r-${round}` };
      table.set(i, nodes[i]);
    }
    expect(table.regions.filter((r) => r !== '').length).toBeLessThanOrEqual(nodes.length);
    expect(table.regions.length).toBeLessThanOrEqual(nodes.length + 12);
    // Rules still compare regions trimmed and case-blind, and reasons quote them as written.
    nodes[3] = { ...nodes[3], region: ' EU-West ' };
    table.set(3, nodes[3]);
    const m = criteria({ requiredDevice: 'UNKNOWN', minMemory: 0, blockedRegions: ['eu-west'] });
    expect(rankCandidates(table, m, { top: 50, rejectedSample: 50 })).toEqual(rankCandidates(nodes, m, { top: 50, rejectedSample: 50 }));
    expect(rankCandidates(table, m, { rejectedSample: 50 }).rejected).toEqual(expect.arrayContaining([{ nodeId: nodes[3].id, reason: 'region  EU-West  is blocked' }]));
    // Removing every row frees every region; a region shared by two rows stays while one holds it.
    table.set(0, { ...nodes[0], region: 'shared' });
    table.set(1, { ...nodes[1], region: 'shared' });
    table.remove(0);
    expect(table.regions).toContain('shared');
    while (table.size > 0) table.remove(table.size - 1);
    expect(table.regions.every((r) => r === '')).toBe(true);
    table.push({ ...nodes[5], region: 'back' });
    expect(table.get(0).region).toBe('back');
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

  it('estimates a training run from model, dataset and epochs, and prices tiers with no node at their reference hardware', () => {
    expect(estimateTrainingSeconds('MNIST', 10_000, 3)).toEqual({ seconds: 180, minutesPerEpoch: 1, datasetFactor: 1, epochs: 3 });
    expect(estimateTrainingSeconds('GPT-3', 50_000, 2).seconds).toBe(500 * 5 * 2 * 60);
    // unknown models take the default; tiny datasets count as a tenth; no epochs count as one
    expect(estimateTrainingSeconds('my-model', 10, 0)).toEqual({ seconds: 30, minutesPerEpoch: 5, datasetFactor: 0.1, epochs: 1 });
    // Names of Object's own properties are unknown models too.
    for (const name of ['constructor', '__proto__', 'toString']) expect(estimateTrainingSeconds(name, 10_000, 1).minutesPerEpoch).toBe(5);
    expect(listPricePerHour(NODE_TIERS.basic.reference)).toBeCloseTo(0.09);
    expect(listPricePerHour(NODE_TIERS.premium.reference)).toBeCloseTo(0.23);
    expect(listPricePerHour(NODE_TIERS.enterprise.reference)).toBeCloseTo(0.73);
  });
});

describe('EstimateJobCost', () => {
  const market = (avg: number, total: number) => ({
    find: jest.fn(async () => ({ nodes: [], totalMatching: total, avgPricePerHour: avg, minPricePerHour: avg, maxPricePerHour: avg })),
  });

  it('charges the run time at the mean price of the available nodes of the tier, with estimateCostUnits', async () => {
    const discovery = market(0.5, 4);
    const e = await createCostEstimator({ discovery, tokenDecimals: 9 }).estimate({ modelType: 'ResNet-18', epochs: 6, datasetSize: 10_000, nodeTier: 'Enterprise' });
    expect(discovery.find).toHaveBeenCalledWith(expect.objectContaining({ device: 'CUDA' }));
    expect(e).toMatchObject({ units: estimateCostUnits(0.5, 3600, 9), tokens: 0.5, minutes: 60, tier: 'enterprise', pricePerHour: 0.5, pricedFrom: 4 });
  });

  it('falls back to the reference list price, and reads an empty tier as basic', async () => {
    const e = await createCostEstimator({ discovery: market(0, 0), tokenDecimals: 6 }).estimate({ modelType: '', epochs: 1, datasetSize: 0, nodeTier: '' });
    expect(e).toMatchObject({ tier: 'basic', pricedFrom: 0, units: estimateCostUnits(0.09, 30, 6) });
    expect(e.breakdown).toMatch(/reference basic \(CPU\) node/);
  });

  it('names the field it refuses', async () => {
    const estimator = createCostEstimator({ discovery: market(1, 1), tokenDecimals: 9 });
    const ask = (over: object) => estimator.estimate({ modelType: 'MNIST', epochs: 1, datasetSize: 1, nodeTier: 'basic', ...over });
    await expect(ask({ nodeTier: 'gold' })).rejects.toMatchObject({ field: 'node_tier' });
    await expect(ask({ nodeTier: 'toString' })).rejects.toMatchObject({ field: 'node_tier' });
    await expect(ask({ epochs: -1 })).rejects.toMatchObject({ field: 'epochs' });
    await expect(ask({ datasetSize: -5 })).rejects.toMatchObject({ field: 'dataset_size' });
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

describe('assignToNode', () => {
  const input = { jobId: 'j1', nodeId: 'n1', assignEndpoint: '10.0.0.1:50055', spec: {} as never, assigned: { jobId: 'j1' } as never };

  it('records the assignment when the node takes the job, and a refusal (or an unreachable node) when it does not', async () => {
    const calls: string[] = [];
    const activity = (dispatch: () => Promise<DispatchResult>) =>
      createAssignActivity({
        dispatchToNode: dispatch,
        recordTransition: async () => void calls.push('assigned'),
        recordRefusal: async (jobId, nodeId) => void calls.push(`refused ${jobId} ${nodeId}`),
      }).assignToNode;
    await activity(async () => ({ accepted: true }))(input);
    await activity(async () => ({ accepted: false, reason: 'busy', code: 503 }))(input);
    await expect(activity(async () => Promise.reject(new Error('unreachable')))(input)).rejects.toThrow('unreachable');
    expect(calls).toEqual(['assigned', 'refused j1 n1', 'refused j1 n1']);
  });
});
