import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { openDatabase } from '../../src/db/client';
import * as jobsRepo from '../../src/db/jobs-repo';
import type { JobSpec } from '../../src/domain/job';
import { verifyP2PToken } from '../../src/services/p2p-token';
import { protocolClient } from '../support/grpc-clients';
import type { SimNode } from '../support/sim-node';
import { useSystem } from '../support/system';
import { moves, testChain, type TestChain } from './chain';
import {
  collect,
  eventually,
  jobConfig,
  jobStatus,
  nodePool,
  paymentLegs,
  restGet,
  S,
  submitJob,
  unfittable,
  waitForAssignment,
  waitForStatus,
  within,
  type ProtocolClient,
} from './helpers';

/** The shipping node's default --p2p-secret, which the system uses when P2P_JWT_SECRET is unset. */
const SHIPPING_P2P_SECRET = 'your-super-secret-jwt-key-change-in-production';
const uid = () => randomBytes(4).toString('hex');

// A job whose node never reports ends 1 s after its expected run (estimated_duration); the tests' jobs expect 600 s.
const sys = useSystem({ name: 'engine-flow', env: { JOB_UNREPORTED_END_GRACE_S: 1 } });
const nodes = nodePool(sys);
let engine: ProtocolClient;
let nodeA: SimNode;
let nodeB: SimNode;
let chain: TestChain;

beforeAll(async () => {
  engine = protocolClient('JobService', sys().grpcAddress);
  chain = testChain();
  [nodeA, nodeB] = await Promise.all([nodes.start({ name: 'node-a' }), nodes.start({ name: 'node-b' })]);
});

afterAll(async () => {
  engine?.close();
  await nodes.stopAll();
});

const holderOf = (nodeId: string) => [nodeA, nodeB].find((n) => n.nodeId === nodeId);

/** Takes a job through accept → complete on whichever node holds it. */
async function runToCompletion(jobId: string): Promise<SimNode> {
  const { node_assignment } = await waitForAssignment(engine, jobId);
  const holder = holderOf(node_assignment.node_id)!;
  expect((await holder.accepted(jobId)).status).toBe(S.SUCCESS);
  const done = await holder.complete(jobId, { deadlineMs: 30_000 });
  expect(done).toMatchObject({ status: S.SUCCESS, payment_released: true });
  return holder;
}

test('the gRPC health service reports SERVING for the server and each protocol service, and answers Watch, unknown names included', async () => {
  const Health = grpc.makeGenericClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health');
  const health = new Health(sys().grpcAddress, grpc.credentials.createInsecure()) as any;
  try {
    for (const service of ['', 'cyxwiz.protocol.JobService', 'cyxwiz.protocol.NodeService', 'cyxwiz.protocol.JobStatusService']) {
      const res = await new Promise<any>((resolve, reject) =>
        health.Check({ service }, { deadline: Date.now() + 5000 }, (err: unknown, r: unknown) => (err ? reject(err) : resolve(r))),
      );
      expect({ service, status: res.status }).toEqual({ service, status: 'SERVING' });
    }
    // Watch: a served name's status; an unknown name's SERVICE_UNKNOWN (the stream stays open, as the health spec
    // asks, and nothing is kept of the name once it closes).
    const first = (service: string) =>
      new Promise<string>((resolve, reject) => {
        const stream = health.Watch({ service });
        stream.on('error', () => undefined);
        stream.once('data', (m: { status: string }) => {
          resolve(m.status);
          stream.cancel();
        });
        stream.once('error', reject);
      });
    expect(await first('cyxwiz.protocol.JobService')).toBe('SERVING');
    expect(await first('x'.repeat(10_000))).toBe('SERVICE_UNKNOWN');
  } finally {
    health.close();
  }
  const rest = await restGet(sys(), '/api/health');
  expect(rest.status).toBe(200);
  expect(rest.body.status).toBe('healthy');
});

test('an Engine job travels SubmitJob → assignment → P2P token → node reports → payment, as the Engine and node see it', async () => {
  const jobId = `flow-${uid()}`;
  const onChainBefore = await chain.balances({ a: chain.ata(nodeA.wallet), b: chain.ata(nodeB.wallet), treasury: chain.ata(chain.treasury), payer: chain.ata(chain.payer) });
  const submitted = await engine.call('SubmitJob', { config: jobConfig({ job_id: jobId, dataset_uri: 'file:///data/mnist.csv' }) });
  expect(submitted).toMatchObject({ status: S.SUCCESS, job_id: jobId });
  expect(Number(submitted.estimated_start_time)).toBeGreaterThan(0);

  const updates = collect(engine.stream('StreamJobUpdates', { job_id: jobId }));

  // The Engine polls GetJobStatus until a node assignment appears.
  const assigned = await waitForAssignment(engine, jobId);
  const a = assigned.node_assignment;
  const holder = holderOf(a.node_id);
  expect(holder).toBeDefined();
  const other = holder === nodeA ? nodeB : nodeA;
  expect(assigned.status).toMatchObject({ job_id: jobId, status: S.IN_PROGRESS, current_node_id: holder!.nodeId });
  expect(a.node_endpoint).toBe(`127.0.0.1:${holder!.port}`);

  // The P2P token as the node's validator checks it.
  const nowS = Math.floor(Date.now() / 1000);
  const claims = verifyP2PToken(SHIPPING_P2P_SECRET, a.auth_token);
  expect(claims).toMatchObject({ iss: 'CyxWiz-Central-Server', job_id: jobId, node_id: holder!.nodeId });
  expect(claims.exp).toBeGreaterThan(nowS);
  expect(claims.iat).toBeLessThanOrEqual(nowS);
  expect(Number(a.token_expires_at)).toBe(claims.exp);
  expect(() => verifyP2PToken('another-secret', a.auth_token)).toThrow();

  // The node got AssignJob for it, with the data coming from the Engine over P2P.
  const request = holder!.assignRequests.find((r) => r.job.job_id === jobId);
  expect(request).toBeDefined();
  expect(request!.node_id).toBe(holder!.nodeId);
  expect(request!.job.dataset_uri).toMatch(/^remote:\/\//);
  expect(request!.job).toMatchObject({ job_type: 1, epochs: 10, batch_size: 32, required_device: 2 });
  expect(other.assignRequests.some((r) => r.job.job_id === jobId)).toBe(false);

  // The stream shows the assignment before the node starts.
  await eventually('the stream to show the assignment', () => updates.messages.some((m) => m.status?.status === S.IN_PROGRESS));

  // NotifyJobAccepted arrives without authorization metadata, as the shipping node sends it.
  const accepted = await holder!.accepted(jobId);
  expect(accepted).toMatchObject({ status: S.SUCCESS, acknowledged: true });
  await eventually('the job to run', async () => (await restGet(sys(), `/api/jobs/${jobId}`)).body.status === 'running');

  const progress = await holder!.progress(jobId, 0.5, 5);
  expect(progress).toMatchObject({ status: S.SUCCESS, continue_job: true });
  const midway = await jobStatus(engine, jobId);
  expect(midway.status).toMatchObject({ status: S.IN_PROGRESS, progress: 0.5, current_epoch: 5 });
  expect(midway.status.metrics.loss).toBeCloseTo(0.5);
  expect(Number(midway.status.start_time)).toBeGreaterThan(0);

  const completion = await holder!.complete(jobId, { deadlineMs: 30_000 });
  expect(completion).toMatchObject({ status: S.SUCCESS, payment_released: true });
  expect(completion.payment_tx_hash).toEqual(expect.any(String));
  expect(completion.payment_tx_hash.length).toBeGreaterThan(0);

  const finished = await jobStatus(engine, jobId);
  expect(finished.status).toMatchObject({ job_id: jobId, status: S.SUCCESS, progress: 1, current_node_id: holder!.nodeId });
  expect(Number(finished.status.end_time)).toBeGreaterThanOrEqual(Number(finished.status.start_time));
  expect(finished.node_assignment).toBeNull();

  // A retried completion report returns the same payment.
  const retried = await holder!.complete(jobId, { deadlineMs: 30_000 });
  expect(retried).toMatchObject({ status: S.SUCCESS, payment_released: true, payment_tx_hash: completion.payment_tx_hash });

  // The stream carried the real transitions and ended with the job.
  expect(await within(updates.done, 10_000, 'stream still open after 10 s')).toEqual({});
  const phases = updates.messages
    .map((m) => String(m.log_message).split(':')[0])
    .filter((p, i, all) => i === 0 || p !== all[i - 1]);
  expect(['pending', 'queued', 'assigned']).toContain(phases[0]);
  expect(phases.slice(phases.indexOf('assigned'))).toEqual(['assigned', 'running', 'completed']);
  expect(updates.messages.every((m) => m.job_id === jobId)).toBe(true);
  expect(updates.messages.some((m) => m.status.progress === 0.5)).toBe(true);
  expect(updates.messages.at(-1).status).toMatchObject({ status: S.SUCCESS, progress: 1 });

  // REST: the job's history in order, and the money: escrow = node's 90 % + platform's 10 %, exactly.
  const { status, body } = await restGet(sys(), `/api/jobs/${jobId}`);
  expect(status).toBe(200);
  expect(body).toMatchObject({ id: jobId, status: 'completed', statusCode: S.SUCCESS, assignedNodeId: holder!.nodeId, attempts: 1, paymentUnits: '1500000000' });
  expect(body.events.map((e: any) => e.toStatus)).toEqual(['pending', 'assigned', 'running', 'completed']);
  expect(body.events.map((e: any) => e.seq)).toEqual([0, 1, 2, 3]);
  const legs = Object.fromEntries(body.payments.map((p: any) => [p.leg, p]));
  expect(body.payments).toHaveLength(3);
  expect(legs.escrow.amount).toBe('1500000000');
  expect(legs.release_node.amount).toBe('1350000000');
  expect(legs.release_platform.amount).toBe('150000000');
  expect(BigInt(legs.release_node.amount) + BigInt(legs.release_platform.amount)).toBe(BigInt(legs.escrow.amount));
  expect(legs.release_node.toAccount).toBe(holder!.wallet);
  expect(legs.release_platform.toAccount).toBe(chain.treasury.toBase58());
  expect(legs.escrow).toMatchObject({ fromAccount: chain.payer.toBase58(), toAccount: chain.escrowAccount(jobId).toBase58(), state: 'confirmed' });
  expect(completion.payment_tx_hash).toBe(legs.release_node.txRef);
  expect(legs.release_platform.txRef).toBe(legs.release_node.txRef);
  expect(await paymentLegs(sys(), jobId)).toEqual({
    escrow: expect.objectContaining({ amount: '1500000000', state: 'confirmed', txRef: legs.escrow.txRef }),
    release_node: expect.objectContaining({ amount: '1350000000', state: 'confirmed', toAccount: holder!.wallet, txRef: completion.payment_tx_hash }),
    release_platform: expect.objectContaining({ amount: '150000000', state: 'confirmed', toAccount: chain.treasury.toBase58(), txRef: completion.payment_tx_hash }),
  });

  // On chain: the payer's 1.5 tokens went through the job's escrow account, 90 % to the node's wallet and
  // 10 % to the treasury, in the one transaction the node was told about; the escrow account is empty.
  const onChainAfter = await chain.balances({ a: chain.ata(nodeA.wallet), b: chain.ata(nodeB.wallet), treasury: chain.ata(chain.treasury), payer: chain.ata(chain.payer) });
  const delta = (k: keyof typeof onChainAfter) => onChainAfter[k] - onChainBefore[k];
  expect({ holder: delta(holder === nodeA ? 'a' : 'b'), other: delta(holder === nodeA ? 'b' : 'a'), treasury: delta('treasury'), payer: delta('payer') }).toEqual({
    holder: 1_350_000_000n,
    other: 0n,
    treasury: 150_000_000n,
    payer: -1_500_000_000n,
  });
  expect(await chain.accountBalance(chain.escrowAccount(jobId))).toBe(0n);
  const escrowAccount = chain.escrowAccount(jobId);
  expect(await chain.tokenMoves(legs.escrow.txRef)).toEqual(moves([[chain.ata(chain.payer), -1_500_000_000n], [escrowAccount, 1_500_000_000n]]));
  expect(await chain.tokenMoves(completion.payment_tx_hash)).toEqual(
    moves([[escrowAccount, -1_500_000_000n], [chain.ata(holder!.wallet), 1_350_000_000n], [chain.ata(chain.treasury), 150_000_000n]]),
  );
  // Each transfer names the job and leg it settles, so the chain alone tells what it was for.
  expect(await chain.memos(legs.escrow.txRef)).toEqual([`cyxwiz ${jobId}/escrow`]);
  expect(await chain.memos(completion.payment_tx_hash)).toEqual([`cyxwiz ${jobId}/release`]);
});

describe('the shipping node and Engine never report the end of a job (CYXWIZ-PROTOCOL §6.2)', () => {
  test('accepted over P2P and then silent: completed at the end of its expected run, the node paid 90/10', async () => {
    const jobId = `silent-${uid()}`;
    const before = await chain.balances({ a: chain.ata(nodeA.wallet), b: chain.ata(nodeB.wallet), treasury: chain.ata(chain.treasury) });
    await submitJob(engine, jobConfig({ job_id: jobId, estimated_duration: '2' }));
    const { node_assignment } = await waitForAssignment(engine, jobId);
    const holder = holderOf(node_assignment.node_id)!;
    // The node's P2P service tells the server it took the job from the Engine; nothing else ever comes.
    expect(await holder.accepted(jobId)).toMatchObject({ status: S.SUCCESS });

    const done = await waitForStatus(engine, jobId, (st) => st.status === S.SUCCESS, 'the job to complete by time', 20_000);
    expect(done.status.progress).toBe(1);
    const job = (await restGet(sys(), `/api/jobs/${jobId}`)).body;
    expect(job).toMatchObject({ status: 'completed' });
    const legs = await paymentLegs(sys(), jobId);
    expect(legs.release_node).toMatchObject({ amount: '1350000000', state: 'confirmed' });
    const after = await chain.balances({ a: chain.ata(nodeA.wallet), b: chain.ata(nodeB.wallet), treasury: chain.ata(chain.treasury) });
    const paid = holder === nodeA ? after.a - before.a : after.b - before.b;
    expect(paid).toBe(1_350_000_000n);
    expect(after.treasury - before.treasury).toBe(150_000_000n);
    expect(JSON.stringify(job)).toContain('no end reported within its expected 3 s run time and grace');
  });

  test('assigned but never taken up by the Engine: failed and refunded whole, the node told to let it go', async () => {
    const jobId = `untaken-${uid()}`;
    const payerBefore = await chain.accountBalance(chain.ata(chain.payer));
    await submitJob(engine, jobConfig({ job_id: jobId, estimated_duration: '1' }));
    const { node_assignment } = await waitForAssignment(engine, jobId);
    const holder = holderOf(node_assignment.node_id)!;

    const failed = await waitForStatus(engine, jobId, (st) => st.status === S.FAILED, 'the job to fail by time', 20_000);
    expect(failed.status.error).toMatchObject({ code: 408, message: expect.stringContaining('the Engine did not connect') });
    expect(await chain.accountBalance(chain.ata(chain.payer))).toBe(payerBefore);
    expect(Object.keys(await paymentLegs(sys(), jobId)).sort()).toEqual(['escrow', 'refund']);
    await eventually('the stop order in a heartbeat reply', () => holder.cancelOrders.has(jobId), 15_000);
  });
});

test('SubmitJob without a job_id gets a server-chosen id; cancelling it on its node refunds and tells the node to stop', async () => {
  const payerBefore = await chain.accountBalance(chain.ata(chain.payer));
  const res = await engine.call('SubmitJob', { config: jobConfig() });
  expect(res.status).toBe(S.SUCCESS);
  expect(res.job_id).toMatch(/^[0-9a-f-]{36}$/);
  const { node_assignment } = await waitForAssignment(engine, res.job_id);
  const holder = holderOf(node_assignment.node_id)!;
  expect(holder.assignRequests.some((r) => r.job.job_id === res.job_id)).toBe(true);

  expect(await chain.accountBalance(chain.escrowAccount(res.job_id))).toBe(1_500_000_000n);
  expect(await chain.accountBalance(chain.ata(chain.payer))).toBe(payerBefore - 1_500_000_000n);

  const cancelled = await engine.call('CancelJob', { job_id: res.job_id, reason: 'user changed their mind' }, { deadlineMs: 30_000 });
  expect(cancelled).toMatchObject({ status: S.SUCCESS, refund_issued: true });
  expect((await jobStatus(engine, res.job_id)).status.status).toBe(S.CANCELLED);
  await eventually('the stop order in a heartbeat reply', () => holder.cancelOrders.has(res.job_id), 10_000);

  // On chain the payer is whole again and the job's escrow account is empty; the node got nothing.
  expect(await chain.accountBalance(chain.ata(chain.payer))).toBe(payerBefore);
  expect(await chain.accountBalance(chain.escrowAccount(res.job_id))).toBe(0n);
  const legs = await paymentLegs(sys(), res.job_id);
  expect(Object.keys(legs).sort()).toEqual(['escrow', 'refund']);
  expect(legs.refund).toMatchObject({ amount: '1500000000', state: 'confirmed', toAccount: chain.payer.toBase58() });
  expect(await chain.tokenMoves(legs.refund!.txRef!)).toEqual(
    moves([[chain.escrowAccount(res.job_id), -1_500_000_000n], [chain.ata(chain.payer), 1_500_000_000n]]),
  );
});

test('ListJobs pages newest first with next_page_token and filters by user_id and status', async () => {
  const user = `wallet-${uid()}`;
  const ids: string[] = [];
  for (let i = 0; i < 5; i++) {
    // Jobs 0, 2, 4 wait in the queue; 1 and 3 go to nodes.
    const config = i % 2 === 0 ? unfittable({ payment_address: user }) : jobConfig({ payment_address: user });
    ids.push(await submitJob(engine, config));
  }
  await Promise.all([ids[1], ids[3]].map((id) => waitForAssignment(engine, id)));

  const pages: any[] = [];
  let token = '';
  do {
    const page = await engine.call('ListJobs', { user_id: user, page_size: 2, page_token: token });
    pages.push(page);
    token = page.next_page_token;
  } while (token && pages.length < 10);
  expect(pages.map((p) => p.jobs.length)).toEqual([2, 2, 1]);
  expect(pages.map((p) => p.total_count)).toEqual([5, 5, 5]);
  expect(pages.at(-1).next_page_token).toBe('');
  expect(pages.flatMap((p) => p.jobs.map((j: any) => j.job_id))).toEqual([...ids].reverse());

  const byStatus = async (filter_status: number) =>
    (await engine.call('ListJobs', { user_id: user, filter_status })).jobs.map((j: any) => j.job_id).sort();
  expect(await byStatus(S.PENDING)).toEqual([ids[0], ids[2], ids[4]].sort());
  expect(await byStatus(S.IN_PROGRESS)).toEqual([ids[1], ids[3]].sort());
  expect(await byStatus(S.SUCCESS)).toEqual([]);
  expect((await engine.call('ListJobs', { user_id: user, filter_type: 1 })).total_count).toBe(5);
  expect((await engine.call('ListJobs', { user_id: user, filter_type: 2 })).total_count).toBe(0);
  expect((await engine.call('ListJobs', { user_id: `nobody-${uid()}` })).total_count).toBe(0);

  for (const id of [ids[0], ids[2], ids[4]]) {
    expect(await engine.call('CancelJob', { job_id: id }, { deadlineMs: 30_000 })).toMatchObject({ status: S.SUCCESS });
  }
  expect(await byStatus(S.CANCELLED)).toEqual([ids[0], ids[2], ids[4]].sort());

  // REST lists the same jobs.
  const rest = await restGet(sys(), `/api/jobs?submitter=${user}&status=cancelled`);
  expect(rest.body.total).toBe(3);
  // Free the nodes (one job per GPU) for the tests after this one.
  for (const id of [ids[1], ids[3]]) {
    expect(await engine.call('CancelJob', { job_id: id }, { deadlineMs: 30_000 })).toMatchObject({ status: S.SUCCESS, refund_issued: true });
  }
});

test('DeleteJob refuses an active job with 409 and removes a finished one, once', async () => {
  const active = await submitJob(engine, jobConfig());
  await waitForAssignment(engine, active);
  const refused = await engine.call('DeleteJob', { job_id: active });
  expect(refused.status).toBe(S.FAILED);
  expect(refused.error.code).toBe(409);
  expect((await jobStatus(engine, active)).status.status).toBe(S.IN_PROGRESS);

  const finished = await submitJob(engine, jobConfig());
  await runToCompletion(finished);
  expect(await engine.call('DeleteJob', { job_id: finished })).toMatchObject({ status: S.SUCCESS });

  const gone = await jobStatus(engine, finished);
  expect(gone.error.code).toBe(404);
  expect(gone.status.status).toBe(S.FAILED);
  expect((await restGet(sys(), `/api/jobs/${finished}`)).status).toBe(404);
  // Asked again (its reply lost, say): done already, so a success the Engine drops the job on.
  expect(await engine.call('DeleteJob', { job_id: finished })).toMatchObject({ status: S.SUCCESS });
  expect((await engine.call('ListJobs', { page_size: 1000 })).jobs.some((j: any) => j.job_id === finished)).toBe(false);
  // Its id is not handed out again.
  const reused = await engine.call('SubmitJob', { config: jobConfig({ job_id: finished }) });
  expect(reused.status).toBe(S.FAILED);
  expect(reused.error.code).toBe(409);
  // Its money stays on record for audit.
  expect((await sys().query('SELECT leg FROM payments WHERE job_id = $1', [finished])).length).toBe(3);
  expect(await engine.call('CancelJob', { job_id: active }, { deadlineMs: 30_000 })).toMatchObject({ status: S.SUCCESS, refund_issued: true });
});

test('CancelJob of a queued job refunds the whole escrow once', async () => {
  const payerBefore = await chain.accountBalance(chain.ata(chain.payer));
  const jobId = await submitJob(engine, unfittable({ payment_amount: 2.25 }));
  await eventually('the job to be queued with its escrow', async () => {
    const { body } = await restGet(sys(), `/api/jobs/${jobId}`);
    return body.status === 'queued' && body.payments.length === 1;
  });
  expect((await jobStatus(engine, jobId)).status.status).toBe(S.PENDING);
  expect(await chain.balances({ payer: chain.ata(chain.payer), escrow: chain.escrowAccount(jobId) })).toEqual({
    payer: payerBefore - 2_250_000_000n,
    escrow: 2_250_000_000n,
  });

  const cancelled = await engine.call('CancelJob', { job_id: jobId, reason: 'no node in sight' }, { deadlineMs: 30_000 });
  expect(cancelled).toMatchObject({ status: S.SUCCESS, refund_issued: true });
  expect((await jobStatus(engine, jobId)).status.status).toBe(S.CANCELLED);

  const { body } = await restGet(sys(), `/api/jobs/${jobId}`);
  expect(body.status).toBe('cancelled');
  // Ended first, then the refund recorded when it landed.
  expect(body.events.map((e: any) => e.toStatus)).toEqual(['pending', 'queued', 'cancelled', 'cancelled']);
  expect(body.events.slice(2).map((e: any) => e.reason)).toEqual([
    expect.stringMatching(/; refunding the escrow$/),
    expect.stringMatching(/; escrow refunded: \d+ to \w+$/),
  ]);
  const escrow = body.payments.filter((p: any) => p.leg === 'escrow');
  const refunds = body.payments.filter((p: any) => p.leg === 'refund');
  expect(escrow).toHaveLength(1);
  expect(refunds).toHaveLength(1);
  expect(escrow[0].amount).toBe('2250000000');
  expect(refunds[0].amount).toBe(escrow[0].amount);
  expect(refunds[0].toAccount).toBe(escrow[0].fromAccount);
  expect(body.payments.some((p: any) => p.leg.startsWith('release'))).toBe(false);

  expect(refunds[0]).toMatchObject({ state: 'confirmed', toAccount: chain.payer.toBase58() });
  expect(await chain.balances({ payer: chain.ata(chain.payer), escrow: chain.escrowAccount(jobId) })).toEqual({ payer: payerBefore, escrow: 0n });

  // Asked again (a retry), the same answer: nothing moves twice.
  const twice = await engine.call('CancelJob', { job_id: jobId });
  expect(twice).toMatchObject({ status: S.SUCCESS, refund_issued: true });
  expect((await restGet(sys(), `/api/jobs/${jobId}`)).body.payments).toHaveLength(2);
  expect(await chain.balances({ payer: chain.ata(chain.payer), escrow: chain.escrowAccount(jobId) })).toEqual({ payer: payerBefore, escrow: 0n });
});

test('CancelJob of a job recorded while Temporal was away (no workflow yet) ends it now: cancelled before anything is escrowed', async () => {
  // SubmitJob records the job before it starts the workflow; a job recorded while Temporal was away is started
  // by the worker's sweep later. Recorded here as that API left it.
  const template = await submitJob(engine, unfittable());
  const [{ config }] = await sys().query<{ config: JobSpec }>('SELECT config FROM jobs WHERE id = $1', [template]);
  const jobId = `recorded-${uid()}`;
  const database = openDatabase(sys().databaseUrl, { max: 1 });
  try {
    expect(await jobsRepo.insertJob(database.db, { spec: { ...config, jobId }, configHash: 'recorded' })).toEqual({ created: true });
  } finally {
    await database.close();
  }

  // Started with the cancel in its first task: nothing escrowed (the server was to pay), nothing to refund.
  const cancelled = await engine.call('CancelJob', { job_id: jobId, reason: 'changed my mind' }, { deadlineMs: 30_000 });
  expect(cancelled).toMatchObject({ status: S.SUCCESS, refund_issued: false });
  expect((await jobStatus(engine, jobId)).status.status).toBe(S.CANCELLED);
  const { body } = await restGet(sys(), `/api/jobs/${jobId}`);
  expect(body.events.map((e: any) => [e.toStatus, e.reason])).toEqual([['pending', 'submitted'], ['cancelled', 'cancelled: changed my mind']]);
  expect(body.payments).toEqual([]);
  expect(await chain.accountBalance(chain.escrowAccount(jobId))).toBe(0n);
  expect(await engine.call('CancelJob', { job_id: template }, { deadlineMs: 30_000 })).toMatchObject({ status: S.SUCCESS });
});

test('SubmitJob with a job_id is idempotent: the same job, one escrow; a different config is a 409', async () => {
  const jobId = `dup-${uid()}`;
  const config = unfittable({ job_id: jobId });
  const payerBefore = await chain.accountBalance(chain.ata(chain.payer));
  const replies = await Promise.all([1, 2, 3].map(() => engine.call('SubmitJob', { config })));
  for (const r of replies) expect(r).toMatchObject({ status: S.SUCCESS, job_id: jobId });
  expect(await engine.call('SubmitJob', { config })).toMatchObject({ status: S.SUCCESS, job_id: jobId });

  await eventually('the escrow', async () => (await restGet(sys(), `/api/jobs/${jobId}`)).body.payments.length === 1);
  const conflict = await engine.call('SubmitJob', { config: { ...config, payment_amount: 3 } });
  expect(conflict.status).toBe(S.FAILED);
  expect(conflict.error.code).toBe(409);
  expect(conflict.error.message).toContain(jobId);

  const { body } = await restGet(sys(), `/api/jobs/${jobId}`);
  expect(body.paymentUnits).toBe('1500000000');
  expect(body.events.filter((e: any) => e.toStatus === 'pending')).toHaveLength(1);
  expect(body.payments).toEqual([expect.objectContaining({ leg: 'escrow', amount: '1500000000' })]);
  expect((await engine.call('ListJobs', {})).jobs.filter((j: any) => j.job_id === jobId)).toHaveLength(1);
  // One escrow on chain too, not one per submission.
  await eventually('the escrow to be confirmed', async () => (await paymentLegs(sys(), jobId)).escrow?.state === 'confirmed');
  expect(await chain.balances({ payer: chain.ata(chain.payer), escrow: chain.escrowAccount(jobId) })).toEqual({
    payer: payerBefore - 1_500_000_000n,
    escrow: 1_500_000_000n,
  });
  expect(await engine.call('CancelJob', { job_id: jobId }, { deadlineMs: 30_000 })).toMatchObject({ status: S.SUCCESS, refund_issued: true });
  expect(await chain.balances({ payer: chain.ata(chain.payer), escrow: chain.escrowAccount(jobId) })).toEqual({ payer: payerBefore, escrow: 0n });
});
