import type { Config } from '../config';
import type { JobWorkflowOptions } from '../workflows/job-workflow';
import type { ReservationOptions } from '../workflows/reservation-workflow';

/** The settings every new job workflow starts with. */
export function jobWorkflowOptions(config: Config): JobWorkflowOptions {
  return {
    heartbeatTimeoutMs: config.jobs.heartbeatTimeoutMs,
    maxAttempts: config.jobs.maxAttempts,
    maxRuntimeMs: config.jobs.maxRuntimeMs,
    requeueIntervalMs: config.jobs.requeueIntervalMs,
    assignTimeoutMs: config.nodes.assignTimeoutMs,
    historyEventLimit: 10_000,
    unreportedEndGraceMs: config.jobs.unreportedEndGraceMs,
  };
}

/** The settings every new reservation workflow starts with. */
export function reservationWorkflowOptions(config: Config): ReservationOptions {
  return {
    nodeHeartbeatTimeoutMs: config.reservations.nodeTimeoutMs,
    earlyRelease: config.reservations.earlyRelease,
    minuteMs: config.reservations.minuteMs,
  };
}
