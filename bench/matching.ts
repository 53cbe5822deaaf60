import { performance } from 'node:perf_hooks';
import { sql } from 'drizzle-orm';
import { migrateDatabase, openDatabase } from '../src/db/client';
import { createNodeCache } from '../src/db/node-cache';
import type { DeviceType } from '../src/domain/job';
import type { DeviceCapsSpec } from '../src/domain/node';
import { computeScore, listPricePerHour } from '../src/domain/pricing';
import { CandidateTable, memoryByType, rankCandidates, type Candidate, type MatchCriteria } from '../src/domain/scoring';
import { log, mean, quantile, round } from './lib/util';
import { seededRandom } from '../test/support/random';

const GiB = 2 ** 30;
const REGIONS = ['us-east', 'us-west', 'eu-west', 'eu-central', 'ap-south', 'ap-northeast', 'sa-east', 'af-south', 'me-central', 'oc-east', 'local', ''];


const pick = <T>(rnd: () => number, xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];

function device(type: DeviceType, memBytes: number, rnd: () => number): DeviceCapsSpec {
  const accel = type !== 'CPU';
  return {
    deviceType: type,
    deviceName: accel ? pick(rnd, ['RTX 4090', 'A100', 'H100', 'RTX 3080', 'Radeon RX 7900', 'Arc A770']) : 'CPU',
    memoryTotal: memBytes,
    memoryAvailable: Math.floor(memBytes * (0.3 + 0.7 * rnd())),
    computeUnits: accel ? 40 + Math.floor(rnd() * 100) : 8,
    supportsFp64: rnd() < 0.5,
    supportsFp16: accel,
    gpuModel: accel ? 'sim' : '',
    vramTotal: accel ? memBytes : 0,
    vramAvailable: accel ? Math.floor(memBytes * rnd()) : 0,
    driverVersion: accel ? '550.54' : '',
    cudaVersion: type === 'CUDA' ? '12.4' : '',
    pcieGeneration: accel ? 4 : 0,
    pcieLanes: accel ? 16 : 0,
    computeCapability: type === 'CUDA' ? 8.9 : 0,
  };
}

/** One synthetic node as a registry row would hold it (plus the load and liveness node-cache derives). */
export interface SyntheticNode {
  id: string;
  cpuCores: number;
  ramTotal: number;
  devices: DeviceCapsSpec[];
  region: string;
  reputation: number;
  computeScore: number;
  pricePerHour: number;
  capacity: number;
  activeJobs: number;
  online: boolean;
  bannedUntil: Date | null;
}

/**
 * A network of `n` nodes: ~55 % CUDA (1–8 GPUs of 8–80 GiB), ~15 % OpenCL (1–2 devices of 4–16 GiB), ~30 %
 * CPU-only; RAM 16–512 GiB; 12 regions (one empty); reputations skewed high; loads from idle to full;
 * ~8 % offline, ~1 % banned (plus ~1 % whose ban has expired).
 */
export function syntheticNetwork(n: number, seed = 42): SyntheticNode[] {
  const rnd = seededRandom(seed);
  const nodes: SyntheticNode[] = [];
  const now = Date.now();
  for (let i = 0; i < n; i++) {
    const kind = rnd();
    const cpuCores = pick(rnd, [4, 8, 16, 32, 64]);
    const ramTotal = pick(rnd, [16, 32, 64, 128, 256, 512]) * GiB;
    const devices: DeviceCapsSpec[] = [device('CPU', ramTotal, rnd)];
    if (kind < 0.55) {
      const count = pick(rnd, [1, 1, 1, 2, 2, 4, 8]);
      const mem = pick(rnd, [8, 12, 16, 24, 24, 40, 48, 80]) * GiB;
      for (let d = 0; d < count; d++) devices.push(device('CUDA', mem, rnd));
    } else if (kind < 0.7) {
      const count = pick(rnd, [1, 1, 2]);
      const mem = pick(rnd, [4, 8, 12, 16]) * GiB;
      for (let d = 0; d < count; d++) devices.push(device('OPENCL', mem, rnd));
    }
    const accelerators = devices.filter((d) => d.deviceType !== 'CPU').length;
    const capacity = Math.max(1, accelerators);
    const r = rnd();
    const banRoll = rnd();
    nodes.push({
      id: `node-${i.toString(36).padStart(5, '0')}-${Math.floor(rnd() * 1e9).toString(36)}`,
      cpuCores,
      ramTotal,
      devices,
      region: pick(rnd, REGIONS),
      reputation: Math.round((1 - r * r * r) * 1000) / 1000,
      computeScore: computeScore({ devices, cpuCores, ramTotal }),
      pricePerHour: Math.round(listPricePerHour({ devices, cpuCores }) * (0.6 + 0.8 * rnd()) * 1e6) / 1e6,
      capacity,
      activeJobs: Math.min(capacity, Math.floor(rnd() * (capacity + 1.5))),
      online: rnd() > 0.08,
      bannedUntil: banRoll < 0.01 ? new Date(now + 3600_000) : banRoll < 0.02 ? new Date(now - 3600_000) : null,
    });
  }
  return nodes;
}

/** What NodeCache.candidates() returns for these nodes (including what it precomputes per node). */
export function toCandidates(nodes: readonly SyntheticNode[]): Candidate[] {
  return nodes.map((n) => ({
    memory: memoryByType({ devices: n.devices, ramTotal: n.ramTotal }),
    id: n.id,
    devices: n.devices,
    ramTotal: n.ramTotal,
    computeScore: n.computeScore,
    reputation: n.reputation,
    capacity: n.capacity,
    region: n.region,
    pricePerHour: n.pricePerHour,
    bannedUntil: n.bannedUntil,
    online: n.online,
    activeJobs: n.activeJobs,
  }));
}

/**
 * Varied job requirements: half carry only what matchNode passes today (device, memory, excluded nodes, the
 * job's budget), half add region preferences/limits and a price cap as the scoring supports.
 */
export function jobMix(count: number, nodeIds: readonly string[], seed = 7): MatchCriteria[] {
  const rnd = seededRandom(seed);
  const out: MatchCriteria[] = [];
  for (let i = 0; i < count; i++) {
    const roll = rnd();
    const requiredDevice: DeviceType = roll < 0.5 ? 'CUDA' : roll < 0.6 ? 'OPENCL' : roll < 0.8 ? 'CPU' : 'UNKNOWN';
    const minMemory = pick(rnd, [0, 1, 2, 4, 8, 16, 24, 40, 64]) * GiB;
    const excluded = new Set<string>();
    const nExcluded = pick(rnd, [0, 0, 0, 1, 2, 3]);
    for (let k = 0; k < nExcluded; k++) excluded.add(pick(rnd, nodeIds));
    const c: MatchCriteria = { requiredDevice, minMemory, excludeNodeIds: excluded, now: new Date() };
    // The job's payment and duration (matchNode passes them as a budget): 0.5–20 tokens for 10 min–4 h.
    c.budget = {
      units: BigInt(Math.round((0.5 + rnd() * 19.5) * 1e3)) * 1_000_000n,
      durationSeconds: pick(rnd, [600, 1800, 3600, 7200, 14_400]),
      decimals: 9,
    };
    if (rnd() < 0.5) {
      if (rnd() < 0.5) c.preferredRegion = pick(rnd, REGIONS.slice(0, -1));
      if (rnd() < 0.3) c.allowedRegions = [pick(rnd, REGIONS), pick(rnd, REGIONS), pick(rnd, REGIONS)];
      if (rnd() < 0.3) c.blockedRegions = [pick(rnd, REGIONS)];
      if (rnd() < 0.4) c.maxPricePerHour = 0.5 + rnd() * 2;
    }
    out.push(c);
  }
  return out;
}

export interface LatencyStats {
  p50_ms: number | null;
  p99_ms: number | null;
  mean_ms: number | null;
  max_ms: number | null;
  iterations: number;
  /** Average number of nodes that could take the job. */
  eligible_avg: number | null;
}

function stats(samples: number[], eligible: number[]): LatencyStats {
  return {
    p50_ms: round(quantile(samples, 0.5), 4),
    p99_ms: round(quantile(samples, 0.99), 4),
    mean_ms: round(mean(samples), 4),
    max_ms: round(Math.max(...samples), 4),
    iterations: samples.length,
    eligible_avg: round(mean(eligible), 1),
  };
}

/** Times `rank(criteria)` over the job mix after a warm-up. */
function timeRanking(rank: (c: MatchCriteria) => number, jobs: MatchCriteria[], warmup: number, iterations: number): LatencyStats {
  for (let i = 0; i < warmup; i++) rank(jobs[i % jobs.length]);
  const samples: number[] = [];
  const eligible: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const c = jobs[(warmup + i) % jobs.length];
    const t0 = performance.now();
    const n = rank(c);
    samples.push(performance.now() - t0);
    eligible.push(n);
  }
  return stats(samples, eligible);
}

/**
 * rankCandidates alone over synthetic candidates in the CandidateTable that NodeCache.candidates() returns;
 * `objects: true` ranks the same candidates as Candidate objects (the reference path) instead.
 */
export function benchRankCandidates(n: number, opts: { warmup: number; iterations: number; objects?: boolean }): LatencyStats {
  const candidates = toCandidates(syntheticNetwork(n));
  const jobs = jobMix(Math.max(500, opts.iterations), candidates.map((c) => c.id));
  const source = opts.objects ? candidates : CandidateTable.of(candidates);
  return timeRanking((c) => rankCandidates(source, c).eligible, jobs, opts.warmup, opts.iterations);
}

export interface NodeCacheStats {
  rows: number;
  /** First refresh: every row read from Postgres. */
  full_load_ms: number | null;
  /** A refresh with no changes (claims are still re-counted). */
  refresh_idle_ms: number | null;
  /**
   * A refresh after 60 % of the nodes heartbeated: in steady state (10 s beats, a refresh at most every 1 s
   * that re-reads 5 s of overlap) each refresh re-reads the nodes that beat in the last ~6 s.
   */
  refresh_steady_ms: number | null;
  /** candidates(): what a match asks of the cache before ranking (the table itself: nothing is copied). */
  candidates_ms: number | null;
  /** What matchNode spends in memory per job: candidates() + rankCandidates, back to back. */
  match_path: LatencyStats;
  /**
   * The same while the cache refreshes in the background (start(), default settings) and 10 % of the nodes
   * heartbeat each second (10 s beats): matches asked every ~5 ms, each timed from when it was asked (an
   * event-loop turn later it runs) to its result, so time spent behind a refresh's synchronous work counts.
   */
  match_path_live: LatencyStats;
  /** Background refreshes completed during the live run. */
  live_refreshes: number;
}

/**
 * NodeCache over real Postgres rows (the synthetic network written to the `nodes` table), timing its
 * refreshes and the in-memory part of matchNode (candidates() + rankCandidates).
 */
export async function benchNodeCache(
  databaseUrl: string,
  sizes: number[],
  opts: { iterations: (n: number) => number; liveSeconds: number },
): Promise<Record<string, NodeCacheStats>> {
  const database = openDatabase(databaseUrl, { max: 4 });
  const out: Record<string, NodeCacheStats> = {};
  try {
    await migrateDatabase(database.db);
    let written = 0;
    for (const size of [...sizes].sort((a, b) => a - b)) {
      const t0 = performance.now();
      // Generated per size (the same nodes first: the generator is sequential) and dropped once written, so
      // the measurements below run beside the cache's heap, not a second copy of the network.
      let network: SyntheticNode[] | undefined = syntheticNetwork(size, 4242);
      const ids = network.map((n) => n.id);
      for (let from = written; from < size; from += 5000) {
        const batch = network.slice(from, Math.min(size, from + 5000)).map((n) => ({
          id: n.id,
          name: n.id,
          cpu_cores: n.cpuCores,
          ram_total: n.ramTotal,
          devices: n.devices,
          device_types: [...new Set(n.devices.map((d) => d.deviceType))],
          max_device_memory: Math.max(...n.devices.map((d) => (d.vramTotal > 0 ? d.vramTotal : d.memoryTotal))),
          ip_address: '127.0.0.1',
          port: 20000 + (n.id.length % 1000),
          region: n.region,
          reputation: n.reputation,
          compute_score: n.computeScore,
          price_per_hour: n.pricePerHour,
          capacity: n.capacity,
          banned_until: n.bannedUntil?.toISOString() ?? null,
          status: n.online ? 'online' : 'offline',
          last_heartbeat: new Date(Date.now() - (n.online ? Math.floor(Math.random() * 10_000) : 3600_000)).toISOString(),
        }));
        await database.db.execute(sql`
          insert into nodes (id, name, cpu_cores, ram_total, devices, device_types, max_device_memory, ip_address, port, region,
                             reputation, compute_score, price_per_hour, capacity, banned_until, status, last_heartbeat)
          select id, name, cpu_cores, ram_total, devices, device_types, max_device_memory, ip_address, port, region,
                 reputation, compute_score, price_per_hour, capacity, banned_until, status, last_heartbeat
            from jsonb_to_recordset(${JSON.stringify(batch)}::jsonb) as x(
              id text, name text, cpu_cores int, ram_total bigint, devices jsonb, device_types text[], max_device_memory bigint,
              ip_address text, port int, region text, reputation float8, compute_score float8, price_per_hour float8,
              capacity int, banned_until timestamptz, status text, last_heartbeat timestamptz)`);
      }
      written = size;
      network = undefined;
      await database.db.execute(sql`analyze nodes`);
      log(`  node cache: ${size} rows in the nodes table (${Math.round(performance.now() - t0)} ms to write)`);

      const cache = createNodeCache({ db: database.db, offlineAfterMs: 30_000 });
      let t = performance.now();
      await cache.refresh();
      const fullLoad = performance.now() - t;

      const idle: number[] = [];
      for (let i = 0; i < 5; i++) {
        t = performance.now();
        await cache.refresh();
        idle.push(performance.now() - t);
      }

      // 60 % of the nodes heartbeat (as the heartbeat hub writes them), then one refresh.
      const beating: number[] = [];
      for (let i = 0; i < 3; i++) {
        await database.db.execute(sql`update nodes set last_heartbeat = now() where id in (select id from nodes tablesample bernoulli (60))`);
        t = performance.now();
        await cache.refresh();
        beating.push(performance.now() - t);
      }

      const copies: number[] = [];
      for (let i = 0; i < 20; i++) {
        t = performance.now();
        cache.candidates();
        copies.push(performance.now() - t);
      }

      const iterations = opts.iterations(size);
      const jobs = jobMix(Math.max(500, iterations), ids, 99).map((c) => ({
        // matchNode passes device, memory, excluded nodes and the budget only
        requiredDevice: c.requiredDevice,
        minMemory: c.minMemory,
        excludeNodeIds: c.excludeNodeIds,
        budget: c.budget,
        now: new Date(),
      }));
      const matchPath = timeRanking((c) => rankCandidates(cache.candidates(), c).eligible, jobs, Math.ceil(iterations / 10), iterations);

      // Live: background refreshes and heartbeat writes (another connection) while matches are asked.
      let beatsRunning = true;
      const beats = (async () => {
        while (beatsRunning) {
          const t1 = performance.now();
          await database.db.execute(sql`update nodes set last_heartbeat = now() where id in (select id from nodes tablesample bernoulli (10))`);
          await new Promise((r) => setTimeout(r, Math.max(0, 1000 - (performance.now() - t1))));
        }
      })();
      const refreshedBefore = cache.refreshes();
      cache.start();
      const live: number[] = [];
      const liveEligible: number[] = [];
      const until = performance.now() + opts.liveSeconds * 1000;
      for (let i = 0; performance.now() < until; i++) {
        await new Promise((r) => setTimeout(r, 5));
        const asked = performance.now();
        await new Promise((r) => setImmediate(r));
        liveEligible.push(rankCandidates(cache.candidates(), jobs[i % jobs.length]).eligible);
        live.push(performance.now() - asked);
      }
      beatsRunning = false;
      await cache.stop();
      await beats;
      const refreshes = cache.refreshes() - refreshedBefore;
      out[`nodes_${size >= 1000 ? `${size / 1000}k` : size}`] = {
        rows: cache.size(),
        full_load_ms: round(fullLoad, 2),
        refresh_idle_ms: round(quantile(idle, 0.5), 2),
        refresh_steady_ms: round(quantile(beating, 0.5), 2),
        candidates_ms: round(quantile(copies, 0.5), 3),
        match_path: matchPath,
        match_path_live: stats(live, liveEligible),
        live_refreshes: refreshes,
      };
    }
  } finally {
    await database.close();
  }
  return out;
}
