import {
  ACCOUNT_SIZE,
  createAssociatedTokenAccountIdempotentInstruction,
  createInitializeAccount3Instruction,
  createTransferCheckedInstruction,
  getAssociatedTokenAddressSync,
  TOKEN_PROGRAM_ID,
} from '@solana/spl-token';
import { type Keypair, PublicKey, SystemProgram, type Transaction, TransactionInstruction } from '@solana/web3.js';
import { createHash, createPrivateKey, sign, type KeyObject } from 'node:crypto';

export const MEMO_PROGRAM_ID = new PublicKey('MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr');

/**
 * Each job's escrow is its own token account at an address derived from the escrow authority and the job
 * id (`createAccountWithSeed`), so anyone can find and audit one job's money. The seed is the first 32 hex
 * characters of sha256(job id): seeds are at most 32 bytes and job ids may be longer.
 */
export function escrowSeed(jobId: string): string {
  return createHash('sha256').update(jobId).digest('hex').slice(0, 32);
}

export function escrowAddress(authority: PublicKey, jobId: string): PublicKey {
  // PublicKey.createWithSeed, computed synchronously: sha256(base ‖ seed ‖ owner program).
  const digest = createHash('sha256')
    .update(Buffer.concat([authority.toBuffer(), Buffer.from(escrowSeed(jobId)), TOKEN_PROGRAM_ID.toBuffer()]))
    .digest();
  return new PublicKey(digest);
}

/** A memo carrying the leg's idempotency key, so every transfer names the job and leg it settles. */
export function memoInstruction(text: string, signer: PublicKey): TransactionInstruction {
  return new TransactionInstruction({
    programId: MEMO_PROGRAM_ID,
    keys: [{ pubkey: signer, isSigner: true, isWritable: false }],
    data: Buffer.from(text, 'utf8'),
  });
}

/** Creates and initialises a job's escrow token account, owned by the escrow authority. */
export function createEscrowAccountInstructions(p: {
  authority: PublicKey;
  jobId: string;
  mint: PublicKey;
  rentLamports: number;
}): TransactionInstruction[] {
  const escrow = escrowAddress(p.authority, p.jobId);
  return [
    SystemProgram.createAccountWithSeed({
      fromPubkey: p.authority,
      basePubkey: p.authority,
      seed: escrowSeed(p.jobId),
      newAccountPubkey: escrow,
      lamports: p.rentLamports,
      space: ACCOUNT_SIZE,
      programId: TOKEN_PROGRAM_ID,
    }),
    createInitializeAccount3Instruction(escrow, p.mint, p.authority),
  ];
}

/** Derived token accounts by wallet and mint: a derivation tries curve points in pure JS (~0.5 ms). */
const tokenAccounts = new Map<string, PublicKey>();
const TOKEN_ACCOUNT_CACHE_SIZE = 10_000;

/** The wallet's token account for the mint (its associated token account). */
export function tokenAccountOf(wallet: PublicKey, mint: PublicKey): PublicKey {
  const key = wallet.toBuffer().toString('hex') + mint.toBuffer().toString('hex');
  let account = tokenAccounts.get(key);
  if (!account) {
    account = getAssociatedTokenAddressSync(mint, wallet, true);
    if (tokenAccounts.size >= TOKEN_ACCOUNT_CACHE_SIZE) tokenAccounts.clear();
    tokenAccounts.set(key, account);
  }
  return account;
}

/**
 * Pays `amount` smallest units into `wallet`'s token account. With `create` the account is made first when
 * missing, the fee payer paying its rent: only for the platform's own accounts (the treasury), since the owner
 * of any other could close it and keep the rent. Without, the transfer fails when the account does not exist.
 */
export function payToWallet(p: {
  feePayer: PublicKey;
  from: PublicKey;
  fromOwner: PublicKey;
  wallet: PublicKey;
  mint: PublicKey;
  decimals: number;
  amount: bigint;
  create?: boolean;
}): TransactionInstruction[] {
  const to = tokenAccountOf(p.wallet, p.mint);
  return [
    ...(p.create ? [createAssociatedTokenAccountIdempotentInstruction(p.feePayer, to, p.wallet, p.mint)] : []),
    createTransferCheckedInstruction(p.from, p.mint, to, p.fromOwner, p.amount, p.decimals),
  ];
}

/** PKCS#8 DER header of an Ed25519 private key; the 32-byte seed follows it. */
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');
const signingKeys = new WeakMap<Keypair, KeyObject>();

function signingKey(keypair: Keypair): KeyObject {
  let key = signingKeys.get(keypair);
  if (!key) {
    const seed = keypair.secretKey.subarray(0, 32);
    key = createPrivateKey({ key: Buffer.concat([ED25519_PKCS8_PREFIX, seed]), format: 'der', type: 'pkcs8' });
    signingKeys.set(keypair, key);
  }
  return key;
}

/**
 * Signs a legacy transaction with node:crypto's Ed25519 (OpenSSL) rather than web3.js's pure-JS curve, compiling
 * its message once. Ed25519 is deterministic, so the signatures are the same bytes web3.js would produce.
 * @returns the wire bytes and the raw signatures, fee payer's first (its signature is the transaction id).
 * @throws Error when a required signer is not among `signers`.
 */
export function signTransaction(tx: Transaction, signers: Keypair[]): { bytes: Buffer; signatures: Buffer[] } {
  const message = tx.compileMessage();
  const payload = message.serialize();
  const required = message.accountKeys.slice(0, message.header.numRequiredSignatures);
  const signatures = required.map((key) => {
    const signer = signers.find((s) => s.publicKey.equals(key));
    if (!signer) throw new Error(`missing signature of ${key.toBase58()}`);
    return sign(null, payload, signingKey(signer));
  });
  // Wire format: compact-u16 signature count, the signatures, the message.
  if (signatures.length > 127) throw new Error('too many signers');
  return { bytes: Buffer.concat([Buffer.from([signatures.length]), ...signatures, payload]), signatures };
}

export { ACCOUNT_SIZE, TOKEN_PROGRAM_ID };
