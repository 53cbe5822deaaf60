import {
  ActivityCancellationType,
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  patched,
  proxyActivities,
  proxyLocalActivities,
  setCurrentDetails,
  setHandler,
  TimeoutFailure,
  upsertSearchAttributes,
  allHandlersFinished,
} from '@temporalio/workflow';
import { TimeoutType } from '@temporalio/common';
import type { createReservationActivities, PotOutcome } from '../activities/reservations';
import { PAYMENT_NON_RETRYABLE } from '../domain/payments';
import {
  allocateOverPots,
  earnedUnits,
  MAX_MINUTES,
  MAX_TOTAL_MINUTES,
  MIN_MINUTES,
  potId,
  reservationCost,
  type EarlyReleasePolicy,
  type EndKind,
  type ReservationStatus,
} from '../domain/reservation';
import { confirmLoss, watchLapsed } from './liveness';
import { walletRegisteredSignal } from './messages';
import {
  extendReservationUpdate,
  releaseReservationUpdate,
  reservationQuery,
  reservationReadyUpdate,
  ReservationRejections,
  withdrawReservationUpdate,
  type ExtendResult,
  type ReadyResult,
  type ReleaseReceipt,
  type ReservationView,
} from './reservation-messages';
import { JobSearchAttributes as SA } from './search-attributes';

type ReservationActivities = ReturnType<typeof createReservationActivities>;

/**
 * Patch: the settlement as of this version — time used runs to the moment the release arrived, and an owed
 * payment's re-check settles only the pots still owed.
 */
export const SETTLEMENT_V2 = 'settlement-v2';
/**
 * Patch: the end is what happened first. A node lost while an extension's escrow was on its way, then released by
 * the Engine before the escrow landed, ends as lost (refunded from its last sign of life, penalized), not released.
 */
export const END_SEEN_FIRST = 'end-seen-first';
/**
 * Patch: a lapsed watch is confirmed before the node counts as lost (confirmNodeLost, as for jobs): a lapse while
 * the API's heartbeat relay was down (an API restart, a Temporal or Postgres outage) no longer ends the reservation.
 */
export const LIVENESS_CONFIRMED = 'liveness-confirmed';

/** The longest a confirmation watches a node from Postgres after repeated lapses of the relay (see hold()). */
const RELAY_LAPSE_WATCH_MAX_MS = 10 * 60_000;

/**
 * Patch (asked where it applies): an extension of as many minutes as one still on its way is that one's retry (a
 * client that gave up waiting for its escrow): it gets its outcome, and nothing is escrowed again. Once answered,
 * the same request is a new extension.
 */
export const EXTEND_RETRY_JOINS = 'extend-retry-joins';
/**
 * A watch that ran out its own time limit (not a lapse) after the term's end is a term that ran out, not a lost
 * node: with the worker away past the end (or an extension's escrow held up) both come in one task. Asked then only.
 */
export const TERM_BEFORE_WATCH_LIMIT = 'term-before-watch-limit';
/**
 * Retries that may join one extension on its way. Each is an update in flight until the escrow answers, and a
 * workflow takes only so many at once: retries without end while the chain is away must not leave no room for the
 * release.
 */
const MAX_JOINED_RETRIES = 2;

/** Extensions refused for want of funds after which a reservation takes one more only per REFUSAL_COOLDOWN_MS. */
const MAX_REFUSED_EXTENSIONS = 5;
const REFUSAL_COOLDOWN_MS = 10 * 60_000;

export interface ReservationSpec {
  reservationId: string;
  nodeId: string;
  userWallet: string;
  minutes: number;
  /** The node's hourly price when reserved, smallest units per hour. */
  perHourUnits: string;
  /** The first escrow: cost of `minutes`, smallest units. */
  escrowUnits: string;
}

/** Settings fixed when the reservation starts, so a config change never alters a running one's replay. */
export interface ReservationOptions {
  /** The node is lost when silent this long (its watch activity's heartbeat timeout). */
  nodeHeartbeatTimeoutMs: number;
  earlyRelease: EarlyReleasePolicy;
  /** Length of one reserved minute: 60,000 ms, except where tests and demos shorten time. */
  minuteMs: number;
}

export interface ReservationWorkflowInput {
  spec: ReservationSpec;
  options: ReservationOptions;
}

/** Activity id of the watch over the reserved node; the API heartbeats it by this id. */
export const RESERVATION_WATCH_ID = 'watch-node';

const store = proxyLocalActivities<ReservationActivities>({
  startToCloseTimeout: '10 seconds',
  // Past the SDK's local retry threshold (1 minute) a retry waits on a workflow timer, not inside a workflow
  // task extended every few seconds (three history events each): a long Postgres outage cannot fill the history.
  retry: { initialInterval: '200 milliseconds', backoffCoefficient: 2, maximumInterval: '5 minutes' },
});

const money = proxyActivities<ReservationActivities>({
  startToCloseTimeout: '3 minutes',
  heartbeatTimeout: '15 seconds',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '1 minute', nonRetryableErrorTypes: PAYMENT_NON_RETRYABLE },
});

/**
 * An owed payment is retried after an hour even without a wallet registration signal, then ever less often (up to
 * weekly), so a node that never registers a wallet does not grow the history without end.
 */
const OWED_RECHECK_MS = 3_600_000;
const OWED_RECHECK_MAX_MS = 7 * 24 * 3_600_000;

/** An extension on its way, and the retries waiting for its answer. */
interface ExtensionOnItsWay {
  joiners: { resolve(result: ExtendResult): void; fail(err: unknown): void }[];
}

interface Pot {
  potId: string;
  units: string;
  minutes: number;
}

/**
 * One reservation of a whole node, from escrow to settlement: escrow the price of the term → hold the node
 * (taken by ReserveNode, given back here) → await release, extensions and node loss, with the end of the term
 * as a durable timer → pay the node 90/10 for what it earned and refund the rest (src/domain/reservation.ts).
 * The workflow id is the reservation id. Engine heartbeats never reach it (they update Postgres only), so
 * its history stays a few dozen events however long the reservation runs.
 */
export async function reservationWorkflow(input: ReservationWorkflowInput): Promise<ReleaseReceipt> {
  const { spec, options } = input;
  // Asked once, at the start of a run (the answer must not depend on where a workflow task ended): runs started
  // before this patch bill early releases to when settling began, and re-settle every pot at each re-check of an
  // owed payment.
  const settlementV2 = patched(SETTLEMENT_V2);
  const endSeenFirst = patched(END_SEEN_FIRST);
  const livenessConfirmed = patched(LIVENESS_CONFIRMED);
  const id = spec.reservationId;
  const perHour = BigInt(spec.perHourUnits);
  let status: ReservationStatus = 'pending';
  let ready: ReadyResult | undefined;
  let startAt = 0;
  let endAt = 0;
  let minutes = spec.minutes;
  const pots: Pot[] = [];
  let nextPot = 1;
  let extending = 0;
  let pendingMinutes = 0;
  /** Extensions on their way, by minutes asked, with the retries that joined each (EXTEND_RETRY_JOINS). */
  const extensionsOnTheirWay = new Map<number, ExtensionOnItsWay>();
  /** Extensions whose escrow was refused, and when the last was: see the extension's validator. */
  let refusedExtensions = 0;
  let lastRefusalAt = 0;
  let release: { reason: string; by: 'engine' | 'node' | 'both' | 'operator' } | undefined;
  /** When the release came (workflow time): the term is billed up to it, not up to when settling could start. */
  let releasedAt: number | undefined;
  const requestRelease = (r: NonNullable<typeof release>) => {
    if (release) return;
    release = r;
    releasedAt = Date.now();
  };
  let receipt: ReleaseReceipt | undefined;
  let settling: ReservationView['settling'];
  let lastReason = 'reserved';
  let walletRegistered = false;
  /** The first escrow has come back (landed or refused): from then on the reservation can no longer be withdrawn. */
  let firstEscrowDone = false;
  /** Why ReserveNode withdrew the reservation before its escrow was confirmed. */
  let withdrawn: string | undefined;

  // ---- messages -------------------------------------------------------------------------------
  const ended = () => receipt !== undefined || release !== undefined || (ready !== undefined && !ready.ok);
  const reject = (type: string, message: string) => ApplicationFailure.create({ type, message, nonRetryable: true });

  setHandler(reservationQuery, () => view());
  setHandler(walletRegisteredSignal, () => {
    walletRegistered = true;
  });
  setHandler(reservationReadyUpdate, async () => {
    await condition(() => ready !== undefined);
    return ready!;
  });
  setHandler(withdrawReservationUpdate, async ({ reason }) => {
    // Decided in one step: once the first escrow has come back, the reservation stands (or fails) as the script
    // decides; before that it is withdrawn, and the script refunds whatever the escrow in flight brings in.
    if (!firstEscrowDone) {
      withdrawn = reason || 'withdrawn before its escrow was confirmed';
      ready = { ok: false, code: 503, message: withdrawn };
      status = 'cancelled';
      lastReason = withdrawn;
      publish();
      // The node is free for another reservation now, not once the escrow in flight has settled.
      await store.endHold({ id, nodeId: spec.nodeId, status, reason: withdrawn });
    }
    await condition(() => ready !== undefined);
    return ready!;
  });
  setHandler(
    extendReservationUpdate,
    // The body runs exactly as before the patch when no retry joins it (an async handler returning its result):
    // recorded histories replay its commands in the same order.
    async ({ minutes: extra }) => {
      // A client that gave up waiting asks again: the same extension, not a second one paid for twice.
      const onItsWay = extensionsOnTheirWay.get(extra);
      if (onItsWay && patched(EXTEND_RETRY_JOINS)) {
        return new Promise<ExtendResult>((resolve, fail) => onItsWay.joiners.push({ resolve, fail }));
      }
      const n = nextPot++;
      const pot: Pot = { potId: potId(id, n), units: reservationCost(perHour, extra).toString(), minutes: extra };
      // Retries join it from here on; whatever ends it answers them.
      const entry: ExtensionOnItsWay | undefined = onItsWay ? undefined : { joiners: [] };
      if (entry) extensionsOnTheirWay.set(extra, entry);
      const answer = (give: (j: ExtensionOnItsWay['joiners'][number]) => void) => {
        if (!entry) return;
        if (extensionsOnTheirWay.get(extra) === entry) extensionsOnTheirWay.delete(extra);
        for (const joiner of entry.joiners) give(joiner);
      };
      extending += 1;
      pendingMinutes += extra;
      try {
        const escrow = await escrowPot(pot);
        if (typeof escrow === 'string') {
          refusedExtensions += 1;
          lastRefusalAt = Date.now();
          throw reject(ReservationRejections.escrowRefused, escrow);
        }
        pots.push(pot);
        minutes += extra;
        endAt += extra * options.minuteMs;
        lastReason = `extended by ${extra} min`;
        await store.recordExtension({ id, extensions: pots.length - 1, minutes, escrowUnits: escrowed().toString(), endAt });
        publish();
        const result = { endAt, additionalUnits: pot.units, escrowTx: escrow.txRef };
        answer((j) => j.resolve(result));
        return result;
      } catch (err) {
        answer((j) => j.fail(err));
        throw err;
      } finally {
        extending -= 1;
        pendingMinutes -= extra;
      }
    },
    {
      validator: ({ minutes: extra }) => {
        if (ended() || status !== 'active') throw reject(ReservationRejections.ended, `reservation ${id} is ${status === 'pending' ? 'not active yet' : 'over'}`);
        const onItsWay = extensionsOnTheirWay.get(extra);
        if (onItsWay && onItsWay.joiners.length >= MAX_JOINED_RETRIES) {
          throw reject(ReservationRejections.busy, `an extension of ${extra} min of reservation ${id} is still being escrowed: ask again once it is answered`);
        }
        if (onItsWay) return; // answered with the outcome of the extension it repeats
        // One extension at a time: two whose records land in one workflow task can replay in another order (the
        // SDK resolves their local activities together on replay), which Temporal takes for nondeterminism.
        if (extending > 0) {
          throw reject(ReservationRejections.busy, `another extension of reservation ${id} is still being escrowed: ask again once it is answered`);
        }
        // At least a reservation's shortest term: each extension is a pot, settled on its own (history, fees).
        if (!Number.isInteger(extra) || extra < MIN_MINUTES || extra > MAX_MINUTES) {
          throw reject(ReservationRejections.invalid, `additional_minutes: must be a whole number from ${MIN_MINUTES} to ${MAX_MINUTES}`);
        }
        // Each refused extension costs history (its escrow attempt) and one of the workflow's updates; a client
        // retrying one without funds must not use them up (the release is an update too).
        if (refusedExtensions > 0 && extending > 0) {
          throw reject(ReservationRejections.escrowRefused, `an extension of reservation ${id} is still being escrowed after earlier refusals: try again once it is answered`);
        }
        if (refusedExtensions >= MAX_REFUSED_EXTENSIONS && Date.now() - lastRefusalAt < REFUSAL_COOLDOWN_MS) {
          throw reject(
            ReservationRejections.escrowRefused,
            `${refusedExtensions} extensions of reservation ${id} were refused for want of funds: the next is taken ${Math.round(REFUSAL_COOLDOWN_MS / 60_000)} min after the last refusal`,
          );
        }
        if (minutes + pendingMinutes + extra > MAX_TOTAL_MINUTES) {
          throw reject(ReservationRejections.invalid, `additional_minutes: a reservation runs at most ${MAX_TOTAL_MINUTES} minutes in all (${minutes + pendingMinutes} booked)`);
        }
      },
    },
  );
  setHandler(
    releaseReservationUpdate,
    async (request) => {
      requestRelease(request);
      // Answered with the settlement, also when an operator's cancel came meanwhile.
      await CancellationScope.nonCancellable(() => condition(() => receipt !== undefined));
      return receipt!;
    },
    {
      validator: (_request) => {
        if (ready !== undefined && !ready.ok) throw reject(ReservationRejections.ended, `reservation ${id} never started: ${ready.message}`);
      },
    },
  );

  // ---- helpers --------------------------------------------------------------------------------
  function escrowed(): bigint {
    return pots.reduce((sum, p) => sum + BigInt(p.units), 0n);
  }

  function view(): ReservationView {
    return { id, status, nodeId: spec.nodeId, startAt, endAt, minutes, escrowUnits: escrowed().toString(), pots: [...pots], lastReason, ...(settling && { settling }) };
  }

  function publish(): void {
    upsertSearchAttributes([
      { key: SA.status, value: status },
      { key: SA.escrowState, value: receipt ? (receipt.owed ? 'owed' : receipt.refunded !== '0' && receipt.paid === '0' ? 'refunded' : 'released') : pots.length ? 'held' : 'none' },
    ]);
    const lines = [
      `**${status}** · node \`${spec.nodeId}\` · ${minutes} min · escrow ${escrowed()} units in ${pots.length} pot(s)`,
      endAt ? `ends ${new Date(endAt).toISOString()}` : 'not started',
      `last: ${lastReason}`,
    ];
    setCurrentDetails(lines.join('\n\n'));
  }

  /** Escrows a pot; @returns its receipt, or why it was refused for good. */
  async function escrowPot(pot: Pot): Promise<{ txRef: string; to: string; fundedBy: string } | string> {
    try {
      return await CancellationScope.nonCancellable(() => money.escrowReservationPot({ potId: pot.potId, amount: pot.units, owner: spec.userWallet }));
    } catch (err) {
      const cause = err instanceof ActivityFailure ? err.cause : undefined;
      if (cause instanceof ApplicationFailure && (cause.nonRetryable || PAYMENT_NON_RETRYABLE.includes(cause.type ?? ''))) {
        return `escrow refused: ${cause.message}`;
      }
      throw err;
    }
  }

  /** Waits for the end of the term, a release, or the loss of the node. */
  async function hold(): Promise<{ kind: EndKind; reason: string; lastAliveAt: number }> {
    const watch = proxyActivities<ReservationActivities>({
      activityId: RESERVATION_WATCH_ID,
      heartbeatTimeout: options.nodeHeartbeatTimeoutMs,
      startToCloseTimeout: (MAX_TOTAL_MINUTES + 60) * options.minuteMs,
      retry: { maximumAttempts: 1 },
      cancellationType: ActivityCancellationType.TRY_CANCEL,
    });
    let scope = new CancellationScope();
    let watchEnded: { error: unknown } | undefined;
    // Whether the node was lost before any release came, noted when the loss comes (an extension paying at the
    // end of the term may hold the end back while both arrive).
    let lostBeforeRelease = false;
    /** When the current watch started, and how many lapses in a row were the relay's (each followed soon by another). */
    let watchStartedAt = Date.now();
    let relayLapses = 0;
    const startWatch = () => {
      watchStartedAt = Date.now();
      scope = new CancellationScope();
      scope.run(() => watch.watchReservedNode({ id, nodeId: spec.nodeId })).then(
        () => lost(undefined),
        (error) => lost(error),
      );
    };
    const lost = (error: unknown) => {
      watchEnded = { error };
      lostBeforeRelease = release === undefined;
    };
    /** The latest sign of life known from watches ended before this one, and from confirmations. */
    let knownAliveAt = 0;
    /** The current watch's lapse was confirmed a loss: decided once any extension on its way has landed. */
    let lossConfirmed = false;
    startWatch();
    try {
      for (;;) {
        const seenEnd = endAt;
        await condition(() => release !== undefined || watchEnded !== undefined || endAt !== seenEnd, Math.max(1, endAt - Date.now()));
        // An extension paying right now decides whether the term is over.
        await condition(() => extending === 0);
        // The node was lost before any release came: that stays the end, whatever arrived while an extension paid.
        if (release && !(endSeenFirst && watchEnded && lostBeforeRelease)) return { kind: 'released', reason: `released by the ${release.by}: ${release.reason || 'no reason given'}`, lastAliveAt: Date.now() };
        if (watchEnded && livenessConfirmed && watchLapsed(watchEnded.error) && !lossConfirmed) {
          // Heard only through the API's relay: a lapse while it was down (a restart, an outage) is not the node's.
          // A release meanwhile goes first: the Engine's answer must not wait for the relay.
          // (One that came after the lapse, before this, waits for the verdict: lost first is lost, end-seen-first.)
          const releasedBefore = release !== undefined;
          // A relay lapsing again and again (its API's calls to Temporal failing while its beats reach Postgres)
          // would restart the watch at every lapse, a few events each time: after the first, the confirmation
          // watches the node from Postgres a while (doubling, at most RELAY_LAPSE_WATCH_MAX_MS) before answering.
          if (Date.now() - watchStartedAt > 10 * options.nodeHeartbeatTimeoutMs) relayLapses = 0;
          // (Never past the end of the term, which only the loop ends the reservation at.)
          const watchFor = Math.min(RELAY_LAPSE_WATCH_MAX_MS, options.nodeHeartbeatTimeoutMs * 2 ** relayLapses, endAt - Date.now());
          const aliveForMs = relayLapses === 0 || watchFor <= 0 ? undefined : watchFor;
          const verdict = await confirmLoss(spec.nodeId, options.nodeHeartbeatTimeoutMs, () => !releasedBefore && release !== undefined, aliveForMs);
          if (verdict === undefined) {
            lostBeforeRelease = false;
            continue;
          }
          knownAliveAt = Math.max(knownAliveAt, verdict.aliveAt ?? 0, lastBeatAt(watchEnded.error) ?? 0);
          if (!verdict.lost) {
            relayLapses++;
            lastReason = `node watched again: ${verdict.why}`;
            publish();
            watchEnded = undefined;
            lostBeforeRelease = false;
            startWatch();
            continue;
          }
          // Decided at the top of the loop, once an extension paying meanwhile has landed (its pot is settled too).
          lossConfirmed = true;
          continue;
        }
        if (watchEnded && !watchLapsed(watchEnded.error) && Date.now() >= endAt && patched(TERM_BEFORE_WATCH_LIMIT)) {
          return { kind: 'expired', reason: `ran its full ${minutes} min`, lastAliveAt: endAt };
        }
        if (watchEnded) {
          // The last heartbeat the API passed on carries when the node last beat; none means it never did (the
          // watches before this one, and the confirmation of a lapse, may know a later one).
          const lastAliveAt = Math.min(Date.now(), Math.max(startAt, knownAliveAt, lastBeatAt(watchEnded.error) ?? startAt));
          return { kind: 'node_lost', reason: describeWatchEnd(watchEnded.error, options), lastAliveAt };
        }
        if (Date.now() >= endAt) return { kind: 'expired', reason: `ran its full ${minutes} min`, lastAliveAt: endAt };
      }
    } finally {
      if (!watchEnded) scope.cancel();
    }
  }

  /** Pays what the node earned and refunds the rest, pot by pot; records the end. */
  async function settle(end: { kind: EndKind; reason: string; lastAliveAt: number }, policy: EarlyReleasePolicy): Promise<void> {
    const finalStatus: ReservationStatus =
      end.kind === 'expired' ? 'expired' : end.kind === 'node_lost' ? 'failed' : release?.by === 'both' ? 'completed' : 'cancelled';
    const endedAt = Date.now();
    // Used up to the node's last sign of life, the release (a release waiting behind an extension's escrow, or a
    // worker that was down, bills no time it did not use), or now.
    const usedUntil = end.kind === 'node_lost' ? end.lastAliveAt : end.kind === 'released' && settlementV2 ? (releasedAt ?? endedAt) : endedAt;
    const usedMs = Math.max(0, Math.min(usedUntil, endAt) - startAt);
    // Once decided, the end is settled and recorded as decided: a cancel arriving meanwhile (an operator's) must not
    // leave the money moved but the reservation unrecorded, nor settle it a second time under another policy.
    const settled = await CancellationScope.nonCancellable(async () => {
      status = 'completing';
      lastReason = end.reason;
      publish();
      await store.endHold({ id, nodeId: spec.nodeId, status, reason: end.reason });
      if (end.kind === 'node_lost') await store.penalizeLostNode({ id, nodeId: spec.nodeId, reason: end.reason });

      const total = escrowed();
      // Billed in whole seconds of reserved time (a shortened minute in tests and demos bills as a real one).
      const usedSeconds = Math.ceil((usedMs * 60) / options.minuteMs);
      const earned = earnedUnits({ kind: end.kind, policy, escrowed: total, perHour, usedSeconds });
      const shares = allocateOverPots(pots.map((p) => BigInt(p.units)), earned).map((s) => s.toString());
      settling = { status: finalStatus, timeUsedSeconds: usedSeconds, paid: earned.toString(), refunded: (total - earned).toString() };
      const outcomes = await settlePots(shares);
      receipt = summarize(finalStatus, usedSeconds, outcomes);
      status = finalStatus;
      await store.finishReservation({ id, nodeId: spec.nodeId, status, reason: end.reason, endedAt, ...receiptFields(receipt) });
      publish();
      return { shares, outcomes };
    });
    // The node earned its share: waiting for its wallet is not cancellable (an operator can still terminate).
    if (receipt?.owed) await CancellationScope.nonCancellable(() => payOwed(end.reason, endedAt, settled.shares, settled.outcomes));
  }

  /** Settles the pots (those `again` picks, keeping the others' `previous` outcomes), in pot order. */
  async function settlePots(shares: string[], again?: (i: number) => boolean, previous?: PotOutcome[]): Promise<PotOutcome[]> {
    const outcomes: PotOutcome[] = [];
    for (let i = 0; i < pots.length; i++) {
      outcomes.push(
        again && previous && !again(i)
          ? previous[i]
          : await CancellationScope.nonCancellable(() => money.settleReservationPot({ potId: pots[i].potId, nodeId: spec.nodeId, payUnits: shares[i] })),
      );
    }
    return outcomes;
  }

  function summarize(s: ReservationStatus, timeUsedSeconds: number, outcomes: PotOutcome[]): ReleaseReceipt {
    const sum = (f: (o: PotOutcome) => string) => outcomes.reduce((acc, o) => acc + BigInt(f(o)), 0n).toString();
    return {
      status: s,
      timeUsedSeconds,
      paid: sum((o) => o.paid),
      nodeAmount: sum((o) => o.nodeAmount),
      refunded: sum((o) => o.refunded),
      paymentTx: outcomes.find((o) => o.paymentTx)?.paymentTx ?? '',
      refundTx: outcomes.find((o) => o.refundTx)?.refundTx ?? '',
      owed: outcomes.some((o) => o.owed),
    };
  }

  function receiptFields(r: ReleaseReceipt) {
    return { timeUsedSeconds: r.timeUsedSeconds, paid: r.paid, refunded: r.refunded, paymentTx: r.paymentTx, refundTx: r.refundTx };
  }

  /** The node has no wallet yet: its share waits until it registers one. */
  async function payOwed(reason: string, endedAt: number, shares: string[], settledOutcomes: PotOutcome[]): Promise<void> {
    let recheckMs = OWED_RECHECK_MS;
    let outcomes = settledOutcomes;
    while (receipt?.owed) {
      if (!(await condition(() => walletRegistered, recheckMs))) recheckMs = Math.min(recheckMs * 2, OWED_RECHECK_MAX_MS);
      walletRegistered = false;
      // Only the pots still owed (a reservation of many short extensions has many pots, and each re-check would
      // otherwise settle them all again), unless this run started before that patch.
      const prior = outcomes;
      outcomes = settlementV2 ? await settlePots(shares, (i) => prior[i].owed, prior) : await settlePots(shares);
      receipt = summarize(receipt.status, receipt.timeUsedSeconds, outcomes);
      if (!receipt.owed) {
        lastReason = `owed payment released to node ${spec.nodeId}`;
        await store.finishReservation({ id, nodeId: spec.nodeId, status, reason, endedAt, ...receiptFields(receipt) });
        publish();
      }
    }
  }

  // ---- the script -----------------------------------------------------------------------------
  const first: Pot = { potId: id, units: spec.escrowUnits, minutes: spec.minutes };
  const escrow = await escrowPot(first);
  firstEscrowDone = true;
  if (withdrawn !== undefined && typeof escrow !== 'string') {
    // Withdrawn while its escrow was in flight, and the escrow landed after all: it all goes back.
    pots.push(first);
    await settle({ kind: 'withdrawn', reason: withdrawn, lastAliveAt: 0 }, options.earlyRelease);
    await condition(allHandlersFinished);
    return receipt!;
  }
  if (typeof escrow === 'string') {
    status = 'failed';
    lastReason = escrow;
    receipt = { status, timeUsedSeconds: 0, paid: '0', nodeAmount: '0', refunded: '0', paymentTx: '', refundTx: '', owed: false };
    // Recorded even when an operator's cancel came meanwhile: otherwise the node would stay held.
    await CancellationScope.nonCancellable(async () => {
      await store.endHold({ id, nodeId: spec.nodeId, status, reason: escrow });
      await store.finishReservation({ id, nodeId: spec.nodeId, status, reason: escrow, endedAt: Date.now(), ...receiptFields(receipt!) });
    });
    ready = { ok: false, code: 402, message: escrow };
    publish();
    await condition(allHandlersFinished);
    return receipt;
  }
  pots.push(first);
  startAt = Date.now();
  endAt = startAt + spec.minutes * options.minuteMs;
  // From here the pot holds money: a cancel (even one that came while the escrow was in flight) must settle it.
  try {
    const activation = await store.activateReservation({ id, startAt, endAt, escrowAccount: escrow.to, fundedBy: escrow.fundedBy });
    if (activation?.activated === false) {
      // ReserveNode gave it up before the escrow landed (its start looked failed; the node was given back).
      const reason = 'withdrawn: ReserveNode gave it up before its escrow landed';
      ready = { ok: false, code: 503, message: reason };
      await settle({ kind: 'withdrawn', reason, lastAliveAt: startAt }, options.earlyRelease);
    } else {
      status = 'active';
      lastReason = `escrowed ${first.units} units from ${escrow.fundedBy}`;
      ready = { ok: true, startAt, endAt, escrowAccount: escrow.to, escrowUnits: first.units, escrowTx: escrow.txRef };
      publish();
      const end = await hold();
      await settle(end, options.earlyRelease);
    }
  } catch (err) {
    if (!isCancellation(err) || receipt) throw err;
    // Cancelled from Temporal itself (Web UI, CLI): the user pays for the time used, no more.
    requestRelease({ reason: 'cancelled by an operator', by: 'operator' });
    await CancellationScope.nonCancellable(async () => {
      // An extension paying right now adds a pot that must be settled too (as a release waits for it in hold()).
      await condition(() => extending === 0);
      await settle({ kind: 'released', reason: 'cancelled by an operator', lastAliveAt: Date.now() }, 'prorated');
    });
    throw err;
  }
  await condition(allHandlersFinished);
  return receipt!;
}

/** When the node last beat, from the details of the watch's last heartbeat ({ at: ms since the epoch }). */
function lastBeatAt(error: unknown): number | undefined {
  const cause = error instanceof ActivityFailure ? error.cause : error;
  const details = cause instanceof TimeoutFailure ? (cause.lastHeartbeatDetails as { at?: unknown } | undefined) : undefined;
  return typeof details?.at === 'number' && Number.isFinite(details.at) ? details.at : undefined;
}

function describeWatchEnd(error: unknown, options: ReservationOptions): string {
  const cause = error instanceof ActivityFailure ? error.cause : error;
  if (cause instanceof TimeoutFailure && cause.timeoutType === TimeoutType.HEARTBEAT) {
    return `node lost: silent for ${Math.round(options.nodeHeartbeatTimeoutMs / 1000)} s`;
  }
  return `node watch ended: ${(cause as Error | undefined)?.message ?? 'no reason'}`;
}
