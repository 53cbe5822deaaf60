/**
 * Records the reservation workflow's histories that test/replay/reservation-workflow.replay.test.ts replays.
 *
 *   npx tsx scripts/record-reservation-histories.ts                 # every scenario
 *   npx tsx scripts/record-reservation-histories.ts expired owed    # only the named ones
 *
 * Each scenario runs the real workflow on a local Temporal dev server (the `temporal` CLI, found like the test
 * setup finds it; TEMPORAL_CLI overrides) with the fake activities of the workflow tests, and writes
 * test/replay/reservation-histories/<scenario>.json. Re-record only on purpose: once reservations run in
 * production, a workflow change must keep replaying the old files (guard it with `patched()`).
 */
import fs from 'node:fs';
import path from 'node:path';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';
import type { Client } from '@temporalio/client';
import { ensureTemporalCli } from '../src/infra/temporal-cli';
import type { ReservationOptions } from '../src/workflows/reservation-workflow';
import { walletRegisteredSignal } from '../src/workflows/messages';
import { extendReservationUpdate, releaseReservationUpdate, reservationReadyUpdate, withdrawReservationUpdate } from '../src/workflows/reservation-messages';
import { createJobTestEnv, Gate, sleep, waitUntil } from '../test/workflows/job-harness';
import {
  createReservationWorker,
  FAST_RESERVATION_OPTIONS,
  FakeReservationWorld,
  keepReservedNodeAlive,
  reservationSpec,
  runReservationWorkerUntil,
  startReservation,
  uniqueReservationQueue,
  type ReservationHandle,
} from '../test/workflows/reservation-harness';
import { RESERVATION_HISTORIES_DIR as OUT_DIR, reservationReplayId } from '../test/replay/reservation-histories';

interface Scenario {
  minutes: number;
  options?: Partial<ReservationOptions>;
  /** The fake node has a wallet unless false (its share is then owed). */
  nodeWallet?: boolean;
  /** Drives the reservation to its end (as the Engine, the node and the API would). */
  drive(ctx: { client: Client; handle: ReservationHandle; id: string; world: FakeReservationWorld }): Promise<void>;
  /** Whether the run ends cancelled (an operator's cancel) rather than with a receipt. */
  cancelled?: boolean;
  /** The first escrow waits at a gate (world.escrowGate) until the scenario opens it. */
  holdEscrow?: boolean;
}

/** Heartbeats the node's watch while `body` runs, as the API does while the node beats. */
async function whileAlive(client: Client, id: string, body: () => Promise<void>): Promise<void> {
  const alive = keepReservedNodeAlive(client, id);
  try {
    await body();
  } finally {
    alive.stop();
  }
}

const scenarios: Record<string, Scenario> = {
  /** escrow → active → the end timer fires → the node earns everything. */
  expired: {
    minutes: 10,
    async drive({ client, handle, id }) {
      await whileAlive(client, id, async () => {
        await handle.executeUpdate(reservationReadyUpdate);
        await handle.result();
      });
    },
  },
  /** Released early by the Engine under the prorated policy: the used time is paid, the rest refunded. */
  released: {
    minutes: 30,
    options: { earlyRelease: 'prorated' },
    async drive({ client, handle, id }) {
      await whileAlive(client, id, async () => {
        await handle.executeUpdate(reservationReadyUpdate);
        await sleep(500);
        await handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'training done', by: 'engine' }], updateId: 'release' });
      });
    },
  },
  /** Extended by 5 minutes (its own pot), then runs out: both pots are paid. */
  extended: {
    minutes: 10,
    async drive({ client, handle, id }) {
      await whileAlive(client, id, async () => {
        await handle.executeUpdate(reservationReadyUpdate);
        await handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 10 }] });
        await handle.result();
      });
    },
  },
  /** The node never beats: its watch times out → failed, penalized, the unused time refunded. */
  'node-lost': {
    minutes: 60,
    async drive({ handle }) {
      await handle.executeUpdate(reservationReadyUpdate);
      await handle.result();
    },
  },
  /**
   * The watch lapses while the heartbeat relay is down (patch liveness-confirmed): the node is found alive and
   * watched again; its next lapse is confirmed, and the reservation ends as lost.
   */
  'relay-lapse': {
    minutes: 60,
    async drive({ handle, world }) {
      world.aliveAfterLapse = 1;
      await handle.executeUpdate(reservationReadyUpdate);
      await handle.result();
    },
  },
  /**
   * An extension asked again while its escrow is on its way (a client that gave up waiting): the retry joins it
   * (patch extend-retry-joins), one pot; then released.
   */
  'extend-retried': {
    minutes: 60,
    async drive({ handle, world }) {
      await handle.executeUpdate(reservationReadyUpdate);
      world.escrowGate = new Gate();
      const first = handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 10 }] });
      await waitUntil(() => world.escrowCalls.length === 2, 10_000, 'the extension escrow to start');
      const retry = handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 10 }] });
      await sleep(300);
      world.escrowGate.open();
      await Promise.all([first, retry]);
      await handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'done', by: 'engine' }], updateId: 'release' });
      await handle.result();
    },
  },
  /**
   * The node is lost while an extension's escrow is on its way, and the Engine releases before it lands: the end
   * is still the loss (patch end-seen-first).
   */
  'lost-then-released': {
    minutes: 60,
    async drive({ handle, world }) {
      await handle.executeUpdate(reservationReadyUpdate);
      world.escrowGate = new Gate();
      const extension = handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 10 }] });
      await waitUntil(() => world.escrowCalls.length === 2, 10_000, 'the extension escrow to start');
      await sleep(FAST_RESERVATION_OPTIONS.nodeHeartbeatTimeoutMs + 1000);
      const released = handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'node gone', by: 'engine' }], updateId: 'release' });
      await sleep(300);
      world.escrowGate.open();
      await extension;
      await released;
      await handle.result();
    },
  },
  /** The node has no wallet: released (full) with its share owed; a wallet and a walletRegistered signal pay it. */
  owed: {
    minutes: 30,
    nodeWallet: false,
    async drive({ handle, world }) {
      await handle.executeUpdate(reservationReadyUpdate);
      await handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'done', by: 'both' }], updateId: 'release' });
      await handle.signal(walletRegisteredSignal);
      await waitUntil(() => world.settleCalls.length === 2, 10_000, 'the second (still owed) settlement');
      world.registerWallet('node-a');
      await handle.signal(walletRegisteredSignal);
    },
  },
  /**
   * Extended, then released early (prorated) to a node without a wallet: the first pot's share is owed, the
   * extension's (nothing earned) is refunded whole; each re-check settles only the owed pot (patch settlement-v2).
   */
  'owed-extended': {
    minutes: 30,
    nodeWallet: false,
    options: { earlyRelease: 'prorated' },
    async drive({ handle, world }) {
      await handle.executeUpdate(reservationReadyUpdate);
      await handle.executeUpdate(extendReservationUpdate, { args: [{ minutes: 10 }] });
      await handle.executeUpdate(releaseReservationUpdate, { args: [{ reason: 'done', by: 'engine' }], updateId: 'release' });
      await handle.signal(walletRegisteredSignal);
      await waitUntil(() => world.settleCalls.length === 3, 10_000, 'the re-check of the owed pot');
      world.registerWallet('node-a');
      await handle.signal(walletRegisteredSignal);
      await handle.result();
    },
  },
  /** Cancelled from Temporal by an operator while active: settled prorated, the run ends cancelled. */
  cancelled: {
    minutes: 30,
    cancelled: true,
    async drive({ client, handle, id }) {
      await whileAlive(client, id, async () => {
        await handle.executeUpdate(reservationReadyUpdate);
        await sleep(300);
        await handle.cancel();
      });
    },
  },
  /** ReserveNode gave up waiting while the escrow was in flight: the node is given back, the escrow refunded whole. */
  withdrawn: {
    minutes: 30,
    holdEscrow: true,
    async drive({ handle, world }) {
      await waitUntil(() => world.escrowCalls.length === 1, 10_000, 'the escrow to start');
      await handle.executeUpdate(withdrawReservationUpdate, { args: [{ reason: 'withdrawn: the escrow was not confirmed within 25 s' }] });
      world.escrowGate!.open();
      await handle.result();
    },
  },
};

async function record(env: Awaited<ReturnType<typeof createJobTestEnv>>, name: string): Promise<string> {
  const scenario = scenarios[name]!;
  const world = new FakeReservationWorld({ nodeWallets: scenario.nodeWallet === false ? [] : ['node-a'] });
  if (scenario.holdEscrow) world.escrowGate = new Gate();
  const taskQueue = uniqueReservationQueue(`record-${name}`);
  const id = reservationReplayId(name);
  const worker = await createReservationWorker(env.env, env.bundle, taskQueue, world);
  return runReservationWorkerUntil(worker, world, async () => {
    const handle = await startReservation(env.env.client, taskQueue, reservationSpec(id, { minutes: scenario.minutes }), {
      ...FAST_RESERVATION_OPTIONS,
      ...scenario.options,
    });
    await scenario.drive({ client: env.env.client, handle, id, world });
    const outcome = await handle.result().then(
      (receipt) => `${receipt.status}, paid ${receipt.paid}, refunded ${receipt.refunded}${receipt.owed ? ', owed' : ''}`,
      (err: unknown) => {
        if (!scenario.cancelled) throw err;
        return 'cancelled';
      },
    );
    const { events } = await handle.fetchHistory();
    const file = path.join(OUT_DIR, `${name}.json`);
    fs.writeFileSync(file, `${historyToJSON({ events })}\n`);
    return `${name}: ${outcome}; wrote ${path.relative(process.cwd(), file)} (${events?.length ?? 0} events)`;
  });
}

async function main(): Promise<void> {
  const wanted = process.argv.slice(2);
  const unknown = wanted.filter((n) => !(n in scenarios));
  if (unknown.length) throw new Error(`unknown scenario(s) ${unknown.join(', ')}; known: ${Object.keys(scenarios).join(', ')}`);
  const names = wanted.length ? wanted : Object.keys(scenarios);

  fs.mkdirSync(OUT_DIR, { recursive: true });
  const env = await createJobTestEnv(await ensureTemporalCli((m) => process.stderr.write(`${m}\n`)));
  try {
    for (const name of names) process.stdout.write(`${await record(env, name)}\n`);
  } finally {
    await env.env.teardown();
  }
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
