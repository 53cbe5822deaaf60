import { TimeoutType } from '@temporalio/common';
import { ActivityFailure, CancellationScope, condition, proxyActivities, TimeoutFailure } from '@temporalio/workflow';
import type { createJobActivities } from '../activities/jobs';

/** What confirmNodeLost found: lost or not, why, and the node's last heartbeat as Postgres has it. */
export type LossVerdict = { lost: boolean; why: string; aliveAt?: number };

/** Whether a lapsed watch's node is lost: may wait for the heartbeat relay to come back (see confirmNodeLost). */
const liveness = proxyActivities<Pick<ReturnType<typeof createJobActivities>, 'confirmNodeLost'>>({
  startToCloseTimeout: '20 minutes',
  heartbeatTimeout: '30 seconds',
  retry: { initialInterval: '1 second', maximumInterval: '30 seconds', maximumAttempts: 10 },
});

/** Whether a node's watch ended for want of heartbeats (the node, or the relay to its watch, went silent). */
export function watchLapsed(error: unknown): boolean {
  const cause = error instanceof ActivityFailure ? error.cause : error;
  return cause instanceof TimeoutFailure && cause.timeoutType === TimeoutType.HEARTBEAT;
}

/**
 * Whether the node whose watch lapsed is lost (confirmNodeLost), unless `interrupted` comes true first (a report,
 * a cancel, a release, whose answers must not wait for the relay): then undefined, the confirmation cancelled. A
 * confirmation that fails for good counts as a loss, with why.
 */
export async function confirmLoss(
  nodeId: string,
  silentForMs: number,
  interrupted: () => boolean,
  /** An alive node is watched from Postgres this long before the answer (see confirmNodeLost). */
  aliveForMs?: number,
): Promise<LossVerdict | undefined> {
  const confirming = new CancellationScope();
  let verdict: LossVerdict | undefined;
  confirming.run(() => liveness.confirmNodeLost({ nodeId, silentForMs, ...(aliveForMs && { aliveForMs }) })).then(
    (v) => (verdict = v),
    (err: unknown) => (verdict ??= { lost: true, why: `its loss could not be confirmed: ${(err as Error | undefined)?.message ?? 'no reason'}` }),
  );
  await condition(() => verdict !== undefined || interrupted());
  if (verdict === undefined) confirming.cancel();
  return verdict;
}
