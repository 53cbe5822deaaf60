import { randomBytes } from 'node:crypto';
import { verifyP2PToken } from '../../src/services/p2p-token';
import { protocolClient } from '../support/grpc-clients';
import { freeNodePort, useSystem } from '../support/system';
import { moves, testChain } from './chain';
import {
  eventually,
  jobConfig,
  jobStatus,
  nodePool,
  restGet,
  S,
  submitJob,
  waitForAssignment,
  type ProtocolClient,
} from './helpers';

const SHIPPING_P2P_SECRET = 'your-super-secret-jwt-key-change-in-production';
const HEARTBEAT_TIMEOUT_S = 3;

const sys = useSystem({ name: 'node-loss', env: { JOB_HEARTBEAT_TIMEOUT_S: HEARTBEAT_TIMEOUT_S } });
const nodes = nodePool(sys);
let engine: ProtocolClient;
let nodeApi: ProtocolClient;

beforeAll(() => {
  engine = protocolClient('JobService', sys().grpcAddress);
  nodeApi = protocolClient('NodeService', sys().grpcAddress);
});

/** What GetJobStatus and REST showed right after the job moved to node B (checked in its own test). */
let afterMove: { grpcProgress: number; grpcEpoch: number; restProgress: number; restMetrics: Record<string, number> } | undefined;
let stopWatching = () => undefined as void;

afterAll(async () => {
  stopWatching();
  engine?.close();
  nodeApi?.close();
  await nodes.stopAll();
});

test('a job whose node goes silent moves to another node; the lost node is told to stop and its late report changes nothing', async () => {
  const chain = testChain();
  const nodeA = await nodes.start({ name: 'node-a' });
  const treasuryBefore = await chain.accountBalance(chain.ata(chain.treasury));
  const jobId = await submitJob(engine, jobConfig());
  expect((await waitForAssignment(engine, jobId)).node_assignment.node_id).toBe(nodeA.nodeId);
  expect(await nodeA.accepted(jobId)).toMatchObject({ status: S.SUCCESS });
  expect(await nodeA.progress(jobId, 0.3, 3)).toMatchObject({ status: S.SUCCESS, continue_job: true });

  // B comes online while A runs the job; a running job stays where it is.
  const nodeB = await nodes.start({ name: 'node-b' });
  expect(nodeB.nodeId).not.toBe(nodeA.nodeId);

  // Watch the job's holder the way the Engine sees it, from A going silent to the end of the test.
  const holders: string[] = [];
  let watching = true;
  stopWatching = () => (watching = false);
  const watcher = (async () => {
    while (watching) {
      const res = await jobStatus(engine, jobId).catch(() => undefined);
      if (res?.status) holders.push(res.status.current_node_id);
      await new Promise((r) => setTimeout(r, 100));
    }
  })();

  const silentAt = Date.now();
  nodeA.pauseHeartbeats();
  const moved = await eventually(
    'the job to move to node B',
    async () => {
      const res = await jobStatus(engine, jobId);
      return res.node_assignment?.node_id === nodeB.nodeId ? res : undefined;
    },
    30_000,
  );
  // Not before the heartbeat timeout, counted from the last heartbeat that reached the server (up to ~1.3 s before the pause).
  expect(Date.now() - silentAt).toBeGreaterThanOrEqual((HEARTBEAT_TIMEOUT_S - 1.5) * 1000);
  expect(moved.status).toMatchObject({ status: S.IN_PROGRESS, current_node_id: nodeB.nodeId });
  const movedRest = (await restGet(sys(), `/api/jobs/${jobId}`)).body;
  afterMove = { grpcProgress: moved.status.progress, grpcEpoch: moved.status.current_epoch, restProgress: movedRest.progress, restMetrics: movedRest.metrics };
  expect(moved.node_assignment.node_endpoint).toBe(`127.0.0.1:${nodeB.port}`);
  expect(verifyP2PToken(SHIPPING_P2P_SECRET, moved.node_assignment.auth_token)).toMatchObject({ job_id: jobId, node_id: nodeB.nodeId });
  expect(nodeB.assignRequests.filter((r) => r.job.job_id === jobId)).toHaveLength(1);
  expect(nodeA.assignRequests.filter((r) => r.job.job_id === jobId)).toHaveLength(1);

  // A comes back: its heartbeat replies tell it to stop the job.
  nodeA.resumeHeartbeats();
  await eventually('the stop order for node A', () => nodeA.cancelOrders.has(jobId), 10_000);
  expect(nodeB.cancelOrders.has(jobId)).toBe(false);

  // A's late reports are refused and change nothing.
  const lateCompletion = await nodeA.complete(jobId, { deadlineMs: 30_000 });
  expect(lateCompletion.status).toBe(S.FAILED);
  expect([403, 409]).toContain(lateCompletion.error.code);
  expect(lateCompletion.payment_released).toBe(false);
  const lateProgress = await nodeA.progress(jobId, 0.9, 9);
  expect(lateProgress.status).toBe(S.FAILED);
  expect([403, 409]).toContain(lateProgress.error.code);
  expect(lateProgress.continue_job).toBe(false); // the job is not this node's any more: stop
  const after = await restGet(sys(), `/api/jobs/${jobId}`);
  expect(after.body).toMatchObject({ status: 'assigned', assignedNodeId: nodeB.nodeId, attempts: 2 });
  expect(after.body.progress).not.toBe(0.9);
  expect(after.body.payments.map((p: any) => p.leg)).toEqual(['escrow']);

  // B finishes the job and is the one paid.
  expect(await nodeB.accepted(jobId)).toMatchObject({ status: S.SUCCESS });
  expect(await nodeB.progress(jobId, 0.5, 5)).toMatchObject({ status: S.SUCCESS });
  const done = await nodeB.complete(jobId, { deadlineMs: 30_000 });
  expect(done).toMatchObject({ status: S.SUCCESS, payment_released: true });
  expect((await jobStatus(engine, jobId)).status).toMatchObject({ status: S.SUCCESS, current_node_id: nodeB.nodeId });

  // Reported again by A after the end: still refused.
  const afterEnd = await nodeA.complete(jobId);
  expect(afterEnd.status).toBe(S.FAILED);
  expect([403, 409]).toContain(afterEnd.error.code);

  watching = false;
  await watcher;
  const firstB = holders.indexOf(nodeB.nodeId);
  expect(firstB).toBeGreaterThan(0);
  expect(holders.lastIndexOf(nodeA.nodeId)).toBeLessThan(firstB);
  expect(new Set(holders.slice(firstB))).toEqual(new Set([nodeB.nodeId]));

  const { body } = await restGet(sys(), `/api/jobs/${jobId}`);
  expect(body.events.map((e: any) => e.toStatus)).toEqual(['pending', 'assigned', 'running', 'queued', 'assigned', 'running', 'completed']);
  expect(body.events[3].reason).toMatch(/node lost/);
  const releases = body.payments.filter((p: any) => p.leg === 'release_node');
  expect(releases).toHaveLength(1);
  expect(releases[0].toAccount).toBe(nodeB.wallet);
  expect(releases[0].txRef).toBe(done.payment_tx_hash);
  expect(body.payments.map((p: any) => p.leg).sort()).toEqual(['escrow', 'release_node', 'release_platform']);
  expect(BigInt(releases[0].amount) + BigInt(body.payments.find((p: any) => p.leg === 'release_platform').amount)).toBe(
    BigInt(body.payments.find((p: any) => p.leg === 'escrow').amount),
  );

  // On chain only B was paid, once: 90 % to its wallet, 10 % to the treasury, nothing left in the escrow.
  expect(await chain.balances({ a: chain.ata(nodeA.wallet), b: chain.ata(nodeB.wallet), escrow: chain.escrowAccount(jobId) })).toEqual({
    a: 0n,
    b: 1_350_000_000n,
    escrow: 0n,
  });
  expect((await chain.accountBalance(chain.ata(chain.treasury))) - treasuryBefore).toBe(150_000_000n);
  expect(await chain.tokenMoves(done.payment_tx_hash)).toEqual(
    moves([[chain.escrowAccount(jobId), -1_500_000_000n], [chain.ata(nodeB.wallet), 1_350_000_000n], [chain.ata(chain.treasury), 150_000_000n]]),
  );
});

test("after a reassignment the job shows the new node starting from scratch, not the lost node's progress", () => {
  // Recorded by the test above when the job had just moved to node B, before B reported anything.
  expect(afterMove).toBeDefined();
  expect(afterMove).toEqual({ grpcProgress: 0, grpcEpoch: 0, restProgress: 0, restMetrics: {} });
});

test('a heartbeat from a node id the server does not know succeeds and creates a minimal record', async () => {
  const nodeId = `node_${Date.now()}${randomBytes(2).toString('hex')}`;
  const res = await nodeApi.call('Heartbeat', {
    node_id: nodeId,
    current_status: { node_id: nodeId, is_online: true, ram_available: String(2 ** 30) },
    active_jobs: [],
  });
  expect(res).toMatchObject({ status: S.SUCCESS, keep_alive: true, jobs_to_cancel: [] });
  const rows = await eventually('the minimal node record', async () => {
    const r = await sys().query<{ id: string; port: number }>('SELECT id, port FROM nodes WHERE id = $1', [nodeId]);
    return r.length > 0 ? r : undefined;
  });
  expect(rows[0].port).toBe(0);
  // Heartbeating on keeps working.
  expect(await nodeApi.call('Heartbeat', { node_id: nodeId })).toMatchObject({ status: S.SUCCESS, keep_alive: true });
});

test('a node registering again gets the same node_id: from the same ip:port, and with the id it holds', async () => {
  const port = await freeNodePort();
  const info = (node_id: string, p = port) => ({
    node_id,
    name: 're-registering node',
    cpu_cores: 4,
    ram_total: String(8 * 2 ** 30),
    ip_address: '127.0.0.1',
    port: p,
    devices: [{ device_type: 1, device_name: 'cpu', memory_total: String(8 * 2 ** 30) }],
  });
  const first = await nodeApi.call('RegisterNode', { info: info(''), authentication_token: 'jwt' });
  expect(first.status).toBe(S.SUCCESS);
  expect(first.node_id).toBeTruthy();
  expect(first.session_token).toBeTruthy();
  const again = await nodeApi.call('RegisterNode', { info: info(''), authentication_token: 'jwt' });
  expect(again).toMatchObject({ status: S.SUCCESS, node_id: first.node_id });
  const withId = await nodeApi.call('RegisterNode', { info: info(first.node_id), authentication_token: 'jwt' });
  expect(withId).toMatchObject({ status: S.SUCCESS, node_id: first.node_id });

  // A shipping daemon's first run brings its local id `node_<unix ts>`: it keeps it, so its P2P validator agrees.
  const localId = `node_${Math.floor(Date.now() / 1000)}${randomBytes(2).toString('hex')}`;
  const otherPort = await freeNodePort();
  const adopted = await nodeApi.call('RegisterNode', { info: info(localId, otherPort) });
  expect(adopted).toMatchObject({ status: S.SUCCESS, node_id: localId });
  expect(await nodeApi.call('RegisterNode', { info: info(localId, otherPort) })).toMatchObject({ status: S.SUCCESS, node_id: localId });

  const count = await sys().query<{ n: string }>('SELECT count(*)::text AS n FROM nodes WHERE id = ANY($1)', [[first.node_id, localId]]);
  expect(count[0].n).toBe('2');
});
