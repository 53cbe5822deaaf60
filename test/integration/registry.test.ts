import { createPrivateKey, sign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Keypair } from '@solana/web3.js';
import path from 'node:path';
import { and, eq, inArray, sql } from 'drizzle-orm';
import pino from 'pino';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createJobActivities } from '../../src/activities/jobs';
import { MIGRATIONS_DIR, openDatabase, type Db } from '../../src/db/client';
import { claimNode, createNodeCache } from '../../src/db/node-cache';
import * as nodesRepo from '../../src/db/nodes-repo';
import * as jobsRepo from '../../src/db/jobs-repo';
import { heartbeatRelays, jobEvents, jobs, nodeClaims, nodeMetrics, nodes, payments } from '../../src/db/schema';
import type { JobPhase, JobSpec } from '../../src/domain/job';
import { nodeStats } from '../../src/domain/node-stats';
import { createDiscoveryService } from '../../src/services/discovery-service';
import { callerGate, createHeartbeatHub } from '../../src/services/heartbeat-hub';
import type { JobWorkflowGateway } from '../../src/services/job-workflows';
import { createNodeService } from '../../src/services/nodes-service';
import { createWalletLinks, linkExpiry, linkMessage } from '../../src/services/wallet-links';
import type { NodeRegistration } from '../../src/db/nodes-repo';
import { freshDatabase } from '../support/db';

const GiB = 2 ** 30;
const log = pino({ level: 'silent' });

function registration(over: Partial<NodeRegistration> = {}): NodeRegistration {
  return {
    name: 'n',
    cpuCores: 8,
    ramTotal: 32 * GiB,
    ramAvailable: 16 * GiB,
    devices: [
      {
        deviceType: 'CUDA', deviceName: 'RTX', memoryTotal: 8 * GiB, memoryAvailable: 8 * GiB, computeUnits: 0,
        supportsFp64: false, supportsFp16: true, gpuModel: 'RTX', vramTotal: 8 * GiB, vramAvailable: 8 * GiB,
        driverVersion: '', cudaVersion: '', pcieGeneration: 0, pcieLanes: 0, computeCapability: 0,
      },
    ],
    ipAddress: '10.0.0.1',
    port: 50052,
    region: 'eu',
    walletAddress: '',
    profile: { version: '1', supportedFormats: [], maxModelSize: 0, supportsTerminalAccess: false, availableRuntimes: [], stakedAmount: 0 },
    ...over,
  };
}

const spec = (jobId: string, over: Partial<JobSpec> = {}): JobSpec => ({
  jobId, jobType: 'TRAINING', priority: 'NORMAL', modelDefinition: '', hyperparameters: {}, datasetUri: 'x', batchSize: 1,
  epochs: 1, requiredDevice: 'CUDA', estimatedMemory: 4 * GiB, estimatedDuration: 0, paymentUnits: '10', paymentAddress: 'p',
  escrowTxHash: '', reservationDurationMinutes: 0, ...over,
});

/**
 * Ages a node row's change time (as if unchanged since `at`): the database stamps every change with its own
 * clock (migration 0022), so the stamping trigger is held off for this one write.
 */
async function ageNodeRow(db: Db, nodeId: string, at: Date): Promise<void> {
  await db.transaction(async (tx) => {
    await tx.execute(sql`alter table nodes disable trigger nodes_stamp_update`);
    await tx.update(nodes).set({ updatedAt: at }).where(eq(nodes.id, nodeId));
    await tx.execute(sql`alter table nodes enable trigger nodes_stamp_update`);
  });
}

async function eventuallyTrue(what: () => boolean, ms = 5000): Promise<void> {
  for (const until = Date.now() + ms; !what() && Date.now() < until; ) await new Promise((r) => setTimeout(r, 20));
  expect(what()).toBe(true);
}

/** A workflow gateway that records what the services ask of Temporal. */
function recordingGateway() {
  const calls: { method: string; args: unknown[] }[] = [];
  const record = (method: string) => async (...args: unknown[]) => void calls.push({ method, args });
  return {
    calls,
    gateway: {
      start: record('start'), nodesChanged: record('nodesChanged'), progress: record('progress'), accepted: record('accepted'),
      complete: record('complete'), fail: record('fail'), cancel: record('cancel'), nodeAlive: record('nodeAlive'),
      walletRegistered: record('walletRegistered'),
    } as unknown as JobWorkflowGateway,
  };
}

describe('node registry, heartbeats and matching (real Postgres)', () => {
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let clock = Date.now();
  beforeAll(async () => {
    database = await freshDatabase();
  });
  afterAll(() => database.drop());

  function services() {
    const { calls, gateway } = recordingGateway();
    const heartbeats = createHeartbeatHub({
      db: database.db, workflows: gateway, flushMs: 60_000, offlineAfterMs: 30_000, metricsSampleMs: 60_000,
      metricsRetentionMs: 3600_000, tokenDecimals: 9, log, now: () => clock,
    });
    const nodeService = createNodeService({ db: database.db, workflows: gateway, heartbeats, offlineAfterMs: 30_000, tokenDecimals: 9, log });
    return { calls, heartbeats, nodeService };
  }

  /** The job activities over `cache`, on the test's clock. */
  function jobActivities(cache: ReturnType<typeof createNodeCache>, wakeQueued: (nodeIds: string[]) => Promise<void> = async () => undefined) {
    return createJobActivities({ db: database.db, nodes: cache, assignPortOffset: 3, tokenDecimals: 9, heartbeatTimeoutMs: 30_000, wakeQueued, now: () => new Date(clock) });
  }

  it('gives the same node the same id by its own id, its wallet or its endpoint, and adopts a new node\'s id', async () => {
    const { nodeService } = services();
    const first = await nodeService.register('node_1700000000', registration());
    expect(first).toEqual({ nodeId: 'node_1700000000', created: true });
    // while it is online elsewhere, nobody else may register as it
    await expect(nodeService.register('node_1700000000', registration({ ipAddress: '10.9.9.9' }))).rejects.toThrow(/is online at 10.0.0.1:50052/);
    // once it has been silent past the offline timeout it may come back from a new address (DHCP, a move)
    const silent = new Date(Date.now() - 120_000);
    await database.db.update(nodes).set({ lastHeartbeat: silent }).where(eq(nodes.id, 'node_1700000000'));
    expect((await nodeService.register('node_1700000000', registration({ ipAddress: '10.9.9.9' }))).nodeId).toBe('node_1700000000');
    // Another machine at the same endpoint while this one beats (shipping nodes report a LAN address and port
    // 50052: two homes' 192.168.1.10 look alike) is another node, with its own id.
    expect(await nodeService.register('node_1788888888', registration({ ipAddress: '10.9.9.9' }))).toEqual({ nodeId: 'node_1788888888', created: true });
    await database.db.delete(nodes).where(eq(nodes.id, 'node_1788888888'));
    // A registration that names an id is that node or a new one, even where a silent node was, or with its
    // wallet (a farm's machines share one): a first-run node's P2P service keeps the id it named.
    await database.db.update(nodes).set({ lastHeartbeat: silent, walletAddress: 'W0' }).where(eq(nodes.id, 'node_1700000000'));
    expect(await nodeService.register('node_1799999999', registration({ ipAddress: '10.9.9.9' }))).toEqual({ nodeId: 'node_1799999999', created: true });
    expect(await nodeService.register('node_1799999998', registration({ ipAddress: '10.9.9.8', walletAddress: 'W0' }))).toEqual({ nodeId: 'node_1799999998', created: true });
    await database.db.delete(nodes).where(inArray(nodes.id, ['node_1799999999', 'node_1799999998']));
    // Its reconnect registers without devices (device detection off in the shipping node): the hardware, and the
    // price and capacity it sets, stay.
    const [registered] = await database.db.select().from(nodes).where(eq(nodes.id, 'node_1700000000'));
    await nodeService.register('node_1700000000', registration({ ipAddress: '10.9.9.9', devices: [] }));
    expect((await database.db.select().from(nodes).where(eq(nodes.id, 'node_1700000000')))[0]).toMatchObject({
      deviceTypes: ['CUDA'],
      maxDeviceMemory: 8 * GiB,
      devices: [expect.objectContaining({ deviceType: 'CUDA' })],
      pricePerHour: registered.pricePerHour,
      pricing: registered.pricing,
      capacity: registered.capacity,
      computeScore: registered.computeScore,
    });
    const walleted = await nodeService.register('', registration({ ipAddress: '10.0.0.2', walletAddress: 'W1' }));
    expect(walleted.nodeId).toMatch(/^[0-9a-f-]{36}$/);
    await database.db.update(nodes).set({ lastHeartbeat: silent }).where(eq(nodes.id, walleted.nodeId));
    expect((await nodeService.register('', registration({ ipAddress: '10.0.0.3', walletAddress: 'W1' }))).nodeId).toBe(walleted.nodeId);
    // a registration without a wallet (what shipping nodes send) keeps the registered one
    await nodeService.register('', registration({ ipAddress: '10.0.0.3', walletAddress: '' }));
    const [row] = await database.db.select().from(nodes).where(eq(nodes.id, walleted.nodeId));
    expect(row).toMatchObject({ ipAddress: '10.0.0.3', deviceTypes: ['CUDA'], maxDeviceMemory: 8 * GiB, status: 'online' });
  });

  it('pays a node registered without a wallet to its user\'s wallet, following it, until a registration names one', async () => {
    const { nodeService } = services();
    const wallet = async () => (await nodesRepo.getNode(database.db, 'account-paid'))?.walletAddress;
    await nodeService.register('account-paid', registration({ ipAddress: '10.66.0.1' }), { caller: 'u1', accountWallet: 'So11111111111111111111111111111111111111112' });
    expect(await wallet()).toBe('So11111111111111111111111111111111111111112');
    // The user moved their payouts to another wallet (the website's claim changed): the node follows.
    await nodeService.register('account-paid', registration({ ipAddress: '10.66.0.1' }), { caller: 'u1', accountWallet: 'Stake11111111111111111111111111111111111111' });
    expect(await wallet()).toBe('Stake11111111111111111111111111111111111111');
    // A token without the claim changes nothing.
    await nodeService.register('account-paid', registration({ ipAddress: '10.66.0.1' }), { caller: 'u1', accountWallet: '' });
    expect(await wallet()).toBe('Stake11111111111111111111111111111111111111');
    await nodeService.register('account-paid', registration({ ipAddress: '10.66.0.1', walletAddress: 'SysvarC1ock11111111111111111111111111111111' }), { caller: 'u1', accountWallet: 'So11111111111111111111111111111111111111112' });
    expect(await wallet()).toBe('SysvarC1ock11111111111111111111111111111111');
    // The shipping node's reconnect sends no wallet: the one it named stays, whatever the token says.
    await nodeService.register('account-paid', registration({ ipAddress: '10.66.0.1' }), { caller: 'u1', accountWallet: 'So11111111111111111111111111111111111111112' });
    expect(await wallet()).toBe('SysvarC1ock11111111111111111111111111111111');
    await nodeService.register('no-account-wallet', registration({ ipAddress: '10.66.0.2' }), { caller: 'u1', accountWallet: '' });
    expect((await nodesRepo.getNode(database.db, 'no-account-wallet'))?.walletAddress).toBe('');
  });

  it('pays the nodes of a user whose token names no wallet to the first wallet the user linked, and moves them when it is unlinked', async () => {
    const { gateway } = recordingGateway();
    const { heartbeats } = services();
    const service = createNodeService({ db: database.db, workflows: gateway, heartbeats, offlineAfterMs: 30_000, tokenDecimals: 9, walletLinks: createWalletLinks(database.db), log });
    const wallet = async (id: string) => (await nodesRepo.getNode(database.db, id))?.walletAddress;
    const [first, second, claimed] = [Keypair.generate(), Keypair.generate(), Keypair.generate()];
    const addressOf = (key: Keypair) => key.publicKey.toBase58();
    const signed = (user: string, key: Keypair) => {
      const expiresAt = linkExpiry();
      const seed = createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), Buffer.from(key.secretKey.subarray(0, 32))]), format: 'der', type: 'pkcs8' });
      return { signature: sign(null, Buffer.from(linkMessage(user, addressOf(key), expiresAt)), seed).toString('base64'), expiresAt };
    };
    const link = (key: Keypair, claim = '') => {
      const { signature, expiresAt } = signed('linking-user', key);
      return service.linkWallet('linking-user', claim, addressOf(key), signature, expiresAt);
    };
    await service.register('linked-1', registration({ ipAddress: '10.67.0.1' }), { caller: 'linking-user' });
    expect(await wallet('linked-1')).toBe('');
    // The user links a wallet (its key signs the message): the node without one has it from then on.
    await link(first);
    expect(await wallet('linked-1')).toBe(addressOf(first));
    // A node the user registers later without one gets it at once; one naming a wallet keeps its own.
    await service.register('linked-2', registration({ ipAddress: '10.67.0.2' }), { caller: 'linking-user' });
    expect(await wallet('linked-2')).toBe(addressOf(first));
    await service.register('linked-3', registration({ ipAddress: '10.67.0.3', walletAddress: 'SysvarC1ock11111111111111111111111111111111' }), { caller: 'linking-user' });
    await link(second); // the first stays the account's wallet
    expect(await wallet('linked-2')).toBe(addressOf(first));
    // Unlinking the first moves the nodes paid to it from the account to the next.
    expect(await service.unlinkWallet('linking-user', '', addressOf(first))).toBe(true);
    expect([await wallet('linked-1'), await wallet('linked-2')]).toEqual([addressOf(second), addressOf(second)]);
    // With a token naming a wallet, that one comes first; unlinking the wallet the token names moves nothing.
    await link(claimed, addressOf(claimed));
    expect(await service.unlinkWallet('linking-user', addressOf(claimed), addressOf(second))).toBe(true);
    expect(await wallet('linked-1')).toBe(addressOf(claimed));
    expect(await service.unlinkWallet('linking-user', addressOf(claimed), addressOf(claimed))).toBe(true);
    expect(await wallet('linked-1')).toBe(addressOf(claimed));
    // Unlinking with no wallet left and no claim leaves the nodes owed; one that named its own keeps it.
    await link(first);
    await database.db.update(nodes).set({ walletAddress: addressOf(first), walletFromAccount: true }).where(eq(nodes.id, 'linked-1'));
    expect(await service.unlinkWallet('linking-user', '', addressOf(first))).toBe(true);
    expect([await wallet('linked-1'), await wallet('linked-3')]).toEqual(['', 'SysvarC1ock11111111111111111111111111111111']);
    expect(await service.unlinkWallet('linking-user', '', addressOf(first))).toBe(false);
  });

  it('tells the jobs owing a node when it registers a wallet, and when it registers the same one again (it may hold a token account now), at most every 10 minutes', async () => {
    const { nodeService, calls } = services();
    const walletCalls = () => calls.filter((c) => c.method === 'walletRegistered').map((c) => c.args[0]);
    /** What was told once `n` calls came (told beside the answer, after a query); a short look for none more. */
    const told = async (n: number) => {
      await eventuallyTrue(() => walletCalls().length >= n);
      await new Promise((r) => setTimeout(r, 100));
      return walletCalls();
    };
    const wallet = Keypair.generate().publicKey.toBase58();
    const { nodeId } = await nodeService.register('owed-node-0000', registration({ walletAddress: '', ipAddress: '10.9.9.9' }));
    await database.db.insert(jobs).values({
      id: 'owing', status: 'completed', jobType: 'TRAINING', priority: 'NORMAL', requiredDevice: 'CUDA', config: spec('owing'),
      configHash: 'h', paymentUnits: 10n, assignedNodeId: nodeId, attempts: 1,
    });
    await database.db.insert(payments).values({
      jobId: 'owing', leg: 'release_node', amount: 9n, fromAccount: 'escrow', toAccount: `node:${nodeId}`, state: 'owed', idempotencyKey: 'owing/release_node',
    });
    await nodeService.register(nodeId, registration({ walletAddress: wallet, ipAddress: '10.9.9.9' }));
    expect(await told(1)).toEqual([['owing']]);
    await nodeService.register(nodeId, registration({ walletAddress: wallet, ipAddress: '10.9.9.9' }));
    expect(await told(2)).toEqual([['owing'], ['owing']]);
    // Registering in a loop does not drive a settlement attempt per owing job each time.
    await nodeService.register(nodeId, registration({ walletAddress: wallet, ipAddress: '10.9.9.9' }));
    expect(await told(2)).toEqual([['owing'], ['owing']]);
  });

  it('answers heartbeats from memory, writes them in one batch, samples metrics, and keeps jobs alive', async () => {
    const { heartbeats, calls } = services();
    await database.db.insert(jobs).values({
      id: 'held', status: 'running', jobType: 'TRAINING', priority: 'NORMAL', requiredDevice: 'CUDA', config: spec('held'),
      configHash: 'h', paymentUnits: 10n, assignedNodeId: 'node_1700000000', attempts: 2, assignedAt: new Date(clock - 60_000),
    });
    clock += 1000;
    expect(await heartbeats.beat('node_1700000000', { ramAvailable: 8 * GiB, ramTotal: 32 * GiB })).toEqual([]);
    const [before] = await database.db.select().from(nodes).where(eq(nodes.id, 'node_1700000000'));
    expect(before.ramAvailable).toBe(16 * GiB); // not written yet
    await heartbeats.flush();
    const [after] = await database.db.select().from(nodes).where(eq(nodes.id, 'node_1700000000'));
    expect(after.ramAvailable).toBe(8 * GiB);
    expect(after.lastHeartbeat.getTime()).toBe(clock);
    const metrics = await database.db.select().from(nodeMetrics).where(eq(nodeMetrics.nodeId, 'node_1700000000'));
    expect(metrics).toHaveLength(1);
    expect(metrics[0].memoryUsage).toBeCloseTo(0.75);
    expect(calls.filter((c) => c.method === 'nodeAlive')).toEqual([
      { method: 'nodeAlive', args: ['held', 2, expect.objectContaining({ source: 'heartbeat', nodeId: 'node_1700000000' }), new Date(clock - 61_000), 5000] },
    ]);

    // The shipping node's heartbeat carries ram_available only: the registered total (32 GiB) stands in.
    clock += 60_000;
    await heartbeats.beat('node_1700000000', { ramAvailable: 24 * GiB, ramTotal: 0 });
    await heartbeats.flush();
    const series = await database.db.select().from(nodeMetrics).where(eq(nodeMetrics.nodeId, 'node_1700000000')).orderBy(nodeMetrics.at);
    expect(series.map((m) => m.memoryUsage)).toEqual([expect.closeTo(0.75, 6), expect.closeTo(0.25, 6)]);
  });

  it('recreates a minimal record for an unknown node id instead of failing', async () => {
    const { heartbeats } = services();
    expect(await heartbeats.beat('f3a1c2d4-0000-4000-8000-000000000001')).toEqual([]);
    const [row] = await database.db.select().from(nodes).where(eq(nodes.id, 'f3a1c2d4-0000-4000-8000-000000000001'));
    expect(row).toMatchObject({ port: 0, devices: [] });
  });

  it('lets each caller have at most its quota of new nodes a minute, by registration or unknown heartbeat', async () => {
    let quotaClock = 0;
    const mayCreateNode = callerGate(3, () => quotaClock);
    const { gateway } = recordingGateway();
    const hub = createHeartbeatHub({
      db: database.db, workflows: gateway, flushMs: 60_000, offlineAfterMs: 30_000, metricsSampleMs: 60_000,
      metricsRetentionMs: 3600_000, tokenDecimals: 9, mayCreateNode, log, now: () => clock,
    });
    const service = createNodeService({ db: database.db, workflows: gateway, heartbeats: hub, offlineAfterMs: 30_000, tokenDecimals: 9, mayCreateNode, log });
    const from = (address: string, owner?: string) => () => ({ address, owner });
    // Three new records for one address: two minimal ones and a registration.
    await hub.beat('quota-a1', undefined, from('203.0.113.7'));
    await hub.beat('quota-a2', undefined, from('203.0.113.7'));
    await service.register('quota-a3', registration({ ipAddress: '203.0.113.7' }), { address: '203.0.113.7' });
    await expect(hub.beat('quota-a4', undefined, from('203.0.113.7'))).rejects.toThrow(/node_id: quota-a4 is not registered.*too many new nodes/);
    await expect(service.register('quota-a5', registration({ ipAddress: '203.0.113.8' }), { address: '203.0.113.7' })).rejects.toMatchObject({ code: 429 });
    expect(await nodesRepo.nodeExists(database.db, 'quota-a4')).toBe(false);
    expect(await nodesRepo.nodeExists(database.db, 'quota-a5')).toBe(false);
    // Nodes it has are never refused: their beats and re-registrations make nothing new.
    await hub.beat('quota-a1', undefined, from('203.0.113.7'));
    await service.register('quota-a3', registration({ ipAddress: '203.0.113.7' }), { address: '203.0.113.7' });
    // A node the server knows from Postgres (another API process, or before a restart) is not new either.
    const restarted = createHeartbeatHub({
      db: database.db, workflows: gateway, flushMs: 60_000, offlineAfterMs: 30_000, metricsSampleMs: 60_000,
      metricsRetentionMs: 3600_000, tokenDecimals: 9, mayCreateNode, log, now: () => clock,
    });
    await restarted.beat('quota-a2', undefined, from('203.0.113.7'));
    // Other callers have their own quota: another address, or a signed-in user wherever it calls from.
    await hub.beat('quota-b1', undefined, from('198.51.100.1'));
    await hub.beat('quota-u1', undefined, from('203.0.113.7', 'user-1'));
    expect((await nodesRepo.getNode(database.db, 'quota-u1'))?.owner).toBe('user-1');
    // A minute later the address may make new nodes again.
    quotaClock += 60_000;
    await hub.beat('quota-a4', undefined, from('203.0.113.7'));
    expect(await nodesRepo.nodeExists(database.db, 'quota-a4')).toBe(true);
  });

  it('makes nodes silent for a day dormant (out of matching until they beat), and deletes unregistered records silent for a day', async () => {
    const start = clock;
    const ids = ['stray-1', 'stray-2', 'stray-cited', 'stray-claimed', 'away', 'here'];
    const left = async () => (await database.db.select({ id: nodes.id }).from(nodes).where(inArray(nodes.id, ids))).map((n) => n.id).sort();
    const cache = createNodeCache({ db: database.db, offlineAfterMs: 30_000 });
    try {
      const { heartbeats } = services();
      for (const id of ['stray-1', 'stray-2', 'stray-cited', 'stray-claimed']) await heartbeats.beat(id);
      for (const [i, id] of ['away', 'here'].entries()) await nodesRepo.upsertNode(database.db, id, registration({ ipAddress: `10.77.0.${i + 1}` }));
      await nodesRepo.recordReputationEvent(database.db, { nodeId: 'stray-cited', jobId: 'cites-it', kind: 'node_lost', reason: 'test' });
      await database.db.insert(nodeClaims).values({ nodeId: 'stray-claimed', jobId: 'claims-it' });
      await heartbeats.flush();
      await heartbeats.stop(); // the first pass (at the first flush) is over: nothing was old enough
      await cache.refresh();
      expect(cache.candidates().indexOf('away')).toBeDefined();
      await database.db.update(nodes).set({ lastHeartbeat: new Date(clock - 2 * 86_400_000) }).where(inArray(nodes.id, ['stray-1', 'stray-cited', 'stray-claimed', 'away']));

      clock += 3_600_000; // the hourly pass is due (after the sweep that takes 'away' offline)
      await heartbeats.flush();
      await heartbeats.stop(); // waits for that pass
      expect(await left()).toEqual(['away', 'here', 'stray-2', 'stray-cited', 'stray-claimed']);
      expect((await nodesRepo.getNode(database.db, 'away'))?.status).toBe('dormant');
      await cache.refresh();
      expect(cache.candidates().indexOf('away')).toBeUndefined();
      expect(cache.candidates().indexOf('here')).toBeDefined();

      // Its next beat (the daemon kept running: it never registers again) makes it a candidate again: the beat
      // itself moves its row for the caches (aged here past the caches' overlap, so nothing else does).
      await ageNodeRow(database.db, 'away', new Date(Date.now() - 60_000));
      await cache.refresh();
      expect(cache.candidates().indexOf('away')).toBeUndefined();
      await heartbeats.beat('away');
      await heartbeats.flush();
      expect((await nodesRepo.getNode(database.db, 'away'))?.status).toBe('online');
      await cache.refresh();
      expect(cache.candidates().indexOf('away')).toBeDefined();
      // A stray that beats again gets a new record.
      await heartbeats.beat('stray-1');
      expect(await nodesRepo.nodeExists(database.db, 'stray-1')).toBe(true);
    } finally {
      await cache.stop();
      // Online GPU nodes would be matched by the tests after this one.
      await database.db.delete(nodes).where(inArray(nodes.id, ids));
      clock = start;
    }
  });

  it('forgets a node whose record was deleted after its beat was taken, and makes it a record at its next beat', async () => {
    const { heartbeats } = services();
    await heartbeats.beat('deleted-meanwhile');
    await heartbeats.flush();
    await heartbeats.beat('deleted-meanwhile');
    await database.db.delete(nodes).where(eq(nodes.id, 'deleted-meanwhile')); // another API process's pass
    await heartbeats.flush();
    expect(await nodesRepo.nodeExists(database.db, 'deleted-meanwhile')).toBe(false);
    await heartbeats.beat('deleted-meanwhile');
    await heartbeats.flush();
    expect(await nodesRepo.getNode(database.db, 'deleted-meanwhile')).toMatchObject({ port: 0, lastHeartbeat: new Date(clock) });
  });

  it('wakes queued jobs when an offline node comes back, and hands out stop orders', async () => {
    const { heartbeats, calls } = services();
    await database.db.insert(jobs).values({
      id: 'waiting', status: 'queued', jobType: 'TRAINING', priority: 'NORMAL', requiredDevice: 'CUDA', config: spec('waiting'),
      configHash: 'h', paymentUnits: 10n ** 12n,
    });
    await database.db.update(jobs).set({ paymentUnits: 10n ** 12n }).where(eq(jobs.id, 'held')); // woken: it can pay for the node
    await jobsRepo.recordTransition(database.db, {
      jobId: 'held', seq: 1, from: 'running', to: 'queued', reason: 'node lost', actor: 'workflow', attempt: 2,
      assignedNodeId: null, cancelOnNode: 'node_1700000000',
    });
    await heartbeats.flush(); // the hub writes from now on
    clock += 120_000; // silent for two minutes
    await heartbeats.flush(); // sweeps it offline
    expect((await database.db.select().from(nodes).where(eq(nodes.id, 'node_1700000000')))[0].status).toBe('offline');
    await heartbeats.beat('node_1700000000');
    await heartbeats.flush();
    expect(calls.find((c) => c.method === 'nodesChanged')?.args[0]).toEqual(expect.arrayContaining(['waiting', 'held']));
    expect(await heartbeats.beat('node_1700000000')).toEqual(['held']);
  });

  it('wakes the waiting jobs of a node back online even when its flush fails after writing the beat (the next flush finds it online already)', async () => {
    const { heartbeats, calls } = services();
    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.status, ['pending', 'queued']));
    await database.db.insert(jobs).values({
      id: 'waiting-again', status: 'queued', jobType: 'TRAINING', priority: 'NORMAL', requiredDevice: 'CUDA', config: spec('waiting-again'),
      configHash: 'h', paymentUnits: 10n ** 12n,
    });
    await heartbeats.flush(); // the hub writes from now on
    clock += 120_000;
    await heartbeats.flush(); // sweeps the node offline
    expect((await nodesRepo.getNode(database.db, 'node_1700000000'))?.status).toBe('offline');
    await heartbeats.beat('node_1700000000');
    // The beat is written, then the metric sample fails: the flush fails (logged) and keeps its batch.
    await database.db.execute(sql`alter table node_metrics rename to node_metrics_away`);
    try {
      await heartbeats.flush();
    } finally {
      await database.db.execute(sql`alter table node_metrics_away rename to node_metrics`);
    }
    expect((await nodesRepo.getNode(database.db, 'node_1700000000'))?.status).toBe('online');
    await eventuallyTrue(() => calls.some((c) => c.method === 'nodesChanged' && (c.args[0] as string[]).includes('waiting-again')));
    await heartbeats.flush(); // the kept batch: written again, the node online already
    await database.db.update(jobs).set({ status: 'cancelled' }).where(eq(jobs.id, 'waiting-again'));
  });

  it('costs a lost node nothing when its heartbeats kept reaching the server (the silence was the server\'s), and records it', async () => {
    const cache = createNodeCache({ db: database.db, offlineAfterMs: 30_000 });
    const acts = jobActivities(cache);
    await nodesRepo.upsertNode(database.db, 'beating', registration({ ipAddress: '10.8.0.1' }));
    const node = async () => (await nodesRepo.getNode(database.db, 'beating'))!;
    const before = await node();
    await database.db.update(nodes).set({ lastHeartbeat: new Date(clock - 5_000) }).where(eq(nodes.id, 'beating'));
    await acts.recordNodeOutcome({ nodeId: 'beating', jobId: 'relay-gap', outcome: 'failed', reason: 'node lost: silent for 30 s' });
    expect(await node()).toMatchObject({ reputation: before.reputation, totalJobsFailed: before.totalJobsFailed });
    const [excused] = await nodesRepo.reputationHistory(database.db, 'beating');
    expect(excused).toMatchObject({ jobId: 'relay-gap', kind: 'node_lost', delta: 0, reason: expect.stringContaining("not the node's fault") });

    await database.db.update(nodes).set({ lastHeartbeat: new Date(clock - 40_000) }).where(eq(nodes.id, 'beating'));
    await acts.recordNodeOutcome({ nodeId: 'beating', jobId: 'really-lost', outcome: 'failed', reason: 'node lost: silent for 30 s' });
    expect((await node()).reputation).toBeCloseTo(before.reputation - 0.1, 6);
    expect((await node()).totalJobsFailed).toBe(before.totalJobsFailed + 1);
  });

  it('keeps a batch Postgres refused for the next flush, and sweeps nodes offline only after writing beats for a whole timeout', async () => {
    let failing = false;
    const flaky = new Proxy(database.db, {
      get(target, prop, receiver) {
        if (prop === 'execute' && failing) return () => Promise.reject(new Error('connection refused'));
        const value = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const hub = createHeartbeatHub({
      db: flaky, workflows: recordingGateway().gateway, flushMs: 60_000, offlineAfterMs: 30_000, metricsSampleMs: 60_000,
      metricsRetentionMs: 3600_000, tokenDecimals: 9, log, now: () => clock,
    });
    for (const [id, ip] of [['restart-a', '10.9.0.1'], ['restart-b', '10.9.0.2']]) {
      await nodesRepo.upsertNode(database.db, id, registration({ ipAddress: ip }));
      await database.db.update(nodes).set({ lastHeartbeat: new Date(clock - 25_000) }).where(eq(nodes.id, id));
    }
    const node = async (id: string) => (await nodesRepo.getNode(database.db, id))!;

    // A restarted API: a's beat arrives before the first flush, b's (10 s apart as always) after it.
    await hub.beat('restart-a');
    await hub.flush();
    clock += 10_000; // b's last written beat is now 35 s old, but b is beating
    await hub.flush();
    expect((await node('restart-b')).status).toBe('online');
    await hub.beat('restart-b');
    await hub.flush();
    expect((await node('restart-b')).lastHeartbeat.getTime()).toBe(clock);

    // Postgres refuses a flush: the beat is written by the next one, and no sweep runs on the gap it leaves.
    clock += 10_000;
    const beatAt = clock;
    await hub.beat('restart-a');
    failing = true;
    await hub.flush();
    failing = false;
    expect((await node('restart-a')).lastHeartbeat.getTime()).toBeLessThan(beatAt);
    clock += 25_000; // b's written beat is 35 s old again; the hub has written nothing for 25 s
    await hub.flush();
    expect((await node('restart-a')).lastHeartbeat.getTime()).toBe(beatAt);
    expect((await node('restart-b')).status).toBe('online');
    clock += 30_000; // now writing without a gap for 30 s: b, silent for 65 s, is swept offline
    await hub.flush();
    expect((await node('restart-b')).status).toBe('offline');
  });

  it('an escrow account\'s ledger for operators: the job\'s legs and its reclaims, no other job\'s', async () => {
    const leg = (jobId: string, leg: 'escrow' | 'refund', escrow: string) => ({
      jobId, leg, amount: 1n, fromAccount: leg === 'escrow' ? 'payer' : escrow, toAccount: leg === 'escrow' ? escrow : 'payer',
      state: 'confirmed' as const, idempotencyKey: `${jobId}/${leg}`, memo: 'm',
    });
    await database.db.insert(payments).values([
      leg('ledger_1', 'escrow', 'escrow-1'),
      leg('ledger_1/reclaim/sig', 'escrow', 'escrow-1'),
      leg('ledger_1/reclaim/sig', 'refund', 'escrow-1'),
      leg('ledger_12', 'escrow', 'escrow-12'),
      leg('ledger_12/reclaim/sig', 'escrow', 'escrow-12'),
    ]);
    expect((await jobsRepo.escrowAccountLedger(database.db, 'ledger_1', 'escrow-1')).map((p) => `${p.jobId} ${p.leg}`)).toEqual([
      'ledger_1 escrow',
      'ledger_1/reclaim/sig escrow',
      'ledger_1/reclaim/sig refund',
    ]);
    // A job never funded (refused at submission): its reclaims all the same.
    await database.db.insert(payments).values([leg('ledger_2/reclaim/sig', 'escrow', 'escrow-2'), leg('ledger_2/reclaim/sig', 'refund', 'escrow-2')]);
    expect((await jobsRepo.escrowAccountLedger(database.db, 'ledger_2', 'escrow-2')).map((p) => `${p.jobId} ${p.leg}`)).toEqual([
      'ledger_2/reclaim/sig escrow',
      'ledger_2/reclaim/sig refund',
    ]);
  });

  it('NotifyJobAccepted is a sign of life only as the acceptance: repeated once the job runs (it needs no token), it keeps no watch alive', async () => {
    const { nodeService, calls } = services();
    await nodesRepo.upsertNode(database.db, 'accepting', registration({ ipAddress: '10.9.2.1' }));
    await database.db.insert(jobs).values({
      id: 'accepted-job', status: 'assigned', jobType: 'TRAINING', priority: 'NORMAL', requiredDevice: 'CUDA', config: spec('accepted-job'),
      configHash: 'h', paymentUnits: 10n, assignedNodeId: 'accepting', attempts: 1,
    });
    const alive = () => calls.filter((c) => c.method === 'nodeAlive' && c.args[0] === 'accepted-job').length;
    await nodeService.accepted('accepting', 'accepted-job');
    expect(alive()).toBe(1);
    await database.db.update(jobs).set({ status: 'running' }).where(eq(jobs.id, 'accepted-job'));
    await nodeService.accepted('accepting', 'accepted-job');
    expect(alive()).toBe(1);
    // Answered without the workflow: the job runs (an update would only cost its history, and it needs no token).
    expect(calls.filter((c) => c.method === 'accepted')).toHaveLength(1);
    await database.db.update(nodes).set({ status: 'offline', lastHeartbeat: new Date(0) }).where(eq(nodes.id, 'accepting'));
    await database.db.update(jobs).set({ status: 'cancelled' }).where(eq(jobs.id, 'accepted-job'));
  });

  it('a Postgres outage costs no running job its node: the watches hear each beat, from what the nodes held at the last flush Postgres took', async () => {
    let failing = false;
    const flaky = new Proxy(database.db, {
      get(target, prop, receiver) {
        if ((prop === 'execute' || prop === 'select') && failing) return () => Promise.reject(new Error('connection refused'));
        const value = Reflect.get(target, prop, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    const { gateway, calls } = recordingGateway();
    const hub = createHeartbeatHub({
      db: flaky, workflows: gateway, flushMs: 60_000, offlineAfterMs: 30_000, metricsSampleMs: 60_000,
      metricsRetentionMs: 3600_000, tokenDecimals: 9, log, now: () => clock,
    });
    await nodesRepo.upsertNode(database.db, 'outage-beater', registration({ ipAddress: '10.9.1.1' }));
    await database.db.insert(jobs).values({
      id: 'outage-job', status: 'running', jobType: 'TRAINING', priority: 'NORMAL', requiredDevice: 'CUDA', config: spec('outage-job'),
      configHash: 'h', paymentUnits: 10n, assignedNodeId: 'outage-beater', attempts: 1,
    });
    const alive = async () => {
      await new Promise((r) => setTimeout(r, 50)); // liveness goes out beside the flush
      return calls.filter((c) => c.method === 'nodeAlive' && c.args[0] === 'outage-job').length;
    };

    await hub.beat('outage-beater');
    await hub.flush();
    expect(await alive()).toBe(1);

    failing = true;
    for (const n of [2, 3]) {
      clock += 10_000;
      await hub.beat('outage-beater');
      await hub.flush(); // refused: kept for the next flush, and its liveness goes out all the same
      expect(await alive()).toBe(n);
    }
    clock += 10_000;
    await hub.flush(); // no new beat: nothing more to pass
    expect(await alive()).toBe(3);

    failing = false;
    await hub.flush(); // the kept beat is written; its liveness went out already
    expect(await alive()).toBe(3);
    expect((await nodesRepo.getNode(database.db, 'outage-beater'))!.lastHeartbeat.getTime()).toBe(clock - 10_000);
    // Out of the later matches.
    await database.db.update(nodes).set({ status: 'offline', lastHeartbeat: new Date(0) }).where(eq(nodes.id, 'outage-beater'));
  });

  it('keeps writing heartbeats while Temporal hangs: liveness is passed on beside the writes', async () => {
    const { gateway } = recordingGateway();
    let release!: () => void;
    const hanging = new Promise<void>((resolve) => (release = resolve));
    let calls = 0;
    const hub = createHeartbeatHub({
      db: database.db, workflows: { ...gateway, nodeAlive: () => ((calls += 1), hanging) }, flushMs: 20, offlineAfterMs: 30_000,
      metricsSampleMs: 60_000, metricsRetentionMs: 3600_000, tokenDecimals: 9, log,
    });
    await nodesRepo.upsertNode(database.db, 'busy-beater', registration({ ipAddress: '10.6.0.1' }));
    await database.db.insert(jobs).values({
      id: 'kept-alive', status: 'running', jobType: 'TRAINING', priority: 'NORMAL', requiredDevice: 'CUDA', config: spec('kept-alive'),
      configHash: 'h', paymentUnits: 10n, assignedNodeId: 'busy-beater', attempts: 1,
    });
    const lastBeat = async () => (await nodesRepo.getNode(database.db, 'busy-beater'))!.lastHeartbeat.getTime();
    hub.start();
    try {
      for (let i = 0; i < 3; i++) {
        const before = Date.now();
        await new Promise((r) => setTimeout(r, 5));
        await hub.beat('busy-beater');
        const deadline = Date.now() + 5000;
        while ((await lastBeat()) < before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        expect(await lastBeat()).toBeGreaterThanOrEqual(before);
      }
      expect(calls).toBe(1); // the first pass still hangs; the later beats wait, merged, for the next one
    } finally {
      release();
      await hub.stop();
      await database.db.update(jobs).set({ status: 'cancelled' }).where(eq(jobs.id, 'kept-alive'));
    }
  });

  it('returns a node\'s metric samples over a range, averaged into at most maxPoints buckets that cover all of it', async () => {
    const t0 = Math.floor(clock / 60_000) * 60_000 - 100 * 60_000;
    await database.db.insert(nodeMetrics).values(
      Array.from({ length: 100 }, (_, i) => ({ nodeId: 'metric-node', at: new Date(t0 + i * 60_000), memoryUsage: i / 100 })),
    );
    const from = new Date(t0);
    const to = new Date(t0 + 99 * 60_000);
    const all = await nodesRepo.getMetrics(database.db, 'metric-node', from, to);
    expect(all).toHaveLength(100);
    expect(all[0]).toMatchObject({ at: from, memoryUsage: 0, cpuUsage: 0 });
    expect(all[99]).toMatchObject({ at: to, memoryUsage: 0.99 });
    // 99 minutes in at most 10 points: 595 s buckets, the newest sample still counted
    const coarse = await nodesRepo.getMetrics(database.db, 'metric-node', from, to, 10);
    // buckets start at `from`: none stamped before it, and no more than asked for
    expect(coarse).toHaveLength(10);
    expect(coarse[0].at).toEqual(from);
    const offset = await nodesRepo.getMetrics(database.db, 'metric-node', new Date(t0 + 7_000), to, 10);
    expect(offset.length).toBeLessThanOrEqual(10);
    expect(offset[0].at).toEqual(new Date(t0 + 7_000));
    const mean = coarse.reduce((sum, p) => sum + p.memoryUsage, 0) / coarse.length;
    expect(mean).toBeGreaterThan(0.3);
    expect(coarse.at(-1)!.memoryUsage).toBeGreaterThan(0.9);
    expect(coarse.at(-1)!.at.getTime()).toBeLessThanOrEqual(to.getTime());
    expect(coarse.map((p) => p.at.getTime())).toEqual([...coarse.map((p) => p.at.getTime())].sort((a, b) => a - b));
  });

  it('records each transition once per sequence number', async () => {
    const t = { jobId: 'waiting', seq: 1, from: 'queued' as const, to: 'assigned' as const, reason: 'r', actor: 'workflow', attempt: 1, assignedNodeId: 'x', attempts: 1 };
    expect(await jobsRepo.recordTransition(database.db, t)).toBe(true);
    expect(await jobsRepo.recordTransition(database.db, t)).toBe(false);
    expect(await database.db.select().from(jobEvents).where(eq(jobEvents.jobId, 'waiting'))).toHaveLength(1);
    expect((await jobsRepo.getJob(database.db, 'waiting'))).toMatchObject({ status: 'assigned', attempts: 1, assignedNodeId: 'x', eventSeq: 1 });
    // Back to the queue: the lost node's progress, stored while its attempt was given up, no longer shows.
    await jobsRepo.updateProgress(database.db, 'waiting', 'x', { progress: 0.7, epoch: 7, metrics: { loss: 0.3 } });
    // Reports merge their metrics up to JOB_METRICS_KEPT names; past that the latest report's replace them.
    const names = (from: number) => Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`m${from + i}`, i]));
    await jobsRepo.updateProgress(database.db, 'waiting', 'x', { metrics: names(0) });
    expect(Object.keys((await jobsRepo.getJob(database.db, 'waiting'))!.metrics)).toHaveLength(101);
    await jobsRepo.updateProgress(database.db, 'waiting', 'x', { metrics: names(100) });
    // 101 + 100 names would be more than the 200 kept.
    expect(jobsRepo.JOB_METRICS_KEPT).toBe(200);
    expect((await jobsRepo.getJob(database.db, 'waiting'))!.metrics).toEqual(names(100));
    await jobsRepo.recordTransition(database.db, { ...t, seq: 2, from: 'assigned', to: 'queued', assignedNodeId: null });
    expect((await jobsRepo.getJob(database.db, 'waiting'))).toMatchObject({ status: 'queued', progress: 0, currentEpoch: 0, metrics: {} });
    // A record that lands after a later one (an activity attempt that went on after it was given up) joins the
    // history but does not set the row back.
    await jobsRepo.recordTransition(database.db, { ...t, seq: 4, from: 'queued', to: 'queued', reason: 'back in the queue', assignedNodeId: null });
    expect(await jobsRepo.recordTransition(database.db, { ...t, seq: 3, from: 'queued', to: 'assigned', assignedNodeId: 'late' })).toBe(false);
    expect((await jobsRepo.getJob(database.db, 'waiting'))).toMatchObject({ status: 'queued', assignedNodeId: null, eventSeq: 4 });
    expect((await database.db.select().from(jobEvents).where(eq(jobEvents.jobId, 'waiting'))).map((e) => e.seq).sort()).toEqual([1, 2, 3, 4]);
  });

  async function job(id: string, over: Partial<typeof jobs.$inferInsert> = {}) {
    await database.db.insert(jobs).values({
      id, status: 'pending', jobType: 'TRAINING', priority: 'NORMAL', priorityRank: 2, requiredDevice: 'CUDA',
      estimatedMemory: 4 * GiB, config: spec(id), configHash: 'h', paymentUnits: 10n ** 12n, createdAt: new Date(clock), ...over,
    });
  }

  it('finds the jobs of a heartbeat batch of 100,000 nodes (past the 65,535 parameters of one statement)', async () => {
    await job('held-in-a-big-batch', { status: 'running', assignedNodeId: 'big-batch-holder', attempts: 1 });
    const ids = Array.from({ length: 100_000 }, (_, i) => `big-batch-${i}`);
    ids.splice(54_321, 0, 'big-batch-holder');
    expect(await jobsRepo.activeJobsOnNodes(database.db, ids)).toEqual([
      { id: 'held-in-a-big-batch', nodeId: 'big-batch-holder', attempts: 1, assignedAt: null },
    ]);
    await database.db.update(jobs).set({ status: 'cancelled' }).where(eq(jobs.id, 'held-in-a-big-batch'));
  });

  it('matches the best-scoring fitting online node, never an excluded one, and explains the others', async () => {
    const cache = createNodeCache({ db: database.db, offlineAfterMs: 30_000 });
    const acts = jobActivities(cache);
    const { nodeService, heartbeats } = services();
    // jobs of the earlier tests are done: none waits ahead of the ones below
    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.status, ['pending', 'queued']));
    await nodeService.register('small', registration({ ipAddress: '10.1.0.1', devices: [{ ...registration().devices[0], vramTotal: 2 * GiB }] }));
    await nodeService.register('big', registration({ ipAddress: '10.1.0.2' }));
    for (const id of ['small', 'big', 'node_1700000000']) await heartbeats.beat(id);
    await heartbeats.flush();
    await job('m1');
    const m = await acts.matchNode({ jobId: 'm1', requiredDevice: 'CUDA', estimatedMemory: 4 * GiB, excludeNodeIds: ['node_1700000000'] });
    expect(m.node).toEqual({ nodeId: 'big', endpoint: '10.1.0.2:50052', assignEndpoint: '10.1.0.2:50055' });
    expect(m.explanation.ranked[0]).toMatchObject({ nodeId: 'big', parts: { reputation: 0.5, load: 1 } });
    expect(m.explanation.rejected).toEqual(
      expect.arrayContaining([
        { nodeId: 'node_1700000000', reason: 'failed or refused this job' },
        { nodeId: 'small', reason: expect.stringMatching(/needs 4294967296 bytes on a CUDA device/) },
      ]),
    );
    // the same job matching again (a retry) keeps its claim, explained as ranked now; another job finds the node full (capacity 1)
    const again = await acts.matchNode({ jobId: 'm1', requiredDevice: 'CUDA', estimatedMemory: 4 * GiB, excludeNodeIds: ['node_1700000000'] });
    expect(again.node?.nodeId).toBe('big');
    expect(again.explanation.rejected).toEqual(expect.arrayContaining([{ nodeId: 'node_1700000000', reason: 'failed or refused this job' }]));
    await job('m2');
    const full = await acts.matchNode({ jobId: 'm2', requiredDevice: 'CUDA', estimatedMemory: 4 * GiB, excludeNodeIds: ['node_1700000000'] });
    expect(full.node).toBeNull();
    expect(full.explanation.rejectedCounts['at capacity']).toBe(1);
    expect(full.explanation.queuePosition).toBe(0); // m1, ahead of it, holds a node: it waits for none
    await acts.releaseNode({ jobId: 'm1' });
    expect((await acts.matchNode({ jobId: 'm2', requiredDevice: 'CUDA', estimatedMemory: 4 * GiB, excludeNodeIds: ['node_1700000000'] })).node?.nodeId).toBe('big');
    await acts.releaseNode({ jobId: 'm2' });
    const none = await acts.matchNode({ jobId: 'm2', requiredDevice: 'CUDA', estimatedMemory: 64 * GiB, excludeNodeIds: [] });
    expect(none.node).toBeNull();
  });

  it('gives free capacity to the most urgent waiting job first, oldest first within a priority', async () => {
    const cache = createNodeCache({ db: database.db, offlineAfterMs: 30_000 });
    const acts = jobActivities(cache);
    await job('urgent', { status: 'queued', priority: 'HIGH', priorityRank: 1, createdAt: new Date(clock + 5000) });
    await job('early-normal', { status: 'queued', createdAt: new Date(clock - 5000) });
    await job('late-normal', { status: 'queued', createdAt: new Date(clock + 1000) });
    const ask = (jobId: string) => acts.matchNode({ jobId, requiredDevice: 'CUDA', estimatedMemory: 4 * GiB, excludeNodeIds: ['node_1700000000'] });
    // one free node ('big'): the later NORMAL job may not take it while HIGH and older NORMAL jobs wait
    expect((await ask('late-normal')).node).toBeNull();
    expect((await ask('early-normal')).node).toBeNull();
    expect((await ask('urgent')).node?.nodeId).toBe('big');
    await database.db.update(jobs).set({ status: 'assigned' }).where(eq(jobs.id, 'urgent'));
    await acts.releaseNode({ jobId: 'urgent' });
    expect((await ask('late-normal')).node).toBeNull();
    expect((await ask('early-normal')).node?.nodeId).toBe('big');
  });

  it('is not held back by a job ahead that could not take the node anyway (its budget, its device memory)', async () => {
    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.status, ['pending', 'queued', 'assigned']));
    await database.db.delete(nodeClaims);
    const cache = createNodeCache({ db: database.db, offlineAfterMs: 30_000 });
    const acts = jobActivities(cache);
    // 'big' (one 8 GiB CUDA card, 32 GiB of RAM) costs 0.41 CYXWIZ/h: an hour is 410,000,000 units
    const hour = { estimatedDuration: 3600 };
    await job('broke', { status: 'queued', priority: 'CRITICAL', priorityRank: 0, paymentUnits: 1000n, config: spec('broke', { ...hour, paymentUnits: '1000' }), createdAt: new Date(clock - 9000) });
    await job('too-big', { status: 'queued', priority: 'HIGH', priorityRank: 1, estimatedMemory: 16 * GiB, createdAt: new Date(clock - 8000) });
    await job('later', { status: 'queued', paymentUnits: 410_000_000n, config: spec('later', { ...hour, paymentUnits: '410000000' }) });
    const ask = (jobId: string) => acts.matchNode({ jobId, requiredDevice: 'CUDA', estimatedMemory: 4 * GiB, excludeNodeIds: ['node_1700000000', 'small'], paymentUnits: '410000000', estimatedDuration: 3600 });
    expect((await ask('later')).node?.nodeId).toBe('big');

    // A job ahead that can pay for the node does hold it back.
    await acts.releaseNode({ jobId: 'later' });
    await database.db.update(jobs).set({ paymentUnits: 410_000_000n, config: spec('broke', { ...hour, paymentUnits: '410000000' }) }).where(eq(jobs.id, 'broke'));
    expect((await ask('later')).node).toBeNull();
    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.id, ['broke', 'too-big', 'later']));
  });

  it('lets a pending job whose first match found nothing wait like a queued one: woken, ahead of later jobs, counted in positions', async () => {
    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.status, ['pending', 'queued', 'assigned']));
    await database.db.delete(nodeClaims);
    const cache = createNodeCache({ db: database.db, offlineAfterMs: 30_000 });
    const woken: string[][] = [];
    const acts = jobActivities(cache, async (nodeIds) => void woken.push(nodeIds));
    const ask = (jobId: string) => acts.matchNode({ jobId, requiredDevice: 'CUDA', estimatedMemory: 4 * GiB, excludeNodeIds: ['node_1700000000', 'small'] });
    await job('holder', { status: 'assigned' });
    expect((await ask('holder')).node?.nodeId).toBe('big'); // the only fitting node is taken
    await job('in-escrow', { status: 'pending', priority: 'HIGH', priorityRank: 1, createdAt: new Date(clock + 2000) });
    await job('queued-low', { status: 'queued', priority: 'LOW', priorityRank: 3, createdAt: new Date(clock - 60_000) });
    const wakeFor = (nodeId: string) => jobsRepo.waitingJobsFor(database.db, [nodeId], 9);
    expect(await wakeFor('big')).toEqual(['queued-low']); // pending, it has not looked yet

    const miss = await ask('in-escrow');
    expect(miss.node).toBeNull();
    expect(miss.explanation.queuePosition).toBe(0);
    expect((await jobsRepo.getJob(database.db, 'in-escrow'))!.waitingSince).toBeInstanceOf(Date);
    expect(await wakeFor('big')).toEqual(['in-escrow', 'queued-low']);
    expect(await wakeFor('small')).toEqual([]); // its 2 GiB card fits neither
    expect((await ask('queued-low')).explanation.queuePosition).toBe(1);

    // The node comes free while in-escrow's escrow is still on its way: the older LOW job may not take it.
    await acts.releaseNode({ jobId: 'holder' });
    expect(woken).toEqual([['big']]); // the freed node, for the waiting jobs it fits (wakeFor)
    expect((await ask('queued-low')).node).toBeNull();
    expect((await ask('in-escrow')).node?.nodeId).toBe('big');
    await jobsRepo.recordTransition(database.db, { jobId: 'in-escrow', seq: 1, from: 'pending', to: 'assigned', reason: 'r', actor: 'workflow', attempt: 1, assignedNodeId: 'big' });
    expect((await jobsRepo.getJob(database.db, 'in-escrow'))!.waitingSince).toBeNull();
    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.id, ['holder', 'in-escrow', 'queued-low']));
    await database.db.delete(nodeClaims);
  });

  it('wakes as many waiting jobs as could fill the nodes twice over (at least 8 a node, at most 500), none being offered a node', async () => {
    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.status, ['pending', 'queued', 'assigned']));
    await database.db.delete(nodeClaims);
    const { nodeService, heartbeats } = services();
    await nodeService.register('wide', registration({ ipAddress: '10.1.0.9', devices: Array.from({ length: 16 }, () => registration().devices[0]) }));
    await heartbeats.beat('wide');
    await heartbeats.flush();
    expect((await nodesRepo.getNode(database.db, 'wide'))?.capacity).toBe(16);
    const waiting = Array.from({ length: 40 }, (_, i) => `w-${String(i).padStart(2, '0')}`);
    for (const [i, id] of waiting.entries()) await job(id, { status: 'queued', createdAt: new Date(clock - 100_000 + i) });

    expect(await jobsRepo.waitingJobsFor(database.db, ['wide'], 9)).toEqual(waiting.slice(0, 32));
    expect(await jobsRepo.waitingJobsFor(database.db, ['big'], 9)).toEqual(waiting.slice(0, 8));
    expect(await jobsRepo.waitingJobsFor(database.db, ['big', 'wide'], 9)).toEqual(waiting);
    // A job holding a claim is being offered a node: waking it would do nothing.
    await database.db.insert(nodeClaims).values({ nodeId: 'big', jobId: 'w-00' });
    expect(await jobsRepo.waitingJobsFor(database.db, ['big'], 9)).toEqual(waiting.slice(1, 9));
    expect(await jobsRepo.waitingJobsFor(database.db, ['unknown-node'], 9)).toEqual([]);

    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.id, waiting));
    await database.db.delete(nodeClaims);
    await database.db.update(nodes).set({ port: 0, updatedAt: new Date() }).where(eq(nodes.id, 'wide'));
  });

  it('holds nobody back from a node that refused it while it waits, and forgets the refusal at its next assignment', async () => {
    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.status, ['pending', 'queued', 'assigned']));
    await database.db.delete(nodeClaims);
    const acts = jobActivities(createNodeCache({ db: database.db, offlineAfterMs: 30_000 }));
    const ask = (jobId: string) => acts.matchNode({ jobId, requiredDevice: 'CUDA', estimatedMemory: 4 * GiB, excludeNodeIds: ['node_1700000000', 'small'] });
    await job('refused-high', { status: 'queued', priority: 'HIGH', priorityRank: 1, createdAt: new Date(clock - 10_000) });
    await job('behind', { status: 'queued' });
    expect((await ask('behind')).node).toBeNull(); // 'big' is held for refused-high

    await jobsRepo.recordRefusal(database.db, 'refused-high', 'big');
    await jobsRepo.recordRefusal(database.db, 'refused-high', 'big');
    expect((await jobsRepo.getJob(database.db, 'refused-high'))!.refusedNodes).toEqual(['big']);
    expect(await jobsRepo.waitingJobsFor(database.db, ['big'], 9)).toEqual(['behind']);
    expect((await ask('behind')).node?.nodeId).toBe('big');

    // The node comes back (online again or registered again): the refusal is forgotten, it is held back again.
    await database.db.delete(nodeClaims).where(eq(nodeClaims.jobId, 'behind'));
    await jobsRepo.forgetRefusals(database.db, ['big']);
    expect((await jobsRepo.getJob(database.db, 'refused-high'))!.refusedNodes).toEqual([]);
    expect(await jobsRepo.waitingJobsFor(database.db, ['big'], 9)).toEqual(['refused-high', 'behind']);
    expect((await ask('behind')).node).toBeNull();

    await jobsRepo.recordRefusal(database.db, 'refused-high', 'big');
    await jobsRepo.recordTransition(database.db, { jobId: 'refused-high', seq: 1, from: 'queued', to: 'assigned', reason: 'r', actor: 'workflow', attempt: 1, assignedNodeId: 'big' });
    expect((await jobsRepo.getJob(database.db, 'refused-high'))!.refusedNodes).toEqual([]);
    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.id, ['refused-high', 'behind']));
    await database.db.delete(nodeClaims);
  });

  it('gives no claim to a banned node or an ended job, and an ended job holds none', async () => {
    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.status, ['pending', 'queued', 'assigned']));
    await database.db.delete(nodeClaims);
    await job('guarded', { status: 'queued' });
    // Banned a moment ago (the node cache may not know yet): claim_node refuses it.
    await database.db.update(nodes).set({ bannedUntil: new Date(Date.now() + 3600_000) }).where(eq(nodes.id, 'big'));
    expect(await claimNode(database.db, 'guarded', 'big', 9)).toBe(false);
    await database.db.update(nodes).set({ bannedUntil: new Date(Date.now() - 1000) }).where(eq(nodes.id, 'big'));
    expect(await claimNode(database.db, 'guarded', 'big', 9)).toBe(true);
    // The job ends: its claim goes with its last transition, and a stray late claim is refused.
    await jobsRepo.recordTransition(database.db, { jobId: 'guarded', seq: 1, from: 'queued', to: 'cancelled', reason: 'r', actor: 'client', attempt: 0, ended: true });
    expect(await database.db.select().from(nodeClaims).where(eq(nodeClaims.jobId, 'guarded'))).toEqual([]);
    expect(await claimNode(database.db, 'guarded', 'big', 9)).toBe(false);
    // A stray claim that committed after that transition looked (a late match racing it) is swept.
    await database.db.insert(nodeClaims).values({ nodeId: 'big', jobId: 'guarded' });
    expect(await jobsRepo.dropClaimsOfEndedJobs(database.db)).toEqual(['big']);
    expect(await database.db.select().from(nodeClaims).where(eq(nodeClaims.jobId, 'guarded'))).toEqual([]);
    await database.db.update(nodes).set({ bannedUntil: null }).where(eq(nodes.id, 'big'));
  });

  it('withdraws an assignment whose record landed after its offer gave up, and only then; a stop order for a node the job is later assigned to is void', async () => {
    const acts = jobActivities(createNodeCache({ db: database.db, offlineAfterMs: 30_000 }));
    await job('late-record', { status: 'queued', eventSeq: 3 });
    const assigned = { jobId: 'late-record', seq: 4, from: 'queued' as const, to: 'assigned' as const, reason: 'assigned to node big', actor: 'workflow', attempt: 1, assignedNodeId: 'big' };
    const back = { jobId: 'late-record', seq: 5, from: 'assigned' as const, to: 'queued' as const, reason: 'node big unreachable: timed out; not assigned to it', actor: 'workflow', attempt: 0, assignedNodeId: null, cancelOnNode: 'big' };
    // No record landed: nothing to withdraw, nothing written.
    expect(await acts.withdrawAssignment({ assigned, back })).toBe(false);
    expect(await jobsRepo.getJob(database.db, 'late-record')).toMatchObject({ status: 'queued', eventSeq: 3 });
    // It landed: the job is recorded back in the queue and the node told to stop it.
    await jobsRepo.recordTransition(database.db, assigned);
    expect(await acts.withdrawAssignment({ assigned, back })).toBe(true);
    expect(await jobsRepo.getJob(database.db, 'late-record')).toMatchObject({ status: 'queued', eventSeq: 5, assignedNodeId: null });
    expect((await nodesRepo.pendingCancels(database.db)).get('big')).toContain('late-record');
    expect(await acts.withdrawAssignment({ assigned, back })).toBe(false);
    // Offered again later, the node takes it: its stop order goes.
    await jobsRepo.recordTransition(database.db, { ...assigned, seq: 6, from: 'queued', attempt: 1 });
    expect((await nodesRepo.pendingCancels(database.db)).get('big') ?? []).not.toContain('late-record');
    // A reason quoting a node's NUL is stored without it.
    await jobsRepo.recordTransition(database.db, { ...back, seq: 7, from: 'assigned', reason: 'node big refused: bad\u0000byte', data: { said: 'x\u0000y' } });
    const [last] = (await database.db.select().from(jobEvents).where(and(eq(jobEvents.jobId, 'late-record'), eq(jobEvents.seq, 7))));
    expect(last).toMatchObject({ reason: 'node big refused: badbyte', data: { said: 'xy' } });
    await database.db.update(jobs).set({ status: 'cancelled' }).where(eq(jobs.id, 'late-record'));
    await database.db.delete(nodeClaims);
  });

  it('confirms a lapsed watch: alive when its beats reached Postgres lately, lost once the relays have been up long enough; a relay gone lately counts as down', async () => {
    const acts = jobActivities(createNodeCache({ db: database.db, offlineAfterMs: 30_000 }));
    const confirm = (nodeId: string) => new MockActivityEnvironment().run(acts.confirmNodeLost, { nodeId, silentForMs: 4000 });
    await database.db.delete(heartbeatRelays);
    await nodesRepo.markRelay(database.db, 'relay-long-up', 10_000);
    await database.db.update(heartbeatRelays).set({ upSince: new Date(Date.now() - 3600_000) });
    expect(await nodesRepo.relaysUpForMs(database.db, 10_000, 8000)).toBeGreaterThan(3_500_000);
    await nodesRepo.upsertNode(database.db, 'conf-alive', registration({ ipAddress: '10.7.0.1' }));
    await nodesRepo.upsertNode(database.db, 'conf-dead', registration({ ipAddress: '10.7.0.2' }));
    // Beat half a second ago: the watch missed beats that reached Postgres (the relay's lapse, not the node's).
    await database.db.update(nodes).set({ lastHeartbeat: new Date(Date.now() - 500) }).where(eq(nodes.id, 'conf-alive'));
    expect(await confirm('conf-alive')).toMatchObject({ lost: false, why: expect.stringContaining('the relay to its watch lapsed') });
    // Last beat about the timeout back (its last relayed beat a little older, as throttled): lost.
    await database.db.update(nodes).set({ lastHeartbeat: new Date(Date.now() - 3000) }).where(eq(nodes.id, 'conf-dead'));
    expect(await confirm('conf-dead')).toMatchObject({ lost: true, why: '' });
    // A relay that stopped marking moments ago (its API restarting): not up, whatever the others say.
    await database.db.insert(heartbeatRelays).values({ id: 'relay-gone', upSince: new Date(Date.now() - 3600_000), at: new Date(Date.now() - 12_000) });
    expect(await nodesRepo.relaysUpForMs(database.db, 10_000, 20_000)).toBe(0);
    expect(await nodesRepo.relaysUpForMs(database.db, 10_000, 8000)).toBeGreaterThan(0); // out of the window: ignored
    // A relay marked again after a gap starts its uptime anew.
    await database.db.update(heartbeatRelays).set({ at: new Date(Date.now() - 60_000) }).where(eq(heartbeatRelays.id, 'relay-long-up'));
    await nodesRepo.markRelay(database.db, 'relay-long-up', 10_000);
    expect(await nodesRepo.relaysUpForMs(database.db, 10_000, 8000)).toBeLessThan(1000);
    await database.db.delete(heartbeatRelays);
    await database.db.delete(nodes).where(inArray(nodes.id, ['conf-alive', 'conf-dead']));
  });

  it('asked to, a confirmation watches an alive node from Postgres a while before answering: alive if it beats on, lost once it goes silent', async () => {
    const acts = jobActivities(createNodeCache({ db: database.db, offlineAfterMs: 30_000 }));
    const confirm = (aliveForMs: number) => new MockActivityEnvironment().run(acts.confirmNodeLost, { nodeId: 'conf-watched', silentForMs: 4000, aliveForMs });
    await database.db.delete(heartbeatRelays);
    await nodesRepo.markRelay(database.db, 'relay-long-up', 10_000);
    await database.db.update(heartbeatRelays).set({ upSince: new Date(Date.now() - 3600_000) });
    await nodesRepo.upsertNode(database.db, 'conf-watched', registration({ ipAddress: '10.7.0.4' }));
    // It beats on (every 200 ms) while it is watched: alive, answered once the watch is over.
    const beat = () => database.db.update(nodes).set({ lastHeartbeat: new Date() }).where(eq(nodes.id, 'conf-watched'));
    await beat();
    const beating = setInterval(() => void beat(), 200);
    const started = Date.now();
    try {
      expect(await confirm(800)).toMatchObject({ lost: false });
    } finally {
      clearInterval(beating);
    }
    expect(Date.now() - started).toBeGreaterThanOrEqual(800);
    // Its last beat half a second back, and no more: silent past the excuse (4 s less the relay's lag) within the
    // watch of 10 s, lost then, not at its end.
    await database.db.update(nodes).set({ lastHeartbeat: new Date(Date.now() - 500) }).where(eq(nodes.id, 'conf-watched'));
    await nodesRepo.markRelay(database.db, 'relay-long-up', 10_000);
    const silentFrom = Date.now();
    expect(await confirm(10_000)).toMatchObject({ lost: true });
    expect(Date.now() - silentFrom).toBeLessThan(9000);
    await database.db.delete(heartbeatRelays);
    await database.db.delete(nodes).where(eq(nodes.id, 'conf-watched'));
  });

  it('a lapse confirmed past its wait: lost while Postgres answers (the relays did not come back), not lost while Postgres is away (nothing is known)', async () => {
    const confirmWith = (db: typeof database.db) =>
      new MockActivityEnvironment().run(
        createJobActivities({ db, nodes: createNodeCache({ db, offlineAfterMs: 30_000 }), assignPortOffset: 3, tokenDecimals: 9, heartbeatTimeoutMs: 30_000, wakeQueued: async () => undefined, lossConfirmMaxWaitMs: 1500 }).confirmNodeLost,
        { nodeId: 'conf-quiet', silentForMs: 4000 },
      );
    await database.db.delete(heartbeatRelays);
    await nodesRepo.upsertNode(database.db, 'conf-quiet', registration({ ipAddress: '10.7.0.3' }));
    await database.db.update(nodes).set({ lastHeartbeat: new Date(Date.now() - 60_000) }).where(eq(nodes.id, 'conf-quiet'));
    expect(await confirmWith(database.db)).toMatchObject({ lost: true, why: expect.stringContaining('relay was not back within 2 s') });

    const away = openDatabase('postgres://nobody@127.0.0.1:1/none', { connectionTimeoutMillis: 200 });
    try {
      expect(await confirmWith(away.db)).toMatchObject({ lost: false, why: expect.stringContaining('Postgres has not answered since') });
    } finally {
      await away.close();
    }
    await database.db.delete(nodes).where(eq(nodes.id, 'conf-quiet'));
  });

  it('gives a job capacity on one node at a time: a second try of its match, claiming another node, is refused and answered with the node it holds', async () => {
    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.status, ['pending', 'queued', 'assigned']));
    await database.db.delete(nodeClaims);
    const cache = createNodeCache({ db: database.db, offlineAfterMs: 30_000 });
    const acts = jobActivities(cache);
    await job('one-node');
    // An earlier try of the match that ran on past its timeout claimed 'small' (it fits no 4 GiB job, but the
    // claim is what is held); this try ranks 'big' first.
    expect(await claimNode(database.db, 'one-node', 'small', 9)).toBe(true);
    expect(await claimNode(database.db, 'one-node', 'big', 9)).toBe(false);
    expect(await claimNode(database.db, 'one-node', 'small', 9)).toBe(true); // the same node again: still its
    // Two claims of one job for two nodes at once: one wins, not both.
    await database.db.delete(nodeClaims);
    const both = await Promise.all([claimNode(database.db, 'one-node', 'big', 9), claimNode(database.db, 'one-node', 'small', 9)]);
    expect(both.filter(Boolean)).toHaveLength(1);
    const held = (await database.db.select().from(nodeClaims).where(eq(nodeClaims.jobId, 'one-node'))).map((c) => c.nodeId);
    expect(held).toHaveLength(1);
    // A match of the job answers with the node it holds.
    const m = await acts.matchNode({ jobId: 'one-node', requiredDevice: 'CUDA', estimatedMemory: 4 * GiB, excludeNodeIds: [] });
    expect(m.node?.nodeId).toBe(held[0]);
    await database.db.update(jobs).set({ status: 'cancelled' }).where(eq(jobs.id, 'one-node'));
    await database.db.delete(nodeClaims);
  });

  it('costs a job without an estimated duration at the 10-minute minimum, in matching and in claim_node', async () => {
    const cache = createNodeCache({ db: database.db, offlineAfterMs: 30_000 });
    const acts = jobActivities(cache);
    // 'big' costs 0.41 CYXWIZ/h: 10 minutes are 68,333,334 units
    const ask = (jobId: string, paymentUnits: string) =>
      acts.matchNode({ jobId, requiredDevice: 'CUDA', estimatedMemory: 4 * GiB, excludeNodeIds: ['node_1700000000', 'small'], paymentUnits, estimatedDuration: 0 });
    await job('cheap', { status: 'pending', paymentUnits: 68_333_333n });
    const refused = await ask('cheap', '68333333');
    expect(refused.node).toBeNull();
    expect(refused.explanation.rejected).toEqual(expect.arrayContaining([{ nodeId: 'big', reason: expect.stringMatching(/over budget \(68333334 units for 600 s/) }]));
    // Waiting, it holds nobody back from a node it can never afford.
    await job('enough', { status: 'pending', paymentUnits: 68_333_334n, createdAt: new Date(clock + 1000) });
    expect((await ask('enough', '68333334')).node?.nodeId).toBe('big');
    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.id, ['cheap', 'enough']));
    await database.db.delete(nodeClaims);
  });

  it('counts a node\'s memory for a job by the device type the job requires, as matching does', async () => {
    const card = (deviceType: string, vram: number, memory = 0) => ({ deviceType, vramTotal: vram, memoryTotal: memory });
    const memory = async (devices: object[], ram: number, device: string) =>
      (await database.pool.query('select node_device_memory($1::jsonb, $2::bigint, $3) as m', [JSON.stringify(devices), ram, device])).rows[0].m;
    const box = [card('CUDA', 8 * GiB), card('OPENCL', 0, 24 * GiB)];
    expect(Number(await memory(box, 16 * GiB, 'CUDA'))).toBe(8 * GiB);
    expect(Number(await memory(box, 16 * GiB, 'OPENCL'))).toBe(24 * GiB);
    expect(Number(await memory(box, 16 * GiB, 'CPU'))).toBe(16 * GiB);
    expect(Number(await memory(box, 16 * GiB, 'UNKNOWN'))).toBe(24 * GiB);
    expect(await memory(box, 16 * GiB, 'METAL')).toBeNull();
    expect(await memory([card('CUDA', 8 * GiB)], 0, 'CPU')).toBeNull();
    expect(Number(await memory([card('CPU', 0, 4 * GiB)], 0, 'CPU'))).toBe(4 * GiB);
  });

  it('never puts more concurrent claims on a node than its capacity', async () => {
    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.status, ['pending', 'queued']));
    await database.db.delete(nodeClaims);
    const ids = Array.from({ length: 12 }, (_, i) => `race-${i}`);
    for (const id of ids) await job(id);
    // 'big' has capacity 1: of twelve jobs claiming it at once, exactly one holds it
    const won = await Promise.all(ids.map((id) => claimNode(database.db, id, 'big', 9)));
    expect(won.filter(Boolean)).toHaveLength(1);
    expect(await database.db.select().from(nodeClaims).where(eq(nodeClaims.nodeId, 'big'))).toHaveLength(1);

    // A claim that waits for the node's lock while another commits must see that commit.
    await database.db.delete(nodeClaims);
    const holder = await database.pool.connect();
    try {
      await holder.query('begin');
      await holder.query(`select id from nodes where id = 'big' for update`);
      await holder.query(`insert into node_claims (node_id, job_id) values ('big', 'race-0')`);
      const waiting = claimNode(database.db, 'race-1', 'big', 9);
      await new Promise((r) => setTimeout(r, 300));
      await holder.query('commit');
      expect(await waiting).toBe(false);
    } finally {
      holder.release();
    }
    expect(await database.db.select().from(nodeClaims).where(eq(nodeClaims.nodeId, 'big'))).toHaveLength(1);
  });

  it('moves reputation by the documented amounts, once per job and event, and bans a node that falls too low', async () => {
    const rep = async () => (await database.db.select().from(nodes).where(eq(nodes.id, 'small')))[0];
    const start = (await rep()).reputation;
    const first = await nodesRepo.recordReputationEvent(database.db, { nodeId: 'small', jobId: 'j-ok', kind: 'job_completed', reason: 'done' });
    expect(first?.reputation).toBeCloseTo(start + 0.02);
    expect(first?.change).toBeCloseTo(0.02);
    expect(first?.recorded).toBe(true);
    // The same event again (a retried activity): nothing changes, and the answer says so.
    expect(await nodesRepo.recordReputationEvent(database.db, { nodeId: 'small', jobId: 'j-ok', kind: 'job_completed', reason: 'done' })).toEqual({
      reputation: first?.reputation,
      change: 0,
      recorded: false,
    });
    expect(await nodesRepo.recordReputationEvent(database.db, { nodeId: 'nobody', jobId: 'j-ok', kind: 'job_completed', reason: 'done' })).toBeUndefined();
    for (let i = 0; i < 4; i++) await nodesRepo.recordReputationEvent(database.db, { nodeId: 'small', jobId: `lost-${i}`, kind: 'node_lost', reason: 'node lost' });
    const after = await rep();
    expect(after.reputation).toBeCloseTo(start + 0.02 - 0.4);
    expect(after.totalJobsCompleted).toBe(1);
    expect(after.totalJobsFailed).toBe(4);
    expect(after.bannedUntil!.getTime()).toBeGreaterThan(Date.now() + 23 * 3600_000);
    const history = await nodesRepo.reputationHistory(database.db, 'small');
    expect(history.map((h) => h.kind)).toEqual(expect.arrayContaining(['job_completed', 'node_lost', 'ban']));
    expect(history.find((h) => h.kind === 'job_completed')).toMatchObject({ jobId: 'j-ok', delta: expect.closeTo(0.02) });

    // The ban expires with the node still below the threshold: a completed job moves it up and bans nothing ...
    await database.db.update(nodes).set({ bannedUntil: new Date(Date.now() - 1000) }).where(eq(nodes.id, 'small'));
    await nodesRepo.recordReputationEvent(database.db, { nodeId: 'small', jobId: 'j-back', kind: 'job_completed', reason: 'done' });
    expect((await rep()).bannedUntil!.getTime()).toBeLessThan(Date.now());
    // ... while another loss bans it again, for longer (the second ban)
    await nodesRepo.recordReputationEvent(database.db, { nodeId: 'small', jobId: 'lost-again', kind: 'node_lost', reason: 'node lost' });
    expect((await rep()).bannedUntil!.getTime()).toBeGreaterThan(Date.now() + 47 * 3600_000);
    const bans = (await nodesRepo.reputationHistory(database.db, 'small')).filter((h) => h.kind === 'ban');
    expect(bans.map((b) => b.jobId).sort()).toEqual(['lost-3', 'lost-again']);
  });
  it('adds heartbeat gaps up to the offline timeout to the node\'s online time, and nothing for the time it was away', async () => {
    const { heartbeats } = services();
    await nodesRepo.upsertNode(database.db, 'steady', registration({ ipAddress: '10.7.0.1' }));
    const start = clock;
    await database.db.update(nodes).set({ lastHeartbeat: new Date(start), uptimeSince: new Date(start) }).where(eq(nodes.id, 'steady'));
    const node = async () => (await nodesRepo.getNode(database.db, 'steady'))!;
    const beat = async () => {
      await heartbeats.beat('steady');
      await heartbeats.flush();
    };
    for (let i = 0; i < 3; i++) {
      clock += 10_000;
      await beat();
    }
    expect((await node()).onlineMs).toBe(30_000);
    clock += 120_000; // silent for two minutes: swept offline, and the gap is not online time
    await heartbeats.flush();
    expect((await node()).status).toBe('offline');
    await beat();
    expect((await node()).onlineMs).toBe(30_000);
    clock += 10_000;
    await beat();
    const after = await node();
    expect(after.onlineMs).toBe(40_000);
    // 40 s online of 160 s on record; while online, the time since the last heartbeat counts as well
    expect(nodeStats(after, { now: new Date(clock), online: true }).uptimePercentage).toBeCloseTo(25, 9);
    expect(nodeStats(after, { now: new Date(clock + 5000), online: true }).uptimePercentage).toBeCloseTo((100 * 45) / 165, 9);
    expect(nodeStats(after, { now: new Date(clock + 60_000), online: false }).uptimePercentage).toBeCloseTo((100 * 40) / 220, 9);
  });

  describe('compute time', () => {
    const HOUR = 3_600_000;
    const T = Date.now();
    const at = (hoursAgo: number) => new Date(T - hoursAgo * HOUR);
    const computeMs = async (id: string) => (await nodesRepo.getNode(database.db, id))!.computeMs;

    /** A transition as the workflow records it, dated `when` (the event's `at`). */
    async function transition(jobId: string, seq: number, from: JobPhase, to: JobPhase, nodeId: string | null, attempt: number, when: Date) {
      await jobsRepo.recordTransition(database.db, {
        jobId, seq, from, to, reason: to, actor: 'workflow', nodeId, attempt, assignedNodeId: to === 'queued' ? null : nodeId, attempts: attempt,
      });
      await database.db.update(jobEvents).set({ at: when }).where(and(eq(jobEvents.jobId, jobId), eq(jobEvents.seq, seq)));
    }
    const outcome = (nodeId: string, jobId: string, kind: 'job_completed' | 'node_lost', hoursAgo: number) =>
      nodesRepo.recordReputationEvent(database.db, { nodeId, jobId, kind, reason: kind, now: at(hoursAgo) });

    beforeAll(async () => {
      await nodesRepo.upsertNode(database.db, 'worker-a', registration({ ipAddress: '10.8.0.1' }));
      await nodesRepo.upsertNode(database.db, 'worker-b', registration({ ipAddress: '10.8.0.2' }));
      await job('long', { status: 'queued' });
      await job('moved', { status: 'queued' });
    });

    it('adds each finished attempt\'s time on the node once; a reassigned job counts on each node for its own attempt', async () => {
      // 'long': on worker-a from 3 h ago until it completed now
      await transition('long', 1, 'queued', 'assigned', 'worker-a', 1, at(3));
      await transition('long', 2, 'assigned', 'running', 'worker-a', 1, at(2.9));
      await outcome('worker-a', 'long', 'job_completed', 0);
      // 'moved': on worker-a from 5 h ago until it was lost 4.5 h ago, then on worker-b from 4 h ago to 2 h ago
      await transition('moved', 1, 'queued', 'assigned', 'worker-a', 1, at(5));
      await outcome('worker-a', 'moved', 'node_lost', 4.5);
      await transition('moved', 2, 'assigned', 'queued', null, 1, at(4.5));
      await transition('moved', 3, 'queued', 'assigned', 'worker-b', 2, at(4));
      await outcome('worker-b', 'moved', 'job_completed', 2);
      // a retried outcome activity changes nothing
      await outcome('worker-a', 'long', 'job_completed', 0);
      await outcome('worker-b', 'moved', 'job_completed', 1);
      expect(await computeMs('worker-a')).toBe(3.5 * HOUR);
      expect(await computeMs('worker-b')).toBe(2 * HOUR);
      const discovery = createDiscoveryService({ db: database.db, offlineAfterMs: 30_000 });
      expect((await discovery.get('worker-a')).totalComputeHours).toBe(3);
      expect((await discovery.get('worker-b')).totalComputeHours).toBe(2);
    });

    it('migration 0004 backfills the same totals from the recorded events', async () => {
      const migration = readFileSync(path.join(MIGRATIONS_DIR, '0004_node_uptime.sql'), 'utf8');
      const backfill = migration.split('--> statement-breakpoint').find((stmt) => stmt.includes('UPDATE "nodes"'));
      expect(backfill).toBeDefined();
      await database.db.update(nodes).set({ computeMs: 0 }).where(inArray(nodes.id, ['worker-a', 'worker-b']));
      await database.pool.query(backfill!);
      expect(await computeMs('worker-a')).toBe(3.5 * HOUR);
      expect(await computeMs('worker-b')).toBe(2 * HOUR);
    });
  });

  // Last in this file: it moves the clock, so earlier nodes look silent from here on.
  it('keeps the node cache current in the background; a match that places a job runs no refresh', async () => {
    const cache = createNodeCache({ db: database.db, offlineAfterMs: 30_000, refreshEveryMs: 20, livenessEveryMs: 100 });
    const acts = jobActivities(cache);
    const { nodeService, heartbeats } = services();
    await database.db.update(jobs).set({ status: 'cancelled' }).where(inArray(jobs.status, ['pending', 'queued']));
    await database.db.delete(nodeClaims);
    const metal = (ip: string, vram: number) =>
      registration({ ipAddress: ip, devices: [{ ...registration().devices[0], deviceType: 'METAL', vramTotal: vram * GiB, memoryTotal: vram * GiB }] });
    const row = (id: string) => {
      const t = cache.candidates();
      const i = t.indexOf(id);
      return i === undefined ? undefined : t.get(i, clock);
    };
    const eventually = async (what: () => boolean) => {
      for (let i = 0; i < 250 && !what(); i++) await new Promise((r) => setTimeout(r, 20));
      expect(what()).toBe(true);
    };
    const ask = (jobId: string) => acts.matchNode({ jobId, requiredDevice: 'METAL', estimatedMemory: 8 * GiB, excludeNodeIds: [] });

    await nodeService.register('metal-1', metal('10.3.0.1', 16));
    await heartbeats.beat('metal-1');
    await heartbeats.flush();
    cache.start();
    await eventually(() => row('metal-1')?.online === true);
    await cache.stop();

    // Placed from the table as it stands: no refresh inside the match.
    const loads = cache.refreshes();
    await job('bg-1');
    expect((await ask('bg-1')).node?.nodeId).toBe('metal-1');
    expect(cache.refreshes()).toBe(loads);
    expect(row('metal-1')?.activeJobs).toBe(1); // noted at once
    // Nothing placed: one fresh refresh and a second look, which still finds the node full.
    await job('bg-2');
    const full = await ask('bg-2');
    expect(full.node).toBeNull();
    expect(full.explanation.rejectedCounts).toMatchObject({ 'at capacity': 1 });
    expect(cache.refreshes()).toBe(loads + 1);
    await acts.releaseNode({ jobId: 'bg-1' });
    await acts.releaseNode({ jobId: 'bg-2' });

    cache.start();
    // A registration (updated_at) reaches the table; so does a heartbeat alone (last_heartbeat, narrow read).
    await nodeService.register('metal-2', metal('10.3.0.2', 32));
    await heartbeats.beat('metal-2');
    await heartbeats.flush();
    await eventually(() => row('metal-2')?.online === true);
    expect(row('metal-2')).toMatchObject({ capacity: 1, region: 'eu', memory: { METAL: 32 * GiB } });
    clock += 60_000;
    expect(row('metal-1')?.online).toBe(false);
    // (its row otherwise unchanged for an hour, so only the heartbeat read can bring it back)
    const anHourAgo = new Date(Date.now() - 3600_000);
    await ageNodeRow(database.db, 'metal-1', anHourAgo);
    await heartbeats.beat('metal-1');
    await heartbeats.flush();
    expect((await database.db.select({ updatedAt: nodes.updatedAt }).from(nodes).where(eq(nodes.id, 'metal-1')))[0].updatedAt).toEqual(anHourAgo);
    await eventually(() => row('metal-1')?.online === true);
    expect(row('metal-2')?.online).toBe(false);

    // A held node is rejected as reserved; a node that loses its endpoint leaves the table. The hold is written
    // by a process whose clock is an hour behind: the change is stamped with the database's time all the same,
    // so the table still reads it.
    await database.db.update(nodes).set({ reservedBy: 'res-1', updatedAt: new Date(Date.now() - 3600_000) }).where(eq(nodes.id, 'metal-1'));
    const stamped = (await database.db.select({ updatedAt: nodes.updatedAt }).from(nodes).where(eq(nodes.id, 'metal-1')))[0].updatedAt;
    expect(Math.abs(stamped.getTime() - Date.now())).toBeLessThan(60_000);
    await eventually(() => row('metal-1')?.reservedBy === 'res-1');
    await job('bg-3');
    const held = await ask('bg-3');
    expect(held.node).toBeNull();
    expect(held.explanation.rejected).toEqual(expect.arrayContaining([{ nodeId: 'metal-1', reason: 'reserved (reservation res-1)' }]));
    const size = cache.size();
    await database.db.update(nodes).set({ port: 0, updatedAt: new Date() }).where(eq(nodes.id, 'metal-1'));
    await eventually(() => row('metal-1') === undefined);
    expect(cache.size()).toBe(size - 1);
    expect(row('metal-2')).toMatchObject({ id: 'metal-2', memory: { METAL: 32 * GiB } });
    await cache.stop();

    // Background refreshes read heartbeats only every livenessEveryMs; an explicit refresh always does.
    const slow = createNodeCache({ db: database.db, offlineAfterMs: 30_000, refreshEveryMs: 20, livenessEveryMs: 3600_000 });
    slow.start();
    await eventually(() => slow.refreshes() >= 1);
    const slowRow = () => slow.candidates().get(slow.candidates().indexOf('metal-2')!, clock);
    expect(slowRow().online).toBe(false);
    await ageNodeRow(database.db, 'metal-2', anHourAgo);
    await heartbeats.beat('metal-2');
    await heartbeats.flush();
    const seen = slow.refreshes();
    await eventually(() => slow.refreshes() >= seen + 3);
    expect(slowRow().online).toBe(false);
    await slow.refresh();
    expect(slowRow().online).toBe(true);
    await slow.stop();
  });
});
