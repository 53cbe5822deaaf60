import {
  ActivityCancellationType,
  CancellationScope,
  allHandlersFinished,
  condition,
  proxyActivities,
  proxyLocalActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  upsertMemo,
  upsertSearchAttributes,
} from '@temporalio/workflow';
import { JobSearchAttributes as SA } from '../../src/workflows/search-attributes';
import type { TwinActivities } from './activities';
import { twinAccepted, twinComplete, twinProgress, twinStatus, type TwinJobInput } from './messages';

/**
 * The bare Temporal twin of jobWorkflow's happy path, with the same Temporal shape and none of our logic:
 * escrow (local) beside match (local) → offer and "assigned" (one local) → watch (async activity,
 * cancelled at the end; a timer for a node that never reports, cancelled too) → accepted update → "running" (local) → a progress signal → complete update →
 * release claims (local) → release (activity) → outcome (local) → "completed" (local); the same search
 * attribute, memo and current-details upserts; the same timeouts and retry policies.
 */
const registry = proxyLocalActivities<TwinActivities>({
  startToCloseTimeout: '10 seconds',
  retry: { initialInterval: '200 milliseconds', backoffCoefficient: 2, maximumInterval: '30 seconds' },
});
const money = proxyActivities<TwinActivities>({
  startToCloseTimeout: '3 minutes',
  heartbeatTimeout: '15 seconds',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '1 minute' },
});
const escrowMoney = proxyLocalActivities<TwinActivities>({
  startToCloseTimeout: '3 minutes',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '1 minute' },
});
const dispatch = proxyLocalActivities<TwinActivities>({
  startToCloseTimeout: 7000,
  retry: { maximumAttempts: 2, initialInterval: '500 milliseconds' },
});

export async function twinJobWorkflow(input: TwinJobInput): Promise<{ jobId: string; phase: string }> {
  const { jobId } = input;
  let phase = 'pending';
  let nodeId: string | null = null;
  let nodeStarted = false;
  let progress = 0;
  let seq = 0;
  let escrow = 'none';
  let outcome: { nodeId: string } | undefined;
  let final: { txRef: string } | undefined;

  const details = () => setCurrentDetails(`**${phase}** · escrow ${escrow}\n\nnode \`${nodeId ?? '-'}\` · progress ${(progress * 100).toFixed(0)} %`);
  const publish = () => {
    upsertSearchAttributes([
      { key: SA.status, value: phase },
      { key: SA.nodeId, value: nodeId ?? '' },
      { key: SA.attempt, value: nodeId ? 1 : 0 },
      { key: SA.escrowState, value: escrow },
    ]);
    details();
  };
  const transition = async (to: string) => {
    seq += 1;
    await registry.recordTransition({ jobId, seq, to });
    phase = to;
    publish();
  };

  setHandler(twinStatus, () => ({ phase, progress }));
  setHandler(twinProgress, (p) => {
    if (p.nodeId !== nodeId || outcome) return;
    progress = p.progress ?? progress;
    nodeStarted = true;
    details();
  });
  setHandler(twinAccepted, async () => {
    await condition(() => phase === 'assigned' || phase === 'running');
    nodeStarted = true;
    return { acknowledged: true };
  });
  setHandler(twinComplete, async (r) => {
    outcome ??= r;
    await condition(() => final !== undefined);
    return { paymentReleased: true, txRef: final!.txRef };
  });

  const matching = CancellationScope.nonCancellable(() => registry.matchNode({ jobId }));
  await CancellationScope.nonCancellable(() => escrowMoney.escrow({ jobId, amount: input.paymentUnits }));
  escrow = 'held';
  details();

  const match = await matching;
  seq += 1;
  await dispatch.assignToNode({ jobId, nodeId: match.node.nodeId, seq });
  nodeId = match.node.nodeId;
  phase = 'assigned';
  publish();
  upsertMemo({ match: { nodeId, attempt: 1, ...match.explanation } });

  const watch = proxyActivities<TwinActivities>({
    activityId: 'watch-1',
    heartbeatTimeout: '30 seconds',
    startToCloseTimeout: '7 days',
    retry: { maximumAttempts: 1 },
    cancellationType: ActivityCancellationType.TRY_CANCEL,
  });
  const scope = new CancellationScope();
  let watchEnded = false;
  scope.run(() => watch.watchNode({ jobId, nodeId, attempt: 1 })).then(
    () => (watchEnded = true),
    () => (watchEnded = true),
  );
  // jobWorkflow's end-by timer for nodes that never report (its default: 10 minutes' run plus 10 minutes' grace).
  const endByScope = new CancellationScope();
  let endByPassed = false;
  endByScope.run(() => sleep(20 * 60_000)).then(
    () => (endByPassed = true),
    () => undefined,
  );
  for (;;) {
    await condition(() => outcome !== undefined || watchEnded || (nodeStarted && phase === 'assigned'));
    if (outcome || watchEnded) break;
    await transition('running');
  }
  if (!watchEnded) scope.cancel();
  if (!endByPassed) endByScope.cancel();

  await registry.releaseNode({ jobId });
  const released = await CancellationScope.nonCancellable(() => money.release({ jobId, nodeId: nodeId! }));
  await registry.recordNodeOutcome({ nodeId: nodeId!, jobId, outcome: 'completed' });
  escrow = 'released';
  await transition('completed');
  final = { txRef: released.node.txRef };
  await condition(allHandlersFinished);
  return { jobId, phase };
}
