import { ApplicationFailure } from '@temporalio/common';
import { getBase58Decoder, getBase58Encoder } from '@solana/kit';
import {
  ComputeBudgetProgram,
  Connection,
  Keypair,
  PublicKey,
  SendTransactionError,
  Transaction,
  type BlockhashWithExpiryBlockHeight,
  type TransactionInstruction,
  type VersionedTransactionResponse,
} from '@solana/web3.js';
import { createCloseAccountInstruction, createTransferCheckedInstruction, TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID, unpackAccount } from '@solana/spl-token';
import { and, eq, gt, inArray, isNotNull, isNull, like, lt, ne, notLike, or, sql, TransactionRollbackError } from 'drizzle-orm';
import type { Db, DbOrTx } from '../db/client';
import { preparedStatement } from '../db/prepared';
import { jobs, nodes, openedEscrowAccounts, payments, reservations } from '../db/schema';
import { ConflictError, TooManyRequestsError } from '../domain/errors';
import { isTerminal } from '../domain/job';
import { splitPayment } from '../domain/money';
import { PaymentFailures } from '../domain/payments';
import {
  ACCOUNT_SIZE,
  createEscrowAccountInstructions,
  escrowAddress,
  memoInstruction,
  payToWallet,
  signTransaction,
  tokenAccountOf,
} from './instructions';

/** The commitment levels a settlement can wait for. */
export type ChainCommitment = 'processed' | 'confirmed' | 'finalized';

export type Leg = 'escrow' | 'release_node' | 'release_platform' | 'refund';
type PaymentRow = typeof payments.$inferSelect;

/** One money leg as settled. Amounts are decimal strings of smallest units; txRef is the transaction signature. */
export interface LegReceipt {
  leg: Leg;
  amount: string;
  to: string;
  txRef: string;
}

/**
 * How a reservation's payment pot (its first escrow, or one extension's) was settled: `paid` went 90/10 to
 * the node and the platform, `refunded` back to whoever funded the pot. Amounts are smallest units.
 */
export interface PotOutcome {
  potId: string;
  paid: string;
  /** The node's share of `paid` (the rest went to the platform). */
  nodeAmount: string;
  refunded: string;
  /** The node's share waits in state `owed` until the node registers a wallet. */
  owed: boolean;
  /** Signature of the transaction that paid the node ('' when nothing was paid or it is owed). */
  paymentTx: string;
  /** Signature of the transaction that refunded ('' when nothing was refunded). */
  refundTx: string;
}

export type ReleaseOutcome =
  | { owed: false; node: LegReceipt; platform: LegReceipt }
  /** `because`: why the node cannot be paid yet ("until it registers a wallet", ...; absent in older histories). */
  | { owed: true; nodeAmount: string; platformAmount: string; because?: string };

/** Non-retryable failure types: retrying cannot make them succeed. */
export const SettlementErrors = PaymentFailures;

/** Points where a test can stop the process to prove a leg still happens exactly once. */
export interface SettlementHooks {
  /** The signed transaction is recorded in Postgres; nothing has been sent. */
  afterRecord?(leg: Leg[]): Promise<void> | void;
  /** The transaction was handed to the RPC; not confirmed yet. */
  afterSend?(leg: Leg[]): Promise<void> | void;
  /** The transaction is confirmed on chain; the ledger does not know yet. */
  afterConfirm?(leg: Leg[]): Promise<void> | void;
}

export interface ChainSettlementDeps {
  db: Db;
  connection: Connection;
  commitment: ChainCommitment;
  mint: PublicKey;
  decimals: number;
  /** Base and owner of every escrow account; pays fees and rent. */
  authority: Keypair;
  /** Wallet whose token account receives the platform's share. */
  treasury: PublicKey;
  /** The server's payer account, for jobs submitted without their own escrow transaction. */
  payer?: Keypair;
  platformFeeBps: number;
  /** How long one activity attempt waits for a confirmation before letting Temporal retry. */
  confirmTimeoutMs: number;
  pollMs?: number;
  /** How long one asked blockhash is reused for new transactions; default 1 s (see latestBlockhash). */
  blockhashReuseMs?: number;
  /** Priority fee of settlement transactions, in micro-lamports per compute unit; 0 or unset = none. */
  priorityFeeMicroLamports?: number;
  hooks?: SettlementHooks;
}

const b58 = getBase58Decoder();
const b58bytes = getBase58Encoder();

/**
 * The node's registered wallet when it can be paid: a Solana address, else '' (the node is owed until it
 * registers one). Registration refuses anything else; this guards rows written before it did, so a bad address
 * never leaves a payment retrying forever.
 */
function payableWallet(wallet: string | null | undefined): string {
  if (!wallet) return '';
  try {
    return new PublicKey(wallet).toBase58() === wallet ? wallet : '';
  } catch {
    return '';
  }
}
const nonRetryable = (type: string, message: string) => ApplicationFailure.create({ type, message, nonRetryable: true });
const retryable = (message: string) => ApplicationFailure.create({ type: 'SettlementPending', message });
/**
 * Thrown by settle() when its legs are no longer in one state (another attempt settled some of them): no
 * transaction may cover them all. Retryable; settlePot catches it and groups the legs again.
 */
const LEGS_SPLIT = 'SettlementLegsSplit';
const legsSplit = (message: string) => ApplicationFailure.create({ type: LEGS_SPLIT, message });
const isLegsSplit = (err: unknown) => err instanceof ApplicationFailure && err.type === LEGS_SPLIT;
/** States from which a leg may be put in a newly signed transaction. */
const SENDABLE = ['pending', 'owed', 'failed'] as const;
const isSendable = (r: PaymentRow) => (SENDABLE as readonly string[]).includes(r.state);
export const legKey = (jobId: string, leg: Leg | 'release') => `${jobId}/${leg}`;
/**
 * The ledger id of a reclaim: its legs (the payer's transfer as 'escrow', the way back as 'refund') are rows of
 * their own, apart from the job's. Its money sits in the job's escrow account, not one of its own.
 */
export const reclaimId = (jobId: string, signature: string) => `${jobId}/reclaim/${signature}`;
export const isReclaimId = (id: string) => id.includes('/reclaim/');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Waits between looks for a payer's transaction the cluster does not show yet (3.5 s in all). */
const PAYER_TX_WAITS_MS = [500, 1000, 2000];
/** The compute budget a settlement transaction asks for when it pays a priority fee. */
const SETTLEMENT_COMPUTE_UNITS = 200_000;
/** How often an attempt's bytes are sent again while it is awaited. */
const REBROADCAST_MS = 2000;
/** How a leg's last_error starts when the cluster refused an attempt's bytes. */
const SEND_REFUSED = 'send refused:';

/**
 * Classifies a refused transaction: the ones no retry can fix. The platform's own fee payer running short of
 * SOL is not one of them (an operator tops it up and the retry succeeds); the payer's tokens are.
 */
/** Whether an escrow account (as read from the chain, null when there is none) holds tokens, or may: not one of ours. */
function holdsTokens(info: { data: Uint8Array } | null): boolean {
  return info !== null && (info.data.length < 72 || Buffer.from(info.data).readBigUInt64LE(64) !== 0n);
}

function permanentReason(err: unknown): string | undefined {
  const text = `${(err as Error)?.message ?? ''} ${JSON.stringify((err as SendTransactionError)?.logs ?? [])}`;
  if (/insufficient lamports|InsufficientFundsFor(Fee|Rent)|AccountNotFound/i.test(text)) return undefined;
  if (/custom program error: 0x1\b|"Custom":1\b|Error: insufficient funds/i.test(text)) return 'insufficient funds';
  if (/InvalidAccountData|invalid account data|owner does not match|custom program error: 0x4\b|MintMismatch|0x3\b/i.test(text)) {
    return 'invalid account (wrong mint or owner)';
  }
  return undefined;
}

/** A transaction's account keys: its static keys, then those its lookup tables loaded (writable, read-only). */
function accountKeysOf(tx: VersionedTransactionResponse): PublicKey[] {
  const loaded = tx.meta?.loadedAddresses;
  return [...tx.transaction.message.staticAccountKeys, ...(loaded?.writable ?? []), ...(loaded?.readonly ?? [])];
}

const TRANSFER = 3;
const TRANSFER_CHECKED = 12;

/**
 * The SPL token transfers of a transaction, top-level and inner (a program's transfer on the payer's behalf),
 * as account indexes and amounts. Other instructions move no one's tokens into an escrow account.
 */
function tokenTransfers(tx: VersionedTransactionResponse): { source: number; destination: number; amount: bigint }[] {
  const tokenProgram = accountKeysOf(tx).findIndex((k) => k.equals(TOKEN_PROGRAM_ID));
  if (tokenProgram < 0) return [];
  const instructions = [
    ...tx.transaction.message.compiledInstructions.map((i) => ({ program: i.programIdIndex, accounts: i.accountKeyIndexes, data: Buffer.from(i.data) })),
    ...(tx.meta?.innerInstructions ?? []).flatMap((inner) =>
      inner.instructions.map((i) => ({ program: i.programIdIndex, accounts: i.accounts, data: Buffer.from(b58bytes.encode(i.data)) })),
    ),
  ];
  return instructions.flatMap((i) => {
    if (i.program !== tokenProgram || i.data.length < 9) return [];
    if (i.data[0] === TRANSFER) return [{ source: i.accounts[0], destination: i.accounts[1], amount: i.data.readBigUInt64LE(1) }];
    if (i.data[0] === TRANSFER_CHECKED) return [{ source: i.accounts[0], destination: i.accounts[2], amount: i.data.readBigUInt64LE(1) }];
    return [];
  });
}

// Read several times by every settlement.
const paymentsOfJob = preparedStatement((db) =>
  db.select().from(payments).where(eq(payments.jobId, sql.placeholder('jobId'))).prepare('payments_of_job'),
);

/**
 * Escrow, release and refund as Solana transactions, each exactly once whatever fails.
 *
 * A leg's row in `payments` is its idempotency record (key = job id + leg; the memo carries it too). Before
 * a transaction is sent, its signature, bytes and last valid block height are written to the row. A retry
 * first asks the chain about that signature: landed → the row is confirmed; not landed but its blockhash is
 * still valid → the same bytes are sent again (a duplicate cannot land twice); expired and never landed →
 * only then is a new transaction signed. Release and refund exclude each other through a row lock.
 */
export function createChainSettlement(deps: ChainSettlementDeps) {
  const { db, connection, authority } = deps;
  const pollMs = deps.pollMs ?? 250;
  const blockhashReuseMs = deps.blockhashReuseMs ?? 1000;
  /** Wallet addresses found unable to hold tokens, and those found able (an account's kind does not change). */
  const walletVerdicts = new Map<string, boolean>();

  /**
   * The node's wallet when tokens paid to it can be used: not a token account, a mint or a program (any of them
   * passes as an address, and its associated token account would take the node's 90 % for good). Else '': the
   * payment is owed until the node registers a wallet that can.
   */
  async function usableWallet(wallet: string): Promise<string> {
    if (!wallet) return '';
    let usable = walletVerdicts.get(wallet);
    if (usable === undefined) {
      const info = await connection.getAccountInfo(new PublicKey(wallet), deps.commitment);
      usable = !info || !(info.executable || info.owner.equals(TOKEN_PROGRAM_ID) || info.owner.equals(TOKEN_2022_PROGRAM_ID));
      if (walletVerdicts.size >= 10_000) walletVerdicts.clear();
      walletVerdicts.set(wallet, usable);
    }
    return usable ? wallet : '';
  }

  /**
   * Why `wallet` cannot be paid into its associated token account for the mint now, or undefined when it can: the
   * account must exist as an initialised, unfrozen token account of the mint that the wallet owns. The platform
   * never opens one for a payee: whoever owns it can close it and keep the rent, so paying that rent on every
   * refund or payout would let anyone earn it again and again (close, get paid, close). A payee without one waits.
   */
  async function cannotReceive(wallet: string): Promise<string | undefined> {
    const owner = new PublicKey(wallet);
    const address = tokenAccountOf(owner, deps.mint);
    const info = await connection.getAccountInfo(address, deps.commitment);
    const where = `${wallet} has no token account for ${deps.mint.toBase58()} (${address.toBase58()})`;
    if (!info) return `${where}; the platform does not open one for it`;
    let account: ReturnType<typeof unpackAccount>;
    try {
      account = unpackAccount(address, info);
    } catch {
      return `${where}: ${address.toBase58()} is not a token account`;
    }
    if (!account.mint.equals(deps.mint) || !account.owner.equals(owner)) return `${where}: ${address.toBase58()} is not ${wallet}'s`;
    if (!account.isInitialized) return `${where}: ${address.toBase58()} is not initialised`;
    if (account.isFrozen) return `${wallet}'s token account ${address.toBase58()} is frozen`;
    return undefined;
  }

  /**
   * Why the legs of a refused or failed attempt may not have been payable: the first payee among them (wallets
   * paid into their token accounts; not escrow accounts, nor the treasury, whose account a payment opens) that
   * cannot receive now. Such an attempt waits for its payee instead of failing for good.
   */
  async function payeeProblem(rows: PaymentRow[]): Promise<{ leg: Leg; why: string } | undefined> {
    for (const r of rows) {
      if (r.leg === 'escrow' || r.leg === 'release_platform' || r.amount === 0n) continue;
      // A failed look is thrown (retryable): the attempt stays recorded, to be decided on the next try.
      const why = await cannotReceive(r.toAccount);
      if (why) return { leg: r.leg, why };
    }
    return undefined;
  }

  /**
   * The node's wallet when it can be paid now: usable (see usableWallet) and able to receive (see cannotReceive).
   * Else '' and why: the payment is owed until that changes.
   */
  async function payableNow(wallet: string): Promise<{ wallet: string; owedBecause: string }> {
    const usable = await usableWallet(payableWallet(wallet));
    if (!usable && wallet) return { wallet: '', owedBecause: `until it registers a wallet that can hold tokens (${wallet.slice(0, 64)} cannot)` };
    if (!usable) return { wallet: '', owedBecause: 'until it registers a wallet' };
    const why = await cannotReceive(usable);
    if (why) return { wallet: '', owedBecause: `until its wallet can receive them: ${why}` };
    return { wallet: usable, owedBecause: '' };
  }

  /** Records on a leg not yet sent why it waits (kept until it is sent), and @returns the retryable failure to throw. */
  async function waitsFor(jobId: string, leg: Leg, why: string) {
    await db
      .update(payments)
      .set({ lastError: why, updatedAt: new Date() })
      .where(and(eq(payments.jobId, jobId), eq(payments.leg, leg), inArray(payments.state, [...SENDABLE]), sql`${payments.lastError} is distinct from ${why}`));
    return retryable(why);
  }

  // With a price, a limit too: without one the fee is charged on 200,000 units per instruction (~1M for a
  // release), where a settlement uses a small part of SETTLEMENT_COMPUTE_UNITS.
  const priorityFee = deps.priorityFeeMicroLamports
    ? [
        ComputeBudgetProgram.setComputeUnitLimit({ units: SETTLEMENT_COMPUTE_UNITS }),
        ComputeBudgetProgram.setComputeUnitPrice({ microLamports: deps.priorityFeeMicroLamports }),
      ]
    : [];
  /** Rent for an escrow token account: a cluster constant, asked once (a failed ask is asked again). */
  let rentExemption: Promise<number> | undefined;
  const rentExemptionOnce = () =>
    (rentExemption ??= connection.getMinimumBalanceForRentExemption(ACCOUNT_SIZE).catch((err) => {
      rentExemption = undefined;
      throw err;
    }));
  const escrowOf = (jobId: string) => escrowAddress(authority.publicKey, jobId);

  /**
   * The latest blockhash, asked of the cluster at most once per `blockhashReuseMs`: the transactions signed in
   * that time share it (a blockhash stays valid for 150 blocks, about a minute on a real cluster). Forgotten
   * as soon as an attempt expires or a send fails, so a retry never signs with a blockhash that let it down.
   */
  let recentBlockhash: { askedAt: number; value: Promise<BlockhashWithExpiryBlockHeight> } | undefined;
  function latestBlockhash(): Promise<BlockhashWithExpiryBlockHeight> {
    const now = Date.now();
    if (!recentBlockhash || now - recentBlockhash.askedAt >= blockhashReuseMs || now < recentBlockhash.askedAt) {
      const value = connection.getLatestBlockhash(deps.commitment);
      const asked = { askedAt: now, value };
      recentBlockhash = asked;
      value.catch(() => {
        if (recentBlockhash === asked) recentBlockhash = undefined;
      });
    }
    return recentBlockhash.value;
  }
  const forgetBlockhash = () => {
    recentBlockhash = undefined;
  };

  /** The job's rows of these legs, in the order asked (a job has a handful of rows: all are read). */
  async function rowsOf(jobId: string, legs: Leg[]): Promise<PaymentRow[]> {
    const rows = await paymentsOfJob(db).execute({ jobId });
    return legs.map((l) => rows.find((r) => r.leg === l)).filter((r): r is PaymentRow => !!r);
  }

  const receipt = (r: PaymentRow): LegReceipt => ({ leg: r.leg, amount: r.amount.toString(), to: r.toAccount, txRef: r.txRef ?? '' });

  async function markConfirmed(jobId: string, legs: Leg[], signature: string, slot: number | null): Promise<void> {
    await db
      .update(payments)
      .set({ state: 'confirmed', slot, lastError: null, updatedAt: new Date() })
      .where(and(eq(payments.jobId, jobId), inArray(payments.leg, legs), eq(payments.txRef, signature)));
  }

  /**
   * Forgets an attempt that can never land (expired, refused); keeps why, with the refusal of its last send when
   * there was one (an expiry caused by, say, the fee payer running out of SOL names that).
   */
  async function abandonAttempt(jobId: string, legs: Leg[], signature: string, why: string, state: 'pending' | 'failed' = 'pending') {
    await db
      .update(payments)
      .set({
        state, txRef: null, txBytes: null, lastValidBlockHeight: null, updatedAt: new Date(),
        lastError: sql`${why} || coalesce('; ' || case when ${payments.lastError} like ${`${SEND_REFUSED}%`} then ${payments.lastError} end, '')`,
      })
      // Only while it is in flight: a leg another attempt confirmed under the same signature stays paid.
      .where(and(eq(payments.jobId, jobId), inArray(payments.leg, legs), eq(payments.txRef, signature), eq(payments.state, 'sent')));
  }

  /**
   * Gives up an attempt that landed with an error. When a payee could not receive (its token account closed after it
   * was checked), nothing moved and these bytes can never land again: the legs wait for it (pending, settled again
   * once it can; a refund by settleQuietRefunds), and that payee's problem is returned. Otherwise they fail for good.
   */
  async function abandonFailedAttempt(jobId: string, rows: PaymentRow[], signature: string, why: string): Promise<{ leg: Leg; why: string } | undefined> {
    const legs = rows.map((r) => r.leg as Leg);
    const payee = await payeeProblem(rows);
    if (payee) await abandonAttempt(jobId, legs, signature, `${why}; ${payee.why}`);
    else await abandonAttempt(jobId, legs, signature, why, 'failed');
    return payee;
  }

  /**
   * Sends an attempt's bytes again, as long as its legs still carry it: once another attempt of the same settlement
   * gave it up (expired) and signed anew, these bytes must not reach the chain beside the new ones.
   */
  function resendWhileRecorded(jobId: string, signature: string, bytes: Buffer, minContextSlot?: number): () => Promise<void> {
    return async () => {
      const [recorded] = await db
        .select({ id: payments.id })
        .from(payments)
        .where(and(eq(payments.jobId, jobId), eq(payments.txRef, signature), eq(payments.state, 'sent')))
        .limit(1);
      if (recorded) await send(bytes, minContextSlot);
    };
  }

  /** Keeps why the cluster refused to take an attempt's bytes (it stays recorded: the bytes may still land). */
  async function noteSendRefused(jobId: string, legs: Leg[], signature: string, err: unknown): Promise<void> {
    // The message up to its logs ("Simulation failed. Message: …", one line), and the program logs that say what
    // went wrong (the rest is metadata).
    const logs = ((err as SendTransactionError)?.logs ?? []).filter((l) => /error|insufficient|failed|invalid/i.test(l));
    const text = String((err as Error)?.message ?? err).split(/\n\s*Logs:/)[0].replace(/\s+/g, ' ').trim();
    const message = [text.slice(0, 300), ...logs].join(' | ').slice(0, 500);
    await db
      .update(payments)
      .set({ lastError: `${SEND_REFUSED} ${message}`, updatedAt: new Date() })
      .where(and(eq(payments.jobId, jobId), inArray(payments.leg, legs), eq(payments.txRef, signature)));
  }

  /**
   * The attempt's status when the cluster knows the signature, and the slot the answering node had reached. An
   * error counts only at the configured commitment: on a fork that is dropped, the same bytes may still land.
   */
  async function signatureStatus(signature: string): Promise<{ state?: ChainState; seenSlot: number }> {
    const { context, value } = await connection.getSignatureStatuses([signature], { searchTransactionHistory: true });
    const status = value[0];
    if (!status) return { seenSlot: context.slot };
    const level = status.confirmationStatus ?? 'processed';
    const reached = deps.commitment === 'finalized' ? level === 'finalized' : deps.commitment === 'confirmed' ? level !== 'processed' : true;
    if (!reached) return { state: { kind: 'pending' }, seenSlot: context.slot };
    return { state: status.err ? { kind: 'failed', err: JSON.stringify(status.err) } : { kind: 'landed', slot: status.slot }, seenSlot: context.slot };
  }

  type ChainState = { kind: 'landed'; slot: number } | { kind: 'failed'; err: string } | { kind: 'pending' } | { kind: 'expired' };

  /**
   * What the chain says about a recorded attempt. "Expired" signs a new transaction over the same legs, so it is
   * decided on the finalized chain (no fork can still include the bytes once a finalized block is past their last
   * valid height), and only from a status answer by a node that had seen that block: behind a load balancer, a
   * lagging node answers "unknown" for a transaction that landed, and believing it would pay twice.
   */
  async function chainState(signature: string, lastValidBlockHeight: number): Promise<ChainState> {
    const first = await signatureStatus(signature);
    if (first.state) return first.state;
    const finalized = await connection.getEpochInfo('finalized');
    if ((finalized.blockHeight ?? 0) <= lastValidBlockHeight) return { kind: 'pending' };
    // Past its last valid block: asked again, since it may have landed between the first read and the height.
    const late = await signatureStatus(signature);
    if (late.state) return late.state;
    if (late.seenSlot < finalized.absoluteSlot) return { kind: 'pending' };
    forgetBlockhash();
    return { kind: 'expired' };
  }

  /**
   * Polls until the attempt lands, expires, or this activity attempt's patience ends. With the attempt's bytes,
   * sends them again every REBROADCAST_MS meanwhile: the RPC node is told not to retry (it would keep going after
   * the blockhash expired), and on a congested cluster one send is often dropped before a leader sees it.
   */
  async function awaitOutcome(signature: string, lastValidBlockHeight: number, resend?: () => Promise<void>): Promise<ChainState> {
    const deadline = Date.now() + deps.confirmTimeoutMs;
    let sentAt = Date.now();
    for (;;) {
      const state = await chainState(signature, lastValidBlockHeight);
      if (state.kind !== 'pending' || Date.now() >= deadline) return state;
      await sleep(pollMs);
      if (resend && Date.now() - sentAt >= REBROADCAST_MS) {
        sentAt = Date.now();
        await resend().catch(() => undefined); // a refusal shows in the next status check or at expiry
      }
    }
  }

  /**
   * Sends signed bytes. `minContextSlot`: the slot the money being moved landed in (the escrow's), so that the
   * preflight runs on a node that has seen it; a lagging node refuses the call, where it would otherwise report
   * the escrow account missing or empty, and that would count as a permanent refusal.
   */
  async function send(bytes: Buffer, minContextSlot?: number): Promise<void> {
    try {
      await connection.sendRawTransaction(bytes, { preflightCommitment: deps.commitment, maxRetries: 0, ...(minContextSlot !== undefined && { minContextSlot }) });
    } catch (err) {
      if (/already been processed|AlreadyProcessed/i.test(String((err as Error).message))) return;
      throw err;
    }
  }

  /**
   * Drives the legs (one transaction for all of them) to confirmed, exactly once.
   * @throws non-retryable ApplicationFailure when the chain refuses for good; retryable while waiting.
   */
  async function settle(
    jobId: string,
    legs: Leg[],
    memo: string,
    /** The transaction's instructions, from the legs' rows as settle() has just read them (in `legs` order). */
    build: (rows: PaymentRow[]) => Promise<{ instructions: TransactionInstruction[]; signers: Keypair[] }>,
    /** The legs' rows when the caller has just written them (saves the first read). */
    known?: PaymentRow[],
    /** The slot the source's money landed in (the escrow leg's), when the source is an escrow account. */
    minContextSlot?: number,
  ): Promise<PaymentRow[]> {
    // Rows as last read or written; re-read only where another writer may have changed them.
    let rows = known?.length === legs.length ? known : await rowsOf(jobId, legs);
    const confirm = async (signature: string, slot: number | null): Promise<PaymentRow[]> => {
      const updated = await db
        .update(payments)
        .set({ state: 'confirmed', slot, lastError: null, updatedAt: new Date() })
        .where(and(eq(payments.jobId, jobId), inArray(payments.leg, legs), eq(payments.txRef, signature)))
        .returning();
      return updated.length === legs.length ? legs.map((l) => updated.find((r) => r.leg === l)!) : rowsOf(jobId, legs);
    };
    /**
     * Takes the chain's word on a recorded attempt: landed → its legs confirmed (their rows returned); expired →
     * given up, `expired` kept as why (undefined: the next round signs anew); landed with an error → given up for
     * good (throws); still on its way → `pending()`.
     */
    const conclude = async (state: ChainState, signature: string, expired: string, pending: () => Promise<never>): Promise<PaymentRow[] | undefined> => {
      if (state.kind === 'landed') return confirm(signature, state.slot);
      if (state.kind === 'failed') {
        const payee = await abandonFailedAttempt(jobId, rows, signature, `landed with an error: ${state.err}`);
        if (payee) throw retryable(`${memo}: ${payee.why}`);
        throw nonRetryable(SettlementErrors.transactionFailed, `${memo}: transaction failed on chain: ${state.err}`);
      }
      if (state.kind === 'expired') {
        await abandonAttempt(jobId, legs, signature, expired);
        return undefined;
      }
      return pending();
    };
    const notYet = (signature: string) => async (): Promise<never> => {
      throw retryable(`${memo}: transaction ${signature} not confirmed yet`);
    };
    for (let round = 0; round < 4; round++) {
      if (round > 0 && !rows.every((r) => r.state === 'confirmed')) rows = await rowsOf(jobId, legs);
      if (rows.length !== legs.length) throw nonRetryable(SettlementErrors.escrowMissing, `legs ${legs} of job ${jobId} are not recorded`);
      if (rows.every((r) => r.state === 'confirmed')) return rows;
      // A recorded attempt is finished first, even when it covers only some of these legs (it may be another
      // attempt's, signed for a different group): its bytes may already be on their way to the chain.
      const current = rows.find((r) => r.state === 'sent' && r.txRef && r.lastValidBlockHeight !== null);
      if (current?.txRef && current.lastValidBlockHeight !== null) {
        let state = await chainState(current.txRef, current.lastValidBlockHeight);
        if (state.kind === 'pending' && current.txBytes) {
          const bytes = Buffer.from(current.txBytes, 'base64');
          await send(bytes, minContextSlot).catch((err: unknown) => noteSendRefused(jobId, legs, current.txRef!, err).catch(() => undefined));
          state = await awaitOutcome(current.txRef, current.lastValidBlockHeight, resendWhileRecorded(jobId, current.txRef, bytes, minContextSlot));
        }
        rows = (await conclude(state, current.txRef, `transaction ${current.txRef} expired without landing`, notYet(current.txRef))) ?? rows;
        continue;
      }

      // A new transaction pays every leg it covers: signing over a leg that is confirmed or owned by another
      // attempt would pay it twice.
      if (!rows.every(isSendable)) {
        throw legsSplit(`${memo}: legs ${legs} are ${rows.map((r) => r.state)}; another attempt settled some of them`);
      }

      // Sign a new attempt and record it before it leaves this process.
      const [{ instructions, signers }, { blockhash, lastValidBlockHeight }] = await Promise.all([
        build(rows),
        latestBlockhash(),
      ]);
      const tx = new Transaction({ feePayer: authority.publicKey, blockhash, lastValidBlockHeight }).add(
        ...priorityFee,
        memoInstruction(`cyxwiz ${memo}`, authority.publicKey),
        ...instructions,
      );
      const signed = signTransaction(tx, [authority, ...signers]);
      const signature = b58.decode(signed.signatures[0]);
      const bytes = signed.bytes;
      if (!(await recordAttempt(jobId, rows, { signature, bytes, lastValidBlockHeight, memo }))) continue;
      await deps.hooks?.afterRecord?.(legs);

      try {
        await send(bytes, minContextSlot);
      } catch (err) {
        forgetBlockhash();
        // A refused preflight never reaches the chain: the attempt can be forgotten safely.
        if (/Blockhash not found/i.test(String((err as Error)?.message))) {
          // Signed with a blockhash the cluster no longer knows: sign again with a fresh one. Only once the
          // finalized chain is past its last valid block: a lagging RPC node also answers this for a blockhash
          // the rest of the cluster knows, and these bytes may still land (sent again by a concurrent retry).
          // It also says so of bytes that landed (sent by a concurrent retry) once their blockhash expired: the
          // chain decides, as for any recorded attempt.
          const state = await chainState(signature, lastValidBlockHeight);
          rows =
            (await conclude(state, signature, 'the cluster did not know its blockhash', async () => {
              await noteSendRefused(jobId, legs, signature, err);
              throw retryable(`${memo}: the RPC node did not know the transaction's blockhash yet; its recorded bytes are sent again`);
            })) ?? rows;
          continue;
        }
        const reason = permanentReason(err);
        const payee = reason ? await payeeProblem(rows) : undefined;
        if (payee) {
          // Refused because a payee cannot receive (its token account closed after it was checked): the legs wait
          // for it. The attempt stays recorded (a refused preflight may still have reached a leader) until the
          // chain says it landed or expired.
          await noteSendRefused(jobId, legs, signature, err);
          throw retryable(`${memo}: ${payee.why}`);
        }
        if (reason) {
          await abandonAttempt(jobId, legs, signature, reason, 'failed');
          throw nonRetryable(reason === 'insufficient funds' ? SettlementErrors.insufficientFunds : SettlementErrors.transactionFailed, `${memo}: ${reason}`);
        }
        await noteSendRefused(jobId, legs, signature, err);
        throw retryable(`${memo}: send failed, will check the recorded signature: ${(err as Error).message}`);
      }
      await deps.hooks?.afterSend?.(legs);
      const state = await awaitOutcome(signature, lastValidBlockHeight, resendWhileRecorded(jobId, signature, bytes, minContextSlot));
      if (state.kind === 'landed') await deps.hooks?.afterConfirm?.(legs);
      rows = (await conclude(state, signature, `transaction ${signature} expired without landing`, notYet(signature))) ?? rows;
    }
    throw retryable(`${memo}: not settled yet`);
  }

  /**
   * Records a signed attempt on all of its legs or on none: the transaction pays every one of them, so a leg
   * left out (another attempt took it since `built` was read) must not be sent with these bytes either. The
   * legs must still be sendable and hold the payee and amount the transaction was built from.
   * @returns false when another attempt got there first (nothing is recorded).
   */
  async function recordAttempt(
    jobId: string,
    built: PaymentRow[],
    attempt: { signature: string; bytes: Buffer; lastValidBlockHeight: number; memo: string },
  ): Promise<boolean> {
    try {
      await db.transaction(async (tx) => {
        const updated = await tx
          .update(payments)
          .set({
            state: 'sent',
            txRef: attempt.signature,
            txBytes: attempt.bytes.toString('base64'),
            lastValidBlockHeight: attempt.lastValidBlockHeight,
            sendAttempts: sql`${payments.sendAttempts} + 1`,
            memo: `cyxwiz ${attempt.memo}`,
            updatedAt: new Date(),
          })
          .where(and(eq(payments.jobId, jobId), inArray(payments.leg, built.map((r) => r.leg)), inArray(payments.state, [...SENDABLE])))
          .returning({ leg: payments.leg, amount: payments.amount, toAccount: payments.toAccount });
        const asBuilt =
          updated.length === built.length &&
          built.every((b) => updated.some((u) => u.leg === b.leg && u.amount === b.amount && u.toAccount === b.toAccount));
        if (!asBuilt) tx.rollback();
      });
      return true;
    } catch (err) {
      if (err instanceof TransactionRollbackError) return false;
      throw err;
    }
  }

  /** Records a leg unless it is already recorded (the idempotency key makes a second insert a no-op). */
  async function recordLeg(tx: DbOrTx, jobId: string, leg: Leg, amount: bigint, from: string, to: string, state: 'pending' | 'owed' = 'pending') {
    await tx
      .insert(payments)
      .values({ jobId, leg, amount, fromAccount: from, toAccount: to, state, idempotencyKey: legKey(jobId, leg), memo: `cyxwiz ${legKey(jobId, leg)}` })
      .onConflictDoNothing();
  }

  async function escrowExists(jobId: string): Promise<boolean> {
    return (await connection.getAccountInfo(escrowOf(jobId), deps.commitment)) !== null;
  }

  /** Instructions that create the job's escrow account when it does not exist yet. */
  async function escrowAccountSetup(jobId: string): Promise<TransactionInstruction[]> {
    const [exists, rentLamports] = await Promise.all([escrowExists(jobId), rentExemptionOnce()]);
    if (exists) return [];
    return createEscrowAccountInstructions({ authority: authority.publicKey, jobId, mint: deps.mint, rentLamports });
  }

  /**
   * A transaction of the platform's own housekeeping (no ledger leg: opening or closing an escrow account), signed
   * by the escrow authority alone on a fresh blockhash, with the priority fee when one is configured.
   */
  async function authorityTransaction(memo: string, instructions: TransactionInstruction[]): Promise<{ bytes: Buffer; lastValidBlockHeight: number }> {
    const { blockhash, lastValidBlockHeight } = await connection.getLatestBlockhash(deps.commitment);
    const tx = new Transaction({ feePayer: authority.publicKey, blockhash, lastValidBlockHeight }).add(
      ...priorityFee,
      memoInstruction(`cyxwiz ${memo}`, authority.publicKey),
      ...instructions,
    );
    return { bytes: signTransaction(tx, [authority]).bytes, lastValidBlockHeight };
  }

  /**
   * Creates the job's escrow account when it does not exist yet, for a payer who pays into it before submitting
   * (the platform pays its rent). Idempotent.
   * @param mayCreate asked before an account is created; false refuses (TooManyRequests).
   * @returns its address.
   * @throws ConflictError when the job's escrow was settled and its account closed.
   */
  async function openEscrowAccount(jobId: string, mayCreate: () => boolean = () => true): Promise<PublicKey> {
    const address = escrowOf(jobId);
    const setup = await escrowAccountSetup(jobId);
    // Asked for again, it is not opened again: the day it has counts from its opening (asking again keeps none open).
    if (setup.length === 0) return address;
    const [closed] = await db
      .select({ at: payments.accountClosedAt })
      .from(payments)
      .where(and(eq(payments.jobId, jobId), eq(payments.leg, 'escrow'), isNotNull(payments.accountClosedAt)));
    if (closed) throw new ConflictError(`job ${jobId} was settled and its escrow account closed: a new job needs an id of its own`);
    if (!mayCreate()) throw new TooManyRequestsError(`too many new escrow accounts (each costs the platform rent): ask again in a minute (job ${jobId})`);
    // Recorded before it is sent: an account no job comes to use is closed a day later (closeUnusedEscrowAccounts).
    await db
      .insert(openedEscrowAccounts)
      .values({ jobId, openedAt: new Date() })
      .onConflictDoUpdate({ target: openedEscrowAccounts.jobId, set: { openedAt: new Date() } });
    const { bytes, lastValidBlockHeight } = await authorityTransaction(`${jobId}/open-escrow`, setup);
    const signature = await connection.sendRawTransaction(bytes, { preflightCommitment: deps.commitment }).catch(async (err) => {
      if (await escrowExists(jobId)) return ''; // a concurrent call created it
      throw err;
    });
    if (signature) {
      const state = await awaitOutcome(signature, lastValidBlockHeight);
      if (state.kind !== 'landed' && !(await escrowExists(jobId))) throw retryable(`escrow account of ${jobId} not created yet`);
    }
    return address;
  }

  /**
   * Checks that `signature` is a confirmed transaction that moved at least `amount` of our mint from
   * `payer`'s token account into this job's escrow account.
   * @returns the amount that arrived in the escrow.
   * @throws non-retryable EscrowRejected with the reason.
   */
  async function verifyEscrowTransaction(p: { jobId: string; amount: bigint; payer: string; signature: string }): Promise<bigint> {
    return (await payerTransfer(p)).received;
  }

  /**
   * What `signature` moved into this job's escrow account, and how much of it came from `payer` (at least
   * `amount` of each, else refused). A transaction may pay several escrow accounts; it is refused only when
   * this escrow account already has it bound to another job or reclaim.
   * @throws non-retryable EscrowRejected with the reason.
   */
  async function payerTransfer(p: { jobId: string; amount: bigint; payer: string; signature: string }): Promise<{ received: bigint; fromPayer: bigint; slot: number }> {
    const reject = (why: string) => nonRetryable(SettlementErrors.escrowRejected, `escrow_tx_hash ${p.signature}: ${why}`);
    const commitment = deps.commitment === 'processed' ? 'confirmed' : deps.commitment;
    // A payer who submits right after sending may be a moment ahead of the cluster (or of this RPC node).
    let tx = await connection.getTransaction(p.signature, { commitment, maxSupportedTransactionVersion: 0 });
    for (const wait of PAYER_TX_WAITS_MS) {
      if (tx) break;
      await sleep(wait);
      tx = await connection.getTransaction(p.signature, { commitment, maxSupportedTransactionVersion: 0 });
    }
    if (!tx || !tx.meta) {
      throw reject(`not found as a ${commitment} transaction on this cluster (if it was just sent, ask again once it is ${commitment})`);
    }
    if (tx.meta.err) throw reject(`failed on chain: ${JSON.stringify(tx.meta.err)}`);
    const escrow = escrowOf(p.jobId).toBase58();
    // Every account the transaction touched, those loaded from address lookup tables included (a versioned
    // transaction's indexes run on past its static keys), in the index space of its instructions and balances.
    const keys = accountKeysOf(tx).map((k) => k.toBase58());
    const delta = (index: number, owner?: string) => {
      const pre = tx.meta!.preTokenBalances?.find((b) => b.accountIndex === index);
      const post = tx.meta!.postTokenBalances?.find((b) => b.accountIndex === index);
      const mint = post?.mint ?? pre?.mint;
      if (owner && (post?.owner ?? pre?.owner) !== owner) return undefined;
      return { mint, change: BigInt(post?.uiTokenAmount.amount ?? '0') - BigInt(pre?.uiTokenAmount.amount ?? '0') };
    };
    const escrowIndex = keys.indexOf(escrow);
    if (escrowIndex < 0) throw reject(`does not pay this job's escrow account ${escrow}`);
    const received = delta(escrowIndex);
    if (!received?.mint || received.mint !== deps.mint.toBase58()) throw reject(`moves mint ${received?.mint ?? 'none'}, not ${deps.mint.toBase58()}`);
    if (received.change < p.amount) throw reject(`moved ${received.change} units into the escrow, the job needs ${p.amount}`);
    // Counted transfer by transfer, not from the payer's balance change: one transaction may pay several escrow
    // accounts, from several payers, and each account may be credited only with what the payer sent into it
    // (else one payer's units would fund two escrow accounts, or another payer's be claimed as theirs).
    const fromPayer = tokenTransfers(tx).reduce((sum, t) => {
      if (t.destination !== escrowIndex) return sum;
      return delta(t.source, p.payer)?.mint === deps.mint.toBase58() ? sum + t.amount : sum;
    }, 0n);
    if (fromPayer < p.amount) throw reject(`the units did not come from payment_address ${p.payer}`);
    const [used] = await db
      .select({ jobId: payments.jobId })
      .from(payments)
      .where(and(eq(payments.leg, 'escrow'), eq(payments.toAccount, escrow), eq(payments.txRef, p.signature)));
    if (used && used.jobId !== p.jobId) throw reject(`already used for job ${used.jobId}`);
    return { received: received.change, fromPayer, slot: tx.slot };
  }

  /**
   * Gives a payer back the tokens one of their transfers put into a job's escrow account when no job holds
   * them: the job was refused (or never submitted), or the transfer was one too many. The transfer is bound
   * to the reclaim like an escrow to its job (the same unique index, per escrow account), so in one escrow
   * account it funds either the job or one reclaim, never both; another escrow account the same transaction
   * paid is bound on its own. The refund is a leg settled exactly once, to `payer`'s token account.
   * Idempotent: asked again it finishes (or returns) the same refund.
   * @throws ConflictError when a job holds the transfer, or the job of this escrow account is still running;
   *   non-retryable EscrowRejected when the transfer does not show the payer paying into this escrow account.
   */
  async function reclaimTransfer(input: { jobId: string; payer: string; signature: string }): Promise<LegReceipt> {
    const id = reclaimId(input.jobId, input.signature);
    const [done] = await rowsOf(id, ['refund']);
    let transferSlot: number | undefined;
    if (!done) {
      const escrowAccount = escrowOf(input.jobId).toBase58();
      const [bound] = await db
        .select({ jobId: payments.jobId })
        .from(payments)
        .where(and(eq(payments.leg, 'escrow'), eq(payments.toAccount, escrowAccount), eq(payments.txRef, input.signature)));
      if (bound && bound.jobId !== id) throw new ConflictError(`transaction ${input.signature} funds job ${bound.jobId}: its money follows that job`);
      const [job] = await db.select({ status: jobs.status }).from(jobs).where(eq(jobs.id, input.jobId));
      if (job && !['completed', 'failed', 'cancelled'].includes(job.status)) {
        throw new ConflictError(`job ${input.jobId} is ${job.status}: its escrow account is in use until it ends`);
      }
      const { received, fromPayer, slot } = await payerTransfer({ jobId: input.jobId, amount: 1n, payer: input.payer, signature: input.signature });
      transferSlot = slot;
      const amount = received < fromPayer ? received : fromPayer;
      const held = await escrowBalance(input.jobId);
      if (held < amount) throw new ConflictError(`the escrow account of ${input.jobId} holds ${held} units, less than the ${amount} to give back`);
      // A reclaim never creates the payer's token account: anyone may ask for one, and the rent would be the
      // platform's (close the account, reclaim a unit sent into an escrow account, close it again: rent earned).
      const payerAccount = tokenAccountOf(new PublicKey(input.payer), deps.mint);
      if (!(await connection.getAccountInfo(payerAccount, deps.commitment))) {
        throw new ConflictError(`paymentAddress ${input.payer} has no token account for ${deps.mint.toBase58()} (${payerAccount.toBase58()}): open it, then ask again`);
      }
      try {
        await db.transaction(async (tx) => {
          await tx
            .insert(payments)
            .values({
              jobId: id, leg: 'escrow', amount, fromAccount: input.payer, toAccount: escrowAccount, state: 'confirmed',
              idempotencyKey: legKey(id, 'escrow'), txRef: input.signature, slot, memo: 'paid by the payer, no job holds it',
            })
            .onConflictDoNothing({ target: payments.idempotencyKey });
          await recordLeg(tx, id, 'refund', amount, escrowAccount, input.payer);
        });
      } catch (err) {
        if (/payments_escrow_account_tx_idx/.test(String((err as Error & { cause?: Error }).cause?.message ?? (err as Error).message))) {
          throw new ConflictError(`transaction ${input.signature} was just taken up by a job`);
        }
        throw err;
      }
    }
    transferSlot ??= (await rowsOf(id, ['escrow']))[0]?.slot ?? undefined;
    return settleRefund(id, input.jobId, transferSlot);
  }

  /**
   * Sends the recorded refund leg of `ledgerId` to its payee out of `escrowJobId`'s escrow account, exactly once.
   * A payee without a token account (closed since it paid) waits for it: retryable, the reason on the leg.
   */
  async function settleRefund(ledgerId: string, escrowJobId: string, escrowSlot?: number): Promise<LegReceipt> {
    const [row] = await settle(ledgerId, ['refund'], legKey(ledgerId, 'refund'), async ([leg]) => {
      const why = await cannotReceive(leg.toAccount);
      if (why) throw await waitsFor(ledgerId, 'refund', `the refund waits: ${why}`);
      return {
        instructions: payToWallet({
          feePayer: authority.publicKey,
          from: escrowOf(escrowJobId),
          fromOwner: authority.publicKey,
          wallet: new PublicKey(leg.toAccount),
          mint: deps.mint,
          decimals: deps.decimals,
          amount: leg.amount,
        }),
        signers: [],
      };
    }, undefined, escrowSlot);
    return receipt(row);
  }

  /**
   * Refuses an escrow row recorded under a job's id that is not the escrow this call asks for. Jobs share the
   * ledger's ids with reservation pots (and anything else funded under an id), so finding a row is not proof
   * that this job was funded: its escrow account, amount and, when known, payer and transaction must agree.
   * `amount` is a minimum when the payer's own transfer may have moved more than asked.
   * @throws non-retryable EscrowRejected naming every field that differs.
   */
  function expectEscrow(
    jobId: string,
    row: PaymentRow,
    want: { to: string; amount: bigint; atLeast: boolean; from?: string; txRef?: string },
  ): PaymentRow {
    const differs: string[] = [];
    if (row.toAccount !== want.to) differs.push(`escrow account ${row.toAccount}, not ${want.to}`);
    if (want.atLeast ? row.amount < want.amount : row.amount !== want.amount) {
      differs.push(`amount ${row.amount}, not ${want.atLeast ? 'at least ' : ''}${want.amount}`);
    }
    if (want.from !== undefined && row.fromAccount !== want.from) differs.push(`payer ${row.fromAccount}, not ${want.from}`);
    if (want.txRef !== undefined && row.txRef !== want.txRef) differs.push(`transaction ${row.txRef ?? 'none'}, not ${want.txRef}`);
    if (differs.length > 0) {
      throw nonRetryable(SettlementErrors.escrowRejected, `job ${jobId}: the escrow recorded under this id is not this job's: ${differs.join('; ')}`);
    }
    return row;
  }

  /**
   * Puts the job's payment in its escrow account: verifies the payer's transaction when given, otherwise
   * transfers from the server's payer account. Idempotent.
   * @throws non-retryable EscrowRejected when the payment is refused, or when an escrow recorded under this id
   *   does not match this one (see expectEscrow).
   */
  async function escrow(input: { jobId: string; amount: string; payer: string; escrowTxHash?: string }): Promise<LegReceipt> {
    const amount = BigInt(input.amount);
    const to = escrowOf(input.jobId).toBase58();
    if (input.escrowTxHash) {
      const want = { to, amount, atLeast: true, from: input.payer, txRef: input.escrowTxHash };
      const [existing] = await rowsOf(input.jobId, ['escrow']);
      if (existing?.state === 'confirmed') return receipt(expectEscrow(input.jobId, existing, want));
      const { received, slot } = await payerTransfer({ jobId: input.jobId, amount, payer: input.payer, signature: input.escrowTxHash });
      try {
        await db
          .insert(payments)
          .values({
            // With its slot: the release or refund out of it is then checked by an RPC node that has seen it (one
            // behind would find the account empty, and take that for good).
            jobId: input.jobId, leg: 'escrow', amount: received, fromAccount: input.payer, toAccount: to, state: 'confirmed',
            idempotencyKey: legKey(input.jobId, 'escrow'), txRef: input.escrowTxHash, slot, memo: 'paid by the payer',
          })
          .onConflictDoNothing({ target: payments.idempotencyKey });
      } catch (err) {
        if (/payments_escrow_account_tx_idx/.test(String((err as Error & { cause?: Error }).cause?.message ?? (err as Error).message))) {
          throw nonRetryable(SettlementErrors.escrowRejected, `escrow_tx_hash ${input.escrowTxHash}: already used for another job`);
        }
        throw err;
      }
      // The insert does nothing when a row was there already (not confirmed, or written meanwhile): it must be this one.
      const [row] = await rowsOf(input.jobId, ['escrow']);
      return receipt(expectEscrow(input.jobId, row, want));
    }
    const payer = deps.payer;
    const payerKey = payer?.publicKey.toBase58();
    // The escrow account is looked up while the leg is recorded (used by the first attempt only; a later one
    // looks again, the account may exist by then).
    let setup: Promise<TransactionInstruction[]> | undefined = payer && escrowAccountSetup(input.jobId);
    setup?.catch(() => undefined); // awaited below unless the leg turns out settled already
    // Recording is a no-op when the leg exists; settle() returns it at once when it is already confirmed.
    const recorded = payer
      ? await db
          .insert(payments)
          .values({
            jobId: input.jobId, leg: 'escrow', amount, fromAccount: payer.publicKey.toBase58(), toAccount: to, state: 'pending',
            idempotencyKey: legKey(input.jobId, 'escrow'), memo: `cyxwiz ${legKey(input.jobId, 'escrow')}`,
          })
          .onConflictDoNothing()
          .returning()
      : [];
    // settle() would otherwise finish (or return) whatever escrow is recorded under this id.
    const known = recorded.length > 0 ? recorded : await rowsOf(input.jobId, ['escrow']);
    const [existing] = known;
    if (!existing) throw nonRetryable(SettlementErrors.escrowRejected, 'no escrow_tx_hash given and the server has no payer account');
    // An attempt sent or landed is this job's escrow whoever signed it: the payer's key may have been rotated or
    // removed since, and its bytes may still land (refused, they would fund an escrow nobody settles). One still
    // to be signed must be the current payer's.
    const signedByAnotherKey = (existing.state === 'sent' || existing.state === 'confirmed') && existing.fromAccount !== payerKey;
    // Only for a job that is recorded as one: an id funded as anything else (a reservation's pot, paid by its user)
    // is not this job's escrow.
    const from = signedByAnotherKey && (await isJob(input.jobId)) ? existing.fromAccount : payerKey ?? '(the server has no payer account)';
    expectEscrow(input.jobId, existing, { to, amount, atLeast: !payer, from });
    if (existing.state === 'confirmed') return receipt(existing);
    const [row] = await settle(
      input.jobId,
      ['escrow'],
      legKey(input.jobId, 'escrow'),
      async ([leg]) => {
        // A new attempt (the recorded one expired without landing): nothing moved, so a changed payer refuses.
        if (!payer || leg.fromAccount !== payerKey) {
          throw nonRetryable(
            SettlementErrors.escrowRejected,
            `job ${input.jobId}: its escrow was to be paid by ${leg.fromAccount}, and the server's payer is now ${payerKey ?? 'none'}; nothing was moved`,
          );
        }
        const accountSetup = await (setup ?? escrowAccountSetup(input.jobId));
        setup = undefined;
        return {
          instructions: [
            ...accountSetup,
            createTransferCheckedInstruction(tokenAccountOf(payer.publicKey, deps.mint), deps.mint, escrowOf(input.jobId), payer.publicKey, amount, deps.decimals),
          ],
          signers: [payer],
        };
      },
      known,
    );
    return receipt(row);
  }

  async function isJob(id: string): Promise<boolean> {
    return (await db.select({ id: jobs.id }).from(jobs).where(eq(jobs.id, id))).length > 0;
  }

  /** Locks the job's escrow row; release and refund run under it so only one of them can ever happen. */
  async function withEscrowLock<T>(jobId: string, fn: (tx: DbOrTx, escrowRow: PaymentRow, legs: PaymentRow[]) => Promise<T>): Promise<T> {
    return db.transaction(async (tx) => {
      const [escrowRow] = await tx
        .select()
        .from(payments)
        .where(and(eq(payments.jobId, jobId), eq(payments.leg, 'escrow')))
        .for('update');
      if (!escrowRow || escrowRow.state !== 'confirmed') {
        throw nonRetryable(SettlementErrors.escrowMissing, `job ${jobId} has no confirmed escrow`);
      }
      const legs = await tx.select().from(payments).where(eq(payments.jobId, jobId));
      return fn(tx, escrowRow, legs);
    });
  }

  /**
   * Pays a completed job: floor(90 %) to the node's wallet and the rest to the treasury, in one transaction. A
   * node that cannot be paid now (no wallet, or a wallet without a token account for the mint) is owed: the legs
   * wait in state `owed` until it can, and are paid by the first call after that.
   * @throws EscrowAlreadySettled (refunded), EscrowMissing — non-retryable.
   */
  async function release(input: { jobId: string; nodeId: string }): Promise<ReleaseOutcome> {
    const [node] = await db.select({ wallet: nodes.walletAddress }).from(nodes).where(eq(nodes.id, input.nodeId));
    const { wallet, owedBecause } = await payableNow(node?.wallet ?? '');
    const split = await withEscrowLock(input.jobId, async (tx, escrowRow, legs) => {
      if (legs.some((l) => l.leg === 'refund')) {
        throw nonRetryable(SettlementErrors.alreadySettled, `escrow of job ${input.jobId} was refunded`);
      }
      const s = splitPayment(escrowRow.amount, BigInt(deps.platformFeeBps));
      const nodeTo = wallet || `node:${input.nodeId}`;
      const state: 'pending' | 'owed' = wallet ? 'pending' : 'owed';
      // Both legs in one statement; a leg already recorded stays as it is (idempotency key).
      const inserted = await tx
        .insert(payments)
        .values([
          { leg: 'release_node' as const, amount: s.node, to: nodeTo },
          { leg: 'release_platform' as const, amount: s.platform, to: deps.treasury.toBase58() },
        ].map((l) => ({
          jobId: input.jobId, leg: l.leg, amount: l.amount, fromAccount: escrowRow.toAccount, toAccount: l.to, state,
          idempotencyKey: legKey(input.jobId, l.leg), memo: `cyxwiz ${legKey(input.jobId, l.leg)}`,
        })))
        .onConflictDoNothing()
        .returning();
      const recorded = legs.find((l) => l.leg === 'release_node');
      let nodeState = recorded?.state ?? state;
      if (recorded && wallet && nodeState === 'owed') {
        // A node that can be paid since it was owed: point the owed legs at its wallet.
        await tx
          .update(payments)
          .set({ toAccount: sql`case when ${payments.leg} = 'release_node' then ${wallet} else ${payments.toAccount} end`, state: 'pending', updatedAt: new Date() })
          .where(and(eq(payments.jobId, input.jobId), inArray(payments.leg, ['release_node', 'release_platform']), eq(payments.state, 'owed')));
        nodeState = 'pending';
      } else if (recorded && !wallet && (nodeState === 'pending' || nodeState === 'failed')) {
        // Recorded to be paid, and the node can no longer be (its token account closed since): owed, until it can.
        await tx
          .update(payments)
          .set({ state: 'owed', updatedAt: new Date() })
          .where(and(eq(payments.jobId, input.jobId), inArray(payments.leg, ['release_node', 'release_platform']), inArray(payments.state, ['pending', 'failed'])));
        nodeState = 'owed';
      } else if (recorded && wallet && (nodeState === 'pending' || nodeState === 'failed') && recorded.toAccount !== wallet) {
        // Recorded to an earlier wallet and never sent (or given up): paid to the one the node can be paid at now.
        await tx
          .update(payments)
          .set({ toAccount: wallet, updatedAt: new Date() })
          .where(and(eq(payments.jobId, input.jobId), eq(payments.leg, 'release_node'), inArray(payments.state, ['pending', 'failed'])));
      }
      // Both legs new: settle() starts from these rows instead of reading them again.
      const known = inserted.length === 2 ? (['release_node', 'release_platform'] as const).map((l) => inserted.find((r) => r.leg === l)!) : undefined;
      return { ...s, known, escrowSlot: escrowRow.slot ?? undefined, owed: nodeState === 'owed' };
    });
    if (split.owed) return { owed: true, nodeAmount: split.node.toString(), platformAmount: split.platform.toString(), because: owedBecause };
    const escrowAccount = escrowOf(input.jobId);
    const rows = await settle(input.jobId, ['release_node', 'release_platform'], legKey(input.jobId, 'release'), async ([nodeLeg, platformLeg]) => {
      // payableNow looked at the node's account moments ago: a node it found unable to receive (its legs were sent
      // before and have just expired) is not signed for again, and the next call finds it owed. One closed since is
      // refused by the chain, and settle() makes the legs wait (payeeProblem).
      if (!wallet && nodeLeg.amount > 0n) throw await waitsFor(input.jobId, 'release_node', `the node's payment waits: ${owedBecause}`);
      const common = { feePayer: authority.publicKey, from: escrowAccount, fromOwner: authority.publicKey, mint: deps.mint, decimals: deps.decimals };
      return {
        instructions: [
          ...(nodeLeg.amount > 0n ? payToWallet({ ...common, wallet: new PublicKey(nodeLeg.toAccount), amount: nodeLeg.amount }) : []),
          ...(platformLeg.amount > 0n ? payToWallet({ ...common, wallet: deps.treasury, amount: platformLeg.amount, create: true }) : []),
        ],
        signers: [],
      };
    }, split.known, split.escrowSlot);
    return { owed: false, node: receipt(rows[0]), platform: receipt(rows[1]) };
  }

  /**
   * Returns the whole escrow to its payer. Idempotent.
   * @throws EscrowAlreadySettled (released), EscrowMissing — non-retryable.
   */
  async function refund(input: { jobId: string }): Promise<LegReceipt> {
    const escrowSlot = await withEscrowLock(input.jobId, async (tx, escrowRow, legs) => {
      if (legs.some((l) => l.leg === 'release_node' || l.leg === 'release_platform')) {
        throw nonRetryable(SettlementErrors.alreadySettled, `escrow of job ${input.jobId} was released`);
      }
      await recordLeg(tx, input.jobId, 'refund', escrowRow.amount, escrowRow.toAccount, escrowRow.fromAccount);
      return escrowRow.slot ?? undefined;
    });
    return settleRefund(input.jobId, input.jobId, escrowSlot);
  }

  /**
   * Where a reservation pot's money comes from: the user's token account through the allowance the wallet
   * gave the escrow authority (an SPL delegate approval, so the user funds and gets refunds without signing
   * here), else the server's payer account when one is configured.
   * @throws non-retryable InsufficientFunds (allowance or balance too small) or EscrowRejected (no way to fund).
   */
  async function potSource(owner: string, amount: bigint): Promise<{ kind: 'allowance' | 'payer'; from: string }> {
    const ownerKey = new PublicKey(owner);
    const ata = tokenAccountOf(ownerKey, deps.mint);
    const info = await connection.getAccountInfo(ata, deps.commitment);
    const account = info ? unpackAccount(ata, info) : undefined;
    if (account?.delegate?.equals(authority.publicKey)) {
      if (account.delegatedAmount < amount || account.amount < amount) {
        throw nonRetryable(
          SettlementErrors.insufficientFunds,
          `user_wallet ${owner} allows ${account.delegatedAmount} and holds ${account.amount} units; ${amount} are needed`,
        );
      }
      return { kind: 'allowance', from: owner };
    }
    if (deps.payer) return { kind: 'payer', from: deps.payer.publicKey.toBase58() };
    throw nonRetryable(
      SettlementErrors.escrowRejected,
      `user_wallet ${owner} has not approved the escrow authority ${authority.publicKey.toBase58()} to move ${amount} units`,
    );
  }

  /**
   * Funds one reservation pot (`potId` = the reservation id, or `<id>/ext-<n>` for an extension) into its own
   * escrow account, exactly once. The source is chosen once and recorded on the escrow leg.
   */
  async function escrowPot(input: { potId: string; amount: string; owner: string }): Promise<LegReceipt & { fundedBy: string }> {
    const amount = BigInt(input.amount);
    const to = escrowOf(input.potId);
    let [row] = await rowsOf(input.potId, ['escrow']);
    if (!row) {
      const source = await potSource(input.owner, amount);
      await recordLeg(db, input.potId, 'escrow', amount, source.from, to.toBase58());
      [row] = await rowsOf(input.potId, ['escrow']);
    }
    // A pot recorded under this id must be this one (an operator's reset of a reservation's workflow could ask
    // for another pot under an id already funded): its amount and account; and, while it is still to be paid,
    // its funder (the owner, or the payer). A confirmed one keeps whoever paid it: the payer's key may have been
    // rotated since, and the money is in the account.
    const payer = deps.payer?.publicKey.toBase58();
    const funder = row.state === 'confirmed' || row.state === 'sent' || row.fromAccount === input.owner || row.fromAccount === payer ? row.fromAccount : input.owner;
    expectEscrow(input.potId, row, { to: to.toBase58(), amount, atLeast: false, from: funder });
    if (row.state === 'confirmed') return { ...receipt(row), fundedBy: row.fromAccount };
    const fromPayer = deps.payer !== undefined && row.fromAccount === deps.payer.publicKey.toBase58() && row.fromAccount !== input.owner;
    const [done] = await settle(input.potId, ['escrow'], legKey(input.potId, 'escrow'), async () => {
      const setup = await escrowAccountSetup(input.potId);
      if (fromPayer) {
        const payer = deps.payer!;
        return {
          instructions: [...setup, createTransferCheckedInstruction(tokenAccountOf(payer.publicKey, deps.mint), deps.mint, to, payer.publicKey, row.amount, deps.decimals)],
          signers: [payer],
        };
      }
      if (row.fromAccount !== input.owner) {
        // Sent by a payer key since rotated or removed, and expired without landing: nothing moved.
        throw nonRetryable(SettlementErrors.escrowRejected, `pot ${input.potId}: its escrow was to be paid by ${row.fromAccount}, no longer the server's payer; nothing was moved`);
      }
      // The authority moves the tokens as the owner's delegate.
      const source = tokenAccountOf(new PublicKey(row.fromAccount), deps.mint);
      return {
        instructions: [...setup, createTransferCheckedInstruction(source, deps.mint, to, authority.publicKey, row.amount, deps.decimals)],
        signers: [],
      };
    });
    return { ...receipt(done), fundedBy: done.fromAccount };
  }

  /**
   * Settles a reservation pot: `payUnits` of it go 90/10 to the node and the platform, the rest back to its
   * funder, each leg exactly once. The first call records the split; a retry (or a call after the node
   * registers a wallet) finishes the same legs whatever it is asked. Legs that are ready go in one transaction;
   * the node's share waits in state `owed` while the node has no wallet.
   */
  async function settlePot(input: { potId: string; nodeId: string; payUnits: string }): Promise<PotOutcome> {
    const [node] = await db.select({ wallet: nodes.walletAddress }).from(nodes).where(eq(nodes.id, input.nodeId));
    const { wallet, owedBecause } = await payableNow(node?.wallet ?? '');
    const legs: Leg[] = ['release_node', 'release_platform', 'refund'];
    const escrowSlot = await withEscrowLock(input.potId, async (tx, escrowRow, recorded) => {
      if (!recorded.some((l) => legs.includes(l.leg))) {
        const asked = BigInt(input.payUnits);
        const pay = asked < 0n ? 0n : asked > escrowRow.amount ? escrowRow.amount : asked;
        const split = splitPayment(pay, BigInt(deps.platformFeeBps));
        const state = wallet ? 'pending' : 'owed';
        if (pay > 0n) {
          await recordLeg(tx, input.potId, 'release_node', split.node, escrowRow.toAccount, wallet || `node:${input.nodeId}`, state);
          await recordLeg(tx, input.potId, 'release_platform', split.platform, escrowRow.toAccount, deps.treasury.toBase58(), state);
        }
        if (escrowRow.amount - pay > 0n) {
          await recordLeg(tx, input.potId, 'refund', escrowRow.amount - pay, escrowRow.toAccount, escrowRow.fromAccount);
        }
      }
      if (wallet) {
        await tx
          .update(payments)
          .set({ state: 'pending', updatedAt: new Date(), toAccount: sql`case when ${payments.leg} = 'release_node' then ${wallet} else ${payments.toAccount} end` })
          .where(and(eq(payments.jobId, input.potId), inArray(payments.leg, ['release_node', 'release_platform']), eq(payments.state, 'owed')));
        // Recorded to an earlier wallet and never sent (or given up): paid to the one it can be paid at now.
        await tx
          .update(payments)
          .set({ toAccount: wallet, updatedAt: new Date() })
          .where(and(eq(payments.jobId, input.potId), eq(payments.leg, 'release_node'), inArray(payments.state, ['pending', 'failed']), ne(payments.toAccount, wallet)));
      } else {
        // Recorded to be paid, and the node can no longer be (its token account closed since): owed, until it can.
        await tx
          .update(payments)
          .set({ state: 'owed', updatedAt: new Date() })
          .where(and(eq(payments.jobId, input.potId), inArray(payments.leg, ['release_node', 'release_platform']), inArray(payments.state, ['pending', 'failed'])));
      }
      return escrowRow.slot ?? undefined;
    });
    const escrowAccount = escrowOf(input.potId);
    // A transaction already sent is finished first (its legs share its signature), then whatever is pending.
    // Another attempt of this settlement may run at once (a retry while the node registers its wallet) and
    // group the legs differently; settle() then refuses the stale group and the legs are grouped again here.
    const isOpen = (r: PaymentRow) => r.state !== 'confirmed' && r.state !== 'owed';
    /** Why the refund waits, when its payee has no token account (it is left out of new transactions). */
    let refundWaits: string | undefined;
    for (let round = 0; round < 6; round++) {
      let open = (await rowsOf(input.potId, legs)).filter(isOpen);
      const sent = open.filter((r) => r.state === 'sent');
      const refundLeg = open.find((r) => r.leg === 'refund');
      const refundProblem = sent.length === 0 && refundLeg ? await cannotReceive(refundLeg.toAccount) : undefined;
      if (refundLeg && refundProblem) {
        refundWaits = `the refund waits: ${refundProblem}`;
        await waitsFor(input.potId, 'refund', refundWaits);
        open = open.filter((r) => r !== refundLeg);
      }
      if (open.length === 0) break;
      const group = sent.length > 0 ? sent.filter((r) => r.txRef === sent[0].txRef) : open;
      const groupLegs = group.map((r) => r.leg);
      await settle(input.potId, groupLegs, `${input.potId}/${groupLegs.join('+')}`, async (rows) => {
        // Payees were looked at above (payableNow, the refund's look): a node found unable to receive is not signed
        // for; one closed since is refused by the chain, and settle() makes the legs wait (payeeProblem).
        if (!wallet && rows.some((r) => r.leg === 'release_node' && r.amount > 0n)) {
          throw await waitsFor(input.potId, 'release_node', `the node's payment waits: ${owedBecause}`);
        }
        // Signing again after an attempt expired (settle() does so itself): a payer who closed their token account
        // since it was signed would have the whole attempt refused, again and again. The refund is left out
        // instead: the legs are grouped anew without it (above), and it waits.
        const refund = rows.find((r) => r.leg === 'refund' && r.amount > 0n);
        const refundProblem = refund && rows.length > 1 ? await cannotReceive(refund.toAccount) : undefined;
        if (refundProblem) {
          refundWaits = `the refund waits: ${refundProblem}`;
          await waitsFor(input.potId, 'refund', refundWaits);
          throw legsSplit(`${input.potId}: the refund's payer cannot receive it; the other legs go without it`);
        }
        return {
          instructions: rows.flatMap((r) =>
            r.amount > 0n
              ? payToWallet({
                  feePayer: authority.publicKey,
                  from: escrowAccount,
                  fromOwner: authority.publicKey,
                  wallet: new PublicKey(r.toAccount),
                  mint: deps.mint,
                  decimals: deps.decimals,
                  amount: r.amount,
                  // The treasury is the platform's own account: opened when missing.
                  create: r.leg === 'release_platform',
                })
              : [],
          ),
          signers: [],
        };
      }, undefined, escrowSlot).catch((err: unknown) => {
        if (!isLegsSplit(err)) throw err;
      });
    }
    // An outcome is final for the workflow: it is only returned once every leg is confirmed or owed, or waits for
    // its payee. A refund waiting for its payer's token account does not hold the reservation's other pots (nor
    // its end) back: it stays recorded, with why, and the reconciliation pays it once the account is open
    // (settleQuietRefunds); the outcome shows it without a signature.
    const rows = await rowsOf(input.potId, legs);
    const unsettled = rows.filter(isOpen);
    const waitingRefund = refundWaits !== undefined && unsettled.length === 1 && unsettled[0].leg === 'refund' && unsettled[0].state !== 'sent';
    if (unsettled.length > 0 && !waitingRefund) {
      throw retryable(`${input.potId}: legs ${unsettled.map((r) => `${r.leg} (${r.state})`)} not settled yet`);
    }
    const leg = (l: Leg) => rows.find((r) => r.leg === l);
    const nodeLeg = leg('release_node');
    const refundLeg = leg('refund');
    const paid = (nodeLeg?.amount ?? 0n) + (leg('release_platform')?.amount ?? 0n);
    return {
      potId: input.potId,
      paid: paid.toString(),
      nodeAmount: (nodeLeg?.amount ?? 0n).toString(),
      refunded: (refundLeg?.amount ?? 0n).toString(),
      owed: nodeLeg?.state === 'owed',
      paymentTx: nodeLeg?.state === 'confirmed' ? nodeLeg.txRef ?? '' : '',
      refundTx: refundLeg?.state === 'confirmed' ? refundLeg.txRef ?? '' : '',
    };
  }

  /** Where the next pass of settleQuietRefunds goes on from (refund rows by id; back to 0 at the end). */
  let refundsAfterId = 0;

  /**
   * Pays the recorded refunds nobody is settling: quiet for `quietForMs` and not confirmed. They are those that
   * wait for their payer's token account (a reservation's pot settles without them, see settlePot; a job's own
   * refund activity keeps trying too), those whose attempt expired after the reconciliation took it over, and
   * those whose workflow was closed outside the server after deciding them. Exactly once like any leg; a payee
   * that still cannot receive is passed over. Each pass goes on where the last stopped, so refunds that wait for
   * good never hold back the rest, and stops after `budgetMs`.
   * @returns the ledger ids paid, and why others could not be.
   */
  async function settleQuietRefunds(opts: { quietForMs: number; limit: number; budgetMs?: number }): Promise<{ paid: string[]; errors: string[] }> {
    const started = Date.now();
    const rows = await db
      .select({ id: payments.id, jobId: payments.jobId, toAccount: payments.toAccount })
      .from(payments)
      .where(
        and(
          eq(payments.leg, 'refund'),
          // A refund that failed for good (insufficient funds, a wrong account) is an operator's: only one that
          // failed waiting for its payer is taken up again.
          or(eq(payments.state, 'pending'), and(eq(payments.state, 'failed'), like(payments.lastError, 'the refund waits:%'))),
          gt(payments.id, refundsAfterId),
          lt(payments.updatedAt, new Date(Date.now() - opts.quietForMs)),
          // A reclaim is settled while its caller waits, and never waits for an account.
          notLike(payments.jobId, '%/reclaim/%'),
        ),
      )
      .orderBy(payments.id)
      .limit(opts.limit);
    refundsAfterId = rows.length < opts.limit ? 0 : rows[rows.length - 1].id;
    const paid: string[] = [];
    const errors: string[] = [];
    for (const row of rows) {
      if (opts.budgetMs !== undefined && Date.now() - started > opts.budgetMs) {
        refundsAfterId = row.id - 1; // the next pass starts here
        break;
      }
      try {
        if (await cannotReceive(row.toAccount)) continue;
        // Only out of money the ledger says is there for it: the escrow must hold every leg of its ledger not paid
        // yet (an owed node share stays in it too). Less is a disagreement to report, not to pay out of.
        const legs = await rowsOf(row.jobId, ['release_node', 'release_platform', 'refund']);
        const unpaid = legs.filter((l) => l.state !== 'confirmed').reduce((sum, l) => sum + l.amount, 0n);
        const held = await escrowBalance(row.jobId);
        if (held < unpaid) {
          errors.push(`${row.jobId}/refund: its escrow account holds ${held} units, less than the ${unpaid} its ledger has yet to pay: not paid`);
          continue;
        }
        const refund = await settleRefund(row.jobId, row.jobId);
        await showReservationRefund(row.jobId, refund.txRef);
        paid.push(row.jobId);
      } catch (err) {
        errors.push(`${row.jobId}/refund: ${(err as Error).message}`);
      }
    }
    return { paid, errors };
  }

  /**
   * A refund paid after its reservation's end was recorded (by the reconciliation): when the ledger is a
   * reservation's pot (its id, or `<id>/ext-<n>`), the reservation shows the refund's signature, unless it
   * already shows one. Any other ledger has no reservation row, and nothing changes.
   */
  async function showReservationRefund(ledgerId: string, txRef: string): Promise<void> {
    await db
      .update(reservations)
      .set({ refundTx: txRef })
      .where(and(eq(reservations.id, ledgerId.replace(/\/ext-\d+$/, '')), isNull(reservations.refundTx)));
  }

  /** Where the next pass of closeSettledEscrowAccounts goes on from (escrow rows by id; back to 0 at the end). */
  let closeAfterId = 0;

  /**
   * Takes back the rent of escrow accounts whose money has all gone out: every leg of their ledger confirmed, none
   * changed within `settledFor` ms, the account empty on chain. Each account is closed to the escrow authority
   * (the token program refuses to close one holding tokens, so no money can be lost by this) and its escrow row
   * marked; an account that still holds tokens (a stray transfer not taken back) is left open and reported.
   * At most `limit` ledgers a pass; the next pass goes on after them.
   */
  async function closeSettledEscrowAccounts(opts: {
    settledForMs: number;
    limit: number;
    /** The pass stops starting closes after this long (a slow cluster must not outlast its activity). */
    budgetMs?: number;
  }): Promise<{ closed: string[]; holding: string[]; errors: string[] }> {
    const started = Date.now();
    const settledBefore = new Date(started - opts.settledForMs);
    // Settled: every leg of the ledger confirmed and quiet, and no other ledger (a reclaim) moving money out of
    // the same account still on its way.
    const rows = (await db.execute(sql`
      select e.id, e.job_id, e.slot from ${payments} e
      where e.leg = 'escrow' and e.account_closed_at is null and e.id > ${closeAfterId} and e.state = 'confirmed'
        and position('/reclaim/' in e.job_id) = 0
        and exists (select 1 from ${payments} o where o.job_id = e.job_id and o.leg <> 'escrow')
        and not exists (
          select 1 from ${payments} o where o.job_id = e.job_id and (o.state <> 'confirmed' or o.updated_at > ${settledBefore})
        )
        and not exists (select 1 from ${payments} r where r.from_account = e.to_account and r.state <> 'confirmed')
      order by e.id
      limit ${opts.limit}`)).rows as { id: string | number; job_id: string; slot: string | number | null }[];
    const closed: string[] = [];
    const holding: string[] = [];
    const errors: string[] = [];
    let last = 0;
    for (const { id, job_id: jobId, slot } of rows) {
      if (opts.budgetMs !== undefined && Date.now() - started > opts.budgetMs) break;
      last = Number(id);
      try {
        const account = escrowOf(jobId);
        // Read by a node that has seen the escrow land: a lagging one would call the account missing.
        const seen = slot === null ? {} : { minContextSlot: Number(slot) };
        const info = await connection.getAccountInfo(account, { commitment: deps.commitment, ...seen });
        if (holdsTokens(info)) {
          holding.push(jobId);
          continue;
        }
        if (info && !(await closeEmptyAccount(jobId, account, seen))) continue; // looked at again next time round
        await db.update(payments).set({ accountClosedAt: new Date() }).where(and(eq(payments.jobId, jobId), eq(payments.leg, 'escrow')));
        closed.push(jobId);
      } catch (err) {
        // One account's trouble (a refused preflight, the fee payer out of SOL, a rate limit) ends neither the pass
        // nor the report it is part of.
        errors.push(`${jobId}: could not close its escrow account: ${String((err as Error)?.message ?? err).split('\n')[0].slice(0, 200)}`);
      }
    }
    closeAfterId = rows.length < opts.limit && last === Number(rows.at(-1)?.id ?? 0) ? 0 : last;
    return { closed, holding, errors };
  }

  /**
   * Closes an escrow account that holds no tokens (its rent back to the escrow authority; the token program
   * refuses to close one that holds any). Sending it twice is harmless: a closed account cannot be closed again.
   * @returns whether the close landed (else it is looked at again next time round)
   */
  async function closeEmptyAccount(jobId: string, account: PublicKey, seen: { minContextSlot?: number }): Promise<boolean> {
    const { bytes, lastValidBlockHeight } = await authorityTransaction(`${jobId}/close-escrow`, [
      createCloseAccountInstruction(account, authority.publicKey, authority.publicKey),
    ]);
    const signature = await connection.sendRawTransaction(bytes, { preflightCommitment: deps.commitment, ...seen });
    return (await awaitOutcome(signature, lastValidBlockHeight)).kind === 'landed';
  }

  /** Where the last pass over opened accounts stopped: the next goes on from there, then from the start. */
  let unusedAfter: { openedAt: Date; jobId: string } | undefined;

  /**
   * Closes the escrow accounts opened ahead of a job (openEscrowAccount) that nothing used within `unusedForMs`
   * of their opening. An account a job's ledger names is that ledger's to close once settled
   * (closeSettledEscrowAccounts) and is forgotten here; one an unfinished job has the id of is left for now; one
   * only reclaims used is closed once they are done. One holding tokens is left to its payer (a job to submit, or
   * a reclaim) and reported. A pass goes on from where the last stopped, so accounts it must leave never hold
   * back the ones behind them.
   */
  async function closeUnusedEscrowAccounts(opts: { unusedForMs: number; limit: number; budgetMs?: number }): Promise<{ closed: string[]; holding: string[]; errors: string[] }> {
    const started = Date.now();
    const after = unusedAfter;
    const rows = await db
      .select()
      .from(openedEscrowAccounts)
      .where(
        and(
          lt(openedEscrowAccounts.openedAt, new Date(started - opts.unusedForMs)),
          after && sql`(${openedEscrowAccounts.openedAt}, ${openedEscrowAccounts.jobId}) > (${after.openedAt.toISOString()}::timestamptz, ${after.jobId})`,
        ),
      )
      .orderBy(openedEscrowAccounts.openedAt, openedEscrowAccounts.jobId)
      .limit(opts.limit);
    const closed: string[] = [];
    const holding: string[] = [];
    const errors: string[] = [];
    let last: { openedAt: Date; jobId: string } | undefined = after;
    let stoppedEarly = false;
    for (const row of rows) {
      if (opts.budgetMs !== undefined && Date.now() - started > opts.budgetMs) {
        stoppedEarly = true;
        break;
      }
      last = row;
      const { jobId } = row;
      // Forgotten only if still the opening this pass read: one closed and opened again meanwhile waits its day.
      const forget = () =>
        db.delete(openedEscrowAccounts).where(and(eq(openedEscrowAccounts.jobId, jobId), lt(openedEscrowAccounts.openedAt, new Date(row.openedAt.getTime() + 1))));
      try {
        const account = escrowOf(jobId);
        const [ledger] = await db.select({ id: payments.id }).from(payments).where(eq(payments.jobId, jobId)).limit(1);
        if (ledger) {
          await forget();
          continue;
        }
        const [job] = await db.select({ status: jobs.status }).from(jobs).where(eq(jobs.id, jobId));
        if (job && !isTerminal(job.status)) continue; // its escrow may be on its way
        const [moving] = await db
          .select({ id: payments.id })
          .from(payments)
          .where(and(or(eq(payments.toAccount, account.toBase58()), eq(payments.fromAccount, account.toBase58())), sql`${payments.state} <> 'confirmed'`))
          .limit(1);
        if (moving) continue; // a reclaim on its way
        const info = await connection.getAccountInfo(account, deps.commitment);
        if (holdsTokens(info)) {
          holding.push(jobId);
          continue;
        }
        if (info && !(await closeEmptyAccount(jobId, account, {}))) continue;
        await forget();
        closed.push(jobId);
      } catch (err) {
        errors.push(`${jobId}: could not close its unused escrow account: ${String((err as Error)?.message ?? err).split('\n')[0].slice(0, 200)}`);
      }
    }
    unusedAfter = rows.length === opts.limit || stoppedEarly ? last : undefined;
    return { closed, holding, errors };
  }

  /** The job's escrow account balance on chain (0 when it does not exist). */
  async function escrowBalance(jobId: string): Promise<bigint> {
    const account = await connection.getAccountInfo(escrowOf(jobId), deps.commitment);
    if (!account || account.data.length < 72) return 0n;
    return Buffer.from(account.data).readBigUInt64LE(64);
  }

  return {
    escrow,
    release,
    refund,
    closeSettledEscrowAccounts,
    closeUnusedEscrowAccounts,
    escrowPot,
    settlePot,
    settleQuietRefunds,
    openEscrowAccount,
    escrowBalance,
    verifyEscrowTransaction,
    reclaimTransfer,
    escrowAddress: escrowOf,
    chainState,
    rowsOf,
    abandonAttempt,
    abandonFailedAttempt,
    markConfirmed,
    showReservationRefund,
  };
}

export type ChainSettlement = ReturnType<typeof createChainSettlement>;
