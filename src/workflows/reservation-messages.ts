import { defineQuery, defineUpdate } from '@temporalio/workflow';
import type { ReservationStatus } from '../domain/reservation';

/** Failure types of reservation updates, mapped to protocol errors by the API. */
export const ReservationRejections = {
  /** The reservation has ended (or is ending): 410. */
  ended: 'ReservationEnded',
  /** The request does not fit the reservation (for example too many minutes): 400. */
  invalid: 'ReservationInvalid',
  /** Its escrow was refused for good (no allowance, no funds): 402. */
  escrowRefused: 'EscrowRefused',
  /** The same extension was asked too often while its escrow is on its way: 409, ask again once it is answered. */
  busy: 'ReservationBusy',
} as const;

export interface ReservationView {
  id: string;
  status: ReservationStatus;
  nodeId: string;
  startAt: number;
  endAt: number;
  minutes: number;
  escrowUnits: string;
  pots: { potId: string; units: string; minutes: number }[];
  lastReason: string;
  /** Once the end is decided and its money is moving: what it settles to (smallest units). */
  settling?: { status: ReservationStatus; timeUsedSeconds: number; paid: string; refunded: string };
}

/**
 * ReserveNode waits on this: resolves once the first escrow is on chain, or with why it is not (402: the escrow
 * was refused; 503: the reservation was withdrawn before its escrow was confirmed).
 */
export type ReadyResult =
  | { ok: true; startAt: number; endAt: number; escrowAccount: string; escrowUnits: string; escrowTx: string }
  | { ok: false; code: number; message: string };

export interface ExtendResult {
  endAt: number;
  additionalUnits: string;
  escrowTx: string;
}

/** What ending a reservation moved. Amounts are smallest units. */
export interface ReleaseReceipt {
  status: ReservationStatus;
  timeUsedSeconds: number;
  paid: string;
  /** The node's share of `paid`; the platform got the rest. */
  nodeAmount: string;
  refunded: string;
  paymentTx: string;
  refundTx: string;
  /** The node's share waits for it to register a wallet. */
  owed: boolean;
}

export const reservationReadyUpdate = defineUpdate<ReadyResult>('ready');
/**
 * ReserveNode gave up waiting for the first escrow and is about to answer with an error. Answers how the
 * reservation stands at that moment: ready (the escrow landed first, so the reservation goes on), refused, or
 * withdrawn — the node is given back at once and whatever reaches the escrow later is refunded whole.
 */
export const withdrawReservationUpdate = defineUpdate<ReadyResult, [{ reason: string }]>('withdraw');
export const extendReservationUpdate = defineUpdate<ExtendResult, [{ minutes: number }]>('extend');
export const releaseReservationUpdate = defineUpdate<ReleaseReceipt, [{ reason: string; by: 'engine' | 'node' | 'both' | 'operator' }]>('release');
export const reservationQuery = defineQuery<ReservationView>('reservation');
