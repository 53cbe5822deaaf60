import { CompleteAsyncError } from '@temporalio/activity';
import type { ChainSettlement, LegReceipt, PotOutcome } from '../chain/settlement';
import type { Db } from '../db/client';
import { excusedIfBeatAfter } from '../domain/reputation';
import * as nodesRepo from '../db/nodes-repo';
import * as repo from '../db/reservations-repo';
import { heartbeating } from './payments';
import type { ReservationStatus } from '../domain/reservation';

export type { PotOutcome };

export interface ReservationActivityDeps {
  db: Db;
  settlement: ChainSettlement;
  /** Wakes waiting jobs that could use these nodes (they came free). */
  wakeQueued(nodeIds: string[]): Promise<void>;
  /** A reservation's node watch times out after this long without a sign of life. */
  nodeHeartbeatTimeoutMs: number;
}

/** What the workflow records when a reservation ends. */
export interface ReservationEnd {
  id: string;
  nodeId: string;
  status: ReservationStatus;
  reason: string;
  endedAt: number;
  timeUsedSeconds: number;
  paid: string;
  refunded: string;
  paymentTx: string;
  refundTx: string;
}

/** Activities of reservation workflows: the reservation row, the node hold, liveness and the money. */
export function createReservationActivities(deps: ReservationActivityDeps) {
  const { db, settlement } = deps;

  /** Escrows one pot of the reservation (the first, or an extension's) from the user's allowance or the payer. */
  async function escrowReservationPot(input: { potId: string; amount: string; owner: string }): Promise<LegReceipt & { fundedBy: string }> {
    return heartbeating(() => settlement.escrowPot(input));
  }

  /** Pays the node its share of one pot (90/10) and refunds the rest of it, each leg exactly once. */
  async function settleReservationPot(input: { potId: string; nodeId: string; payUnits: string }): Promise<PotOutcome> {
    return heartbeating(() => settlement.settlePot(input));
  }

  /**
   * The escrow is on chain: the reservation starts now and runs `minutes` — if it is still pending. A
   * reservation ReserveNode gave up on (its start looked failed, so it released the node and recorded the
   * failure) is not revived: @returns activated false, and the workflow refunds it.
   */
  async function activateReservation(input: { id: string; startAt: number; endAt: number; escrowAccount: string; fundedBy: string }): Promise<{ activated: boolean }> {
    const activated = await repo.activatePending(db, input.id, {
      startAt: new Date(input.startAt),
      endAt: new Date(input.endAt),
      escrowAccount: input.escrowAccount,
      fundedBy: input.fundedBy,
    });
    return { activated };
  }

  /** An extension's escrow is on chain: the reservation runs longer. */
  async function recordExtension(input: { id: string; extensions: number; minutes: number; escrowUnits: string; endAt: number }): Promise<void> {
    await repo.recordExtension(db, input.id, {
      extensions: input.extensions,
      durationMinutes: input.minutes,
      escrowUnits: BigInt(input.escrowUnits),
      endAt: new Date(input.endAt),
    });
  }

  /** The reservation is over: the node is free again (its money may still be settling). */
  async function endHold(input: { id: string; nodeId: string; status: ReservationStatus; reason: string }): Promise<void> {
    await db.transaction(async (tx) => {
      await repo.updateReservation(tx, input.id, { status: input.status, endReason: input.reason });
      await repo.releaseHold(tx, input.id, input.nodeId);
    });
    await deps.wakeQueued([input.nodeId]);
  }

  /** Records how the reservation ended and what moved. */
  async function finishReservation(e: ReservationEnd): Promise<void> {
    await db.transaction(async (tx) => {
      await repo.updateReservation(tx, e.id, {
        status: e.status,
        endReason: e.reason,
        endedAt: new Date(e.endedAt),
        timeUsedSeconds: e.timeUsedSeconds,
        paidUnits: BigInt(e.paid),
        refundUnits: BigInt(e.refunded),
        paymentTx: e.paymentTx || null,
        // Kept when the reconciliation paid a refund that had waited (a later record of the end has none).
        ...(e.refundTx && { refundTx: e.refundTx }),
      });
      await repo.releaseHold(tx, e.id, e.nodeId);
    });
  }

  /**
   * The node went silent mid-reservation: a recorded reputation penalty that cites the reservation (none when
   * its heartbeats kept reaching the server: then the silence was the server's).
   */
  async function penalizeLostNode(input: { id: string; nodeId: string; reason: string }): Promise<void> {
    const now = new Date();
    await nodesRepo.recordReputationEvent(db, {
      nodeId: input.nodeId,
      jobId: input.id,
      kind: 'node_lost',
      reason: input.reason,
      now,
      beatAfterExcuses: excusedIfBeatAfter(now, deps.nodeHeartbeatTimeoutMs),
    });
  }

  /**
   * Watches the reserved node. Completes asynchronously: the API heartbeats it whenever the node beats, so a
   * silent node surfaces as this activity's heartbeat timeout; the workflow cancels it when the reservation ends.
   */
  async function watchReservedNode(_input: { id: string; nodeId: string }): Promise<void> {
    throw new CompleteAsyncError();
  }

  return {
    escrowReservationPot,
    settleReservationPot,
    activateReservation,
    recordExtension,
    endHold,
    finishReservation,
    penalizeLostNode,
    watchReservedNode,
  };
}
