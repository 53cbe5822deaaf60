/**
 * A node's track record as NodeInfo and the REST API show it, from two running counters on its row (kept
 * current by the heartbeat flush and by each attempt's outcome), so a page of 500 nodes costs no query more.
 *
 * - **total_compute_hours**: whole hours (rounded down) the node held job attempts that ended with an outcome of
 *   its own — completed, failed, timed out or lost — each from the attempt's `assigned` event to the recording
 *   of its outcome. Only time on this node counts: a job reassigned away counts on each node for its own
 *   attempt. An attempt cancelled by its submitter has no outcome of the node's and is not counted.
 * - **uptime_percentage**: 0–100, the share of the time since the node's uptime record began (its first
 *   registration) during which it was online. Online time is the sum of the gaps between consecutive
 *   heartbeats no longer than the offline timeout (a longer gap counts as offline throughout), plus, while it
 *   is online now, the time since its last heartbeat. A registration restarts the heartbeat clock without
 *   adding the gap before it (at most one heartbeat interval for a node that re-registers while online).
 */

export interface NodeCounters {
  /** Milliseconds of finished attempts (nodes.compute_ms). */
  computeMs: number;
  /** Milliseconds online since `uptimeSince`, up to the last heartbeat written (nodes.online_ms). */
  onlineMs: number;
  uptimeSince: Date;
  lastHeartbeat: Date;
}

export interface NodeStats {
  /** Whole hours, rounded down. */
  totalComputeHours: number;
  /** 0–100. */
  uptimePercentage: number;
}

const HOUR_MS = 3_600_000;

/** The node's compute hours and uptime at `now`; `online` is its liveness at `now` (status and heartbeat age). */
export function nodeStats(node: NodeCounters, at: { now: Date; online: boolean }): NodeStats {
  const now = at.now.getTime();
  const since = node.uptimeSince.getTime();
  const span = now - since;
  // The open gap since the last heartbeat is online time while the node is online (the flush adds it later).
  const open = at.online ? Math.max(0, now - Math.max(node.lastHeartbeat.getTime(), since)) : 0;
  const uptimePercentage = span > 0 ? clamp((100 * (Math.max(0, node.onlineMs) + open)) / span, 0, 100) : at.online ? 100 : 0;
  return { totalComputeHours: Math.floor(Math.max(0, node.computeMs) / HOUR_MS), uptimePercentage };
}

const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));
