/**
 * Node health, graded by the age of the last heartbeat (shipping nodes beat every 10 s):
 *
 * | grade      | last heartbeat     | effect                                                               |
 * |------------|--------------------|----------------------------------------------------------------------|
 * | healthy    | < 15 s             | matched                                                              |
 * | suspect    | 15 s – offline age | matched (one beat late is common), shown to operators                |
 * | unhealthy  | offline age – 3×   | not matched, marked offline; its jobs are reassigned as their watches |
 * |            |                    | time out (JOB_HEARTBEAT_TIMEOUT_S after its last sign of life)        |
 * | lost       | ≥ 3 × offline age  | gone for good as far as scheduling knows: every job it held has moved |
 *
 * "offline age" is NODE_OFFLINE_AFTER_S (30 s by default).
 */
export type NodeHealth = 'healthy' | 'suspect' | 'unhealthy' | 'lost';

export const SUSPECT_AFTER_MS = 15_000;

export function nodeHealth(lastHeartbeat: Date, now: Date, offlineAfterMs: number): NodeHealth {
  const age = now.getTime() - lastHeartbeat.getTime();
  if (age < Math.min(SUSPECT_AFTER_MS, offlineAfterMs)) return 'healthy';
  if (age < offlineAfterMs) return 'suspect';
  if (age < 3 * offlineAfterMs) return 'unhealthy';
  return 'lost';
}
