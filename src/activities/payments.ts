import { ApplicationFailure } from '@temporalio/common';
import { and, eq, inArray } from 'drizzle-orm';
import { splitPayment } from '../domain/money';
import type { Db } from '../db/client';
import { nodes, payments } from '../db/schema';

/** One money leg as the ledger recorded it. Amounts are decimal strings of smallest units. */
export interface LegReceipt {
  leg: 'escrow' | 'release_node' | 'release_platform' | 'refund';
  amount: string;
  to: string;
  txRef: string;
}

export interface ReleaseReceipt {
  node: LegReceipt;
  platform: LegReceipt;
}

export interface PaymentDeps {
  db: Db;
  platformFeeBps: number;
  /** Ledger account of the platform's 10 %. */
  platformAccount: string;
  /** Ledger account that pays for jobs submitted without a payment_address. */
  defaultPayerAccount: string;
}

/** Non-retryable failure types of the payment activities. */
export const PaymentErrors = {
  escrowMissing: 'EscrowMissing',
  alreadySettled: 'EscrowAlreadySettled',
} as const;

export const escrowAccount = (jobId: string) => `escrow:${jobId}`;
const idempotencyKey = (jobId: string, leg: LegReceipt['leg']) => `${jobId}/${leg}`;
const txRefOf = (row: typeof payments.$inferSelect) => row.txRef ?? `ledger:${row.idempotencyKey}`;

function receipt(row: typeof payments.$inferSelect): LegReceipt {
  return { leg: row.leg, amount: row.amount.toString(), to: row.toAccount, txRef: txRefOf(row) };
}

/**
 * The escrow, release and refund activities over the Postgres ledger. Each leg is keyed by job id + leg,
 * so a retry after a crash finds the leg it already wrote and returns it instead of paying twice; release
 * and refund exclude each other under a lock on the job's escrow row.
 */
export function createPaymentActivities(deps: PaymentDeps) {
  const { db } = deps;

  /** Records the job's escrow. Idempotent. */
  async function escrow(input: { jobId: string; amount: string; payer: string }): Promise<LegReceipt> {
    const payer = input.payer || deps.defaultPayerAccount;
    const key = idempotencyKey(input.jobId, 'escrow');
    await db
      .insert(payments)
      .values({
        jobId: input.jobId,
        leg: 'escrow',
        amount: BigInt(input.amount),
        fromAccount: payer,
        toAccount: escrowAccount(input.jobId),
        state: 'confirmed',
        idempotencyKey: key,
        txRef: `ledger:${key}`,
        memo: `cyxwiz ${key}`,
      })
      .onConflictDoNothing();
    const [row] = await db.select().from(payments).where(eq(payments.idempotencyKey, key));
    return receipt(row);
  }

  /**
   * Pays a completed job's escrow out: floor(90 %) to the node, the remainder to the platform.
   * @throws EscrowMissing, EscrowAlreadySettled (refunded) — both non-retryable.
   */
  async function release(input: { jobId: string; nodeId: string }): Promise<ReleaseReceipt> {
    return db.transaction(async (tx) => {
      const legs = await lockLegs(tx, input.jobId);
      const escrowRow = legs.find((l) => l.leg === 'escrow');
      if (!escrowRow) throw ApplicationFailure.nonRetryable(`job ${input.jobId} has no escrow`, PaymentErrors.escrowMissing);
      if (legs.some((l) => l.leg === 'refund')) {
        throw ApplicationFailure.nonRetryable(`escrow of job ${input.jobId} was refunded`, PaymentErrors.alreadySettled);
      }
      const done = { node: legs.find((l) => l.leg === 'release_node'), platform: legs.find((l) => l.leg === 'release_platform') };
      if (done.node && done.platform) return { node: receipt(done.node), platform: receipt(done.platform) };

      const [node] = await tx.select({ wallet: nodes.walletAddress }).from(nodes).where(eq(nodes.id, input.nodeId));
      const nodeAccount = node?.wallet || `node:${input.nodeId}`;
      const split = splitPayment(escrowRow.amount, BigInt(deps.platformFeeBps));
      const base = { jobId: input.jobId, fromAccount: escrowAccount(input.jobId), state: 'confirmed' as const };
      const rows = await tx
        .insert(payments)
        .values([
          {
            ...base,
            leg: 'release_node',
            amount: split.node,
            toAccount: nodeAccount,
            idempotencyKey: idempotencyKey(input.jobId, 'release_node'),
            txRef: `ledger:${idempotencyKey(input.jobId, 'release_node')}`,
            memo: `cyxwiz ${idempotencyKey(input.jobId, 'release_node')}`,
          },
          {
            ...base,
            leg: 'release_platform',
            amount: split.platform,
            toAccount: deps.platformAccount,
            idempotencyKey: idempotencyKey(input.jobId, 'release_platform'),
            txRef: `ledger:${idempotencyKey(input.jobId, 'release_platform')}`,
            memo: `cyxwiz ${idempotencyKey(input.jobId, 'release_platform')}`,
          },
        ])
        .returning();
      const nodeLeg = rows.find((r) => r.leg === 'release_node');
      const platformLeg = rows.find((r) => r.leg === 'release_platform');
      return { node: receipt(nodeLeg!), platform: receipt(platformLeg!) };
    });
  }

  /**
   * Returns the whole escrow to its payer. Idempotent.
   * @throws EscrowAlreadySettled when it was released; EscrowMissing when there is none (non-retryable).
   */
  async function refund(input: { jobId: string }): Promise<LegReceipt> {
    return db.transaction(async (tx) => {
      const legs = await lockLegs(tx, input.jobId);
      const escrowRow = legs.find((l) => l.leg === 'escrow');
      if (!escrowRow) throw ApplicationFailure.nonRetryable(`job ${input.jobId} has no escrow`, PaymentErrors.escrowMissing);
      const done = legs.find((l) => l.leg === 'refund');
      if (done) return receipt(done);
      if (legs.some((l) => l.leg === 'release_node' || l.leg === 'release_platform')) {
        throw ApplicationFailure.nonRetryable(`escrow of job ${input.jobId} was released`, PaymentErrors.alreadySettled);
      }
      const key = idempotencyKey(input.jobId, 'refund');
      const [row] = await tx
        .insert(payments)
        .values({
          jobId: input.jobId,
          leg: 'refund',
          amount: escrowRow.amount,
          fromAccount: escrowAccount(input.jobId),
          toAccount: escrowRow.fromAccount,
          state: 'confirmed',
          idempotencyKey: key,
          txRef: `ledger:${key}`,
          memo: `cyxwiz ${key}`,
        })
        .returning();
      return receipt(row);
    });
  }

  return { escrow, release, refund };
}

type Tx = Parameters<Parameters<Db['transaction']>[0]>[0];

/** The job's ledger legs, with the escrow row locked so release and refund serialise. */
async function lockLegs(tx: Tx, jobId: string) {
  await tx
    .select({ id: payments.id })
    .from(payments)
    .where(and(eq(payments.jobId, jobId), eq(payments.leg, 'escrow')))
    .for('update');
  return tx
    .select()
    .from(payments)
    .where(and(eq(payments.jobId, jobId), inArray(payments.leg, ['escrow', 'release_node', 'release_platform', 'refund'])));
}
