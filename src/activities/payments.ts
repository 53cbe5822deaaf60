import { Context } from '@temporalio/activity';
import type { ChainSettlement, LegReceipt, ReleaseOutcome } from '../chain/settlement';

export type { LegReceipt, ReleaseOutcome };

/** How often a running payment activity tells Temporal it is alive. */
const HEARTBEAT_EVERY_MS = 2000;

/**
 * Runs `work` while heartbeating, so a worker that dies mid-settlement is noticed within the activity's
 * heartbeat timeout instead of its whole start-to-close timeout. A local activity (the escrow) cannot
 * heartbeat: its workflow task's timeout notices a dead worker.
 */
export async function heartbeating<T>(work: () => Promise<T>): Promise<T> {
  const context = Context.current();
  if (context.info.isLocal) return work();
  const timer = setInterval(() => context.heartbeat(), HEARTBEAT_EVERY_MS);
  try {
    return await work();
  } finally {
    clearInterval(timer);
  }
}

/** The escrow, release and refund activities: Solana transactions through the settlement, each exactly once. */
export function createPaymentActivities(deps: { settlement: ChainSettlement }) {
  const { settlement } = deps;

  /** Puts the job's payment in its escrow account (or verifies the payer's escrow transaction). */
  async function escrow(input: { jobId: string; amount: string; payer: string; escrowTxHash?: string }): Promise<LegReceipt> {
    return heartbeating(() => settlement.escrow(input));
  }

  /** Pays 90/10 to the node and the platform; owed while the node has no wallet. */
  async function release(input: { jobId: string; nodeId: string }): Promise<ReleaseOutcome> {
    return heartbeating(() => settlement.release(input));
  }

  /** Returns the escrow to the account that funded it. */
  async function refund(input: { jobId: string }): Promise<LegReceipt> {
    return heartbeating(() => settlement.refund(input));
  }

  return { escrow, release, refund };
}
