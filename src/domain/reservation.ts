import { estimateCostUnits } from './pricing';

/**
 * Reservations ("hotel room" model): an Engine holds a whole node for a time it pays up front.
 *
 * Money. The node's hourly price becomes units per hour with the one cost formula (src/domain/pricing.ts,
 * rounded up to a unit); reserving escrows `ceil(units_per_hour × minutes / 60)` into the reservation's own escrow account; each extension escrows its own pot the
 * same way. When the reservation ends, what the node earned goes 90/10 to the node and the platform and the
 * rest of every pot goes back to whoever funded it:
 *
 * | how it ended                       | the node earns                                              |
 * |------------------------------------|-------------------------------------------------------------|
 * | ran to its end (expired)           | everything escrowed                                         |
 * | released early, policy `full`      | everything escrowed (the default: the Engine promises "no refund for early checkout", and the node turned other work away for the whole term) |
 * | released early, policy `prorated`  | ceil(units_per_hour × seconds used / 3600), at most everything escrowed |
 * | node lost mid-reservation          | the same for the time until its last sign of life; the user gets the unused time back and the node a recorded `node_lost` reputation penalty |
 * | withdrawn before it started        | nothing: ReserveNode gave up waiting for the escrow and answered with an error, so whatever reaches the escrow goes back whole |
 *
 * The Engine heartbeats every 30 s; one silent for `engineTimeoutMs` (60 s) is shown as disconnected and the
 * reservation runs on until its end: the node is still held for the user, who can reconnect.
 */
export const RESERVATION_STATUSES = ['pending', 'active', 'completing', 'completed', 'cancelled', 'expired', 'failed'] as const;
export type ReservationStatus = (typeof RESERVATION_STATUSES)[number];

export const MIN_MINUTES = 10;
/** ReserveNode takes 10 minutes to 24 hours, as the original server did (the Engine offers 10–480). */
export const MAX_MINUTES = 1440;
/** The longest a reservation can run with its extensions. */
export const MAX_TOTAL_MINUTES = 1440;
/** p2p_token_expires = reservation end + this. */
export const TOKEN_GRACE_S = 300;
/** EngineHeartbeat suggests extending when fewer reserved minutes than this are left and training is active. */
export const EXTEND_HINT_MINUTES = 5;

export type EarlyReleasePolicy = 'full' | 'prorated';
export const EARLY_RELEASE_POLICIES: readonly EarlyReleasePolicy[] = ['full', 'prorated'];

/** Why a reservation ended, which decides what the node earns. */
export type EndKind = 'expired' | 'released' | 'node_lost' | 'withdrawn';

/** The node's hourly price in smallest units (the cost formula for one hour, rounded up to a unit). */
export function unitsPerHour(pricePerHour: number, decimals: number): bigint {
  return estimateCostUnits(pricePerHour, 3600, decimals, 0);
}

/** The cost of `seconds` of a reservation at `perHour` units an hour, rounded up to a whole unit. */
export function costOfSeconds(perHour: bigint, seconds: number): bigint {
  const s = BigInt(Math.max(0, Math.ceil(seconds)));
  return (perHour * s + 3599n) / 3600n;
}

/** Escrow for `minutes` at `perHour` units an hour. */
export const reservationCost = (perHour: bigint, minutes: number): bigint => costOfSeconds(perHour, minutes * 60);

/**
 * What the node earns, in smallest units, given everything escrowed and how the reservation ended.
 * `usedSeconds` is the time from the start to the end (release) or to the node's last sign of life (loss).
 */
export function earnedUnits(p: { kind: EndKind; policy: EarlyReleasePolicy; escrowed: bigint; perHour: bigint; usedSeconds: number }): bigint {
  if (p.kind === 'withdrawn') return 0n;
  if (p.kind === 'expired') return p.escrowed;
  if (p.kind === 'released' && p.policy === 'full') return p.escrowed;
  const cost = costOfSeconds(p.perHour, p.usedSeconds);
  return cost < p.escrowed ? cost : p.escrowed;
}

/** Splits what the node earned over the pots in the order they were escrowed (first pot first). */
export function allocateOverPots(pots: readonly bigint[], earned: bigint): bigint[] {
  let left = earned;
  return pots.map((pot) => {
    const take = left < pot ? left : pot;
    left -= take;
    return take;
  });
}

/** The payment pot of a reservation's first escrow (the reservation id) or of its n-th extension (n ≥ 1). */
export const potId = (reservationId: string, extension: number) => (extension === 0 ? reservationId : `${reservationId}/ext-${extension}`);

/** Statuses in which the reservation holds its node. */
export const HOLDING_STATUSES: ReservationStatus[] = ['pending', 'active'];
export const isHolding = (s: ReservationStatus) => HOLDING_STATUSES.includes(s);

/** reservation.proto ReservationStatus numbers. */
export const RESERVATION_STATUS_CODE: Record<ReservationStatus, number> = {
  pending: 1,
  active: 2,
  completing: 4,
  completed: 5,
  cancelled: 6,
  expired: 7,
  failed: 8,
};
