import { useSystem } from '../support/system';
import { eventually, restGet, S } from './helpers';
import { reservationRig } from './reservation-rig';

/*
 * ReserveNode waits RESERVATION_ESCROW_WAIT_MS for the escrow, then answers. Here that wait is 1 ms, so every
 * escrow is "too slow": the answer is an error, and the Engine must not be left holding, or paying for, the
 * reservation it was told failed.
 */

const R_CANCELLED = 6;

const sys = useSystem({ name: 'reservation-withdraw', env: { RESERVATION_ESCROW_WAIT_MS: 1 } });
const rig = reservationRig(sys);

test('an escrow not confirmed in time: 503, the reservation withdrawn, the node free again, the escrow refunded whole', async () => {
  const { node, user, wallet } = await rig.nodeAndUser('slow-escrow-node');
  const { escrow } = await rig.expectedEscrow(node.nodeId, 60);
  const before = await rig.chain.accountBalance(rig.chain.ata(user.publicKey));

  const reply = await rig.reserve(node.nodeId, wallet, 60);
  expect(reply).toMatchObject({ status: S.ERROR, error: { code: 503, message: expect.stringContaining('withdrawn') } });

  // Not the Engine's: no active reservation to reconnect to, and the node can be reserved again at once.
  expect(await rig.engine.call('GetActiveReservations', { user_wallet: wallet })).toMatchObject({ status: S.SUCCESS, reservations: [] });
  const [row] = (await rig.engine.call('ListReservations', { user_id: wallet, page_size: 10 })).reservations;
  const id: string = row.reservation_id;
  expect(await rig.reservedBy(node.nodeId)).toBeNull();

  // The escrow went ahead on chain regardless, and comes back whole: the user ends where they started.
  const ended = await eventually('the withdrawn reservation to be settled', async () => {
    const r = (await restGet(sys(), `/api/reservations/${id}`)).body;
    return r.refundTx ? r : undefined;
  }, 30_000);
  expect(ended).toMatchObject({ status: 'cancelled', paidUnits: '0', refundUnits: escrow.toString(), endReason: expect.stringContaining('withdrawn') });
  expect((await rig.engine.call('GetReservation', { reservation_id: id })).reservation).toMatchObject({ status: R_CANCELLED });
  expect(await rig.chain.accountBalance(rig.chain.escrowAccount(id))).toBe(0n);
  expect(await rig.chain.accountBalance(rig.chain.ata(user.publicKey))).toBe(before);
  const legs = (await sys().query<{ leg: string; amount: string; state: string }>(
    'select leg, amount::text, state from payments where job_id = $1 order by id',
    [id],
  ));
  expect(legs).toEqual([
    { leg: 'escrow', amount: escrow.toString(), state: 'confirmed' },
    { leg: 'refund', amount: escrow.toString(), state: 'confirmed' },
  ]);

  // It never ran a job: a node's report of one moves no reputation, and no P2P token is given for it.
  expect(await rig.engine.call('ReportJobCompleteFromNode', { reservation_id: id, job_id: 'j', node_id: node.nodeId, success: true })).toMatchObject({
    status: S.FAILED,
    error: { code: 409, message: expect.stringContaining('never started') },
  });
  expect(await rig.engine.call('GetReconnectionToken', { reservation_id: id, user_wallet: wallet })).toMatchObject({ status: S.FAILED, error: { code: 410 } });
  // Nor while a reservation is pending, its escrow not yet confirmed (ReserveNode may still give it up): its row
  // is put back to that state here for the call.
  await sys().query("update reservations set status = 'pending' where id = $1", [id]);
  try {
    expect(await rig.engine.call('GetReconnectionToken', { reservation_id: id, user_wallet: wallet })).toMatchObject({
      status: S.FAILED,
      error: { code: 409, message: expect.stringContaining('escrow is not confirmed') },
    });
  } finally {
    await sys().query("update reservations set status = 'cancelled' where id = $1", [id]);
  }
});
