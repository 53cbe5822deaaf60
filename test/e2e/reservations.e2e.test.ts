import { Keypair, type PublicKey } from '@solana/web3.js';
import { splitPayment } from '../../src/domain/money';
import { costOfSeconds, reservationCost } from '../../src/domain/reservation';
import { verifyP2PToken } from '../../src/services/p2p-token';
import type { SimNode } from '../support/sim-node';
import { useSystem } from '../support/system';
import { eventually, restGet, S } from './helpers';
import { reservationRig } from './reservation-rig';

/*
 * The shipping Engine's reservation flow (CYXWIZ-PROTOCOL.md §3b) against the real system: Postgres, Temporal,
 * the local Solana ledger. One reserved minute lasts 1 s here (RESERVATION_MINUTE_MS) and is billed as a minute,
 * so a 10-minute reservation runs 10 s; a reserved node silent for 10 s is lost.
 */

const SHIPPING_P2P_SECRET = 'your-super-secret-jwt-key-change-in-production';
const MINUTE_MS = 1000;
/** Long enough for the API to restart without the nodes it serves counting as lost. */
const NODE_TIMEOUT_S = 10;
const R = { PENDING: 1, ACTIVE: 2, COMPLETED: 5, CANCELLED: 6, EXPIRED: 7, FAILED: 8 } as const;

const sys = useSystem({
  name: 'reservations',
  env: { RESERVATION_MINUTE_MS: MINUTE_MS, RESERVATION_NODE_TIMEOUT_S: NODE_TIMEOUT_S, RESERVATION_ENGINE_TIMEOUT_S: 3 },
});
const rig = reservationRig(sys);
const { nodes, reserve, expectedEscrow } = rig;

/** A user wallet holding `units` CYXWIZ that lets the escrow authority move `allowance` of them (SPL approve). */
const userWallet = (units: bigint, allowance = units) => rig.chain.approvingWallet(units, allowance);

const getReservation = async (id: string) => (await rig.engine.call('GetReservation', { reservation_id: id })).reservation;

const waitForStatus = (id: string, status: number, timeoutMs = 30_000) =>
  eventually(`reservation ${id} to reach status ${status}`, async () => {
    const r = await getReservation(id);
    return r.status === status && r;
  }, timeoutMs);

const balancesOf = (user: PublicKey, node: SimNode) =>
  rig.chain.balances({ user: rig.chain.ata(user), node: rig.chain.ata(node.wallet), treasury: rig.chain.ata(rig.chain.treasury), payer: rig.chain.ata(rig.chain.payer) });

const listedOnline = async (nodeId: string) => {
  const page = await rig.discovery.call('ListNodes', { online_only: true, page_size: 500 });
  return page.nodes.some((n: any) => n.node_id === nodeId);
};

const foundByEngine = async (nodeId: string) => {
  const found = await rig.discovery.call('FindNodes', { max_results: 500 });
  return found.nodes.some((n: any) => n.node_id === nodeId);
};

test("the shipping Engine's sequence: reserve, heartbeat, connect with the token, release; the money follows the policy to the unit", async () => {
  const node = await nodes.start({ name: 'hotel-node' });
  const user = await userWallet(1_000n * 10n ** 9n);
  const wallet = user.publicKey.toBase58();
  expect(await rig.engine.call('GetActiveReservations', { user_wallet: wallet })).toMatchObject({ status: S.SUCCESS, reservations: [] });
  const { escrow } = await expectedEscrow(node.nodeId, 60);
  const before = await balancesOf(user.publicKey, node);

  const reply = await reserve(node.nodeId, wallet, 60);
  expect(reply).toMatchObject({ status: S.SUCCESS, node_endpoint: `127.0.0.1:${node.port}`, escrow_amount: escrow.toString() });
  const id = reply.reservation_id;
  expect(reply.job_id).toBe(id);
  expect(Number(reply.reservation_expires) - Number(reply.reservation_start)).toBeGreaterThanOrEqual(59);
  expect(Number(reply.p2p_token_expires)).toBe(Number(reply.reservation_expires) + 300);
  expect(reply.escrow_account).toBe(rig.chain.escrowAccount(id).toBase58());

  // The node accepts the token as the shipping daemon checks it.
  const claims = verifyP2PToken(SHIPPING_P2P_SECRET, reply.p2p_auth_token);
  expect(claims).toMatchObject({ iss: 'CyxWiz-Central-Server', sub: wallet, job_id: id, node_id: node.nodeId, exp: Number(reply.p2p_token_expires) });

  // The escrow came out of the user's wallet through its allowance.
  expect(await rig.chain.accountBalance(rig.chain.escrowAccount(id))).toBe(escrow);
  expect((await balancesOf(user.publicKey, node)).user).toBe(before.user - escrow);

  // Held: heartbeats do not make the node available again, and no one else can reserve it.
  await sleep(2500);
  expect(await listedOnline(node.nodeId)).toBe(false);
  expect(await foundByEngine(node.nodeId)).toBe(false);
  const other = await userWallet(100n * 10n ** 9n);
  expect(await reserve(node.nodeId, other.publicKey.toBase58(), 10)).toMatchObject({ status: S.FAILED, error: { code: 409 } });

  // The Engine starts heartbeating right after ReserveNode.
  await rig.engine.call('EngineHeartbeat', { reservation_id: id, job_id: id, training_active: false, job_progress: 0, current_metrics: {} });
  // The Engine's P2P SendJob carries the reservation id as its job id: the node's NotifyJobAccepted is acknowledged.
  expect(await node.accepted(id)).toMatchObject({ status: S.SUCCESS, acknowledged: true });
  const active = await rig.engine.call('GetActiveReservations', { user_wallet: wallet });
  expect(active.reservations).toEqual([expect.objectContaining({ reservation_id: id, node_id: node.nodeId, engine_connected: true, status: R.ACTIVE })]);

  let remaining = Infinity;
  for (let i = 0; i < 3; i++) {
    const hb = await rig.engine.call('EngineHeartbeat', { reservation_id: id, job_id: id, training_active: true, job_progress: 0.1 * (i + 1), current_metrics: { loss: 1 / (i + 1) } });
    expect(hb).toMatchObject({ status: S.SUCCESS, should_extend: false });
    expect(Number(hb.time_remaining_seconds)).toBeLessThanOrEqual(remaining);
    remaining = Number(hb.time_remaining_seconds);
    await sleep(500);
  }
  expect(await getReservation(id)).toMatchObject({ job_progress: 0.30000000000000004, current_metrics: { loss: 1 / 3 }, status: R.ACTIVE });

  const released = await rig.engine.call('ReleaseReservation', { reservation_id: id, reason: 'User requested release' }, { deadlineMs: 30_000 });
  // Default policy `full`: an early release pays the whole escrow ("NO REFUND for early checkout").
  expect(released).toMatchObject({ status: S.SUCCESS, payment_released: escrow.toString(), refund_amount: '0', refund_tx_hash: '' });
  expect(Number(released.time_used_seconds)).toBeGreaterThan(0);
  expect(released.payment_tx_hash).not.toBe('');
  const split = splitPayment(escrow, 1000n);
  const after = await balancesOf(user.publicKey, node);
  expect(after.node - before.node).toBe(split.node);
  expect(after.treasury - before.treasury).toBe(split.platform);
  expect(after.user).toBe(before.user - escrow);
  expect(await rig.chain.accountBalance(rig.chain.escrowAccount(id))).toBe(0n);

  // A repeated release answers with the same settlement; the node is free again.
  expect(await rig.engine.call('ReleaseReservation', { reservation_id: id, reason: 'again' })).toMatchObject({ status: S.SUCCESS, payment_released: escrow.toString(), payment_tx_hash: released.payment_tx_hash });
  expect(await getReservation(id)).toMatchObject({ status: R.CANCELLED });
  await eventually('the node to be listed again', () => listedOnline(node.nodeId));
  expect(await rig.engine.call('GetActiveReservations', { user_wallet: wallet })).toMatchObject({ reservations: [] });
  // The next user can reserve it at once.
  const next = await reserve(node.nodeId, other.publicKey.toBase58(), 10);
  expect(next).toMatchObject({ status: S.SUCCESS });
  expect(await rig.engine.call('ReleaseReservation', { reservation_id: next.reservation_id, reason: 'done' }, { deadlineMs: 30_000 })).toMatchObject({ status: S.SUCCESS });

  // Operators see it: the workflow carries the reservation's search attributes (REST shows the row).
  const rest = await restGet(sys(), `/api/reservations/${id}`);
  expect(rest.body).toMatchObject({ id, nodeId: node.nodeId, userWallet: wallet, status: 'cancelled', paidUnits: escrow.toString(), refundUnits: '0' });
});

test('a reservation that runs its term expires on its durable timer and pays the node everything escrowed', async () => {
  const node = await nodes.start({ name: 'expiring-node' });
  const user = await userWallet(100n * 10n ** 9n);
  const { escrow } = await expectedEscrow(node.nodeId, 10);
  const before = await balancesOf(user.publicKey, node);
  const reply = await reserve(node.nodeId, user.publicKey.toBase58(), 10);
  expect(reply).toMatchObject({ status: S.SUCCESS });
  const id = reply.reservation_id;
  const beat = () => rig.engine.call('EngineHeartbeat', { reservation_id: id, job_id: id, training_active: true, job_progress: 0.5, current_metrics: {} });
  expect(await beat()).toMatchObject({ status: S.SUCCESS, should_extend: false });
  // Fewer than 5 reserved minutes left with training active: the Engine is told to extend.
  await sleep(6 * MINUTE_MS);
  expect(await beat()).toMatchObject({ status: S.SUCCESS, should_extend: true });

  const expired = await waitForStatus(id, R.EXPIRED, 40_000);
  expect(expired).toMatchObject({ time_remaining_seconds: '0' });
  const split = splitPayment(escrow, 1000n);
  await eventually('the payment to land', async () => (await rig.chain.accountBalance(rig.chain.ata(node.wallet))) - before.node === split.node);
  const after = await balancesOf(user.publicKey, node);
  expect(after.treasury - before.treasury).toBe(split.platform);
  expect(after.user).toBe(before.user - escrow);
  // After the end the Engine's heartbeat is refused with 410; the node is on offer again.
  expect(await rig.engine.call('EngineHeartbeat', { reservation_id: id, job_id: id, training_active: false, job_progress: 1, current_metrics: {} })).toMatchObject({
    status: S.FAILED,
    error: { code: 410 },
    time_remaining_seconds: '0',
  });
  await eventually('the node to be listed again', () => listedOnline(node.nodeId));
});

test('an extension escrows its own pot and moves the end; bad extensions are refused naming the field', async () => {
  const node = await nodes.start({ name: 'extended-node' });
  const user = await userWallet(100n * 10n ** 9n);
  const { perHour, escrow } = await expectedEscrow(node.nodeId, 10);
  const before = await balancesOf(user.publicKey, node);
  const reply = await reserve(node.nodeId, user.publicKey.toBase58(), 10);
  const id = reply.reservation_id;

  for (const bad of [0, -5, 9, 1441]) {
    expect(await rig.engine.call('ExtendReservation', { reservation_id: id, additional_minutes: bad })).toMatchObject({
      status: S.FAILED,
      error: { code: 400, message: expect.stringContaining('additional_minutes') },
    });
  }
  expect(await rig.engine.call('ExtendReservation', { reservation_id: 'no-such-reservation', additional_minutes: 5 })).toMatchObject({ status: S.FAILED, error: { code: 404 } });

  const extra = reservationCost(perHour, 20);
  const extended = await rig.engine.call('ExtendReservation', { reservation_id: id, additional_minutes: 20 }, { deadlineMs: 30_000 });
  expect(extended).toMatchObject({ status: S.SUCCESS, additional_escrow: extra.toString() });
  expect(Number(extended.new_expires)).toBe(Number(reply.reservation_expires) + 20);
  expect(await rig.chain.accountBalance(rig.chain.escrowAccount(`${id}/ext-1`))).toBe(extra);
  expect(await getReservation(id)).toMatchObject({ escrow_amount: (escrow + extra).toString(), end_time: extended.new_expires });

  const released = await rig.engine.call('ReleaseReservation', { reservation_id: id, reason: 'done' }, { deadlineMs: 30_000 });
  expect(released).toMatchObject({ status: S.SUCCESS, payment_released: (escrow + extra).toString(), refund_amount: '0' });
  // Each pot pays 90/10 on its own.
  const [a, b] = [splitPayment(escrow, 1000n), splitPayment(extra, 1000n)];
  const after = await balancesOf(user.publicKey, node);
  expect(after.node - before.node).toBe(a.node + b.node);
  expect(after.treasury - before.treasury).toBe(a.platform + b.platform);
  expect(after.user).toBe(before.user - escrow - extra);
  expect(await rig.engine.call('ExtendReservation', { reservation_id: id, additional_minutes: 10 })).toMatchObject({ status: S.FAILED, error: { code: 410 } });
});

test('a node lost mid-reservation: the user gets the unused time back, the node a recorded penalty', async () => {
  const node = await nodes.start({ name: 'vanishing-node' });
  const user = await userWallet(100n * 10n ** 9n);
  const { perHour, escrow } = await expectedEscrow(node.nodeId, 60);
  const before = await balancesOf(user.publicKey, node);
  const reply = await reserve(node.nodeId, user.publicKey.toBase58(), 60);
  const id = reply.reservation_id;
  await sleep(2000);
  node.pauseHeartbeats();

  const failed = await waitForStatus(id, R.FAILED, 30_000);
  expect(failed.time_remaining_seconds).toBe('0');
  const row = (await restGet(sys(), `/api/reservations/${id}`)).body;
  expect(row).toMatchObject({ status: 'failed', endReason: expect.stringContaining('node lost') });
  const paid = BigInt(row.paidUnits);
  const refunded = BigInt(row.refundUnits);
  expect(paid + refunded).toBe(escrow);
  // Billed for the time until the node's last sign of life (a few reserved minutes), no more.
  expect(paid).toBe(costOfSeconds(perHour, Number(row.timeUsedSeconds)));
  expect(paid).toBeLessThan(escrow / 4n);
  expect(refunded).toBeGreaterThan(0n);

  const split = splitPayment(paid, 1000n);
  await eventually('the refund to land', async () => (await rig.chain.accountBalance(rig.chain.ata(user.publicKey))) === before.user - escrow + refunded);
  const after = await balancesOf(user.publicKey, node);
  expect(after.node - before.node).toBe(split.node);
  expect(after.treasury - before.treasury).toBe(split.platform);

  const nodeRow = (await restGet(sys(), `/api/nodes/${node.nodeId}`)).body;
  expect(nodeRow.reputationEvents).toEqual(expect.arrayContaining([expect.objectContaining({ jobId: id, kind: 'node_lost', delta: expect.closeTo(-0.1, 6) })]));
  // The node comes back and reports the reservation's job done: too late, it counts nothing.
  expect(await rig.engine.call('ReportJobCompleteFromNode', { reservation_id: id, job_id: 'j', node_id: node.nodeId, success: true })).toMatchObject({
    status: S.FAILED,
    error: { code: 410, message: expect.stringContaining('ended with its node lost') },
  });
  expect((await restGet(sys(), `/api/nodes/${node.nodeId}`)).body.reputationEvents.filter((e: { jobId: string }) => e.jobId === id)).toHaveLength(1);
});

test('reconnection: an Engine that stopped heartbeating shows as disconnected and gets a fresh token as the owner only', async () => {
  const node = await nodes.start({ name: 'reconnect-node' });
  const user = await userWallet(100n * 10n ** 9n);
  const wallet = user.publicKey.toBase58();
  const reply = await reserve(node.nodeId, wallet, 30);
  const id = reply.reservation_id;
  await eventually('the Engine to show as disconnected', async () => {
    const { reservations } = await rig.engine.call('GetActiveReservations', { user_wallet: wallet });
    return reservations.length === 1 && reservations[0].engine_connected === false;
  });

  // The shipping Engine on connect: GetActiveReservations → GetReconnectionToken.
  const { reservations } = await rig.engine.call('GetActiveReservations', { user_wallet: wallet });
  expect(reservations[0]).toMatchObject({ reservation_id: id, node_endpoint: reply.node_endpoint, status: R.ACTIVE });
  const stranger = Keypair.generate().publicKey.toBase58();
  expect(await rig.engine.call('GetReconnectionToken', { reservation_id: id, user_wallet: stranger })).toMatchObject({ status: S.FAILED, error: { code: 403 } });
  expect(await rig.engine.call('GetReconnectionToken', { reservation_id: 'nope', user_wallet: wallet })).toMatchObject({ status: S.FAILED, error: { code: 404 } });
  const grant = await rig.engine.call('GetReconnectionToken', { reservation_id: id, user_wallet: wallet });
  expect(grant).toMatchObject({ status: S.SUCCESS, node_endpoint: reply.node_endpoint, current_job_id: id, p2p_token_expires: reply.p2p_token_expires });
  expect(Number(grant.time_remaining_seconds)).toBeGreaterThan(0);
  expect(verifyP2PToken(SHIPPING_P2P_SECRET, grant.p2p_auth_token)).toMatchObject({ job_id: id, node_id: node.nodeId, sub: wallet });
  expect((await rig.engine.call('GetActiveReservations', { user_wallet: wallet })).reservations[0].engine_connected).toBe(true);

  await rig.engine.call('ReleaseReservation', { reservation_id: id, reason: 'bye' }, { deadlineMs: 30_000 });
  expect(await rig.engine.call('GetReconnectionToken', { reservation_id: id, user_wallet: wallet })).toMatchObject({ status: S.FAILED, error: { code: 410 } });
});

test('bad input is refused with the field named and nothing escrowed', async () => {
  const node = await nodes.start({ name: 'guarded-node' });
  const user = await userWallet(10n ** 9n / 100n); // 0.01 CYXWIZ: less than any reservation costs
  const wallet = user.publicKey.toBase58();
  const countBefore = await sys().query<{ n: string }>('select count(*)::text as n from payments');
  const cases: [object, number, string][] = [
    [{ node_id: '', user_wallet: wallet, duration_minutes: 60 }, 400, 'node_id'],
    [{ node_id: node.nodeId, user_wallet: '', duration_minutes: 60 }, 400, 'user_wallet'],
    [{ node_id: node.nodeId, user_wallet: 'not-a-wallet', duration_minutes: 60 }, 400, 'user_wallet'],
    [{ node_id: node.nodeId, user_wallet: wallet, duration_minutes: 9 }, 400, 'duration_minutes'],
    [{ node_id: node.nodeId, user_wallet: wallet, duration_minutes: 1441 }, 400, 'duration_minutes'],
    [{ node_id: 'no-such-node', user_wallet: wallet, duration_minutes: 60 }, 404, 'no-such-node'],
  ];
  for (const [request, code, mention] of cases) {
    const reply = await rig.engine.call('ReserveNode', request);
    expect(reply).toMatchObject({ status: S.FAILED, error: { code, message: expect.stringContaining(mention) } });
  }
  // Allowance and balance too small: 402, the node is given back at once.
  const poor = await reserve(node.nodeId, wallet, 60);
  expect(poor).toMatchObject({ status: S.FAILED, error: { code: 402, message: expect.stringContaining('escrow refused') } });
  expect(await sys().query('select count(*)::text as n from payments')).toEqual(countBefore);
  await eventually('the node to be listed again', () => listedOnline(node.nodeId));

  // An offline node cannot be reserved.
  const gone = await nodes.start({ name: 'offline-node' });
  await gone.stop();
  await sys().query(`update nodes set last_heartbeat = now() - interval '1 hour' where id = $1`, [gone.nodeId]);
  expect(await reserve(gone.nodeId, wallet, 60)).toMatchObject({ status: S.FAILED, error: { code: 409, message: expect.stringContaining('offline') } });
  expect(await rig.engine.call('EngineHeartbeat', { reservation_id: 'nope', job_id: '', training_active: false, job_progress: 0, current_metrics: {} })).toMatchObject({ status: S.FAILED, error: { code: 404 } });
  expect(await rig.engine.call('ReleaseReservation', { reservation_id: '' })).toMatchObject({ status: S.FAILED, error: { code: 400, message: expect.stringContaining('reservation_id') } });
});

test('a reservation survives restarts of the worker and the API: its timer, its hold and its money', async () => {
  const node = await nodes.start({ name: 'durable-node' });
  const user = await userWallet(100n * 10n ** 9n);
  const { escrow } = await expectedEscrow(node.nodeId, 15);
  const before = await balancesOf(user.publicKey, node);
  const reply = await reserve(node.nodeId, user.publicKey.toBase58(), 15);
  const id = reply.reservation_id;

  await sys().killWorker();
  await sys().killApi();
  await sys().startApi();
  await sys().startWorker();
  expect(await rig.engine.call('EngineHeartbeat', { reservation_id: id, job_id: id, training_active: true, job_progress: 0.2, current_metrics: {} })).toMatchObject({ status: S.SUCCESS });
  expect(await listedOnline(node.nodeId)).toBe(false);

  // The end timer fires on time after the restarts and the node is paid exactly once.
  await waitForStatus(id, R.EXPIRED, 40_000);
  const split = splitPayment(escrow, 1000n);
  await eventually('the payment to land', async () => (await rig.chain.accountBalance(rig.chain.ata(node.wallet))) - before.node === split.node);
  const legs = await sys().query<{ leg: string; amount: string }>(`select leg, amount::text as amount from payments where job_id = $1 order by leg`, [id]);
  expect(legs).toEqual([
    { leg: 'escrow', amount: escrow.toString() },
    { leg: 'release_node', amount: split.node.toString() },
    { leg: 'release_platform', amount: split.platform.toString() },
  ]);
});

test('the node and Engine reports: job completions move reputation once each, and both end reports settle the reservation', async () => {
  const node = await nodes.start({ name: 'reporting-node' });
  const user = await userWallet(100n * 10n ** 9n);
  const wallet = user.publicKey.toBase58();
  const { escrow } = await expectedEscrow(node.nodeId, 30);
  const reply = await reserve(node.nodeId, wallet, 30);
  const id = reply.reservation_id;

  const report = (nodeId: string, jobId: string, success = true) =>
    rig.engine.call('ReportJobCompleteFromNode', { reservation_id: id, job_id: jobId, node_id: nodeId, success, training_time_seconds: '12', epochs_completed: 3 });
  expect(await report('some-other-node', id)).toMatchObject({ status: S.FAILED, error: { code: 403 } });
  const first = await report(node.nodeId, id);
  expect(first).toMatchObject({ status: S.SUCCESS, jobs_in_reservation: 1, reputation_change: expect.closeTo(0.02, 6), new_reputation: expect.closeTo(0.52, 6) });
  // The same report again (a retry) changes nothing.
  expect(await report(node.nodeId, id)).toMatchObject({ status: S.SUCCESS, jobs_in_reservation: 1, reputation_change: 0 });
  // Another job of the same reservation counts, but moves the reputation no further: job ids are the node's to
  // choose, so one reservation moves it once per outcome.
  expect(await report(node.nodeId, `${id}-2`)).toMatchObject({ status: S.SUCCESS, jobs_in_reservation: 2, reputation_change: 0 });
  // The Engine's (deprecated) confirmation counts a job once, and not one the node reported already.
  const confirm = (jobId: string, success = true) => rig.engine.call('ConfirmJobComplete', { reservation_id: id, job_id: jobId, success });
  expect(await confirm(id)).toMatchObject({ status: S.SUCCESS, payment_released: false });
  expect(await getReservation(id)).toMatchObject({ jobs_completed: 2 });
  expect(await confirm(`${id}-3`)).toMatchObject({ status: S.SUCCESS, payment_released: false });
  expect(await confirm(`${id}-3`)).toMatchObject({ status: S.SUCCESS });
  expect(await confirm(`${id}-4`, false)).toMatchObject({ status: S.SUCCESS });
  expect(await report(node.nodeId, `${id}-3`)).toMatchObject({ status: S.SUCCESS, jobs_in_reservation: 3 });
  expect(await getReservation(id)).toMatchObject({ jobs_completed: 3, user_wallet: wallet, node_wallet: node.wallet, node_endpoint: reply.node_endpoint });
  // A failure moves it once too.
  expect(await report(node.nodeId, `${id}-9`, false)).toMatchObject({ status: S.SUCCESS, reputation_change: expect.closeTo(-0.05, 6) });
  expect(await report(node.nodeId, `${id}-10`, false)).toMatchObject({ status: S.SUCCESS, reputation_change: 0 });

  // Progress as a fraction or a percentage is kept as a fraction; a negative one is refused naming the field.
  const beat = (progress: number) => rig.engine.call('EngineHeartbeat', { reservation_id: id, job_id: id, training_active: true, job_progress: progress, current_metrics: {} });
  expect(await beat(45)).toMatchObject({ status: S.SUCCESS });
  expect((await getReservation(id)).job_progress).toBeCloseTo(0.45, 9);
  expect(await beat(-1)).toMatchObject({ status: S.FAILED, error: { code: 400, message: expect.stringContaining('job_progress') } });

  const listed = await rig.engine.call('ListReservations', { user_id: wallet, page_size: 10, active_only: true });
  expect(listed).toMatchObject({ total_count: 1, next_page_token: '', reservations: [expect.objectContaining({ reservation_id: id })] });
  await expect(rig.engine.call('ListReservations', { user_id: wallet, page_token: 'garbage' })).rejects.toMatchObject({ code: 3, details: expect.stringContaining('page_token') });

  // One side reporting the end is not enough; both are.
  expect(await rig.engine.call('ReportReservationEndFromEngine', { reservation_id: id, jobs_completed: 3, user_satisfied: true })).toMatchObject({
    status: S.SUCCESS,
    payment_released: false,
    message: expect.stringContaining('node'),
  });
  expect(await rig.engine.call('ReportReservationEndFromNode', { reservation_id: id, node_id: 'intruder' })).toMatchObject({ status: S.FAILED, error: { code: 403 } });
  const split = splitPayment(escrow, 1000n);
  const ended = await rig.engine.call('ReportReservationEndFromNode', { reservation_id: id, node_id: node.nodeId, jobs_completed: 3, node_available: true }, { deadlineMs: 30_000 });
  expect(ended).toMatchObject({ status: S.SUCCESS, payment_released: true, amount_received: split.node.toString() });
  expect(ended.payment_tx_hash).not.toBe('');
  expect(await getReservation(id)).toMatchObject({ status: R.COMPLETED });
  expect((await rig.engine.call('ListReservations', { user_id: wallet, active_only: true })).total_count).toBe(0);
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
