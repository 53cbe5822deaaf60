import { randomUUID } from 'node:crypto';
import {
  ActivityCancelledError,
  ActivityNotFoundError,
  ApplicationFailure,
  WorkflowNotFoundError,
  WorkflowUpdateFailedError,
  type Client,
} from '@temporalio/client';
import type { Db } from '../db/client';
import * as nodesRepo from '../db/nodes-repo';
import * as repo from '../db/reservations-repo';
import { LATE, temporalCalls, within } from './temporal-calls';
import { temporalUnavailable } from './temporal-errors';
import {
  ConflictError,
  ForbiddenError,
  requireOwner,
  GoneError,
  NotFoundError,
  PaymentRequiredError,
  UnavailableError,
  ValidationError,
} from '../domain/errors';
import { unitsToTokenString } from '../domain/money';
import {
  EXTEND_HINT_MINUTES,
  isHolding,
  MAX_MINUTES,
  MIN_MINUTES,
  reservationCost,
  TOKEN_GRACE_S,
  unitsPerHour,
} from '../domain/reservation';
import {
  extendReservationUpdate,
  releaseReservationUpdate,
  reservationQuery,
  reservationReadyUpdate,
  ReservationRejections,
  withdrawReservationUpdate,
  type ReadyResult,
  type ReleaseReceipt,
} from '../workflows/reservation-messages';
import { RESERVATION_WATCH_ID, reservationWorkflow, type ReservationOptions } from '../workflows/reservation-workflow';
import { walletRegisteredSignal } from '../workflows/messages';
import { JobSearchAttributes as SA } from '../workflows/search-attributes';
import { signP2PToken } from './p2p-token';
import { walletAddress } from './wallet-service';
import { requireUsersWallet, type WalletLinks } from './wallet-links';

export interface ReservationServiceDeps {
  db: Db;
  client: Client;
  taskQueue: string;
  options: ReservationOptions;
  p2pSecret: string;
  tokenDecimals: number;
  /** A node is online while its last heartbeat is younger than this. */
  offlineAfterMs: number;
  /** An Engine silent this long shows as disconnected. */
  engineTimeoutMs: number;
  /** How long ReserveNode waits for the escrow. */
  escrowWaitMs: number;
  /** ReleaseReservation answers with the decided amounts after this long, while the settlement goes on. */
  releaseWaitMs?: number;
  /**
   * With auth on, ReserveNode spends user_wallet's allowance only for the user whose token names that wallet
   * (AUTH_BIND_WALLET, default true). False trusts user_wallet, as the original server did.
   */
  bindWallet?: boolean;
  /** Wallets users linked to themselves: theirs to pay from, like their token's claim. */
  walletLinks?: Pick<WalletLinks, 'isUsersWallet'>;
  now?: () => number;
}

export interface Reserved {
  reservation: repo.ReservationWithNode;
  token: string;
  tokenExpires: number;
  escrowUnits: string;
  pricePerHour: number;
}

/** A P2P token for the reservation's node, valid until the reservation's end + 5 minutes. */
export interface ReconnectGrant {
  reservation: repo.ReservationWithNode;
  token: string;
  tokenExpires: number;
  timeRemainingS: number;
}

export type ReleaseResult = ReleaseReceipt;

/** How long ReserveNode waits for a withdrawal to be answered (after its wait for the escrow). */
const WITHDRAW_WAIT_MS = 4000;
/** How long a release that waited RESERVATION_RELEASE_WAIT_MS still asks the workflow for its decided amounts. */
const DECIDED_QUERY_MS = 3000;
/** Kept between the last answer ReserveNode can give and the caller's deadline (the reply's way back). */
const DEADLINE_MARGIN_MS = 1000;
/** The least escrow wait worth starting a reservation for (a shorter deadline is refused before anything is held). */
const MIN_ESCROW_WAIT_MS = 1000;

/**
 * Reservations of whole nodes (JobReservationService): validation, the node hold, the reservation's
 * workflow (money, timer, liveness) and what the Engine and the node ask of it. The rules and the money
 * policy are in src/domain/reservation.ts.
 */
export function createReservationService(deps: ReservationServiceDeps) {
  const { db, client } = deps;
  const now = deps.now ?? Date.now;
  const handle = (id: string) => client.workflow.getHandle(id);
  const { limited, acceptedThen } = temporalCalls(client);

  async function find(id: string, field = 'reservation_id'): Promise<repo.ReservationWithNode> {
    if (!id) throw new ValidationError(field, 'is required');
    const row = await repo.getReservation(db, id);
    if (!row) throw new NotFoundError('reservation', id);
    return row;
  }

  /** Seconds until the end; 0 once the reservation is over. */
  const remainingS = (r: repo.ReservationRow) =>
    isHolding(r.status) ? Math.max(0, Math.floor((r.endAt.getTime() - now()) / 1000)) : 0;
  const isOver = (r: repo.ReservationRow) => !isHolding(r.status) || r.endAt.getTime() <= now();
  const engineConnected = (r: repo.ReservationRow) =>
    r.engineLastHeartbeat !== null && now() - r.engineLastHeartbeat.getTime() < deps.engineTimeoutMs;

  function token(r: repo.ReservationRow): { token: string; expiresAt: number } {
    return signP2PToken(deps.p2pSecret, {
      sub: r.userWallet,
      jobId: r.id,
      nodeId: r.nodeId,
      expiresAt: Math.floor(r.endAt.getTime() / 1000) + TOKEN_GRACE_S,
      now: now(),
    });
  }

  /**
   * ReserveNode: holds the node, escrows the term's price on chain, and returns the P2P token. Nothing is
   * escrowed for a request that fails validation or finds the node unavailable.
   */
  async function reserve(req: {
    nodeId: string;
    userWallet: string;
    durationMinutes: number;
    jobConfig: Record<string, unknown>;
    caller?: string;
    /** The signed-in user's wallet (the token's wallet_address claim; '' when it has none), with auth on. */
    callerWallet?: string;
    /** When the caller stops waiting (epoch ms; the gRPC deadline): the answer must come before it. */
    deadline?: number;
  }): Promise<Reserved> {
    if (!req.nodeId) throw new ValidationError('node_id', 'is required');
    const wallet = walletAddress(req.userWallet, 'user_wallet').toBase58();
    // The term is paid from this wallet (through the allowance it gave the escrow authority): with auth on, only
    // its own user may spend it.
    if (req.caller !== undefined && deps.bindWallet !== false) {
      await requireUsersWallet(deps.walletLinks, { userId: req.caller, claim: req.callerWallet, wallet, field: 'user_wallet' });
    }
    if (!Number.isInteger(req.durationMinutes) || req.durationMinutes < MIN_MINUTES || req.durationMinutes > MAX_MINUTES) {
      throw new ValidationError('duration_minutes', `must be from ${MIN_MINUTES} to ${MAX_MINUTES} minutes, got ${req.durationMinutes}`);
    }
    // The escrow wait ends in time for a withdrawal to be answered before the caller gives up; with too little time
    // for any wait, nothing is held or escrowed.
    const untilDeadline = req.deadline === undefined ? Infinity : req.deadline - now() - WITHDRAW_WAIT_MS - DEADLINE_MARGIN_MS;
    if (untilDeadline < MIN_ESCROW_WAIT_MS) {
      throw new UnavailableError(`the call's deadline leaves no time to escrow: ReserveNode needs at least ${(WITHDRAW_WAIT_MS + DEADLINE_MARGIN_MS + MIN_ESCROW_WAIT_MS) / 1000} s`);
    }
    const node = await nodesRepo.getNode(db, req.nodeId);
    if (!node) throw new NotFoundError('node', req.nodeId);
    const perHour = unitsPerHour(node.pricePerHour, deps.tokenDecimals);
    const escrowUnits = reservationCost(perHour, req.durationMinutes);
    if (escrowUnits <= 0n) throw new ConflictError(`node ${req.nodeId} has no price to reserve at`);
    const id = randomUUID();
    const at = new Date(now());
    await repo.holdNode(db, {
      id,
      nodeId: node.id,
      userWallet: wallet,
      owner: req.caller,
      minutes: req.durationMinutes,
      pricePerHourUnits: perHour,
      escrowUnits,
      jobConfig: req.jobConfig,
      minuteMs: deps.options.minuteMs,
      onlineSince: new Date(at.getTime() - deps.offlineAfterMs),
      now: at,
    });
    try {
      await limited(() => client.workflow.start(reservationWorkflow, {
        workflowId: id,
        taskQueue: deps.taskQueue,
        args: [
          {
            spec: { reservationId: id, nodeId: node.id, userWallet: wallet, minutes: req.durationMinutes, perHourUnits: perHour.toString(), escrowUnits: escrowUnits.toString() },
            options: deps.options,
          },
        ],
        typedSearchAttributes: [
          { key: SA.status, value: 'pending' },
          { key: SA.nodeId, value: node.id },
          { key: SA.submitter, value: wallet },
          { key: SA.escrowState, value: 'none' },
        ],
        staticSummary: `reservation · node ${node.id} · ${req.durationMinutes} min · ${unitsToTokenString(escrowUnits, deps.tokenDecimals)} CYXWIZ`,
        staticDetails: [
          `**Reservation** \`${id}\` of node \`${node.id}\` by \`${wallet}\``,
          `**Term** ${req.durationMinutes} min at ${unitsToTokenString(perHour, deps.tokenDecimals)} CYXWIZ/h (${perHour} units/h)`,
          `**Escrow** ${escrowUnits} units`,
        ].join('\n\n'),
      }));
    } catch (err) {
      await repo.releaseHold(db, id, node.id);
      await repo.updateReservation(db, id, { status: 'failed', endReason: `could not start: ${(err as Error).message}`, endedAt: new Date(now()) });
      throw new UnavailableError(`Temporal unavailable: ${(err as Error).message}`);
    }
    const leftForEscrow = req.deadline === undefined ? Infinity : req.deadline - now() - WITHDRAW_WAIT_MS - DEADLINE_MARGIN_MS;
    const ready = await waitReady(id, Math.max(0, Math.min(deps.escrowWaitMs, leftForEscrow)));
    if (!ready.ok) throw ready.code === 503 ? new UnavailableError(ready.message) : new PaymentRequiredError(ready.message);
    const reservation = await find(id);
    const t = token(reservation);
    return { reservation, token: t.token, tokenExpires: t.expiresAt, escrowUnits: ready.escrowUnits, pricePerHour: node.pricePerHour };
  }

  /**
   * Waits up to `waitMs` (escrowWaitMs, less when the caller's deadline is nearer) for the first escrow. When it
   * is not confirmed by then, the reservation is withdrawn (unless it landed in the meantime), so an error answer
   * never leaves the Engine holding a reservation, or paying for one, that it was told failed.
   */
  async function waitReady(id: string, waitMs: number): Promise<ReadyResult> {
    // The workflow finished before it could answer: its row says how.
    const finished = (err: unknown) => err instanceof WorkflowUpdateFailedError || err instanceof WorkflowNotFoundError;
    const ended = (row: repo.ReservationRow): ReadyResult => ({ ok: false, code: 402, message: row.endReason ?? `reservation ${id} is ${row.status}` });
    const fromRow = async () => ended(await find(id));
    let why: string;
    let unanswered: unknown;
    try {
      const first = await within(acceptedThen((waitForStage) => handle(id).startUpdate(reservationReadyUpdate, { waitForStage })), waitMs);
      if (first !== LATE) return first;
      const waited = waitMs < 1000 ? `${waitMs} ms` : `${Math.round(waitMs / 1000)} s`;
      why = `the escrow was not confirmed within ${waited}`;
    } catch (err) {
      if (finished(err)) return fromRow();
      // Not answered (Temporal unreachable for a moment): an error reply must not leave the reservation going on.
      why = `ReserveNode could not wait for the escrow (${(err as Error).message})`;
      unanswered = err;
    }
    const reason = `withdrawn: ${why}; the node is free again and anything that reaches the escrow is refunded whole`;
    try {
      // Bounded (the Engine's deadline is 30 s).
      const withdrawn = await within(acceptedThen((waitForStage) => handle(id).startUpdate(withdrawReservationUpdate, { args: [{ reason }], waitForStage })), WITHDRAW_WAIT_MS);
      if (withdrawn === LATE) throw new UnavailableError(`no answer from Temporal within ${WITHDRAW_WAIT_MS} ms`);
      return withdrawn;
    } catch (err) {
      if (finished(err)) return fromRow();
      // Unanswered (Temporal slow or away, or the escrow landed and its activation is slow): withdrawn in
      // Postgres, where activation looks (only a pending reservation activates; the workflow refunds the rest).
      if (await repo.abandonPending(db, id, reason, new Date(now()))) return { ok: false, code: 503, message: reason };
      const row = await find(id);
      if (row.status === 'active' && row.startAt && row.escrowAccount) {
        return { ok: true, startAt: row.startAt.getTime(), endAt: row.endAt.getTime(), escrowAccount: row.escrowAccount, escrowUnits: row.escrowUnits.toString(), escrowTx: '' };
      }
      if (!isHolding(row.status)) return ended(row);
      throw translate(unanswered ?? err);
    }
  }

  /** With auth on, a user reads only their own reservations (their node endpoint, escrow and wallet). */
  async function get(id: string, caller?: string): Promise<repo.ReservationWithNode> {
    const r = await find(id);
    requireOwner(r.owner, caller, `reservation ${r.id}`);
    return r;
  }

  async function list(q: { userId: string; pageSize: number; pageToken: string; activeOnly: boolean; caller?: string }) {
    if (q.pageSize < 0) throw new ValidationError('page_size', 'must not be negative');
    const limit = Math.min(q.pageSize || 50, 500);
    const after = q.pageToken ? decodeCursor(q.pageToken) : undefined;
    const { rows, total } = await repo.listReservations(db, { wallet: q.userId || undefined, activeOnly: q.activeOnly, limit: limit + 1, after, visibleTo: q.caller });
    const page = rows.slice(0, limit);
    const last = page[page.length - 1];
    return { rows: page, total, nextPageToken: rows.length > limit && last ? encodeCursor(last) : '' };
  }

  async function active(userWallet: string, caller?: string) {
    const wallet = walletAddress(userWallet, 'user_wallet').toBase58();
    const rows = await repo.activeForWallet(db, wallet, new Date(now()));
    return caller === undefined ? rows : rows.filter((r) => !r.owner || r.owner === caller);
  }

  /** EngineHeartbeat: the Engine is connected; @returns the time left, or GoneError once the reservation is over. */
  async function engineHeartbeat(req: {
    reservationId: string;
    jobId: string;
    trainingActive: boolean;
    progress: number;
    metrics: Record<string, number>;
    caller?: string;
  }) {
    if (!req.reservationId) throw new ValidationError('reservation_id', 'is required');
    const row = await repo.engineHeartbeat(
      db,
      req.reservationId,
      { at: new Date(now()), trainingActive: req.trainingActive, progress: progressFraction(req.progress), metrics: finiteMetrics(req.metrics), jobId: req.jobId },
      req.caller,
    );
    const r = row ?? (await find(req.reservationId));
    if (!row) requireOwner(r.owner, req.caller, `reservation ${r.id}`);
    if (isOver(r)) throw new GoneError(`reservation ${r.id} has ended (${r.status})`);
    const shouldExtend = r.trainingActive && r.endAt.getTime() - now() < EXTEND_HINT_MINUTES * deps.options.minuteMs;
    return { timeRemainingS: remainingS(r), shouldExtend };
  }

  /** GetReconnectionToken: a fresh P2P token for the reservation's owner. */
  async function reconnect(req: { reservationId: string; userWallet: string; caller?: string }): Promise<ReconnectGrant> {
    const r = await find(req.reservationId);
    requireOwner(r.owner, req.caller, `reservation ${r.id}`);
    if (!req.userWallet) throw new ValidationError('user_wallet', 'is required');
    if (req.userWallet !== r.userWallet) throw new ForbiddenError(`user_wallet does not own reservation ${r.id}`);
    if (isOver(r)) throw new GoneError(`reservation ${r.id} has ended (${r.status})`);
    // The node honours any token it can verify: none before the escrow is confirmed (ReserveNode may still give
    // the reservation up, and the node would be used for nothing).
    if (r.status === 'pending') throw new ConflictError(`reservation ${r.id} is not active yet: its escrow is not confirmed`);
    await repo.updateReservation(db, r.id, { engineLastHeartbeat: new Date(now()) });
    const t = token(r);
    return { reservation: r, token: t.token, tokenExpires: t.expiresAt, timeRemainingS: remainingS(r) };
  }

  /** ExtendReservation: escrows the extra minutes, then moves the end. */
  async function extend(req: { reservationId: string; additionalMinutes: number; caller?: string }) {
    const r = await find(req.reservationId);
    requireOwner(r.owner, req.caller, `reservation ${r.id}`);
    if (!Number.isInteger(req.additionalMinutes) || req.additionalMinutes < MIN_MINUTES || req.additionalMinutes > MAX_MINUTES) {
      throw new ValidationError('additional_minutes', `must be a whole number from ${MIN_MINUTES} to ${MAX_MINUTES}`);
    }
    if (isOver(r)) throw new GoneError(`reservation ${r.id} has ended (${r.status})`);
    try {
      // No update id: a refused extension's outcome would answer every later try under the same id. A client that
      // retries after its deadline passed, while the first escrow is still on its way, is answered by the workflow
      // instead: the same number of minutes is that extension (EXTEND_RETRY_JOINS).
      return await acceptedThen((waitForStage) => handle(r.id).startUpdate(extendReservationUpdate, { args: [{ minutes: req.additionalMinutes }], waitForStage }));
    } catch (err) {
      throw translate(err);
    }
  }

  /** ReleaseReservation (and the end reports): ends the reservation and settles; idempotent. */
  async function release(req: {
    reservationId: string;
    reason: string;
    by: 'engine' | 'node' | 'both' | 'operator';
    /** Answer within the Engine's deadline: the decided amounts without signatures when the chain is slow. */
    answerInTime?: boolean;
    /** The user releasing it (auth on): only its owner may. */
    caller?: string;
  }): Promise<ReleaseResult> {
    const r = await find(req.reservationId);
    requireOwner(r.owner, req.caller, `reservation ${r.id}`);
    if (r.endedAt) return receiptOf(r);
    try {
      // A reservation still escrowing takes the release as soon as its term starts.
      const settled = acceptedThen(
        (waitForStage) => handle(r.id).startUpdate(releaseReservationUpdate, { args: [{ reason: req.reason, by: req.by }], updateId: 'release', waitForStage }),
        `${r.id}/release`,
      );
      if (req.answerInTime && deps.releaseWaitMs) {
        settled.catch(() => undefined); // awaited below unless the decided amounts answer first
        const early = await decidedWithin(r.id, settled, deps.releaseWaitMs);
        if (early) return early;
        // Not even decided (the release waits for an escrow still on its way, or Temporal is slow): an answer now
        // beats the Engine's deadline passing. Asking again is the same release.
        throw new UnavailableError(`reservation ${r.id}: the release is on its way but its settlement is not decided yet; ask again`);
      }
      return await settled;
    } catch (err) {
      // Released already and the workflow has finished: the row has the settlement.
      const done = await find(r.id);
      if (done.endedAt) return receiptOf(done);
      throw translate(err);
    }
  }

  /**
   * The settlement if it finishes within `ms`; else, once its amounts are decided (the transactions still on
   * their way), those amounts without signatures. Undefined when neither is known by then.
   */
  async function decidedWithin(id: string, settled: Promise<ReleaseReceipt>, ms: number): Promise<ReleaseReceipt | undefined> {
    const done = await within(settled, ms);
    if (done !== LATE) return done;
    const view = await within(
      limited(() => handle(id).query(reservationQuery)).catch(() => undefined),
      DECIDED_QUERY_MS,
    );
    if (view === LATE || !view?.settling) return undefined;
    return { ...view.settling, nodeAmount: '', paymentTx: '', refundTx: '', owed: false };
  }

  /** The settlement as recorded (for a release asked again after the workflow finished). */
  async function receiptOf(r: repo.ReservationRow): Promise<ReleaseReceipt> {
    const legs = await repo.nodeLegs(db, r.id);
    return {
      status: r.status,
      timeUsedSeconds: r.timeUsedSeconds ?? 0,
      paid: (r.paidUnits ?? 0n).toString(),
      nodeAmount: legs.amount.toString(),
      refunded: (r.refundUnits ?? 0n).toString(),
      paymentTx: r.paymentTx ?? '',
      refundTx: r.refundTx ?? '',
      owed: legs.owed,
    };
  }

  /** ReportJobCompleteFromNode: a job in the reservation ended; its reputation change cites the reservation. */
  async function nodeJobComplete(req: { reservationId: string; jobId: string; nodeId: string; success: boolean; caller?: string }) {
    const r = await find(req.reservationId);
    if (!req.nodeId) throw new ValidationError('node_id', 'is required');
    if (req.nodeId !== r.nodeId) throw new ForbiddenError(`node ${req.nodeId} does not hold reservation ${r.id}`);
    await requireNodeOwner(r.nodeId, req.caller);
    // Started: its escrow was confirmed (a reservation whose escrow was refused, or withdrawn before it landed,
    // never ran a job, and its node's reputation must not gain from one).
    if (r.status === 'pending' || !r.startAt || !r.escrowAccount) throw new ConflictError(`reservation ${r.id} never started`);
    // A node lost mid-reservation lost its jobs with it: a late report of one counts nothing, also while the
    // reservation is still being settled (its loss is recorded as it starts).
    const lost = r.status === 'failed' || (r.status === 'completing' && (await nodesRepo.hasReputationEvent(db, r.nodeId, r.id, 'node_lost')));
    if (lost) throw new GoneError(`reservation ${r.id} ended with its node lost: a late report of its jobs is not counted`);
    const kind = req.success ? 'job_completed' : 'job_failed';
    // The reputation event is the evidence, one per reservation and outcome: a repeated report finds it and
    // counts nothing again, and job ids (the node's to choose) cannot move the score more than that.
    const outcome = await nodesRepo.recordReputationEvent(db, {
      nodeId: r.nodeId,
      jobId: r.id,
      kind,
      reason: `${req.success ? 'completed' : 'failed'} job ${req.jobId || r.id} in reservation ${r.id}`,
    });
    const { jobs } = await repo.countJob(db, { reservationId: r.id, jobId: req.jobId || r.id, reportedBy: 'node', success: req.success });
    return { reputation: outcome?.reputation ?? 0, change: outcome?.change ?? 0, jobs };
  }

  /**
   * ConfirmJobComplete (deprecated by the original): counts a successful job once (a job the node reported
   * already counts); the money moves when the reservation ends.
   */
  async function confirmJobComplete(req: { reservationId: string; jobId: string; success: boolean; caller?: string }) {
    const r = await find(req.reservationId);
    requireOwner(r.owner, req.caller, `reservation ${r.id}`);
    if (req.success) await repo.countJob(db, { reservationId: r.id, jobId: req.jobId || r.id, reportedBy: 'engine', success: true });
    return r;
  }

  /**
   * ReportReservationEndFromEngine / FromNode: each side says it is done; when both have, the reservation is
   * released (as an early release if time is left) and settled.
   */
  async function reportEnd(req: { reservationId: string; from: 'engine' | 'node'; nodeId?: string; caller?: string }) {
    const r = await find(req.reservationId);
    if (req.from === 'node') {
      if (!req.nodeId) throw new ValidationError('node_id', 'is required');
      if (req.nodeId !== r.nodeId) throw new ForbiddenError(`node ${req.nodeId} does not hold reservation ${r.id}`);
      await requireNodeOwner(r.nodeId, req.caller);
    } else {
      requireOwner(r.owner, req.caller, `reservation ${r.id}`);
    }
    if (r.endedAt) return { settled: await receiptOf(r), waitingFor: undefined };
    const both = await repo.reportEnd(db, r.id, req.from);
    if (!both) return { settled: undefined, waitingFor: req.from === 'engine' ? ('node' as const) : ('engine' as const) };
    const receipt = await release({ reservationId: r.id, reason: 'both the Engine and the node reported the end', by: 'both' });
    return { settled: receipt, waitingFor: undefined };
  }

  /** Refuses a node's report from a user who does not own the node (auth on). @throws ForbiddenError */
  async function requireNodeOwner(nodeId: string, caller: string | undefined): Promise<void> {
    if (caller === undefined) return;
    requireOwner((await nodesRepo.getNode(db, nodeId))?.owner, caller, `node ${nodeId}`);
  }

  /**
   * The heartbeat hub's batch: these nodes are alive, so are their reservations' watches. Each call gives up after
   * `deadlineMs` (a slow Temporal must not hold back the hub's next pass; a missed one is made up by the next beat).
   */
  async function nodesAlive(nodeIds: ReadonlySet<string>, deadlineMs?: number): Promise<void> {
    const live = await repo.liveOnNodes(db, nodeIds);
    await Promise.all(live.map((r) => nodeAlive(r.id, deadlineMs)));
  }

  async function nodeAlive(id: string, deadlineMs?: number): Promise<void> {
    try {
      // `at` tells the workflow when the node last showed life if it goes silent (it bills up to then).
      await limited(() => client.activity.heartbeat({ workflowId: id, activityId: RESERVATION_WATCH_ID }, { source: 'heartbeat', at: now() }), deadlineMs);
    } catch (err) {
      if (err instanceof ActivityNotFoundError || err instanceof ActivityCancelledError) return;
      throw err;
    }
  }

  /** A node registered a wallet: reservations owing it can pay it now. */
  async function walletRegistered(nodeId: string): Promise<void> {
    const ids = await repo.owingNode(db, nodeId);
    await Promise.all(ids.map((id) => limited(() => handle(id).signal(walletRegisteredSignal)).catch(() => undefined)));
  }

  return {
    reserve,
    get,
    list,
    active,
    engineHeartbeat,
    reconnect,
    extend,
    release,
    nodeJobComplete,
    confirmJobComplete,
    reportEnd,
    nodesAlive,
    walletRegistered,
    remainingS,
    engineConnected,
  };
}

export type ReservationService = ReturnType<typeof createReservationService>;

/**
 * job_progress as a 0..1 fraction. A value above 1 (up to 100) is taken as a percentage: a heartbeat is the
 * Engine's liveness, and refusing it over the progress format would show a connected Engine as gone.
 * @throws ValidationError for negative, non-finite or larger values.
 */
function progressFraction(p: number): number {
  if (!Number.isFinite(p) || p < 0 || p > 100) throw new ValidationError('job_progress', 'must be a fraction within 0..1 (or a percentage up to 100)');
  return p > 1 ? p / 100 : p;
}

/** The Engine's metrics as stored: finite values under printable names of at most 128 characters, 100 at most. */
function finiteMetrics(m: Record<string, number>): Record<string, number> {
  const printable = (k: string) => k.length <= 128 && !/[\u0000-\u001f\u007f]/.test(k);
  return Object.fromEntries(Object.entries(m ?? {}).filter(([k, v]) => Number.isFinite(v) && printable(k)).slice(0, 100));
}

function encodeCursor(r: repo.ReservationRow): string {
  return Buffer.from(JSON.stringify([r.createdAt.toISOString(), r.id])).toString('base64url');
}

function decodeCursor(token: string): { createdAt: Date; id: string } {
  try {
    const [at, id] = JSON.parse(Buffer.from(token, 'base64url').toString()) as [string, string];
    const createdAt = new Date(at);
    const year = createdAt.getUTCFullYear();
    if (typeof id !== 'string' || !/^[A-Za-z0-9-]{1,64}$/.test(id) || Number.isNaN(createdAt.getTime()) || year < 1970 || year > 9999) {
      throw new Error('bad cursor');
    }
    return { createdAt, id };
  } catch {
    throw new ValidationError('page_token', 'is not a token this server issued');
  }
}

/** Temporal errors → domain errors. */
function translate(err: unknown): Error {
  if (err instanceof WorkflowUpdateFailedError) {
    const cause = err.cause;
    if (cause instanceof ApplicationFailure) {
      if (cause.type === ReservationRejections.ended) return new GoneError(cause.message);
      if (cause.type === ReservationRejections.escrowRefused) return new PaymentRequiredError(cause.message);
      if (cause.type === ReservationRejections.invalid) {
        const [field, ...rest] = cause.message.split(': ');
        return new ValidationError(field, rest.join(': '));
      }
    }
    return new ConflictError(cause?.message ?? err.message);
  }
  if (err instanceof WorkflowNotFoundError) return new GoneError(`the reservation's workflow is not running: ${err.message}`);
  return temporalUnavailable(err) ?? (err as Error);
}
