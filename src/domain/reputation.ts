/**
 * Reputation is a number in 0..1 (new nodes start at 0.5). Each finished attempt moves it by a fixed,
 * documented amount and leaves a row in reputation_events that cites the job:
 *
 * | event          | change | when                                                   |
 * |----------------|--------|--------------------------------------------------------|
 * | job_completed  | +0.02  | the node reported completion                            |
 * | job_failed     | −0.05  | the node reported a failure                             |
 * | timeout        | −0.05  | the attempt exceeded the maximum run time               |
 * | node_lost      | −0.10  | the node went silent mid-job (heartbeat timeout)        |
 *
 * A node that falls below BAN_THRESHOLD is banned (matches nothing) for 24 h × the number of its bans so
 * far (24 h, 48 h, 72 h …); the ban expires by itself.
 */
export const REPUTATION_DELTAS = { job_completed: 0.02, job_failed: -0.05, timeout: -0.05, node_lost: -0.1 } as const;
export type ReputationEvent = keyof typeof REPUTATION_DELTAS;
export const BAN_THRESHOLD = 0.2;
export const BAN_HOURS = 24;

/** What caused a failed attempt, from the workflow's reason for it. */
export function failureKind(reason: string): ReputationEvent {
  if (reason.startsWith('node lost')) return 'node_lost';
  if (reason.startsWith('exceeded the maximum run time')) return 'timeout';
  return 'job_failed';
}

/** The reputation after an event, kept in 0..1. */
export function applyDelta(reputation: number, event: ReputationEvent): number {
  return Math.round(Math.min(1, Math.max(0, reputation + REPUTATION_DELTAS[event])) * 1e6) / 1e6;
}

/**
 * For a node lost mid-job (its watch timed out, `heartbeatTimeoutMs` after the last sign of life passed on): a
 * stored heartbeat newer than this shows the node was beating and the server failed to pass it on. The window
 * leaves out what passing liveness on may lag the stored beats by (the gateway's throttle, a tenth of the
 * timeout, and two seconds of flushing), so a node that really went silent is never excused.
 */
export function excusedIfBeatAfter(now: Date, heartbeatTimeoutMs: number): Date {
  return new Date(now.getTime() - (heartbeatTimeoutMs * 0.9 - 2000));
}
