import { PublicKey } from '@solana/web3.js';
import { createHash } from 'node:crypto';
import type { ChainContext } from '../chain/context';
import { tokenAccountOf } from '../chain/instructions';
import type { Db } from '../db/client';
import * as jobsRepo from '../db/jobs-repo';
import { ValidationError } from '../domain/errors';
import { unitsToTokens } from '../domain/money';

/** wallet.proto TransactionType / TransactionStatus values (unprefixed at package scope). */
export const TransactionType = { UNKNOWN: 0, JOB_PAYMENT: 1, REWARD_CLAIM: 2, STAKE: 3, UNSTAKE: 4, REFUND: 5 } as const;
export const TransactionStatus = { PENDING: 0, CONFIRMED: 1, FAILED: 2 } as const;

const LEG_TYPE = { escrow: TransactionType.JOB_PAYMENT, release_node: TransactionType.REWARD_CLAIM, release_platform: TransactionType.JOB_PAYMENT, refund: TransactionType.REFUND };
const LEG_TEXT = { escrow: 'escrow of job', release_node: 'payment to the node for job', release_platform: 'platform fee of job', refund: 'refund of job' };

/**
 * `Transaction.job_id` is a uint64: the first 8 bytes of a UUID job id read little-endian (as the original
 * server derived it), or of the sha256 of any other id. The full id is in the description.
 */
export function jobIdAsUint64(jobId: string): string {
  const hex = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(jobId)
    ? jobId.replace(/-/g, '')
    : createHash('sha256').update(jobId).digest('hex');
  return Buffer.from(hex.slice(0, 16), 'hex').readBigUInt64LE(0).toString();
}

/** A base58 Solana address. @throws ValidationError naming `field` */
export function walletAddress(value: string, field = 'wallet_address'): PublicKey {
  const v = (value ?? '').trim();
  if (!v) throw new ValidationError(field, 'is required');
  try {
    return new PublicKey(v);
  } catch {
    throw new ValidationError(field, 'is not a base58 Solana address');
  }
}

/** How long one wallet's balance answers GetBalance again (the chain's own pace is 400 ms a slot). */
const BALANCE_REUSE_MS = 2000;

/** Wallet use-cases: balances read from the chain, history from the payment ledger. */
export function createWalletService(deps: { db: Db; chain: ChainContext }) {
  const { chain } = deps;
  type Balance = { sol: number; cyxwiz: number; mint: string };
  /** Answers of the last BALANCE_REUSE_MS by wallet: a client asking in a loop must not spend the RPC's quota. */
  const recent = new Map<string, { at: number; answer: Promise<Balance> }>();

  function balance(address: string): Promise<Balance> {
    const owner = walletAddress(address);
    const key = owner.toBase58();
    const now = Date.now();
    const hit = recent.get(key);
    if (hit && now - hit.at < BALANCE_REUSE_MS) return hit.answer;
    if (recent.size >= 10_000) recent.clear();
    const answer = readBalance(owner);
    recent.set(key, { at: now, answer });
    answer.catch(() => recent.delete(key));
    return answer;
  }

  async function readBalance(owner: PublicKey): Promise<Balance> {
    const [lamports, token] = await Promise.all([
      chain.connection.getBalance(owner, chain.commitment),
      chain.connection.getTokenAccountBalance(tokenAccountOf(owner, chain.mint), chain.commitment).catch(() => null),
    ]);
    return {
      sol: lamports / 1e9,
      cyxwiz: token ? unitsToTokens(BigInt(token.value.amount), chain.decimals) : 0,
      mint: chain.mint.toBase58(),
    };
  }

  async function history(address: string, limit: number, offset: number) {
    const wallet = walletAddress(address).toBase58();
    const { rows, total } = await jobsRepo.walletPayments(deps.db, wallet, limit, offset);
    return {
      total,
      transactions: rows.map((r) => ({
        signature: r.txRef ?? '',
        type: LEG_TYPE[r.leg],
        status: r.state === 'confirmed' ? TransactionStatus.CONFIRMED : r.state === 'failed' ? TransactionStatus.FAILED : TransactionStatus.PENDING,
        amount: unitsToTokens(r.amount, chain.decimals),
        timestamp: String(Math.floor(r.updatedAt.getTime() / 1000)),
        description: `${LEG_TEXT[r.leg]} ${r.jobId} (${r.amount} units, ${r.state})`,
        job_id: jobIdAsUint64(r.jobId),
      })),
    };
  }

  return { balance, history };
}

export type WalletService = ReturnType<typeof createWalletService>;
