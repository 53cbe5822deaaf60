import { and, desc, eq, gt, inArray, lt } from 'drizzle-orm';
import type { Db } from '../db/client';
import { payments } from '../db/schema';
import { isReclaimId, type ChainSettlement, type Leg } from './settlement';

export interface ReconcileReport {
  /** Legs whose transaction had landed while the ledger still said `sent`: now confirmed. */
  completed: string[];
  /** Legs whose transaction expired without landing: back to `pending`, their job re-signs them. */
  reopened: string[];
  /** Legs whose transaction landed with an error. */
  failed: string[];
  /** Legs still in flight (their blockhash is valid). */
  inFlight: string[];
  /** Where the chain disagrees with the ledger: a confirmed leg the chain does not know, or an escrow balance that differs. */
  mismatches: string[];
  checkedLegs: number;
  checkedEscrows: number;
  /**
   * Escrow accounts closed in this pass (their rent back to the escrow authority): of settled ledgers, and those
   * opened ahead of a job that none used.
   */
  closedAccounts: number;
  /** Recorded refunds nobody was settling (waiting for their payer's token account, or left by their workflow), paid in this pass. */
  refundsPaid: string[];
  /** Why such refunds could not be paid in this pass (tried again in the next). */
  refundErrors: string[];
}

/**
 * Compares the payment ledger with the chain. Legs left half-way (`sent` for longer than `staleAfterMs`) are
 * completed when their transaction landed, or reopened when it can no longer land; confirmed legs and the
 * escrow balances of recently active jobs are checked against the chain and mismatches reported; refunds that
 * nobody is settling (waiting for their payer's token account, or left by their workflow) are paid.
 */
export async function reconcileLedger(deps: {
  db: Db;
  settlement: ChainSettlement;
  staleAfterMs: number;
  /** Jobs with ledger activity in this window have their escrow balances checked. */
  recentMs: number;
  /** The checks of recently active jobs stop after this long (the most recently active first); unset: no limit. */
  checkBudgetMs?: number;
  /** Closing the emptied escrow accounts of ledgers settled for this long, so many a pass; unset: none closed. */
  closeAccounts?: { settledForMs: number; limit: number; budgetMs?: number };
  /** Closing the escrow accounts opened ahead of a job that nothing used for this long, so many a pass. */
  closeUnused?: { unusedForMs: number; limit: number; budgetMs?: number };
  /** Paying recorded refunds nobody has settled for this long (settleQuietRefunds), so many a pass; unset: none. */
  settleRefunds?: { quietForMs: number; limit: number; budgetMs?: number };
  now?: () => number;
}): Promise<ReconcileReport> {
  const { db, settlement } = deps;
  const now = deps.now?.() ?? Date.now();
  const report: ReconcileReport = { completed: [], reopened: [], failed: [], inFlight: [], mismatches: [], checkedLegs: 0, checkedEscrows: 0, closedAccounts: 0, refundsPaid: [], refundErrors: [] };

  const stale = await db
    .select()
    .from(payments)
    .where(and(eq(payments.state, 'sent'), lt(payments.updatedAt, new Date(now - deps.staleAfterMs))))
    .orderBy(payments.updatedAt) // the longest stuck first; the rest next time
    .limit(1000);
  const bySignature = new Map<string, typeof stale>();
  for (const row of stale) if (row.txRef) bySignature.set(row.txRef, [...(bySignature.get(row.txRef) ?? []), row]);
  for (const [signature, rows] of bySignature) {
    const jobId = rows[0].jobId;
    const legs = rows.map((r) => r.leg as Leg);
    const names = legs.map((l) => `${jobId}/${l}`);
    report.checkedLegs += rows.length;
    const state = await settlement.chainState(signature, rows[0].lastValidBlockHeight ?? 0);
    if (state.kind === 'landed') {
      await settlement.markConfirmed(jobId, legs, signature, state.slot);
      if (legs.includes('refund')) await settlement.showReservationRefund(jobId, signature);
      report.completed.push(...names);
    } else if (state.kind === 'expired') {
      await settlement.abandonAttempt(jobId, legs, signature, `reconciliation: ${signature} expired without landing`);
      report.reopened.push(...names);
    } else if (state.kind === 'failed') {
      // A payee that could not receive: nothing moved, the legs wait for it (a refund is paid once it can).
      const payee = await settlement.abandonFailedAttempt(jobId, rows, signature, `reconciliation: landed with an error ${state.err}`);
      (payee ? report.reopened : report.failed).push(...names);
    } else {
      report.inFlight.push(...names);
    }
  }

  if (deps.settleRefunds) {
    const refunds = await settlement.settleQuietRefunds(deps.settleRefunds);
    report.refundsPaid = refunds.paid;
    report.refundErrors = refunds.errors;
  }
  if (deps.closeAccounts) {
    const { closed, holding, errors } = await settlement.closeSettledEscrowAccounts(deps.closeAccounts);
    report.closedAccounts = closed.length;
    for (const jobId of holding) report.mismatches.push(`${jobId}: settled, yet its escrow account holds tokens (a stray transfer, to give back with a reclaim)`);
    report.mismatches.push(...errors);
  }
  if (deps.closeUnused) {
    const { closed, holding, errors } = await settlement.closeUnusedEscrowAccounts(deps.closeUnused);
    report.closedAccounts += closed.length;
    for (const jobId of holding) report.mismatches.push(`${jobId}: an escrow account opened ahead of a job that has not used it holds tokens (the payer's, to submit the job with or reclaim)`);
    report.mismatches.push(...errors);
  }
  // Last, within its own budget: the checks only report, and must not keep the pass from paying and closing.
  const checksStarted = Date.now();
  const recent = await db
    .select()
    .from(payments)
    .where(gt(payments.updatedAt, new Date(now - deps.recentMs)))
    .orderBy(desc(payments.updatedAt))
    .limit(2000);
  const jobs = [...new Set(recent.map((r) => r.jobId))];
  if (jobs.length > 0) {
    const legs = await db.select().from(payments).where(inArray(payments.jobId, jobs));
    for (const jobId of jobs) {
      if (deps.checkBudgetMs !== undefined && Date.now() - checksStarted > deps.checkBudgetMs) break;
      const mine = legs.filter((l) => l.jobId === jobId);
      const escrowLeg = mine.find((l) => l.leg === 'escrow' && l.state === 'confirmed');
      if (!escrowLeg) continue;
      // A settlement in flight moves the balance before the ledger knows: check this job next time.
      if (mine.some((l) => l.leg !== 'escrow' && l.state === 'sent')) continue;
      // A reclaim's money sits in its job's escrow account (checked with that job), not in an account of its own.
      if (!isReclaimId(jobId)) {
        const out = mine.filter((l) => l.leg !== 'escrow' && l.state === 'confirmed').reduce((sum, l) => sum + l.amount, 0n);
        const expected = escrowLeg.amount - out;
        const onChain = await settlement.escrowBalance(jobId);
        report.checkedEscrows += 1;
        if (onChain !== expected) report.mismatches.push(`${jobId}: escrow holds ${onChain} units on chain, the ledger expects ${expected}`);
      }
      for (const leg of mine.filter((l) => l.state === 'confirmed' && l.txRef && l.leg !== 'escrow')) {
        const s = await settlement.chainState(leg.txRef!, Number.MAX_SAFE_INTEGER);
        if (s.kind !== 'landed') report.mismatches.push(`${jobId}/${leg.leg}: confirmed in the ledger, ${s.kind} on chain (${leg.txRef})`);
      }
    }
  }
  return report;
}
