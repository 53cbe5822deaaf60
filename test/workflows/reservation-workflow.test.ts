/**
 * The reservation workflow against a real Temporal dev server (as test/workflows/job-workflow.test.ts, and for the same
 * reasons) with typed fake activities. Time is real but short: a reserved minute lasts 150–200 ms and is billed as a
 * minute. The reserved node's liveness is real too: the test heartbeats the watch activity by id, as the API does,
 * and a silent node surfaces as the server's heartbeat timeout. Amounts are checked to the unit against the money
 * rules of src/domain/reservation.ts and the 90/10 split of src/domain/money.ts.
 */
import { WorkflowFailedError, WorkflowUpdateFailedError, WorkflowUpdateStage, type Client } from '@temporalio/client';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import type { TestWorkflowEnvironment } from '@temporalio/testing';
import type { WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { splitPayment } from '../../src/domain/money';
import { PaymentFailures } from '../../src/domain/payments';
import { costOfSeconds, MAX_MINUTES, reservationCost } from '../../src/domain/reservation';
import { walletRegisteredSignal } from '../../src/workflows/messages';
import {
  extendReservationUpdate,
  releaseReservationUpdate,
  reservationQuery,
  reservationReadyUpdate,
  ReservationRejections,
  withdrawReservationUpdate,
  type ReleaseReceipt,
} from '../../src/workflows/reservation-messages';
import type { ReservationOptions, ReservationSpec } from '../../src/workflows/reservation-workflow';
import { JobSearchAttributes as SA } from '../../src/workflows/search-attributes';
import { testTemporalCli } from '../support/env';
import { createJobTestEnv, Gate, sleep, waitUntil } from './job-harness';
import {
  createReservationWorker,
  FAST_RESERVATION_OPTIONS,
  FakeReservationWorld,
  keepReservedNodeAlive,
  PER_HOUR_UNITS,
  PLATFORM_FEE_BPS,
  reservationSpec,
  runReservationWorkerUntil,
  startReservation,
  uniqueReservationQueue,
  USER_WALLET,
  walletOf,
  type ReservationHandle,
} from './reservation-harness';

// The slowest case takes a few seconds; a hung one should fail well before the global 120 s.
jest.setTimeout(30_000);

let env: TestWorkflowEnvironment;
let bundle: WorkflowBundleWithSourceMap;
const handles: ReservationHandle[] = [];

// Starting a dev server and bundling the workflows is the slow part on a loaded machine: the global timeout's.
beforeAll(async () => {
  ({ env, bundle } = await createJobTestEnv(testTemporalCli()));
}, 120_000);

afterEach(async () => {
  // A failed test may leave its reservation running; nothing polls its task queue any more, but end it anyway.
  await Promise.all(handles.splice(0).map((h) => h.terminate('test finished').catch(() => undefined)));
});

afterAll(async () => {
  await env?.teardown();
});

interface ReservationCtx {
  client: Client;
  start(spec: ReservationSpec, options?: Partial<ReservationOptions>): Promise<ReservationHandle>;
}

/** Runs `body` while a worker with `world`'s activities polls a task queue of its own. */
async function withWorker(label: string, world: FakeReservationWorld, body: (ctx: ReservationCtx) => Promise<void>): Promise<void> {
  const taskQueue = uniqueReservationQueue(label);
  const worker = await createReservationWorker(env, bundle, taskQueue, world);
  const ctx: ReservationCtx = {
    client: env.client,
    start: async (spec, options = {}) => {
      // Its node is lost only in the tests that say so (their own timeout): a loaded machine's slow round trips must
      // not make a node nobody heartbeats lost in the middle of another test.
      const handle = await startReservation(env.client, taskQueue, spec, { ...FAST_RESERVATION_OPTIONS, nodeHeartbeatTimeoutMs: 60_000, ...options });
      handles.push(handle);
      return handle;
    },
  };
  await runReservationWorkerUntil(worker, world, () => body(ctx));
}

let counter = 0;
const newId = (label: string) => `res-${label}-${Date.now().toString(36)}-${++counter}`;

/** The rejection an update failed with (validator or handler), asserting its type. */
async function expectUpdateRejected(promise: Promise<unknown>, type: string): Promise<ApplicationFailure> {
  const err = await promise.then(
    () => new Error('the update was admitted and completed'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WorkflowUpdateFailedError);
  const cause = (err as WorkflowUpdateFailedError).cause;
  expect(cause).toBeInstanceOf(ApplicationFailure);
  expect((cause as ApplicationFailure).type).toBe(type);
  return cause as ApplicationFailure;
}

/** What a settlement of `pots` moves when the node earned `earned`: the earning fills the pots first to last. */
function settlementOf(pots: bigint[], earned: bigint): Pick<ReleaseReceipt, 'paid' | 'nodeAmount' | 'refunded'> {
  let left = earned;
  let paid = 0n;
  let node = 0n;
  let refunded = 0n;
  for (const pot of pots) {
    const pay = left < pot ? left : pot;
    left -= pay;
    paid += pay;
    node += splitPayment(pay, PLATFORM_FEE_BPS).node;
    refunded += pot - pay;
  }
  return { paid: paid.toString(), nodeAmount: node.toString(), refunded: refunded.toString() };
}

/** The cost of `minutes` at the test price: what ReserveNode escrows. */
const escrowOf = (minutes: number) => reservationCost(PER_HOUR_UNITS, minutes);

/** Reserved seconds billed for `ms` of shortened time (one reserved minute of `minuteMs` bills as 60 s). */
const billedSeconds = (ms: number, minuteMs: number) => Math.ceil((ms * 60) / minuteMs);

describe('reservationWorkflow', () => {
  test('expiry: the term runs out → expired, the node earns everything escrowed; the hold ends, then the end is recorded', async () => {
    const world = new FakeReservationWorld();
    const id = newId('expiry');
    const spec = reservationSpec(id, { minutes: 10 });

    await withWorker('expiry', world, async ({ client, start }) => {
      const handle = await start(spec);
      const alive = keepReservedNodeAlive(client, id);
      try {
        const ready = await handle.executeUpdate(reservationReadyUpdate);
        world.timeline.push('ready');
        expect(ready).toEqual({
          ok: true,
          startAt: expect.any(Number),
          endAt: expect.any(Number),
          escrowAccount: `escrow:${id}`,
          escrowUnits: spec.escrowUnits,
          escrowTx: `ledger:${id}/escrow`,
        });
        if (!ready.ok) throw new Error('not ready');
        expect(ready.endAt - ready.startAt).toBe(10 * FAST_RESERVATION_OPTIONS.minuteMs);
        expect(world.escrowCalls).toEqual([{ potId: id, amount: spec.escrowUnits, owner: USER_WALLET }]);
        expect(world.calls('activateReservation')).toEqual([
          { id, startAt: ready.startAt, endAt: ready.endAt, escrowAccount: `escrow:${id}`, fundedBy: USER_WALLET },
        ]);
        expect(await handle.query(reservationQuery)).toMatchObject({ status: 'active', nodeId: 'node-a', minutes: 10, escrowUnits: spec.escrowUnits });
        expect((await handle.describe()).typedSearchAttributes.get(SA.escrowState)).toBe('held');

        const receipt = await handle.result();
        expect(Date.now()).toBeGreaterThanOrEqual(ready.endAt);
        const expected = settlementOf([escrowOf(10)], escrowOf(10));
        expect(receipt).toEqual({
          status: 'expired',
          timeUsedSeconds: 600,
          ...expected,
          refunded: '0',
          paymentTx: `ledger:${id}/release_node`,
          refundTx: '',
          owed: false,
        });
        expect(expected.nodeAmount).toBe(splitPayment(escrowOf(10), PLATFORM_FEE_BPS).node.toString());
      } finally {
        alive.stop();
      }

      expect(world.settleCalls).toEqual([{ potId: id, nodeId: 'node-a', payUnits: spec.escrowUnits }]);
      expect(world.legsOf(id)).toEqual(['escrow', 'release_node', 'release_platform']);
      expect(world.calls('endHold')).toEqual([{ id, nodeId: 'node-a', status: 'completing', reason: 'ran its full 10 min' }]);
      expect(world.calls('finishReservation')).toEqual([
        expect.objectContaining({ id, nodeId: 'node-a', status: 'expired', reason: 'ran its full 10 min', timeUsedSeconds: 600, paid: spec.escrowUnits, refunded: '0' }),
      ]);
      expect(world.calls('penalizeLostNode')).toEqual([]);
      const order = ['ready', 'endHold:completing', `settle:${id}:done`, 'finishReservation:expired'].map((m) => world.timeline.indexOf(m));
      expect(order).toEqual([...order].sort((a, b) => a - b));
      expect(order[0]).toBeGreaterThanOrEqual(0);

      const description = await handle.describe();
      expect(description.status.name).toBe('COMPLETED');
      expect(description.typedSearchAttributes.get(SA.status)).toBe('expired');
      expect(description.typedSearchAttributes.get(SA.escrowState)).toBe('released');
    });
  });

  test('the worker away past both the end of a full 24 h term and its watch\'s own time limit → expired as a term that ran out, not a lost node', async () => {
    const world = new FakeReservationWorld();
    const id = newId('term-and-limit');
    const taskQueue = uniqueReservationQueue('term-and-limit');
    // A reserved minute of 5 ms: the term runs 7.2 s, and the watch's own limit (the longest term and an hour) 7.5 s.
    const minuteMs = 5;
    const handle = await startReservation(env.client, taskQueue, reservationSpec(id, { minutes: 1440 }), { ...FAST_RESERVATION_OPTIONS, minuteMs });
    handles.push(handle);
    const alive = keepReservedNodeAlive(env.client, id);
    try {
      let endAt = 0;
      await runReservationWorkerUntil(await createReservationWorker(env, bundle, taskQueue, world), world, async () => {
        const ready = await handle.executeUpdate(reservationReadyUpdate);
        if (!ready.ok) throw new Error('not ready');
        endAt = ready.endAt;
        await sleep(Math.max(0, endAt - Date.now() - 1500));
      });
      // No worker until the term has ended and the watch has run out its limit: one task brings both.
      await sleep(Math.max(0, endAt - Date.now()) + 60 * minuteMs + 1000);
      await runReservationWorkerUntil(await createReservationWorker(env, bundle, taskQueue, world), world, async () => {
        expect(await handle.result()).toMatchObject({ status: 'expired', timeUsedSeconds: 1440 * 60 });
      });
    } finally {
      alive.stop();
    }
    expect(world.calls('penalizeLostNode')).toEqual([]);
    expect(world.calls('finishReservation')).toEqual([expect.objectContaining({ id, status: 'expired', reason: 'ran its full 1440 min' })]);
  });

  describe('early release', () => {
    test('policy full → the node earns the whole term; the release update answers with the receipt', async () => {
      const world = new FakeReservationWorld();
      const id = newId('release-full');
      const spec = reservationSpec(id, { minutes: 30 });

      await withWorker('release-full', world, async ({ start }) => {
        const handle = await start(spec, { earlyRelease: 'full' });
        await handle.executeUpdate(reservationReadyUpdate);
        const receipt = await handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'training done', by: 'engine' }], updateId: 'release' });
        expect(receipt).toEqual({
          status: 'cancelled',
          timeUsedSeconds: expect.any(Number),
          ...settlementOf([escrowOf(30)], escrowOf(30)),
          paymentTx: `ledger:${id}/release_node`,
          refundTx: '',
          owed: false,
        });
        expect(receipt.timeUsedSeconds).toBeLessThan(30 * 60);
        expect(await handle.result()).toEqual(receipt);
        expect(world.calls('finishReservation')).toEqual([
          expect.objectContaining({ status: 'cancelled', reason: 'released by the engine: training done', paid: escrowOf(30).toString(), refunded: '0' }),
        ]);
        expect(world.legsOf(id)).toEqual(['escrow', 'release_node', 'release_platform']);
      });
    });

    test('while the settlement is on its way, the query shows what it settles to (ReleaseReservation answers with it when the chain is slow)', async () => {
      const world = new FakeReservationWorld();
      world.settleGate = new Gate();
      const id = newId('release-settling');
      const spec = reservationSpec(id, { minutes: 30 });

      await withWorker('release-settling', world, async ({ start }) => {
        const handle = await start(spec, { earlyRelease: 'full' });
        await handle.executeUpdate(reservationReadyUpdate);
        expect((await handle.query(reservationQuery)).settling).toBeUndefined();
        const receipt = handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'done', by: 'engine' }], updateId: 'release' });
        await waitUntil(() => world.settleCalls.length === 1, 5000, 'the settlement to start');
        const view = await handle.query(reservationQuery);
        expect(view.settling).toEqual({ status: 'cancelled', timeUsedSeconds: expect.any(Number), paid: escrowOf(30).toString(), refunded: '0' });
        world.settleGate!.open();
        expect(await receipt).toMatchObject({ status: 'cancelled', paid: view.settling!.paid, timeUsedSeconds: view.settling!.timeUsedSeconds });
      });
    });

    test('policy prorated → the node earns ceil(perHour × billed seconds / 3600), the rest is refunded', async () => {
      const world = new FakeReservationWorld();
      const id = newId('release-prorated');
      const spec = reservationSpec(id, { minutes: 30 });
      const minuteMs = 200;

      await withWorker('release-prorated', world, async ({ client, start }) => {
        const handle = await start(spec, { earlyRelease: 'prorated', minuteMs });
        const alive = keepReservedNodeAlive(client, id);
        let receipt: ReleaseReceipt;
        let heldMs: number;
        try {
          const ready = await handle.executeUpdate(reservationReadyUpdate);
          const readyAt = Date.now();
          await sleep(700);
          receipt = await handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: '', by: 'both' }], updateId: 'release' });
          heldMs = Date.now() - (ready.ok ? ready.startAt : readyAt);
          expect(billedSeconds(Date.now() - readyAt, minuteMs)).toBeGreaterThan(0);
        } finally {
          alive.stop();
        }
        // Billed from the start to the release: at least the 700 ms waited, at most until the answer came.
        expect(receipt.timeUsedSeconds).toBeGreaterThanOrEqual(billedSeconds(700, minuteMs));
        expect(receipt.timeUsedSeconds).toBeLessThanOrEqual(billedSeconds(heldMs, minuteMs));
        const earned = costOfSeconds(PER_HOUR_UNITS, receipt.timeUsedSeconds);
        expect(earned).toBe((PER_HOUR_UNITS * BigInt(receipt.timeUsedSeconds) + 3599n) / 3600n);
        expect(earned).toBeLessThan(escrowOf(30));
        expect(receipt).toEqual({
          status: 'completed', // both sides reported the end
          timeUsedSeconds: receipt.timeUsedSeconds,
          ...settlementOf([escrowOf(30)], earned),
          paymentTx: `ledger:${id}/release_node`,
          refundTx: `ledger:${id}/refund`,
          owed: false,
        });
        expect(BigInt(receipt.paid) + BigInt(receipt.refunded)).toBe(escrowOf(30));
        expect(world.settleCalls).toEqual([{ potId: id, nodeId: 'node-a', payUnits: earned.toString() }]);
        expect(world.ledger.filter((l) => l.leg === 'refund')).toEqual([
          { potId: id, leg: 'refund', amount: (escrowOf(30) - earned).toString(), to: USER_WALLET, txRef: `ledger:${id}/refund` },
        ]);
        expect(world.calls('finishReservation')).toEqual([
          expect.objectContaining({ status: 'completed', reason: 'released by the both: no reason given', timeUsedSeconds: receipt.timeUsedSeconds }),
        ]);
        expect(await handle.result()).toEqual(receipt);
      });
    });

    test('policy prorated bills up to the release, not the time it waited behind an extension\'s escrow', async () => {
      const world = new FakeReservationWorld();
      const id = newId('release-behind-extension');
      const minuteMs = 200;

      await withWorker('release-behind-extension', world, async ({ client, start }) => {
        const handle = await start(reservationSpec(id, { minutes: 30 }), { earlyRelease: 'prorated', minuteMs });
        const alive = keepReservedNodeAlive(client, id);
        try {
          await handle.executeUpdate(reservationReadyUpdate);
          const readyAt = Date.now();
          world.escrowGate = new Gate();
          const extension = handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 10 }] });
          await waitUntil(() => world.escrowCalls.length === 2, 5000, 'the extension escrow to start');
          const released = handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: '', by: 'engine' }], updateId: 'release' });
          const releasedAfterMs = Date.now() - readyAt;
          await sleep(1500); // the settlement waits for the extension's escrow (7.5 reserved minutes here)
          world.escrowGate.open();
          await extension;
          const receipt = await released;
          // Billed to the release (plus the moment its update took to arrive), not to the end of the wait.
          expect(receipt.timeUsedSeconds).toBeLessThan(billedSeconds(releasedAfterMs + 500, minuteMs));
        } finally {
          alive.stop();
        }
      });
    });

    test('the release is idempotent: the same update id twice, and again after the workflow finished, give one receipt and settle once', async () => {
      const world = new FakeReservationWorld();
      world.settleGate = new Gate();
      const id = newId('release-twice');
      const spec = reservationSpec(id, { minutes: 30 });

      await withWorker('release-twice', world, async ({ start }) => {
        const handle = await start(spec, { earlyRelease: 'prorated' });
        await handle.executeUpdate(reservationReadyUpdate);
        const release = () => handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'done', by: 'engine' }], updateId: 'release' });
        const first = release();
        await waitUntil(() => world.settleCalls.length === 1, 5000, 'the settlement to start');
        const second = release();
        await sleep(300);
        world.settleGate!.open();
        const receipt = await first;
        expect(await second).toEqual(receipt);
        expect(await handle.result()).toEqual(receipt);

        // The dev server remembers the update's outcome on the closed run: a retried ReleaseReservation gets it.
        expect(await release()).toEqual(receipt);
        expect(world.settleCalls).toHaveLength(1);
        expect(world.calls('endHold')).toHaveLength(1);
        expect(world.calls('finishReservation')).toHaveLength(1);
        expect(world.ledger.map((l) => l.leg)).toEqual(['escrow', 'refund', 'release_node', 'release_platform']);
      });
    });
  });

  describe('extension', () => {
    test('escrows its own pot, moves the end; at expiry the node earns every pot', async () => {
      const world = new FakeReservationWorld();
      const id = newId('extend');
      const spec = reservationSpec(id, { minutes: 10 });
      const { minuteMs } = FAST_RESERVATION_OPTIONS;

      await withWorker('extend', world, async ({ client, start }) => {
        const handle = await start(spec);
        const alive = keepReservedNodeAlive(client, id);
        try {
          const ready = await handle.executeUpdate(reservationReadyUpdate);
          if (!ready.ok) throw new Error('not ready');
          const extended = await handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 12 }] });
          expect(extended).toEqual({ endAt: ready.endAt + 12 * minuteMs, additionalUnits: escrowOf(12).toString(), escrowTx: `ledger:${id}/ext-1/escrow` });
          expect(world.escrowCalls).toEqual([
            { potId: id, amount: spec.escrowUnits, owner: USER_WALLET },
            { potId: `${id}/ext-1`, amount: escrowOf(12).toString(), owner: USER_WALLET },
          ]);
          expect(world.calls('recordExtension')).toEqual([
            { id, extensions: 1, minutes: 22, escrowUnits: (escrowOf(10) + escrowOf(12)).toString(), endAt: ready.endAt + 12 * minuteMs },
          ]);
          expect(await handle.query(reservationQuery)).toMatchObject({
            status: 'active',
            minutes: 22,
            endAt: ready.endAt + 12 * minuteMs,
            escrowUnits: (escrowOf(10) + escrowOf(12)).toString(),
            pots: [
              { potId: id, units: escrowOf(10).toString(), minutes: 10 },
              { potId: `${id}/ext-1`, units: escrowOf(12).toString(), minutes: 12 },
            ],
            lastReason: 'extended by 12 min',
          });

          const receipt = await handle.result();
          // Not at the first end: the timer moved with the extension.
          expect(Date.now()).toBeGreaterThanOrEqual(ready.endAt + 12 * minuteMs);
          expect(receipt).toMatchObject({ status: 'expired', timeUsedSeconds: 22 * 60, ...settlementOf([escrowOf(10), escrowOf(12)], escrowOf(10) + escrowOf(12)), refunded: '0', owed: false });
        } finally {
          alive.stop();
        }
        expect(world.settleCalls).toEqual([
          { potId: id, nodeId: 'node-a', payUnits: escrowOf(10).toString() },
          { potId: `${id}/ext-1`, nodeId: 'node-a', payUnits: escrowOf(12).toString() },
        ]);
        expect(world.legsOf(`${id}/ext-1`)).toEqual(['escrow', 'release_node', 'release_platform']);
      });
    });

    test('the validator refuses 0, fractions, fewer than 10 or more than 1440 minutes, and more than 1440 in all; nothing is escrowed for them', async () => {
      const world = new FakeReservationWorld();
      const id = newId('extend-invalid');
      const spec = reservationSpec(id, { minutes: 480 });

      await withWorker('extend-invalid', world, async ({ start }) => {
        const handle = await start(spec);
        await handle.executeUpdate(reservationReadyUpdate);
        const extend = (minutes: number) => handle.executeUpdate(extendReservationUpdate, { args: [{ minutes }] });

        for (const minutes of [0, -5, 1.5, 9, MAX_MINUTES + 1]) {
          const failure = await expectUpdateRejected(extend(minutes), ReservationRejections.invalid);
          expect(failure.message).toContain('additional_minutes');
        }
        await extend(480); // 960 in all
        await extend(480); // 1440 in all: the most a reservation runs
        const tooLong = await expectUpdateRejected(extend(10), ReservationRejections.invalid);
        expect(tooLong.message).toContain('at most 1440 minutes in all (1440 booked)');

        expect(world.escrowCalls.map((c) => c.potId)).toEqual([id, `${id}/ext-1`, `${id}/ext-2`]);
        expect(await handle.query(reservationQuery)).toMatchObject({ minutes: 1440, escrowUnits: (escrowOf(480) * 3n).toString() });

        // After the end, an extension is refused as ended.
        await handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'done', by: 'engine' }], updateId: 'release' });
        await handle.result();
        expect(world.escrowCalls).toHaveLength(3);
      });
    });

    test('after 5 extensions refused for want of funds, more are refused outright for a while: no escrow attempt, no history, and the release still goes through', async () => {
      const world = new FakeReservationWorld();
      const id = newId('extend-broke');

      await withWorker('extend-broke', world, async ({ start }) => {
        const handle = await start(reservationSpec(id));
        await handle.executeUpdate(reservationReadyUpdate);
        world.escrowRefusal = { type: PaymentFailures.insufficientFunds, message: 'allowance too small' };
        const extend = () => handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 10 }] });
        for (let i = 0; i < 5; i++) await expectUpdateRejected(extend(), ReservationRejections.escrowRefused);
        const events = (await handle.fetchHistory()).events?.length ?? 0;
        const capped = await expectUpdateRejected(extend(), ReservationRejections.escrowRefused);
        expect(capped.message).toContain('5 extensions of reservation');
        expect(world.escrowCalls).toHaveLength(6); // the first escrow and the 5 refused extensions
        expect((await handle.fetchHistory()).events?.length ?? 0).toBe(events);
        await handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'done', by: 'engine' }], updateId: 'release' });
        await handle.result();
      });
    });

    test('refused while the first escrow is pending and after a release (ReservationEnded)', async () => {
      const world = new FakeReservationWorld();
      world.escrowGate = new Gate();
      world.settleGate = new Gate();
      const id = newId('extend-ended');

      await withWorker('extend-ended', world, async ({ start }) => {
        const handle = await start(reservationSpec(id));
        await waitUntil(() => world.escrowCalls.length === 1, 5000, 'the escrow to start');
        const pending = await expectUpdateRejected(handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 5 }] }), ReservationRejections.ended);
        expect(pending.message).toContain('not active yet');
        world.escrowGate!.open();
        await handle.executeUpdate(reservationReadyUpdate);

        const release = handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'done', by: 'engine' }], updateId: 'release' });
        await waitUntil(() => world.settleCalls.length === 1, 5000, 'the settlement to start');
        // Settling (status completing): too late to extend.
        await expectUpdateRejected(handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 5 }] }), ReservationRejections.ended);
        world.settleGate!.open();
        await release;
        expect(world.escrowCalls.map((c) => c.potId)).toEqual([id]);
      });
    });

    test('asked again while its escrow is on its way (a client that gave up waiting), the same extension answers every ask: escrowed and added once; another is refused until it is answered', async () => {
      const world = new FakeReservationWorld();
      const id = newId('extend-retried');
      const spec = reservationSpec(id, { minutes: 30 });
      const { minuteMs } = FAST_RESERVATION_OPTIONS;

      await withWorker('extend-retried', world, async ({ start }) => {
        const handle = await start(spec);
        const ready = await handle.executeUpdate(reservationReadyUpdate);
        if (!ready.ok) throw new Error('not ready');
        world.escrowGate = new Gate();
        const extend = (minutes: number) => handle.executeUpdate(extendReservationUpdate, { args: [{ minutes }] });
        const first = extend(20);
        await waitUntil(() => world.escrowCalls.length === 2, 5000, 'the extension escrow to start');
        // Each retry accepted before the next is sent (as a client's would be, seconds apart).
        const accepted = (minutes: number) =>
          handle.startUpdate(extendReservationUpdate, { args: [{ minutes }], waitForStage: WorkflowUpdateStage.ACCEPTED });
        const retry = (await accepted(20)).result();
        const again = (await accepted(20)).result();
        // Retries beyond two wait for the answer instead: each is an update in flight, and the release needs room.
        const busy = await expectUpdateRejected(extend(20), ReservationRejections.busy);
        expect(busy.message).toContain('is still being escrowed: ask again once it is answered');
        // Another length is another extension: one at a time.
        const other = await expectUpdateRejected(extend(15), ReservationRejections.busy);
        expect(other.message).toContain('another extension of reservation');
        await sleep(300);
        world.escrowGate.open();
        const [a, b, d] = await Promise.all([first, retry, again]);
        expect(b).toEqual(a);
        expect(d).toEqual(a);
        expect(a.escrowTx).toBe(`ledger:${id}/ext-1/escrow`);
        expect(world.escrowCalls.map((e) => e.potId)).toEqual([id, `${id}/ext-1`]);
        expect(await handle.query(reservationQuery)).toMatchObject({ minutes: 50, endAt: ready.endAt + 20 * minuteMs });

        // Answered: the same request again is a new extension, and so is another length.
        world.escrowGate = undefined;
        expect((await extend(20)).escrowTx).toBe(`ledger:${id}/ext-2/escrow`);
        expect((await extend(15)).escrowTx).toBe(`ledger:${id}/ext-3/escrow`);
        expect(await handle.query(reservationQuery)).toMatchObject({ minutes: 85 });
        await handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'done', by: 'engine' }], updateId: 'release' });
        expect(await handle.result()).toMatchObject({ status: 'cancelled' });
      });
    });

    test('its escrow refused → EscrowRefused; the end and the pots are unchanged, the next extension gets a new pot id', async () => {
      const world = new FakeReservationWorld();
      const id = newId('extend-refused');
      const spec = reservationSpec(id, { minutes: 30 });

      await withWorker('extend-refused', world, async ({ start }) => {
        const handle = await start(spec);
        const ready = await handle.executeUpdate(reservationReadyUpdate);
        if (!ready.ok) throw new Error('not ready');
        world.escrowRefusal = { type: PaymentFailures.insufficientFunds, message: 'allowance too small' };
        const failure = await expectUpdateRejected(handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 20 }] }), ReservationRejections.escrowRefused);
        expect(failure.message).toBe('escrow refused: allowance too small');
        expect(await handle.query(reservationQuery)).toMatchObject({ status: 'active', minutes: 30, endAt: ready.endAt, pots: [{ potId: id }] });
        expect(world.calls('recordExtension')).toEqual([]);

        world.escrowRefusal = undefined;
        const extended = await handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 20 }] });
        expect(extended.escrowTx).toBe(`ledger:${id}/ext-2/escrow`);
        expect(world.calls('recordExtension')).toEqual([expect.objectContaining({ extensions: 1, minutes: 50 })]);

        const receipt = await handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'done', by: 'engine' }], updateId: 'release' });
        expect(receipt).toMatchObject({ status: 'cancelled', ...settlementOf([escrowOf(30), escrowOf(20)], escrowOf(30) + escrowOf(20)) });
        expect(world.settleCalls.map((c) => c.potId)).toEqual([id, `${id}/ext-2`]);
      });
    });
  });

  test('node lost: the watch is no longer heartbeated → failed, penalized, paid only until its last sign of life', async () => {
    const world = new FakeReservationWorld();
    const id = newId('node-lost');
    const spec = reservationSpec(id, { minutes: 60 });
    const minuteMs = 200;
    const nodeHeartbeatTimeoutMs = 1500;

    await withWorker('node-lost', world, async ({ client, start }) => {
      const handle = await start(spec, { minuteMs, nodeHeartbeatTimeoutMs });
      const alive = keepReservedNodeAlive(client, id);
      const ready = await handle.executeUpdate(reservationReadyUpdate);
      if (!ready.ok) throw new Error('not ready');
      // Heartbeats keep the node past its heartbeat timeout.
      await sleep(nodeHeartbeatTimeoutMs + 500);
      expect(await handle.query(reservationQuery)).toMatchObject({ status: 'active' });
      alive.stop();

      const receipt = await handle.result();
      const lostAt = Date.now();
      const lastBeatAt = alive.lastBeatAt(); // read once a beat that was on its way has landed
      expect(alive.beats()).toBeGreaterThan(5);
      expect(receipt.status).toBe('failed');
      // Billed until the last sign of life (the `at` of the watch's last heartbeat), never up to the detection.
      expect(receipt.timeUsedSeconds).toBeGreaterThanOrEqual(billedSeconds(lastBeatAt - ready.startAt - 250, minuteMs));
      expect(receipt.timeUsedSeconds).toBeLessThanOrEqual(billedSeconds(lastBeatAt - ready.startAt + 50, minuteMs));
      expect(receipt.timeUsedSeconds).toBeLessThanOrEqual(billedSeconds(lostAt - nodeHeartbeatTimeoutMs - ready.startAt, minuteMs));
      const earned = costOfSeconds(PER_HOUR_UNITS, receipt.timeUsedSeconds);
      expect(earned).toBeLessThan(escrowOf(60));
      expect(receipt).toEqual({
        status: 'failed',
        timeUsedSeconds: receipt.timeUsedSeconds,
        ...settlementOf([escrowOf(60)], earned),
        paymentTx: `ledger:${id}/release_node`,
        refundTx: `ledger:${id}/refund`,
        owed: false,
      });

      const reason = 'node lost: silent for 2 s';
      expect(world.calls('endHold')).toEqual([{ id, nodeId: 'node-a', status: 'completing', reason }]);
      expect(world.calls('penalizeLostNode')).toEqual([{ id, nodeId: 'node-a', reason }]);
      expect(world.calls('finishReservation')).toEqual([expect.objectContaining({ status: 'failed', reason, paid: earned.toString() })]);
      expect(world.timeline.indexOf('penalizeLostNode:' + id)).toBeGreaterThan(world.timeline.indexOf('endHold:completing'));
      expect(world.watchCalls).toHaveLength(1);
    });
  });

  test('a watch that lapsed while the heartbeat relay was down (the node beat all along): watched again, the reservation runs on; a confirmed lapse ends it as lost', async () => {
    const world = new FakeReservationWorld();
    world.aliveAfterLapse = 1;
    const id = newId('relay-lapse');
    const spec = reservationSpec(id, { minutes: 60 });
    const nodeHeartbeatTimeoutMs = 1500;

    await withWorker('relay-lapse', world, async ({ start }) => {
      const handle = await start(spec, { minuteMs: 200, nodeHeartbeatTimeoutMs });
      const ready = await handle.executeUpdate(reservationReadyUpdate);
      if (!ready.ok) throw new Error('not ready');
      // Nobody heartbeats the watch: it lapses, the node is found alive, and is watched again.
      await waitUntil(() => world.watchCalls.length === 2, 10_000, 'the second watch');
      expect(world.confirmCalls).toEqual([{ nodeId: 'node-a', silentForMs: nodeHeartbeatTimeoutMs }]);
      expect(await handle.query(reservationQuery)).toMatchObject({ status: 'active', lastReason: expect.stringContaining('node watched again') });
      expect(world.calls('penalizeLostNode')).toEqual([]);
      // The second lapse is confirmed: lost. Coming soon after the first, its confirmation would have watched an
      // alive node from Postgres a while before answering (twice the timeout), not restarted the watch at once.
      const receipt = await handle.result();
      expect(receipt.status).toBe('failed');
      expect(world.confirmCalls).toEqual([
        { nodeId: 'node-a', silentForMs: nodeHeartbeatTimeoutMs },
        { nodeId: 'node-a', silentForMs: nodeHeartbeatTimeoutMs, aliveForMs: 2 * nodeHeartbeatTimeoutMs },
      ]);
      expect(world.calls('penalizeLostNode')).toEqual([{ id, nodeId: 'node-a', reason: 'node lost: silent for 2 s' }]);
    });
  });

  test('node lost while an extension\'s escrow is on its way, then released by the Engine: still ends as lost', async () => {
    const world = new FakeReservationWorld();
    const id = newId('lost-then-released');
    const minuteMs = 200;
    const nodeHeartbeatTimeoutMs = 1500;

    await withWorker('lost-then-released', world, async ({ client, start }) => {
      const handle = await start(reservationSpec(id, { minutes: 60 }), { minuteMs, nodeHeartbeatTimeoutMs });
      const alive = keepReservedNodeAlive(client, id);
      const ready = await handle.executeUpdate(reservationReadyUpdate);
      if (!ready.ok) throw new Error('not ready');
      await sleep(500); // a few beats
      world.escrowGate = new Gate();
      const extension = handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 10 }] });
      await waitUntil(() => world.escrowCalls.length === 2, 5000, 'the extension escrow to start');
      alive.stop();
      // The watch times out while the extension pays; the Engine, seeing its node gone, releases.
      await sleep(nodeHeartbeatTimeoutMs + 1000);
      const lastBeatAt = alive.lastBeatAt(); // read once a beat that was on its way has landed
      const released = handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'node gone', by: 'engine' }], updateId: 'release' });
      await sleep(300);
      world.escrowGate.open();
      await extension;
      const receipt = await released;
      expect(receipt.status).toBe('failed');
      // Billed to the node's last sign of life, not the whole term (the default policy bills a release in full).
      expect(receipt.timeUsedSeconds).toBeLessThanOrEqual(billedSeconds(Math.max(lastBeatAt, ready.startAt) - ready.startAt + 50, minuteMs));
      expect(world.calls('penalizeLostNode')).toEqual([{ id, nodeId: 'node-a', reason: 'node lost: silent for 2 s' }]);
      expect(await handle.result()).toMatchObject({ status: 'failed' });
    });
  });

  test('a node that never beats after the start is billed nothing: the whole escrow goes back', async () => {
    const world = new FakeReservationWorld();
    const id = newId('never-beat');
    await withWorker('never-beat', world, async ({ start }) => {
      const handle = await start(reservationSpec(id, { minutes: 60 }), { minuteMs: 200, nodeHeartbeatTimeoutMs: 1000 });
      const ready = await handle.executeUpdate(reservationReadyUpdate);
      expect(ready.ok).toBe(true);
      const receipt = await handle.result();
      expect(receipt).toEqual({ status: 'failed', timeUsedSeconds: 0, ...settlementOf([escrowOf(60)], 0n), paymentTx: '', refundTx: `ledger:${id}/refund`, owed: false });
      expect(world.calls('penalizeLostNode')).toEqual([{ id, nodeId: 'node-a', reason: 'node lost: silent for 1 s' }]);
    });
  });

  test('escrow refused at the start → ready answers 402, the hold is released as failed, nothing settled', async () => {
    const world = new FakeReservationWorld();
    world.escrowRefusal = { type: PaymentFailures.insufficientFunds, message: 'no allowance' };
    const id = newId('refused');

    await withWorker('refused', world, async ({ start }) => {
      const handle = await start(reservationSpec(id));
      const message = 'escrow refused: no allowance';
      const ready = await handle.executeUpdate(reservationReadyUpdate).catch((e: unknown) => e);
      // ReserveNode may also find the workflow already closed (it then reads the row); here it is still open.
      expect(ready).toEqual({ ok: false, code: 402, message });
      const receipt = await handle.result();
      expect(receipt).toEqual({ status: 'failed', timeUsedSeconds: 0, paid: '0', nodeAmount: '0', refunded: '0', paymentTx: '', refundTx: '', owed: false });
      expect(world.escrowCalls).toHaveLength(1); // non-retryable: one attempt
      expect(world.calls('endHold')).toEqual([{ id, nodeId: 'node-a', status: 'failed', reason: message }]);
      expect(world.calls('finishReservation')).toEqual([expect.objectContaining({ id, status: 'failed', reason: message, paid: '0', refunded: '0' })]);
      expect(world.calls('activateReservation')).toEqual([]);
      expect(world.settleCalls).toEqual([]);
      expect(world.ledger).toEqual([]);
      expect(world.watchCalls).toEqual([]);
      const description = await handle.describe();
      expect(description.typedSearchAttributes.get(SA.status)).toBe('failed');
    });
  });

  test('a release while the refused escrow is in flight → answered with the failed receipt', async () => {
    const world = new FakeReservationWorld();
    world.escrowGate = new Gate();
    world.escrowRefusal = { type: PaymentFailures.insufficientFunds, message: 'no allowance' };
    const id = newId('refused-release');

    await withWorker('refused-release', world, async ({ start }) => {
      const handle = await start(reservationSpec(id));
      await waitUntil(() => world.escrowCalls.length === 1, 5000, 'the escrow to start');
      const release = handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'changed my mind', by: 'engine' }], updateId: 'release' });
      await sleep(300);
      world.escrowGate!.open();
      expect(await release).toMatchObject({ status: 'failed', paid: '0', refunded: '0' });
      expect(await handle.result()).toMatchObject({ status: 'failed' });
      expect(world.settleCalls).toEqual([]);
    });
  });

  describe('withdrawn by ReserveNode (its escrow not confirmed in time)', () => {
    const reason = 'withdrawn: the escrow was not confirmed within 25 s';

    test('while the escrow is in flight → 503 at once, the node given back; the escrow that lands later is refunded whole', async () => {
      const world = new FakeReservationWorld();
      world.escrowGate = new Gate();
      const id = newId('withdrawn');
      const spec = reservationSpec(id, { minutes: 30 });

      await withWorker('withdrawn', world, async ({ start }) => {
        const handle = await start(spec);
        await waitUntil(() => world.escrowCalls.length === 1, 5000, 'the escrow to start');
        // Answered while the escrow is still held at its gate: ReserveNode does not wait for the chain.
        expect(await handle.executeUpdate(withdrawReservationUpdate, { args: [{ reason }] })).toEqual({ ok: false, code: 503, message: reason });
        expect(world.calls('endHold')).toEqual([{ id, nodeId: 'node-a', status: 'cancelled', reason }]);
        expect(await handle.executeUpdate(reservationReadyUpdate)).toEqual({ ok: false, code: 503, message: reason });
        await expect(handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 10 }] })).rejects.toBeInstanceOf(WorkflowUpdateFailedError);

        world.escrowGate!.open();
        const receipt = await handle.result();
        expect(receipt).toEqual({ status: 'cancelled', timeUsedSeconds: 0, paid: '0', nodeAmount: '0', refunded: spec.escrowUnits, paymentTx: '', refundTx: `ledger:${id}/refund`, owed: false });
        expect(world.legsOf(id)).toEqual(['escrow', 'refund']);
        expect(world.settleCalls).toEqual([{ potId: id, nodeId: 'node-a', payUnits: '0' }]);
        // Never active: no start, no watch over the node.
        expect(world.calls('activateReservation')).toEqual([]);
        expect(world.watchCalls).toEqual([]);
        expect(world.calls('finishReservation')).toEqual([
          expect.objectContaining({ id, status: 'cancelled', reason, timeUsedSeconds: 0, paid: '0', refunded: spec.escrowUnits }),
        ]);
      });
    });

    test('policy full does not bill a withdrawn reservation: nothing is paid to the node', async () => {
      const world = new FakeReservationWorld();
      world.escrowGate = new Gate();
      const id = newId('withdrawn-full');

      await withWorker('withdrawn-full', world, async ({ start }) => {
        const handle = await start(reservationSpec(id), { earlyRelease: 'full' });
        await waitUntil(() => world.escrowCalls.length === 1, 5000, 'the escrow to start');
        await handle.executeUpdate(withdrawReservationUpdate, { args: [{ reason }] });
        world.escrowGate!.open();
        expect(await handle.result()).toMatchObject({ status: 'cancelled', paid: '0', refunded: escrowOf(10).toString() });
      });
    });

    test('after the escrow landed → the reservation stands: the withdrawal answers ready and changes nothing', async () => {
      const world = new FakeReservationWorld();
      const id = newId('withdraw-late');

      await withWorker('withdraw-late', world, async ({ start }) => {
        const handle = await start(reservationSpec(id));
        const ready = await handle.executeUpdate(reservationReadyUpdate);
        expect(ready.ok).toBe(true);
        expect(await handle.executeUpdate(withdrawReservationUpdate, { args: [{ reason }] })).toEqual(ready);
        expect(world.calls('endHold')).toEqual([]);
        expect(await handle.query(reservationQuery)).toMatchObject({ status: 'active' });
        await handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'done', by: 'engine' }], updateId: 'release' });
        expect(await handle.result()).toMatchObject({ status: 'cancelled' });
      });
    });

    test('given up by ReserveNode before it could withdraw it (its start looked failed) → not revived when the escrow lands: refunded whole', async () => {
      const world = new FakeReservationWorld();
      world.givenUp = true;
      const id = newId('given-up');
      const spec = reservationSpec(id, { minutes: 20 });

      await withWorker('given-up', world, async ({ start }) => {
        const handle = await start(spec);
        expect(await handle.result()).toMatchObject({ status: 'cancelled', paid: '0', refunded: spec.escrowUnits });
        expect(world.legsOf(id)).toEqual(['escrow', 'refund']);
        expect(world.watchCalls).toEqual([]);
        expect(world.calls('finishReservation')).toEqual([expect.objectContaining({ status: 'cancelled', reason: expect.stringContaining('gave it up') })]);
      });
    });

    test('the escrow refused after the withdrawal → failed as refused, nothing settled', async () => {
      const world = new FakeReservationWorld();
      world.escrowGate = new Gate();
      world.escrowRefusal = { type: PaymentFailures.insufficientFunds, message: 'no allowance' };
      const id = newId('withdrawn-refused');

      await withWorker('withdrawn-refused', world, async ({ start }) => {
        const handle = await start(reservationSpec(id));
        await waitUntil(() => world.escrowCalls.length === 1, 5000, 'the escrow to start');
        await handle.executeUpdate(withdrawReservationUpdate, { args: [{ reason }] });
        world.escrowGate!.open();
        expect(await handle.result()).toMatchObject({ status: 'failed', paid: '0', refunded: '0' });
        expect(world.settleCalls).toEqual([]);
        expect(world.ledger).toEqual([]);
      });
    });
  });

  test('owed with several pots: a re-check settles only the pots still owed, not the ones already refunded', async () => {
    const world = new FakeReservationWorld({ nodeWallets: [] });
    const id = newId('owed-pots');

    await withWorker('owed-pots', world, async ({ start }) => {
      const handle = await start(reservationSpec(id, { minutes: 30 }), { earlyRelease: 'prorated' });
      await handle.executeUpdate(reservationReadyUpdate);
      await handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 10 }] });
      const receipt = await handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'done', by: 'engine' }], updateId: 'release' });
      expect(receipt.owed).toBe(true);
      // Released at once: the node earned a little of the first pot; the extension's pot is refunded whole.
      expect(world.settleOutcomes.map((o) => o.owed)).toEqual([true, false]);
      await handle.signal(walletRegisteredSignal);
      await waitUntil(() => world.settleCalls.length === 3, 5000, 'the re-check');
      world.registerWallet('node-a');
      await handle.signal(walletRegisteredSignal);
      expect(await handle.result()).toMatchObject({ owed: false, paymentTx: `ledger:${id}/release_node` });
      expect(world.settleCalls.map((c) => c.potId)).toEqual([id, `${id}/ext-1`, id, id]);
    });
  });

  test('owed: a node without a wallet → receipt owed, the workflow waits; walletRegistered once it has one → paid once', async () => {
    const world = new FakeReservationWorld({ nodeWallets: [] });
    const id = newId('owed');
    const spec = reservationSpec(id, { minutes: 30 });

    await withWorker('owed', world, async ({ start }) => {
      const handle = await start(spec, { earlyRelease: 'full' });
      await handle.executeUpdate(reservationReadyUpdate);
      const receipt = await handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'done', by: 'engine' }], updateId: 'release' });
      const amounts = settlementOf([escrowOf(30)], escrowOf(30));
      expect(receipt).toEqual({ status: 'cancelled', timeUsedSeconds: expect.any(Number), ...amounts, paymentTx: '', refundTx: '', owed: true });
      expect(world.legsOf(id)).toEqual(['escrow']); // nothing moved: the pot holds the node's share

      let description = await handle.describe();
      expect(description.status.name).toBe('RUNNING');
      expect(description.typedSearchAttributes.get(SA.escrowState)).toBe('owed');
      // Asked again, the release answers the same.
      expect(await handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'again', by: 'engine' }], updateId: 'release/retry' })).toEqual(receipt);

      // A signal while it still has no wallet: settled again, still owed.
      await handle.signal(walletRegisteredSignal);
      await waitUntil(() => world.settleCalls.length === 2, 5000, 'the second settlement');
      await sleep(300);
      expect((await handle.describe()).status.name).toBe('RUNNING');

      world.registerWallet('node-a');
      await handle.signal(walletRegisteredSignal);
      const paid = await handle.result();
      expect(paid).toEqual({ ...receipt, paymentTx: `ledger:${id}/release_node`, owed: false });
      expect(world.settleOutcomes.map((o) => o.owed)).toEqual([true, true, false]);
      expect(world.ledger.filter((l) => l.leg !== 'escrow')).toEqual([
        { potId: id, leg: 'release_node', amount: amounts.nodeAmount, to: walletOf('node-a'), txRef: `ledger:${id}/release_node` },
        { potId: id, leg: 'release_platform', amount: (escrowOf(30) - BigInt(amounts.nodeAmount)).toString(), to: 'platform:treasury', txRef: `ledger:${id}/release_platform` },
      ]);
      expect(world.calls('finishReservation')).toEqual([
        expect.objectContaining({ status: 'cancelled', paymentTx: '' }),
        expect.objectContaining({ status: 'cancelled', paymentTx: `ledger:${id}/release_node`, paid: amounts.paid }),
      ]);
      description = await handle.describe();
      expect(description.status.name).toBe('COMPLETED');
      expect(description.typedSearchAttributes.get(SA.escrowState)).toBe('released');
    });
  });

  describe('cancelled by an operator (Temporal cancel)', () => {
    test('while active → settled prorated, recorded as cancelled; the workflow ends cancelled', async () => {
      const world = new FakeReservationWorld();
      const id = newId('operator-cancel');
      const spec = reservationSpec(id, { minutes: 30 });

      await withWorker('operator-cancel', world, async ({ start }) => {
        // Even under the `full` policy an operator's cancel bills only the time used.
        const handle = await start(spec, { earlyRelease: 'full' });
        await handle.executeUpdate(reservationReadyUpdate);
        await sleep(300);
        await handle.cancel();
        const err = await handle.result().then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(WorkflowFailedError);
        expect((err as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);

        const [finish] = world.calls('finishReservation');
        expect(world.calls('finishReservation')).toHaveLength(1);
        const earned = costOfSeconds(PER_HOUR_UNITS, finish!.timeUsedSeconds);
        expect(earned).toBeLessThan(escrowOf(30));
        expect(finish).toMatchObject({ status: 'cancelled', reason: 'cancelled by an operator', paid: earned.toString(), refunded: (escrowOf(30) - earned).toString() });
        expect(world.settleCalls).toEqual([{ potId: id, nodeId: 'node-a', payUnits: earned.toString() }]);
        expect(world.calls('endHold')).toEqual([{ id, nodeId: 'node-a', status: 'completing', reason: 'cancelled by an operator' }]);
        expect(world.legsOf(id)).toEqual(['escrow', 'refund', 'release_node', 'release_platform']);
      });
    });

    test('while the settlement is paying → the settlement still finishes and is recorded as it was decided', async () => {
      const world = new FakeReservationWorld();
      world.settleGate = new Gate();
      const id = newId('operator-cancel-settling');
      const spec = reservationSpec(id, { minutes: 10 });

      await withWorker('operator-cancel-settling', world, async ({ client, start }) => {
        const handle = await start(spec);
        const alive = keepReservedNodeAlive(client, id);
        try {
          await handle.executeUpdate(reservationReadyUpdate);
          await waitUntil(() => world.settleCalls.length === 1, 10_000, 'the expiry settlement to start');
        } finally {
          alive.stop();
        }
        await handle.cancel();
        await sleep(300);
        world.settleGate!.open();
        const err = await handle.result().then(
          () => undefined,
          (e: unknown) => e,
        );
        expect((err as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);

        // Expired, so the node earns the whole term; the cancel does not turn it into a prorated one.
        expect(world.settleCalls).toEqual([{ potId: id, nodeId: 'node-a', payUnits: spec.escrowUnits }]);
        expect(world.calls('endHold')).toHaveLength(1);
        expect(world.calls('finishReservation')).toEqual([
          expect.objectContaining({ status: 'expired', paid: spec.escrowUnits, refunded: '0', paymentTx: `ledger:${id}/release_node` }),
        ]);
      });
    });

    test("while an extension's escrow is in flight → its pot is settled too", async () => {
      const world = new FakeReservationWorld();
      const id = newId('operator-cancel-extension');
      const spec = reservationSpec(id, { minutes: 30 });

      await withWorker('operator-cancel-extension', world, async ({ start }) => {
        const handle = await start(spec);
        await handle.executeUpdate(reservationReadyUpdate);
        world.escrowGate = new Gate();
        const extension = handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 20 }] }).catch((e: unknown) => e);
        await waitUntil(() => world.escrowCalls.length === 2, 5000, "the extension's escrow to start");
        await handle.cancel();
        await sleep(300);
        world.escrowGate.open();
        const err = await handle.result().then(
          () => undefined,
          (e: unknown) => e,
        );
        expect((err as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);
        await extension;

        // Both pots hold money: both are settled (prorated, so the extension's goes back whole).
        expect(world.settleCalls.map((c) => c.potId)).toEqual([id, `${id}/ext-1`]);
        expect(world.legsOf(`${id}/ext-1`)).toEqual(['escrow', 'refund']);
        const [finish] = world.calls('finishReservation');
        expect(finish).toMatchObject({ status: 'cancelled', refunded: (escrowOf(30) + escrowOf(20) - BigInt(finish!.paid)).toString() });
      });
    });

    test('while a refused escrow is in flight → recorded as failed all the same, the node given back', async () => {
      const world = new FakeReservationWorld();
      world.escrowGate = new Gate();
      world.escrowRefusal = { type: PaymentFailures.insufficientFunds, message: 'no allowance' };
      const id = newId('operator-cancel-refused');

      await withWorker('operator-cancel-refused', world, async ({ start }) => {
        const handle = await start(reservationSpec(id));
        await waitUntil(() => world.escrowCalls.length === 1, 5000, 'the escrow to start');
        await handle.cancel();
        await sleep(300);
        world.escrowGate!.open();
        await handle.result().catch(() => undefined);
        expect(world.calls('endHold')).toEqual([{ id, nodeId: 'node-a', status: 'failed', reason: 'escrow refused: no allowance' }]);
        expect(world.calls('finishReservation')).toEqual([expect.objectContaining({ status: 'failed', paid: '0', refunded: '0' })]);
      });
    });

    test('while the first escrow is in flight → the escrow is refunded whole, the hold released', async () => {
      const world = new FakeReservationWorld();
      world.escrowGate = new Gate();
      const id = newId('operator-cancel-escrow');
      const spec = reservationSpec(id, { minutes: 30 });

      await withWorker('operator-cancel-escrow', world, async ({ start }) => {
        const handle = await start(spec);
        await waitUntil(() => world.escrowCalls.length === 1, 5000, 'the escrow to start');
        await handle.cancel();
        await sleep(300);
        world.escrowGate!.open();
        const err = await handle.result().then(
          () => undefined,
          (e: unknown) => e,
        );
        expect((err as WorkflowFailedError).cause).toBeInstanceOf(CancelledFailure);

        // The money went into escrow after all: it goes back, and the node is free again.
        expect(world.legsOf(id)).toEqual(['escrow', 'refund']);
        expect(world.settleCalls).toEqual([{ potId: id, nodeId: 'node-a', payUnits: '0' }]);
        expect(world.calls('endHold')).toEqual([{ id, nodeId: 'node-a', status: 'completing', reason: 'cancelled by an operator' }]);
        expect(world.calls('finishReservation')).toEqual([
          expect.objectContaining({ status: 'cancelled', timeUsedSeconds: 0, paid: '0', refunded: spec.escrowUnits }),
        ]);
      });
    });
  });
});
