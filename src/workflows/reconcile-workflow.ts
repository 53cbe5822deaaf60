import { proxyActivities, setCurrentDetails } from '@temporalio/workflow';
import type { ReconcileReport } from '../chain/reconcile';

const reconciliation = proxyActivities<{ reconcilePayments(): Promise<ReconcileReport> }>({
  startToCloseTimeout: '10 minutes',
  heartbeatTimeout: '1 minute',
  retry: { maximumAttempts: 3, initialInterval: '10 seconds' },
});

/**
 * Compares the payment ledger with the chain, completes legs left half-way where that is safe, and
 * reports the rest. Started by the `cyxwiz-reconcile-ledger` schedule; its result is the report.
 */
export async function reconcileLedgerWorkflow(): Promise<ReconcileReport> {
  const report = await reconciliation.reconcilePayments();
  setCurrentDetails(
    [
      `checked ${report.checkedLegs} in-flight legs and ${report.checkedEscrows} escrows`,
      `completed ${report.completed.length} · reopened ${report.reopened.length} · failed ${report.failed.length} · in flight ${report.inFlight.length} · escrow accounts closed ${report.closedAccounts ?? 0} · refunds paid ${report.refundsPaid?.length ?? 0}`,
      report.mismatches.length ? `**mismatches**\n\n${report.mismatches.map((m) => `- ${m}`).join('\n')}` : 'no mismatches',
    ].join('\n\n'),
  );
  return report;
}
