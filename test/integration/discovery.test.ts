import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { eq, inArray, sql } from 'drizzle-orm';
import pino from 'pino';
import { createDiscoveryHandlers } from '../../src/api/grpc/discovery-handlers';
import { claimNode } from '../../src/db/node-cache';
import { nodeCounts } from '../../src/db/nodes-repo';
import { jobs, nodeClaims, nodes } from '../../src/db/schema';
import type { DeviceType, JobSpec } from '../../src/domain/job';
import { deviceMemory, type DeviceCapsSpec } from '../../src/domain/node';
import { computeScore, listPricePerHour } from '../../src/domain/pricing';
import { loadProtocol } from '../../src/protocol/load';
import { createDiscoveryService } from '../../src/services/discovery-service';
import { freshDatabase } from '../support/db';

/**
 * NodeDiscoveryService over real Postgres and the real wire: the handlers are served by a grpc-js server of
 * their own and called with the protocol's client, as the Engine calls them.
 */

const GiB = 2 ** 30;
/** Long enough that "fresh" nodes stay online for the whole file. */
const OFFLINE_AFTER_MS = 10 * 60_000;
const DEVICE = { UNKNOWN: 0, CPU: 1, CUDA: 2, OPENCL: 3 } as const;
const SORT = { PRICE: 0, PERFORMANCE: 1, REPUTATION: 2, AVAILABILITY: 3 } as const;
const BILLING = { HOURLY: 0, PER_EPOCH: 1, PER_JOB: 2, PER_INFERENCE: 3 } as const;

type NodeInsert = typeof nodes.$inferInsert;

function device(deviceType: DeviceType, memory: number): DeviceCapsSpec {
  const accelerator = deviceType !== 'CPU';
  return {
    deviceType,
    deviceName: `${deviceType} device`,
    memoryTotal: memory,
    memoryAvailable: memory,
    computeUnits: accelerator ? 80 : 16,
    supportsFp64: !accelerator,
    supportsFp16: accelerator,
    gpuModel: accelerator ? `${deviceType} model` : '',
    vramTotal: accelerator ? memory : 0,
    vramAvailable: accelerator ? memory : 0,
    driverVersion: accelerator ? '550.1' : '',
    cudaVersion: deviceType === 'CUDA' ? '12.4' : '',
    pcieGeneration: 4,
    pcieLanes: 16,
    computeCapability: deviceType === 'CUDA' ? 8.9 : 0,
  };
}

interface Seed {
  id: string;
  devices?: DeviceCapsSpec[];
  cpuCores?: number;
  ramGiB?: number;
  region?: string;
  reputation?: number;
  stake?: number;
  /** Announced NodePricing (snake_case, as RegisterNode stores it). */
  pricing?: Record<string, unknown> & { price_per_hour: number };
  capacity?: number;
  bannedUntil?: Date | null;
  status?: 'online' | 'offline';
  heartbeatAgoS?: number;
  completed?: number;
  /** Track-record counters (nodes.compute_ms, online_ms) and the start of the uptime record. */
  computeMs?: number;
  onlineMs?: number;
  uptimeSinceAgoS?: number;
}

/** A nodes row as RegisterNode would write it (derived columns by the same domain functions). */
function nodeRow(s: Seed, t0: number): NodeInsert {
  const devices = s.devices ?? [device('CUDA', 8 * GiB)];
  const cpuCores = s.cpuCores ?? 8;
  const ramTotal = (s.ramGiB ?? 32) * GiB;
  return {
    id: s.id,
    name: `node ${s.id}`,
    cpuCores,
    ramTotal,
    ramAvailable: ramTotal / 2,
    devices,
    deviceTypes: [...new Set(devices.map((d) => d.deviceType))],
    maxDeviceMemory: Math.max(0, ...devices.map(deviceMemory)),
    ipAddress: '10.0.0.1',
    port: 50052,
    region: s.region ?? 'eu-west',
    walletAddress: `wallet-${s.id}`,
    reputation: s.reputation ?? 0.5,
    computeScore: computeScore({ devices, cpuCores, ramTotal }),
    pricePerHour: s.pricing?.price_per_hour ?? listPricePerHour({ devices, cpuCores }),
    pricing: s.pricing ?? {},
    capacity: s.capacity ?? 1,
    bannedUntil: s.bannedUntil ?? null,
    status: s.status ?? 'online',
    profile: {
      version: '1.4.2+gpu',
      supportedFormats: ['ONNX', 'GGUF'],
      maxModelSize: 10 * GiB,
      supportsTerminalAccess: true,
      availableRuntimes: ['python3.11', 'cuda12'],
      stakedAmount: s.stake ?? 0,
    },
    totalJobsCompleted: s.completed ?? 0,
    computeMs: s.computeMs ?? 0,
    onlineMs: s.onlineMs ?? 0,
    ...(s.uptimeSinceAgoS !== undefined && { uptimeSince: new Date(t0 - s.uptimeSinceAgoS * 1000) }),
    lastHeartbeat: new Date(t0 - (s.heartbeatAgoS ?? 1) * 1000),
  };
}

type JobStatus = 'queued' | 'assigned' | 'running' | 'completed';

function jobRow(id: string, nodeId: string | null, status: JobStatus | 'pending'): typeof jobs.$inferInsert {
  return {
    id,
    status,
    jobType: 'TRAINING',
    priority: 'NORMAL',
    requiredDevice: 'CUDA',
    config: { jobId: id } as unknown as JobSpec,
    configHash: 'h',
    paymentUnits: 1n,
    assignedNodeId: nodeId,
  };
}

/** A promise-based NodeDiscoveryService client that also returns the reply's initial metadata. */
function discoveryClient(address: string) {
  const Ctor = loadProtocol().NodeDiscoveryService;
  const client = new Ctor(address, grpc.credentials.createInsecure()) as unknown as grpc.Client &
    Record<string, (req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: any) => void) => grpc.ClientUnaryCall>;
  async function call(method: string, request: object): Promise<{ res: any; md: grpc.Metadata }> {
    return new Promise((resolve, reject) => {
      let md = new grpc.Metadata();
      const c = client[method](request, new grpc.Metadata(), { deadline: Date.now() + 15_000 }, (err, res) =>
        err ? reject(err) : resolve({ res, md }),
      );
      c.on('metadata', (m: grpc.Metadata) => (md = m));
    });
  }
  return { call, close: () => client.close() };
}

describe('NodeDiscoveryService (real Postgres, over gRPC)', () => {
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let server: grpc.Server;
  let api: ReturnType<typeof discoveryClient>;

  const list = async (req: object = {}) => (await api.call('ListNodes', req)).res;
  const find = async (req: object = {}) => (await api.call('FindNodes', req)).res;
  const ids = (res: { nodes: { node_id: string }[] }) => res.nodes.map((n) => n.node_id);

  /**
   * A job on a node. `claimed` (the default while the job is not finished) gives it a capacity claim on the node
   * the way matching does: claimNode while the job waits, then the job's row moves on to `status`. Without
   * a claim, the job's row points at the node but holds no capacity (a finished attempt gave it back).
   */
  interface Placed {
    node: string;
    status: JobStatus;
    claimed?: boolean;
  }

  /**
   * Seeds the nodes and their jobs. `bulkClaims` writes the claim rows claimNode would write in one insert
   * per thousand (taking thousands of claims one by one, each under its node's lock, would take minutes).
   */
  async function reset(seeds: Seed[], placed: Placed[], t0: number, opts: { bulkClaims?: boolean } = {}) {
    await database.db.execute(sql`truncate nodes, jobs, node_claims`);
    for (let i = 0; i < seeds.length; i += 1000) await database.db.insert(nodes).values(seeds.slice(i, i + 1000).map((s) => nodeRow(s, t0)));
    const jobIds = placed.map((_, i) => `job-${i}`);
    const claimed = (p: Placed) => p.claimed ?? p.status !== 'completed';
    for (let i = 0; i < placed.length; i += 1000) {
      await database.db.insert(jobs).values(placed.slice(i, i + 1000).map((p, j) => jobRow(jobIds[i + j], p.status === 'queued' ? null : p.node, 'pending')));
    }
    if (opts.bulkClaims) {
      const rows = placed.flatMap((p, i) => (claimed(p) ? [{ nodeId: p.node, jobId: jobIds[i] }] : []));
      for (let i = 0; i < rows.length; i += 1000) await database.db.insert(nodeClaims).values(rows.slice(i, i + 1000));
    } else {
      // A banned node takes no new claim: its jobs are the ones it held when the ban came.
      const banned = new Set(seeds.filter((sd) => sd.bannedUntil && sd.bannedUntil.getTime() > Date.now()).map((sd) => sd.id));
      for (const [i, p] of placed.entries()) {
        if (!claimed(p)) continue;
        if (banned.has(p.node)) await database.db.insert(nodeClaims).values({ nodeId: p.node, jobId: jobIds[i] });
        else expect(await claimNode(database.db, jobIds[i], p.node, 9)).toBe(true);
      }
    }
    // Claimed while waiting (as matching claims), then on to where the job is now.
    for (const status of ['queued', 'assigned', 'running', 'completed'] as const) {
      const ids = jobIds.filter((_, i) => placed[i].status === status);
      for (let i = 0; i < ids.length; i += 1000) {
        await database.db.update(jobs).set({ status }).where(inArray(jobs.id, ids.slice(i, i + 1000)));
      }
    }
    await database.db.execute(sql`analyze nodes`);
    await database.db.execute(sql`analyze jobs`);
    await database.db.execute(sql`analyze node_claims`);
  }

  beforeAll(async () => {
    database = await freshDatabase();
    // Every answer read afresh (these tests change the network between requests, and time the scans at 20k
    // nodes); reuse has its own test.
    const discovery = createDiscoveryService({ db: database.db, offlineAfterMs: OFFLINE_AFTER_MS, slowScanMs: Infinity });
    server = new grpc.Server();
    server.addService(
      loadProtocol().NodeDiscoveryService.service,
      createDiscoveryHandlers({ discovery, log: pino({ level: 'silent' }) }) as unknown as grpc.UntypedServiceImplementation,
    );
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    api = discoveryClient(`127.0.0.1:${port}`);
  });

  afterAll(async () => {
    api?.close();
    await new Promise<void>((resolve) => (server ? server.tryShutdown(() => resolve()) : resolve()));
    await database?.drop();
  });

  /**
   * A small network where every filter has something to include and something to exclude. Available for a job
   * (FindNodes): a b e h i j k l m. Not: c (its one slot is taken), d (banned), f (silent for an hour), g (offline).
   * Prices: j .07, i .13, h .20 (announced), k .33, a .41, m .49, c/d/e .57, b .73, l 2.00 (announced).
   */
  describe('filters, orders and statistics', () => {
    const t0 = Date.now();
    const seeds: Seed[] = [
      { id: 'a-eu', region: 'EU-West', reputation: 0.9, stake: 100, heartbeatAgoS: 1, completed: 12 },
      { id: 'b-us', devices: [device('CUDA', 24 * GiB)], ramGiB: 64, region: 'us-east', reputation: 0.6, capacity: 3, heartbeatAgoS: 2 },
      { id: 'c-busy', devices: [device('CUDA', 16 * GiB)], region: 'us-east', reputation: 0.8, heartbeatAgoS: 0.5 },
      { id: 'd-banned', devices: [device('CUDA', 16 * GiB)], reputation: 0.95, bannedUntil: new Date(t0 + 3600_000), heartbeatAgoS: 11 },
      { id: 'e-ban-over', devices: [device('CUDA', 16 * GiB)], reputation: 0.7, bannedUntil: new Date(t0 - 3600_000), heartbeatAgoS: 3 },
      { id: 'f-stale', reputation: 0.9, heartbeatAgoS: 3600 },
      { id: 'g-offline', reputation: 0.9, status: 'offline', heartbeatAgoS: 12 },
      {
        id: 'h-opencl',
        devices: [device('OPENCL', 4 * GiB)],
        ramGiB: 16,
        region: 'ap-south',
        heartbeatAgoS: 4,
        pricing: {
          billing_model: BILLING.PER_EPOCH,
          price_per_hour: 0.2,
          price_per_epoch: 0.01,
          usd_equivalent: 0.5,
          minimum_duration_minutes: 30,
          accepts_sol: true,
          free_tier_available: true,
          free_tier_minutes: 15,
          price_updated_at: '1700000000',
        },
      },
      { id: 'i-cpu', devices: [device('CPU', 64 * GiB)], cpuCores: 16, ramGiB: 64, region: '', reputation: 0.3, heartbeatAgoS: 5 },
      { id: 'j-ramonly', devices: [], cpuCores: 4, ramGiB: 16, heartbeatAgoS: 6 },
      { id: 'k-bigcpu', devices: [device('CPU', 128 * GiB), device('CUDA', 4 * GiB)], ramGiB: 128, heartbeatAgoS: 7 },
      { id: 'l-perjob', heartbeatAgoS: 8, pricing: { billing_model: BILLING.PER_JOB, price_per_hour: 2, price_per_job_base: 1.5 } },
      { id: 'm-noram', devices: [device('CUDA', 12 * GiB)], ramGiB: 0, stake: 20, heartbeatAgoS: 9 },
    ];
    const byId = new Map(seeds.map((s) => [s.id, nodeRow(s, t0)]));
    const price = (id: string) => byId.get(id)!.pricePerHour!;

    beforeAll(async () => {
      await reset(
        seeds,
        [
          { node: 'b-us', status: 'running' },
          { node: 'c-busy', status: 'assigned' },
          // Finished jobs take no capacity.
          { node: 'a-eu', status: 'completed' },
          { node: 'j-ramonly', status: 'completed' },
        ],
        t0,
      );
    });

    it('prices are the list prices or the announced ones', () => {
      expect(['j-ramonly', 'i-cpu', 'h-opencl', 'k-bigcpu', 'a-eu', 'm-noram', 'e-ban-over', 'b-us', 'l-perjob'].map(price)).toEqual([
        0.07, 0.13, 0.2, 0.33, 0.41, 0.49, 0.57, 0.73, 2,
      ]);
    });

    describe('FindNodes', () => {
      const available = ['j-ramonly', 'i-cpu', 'h-opencl', 'k-bigcpu', 'a-eu', 'm-noram', 'e-ban-over', 'b-us', 'l-perjob'];

      it('returns only nodes a job could be placed on now (online, not banned, free capacity), cheapest first, with price statistics', async () => {
        const res = await find();
        expect(res.error).toBeNull();
        expect(ids(res)).toEqual(available);
        expect(res.total_matching).toBe(9);
        const prices = available.map(price);
        expect(res.avg_price_per_hour).toBeCloseTo(prices.reduce((a: number, b: number) => a + b) / prices.length, 9);
        expect(res.min_price_per_hour).toBeCloseTo(0.07, 9);
        expect(res.max_price_per_hour).toBeCloseTo(2, 9);
        // A busy node shows online: is_online is liveness, not availability.
        expect(res.nodes.every((n: { is_online: boolean }) => n.is_online)).toBe(true);
      });

      it.each([
        ['CUDA', { required_device: DEVICE.CUDA }, ['k-bigcpu', 'a-eu', 'm-noram', 'e-ban-over', 'b-us', 'l-perjob']],
        ['OPENCL', { required_device: DEVICE.OPENCL }, ['h-opencl']],
        // CPU as in matching: a CPU device, or RAM; m-noram has neither.
        ['CPU', { required_device: DEVICE.CPU }, ['j-ramonly', 'i-cpu', 'h-opencl', 'k-bigcpu', 'a-eu', 'e-ban-over', 'b-us', 'l-perjob']],
        ['min_memory is RAM', { min_memory: String(48 * GiB) }, ['i-cpu', 'k-bigcpu', 'b-us']],
        // k-bigcpu's 128 GiB are on its CPU; its CUDA device has 4 GiB.
        ['min_vram on a device of the required type', { required_device: DEVICE.CUDA, min_vram: String(16 * GiB) }, ['e-ban-over', 'b-us']],
        // min_vram is an accelerator's memory: k-bigcpu's 128 GiB CPU device and i-cpu's 64 GiB do not count
        ['min_vram without a device type: any accelerator', { min_vram: String(12 * GiB) }, ['m-noram', 'e-ban-over', 'b-us']],
        ['min_vram for CPU: RAM or a CPU device', { required_device: DEVICE.CPU, min_vram: String(100 * GiB) }, ['k-bigcpu']],
        ['min_reputation 0..1', { min_reputation: 0.7 }, ['a-eu', 'e-ban-over']],
        ['min_compute_score', { min_compute_score: 1000 }, ['k-bigcpu', 'e-ban-over', 'b-us']],
        ['min_stake', { min_stake: 50 }, ['a-eu']],
        ['allowed_regions ignore case', { allowed_regions: ['EU-WEST', 'Ap-South'] }, ['j-ramonly', 'h-opencl', 'k-bigcpu', 'a-eu', 'm-noram', 'e-ban-over', 'l-perjob']],
        ['blocked_regions ignore case', { blocked_regions: ['Eu-West'] }, ['i-cpu', 'h-opencl', 'b-us']],
        ['allowed and blocked together', { allowed_regions: ['eu-west', 'us-east'], blocked_regions: ['EU-WEST'] }, ['b-us']],
        ['max_price_per_hour', { max_price_per_hour: 0.4 }, ['j-ramonly', 'i-cpu', 'h-opencl', 'k-bigcpu']],
        // h-opencl costs 0.20 CYXWIZ but announced 0.50 USD; the others are worth their CYXWIZ price.
        ['max_price_usd', { max_price_usd: 0.45 }, ['j-ramonly', 'i-cpu', 'k-bigcpu', 'a-eu']],
        ['preferred_billing PER_EPOCH', { preferred_billing: BILLING.PER_EPOCH }, ['h-opencl']],
        ['preferred_billing PER_JOB', { preferred_billing: BILLING.PER_JOB }, ['l-perjob']],
        ['preferred_billing PER_INFERENCE', { preferred_billing: BILLING.PER_INFERENCE }, []],
        ['require_free_tier', { require_free_tier: true }, ['h-opencl']],
        ['the Engine\'s browse call', { required_device: DEVICE.CUDA, min_vram: String(8 * GiB), min_reputation: 0.4, max_results: 50, sort_by: SORT.PRICE }, ['a-eu', 'm-noram', 'e-ban-over', 'b-us', 'l-perjob']],
      ])('%s', async (_name, req, expected) => {
        const res = await find(req);
        expect(res.error).toBeNull();
        expect(ids(res)).toEqual(expected);
        expect(res.total_matching).toBe(expected.length);
        const prices = expected.map(price);
        expect(res.min_price_per_hour).toBeCloseTo(prices.length ? Math.min(...prices) : 0, 9);
        expect(res.max_price_per_hour).toBeCloseTo(prices.length ? Math.max(...prices) : 0, 9);
        expect(res.avg_price_per_hour).toBeCloseTo(prices.length ? prices.reduce((a: number, b: number) => a + b) / prices.length : 0, 9);
      });

      it('preferred_region ranks nodes whose region contains it first and excludes none', async () => {
        const res = await find({ preferred_region: 'US' });
        expect(ids(res)).toEqual(['b-us', ...available.filter((id) => id !== 'b-us')]);
        expect(res.total_matching).toBe(9);
        const eu = await find({ preferred_region: 'eu-west', sort_by: SORT.REPUTATION });
        // eu-west (any case) first by reputation, then the rest by reputation; ties by id, in the sort's direction.
        expect(ids(eu)).toEqual(['a-eu', 'e-ban-over', 'm-noram', 'l-perjob', 'k-bigcpu', 'j-ramonly', 'b-us', 'h-opencl', 'i-cpu']);
      });

      it('max_results truncates; total_matching and the price statistics cover every match', async () => {
        const res = await find({ max_results: 2 });
        expect(ids(res)).toEqual(['j-ramonly', 'i-cpu']);
        expect(res.total_matching).toBe(9);
        expect(res.max_price_per_hour).toBeCloseTo(2, 9);
      });

      it.each([
        ['performance: compute score, best first', SORT.PERFORMANCE, ['b-us', 'k-bigcpu', 'e-ban-over', 'l-perjob', 'a-eu', 'm-noram', 'i-cpu', 'h-opencl', 'j-ramonly']],
        ['reputation, best first', SORT.REPUTATION, ['a-eu', 'e-ban-over', 'b-us', 'm-noram', 'l-perjob', 'k-bigcpu', 'j-ramonly', 'h-opencl', 'i-cpu']],
        // b-us has 2 of 3 slots free; the others 1 of 1, by id in the order's direction (never by heartbeat,
        // which moves while a client pages).
        ['availability: free capacity, then the id', SORT.AVAILABILITY, ['b-us', 'm-noram', 'l-perjob', 'k-bigcpu', 'j-ramonly', 'i-cpu', 'h-opencl', 'e-ban-over', 'a-eu']],
      ])('sort_by %s', async (_name, sortBy, expected) => {
        expect(ids(await find({ sort_by: sortBy }))).toEqual(expected);
      });

      it('compute scores are the ones the order used', async () => {
        const res = await find({ sort_by: SORT.PERFORMANCE });
        const scores = res.nodes.map((n: { compute_score: number }) => n.compute_score);
        expect(scores).toEqual([...scores].sort((a: number, b: number) => b - a));
        expect(scores[0]).toBe(byId.get('b-us')!.computeScore);
      });

      it.each([
        ['min_reputation on the 0..100 scale', { min_reputation: 40 }, 'min_reputation'],
        ['negative min_reputation', { min_reputation: -0.1 }, 'min_reputation'],
        ['unknown device', { required_device: 9 }, 'required_device'],
        ['unknown sort', { sort_by: 7 }, 'sort_by'],
        ['unknown billing model', { preferred_billing: 4 }, 'preferred_billing'],
        ['negative price', { max_price_per_hour: -1 }, 'max_price_per_hour'],
        ['negative stake', { min_stake: -5 }, 'min_stake'],
        ['negative max_results', { max_results: -1 }, 'max_results'],
        ['negative min_memory', { min_memory: '-1' }, 'min_memory'],
        ['an empty allowed region', { allowed_regions: ['eu-west', ' '] }, 'allowed_regions\\[1\\]'],
      ])('refuses %s with Error 400 naming the field', async (_name, req, field) => {
        const res = await find(req);
        expect(res.error).toMatchObject({ code: 400 });
        expect(res.error.message).toMatch(new RegExp(`^${field}:`));
        expect(res.nodes).toEqual([]);
        expect(res.total_matching).toBe(0);
      });
    });

    describe('ListNodes', () => {
      const all = seeds.map((s) => s.id);
      const online = all.filter((id) => id !== 'f-stale' && id !== 'g-offline');
      const byPrice = (list: string[]) => [...list].sort((x, y) => price(x) - price(y) || (x < y ? -1 : 1));
      const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
      const network = {
        avg: mean(online.map(price)),
        compute: online.map((id) => byId.get(id)!.computeScore!).reduce((a, b) => a + b, 0),
      };

      it('lists every node, cheapest first, with the counts and the network\'s live price and compute', async () => {
        const res = await list();
        expect(ids(res)).toEqual(byPrice(all));
        expect(res.next_page_token).toBe('');
        expect(res.total_count).toBe(13);
        expect(res.online_count).toBe(11);
        expect(res.network_avg_price).toBeCloseTo(network.avg, 9);
        expect(res.network_total_compute).toBeCloseTo(network.compute, 6);
        const online = new Map(res.nodes.map((n: { node_id: string; is_online: boolean }) => [n.node_id, n.is_online]));
        expect(online.get('f-stale')).toBe(false);
        expect(online.get('g-offline')).toBe(false);
        // Banned and busy nodes are alive; they are just not available (see the availability order).
        expect(online.get('d-banned')).toBe(true);
        expect(online.get('c-busy')).toBe(true);
      });

      it.each([
        ['online_only', { online_only: true }, online],
        ['filter_device CUDA', { filter_device: DEVICE.CUDA }, all.filter((id) => byId.get(id)!.deviceTypes!.includes('CUDA'))],
        ['filter_device CPU (a CPU device or RAM)', { filter_device: DEVICE.CPU }, all.filter((id) => id !== 'm-noram')],
        ['filter_region ignores case', { filter_region: 'US-EAST' }, ['b-us', 'c-busy']],
        ['filter_region is equality, not a substring', { filter_region: 'us' }, []],
        ['min and max price', { min_price_per_hour: 0.5, max_price_per_hour: 0.6 }, ['c-busy', 'd-banned', 'e-ban-over']],
        ['min price only', { min_price_per_hour: 0.7 }, ['b-us', 'l-perjob']],
        ['everything at once', { online_only: true, filter_device: DEVICE.CUDA, filter_region: 'eu-west', max_price_per_hour: 0.6 }, ['k-bigcpu', 'a-eu', 'm-noram', 'd-banned', 'e-ban-over']],
      ])('%s', async (_name, req, expected) => {
        const res = await list(req);
        expect(ids(res)).toEqual(byPrice(expected));
        expect(res.total_count).toBe(expected.length);
        expect(res.online_count).toBe(expected.filter((id) => online.includes(id)).length);
        // The network figures do not depend on the filters.
        expect(res.network_avg_price).toBeCloseTo(network.avg, 9);
        expect(res.network_total_compute).toBeCloseTo(network.compute, 6);
      });

      const orders: [string, number, string[]][] = [
        ['price', SORT.PRICE, byPrice(all)],
        ['performance', SORT.PERFORMANCE, [...all].sort((x, y) => byId.get(y)!.computeScore! - byId.get(x)!.computeScore! || (x < y ? 1 : -1))],
        ['reputation', SORT.REPUTATION, [...all].sort((x, y) => byId.get(y)!.reputation! - byId.get(x)!.reputation! || (x < y ? 1 : -1))],
        // Free capacity: b-us 2; online, unbanned, idle nodes 1; busy, banned and silent nodes 0; ties by id.
        ['availability', SORT.AVAILABILITY, ['b-us', 'm-noram', 'l-perjob', 'k-bigcpu', 'j-ramonly', 'i-cpu', 'h-opencl', 'e-ban-over', 'a-eu', 'g-offline', 'f-stale', 'd-banned', 'c-busy']],
      ];
      // sort_descending is descending for every key: it reverses price (cheapest first by default) exactly and
      // leaves the others, best (highest) first by default, as they are.
      const descendingOf = (sortBy: number, expected: string[]) => (sortBy === SORT.PRICE ? [...expected].reverse() : expected);
      it.each(orders)('sort_by %s, and sort_descending puts the highest first', async (_name, sortBy, expected) => {
        expect(ids(await list({ sort_by: sortBy }))).toEqual(expected);
        expect(ids(await list({ sort_by: sortBy, sort_descending: true }))).toEqual(descendingOf(sortBy, expected));
      });

      it('pages with an opaque token through every node exactly once, in every order and direction', async () => {
        for (const [, sortBy, expected] of orders) {
          for (const descending of [false, true]) {
            const seen: string[] = [];
            let token = '';
            let pages = 0;
            do {
              const res = await list({ sort_by: sortBy, sort_descending: descending, page_size: 4, page_token: token });
              expect(res.nodes.length).toBeGreaterThan(0);
              expect(res.total_count).toBe(13);
              seen.push(...ids(res));
              token = res.next_page_token;
              pages += 1;
            } while (token);
            expect(pages).toBe(4);
            expect(seen).toEqual(descending ? descendingOf(sortBy, expected) : expected);
          }
        }
      });

      it('refuses a bad request with an empty page and says why in the reply metadata', async () => {
        const cases: [object, string][] = [
          [{ page_token: 'not-a-token' }, 'page_token'],
          [{ page_size: -1 }, 'page_size'],
          [{ filter_device: 9 }, 'filter_device'],
          [{ sort_by: 4 }, 'sort_by'],
          [{ max_price_per_hour: -0.5 }, 'max_price_per_hour'],
          [{ min_price_per_hour: 0.8, max_price_per_hour: 0.5 }, 'min_price_per_hour'],
        ];
        for (const [req, field] of cases) {
          const { res, md } = await api.call('ListNodes', req);
          expect(res).toMatchObject({ nodes: [], next_page_token: '', total_count: 0, online_count: 0 });
          expect(md.get('x-cyxwiz-error-code')).toEqual(['400']);
          expect(String(md.get('x-cyxwiz-error-message')[0])).toMatch(new RegExp(`^${field}:`));
        }
        // A token of one order is not a position in another.
        const first = await list({ page_size: 2, sort_by: SORT.PRICE });
        const { res, md } = await api.call('ListNodes', { page_size: 2, sort_by: SORT.REPUTATION, page_token: first.next_page_token });
        expect(res.nodes).toEqual([]);
        expect(String(md.get('x-cyxwiz-error-message')[0])).toMatch(/^page_token: belongs to another sort order/);
      });
    });

    describe('GetNodeInfo', () => {
      const info = async (nodeId: string) => (await api.call('GetNodeInfo', { node_id: nodeId })).res;

      it('maps every field the server knows, reputation 0..1, int64 as strings, enums as numbers', async () => {
        const res = await info('h-opencl');
        expect(res.error).toBeNull();
        const row = byId.get('h-opencl')!;
        expect(res.info).toMatchObject({
          node_id: 'h-opencl',
          name: 'node h-opencl',
          version: { major: 1, minor: 4, patch: 2, build: 'gpu' },
          cpu_cores: 8,
          ram_total: String(16 * GiB),
          ram_available: String(8 * GiB),
          ip_address: '10.0.0.1',
          port: 50052,
          region: 'ap-south',
          compute_score: row.computeScore,
          reputation_score: 0.5,
          total_jobs_completed: '0',
          staked_amount: 0,
          wallet_address: 'wallet-h-opencl',
          is_online: true,
          last_heartbeat: String(Math.floor(row.lastHeartbeat!.getTime() / 1000)),
          supported_formats: ['ONNX', 'GGUF'],
          max_model_size: String(10 * GiB),
          supports_terminal_access: true,
          available_runtimes: ['python3.11', 'cuda12'],
          pricing: {
            billing_model: BILLING.PER_EPOCH,
            price_per_hour: 0.2,
            price_per_epoch: 0.01,
            usd_equivalent: 0.5,
            minimum_duration_minutes: 10,
            accepts_cyxwiz_token: true,
            accepts_sol: true,
            free_tier_available: true,
            free_tier_minutes: 15,
            price_updated_at: '1700000000',
          },
        });
        expect(res.info.devices).toEqual([
          expect.objectContaining({
            device_type: DEVICE.OPENCL,
            device_name: 'OPENCL device',
            memory_total: String(4 * GiB),
            vram_total: String(4 * GiB),
            vram_available: String(4 * GiB),
            compute_units: 80,
            supports_fp16: true,
            gpu_model: 'OPENCL model',
            driver_version: '550.1',
            pcie_generation: 4,
            pcie_lanes: 16,
          }),
        ]);
      });

      it('prices a node that announced nothing hourly at its list price, in CYXWIZ, USD equal', async () => {
        const res = await info('a-eu');
        expect(res.info).toMatchObject({ reputation_score: 0.9, staked_amount: 100, total_jobs_completed: '12', region: 'EU-West' });
        expect(res.info.pricing).toMatchObject({
          billing_model: BILLING.HOURLY,
          price_per_hour: 0.41,
          usd_equivalent: 0.41,
          minimum_duration_minutes: 10,
          accepts_cyxwiz_token: true,
          free_tier_available: false,
        });
      });

      it('lists accelerators first, so devices[0] (what the Engine shows) is the GPU', async () => {
        const res = await info('k-bigcpu');
        expect(res.info.devices.map((d: { device_type: number }) => d.device_type)).toEqual([DEVICE.CUDA, DEVICE.CPU]);
        expect(res.info.devices[0].vram_total).toBe(String(4 * GiB));
      });

      it('shows silent and offline nodes as not online', async () => {
        expect((await info('f-stale')).info.is_online).toBe(false);
        expect((await info('g-offline')).info.is_online).toBe(false);
      });

      it('answers an unknown node with Error 404 and a missing id with Error 400 naming node_id', async () => {
        const missing = await info('no-such-node');
        expect(missing.info).toBeNull();
        expect(missing.error).toMatchObject({ code: 404 });
        const empty = await info('');
        expect(empty.info).toBeNull();
        expect(empty.error).toMatchObject({ code: 400 });
        expect(empty.error.message).toMatch(/^node_id:/);
      });
    });
  });

  /**
   * Busy capacity is what matching counts: the node's rows in node_claims. Here the job rows alone would tell
   * another story — 'matched' holds a claim while its job still reads queued (dispatch under way), and
   * 'stale-row' has a running job row whose attempt already gave its claim back.
   */
  describe('busy capacity comes from capacity claims, as in matching', () => {
    const t0 = Date.now();
    const seeds: Seed[] = [
      { id: 'full', capacity: 2, heartbeatAgoS: 0.1 },
      { id: 'matched', capacity: 1, heartbeatAgoS: 0.2 },
      { id: 'stale-row', capacity: 1, heartbeatAgoS: 2 },
      { id: 'half', capacity: 2, heartbeatAgoS: 3 },
      { id: 'idle', capacity: 1, heartbeatAgoS: 4 },
    ];

    beforeAll(() =>
      reset(
        seeds,
        [
          { node: 'full', status: 'running' },
          { node: 'full', status: 'assigned' },
          { node: 'matched', status: 'queued' },
          { node: 'stale-row', status: 'running', claimed: false },
          { node: 'half', status: 'running' },
        ],
        t0,
      ),
    );

    it('leaves a node whose capacity is fully claimed out of FindNodes, and counts partly claimed nodes as available', async () => {
      const res = await find({ sort_by: SORT.AVAILABILITY });
      expect(ids(res)).toEqual(['stale-row', 'idle', 'half']);
      expect(res.total_matching).toBe(3);
    });

    it('sorts fully claimed nodes last by availability, however fresh their heartbeat, ties by id, and still shows them online', async () => {
      const res = await list({ sort_by: SORT.AVAILABILITY });
      expect(ids(res)).toEqual(['stale-row', 'idle', 'half', 'matched', 'full']);
      expect(ids(await list({ sort_by: SORT.AVAILABILITY, sort_descending: true }))).toEqual(['stale-row', 'idle', 'half', 'matched', 'full']);
      expect(res.nodes.every((n: { is_online: boolean }) => n.is_online)).toBe(true);
      expect(ids(await list({ online_only: true, sort_by: SORT.AVAILABILITY }))).toEqual(['stale-row', 'idle', 'half', 'matched', 'full']);
    });

    it('agrees with claimNode: a claim refused on a node discovery shows full, taken on one it shows free', async () => {
      await database.db.insert(jobs).values(jobRow('another', null, 'pending'));
      expect(await claimNode(database.db, 'another', 'full', 9)).toBe(false);
      expect(await claimNode(database.db, 'another', 'matched', 9)).toBe(false);
      expect((await nodeCounts(database.db, new Date(Date.now() - OFFLINE_AFTER_MS))).busy).toBe(3);
      expect(await claimNode(database.db, 'another', 'stale-row', 9)).toBe(true);
      expect(ids(await find({ sort_by: SORT.AVAILABILITY }))).toEqual(['idle', 'half']);
      expect(ids(await list({ sort_by: SORT.AVAILABILITY }))).toEqual(['idle', 'half', 'stale-row', 'matched', 'full']);
      expect(await nodeCounts(database.db, new Date(Date.now() - OFFLINE_AFTER_MS))).toEqual({ total: 5, online: 5, busy: 4 });
    });
  });

  /** total_compute_hours and uptime_percentage from the counters on the node's row (domain/node-stats.ts). */
  describe('track record in NodeInfo', () => {
    const t0 = Date.now();
    const H = 3600;
    const seeds: Seed[] = [
      // 100 h on record, 89 h of it online up to its last heartbeat a second ago, 50.5 h of finished attempts
      { id: 'veteran', computeMs: 50.5 * H * 1000, onlineMs: 89 * H * 1000, uptimeSinceAgoS: 100 * H, heartbeatAgoS: 1 },
      // offline: the time since its last heartbeat is not online time; just under 3 h of attempts is 2 whole hours
      { id: 'gone', status: 'offline', computeMs: 3 * H * 1000 - 1, onlineMs: 30 * H * 1000, uptimeSinceAgoS: 40 * H, heartbeatAgoS: 3 * H },
      // registered a moment ago and online: 100 %, not 0
      { id: 'newcomer', heartbeatAgoS: 0 },
    ];

    beforeAll(() => reset(seeds, [], t0));

    it('ListNodes, FindNodes and GetNodeInfo report the same whole compute hours and uptime share', async () => {
      const byNode = (res: { nodes: { node_id: string }[] }) => new Map(res.nodes.map((n) => [n.node_id, n as Record<string, unknown>]));
      const listed = byNode(await list());
      expect(listed.get('veteran')).toMatchObject({ total_compute_hours: '50', uptime_percentage: expect.closeTo(89, 2) });
      expect(listed.get('gone')).toMatchObject({ total_compute_hours: '2', uptime_percentage: expect.closeTo(75, 2), is_online: false });
      expect(listed.get('newcomer')).toMatchObject({ total_compute_hours: '0', uptime_percentage: expect.closeTo(100, 6) });
      const found = byNode(await find());
      expect([...found.keys()].sort()).toEqual(['newcomer', 'veteran']);
      expect(found.get('veteran')).toMatchObject({ total_compute_hours: '50', uptime_percentage: expect.closeTo(89, 2) });
      const { res } = await api.call('GetNodeInfo', { node_id: 'gone' });
      expect(res.info).toMatchObject({ total_compute_hours: '2', uptime_percentage: expect.closeTo(75, 2) });
    });
  });

  describe('a bare record (a heartbeat from an id the server did not know)', () => {
    const t0 = Date.now();
    beforeAll(async () => {
      await reset([{ id: 'registered' }, { id: 'bare' }], [], t0);
      // As ensureNode leaves it until the node registers again: no endpoint, no hardware, no price.
      await database.db
        .update(nodes)
        .set({ ipAddress: '', port: 0, devices: [], deviceTypes: [], maxDeviceMemory: 0, pricePerHour: 0 })
        .where(inArray(nodes.id, ['bare']));
    });

    it('is alive but not on offer: online-only ListNodes and FindNodes leave it out (it would list first, at price 0)', async () => {
      expect(ids(await list())).toEqual(['bare', 'registered']);
      expect(ids(await list({ online_only: true }))).toEqual(['registered']);
      expect(ids(await find())).toEqual(['registered']);
    });
  });

  /** Many nodes with many equal keys: paging must neither repeat nor skip one. */
  describe('paging a larger network', () => {
    const t0 = Date.now();
    const N = 1234;
    const seeds: Seed[] = Array.from({ length: N }, (_, i) => ({
      id: `p-${String(i).padStart(5, '0')}`,
      devices: i % 5 === 0 ? [device('CPU', 0)] : [device(i % 7 === 0 ? 'OPENCL' : 'CUDA', (4 + (i % 4) * 4) * GiB)],
      cpuCores: 4 + (i % 3) * 4,
      ramGiB: 16 * (1 + (i % 2)),
      region: ['eu-west', 'us-east', 'ap-south'][i % 3],
      reputation: [0.2, 0.5, 0.5, 0.8][i % 4],
      capacity: 1 + (i % 3),
      status: i % 10 === 0 ? 'offline' : 'online',
      heartbeatAgoS: i % 11 === 0 ? 3600 : i % 6,
      bannedUntil: i % 13 === 0 ? new Date(t0 + 3600_000) : null,
    }));
    const active = seeds.filter((_, i) => i % 4 === 1).map((s) => ({ node: s.id, status: 'running' as const }));
    const rows = seeds.map((s) => nodeRow(s, t0));
    const activeOf = new Map<string, number>();
    for (const a of active) activeOf.set(a.node, (activeOf.get(a.node) ?? 0) + 1);
    const isOnline = (r: NodeInsert) => r.status === 'online' && r.lastHeartbeat!.getTime() > t0 - OFFLINE_AFTER_MS;
    const free = (r: NodeInsert) =>
      isOnline(r) && !(r.bannedUntil && r.bannedUntil.getTime() > t0) ? Math.max(r.capacity! - (activeOf.get(r.id) ?? 0), 0) : 0;
    const cmp = (a: number, b: number) => (a < b ? -1 : a > b ? 1 : 0);
    const keyed: Record<number, (a: NodeInsert, b: NodeInsert) => number> = {
      [SORT.PRICE]: (a, b) => cmp(a.pricePerHour!, b.pricePerHour!) || (a.id < b.id ? -1 : 1),
      [SORT.PERFORMANCE]: (a, b) => cmp(b.computeScore!, a.computeScore!) || (a.id < b.id ? 1 : -1),
      [SORT.REPUTATION]: (a, b) => cmp(b.reputation!, a.reputation!) || (a.id < b.id ? 1 : -1),
      [SORT.AVAILABILITY]: (a, b) => cmp(free(b), free(a)) || (a.id < b.id ? 1 : -1),
    };

    beforeAll(() => reset(seeds, active, t0));

    async function pageThrough(req: object, pageSize: number): Promise<string[]> {
      const seen: string[] = [];
      let token = '';
      do {
        const res = await list({ ...req, page_size: pageSize, page_token: token });
        seen.push(...ids(res));
        token = res.next_page_token;
      } while (token);
      return seen;
    }

    it.each([
      ['price', SORT.PRICE],
      ['performance', SORT.PERFORMANCE],
      ['reputation', SORT.REPUTATION],
      ['availability', SORT.AVAILABILITY],
    ])('sort_by %s: every node once, in order, both directions', async (_name, sortBy) => {
      const expected = [...rows].sort(keyed[sortBy]).map((r) => r.id);
      expect(new Set(expected).size).toBe(N);
      expect(await pageThrough({ sort_by: sortBy }, 97)).toEqual(expected);
      expect(await pageThrough({ sort_by: sortBy, sort_descending: true }, 97)).toEqual(sortBy === SORT.PRICE ? [...expected].reverse() : expected);
    });

    it('sort_by availability: a node that heartbeats while a client pages is neither skipped nor repeated', async () => {
      const expected = [...rows].sort(keyed[SORT.AVAILABILITY]).map((r) => r.id);
      const first = await list({ sort_by: SORT.AVAILABILITY, page_size: 97 });
      // Every live node not listed yet beats now (fresher than any on the first page).
      const rest = rows.filter((r) => isOnline(r) && !ids(first).includes(r.id)).map((r) => r.id);
      await database.db.update(nodes).set({ lastHeartbeat: new Date(t0 + 1000) }).where(inArray(nodes.id, rest));
      try {
        const seen = [...ids(first)];
        let token = first.next_page_token;
        while (token) {
          const res = await list({ sort_by: SORT.AVAILABILITY, page_size: 97, page_token: token });
          seen.push(...ids(res));
          token = res.next_page_token;
        }
        expect(seen).toEqual(expected);
      } finally {
        for (const r of rows.filter((row) => rest.includes(row.id))) {
          await database.db.update(nodes).set({ lastHeartbeat: r.lastHeartbeat }).where(eq(nodes.id, r.id));
        }
      }
    });

    it('pages a filtered listing (online CUDA nodes) the same way', async () => {
      const expected = [...rows]
        .filter((r) => isOnline(r) && r.deviceTypes!.includes('CUDA'))
        .sort(keyed[SORT.REPUTATION])
        .map((r) => r.id);
      const res = await list({ online_only: true, filter_device: DEVICE.CUDA, sort_by: SORT.REPUTATION, page_size: 10 });
      expect(res.total_count).toBe(expected.length);
      expect(res.online_count).toBe(expected.length);
      expect(await pageThrough({ online_only: true, filter_device: DEVICE.CUDA, sort_by: SORT.REPUTATION }, 50)).toEqual(expected);
    });

    it('pages hold 50 nodes by default and at most 500', async () => {
      const first = await list();
      expect(first.nodes).toHaveLength(50);
      expect(first.next_page_token).not.toBe('');
      expect((await list({ page_size: 100_000 })).nodes).toHaveLength(500);
    });

    it('FindNodes caps max_results at 500 and counts every match', async () => {
      const expected = rows.filter((r) => free(r) > 0);
      const res = await find({ max_results: 100_000 });
      expect(res.nodes).toHaveLength(500);
      expect(res.total_matching).toBe(expected.length);
      expect((await find()).nodes).toHaveLength(50);
    });

    it('answers whose scan was slow are reused briefly by identical requests: ListNodes counts (not its pages) and FindNodes', async () => {
      // Every scan counts as slow here, and counts are reused for a minute.
      const cached = createDiscoveryService({ db: database.db, offlineAfterMs: OFFLINE_AFTER_MS, slowScanMs: 0, reuseMs: 60_000 });
      const fresh = createDiscoveryService({ db: database.db, offlineAfterMs: OFFLINE_AFTER_MS });
      const query = { pageToken: '', onlineOnly: false, device: 'UNKNOWN' as const, region: '', sort: 'price' as const, descending: false };
      const before = await cached.list(query);
      expect(before.total).toBe(N);
      const findQuery = { device: 'UNKNOWN' as const, preferredRegion: '', allowedRegions: [], blockedRegions: [], requireFreeTier: false, sort: 'reputation' as const };
      const found = await cached.find(findQuery);
      const extra: Seed = { id: 'p-zz-new', devices: [device('CUDA', 8 * GiB)], cpuCores: 4, ramGiB: 16, region: 'eu-west', reputation: 1, capacity: 1, status: 'online', heartbeatAgoS: 0, bannedUntil: null };
      await database.db.insert(nodes).values(nodeRow(extra, Date.now()));
      try {
        const again = await cached.list({ ...query, sort: 'reputation' }); // same filter, another order
        expect(again.total).toBe(N);
        expect(again.online).toBe(before.online);
        expect(again.nodes[0].id).toBe('p-zz-new'); // the page itself is read afresh (the best reputation)
        expect((await cached.list({ ...query, region: 'eu-west' })).total).toBe(rows.filter((r) => r.region === 'eu-west').length + 1);
        expect((await fresh.list(query)).total).toBe(N + 1);
        expect((await cached.find(findQuery)).totalMatching).toBe(found.totalMatching);
        expect((await cached.find({ ...findQuery, maxResults: 10 })).nodes[0].id).toBe('p-zz-new');
        expect((await fresh.find(findQuery)).totalMatching).toBe(found.totalMatching + 1);
      } finally {
        await database.db.delete(nodes).where(eq(nodes.id, 'p-zz-new'));
      }
    });
  });

  describe('at 20,000 nodes', () => {
    const t0 = Date.now();
    const N = 20_000;
    beforeAll(async () => {
      const seeds: Seed[] = Array.from({ length: N }, (_, i) => ({
        id: `s-${String(i).padStart(6, '0')}`,
        devices: i % 4 === 0 ? [device('CPU', 0)] : [device(i % 9 === 0 ? 'OPENCL' : 'CUDA', (4 + (i % 6) * 4) * GiB), device('CPU', 0)],
        cpuCores: 4 + (i % 4) * 4,
        ramGiB: 16 * (1 + (i % 4)),
        region: ['eu-west', 'us-east', 'ap-south', 'sa-east', ''][i % 5],
        reputation: ((i * 37) % 100) / 100,
        stake: i % 50,
        capacity: 1 + (i % 2),
        status: i % 20 === 0 ? 'offline' : 'online',
        heartbeatAgoS: i % 17 === 0 ? 3600 : i % 10,
        bannedUntil: i % 97 === 0 ? new Date(t0 + 3600_000) : null,
        completed: i % 300,
      }));
      const active = seeds.filter((_, i) => i % 3 === 0).map((s) => ({ node: s.id, status: 'running' as const }));
      await reset(seeds, active, t0, { bulkClaims: true });
    }, 120_000);

    async function timed(what: string, run: () => Promise<unknown>): Promise<void> {
      await run(); // warm-up
      const times: number[] = [];
      for (let i = 0; i < 20; i += 1) {
        const start = performance.now();
        await run();
        times.push(performance.now() - start);
      }
      times.sort((a, b) => a - b);
      console.log(`${what} at ${N} nodes over gRPC: p50 ${times[10].toFixed(1)} ms, max ${times[19].toFixed(1)} ms`);
    }

    it('answers the Engine\'s FindNodes and ListNodes quickly (timings logged, not asserted)', async () => {
      const engineFind = { required_device: DEVICE.CUDA, min_vram: String(8 * GiB), min_reputation: 0.4, max_results: 50, sort_by: SORT.PRICE };
      const res = await find(engineFind);
      expect(res.nodes).toHaveLength(50);
      expect(res.total_matching).toBeGreaterThan(1000);
      for (const sortBy of [SORT.PRICE, SORT.PERFORMANCE, SORT.REPUTATION, SORT.AVAILABILITY]) {
        await timed(`FindNodes (Engine filters, sort ${sortBy})`, () => find({ ...engineFind, sort_by: sortBy }));
      }
      await timed('FindNodes (every filter)', () =>
        find({
          ...engineFind,
          min_memory: String(32 * GiB),
          min_compute_score: 500,
          min_stake: 10,
          preferred_region: 'eu',
          blocked_regions: ['sa-east'],
          max_price_per_hour: 1,
          max_price_usd: 1,
          sort_by: SORT.PERFORMANCE,
        }),
      );
      const page = await list({ online_only: true, page_size: 50 });
      expect(page.nodes).toHaveLength(50);
      await timed('ListNodes (online_only, page_size 50)', () => list({ online_only: true, page_size: 50 }));
      let token = '';
      for (let i = 0; i < 19; i += 1) token = (await list({ online_only: true, page_size: 50, page_token: token })).next_page_token;
      expect(token).not.toBe('');
      await timed('ListNodes (online_only, page 20 through its token)', () => list({ online_only: true, page_size: 50, page_token: token }));
      await timed('ListNodes (availability, page_size 500)', () => list({ sort_by: SORT.AVAILABILITY, page_size: 500 }));
    }, 120_000);
  });
});
