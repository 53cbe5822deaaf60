import { CompleteAsyncError } from '@temporalio/activity';

/**
 * No-op bodies with the signatures of the job workflow's activities: what is left of a job when Postgres,
 * gRPC, matching and the chain are taken away.
 */
export const twinActivities = {
  async escrow(input: { jobId: string; amount: string }) {
    return { leg: 'escrow', amount: input.amount, to: 'escrow', txRef: `escrow-${input.jobId}` };
  },
  /** The offer and the 'assigned' record in one, as jobWorkflow's assignToNode. */
  async assignToNode(_input: { jobId: string; nodeId: string; seq: number }) {
    return { accepted: true as const };
  },
  /** Completes asynchronously like watchNode: the workflow cancels it when the attempt ends. */
  async watchNode(_input: { jobId: string; nodeId: string; attempt: number }): Promise<void> {
    throw new CompleteAsyncError();
  },
  async release(input: { jobId: string; nodeId: string }) {
    return { owed: false, node: { amount: '1350000000', txRef: `release-${input.jobId}` }, platform: { amount: '150000000' } };
  },
  // local activities
  async matchNode(input: { jobId: string }) {
    return { node: { nodeId: 'twin-node', endpoint: '127.0.0.1:1', assignEndpoint: '127.0.0.1:4' }, explanation: { ranked: [], eligible: 1, jobId: input.jobId } };
  },
  async recordTransition(_t: { jobId: string; seq: number; to: string }) {},
  async releaseNode(_input: { jobId: string }) {},
  async recordNodeOutcome(_input: { nodeId: string; jobId: string; outcome: string }) {},
};

export type TwinActivities = typeof twinActivities;
