import { CompleteAsyncError } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { Db } from '../db/client';
import * as jobsRepo from '../db/jobs-repo';
import * as nodesRepo from '../db/nodes-repo';
import type { DeviceType } from '../domain/job';
import { fitsJob } from '../domain/node';

export interface JobActivityDeps {
  db: Db;
  /** A node is online for matching while its last heartbeat is younger than this. */
  offlineAfterMs: number;
  /** NodeService.AssignJob listens on the registered port + this offset. */
  assignPortOffset: number;
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
}

export interface MatchResult {
  node: MatchedNode | null;
  /** Why nodes that looked close were passed over (for the job's history). */
  rejected: { nodeId: string; reason: string }[];
}

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
   * Picks an online node that fits the job's device and memory needs, never one in `excludeNodeIds`;
   * the least loaded, then most reputable, wins. Null when none fits now.
   */
  async function matchNode(input: MatchInput): Promise<MatchResult> {
    const candidates = await nodesRepo.findCandidateNodes(deps.db, {
      requiredDevice: input.requiredDevice,
      minMemory: input.estimatedMemory,
      excludeNodeIds: input.excludeNodeIds,
      onlineSince: new Date(now().getTime() - deps.offlineAfterMs),
      limit: 50,
    });
    const rejected: MatchResult['rejected'] = [];
    for (const c of candidates) {
      const fit = fitsJob(
        { devices: c.devices, ramTotal: c.ramTotal },
        { requiredDevice: input.requiredDevice, estimatedMemory: input.estimatedMemory },
      );
      if (!fit.fits) {
        rejected.push({ nodeId: c.id, reason: fit.reason });
        continue;
      }
      return {
        node: {
          nodeId: c.id,
          endpoint: `${c.ipAddress}:${c.port}`,
          assignEndpoint: `${c.ipAddress}:${c.port + deps.assignPortOffset}`,
        },
        rejected,
      };
    }
    return { node: null, rejected };
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
  async function recordNodeOutcome(input: { nodeId: string; outcome: 'completed' | 'failed' }): Promise<void> {
    await nodesRepo.recordJobOutcome(deps.db, input.nodeId, input.outcome);
  }

  return { recordTransition, matchNode, watchNode, recordNodeOutcome };
}
