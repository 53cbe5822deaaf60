import * as grpc from '@grpc/grpc-js';
import { loadProtocol } from '../../src/protocol/load';
import { protocolClient } from '../support/grpc-clients';
import { useSystem } from '../support/system';
import type { SimNode } from '../support/sim-node';
import { DEVICE_CPU, DEVICE_CUDA, eventually, GiB, nodePool } from './helpers';

/**
 * NodeDiscoveryService through the whole system, called exactly as the shipping Engine browses
 * (grpc_client.cpp): ListNodes{online_only, page_size 50} and FindNodes with its hardware, trust and sort
 * fields, 15 s deadline, no authorization metadata. Simulated nodes register and heartbeat like the daemon.
 */

const OFFLINE_AFTER_S = 3;
const SORT_BY_PRICE = 0;
const SORT_BY_PERFORMANCE = 1;

// Two jobs a minute: this file submits jobs only to see that limit.
const sys = useSystem({ name: 'discovery', env: { NODE_OFFLINE_AFTER_S: OFFLINE_AFTER_S, SUBMIT_JOBS_PER_MINUTE: 2 } });
const nodes = nodePool(sys);

/** The Engine's NodeDiscoveryService stub: plain h2c, a 15 s deadline per call. */
function engineDiscovery(address: string) {
  const Ctor = loadProtocol().NodeDiscoveryService;
  const client = new Ctor(address, grpc.credentials.createInsecure()) as unknown as grpc.Client &
    Record<string, (req: unknown, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: any) => void) => void>;
  return {
    call: (method: 'ListNodes' | 'FindNodes' | 'GetNodeInfo', request: object): Promise<any> =>
      new Promise((resolve, reject) =>
        client[method](request, { deadline: Date.now() + 15_000 }, (err, res) => (err ? reject(err) : resolve(res))),
      ),
    close: () => client.close(),
  };
}

let engine: ReturnType<typeof engineDiscovery>;
let small: SimNode;
let big: SimNode;
let cpu: SimNode;

beforeAll(async () => {
  engine = engineDiscovery(sys().grpcAddress);
  [small, big, cpu] = await Promise.all([
    nodes.start({ name: 'gpu-8g', device: 'CUDA', vramBytes: 8 * GiB }),
    nodes.start({ name: 'gpu-24g', device: 'CUDA', vramBytes: 24 * GiB }),
    nodes.start({ name: 'cpu-only', device: 'CPU', vramBytes: 8 * GiB }),
  ]);
});

afterAll(async () => {
  engine?.close();
  await nodes.stopAll();
});

const ids = (res: { nodes: { node_id: string }[] }) => res.nodes.map((n) => n.node_id);
const listOnline = () => engine.call('ListNodes', { online_only: true, page_size: 50 });
const findCuda = (minVram: number, sortBy = SORT_BY_PRICE) =>
  engine.call('FindNodes', { required_device: DEVICE_CUDA, min_vram: String(minVram), min_reputation: 0.4, max_results: 50, sort_by: sortBy });

test('ListNodes{online_only, page_size 50} returns the registered nodes with every field the Engine reads', async () => {
  const res = await listOnline();
  expect(new Set(ids(res))).toEqual(new Set([small.nodeId, big.nodeId, cpu.nodeId]));
  expect(res).toMatchObject({ next_page_token: '', total_count: 3, online_count: 3 });
  const byId = new Map(res.nodes.map((n: { node_id: string }) => [n.node_id, n]));
  const expected: [SimNode, string, number, number, number][] = [
    // node, name, device type, VRAM, list price (CUDA 0.25 + 0.02/GiB; CPU 0.05 + 0.005/core)
    [small, 'gpu-8g', DEVICE_CUDA, 8 * GiB, 0.41],
    [big, 'gpu-24g', DEVICE_CUDA, 24 * GiB, 0.73],
    [cpu, 'cpu-only', DEVICE_CPU, 8 * GiB, 0.09],
  ];
  for (const [node, name, deviceType, vram, price] of expected) {
    const info = byId.get(node.nodeId) as any;
    expect(info).toMatchObject({
      node_id: node.nodeId,
      name,
      region: 'local',
      is_online: true,
      ip_address: '127.0.0.1',
      port: node.port,
      cpu_cores: 8,
      reputation_score: 0.5,
      total_jobs_completed: '0',
      staked_amount: 0,
      pricing: { billing_model: 0, price_per_hour: price, usd_equivalent: price, free_tier_available: false },
    });
    expect(info.devices[0]).toMatchObject({ device_type: deviceType, vram_total: String(vram) });
    expect(info.compute_score).toBeGreaterThan(0);
    // The Engine shows reputation as a percentage of a 0..1 value.
    expect(info.reputation_score).toBeGreaterThanOrEqual(0);
    expect(info.reputation_score).toBeLessThanOrEqual(1);
  }
  expect(res.network_avg_price).toBeCloseTo((0.41 + 0.73 + 0.09) / 3, 9);
});

test('FindNodes as the Engine sends it honours device, VRAM and reputation, and sorts', async () => {
  const roomy = await findCuda(16 * GiB);
  expect(roomy.error).toBeNull();
  expect(ids(roomy)).toEqual([big.nodeId]);
  expect(roomy).toMatchObject({ total_matching: 1, min_price_per_hour: 0.73, max_price_per_hour: 0.73 });

  const cheapest = await findCuda(4 * GiB, SORT_BY_PRICE);
  expect(ids(cheapest)).toEqual([small.nodeId, big.nodeId]);
  expect(cheapest.avg_price_per_hour).toBeCloseTo((0.41 + 0.73) / 2, 9);
  expect(cheapest.nodes[0]).toMatchObject({ is_online: true, port: small.port, pricing: { price_per_hour: 0.41 } });

  const fastest = await findCuda(4 * GiB, SORT_BY_PERFORMANCE);
  expect(ids(fastest)).toEqual([big.nodeId, small.nodeId]);

  // Reputation is 0..1 on the wire and in the filter: every node starts at 0.5.
  const trusted = await engine.call('FindNodes', { required_device: DEVICE_CUDA, min_reputation: 0.6, max_results: 50 });
  expect(trusted).toMatchObject({ nodes: [], total_matching: 0, error: null });
  const percent = await engine.call('FindNodes', { required_device: DEVICE_CUDA, min_reputation: 40, max_results: 50 });
  expect(percent.error).toMatchObject({ code: 400 });
});

test('EstimateJobCost prices with the cost formula, at the mean price of the tier\'s available nodes', async () => {
  const wallet = protocolClient('WalletService', sys().grpcAddress);
  try {
    // enterprise = CUDA: the two CUDA nodes price at 0.41 and 0.73 CYXWIZ/h, mean 0.57. MNIST, 10,000 samples,
    // 3 epochs: 3 min of run time, charged at the 10-minute minimum: ceil(0.57 × 10^9 × 600 / 3600) units.
    const cuda = await wallet.call('EstimateJobCost', { model_type: 'MNIST', epochs: 3, dataset_size: 10_000, node_tier: 'enterprise' });
    expect(cuda).toMatchObject({ status: 1, estimated_cost: 0.095, estimated_time_minutes: 3 });
    expect(cuda.breakdown).toContain('95000000 units');
    expect(cuda.breakdown).toContain('the mean of 2 available enterprise (CUDA) nodes');

    // premium = OpenCL: none registered, so the list price of the reference 8 GiB card (0.23 CYXWIZ/h).
    // ResNet-50, 20,000 samples, 2 epochs: 100 × 2 × 2 = 400 min.
    const opencl = await wallet.call('EstimateJobCost', { model_type: 'ResNet-50', epochs: 2, dataset_size: 20_000, node_tier: 'premium' });
    expect(opencl).toMatchObject({ status: 1, estimated_time_minutes: 400 });
    expect(opencl.breakdown).toContain('1533333334 units');
    expect(opencl.breakdown).toContain('reference premium (OPENCL) node');

    const bad = await wallet.call('EstimateJobCost', { model_type: 'MNIST', epochs: 1, dataset_size: 1, node_tier: 'gold' });
    expect(bad).toMatchObject({ estimated_cost: 0 });
    expect(bad.status).not.toBe(1);
    expect(bad.message).toMatch(/node_tier/);
  } finally {
    wallet.close();
  }
});

test('GetNodeInfo describes one node; an unknown id is Error 404', async () => {
  const res = await engine.call('GetNodeInfo', { node_id: big.nodeId });
  expect(res.error).toBeNull();
  expect(res.info).toMatchObject({ node_id: big.nodeId, name: 'gpu-24g', is_online: true, ram_total: String(32 * GiB) });
  expect((await engine.call('GetNodeInfo', { node_id: 'no-such-node' })).error).toMatchObject({ code: 404 });
});

test('a node that stops heartbeating drops out of online results, and comes back when it beats again', async () => {
  small.pauseHeartbeats();
  const silentAt = Date.now();
  const list = await eventually('the silent node to leave ListNodes{online_only}', async () => {
    const res = await listOnline();
    return !ids(res).includes(small.nodeId) ? res : undefined;
  }, 20_000);
  // Not before the offline window has passed since its last heartbeat.
  expect(Date.now() - silentAt).toBeGreaterThanOrEqual((OFFLINE_AFTER_S - 1.5) * 1000);
  expect(new Set(ids(list))).toEqual(new Set([big.nodeId, cpu.nodeId]));
  expect(list).toMatchObject({ total_count: 2, online_count: 2 });
  expect(ids(await findCuda(4 * GiB))).toEqual([big.nodeId]);

  // Still listed without online_only, as offline.
  const all = await engine.call('ListNodes', { page_size: 50 });
  expect(all).toMatchObject({ total_count: 3, online_count: 2 });
  expect(all.nodes.find((n: { node_id: string }) => n.node_id === small.nodeId)).toMatchObject({ is_online: false });
  expect((await engine.call('GetNodeInfo', { node_id: small.nodeId })).info.is_online).toBe(false);

  small.resumeHeartbeats();
  await eventually('the node to be back in FindNodes', async () => {
    const res = await findCuda(4 * GiB);
    return ids(res).includes(small.nodeId) ? res : undefined;
  }, 20_000);
  expect(new Set(ids(await listOnline()))).toEqual(new Set([small.nodeId, big.nodeId, cpu.nodeId]));
});

test('SubmitJob is limited per caller (SUBMIT_JOBS_PER_MINUTE, 2 here): the third in a minute is a 429, nothing recorded for it', async () => {
  const jobs = protocolClient('JobService', sys().grpcAddress);
  try {
    // Jobs no node here fits: they wait, and are cancelled below.
    const config = { job_type: 1, priority: 1, dataset_uri: 'remote://engine/x', batch_size: 1, epochs: 1, required_device: DEVICE_CUDA, estimated_memory: String(1024 * GiB), estimated_duration: '60', payment_amount: 0.5 };
    const first = await jobs.call('SubmitJob', { config });
    const second = await jobs.call('SubmitJob', { config });
    expect([first.status, second.status]).toEqual([1, 1]);
    const before = await sys().query<{ n: number }>('SELECT count(*)::int AS n FROM jobs');
    const third = await jobs.call('SubmitJob', { config });
    expect(third).toMatchObject({ status: 6, job_id: '', error: { code: 429, message: expect.stringContaining('too many jobs') } });
    expect(await sys().query<{ n: number }>('SELECT count(*)::int AS n FROM jobs')).toEqual(before);
    for (const { job_id } of [first, second]) await jobs.call('CancelJob', { job_id }, { deadlineMs: 30_000 });
  } finally {
    jobs.close();
  }
});
