import { startRpcProxy, type RpcProxy } from '../support/chain';
import { testSolanaRpcUrl } from '../support/env';
import { useSystem } from '../support/system';
import { eventually, S } from './helpers';
import { reservationRig } from './reservation-rig';

/*
 * ReleaseReservation answers within the Engine's 30 s deadline however slow the chain: after
 * RESERVATION_RELEASE_WAIT_MS (0.5 s here) it answers with the amounts the release settles to and no signatures
 * yet; asked again once settled, it answers with the signatures. The system reaches the ledger through an RPC
 * proxy that holds the settlement's transaction for 4 s.
 */
const R_CANCELLED = 6;

// Filled in before the system starts (beforeAll runs in declaration order): the system's RPC URL is the proxy's.
const env: Record<string, string | number> = { RESERVATION_RELEASE_WAIT_MS: 500 };
let proxy: RpcProxy;
let slowSends = false;
beforeAll(async () => {
  proxy = await startRpcProxy(testSolanaRpcUrl());
  proxy.setFaults((call) => (slowSends && call.method === 'sendTransaction' ? { kind: 'delay', ms: 4000 } : { kind: 'pass' }));
  env.SOLANA_RPC_URL = proxy.url;
});
afterAll(async () => {
  await proxy?.stop();
});

const sys = useSystem({ name: 'reservation-release-slow', env });
const rig = reservationRig(sys);

test('a release answered before its transactions confirm: the decided amounts at once, the signatures when asked again', async () => {
  const { node, wallet } = await rig.nodeAndUser('slow-release-node');
  const { escrow } = await rig.expectedEscrow(node.nodeId, 30);

  const reserved = await rig.reserve(node.nodeId, wallet, 30);
  expect(reserved).toMatchObject({ status: S.SUCCESS });
  const id = reserved.reservation_id;

  // Default policy `full`: the whole escrow is paid, nothing refunded. The chain now takes 4 s per transaction.
  slowSends = true;
  const first = await rig.engine.call('ReleaseReservation', { reservation_id: id, reason: 'User requested release' });
  // Answered before the transaction confirmed: no signatures yet.
  expect(first).toMatchObject({ status: S.SUCCESS, payment_released: escrow.toString(), refund_amount: '0', payment_tx_hash: '', refund_tx_hash: '' });
  expect(Number(first.time_used_seconds)).toBeGreaterThanOrEqual(0);

  await eventually('the settlement to finish', async () => (await rig.engine.call('GetReservation', { reservation_id: id })).reservation.status === R_CANCELLED, 30_000);
  const again = await rig.engine.call('ReleaseReservation', { reservation_id: id, reason: 'again' });
  expect(again).toMatchObject({ status: S.SUCCESS, payment_released: escrow.toString(), refund_amount: '0', time_used_seconds: first.time_used_seconds });
  expect(again.payment_tx_hash).not.toBe('');
  expect(await rig.chain.accountBalance(rig.chain.escrowAccount(id))).toBe(0n);
});

test('a release waiting behind an extension\'s escrow answers 503 (ask again) within its wait, and the same release settles both pots', async () => {
  const { node, wallet } = await rig.nodeAndUser('release-behind-extension-node');
  const { escrow } = await rig.expectedEscrow(node.nodeId, 30);
  const reserved = await rig.reserve(node.nodeId, wallet, 30);
  expect(reserved).toMatchObject({ status: S.SUCCESS });
  const id = reserved.reservation_id;

  slowSends = true; // the extension's escrow takes 4 s; the release is asked meanwhile and waits for it
  try {
    const extension = rig.engine.call('ExtendReservation', { reservation_id: id, additional_minutes: 10 });
    await eventually('the extension to be on its way', async () => (await sys().query('select 1 from payments where job_id = $1', [`${id}/ext-1`])).length > 0, 10_000);
    const started = Date.now();
    const first = await rig.engine.call('ReleaseReservation', { reservation_id: id, reason: 'User requested release' });
    expect(Date.now() - started).toBeLessThan(4000 + 500);
    expect(first).toMatchObject({ status: S.ERROR, error: { code: 503, message: expect.stringContaining('not decided yet; ask again') } });
    expect(await extension).toMatchObject({ status: S.SUCCESS });
  } finally {
    slowSends = false;
  }
  await eventually('the settlement to finish', async () => (await rig.engine.call('GetReservation', { reservation_id: id })).reservation.status === R_CANCELLED, 30_000);
  const again = await rig.engine.call('ReleaseReservation', { reservation_id: id, reason: 'again' });
  const extra = (await sys().query<{ amount: string }>("select amount::text from payments where job_id = $1 and leg = 'escrow'", [`${id}/ext-1`]))[0].amount;
  expect(again).toMatchObject({ status: S.SUCCESS, payment_released: (escrow + BigInt(extra)).toString(), refund_amount: '0' });
});

test('ReserveNode answers within the caller\'s deadline on a slow chain: the reservation is withdrawn in time, not left running', async () => {
  const { node, wallet } = await rig.nodeAndUser('slow-escrow-deadline-node');
  slowSends = true; // the escrow's transaction takes 4 s, the system would wait RESERVATION_ESCROW_WAIT_MS (25 s)
  try {
    const started = Date.now();
    const reply = await rig.reserve(node.nodeId, wallet, 30, 7000);
    // Before the 7 s deadline, with time left for a withdrawal: not DEADLINE_EXCEEDED while the term goes on.
    expect(Date.now() - started).toBeLessThan(7000);
    expect(reply).toMatchObject({ status: S.ERROR, error: { code: 503, message: expect.stringContaining('withdrawn') } });
    const [row] = (await rig.engine.call('ListReservations', { user_id: wallet, page_size: 10 })).reservations;
    await eventually('the withdrawn reservation to end', async () => (await rig.engine.call('GetReservation', { reservation_id: row.reservation_id })).reservation.status === R_CANCELLED, 30_000);
    expect(await rig.reservedBy(node.nodeId)).toBeNull();
  } finally {
    slowSends = false;
  }
});

test('ReserveNode with a deadline too short to escrow in is refused before anything is held or escrowed', async () => {
  const { node, wallet } = await rig.nodeAndUser('short-deadline-node');
  const reply = await rig.reserve(node.nodeId, wallet, 30, 4000);
  expect(reply).toMatchObject({ status: S.ERROR, error: { code: 503, message: expect.stringContaining('deadline leaves no time to escrow') } });
  expect(await sys().query('select id from reservations where node_id = $1', [node.nodeId])).toEqual([]);
  expect(await rig.reservedBy(node.nodeId)).toBeNull();
});
