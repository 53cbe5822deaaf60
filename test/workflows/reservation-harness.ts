/**
 * Harness for running the real reservation workflow against a Temporal server with fake activities: an in-memory
 * ledger of reservation pots (escrow, 90/10 settlement, refund, a node's share owed while it has no wallet) and a
 * log of every store call. Shared by the workflow tests and by scripts/record-reservation-histories.ts, so it
 * must not use jest globals. The dev server, runtime logger and polling helpers are the job harness's.
 */
import { CompleteAsyncError } from '@temporalio/activity';
import {
  WorkflowIdConflictPolicy,
  WorkflowIdReusePolicy,
  type Client,
  type WorkflowHandleWithFirstExecutionRunId,
} from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { createReservationActivities, PotOutcome, ReservationEnd } from '../../src/activities/reservations';
import type { LegReceipt } from '../../src/chain/settlement';
import { splitPayment } from '../../src/domain/money';
import { reservationCost } from '../../src/domain/reservation';
import { reservationQuery, type ReservationView } from '../../src/workflows/reservation-messages';
import {
  RESERVATION_WATCH_ID,
  reservationWorkflow,
  type ReservationOptions,
  type ReservationSpec,
} from '../../src/workflows/reservation-workflow';
import { createJobWorker, Gate, heartbeatActivity, runWorkerUntil, sleep, uniqueTaskQueue, type EscrowRefusalType, type Heartbeats } from './job-harness';

export type ReservationActivities = ReturnType<typeof createReservationActivities>;
export type ReservationHandle = WorkflowHandleWithFirstExecutionRunId<typeof reservationWorkflow>;

/** The platform's share of what a node earns, as the settlement is configured (10 %). */
export const PLATFORM_FEE_BPS = 1000n;

/** An hourly price that does not divide evenly, so every rounding of src/domain/reservation.ts shows. */
export const PER_HOUR_UNITS = 1_234_567n;

export const USER_WALLET = 'user-wallet';

/**
 * Short settings so real-time tests stay fast: a reserved minute lasts 150 ms (a 10-minute reservation runs
 * 1.5 s) and is billed as a real minute; a node silent for 1.5 s is lost. Tests override what they exercise.
 */
export const FAST_RESERVATION_OPTIONS: ReservationOptions = {
  nodeHeartbeatTimeoutMs: 1500,
  earlyRelease: 'full',
  minuteMs: 150,
};

/** A reservation of `nodeId` for `minutes` at PER_HOUR_UNITS, escrowing the cost of its term. */
export function reservationSpec(reservationId: string, overrides: Partial<ReservationSpec> = {}): ReservationSpec {
  const minutes = overrides.minutes ?? 10;
  return {
    reservationId,
    nodeId: 'node-a',
    userWallet: USER_WALLET,
    minutes,
    perHourUnits: PER_HOUR_UNITS.toString(),
    escrowUnits: reservationCost(PER_HOUR_UNITS, minutes).toString(),
    ...overrides,
  };
}

export const walletOf = (nodeId: string) => `wallet:${nodeId}`;

/** One pot on the fake ledger: its escrow, and once settled the split it was settled with. */
export interface FakePot {
  potId: string;
  amount: bigint;
  fundedBy: string;
  split?: { pay: bigint; node: bigint; platform: bigint; refund: bigint };
}

/** The store activities the workflow calls (local activities), by name, with their inputs. */
export interface StoreInputs {
  activateReservation: Parameters<ReservationActivities['activateReservation']>[0];
  recordExtension: Parameters<ReservationActivities['recordExtension']>[0];
  endHold: Parameters<ReservationActivities['endHold']>[0];
  finishReservation: ReservationEnd;
  penalizeLostNode: Parameters<ReservationActivities['penalizeLostNode']>[0];
}

export type StoreCall = { [N in keyof StoreInputs]: { name: N; input: StoreInputs[N] } }[keyof StoreInputs];

/**
 * The outside world of one reservation as its activities see it: a ledger that escrows each pot once, settles
 * each pot's split once (the first call decides it, like the chain settlement) and owes the node its share while
 * it has no wallet; and logs of every call in order.
 */
export class FakeReservationWorld {
  readonly pots = new Map<string, FakePot>();
  /** Completed money legs, in ledger order (escrow, release_node, release_platform, refund). */
  readonly ledger: (LegReceipt & { potId: string })[] = [];
  readonly escrowCalls: { potId: string; amount: string; owner: string }[] = [];
  readonly settleCalls: { potId: string; nodeId: string; payUnits: string }[] = [];
  /** What each settle call reported, in call order. */
  readonly settleOutcomes: PotOutcome[] = [];
  readonly storeCalls: StoreCall[] = [];
  readonly watchCalls: { id: string; nodeId: string; at: number }[] = [];
  /** Ordered log of notable moments, for "X happened before Y" assertions; tests may push their own. */
  readonly timeline: string[] = [];

  /** Held while set: settleReservationPot waits for the gate before touching the ledger. */
  settleGate: Gate | undefined;
  escrowGate: Gate | undefined;
  /** Set: the reservation row is no longer pending when the escrow lands (ReserveNode gave it up), so it is not activated. */
  givenUp = false;
  /** Set: every escrow from now on is refused for good (a non-retryable ApplicationFailure of this type). */
  escrowRefusal: { type: EscrowRefusalType; message: string } | undefined;

  /** Registered wallet of each node; a node without one is owed its share. */
  private readonly wallets = new Map<string, string>();

  constructor(opts: { nodeWallets?: string[] } = { nodeWallets: ['node-a'] }) {
    for (const id of opts.nodeWallets ?? []) this.registerWallet(id);
  }

  registerWallet(nodeId: string, address = walletOf(nodeId)): void {
    this.wallets.set(nodeId, address);
  }

  /** The store calls of one activity, inputs only. */
  calls<N extends keyof StoreInputs>(name: N): StoreInputs[N][] {
    return this.storeCalls.filter((c) => c.name === name).map((c) => c.input as StoreInputs[N]);
  }

  legsOf(potId: string): string[] {
    return this.ledger.filter((l) => l.potId === potId).map((l) => l.leg);
  }

  /** Opens every gate, so a worker shutting down is not held by an activity waiting at one. */
  openGates(): void {
    for (const gate of [this.settleGate, this.escrowGate]) gate?.open();
  }

  private log(call: StoreCall): void {
    this.storeCalls.push(structuredClone(call));
    this.timeline.push(`${call.name}:${'status' in call.input ? call.input.status : call.input.id}`);
  }

  /** What the settlement reports for a settled pot: the node's share is owed until its leg is on the ledger. */
  private outcome(pot: FakePot): PotOutcome {
    const split = pot.split!;
    const paidNode = this.ledger.some((l) => l.potId === pot.potId && l.leg === 'release_node');
    return {
      potId: pot.potId,
      paid: split.pay.toString(),
      nodeAmount: split.node.toString(),
      refunded: split.refund.toString(),
      owed: split.pay > 0n && !paidNode,
      paymentTx: paidNode ? `ledger:${pot.potId}/release_node` : '',
      refundTx: split.refund > 0n ? `ledger:${pot.potId}/refund` : '',
    };
  }

  /** confirmNodeLost calls, and how many more of them find the node alive (its lapse the relay's). */
  readonly confirmCalls: { nodeId: string; silentForMs: number; aliveForMs?: number }[] = [];
  aliveAfterLapse = 0;

  readonly activities: ReservationActivities & { confirmNodeLost(input: { nodeId: string; silentForMs: number; aliveForMs?: number }): Promise<{ lost: boolean; why: string }> } = {
    confirmNodeLost: async (input) => {
      this.confirmCalls.push(input);
      this.timeline.push('confirm-lost');
      if (this.aliveAfterLapse > 0) {
        this.aliveAfterLapse -= 1;
        return { lost: false, why: 'its heartbeats reached the server: the relay to its watch lapsed, not the node' };
      }
      return { lost: true, why: '' };
    },
    escrowReservationPot: async (input) => {
      this.escrowCalls.push({ ...input });
      await this.escrowGate?.opened;
      if (this.escrowRefusal) {
        this.timeline.push(`escrow-refused:${input.potId}`);
        throw ApplicationFailure.create({ ...this.escrowRefusal, nonRetryable: true });
      }
      let pot = this.pots.get(input.potId);
      if (!pot) {
        pot = { potId: input.potId, amount: BigInt(input.amount), fundedBy: input.owner };
        this.pots.set(input.potId, pot);
        this.ledger.push({ potId: input.potId, leg: 'escrow', amount: input.amount, to: `escrow:${input.potId}`, txRef: `ledger:${input.potId}/escrow` });
        this.timeline.push(`escrow:${input.potId}`);
      }
      return { leg: 'escrow', amount: pot.amount.toString(), to: `escrow:${pot.potId}`, txRef: `ledger:${pot.potId}/escrow`, fundedBy: pot.fundedBy };
    },
    settleReservationPot: async (input) => {
      this.settleCalls.push({ ...input });
      await this.settleGate?.opened;
      const pot = this.pots.get(input.potId);
      if (!pot) throw ApplicationFailure.nonRetryable(`pot ${input.potId} has no escrow`, 'EscrowMissing');
      if (!pot.split) {
        // The first call decides the split; a later one (a retry, or after the node registers a wallet) finishes it.
        const asked = BigInt(input.payUnits);
        const pay = asked < 0n ? 0n : asked > pot.amount ? pot.amount : asked;
        const { node, platform } = splitPayment(pay, PLATFORM_FEE_BPS);
        pot.split = { pay, node, platform, refund: pot.amount - pay };
        if (pot.split.refund > 0n) {
          this.ledger.push({ potId: pot.potId, leg: 'refund', amount: pot.split.refund.toString(), to: pot.fundedBy, txRef: `ledger:${pot.potId}/refund` });
        }
      }
      const { pay, node, platform } = pot.split;
      const wallet = this.wallets.get(input.nodeId);
      const paidNode = this.ledger.some((l) => l.potId === pot.potId && l.leg === 'release_node');
      if (pay > 0n && !paidNode && wallet) {
        this.ledger.push(
          { potId: pot.potId, leg: 'release_node', amount: node.toString(), to: wallet, txRef: `ledger:${pot.potId}/release_node` },
          { potId: pot.potId, leg: 'release_platform', amount: platform.toString(), to: 'platform:treasury', txRef: `ledger:${pot.potId}/release_platform` },
        );
      }
      const outcome = this.outcome(pot);
      this.settleOutcomes.push(outcome);
      this.timeline.push(`settle:${pot.potId}:${outcome.owed ? 'owed' : 'done'}`);
      return outcome;
    },
    activateReservation: async (input) => {
      this.log({ name: 'activateReservation', input });
      return { activated: !this.givenUp };
    },
    recordExtension: async (input) => this.log({ name: 'recordExtension', input }),
    endHold: async (input) => this.log({ name: 'endHold', input }),
    finishReservation: async (input) => this.log({ name: 'finishReservation', input }),
    penalizeLostNode: async (input) => this.log({ name: 'penalizeLostNode', input }),
    watchReservedNode: async (input) => {
      this.watchCalls.push({ ...input, at: Date.now() });
      this.timeline.push('watch');
      throw new CompleteAsyncError();
    },
  };
}

export const uniqueReservationQueue = (label: string) => uniqueTaskQueue(label, 'reservations');
export { createJobWorker as createReservationWorker, runWorkerUntil as runReservationWorkerUntil };

/** Starts a reservation workflow as ReserveNode does (src/services/reservation-service.ts): the id is the reservation's. */
export async function startReservation(
  client: Client,
  taskQueue: string,
  spec: ReservationSpec,
  options: ReservationOptions,
): Promise<ReservationHandle> {
  return client.workflow.start(reservationWorkflow, {
    workflowId: spec.reservationId,
    taskQueue,
    args: [{ spec, options }],
    workflowIdConflictPolicy: WorkflowIdConflictPolicy.FAIL,
    workflowIdReusePolicy: WorkflowIdReusePolicy.REJECT_DUPLICATE,
  });
}

/**
 * Polls the reservation query until `predicate` holds.
 * @throws Error with the last view seen when it does not hold within `timeoutMs`.
 */
export async function waitForReservation(
  handle: ReservationHandle,
  predicate: (view: ReservationView) => boolean,
  timeoutMs = 10_000,
  what = 'the expected reservation state',
): Promise<ReservationView> {
  const deadline = Date.now() + timeoutMs;
  let last: ReservationView | undefined;
  for (;;) {
    try {
      last = await handle.query(reservationQuery);
      if (predicate(last)) return last;
    } catch {
      // no worker has picked the workflow up yet
    }
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last view: ${JSON.stringify(last)}`);
    await sleep(50);
  }
}

/** Heartbeats the reservation's watch activity, as the API does for every beat of the node (with its `at`). */
export function keepReservedNodeAlive(client: Client, reservationId: string, everyMs = 200): Heartbeats {
  return heartbeatActivity(client, { workflowId: reservationId, activityId: RESERVATION_WATCH_ID }, everyMs, () => ({ source: 'heartbeat', at: Date.now() }));
}
