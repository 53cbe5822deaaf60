import { CompleteAsyncError, Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { Db } from '../db/client';
import * as jobsRepo from '../db/jobs-repo';
import * as nodesRepo from '../db/nodes-repo';
import type { DeviceType } from '../domain/job';
import { hostPort } from '../domain/endpoint';
import { excusedIfBeatAfter, failureKind } from '../domain/reputation';
import { rankCandidates, type Ranked, type Rejected } from '../domain/scoring';
import { claimNode, heldClaim, markWaiting, releaseClaims, type NodeCache } from '../db/node-cache';
import { relayFreshMs } from '../services/heartbeat-hub';
import { LATE, within } from '../services/temporal-calls';

/** How long confirmNodeLost waits for the heartbeat relay to come back before it calls the node lost. */
export const LOSS_CONFIRM_MAX_WAIT_MS = 15 * 60_000;
const LOSS_CONFIRM_POLL_MS = 1000;
/**
 * A read of Postgres unanswered this long counts as Postgres away: a connection hung in a failover or a partition
 * would otherwise hold the confirmation until TCP gives up, long past its heartbeat timeout.
 */
const LOSS_CONFIRM_READ_MS = 10_000;

export interface JobActivityDeps {
  db: Db;
  nodes: NodeCache;
  /** NodeService.AssignJob listens on the registered port + this offset. */
  assignPortOffset: number;
  tokenDecimals: number;
  /** A job's watch times out after this long without a sign of life (JOB_HEARTBEAT_TIMEOUT_S). */
  heartbeatTimeoutMs: number;
  /** A heartbeat relay marked within this long is up (relayFreshMs of HEARTBEAT_FLUSH_MS; default for 1 s). */
  relayFreshMs?: number;
  /** How long confirmNodeLost waits for the relays; default LOSS_CONFIRM_MAX_WAIT_MS. */
  lossConfirmMaxWaitMs?: number;
  /** Wakes waiting jobs that could use these nodes (capacity was given back on them). */
  wakeQueued(nodeIds: string[]): Promise<void>;
  now?: () => Date;
}

/** A node picked for a job, with where to reach it. */
export interface MatchedNode {
  nodeId: string;
  /** Where Engines connect P2P: the registered ip:port. */
  endpoint: string;
  /** Where the node serves NodeService.AssignJob. */
  assignEndpoint: string;
}

export interface MatchInput {
  jobId: string;
  requiredDevice: DeviceType;
  estimatedMemory: number;
  excludeNodeIds: string[];
  /** The escrow (smallest units) and estimated duration: nodes too dear for them are passed over. */
  paymentUnits?: string;
  estimatedDuration?: number;
}

/** Why this node, and why not the others: kept with the job (event data, workflow memo, REST). */
export interface MatchExplanation {
  ranked: Ranked[];
  rejected: Rejected[];
  rejectedCounts: Record<string, number>;
  eligible: number;
  /** Eligible nodes passed over because a job ahead in the queue waits for them, or they filled up meanwhile. */
  claimedByOthers: string[];
  /** Jobs ahead of this one in the queue (when it waits). */
  queuePosition?: number;
}

export interface MatchResult {
  node: MatchedNode | null;
  explanation: MatchExplanation;
}

/** How many of the best-ranked nodes a match tries to claim before it waits. */
const CLAIM_TRIES = 5;

/**
 * A Postgres data or integrity error (SQLSTATE classes 22 and 23) fails the same way on every retry:
 * report it as non-retryable so the job fails visibly instead of retrying forever.
 */
function permanentIfBadData(err: unknown): unknown {
  const code = (err as { cause?: { code?: string }; code?: string })?.cause?.code ?? (err as { code?: string })?.code;
  if (typeof code === 'string' && /^2[23]/.test(code)) {
    return ApplicationFailure.nonRetryable(`Postgres refused the data (${code}): ${(err as Error).message.slice(0, 300)}`, 'BadData');
  }
  return err;
}

/** Activities that read and write the job and node registry in Postgres. */
export function createJobActivities(deps: JobActivityDeps) {
  const now = deps.now ?? (() => new Date());

  /** Applies a state change to the job row and appends its event; idempotent per seq. */
  async function recordTransition(t: jobsRepo.Transition): Promise<void> {
    try {
      await jobsRepo.recordTransition(deps.db, t);
    } catch (err) {
      throw permanentIfBadData(err);
    }
  }

  /**
   * Scores every node against the job (see SCORE_WEIGHTS), then claims capacity on the best one that is
   * free and not wanted by a job ahead in the queue. Null when none can take the job now.
   *
   * It ranks the node cache as it stands (refreshed in the background), so a placement waits for no query
   * but the claims. Only when nothing could be placed does it wait for a fresh refresh and look once more:
   * the job would wait anyway, and a node that registered or freed up moments ago is not missed.
   */
  async function matchNode(input: MatchInput): Promise<MatchResult> {
    const fresh = !deps.nodes.loaded();
    if (fresh) await deps.nodes.refresh();
    // A retry of a match that already claimed a node (the activity died after the claim) gets that node.
    const held = await heldMatch(input, true);
    if (held) return held;
    let attempt = await rankAndClaim(input);
    let queuePosition: number | undefined;
    if (!attempt.node) {
      // Waiting from the first miss: capacity freed while it looks once more wakes it (wake-ups go to waiting
      // jobs only). Its next assignment clears it if the second look finds a node.
      queuePosition = await markWaiting(deps.db, input.jobId);
      if (!fresh) {
        await deps.nodes.refresh();
        attempt = await rankAndClaim(input);
      }
    }
    if (!attempt.node) {
      // A job claims one node at a time (claim_node): an earlier try of this match that ran on past its timeout
      // may hold one now, and every claim here was refused for it. That node is this job's.
      const late = await heldMatch(input, false);
      if (late) return late;
    }
    const { node, ranking, claimedByOthers } = attempt;
    const explanation: MatchExplanation = { ...ranking, ranked: ranking.ranked.slice(0, 5), claimedByOthers };
    if (!node) explanation.queuePosition = queuePosition;
    return { node, explanation };
  }

  /**
   * The node the job holds a claim on, as this match's answer (explained as ranked now: the try that claimed it
   * took its ranking with it). A claim on a node the job must not use is given back (`releaseExcluded`).
   */
  async function heldMatch(input: MatchInput, releaseExcluded: boolean): Promise<MatchResult | undefined> {
    const held = await heldClaim(deps.db, input.jobId);
    if (!held) return undefined;
    if (input.excludeNodeIds.includes(held)) {
      if (releaseExcluded) await releaseClaims(deps.db, input.jobId);
      return undefined;
    }
    const node = await nodesRepo.getNode(deps.db, held);
    if (!node) return undefined;
    const ranking = rank(input);
    return {
      node: { nodeId: node.id, endpoint: hostPort(node.ipAddress, node.port), assignEndpoint: hostPort(node.ipAddress, node.port + deps.assignPortOffset) },
      explanation: { ...ranking, ranked: ranking.ranked.slice(0, 5), claimedByOthers: [] },
    };
  }

  /** Ranks the cached nodes and claims the first of the best CLAIM_TRIES that takes the job. */
  function rank(input: MatchInput) {
    return rankCandidates(deps.nodes.candidates(), {
      requiredDevice: input.requiredDevice,
      minMemory: input.estimatedMemory,
      excludeNodeIds: new Set(input.excludeNodeIds),
      budget: input.paymentUnits
        ? { units: BigInt(input.paymentUnits), durationSeconds: input.estimatedDuration ?? 0, decimals: deps.tokenDecimals }
        : undefined,
      now: now(),
    });
  }

  async function rankAndClaim(input: MatchInput) {
    const ranking = rank(input);
    const claimedByOthers: string[] = [];
    for (const pick of ranking.ranked.slice(0, CLAIM_TRIES)) {
      // Counted before the claim's round trip, so matches ranking meanwhile in this process (a burst of
      // submissions) see this job on the node and spread instead of all trying the same best node. A claim
      // that fails stays counted only until the next refresh, which recounts the claims.
      deps.nodes.noteClaim(pick.nodeId);
      // The node's endpoint is read while the claim is taken (wasted only when the claim fails).
      const [claimed, node] = await Promise.all([claimNode(deps.db, input.jobId, pick.nodeId, deps.tokenDecimals), nodesRepo.getNode(deps.db, pick.nodeId)]);
      if (!claimed) {
        claimedByOthers.push(pick.nodeId);
        continue;
      }
      if (!node) continue;
      const matched: MatchedNode = {
        nodeId: node.id,
        endpoint: hostPort(node.ipAddress, node.port),
        assignEndpoint: hostPort(node.ipAddress, node.port + deps.assignPortOffset),
      };
      return { node: matched, ranking, claimedByOthers };
    }
    return { node: null, ranking, claimedByOthers };
  }

  /** Gives back the node capacity the job holds and lets waiting jobs try for it. */
  async function releaseNode(input: { jobId: string }): Promise<void> {
    const freed = await releaseClaims(deps.db, input.jobId);
    if (freed.length > 0) await deps.wakeQueued(freed);
  }

  /**
   * Watches one attempt of a job on its node. It completes asynchronously: the API heartbeats it whenever
   * the node shows life (heartbeats, reports), so a silent node surfaces as this activity's heartbeat timeout,
   * enforced by the Temporal server; the workflow cancels it when the attempt ends.
   */
  async function watchNode(_input: { jobId: string; nodeId: string; attempt: number }): Promise<void> {
    throw new CompleteAsyncError();
  }

  /** Counts a finished attempt in the node's record. */
  async function recordNodeOutcome(input: { nodeId: string; outcome: 'completed' | 'failed'; jobId: string; reason: string }): Promise<void> {
    const now = (deps.now ?? (() => new Date()))();
    await nodesRepo.recordReputationEvent(deps.db, {
      nodeId: input.nodeId,
      jobId: input.jobId,
      kind: input.outcome === 'completed' ? 'job_completed' : failureKind(input.reason),
      // Postgres text cannot hold NUL: never a reason for this step to retry forever.
      reason: input.reason.replace(/\u0000/g, ''),
      now,
      beatAfterExcuses: excusedIfBeatAfter(now, deps.heartbeatTimeoutMs),
    });
  }

  /**
   * Whether a node whose watch lapsed (silent for `silentForMs`, as far as Temporal heard) is lost. The watch hears
   * the node only through the API's heartbeat relay: a lapse while the relay was down (an API restart, a Temporal
   * or Postgres outage) says nothing about the node. So it is alive when its heartbeats reached Postgres within
   * `silentForMs`, less what passing them on to the watch may lag by (excusedIfBeatAfter); lost once the relays
   * have been up without a gap for twice that (time for nodes to reconnect and beat; none of them gone meanwhile)
   * and it has not beaten; until then this waits (heartbeating), at most LOSS_CONFIRM_MAX_WAIT_MS, after which it
   * is lost if Postgres answers (the relays did not come back), and not lost if Postgres is away (nothing is known
   * of it; watched again). `aliveAt`: its last heartbeat as Postgres has it. With `aliveForMs`, an alive node is
   * watched here, from Postgres, for that long before the answer: lost if it goes silent meanwhile.
   */
  async function confirmNodeLost(input: { nodeId: string; silentForMs: number; aliveForMs?: number }): Promise<{ lost: boolean; why: string; aliveAt?: number }> {
    const ctx = Context.current();
    // What it is waiting for, in its heartbeat details: the Web UI shows them on the pending activity.
    let seen: Record<string, unknown> = { node: input.nodeId, since: new Date().toISOString(), seen: 'nothing yet' };
    const note = (what: Record<string, unknown>) => {
      seen = { ...seen, ...what };
      ctx.heartbeat(seen);
    };
    // Heartbeats on a clock, not between reads: a slow read must not look like a dead activity.
    const beating = setInterval(() => ctx.heartbeat(seen), 5000);
    try {
      return await confirm(ctx, input, note);
    } finally {
      clearInterval(beating);
    }
  }

  async function confirm(
    ctx: Context,
    input: { nodeId: string; silentForMs: number; aliveForMs?: number },
    note: (what: Record<string, unknown>) => void,
  ): Promise<{ lost: boolean; why: string; aliveAt?: number }> {
    const started = Date.now();
    let lastError = '';
    /** Since when Postgres has not answered (undefined while it answers). */
    let failingSince: number | undefined;
    const answered = async <T>(read: Promise<T>): Promise<T> => {
      const result = await within(read, LOSS_CONFIRM_READ_MS);
      if (result === LATE) throw new Error(`no answer within ${LOSS_CONFIRM_READ_MS / 1000} s`);
      return result;
    };
    for (;;) {
      try {
        const node = await answered(nodesRepo.getNode(deps.db, input.nodeId));
        if (!node) return { lost: true, why: 'its record is gone' };
        // Newer than the lag of passing beats on allows (as for the excuse of a loss): the watch missed beats
        // that reached Postgres. A node that really went silent has its last beat about `silentForMs` back.
        if (node.lastHeartbeat > excusedIfBeatAfter(new Date(), input.silentForMs)) {
          // Alive. Asked to (the relay lapsing again and again), it is watched from Postgres for `aliveForMs`
          // first: a watch restarted at every lapse would cost the workflow's history each time.
          if (!input.aliveForMs || Date.now() - started >= input.aliveForMs) {
            return { lost: false, why: `its heartbeats reached the server until ${node.lastHeartbeat.toISOString()}: the relay to its watch lapsed, not the node`, aliveAt: node.lastHeartbeat.getTime() };
          }
          failingSince = undefined;
          note({ seen: `alive: watched from Postgres until ${new Date(started + input.aliveForMs).toISOString()}`, lastHeartbeat: node.lastHeartbeat.toISOString() });
          await ctx.sleep(LOSS_CONFIRM_POLL_MS);
          continue;
        }
        const relaysUpMs = await answered(nodesRepo.relaysUpForMs(deps.db, deps.relayFreshMs ?? relayFreshMs(1000), 2 * input.silentForMs));
        if (relaysUpMs >= 2 * input.silentForMs) return { lost: true, why: '', aliveAt: node.lastHeartbeat.getTime() };
        failingSince = undefined;
        note({ seen: `silent: waiting for the heartbeat relays to be up for ${(2 * input.silentForMs) / 1000} s (up for ${Math.round(relaysUpMs / 1000)} s)`, lastHeartbeat: node.lastHeartbeat.toISOString() });
      } catch (err) {
        lastError = `; last error: ${(err as Error).message}`; // Postgres away: the relay cannot be either
        failingSince ??= Date.now();
        note({ seen: `Postgres has not answered since ${new Date(failingSince).toISOString()}${lastError}` });
      }
      const maxWaitMs = deps.lossConfirmMaxWaitMs ?? LOSS_CONFIRM_MAX_WAIT_MS;
      if (Date.now() - started >= maxWaitMs) {
        // Postgres away: nothing is known of the node (its beats, the relays' health all live there), and nothing
        // could be settled meanwhile. Not a loss: watched again, and judged once Postgres answers.
        if (failingSince !== undefined) {
          return { lost: false, why: `Postgres has not answered since ${new Date(failingSince).toISOString()}: its loss cannot be judged yet${lastError}` };
        }
        return { lost: true, why: `the server's heartbeat relay was not back within ${Math.round(maxWaitMs / 1000)} s${lastError}` };
      }
      await ctx.sleep(LOSS_CONFIRM_POLL_MS);
    }
  }

  /**
   * After an offer that failed: when its `assigned` record is on the job's row all the same (the offer's activity
   * gave up while the node took the job and the record landed late), records the job back as the workflow has it
   * (`back`, under the next number), the node told to stop it; `always`, when the offer ran out of time and its
   * record may still be on its way (it then lands in the history without setting the row back). Nothing
   * otherwise: a refusal or an unreachable node leaves no trace. @returns whether it recorded.
   */
  async function withdrawAssignment(input: { assigned: jobsRepo.Transition; back: jobsRepo.Transition; always?: boolean }): Promise<boolean> {
    const job = await jobsRepo.getJob(deps.db, input.assigned.jobId);
    const shown = job?.eventSeq === input.assigned.seq && job.status === 'assigned' && job.assignedNodeId === input.assigned.assignedNodeId;
    if (!job || (!shown && !input.always)) return false;
    try {
      return await jobsRepo.recordTransition(deps.db, input.back);
    } catch (err) {
      throw permanentIfBadData(err);
    }
  }

  return { recordTransition, matchNode, releaseNode, watchNode, recordNodeOutcome, confirmNodeLost, withdrawAssignment };
}
