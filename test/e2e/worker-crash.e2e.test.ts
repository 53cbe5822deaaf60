import { protocolClient } from '../support/grpc-clients';
import type { SimNode } from '../support/sim-node';
import { useSystem } from '../support/system';
import { moves, testChain, type TestChain } from './chain';
import { eventually, jobConfig, jobStatus, ledger, nodePool, S, submitJob, waitForAssignment, within, type ProtocolClient } from './helpers';

/**
 * Long enough for an API restart plus the nodes' reconnect; the worker stays down longer than this, which
 * only works if job liveness does not depend on the worker.
 */
const HEARTBEAT_TIMEOUT_S = 6;
/** Nodes and the Engine reconnect quickly after the API restarts (grpc-js otherwise backs off from 1 s up). */
const FAST_RECONNECT = { 'grpc.initial_reconnect_backoff_ms': 200, 'grpc.max_reconnect_backoff_ms': 500 };

const sys = useSystem({ name: 'worker-crash', env: { JOB_HEARTBEAT_TIMEOUT_S: HEARTBEAT_TIMEOUT_S } });
const nodes = nodePool(sys);
let engine: ProtocolClient;
let node: SimNode;
let chain: TestChain;

beforeAll(async () => {
  engine = protocolClient('JobService', sys().grpcAddress, FAST_RECONNECT);
  chain = testChain();
  node = await nodes.start({ name: 'crash-node', channelOptions: FAST_RECONNECT });
});

afterAll(async () => {
  engine?.close();
  await nodes.stopAll();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Balances = Record<'node' | 'treasury' | 'payer', bigint>;
const onChain = (): Promise<Balances> => chain.balances({ node: chain.ata(node.wallet), treasury: chain.ata(chain.treasury), payer: chain.ata(chain.payer) });

/** A job running on the node, with some progress, and the chain's balances from before it was submitted. */
async function runningJob(): Promise<{ jobId: string; before: Balances }> {
  const before = await onChain();
  const jobId = await submitJob(engine, jobConfig());
  expect((await waitForAssignment(engine, jobId)).node_assignment.node_id).toBe(node.nodeId);
  expect(await node.accepted(jobId)).toMatchObject({ status: S.SUCCESS });
  expect(await node.progress(jobId, 0.3, 3)).toMatchObject({ status: S.SUCCESS, continue_job: true });
  await eventually('the job to run', async () => (await sys().query<{ status: string }>('SELECT status FROM jobs WHERE id = $1', [jobId]))[0]?.status === 'running');
  return { jobId, before };
}

/**
 * The job ran on one node, once, and was paid once: one escrow and one release pair, no refund, in the
 * ledger and on chain (the node's wallet got exactly 90 % of one payment, the treasury 10 %, the escrow
 * account is empty).
 */
async function expectSettledOnce(jobId: string, before: Balances, paymentTx: string): Promise<void> {
  const legs = await ledger(sys(), jobId);
  expect(legs.map((l) => l.leg).sort()).toEqual(['escrow', 'release_node', 'release_platform']);
  const leg = (name: string) => legs.find((l) => l.leg === name)!;
  const amount = (name: string) => BigInt(leg(name).amount);
  expect(amount('release_node') + amount('release_platform')).toBe(amount('escrow'));
  expect(amount('escrow')).toBe(1_500_000_000n);
  expect(leg('release_node').to_account).toBe(node.wallet);
  expect(leg('release_node').tx_ref).toBe(paymentTx);
  expect(leg('release_platform').tx_ref).toBe(paymentTx);
  const states = await sys().query<{ state: string }>('SELECT state::text AS state FROM payments WHERE job_id = $1', [jobId]);
  expect(states.map((r) => r.state)).toEqual(['confirmed', 'confirmed', 'confirmed']);

  const after = await onChain();
  expect({ node: after.node - before.node, treasury: after.treasury - before.treasury, payer: after.payer - before.payer }).toEqual({
    node: 1_350_000_000n,
    treasury: 150_000_000n,
    payer: -1_500_000_000n,
  });
  expect(await chain.accountBalance(chain.escrowAccount(jobId))).toBe(0n);
  expect(await chain.tokenMoves(paymentTx)).toEqual(
    moves([[chain.escrowAccount(jobId), -1_500_000_000n], [chain.ata(node.wallet), 1_350_000_000n], [chain.ata(chain.treasury), 150_000_000n]]),
  );

  const events = await sys().query<{ to_status: string }>('SELECT to_status FROM job_events WHERE job_id = $1 ORDER BY seq', [jobId]);
  expect(events.map((e) => e.to_status)).toEqual(['pending', 'assigned', 'running', 'completed']);
  const [job] = await sys().query<{ status: string; attempts: number; assigned_node_id: string }>(
    'SELECT status, attempts, assigned_node_id FROM jobs WHERE id = $1',
    [jobId],
  );
  expect(job).toEqual({ status: 'completed', attempts: 1, assigned_node_id: node.nodeId });
  expect(node.assignRequests.filter((r) => r.job.job_id === jobId)).toHaveLength(1);
}

test('SIGKILL of the worker mid-job: the job stays on its node and is completed and paid exactly once by a new worker', async () => {
  const { jobId, before } = await runningJob();

  await sys().killWorker();
  // Reports keep being accepted while no worker runs.
  expect(await node.progress(jobId, 0.6, 6)).toMatchObject({ status: S.SUCCESS, continue_job: true });
  // Longer than the heartbeat timeout: only the node's heartbeats (through the API) keep the job alive.
  await sleep((HEARTBEAT_TIMEOUT_S + 1) * 1000);
  expect((await jobStatus(engine, jobId)).status).toMatchObject({ status: S.IN_PROGRESS, current_node_id: node.nodeId, progress: 0.6 });

  // The node reports completion while no worker runs; it is settled once a new worker picks the job up.
  const completion = node.complete(jobId, { deadlineMs: 90_000 });
  expect(await within(completion, 1000, 'pending')).toBe('pending');
  await sys().startWorker();
  const paid = await completion;
  expect(paid).toMatchObject({ status: S.SUCCESS, payment_released: true });

  expect((await jobStatus(engine, jobId)).status).toMatchObject({ status: S.SUCCESS, progress: 1 });
  expect(node.cancelOrders.has(jobId)).toBe(false);
  await expectSettledOnce(jobId, before, paid.payment_tx_hash);
});

test('SIGKILL of the worker while it settles a completion: a new worker finishes the release, paid exactly once on chain', async () => {
  const { jobId, before } = await runningJob();

  // Kill the worker as soon as the release is recorded, whatever step it has reached (recorded, sent, confirmed).
  const completion = node.complete(jobId, { deadlineMs: 90_000 });
  const seen = await eventually(
    'the release to be recorded',
    async () => (await sys().query<{ state: string }>("SELECT state::text AS state FROM payments WHERE job_id = $1 AND leg = 'release_node'", [jobId]))[0]?.state,
    20_000,
    10,
  );
  await sys().killWorker();
  expect(['pending', 'sent', 'confirmed']).toContain(seen);

  await sys().startWorker();
  const paid = await completion;
  expect(paid).toMatchObject({ status: S.SUCCESS, payment_released: true });
  await expectSettledOnce(jobId, before, paid.payment_tx_hash);
});

test('SIGKILL of the API mid-job: after a restart heartbeats and reports resume and the job completes on its node', async () => {
  const { jobId, before } = await runningJob();

  await sys().killApi();
  const failedBefore = node.beats.failed;
  await eventually('a failed heartbeat while the API is down', () => node.beats.failed > failedBefore, 10_000);
  expect((await node.progress(jobId, 0.5, 5).catch((err: Error) => err)) instanceof Error).toBe(true);

  const restartedAt = Date.now();
  await sys().startApi();
  await eventually('heartbeats to succeed again', () => node.beats.lastOkAt > restartedAt, 15_000);
  const progress = await eventually('a progress report to be accepted again', () => node.progress(jobId, 0.7, 7).catch(() => undefined), 15_000);
  expect(progress).toMatchObject({ status: S.SUCCESS, continue_job: true });

  const status = await eventually('GetJobStatus to answer again', () => jobStatus(engine, jobId).catch(() => undefined), 15_000);
  expect(status.status).toMatchObject({ status: S.IN_PROGRESS, current_node_id: node.nodeId, progress: 0.7, current_epoch: 7 });
  expect(status.node_assignment.node_id).toBe(node.nodeId);

  const paid = await node.complete(jobId, { deadlineMs: 60_000 });
  expect(paid).toMatchObject({ status: S.SUCCESS, payment_released: true });
  await expectSettledOnce(jobId, before, paid.payment_tx_hash);
});
