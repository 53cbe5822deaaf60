import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { StatusCode } from '../../domain/job';
import { RESERVATION_STATUS_CODE } from '../../domain/reservation';
import { unitsToTokens } from '../../domain/money';
import type { ReservationWithNode } from '../../db/reservations-repo';
import type { ReservationService } from '../../services/reservation-service';
import type { ReleaseReceipt } from '../../workflows/reservation-messages';
import type { CallerOf } from './auth';
import { toProtocolFailure } from './errors';
import { modelDefinition, optionalText, requireId } from './mappers';
import { statusAndError, summarize, unary } from './unary';

type Metrics = Record<string, number>;
const reservationId = (value: string | undefined) => requireId(value, 'reservation_id');
/** A job id where one may be absent (the Engine's heartbeat before it sends a job). */
const optionalId = (value: string | undefined, field: string) => (value ? requireId(value, field) : '');
const seconds = (d: Date | null | undefined) => (d ? Math.floor(d.getTime() / 1000).toString() : '0');

/**
 * JobReservationService (reservation.proto): the Engine's hotel-room flow. Every reply is a gRPC OK with
 * `status` and, on failure, `Error{code, message}` (field 15 in ReserveNodeResponse, 10 elsewhere); amounts are
 * integers in the token's smallest units, as decimal strings on the int64 fields.
 */
export function createReservationHandlers(deps: { reservations: ReservationService; tokenDecimals: number; log: Logger; caller?: CallerOf; callerWallet?: CallerOf }) {
  const { reservations: svc, log } = deps;
  /** The verified user behind a call (auth on): only a reservation's owner acts on it, only a node's owner reports for it. */
  const caller = deps.caller ?? (() => undefined);
  const callerWallet = deps.callerWallet ?? (() => undefined);

  function info(r: ReservationWithNode) {
    return {
      reservation_id: r.id,
      user_id: r.userWallet,
      user_wallet: r.userWallet,
      node_id: r.nodeId,
      node_wallet: r.nodeWallet,
      node_endpoint: r.nodeEndpoint,
      status: RESERVATION_STATUS_CODE[r.status],
      start_time: seconds(r.startAt),
      end_time: seconds(r.endAt),
      time_remaining_seconds: String(svc.remainingS(r)),
      escrow_account: r.escrowAccount,
      escrow_amount: r.escrowUnits.toString(),
      price_per_hour: unitsToTokens(r.pricePerHourUnits, deps.tokenDecimals),
      current_job_id: r.currentJobId || r.id,
      job_progress: r.jobProgress,
      current_metrics: r.currentMetrics,
      jobs_completed: r.jobsCompleted,
    };
  }

  return {
    ReserveNode: unary<{ node_id: string; user_wallet: string; duration_minutes: number; job_config: Record<string, unknown> | null }, object>(
      log,
      'ReserveNode',
      async (req, call) => {
        const deadline = call.getDeadline();
        const done = await svc.reserve({
          caller: caller(call),
          callerWallet: callerWallet(call),
          deadline: deadline instanceof Date ? deadline.getTime() : Number.isFinite(deadline) ? deadline : undefined,
          nodeId: requireId(req.node_id, 'node_id'),
          userWallet: req.user_wallet,
          durationMinutes: req.duration_minutes,
          jobConfig: req.job_config
            ? {
                model_definition: modelDefinition(req.job_config.model_definition as string | undefined, 'job_config.model_definition'),
                dataset_uri: optionalText(req.job_config.dataset_uri as string | undefined, 'job_config.dataset_uri', 2048),
              }
            : {},
        });
        const r = done.reservation;
        return {
          status: StatusCode.SUCCESS,
          reservation_id: r.id,
          job_id: r.id,
          node_endpoint: r.nodeEndpoint,
          p2p_auth_token: done.token,
          p2p_token_expires: String(done.tokenExpires),
          escrow_account: r.escrowAccount,
          escrow_amount: done.escrowUnits,
          reservation_start: seconds(r.startAt),
          reservation_expires: seconds(r.endAt),
          price_per_hour: done.pricePerHour,
        };
      },
      (f) => ({ status: f.status, error: f.error }),
    ),
    ConfirmJobComplete: unary<{ reservation_id: string; job_id: string; success: boolean }, object>(
      log,
      'ConfirmJobComplete',
      async (req, call) => {
        await svc.confirmJobComplete({ reservationId: reservationId(req.reservation_id), jobId: optionalId(req.job_id, 'job_id'), success: req.success, caller: caller(call) });
        // Money moves when the reservation ends (ReleaseReservation or its end), never per job.
        return { status: StatusCode.SUCCESS, payment_released: false, payment_tx_hash: '' };
      },
      statusAndError,
    ),
    ExtendReservation: unary<{ reservation_id: string; additional_minutes: number }, object>(
      log,
      'ExtendReservation',
      async (req, call) => {
        const r = await svc.extend({ reservationId: reservationId(req.reservation_id), additionalMinutes: req.additional_minutes, caller: caller(call) });
        return {
          status: StatusCode.SUCCESS,
          new_expires: String(Math.floor(r.endAt / 1000)),
          additional_escrow: r.additionalUnits,
          escrow_tx_hash: r.escrowTx,
        };
      },
      statusAndError,
    ),
    ReleaseReservation: unary<{ reservation_id: string; reason: string }, object>(
      log,
      'ReleaseReservation',
      async (req, call) => {
        const r = await svc.release({ reservationId: reservationId(req.reservation_id), reason: optionalText(req.reason, 'reason', 1024), by: 'engine', answerInTime: true, caller: caller(call) });
        return {
          status: StatusCode.SUCCESS,
          time_used_seconds: String(r.timeUsedSeconds),
          payment_released: r.paid,
          refund_amount: r.refunded,
          payment_tx_hash: r.paymentTx,
          refund_tx_hash: r.refundTx,
        };
      },
      statusAndError,
    ),
    GetReservation: unary<{ reservation_id: string }, object>(
      log,
      'GetReservation',
      async (req, call) => ({ status: StatusCode.SUCCESS, reservation: info(await svc.get(reservationId(req.reservation_id), caller(call))) }),
      statusAndError,
    ),
    // ListReservationsResponse has no status or error field: a bad request is a gRPC INVALID_ARGUMENT naming the field.
    ListReservations: ((call: grpc.ServerUnaryCall<{ user_id: string; page_size: number; page_token: string; active_only: boolean }, object>, callback: grpc.sendUnaryData<object>) => {
      const req = call.request;
      // Inside the promise: a refused field must reach the error branch below, not escape the handler.
      Promise.resolve()
        .then(() => svc.list({ userId: optionalText(req.user_id, 'user_id', 128), pageSize: req.page_size, pageToken: req.page_token, activeOnly: req.active_only, caller: caller(call) }))
        .then(
          (page) => callback(null, { reservations: page.rows.map(info), next_page_token: page.nextPageToken, total_count: page.total }),
          (err: unknown) => {
            const { failure, unexpected } = toProtocolFailure(err);
            if (unexpected) log.error({ err: summarize(err), method: 'ListReservations' }, 'request failed');
            const code = failure.error.code === 400 ? grpc.status.INVALID_ARGUMENT : failure.error.code === 503 ? grpc.status.UNAVAILABLE : grpc.status.INTERNAL;
            callback({ code, details: failure.error.message });
          },
        );
    }) as grpc.handleUnaryCall<unknown, object>,
    EngineHeartbeat: unary<{ reservation_id: string; job_id: string; training_active: boolean; job_progress: number; current_metrics: Metrics }, object>(
      log,
      'EngineHeartbeat',
      async (req, call) => {
        const r = await svc.engineHeartbeat({
          caller: caller(call),
          reservationId: reservationId(req.reservation_id),
          jobId: optionalId(req.job_id, 'job_id'),
          trainingActive: req.training_active,
          progress: req.job_progress,
          metrics: req.current_metrics,
        });
        return {
          status: StatusCode.SUCCESS,
          time_remaining_seconds: String(r.timeRemainingS),
          should_extend: r.shouldExtend,
          message: r.shouldExtend ? 'less than 5 minutes left: extend to keep training' : '',
        };
      },
      (f) => ({ ...statusAndError(f), time_remaining_seconds: '0', should_extend: false, message: f.error.message }),
    ),
    GetActiveReservations: unary<{ user_wallet: string }, object>(
      log,
      'GetActiveReservations',
      async (req, call) => {
        const rows = await svc.active(req.user_wallet, caller(call));
        return {
          status: StatusCode.SUCCESS,
          reservations: rows.map((r) => ({
            reservation_id: r.id,
            node_id: r.nodeId,
            node_endpoint: r.nodeEndpoint,
            time_remaining_seconds: String(svc.remainingS(r)),
            engine_connected: svc.engineConnected(r),
            status: RESERVATION_STATUS_CODE[r.status],
            jobs_completed: r.jobsCompleted,
          })),
        };
      },
      statusAndError,
    ),
    GetReconnectionToken: unary<{ reservation_id: string; user_wallet: string }, object>(
      log,
      'GetReconnectionToken',
      async (req, call) => {
        const g = await svc.reconnect({ reservationId: reservationId(req.reservation_id), userWallet: req.user_wallet, caller: caller(call) });
        return {
          status: StatusCode.SUCCESS,
          p2p_auth_token: g.token,
          p2p_token_expires: String(g.tokenExpires),
          node_endpoint: g.reservation.nodeEndpoint,
          time_remaining_seconds: String(g.timeRemainingS),
          current_job_id: g.reservation.currentJobId || g.reservation.id,
        };
      },
      statusAndError,
    ),
    ReportJobCompleteFromNode: unary<{ reservation_id: string; job_id: string; node_id: string; success: boolean }, object>(
      log,
      'ReportJobCompleteFromNode',
      async (req, call) => {
        const r = await svc.nodeJobComplete({ reservationId: reservationId(req.reservation_id), jobId: optionalId(req.job_id, 'job_id'), nodeId: requireId(req.node_id, 'node_id'), success: req.success, caller: caller(call) });
        return {
          status: StatusCode.SUCCESS,
          new_reputation: r.reputation,
          reputation_change: r.change,
          jobs_in_reservation: r.jobs,
          message: 'Job complete. Waiting for new job or reservation end.',
        };
      },
      statusAndError,
    ),
    ReportReservationEndFromEngine: unary<{ reservation_id: string }, object>(
      log,
      'ReportReservationEndFromEngine',
      async (req, call) => endReply(await svc.reportEnd({ reservationId: reservationId(req.reservation_id), from: 'engine', caller: caller(call) }), 'amount_paid', (r) => r.paid),
      statusAndError,
    ),
    ReportReservationEndFromNode: unary<{ reservation_id: string; node_id: string }, object>(
      log,
      'ReportReservationEndFromNode',
      async (req, call) =>
        endReply(await svc.reportEnd({ reservationId: reservationId(req.reservation_id), from: 'node', nodeId: requireId(req.node_id, 'node_id'), caller: caller(call) }), 'amount_received', (r) => r.nodeAmount),
      statusAndError,
    ),
  };
}

/**
 * Reply of ReportReservationEndFrom{Engine,Node}: waiting for the other side, or what the settlement moved —
 * to the Engine the amount paid, to the node its share.
 */
function endReply(
  r: Awaited<ReturnType<ReservationService['reportEnd']>>,
  amountField: 'amount_paid' | 'amount_received',
  amountOf: (receipt: ReleaseReceipt) => string,
) {
  if (!r.settled) {
    return { status: StatusCode.SUCCESS, payment_released: false, [amountField]: '0', payment_tx_hash: '', message: `waiting for the ${r.waitingFor} to report the end` };
  }
  const amount = amountOf(r.settled);
  return {
    status: StatusCode.SUCCESS,
    payment_released: !r.settled.owed && amount !== '0',
    [amountField]: amount,
    payment_tx_hash: r.settled.paymentTx,
    message: `reservation ${r.settled.status}`,
  };
}
