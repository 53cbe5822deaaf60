import { createPublicKey, verify } from 'node:crypto';
import { getBase58Encoder } from '@solana/kit';
import { and, asc, eq } from 'drizzle-orm';
import type { Db } from '../db/client';
import { userWallets } from '../db/schema';
import { ForbiddenError, ValidationError } from '../domain/errors';
import { walletAddress } from './wallet-service';

/** DER header of an Ed25519 public key (SPKI); the 32 raw bytes follow it. */
const ED25519_SPKI_PREFIX = Buffer.from('302a300506032b6570032100', 'hex');
/** Wallets one user may link. */
const MAX_LINKS_PER_USER = 20;

/** What a wallet's key signs (UTF-8 bytes, as wallets' signMessage does) to prove it is the user's. */
export function linkMessage(userId: string, wallet: string): string {
  return `CyxWiz Central: wallet ${wallet} belongs to user ${userId}`;
}

/**
 * Wallets users proved are theirs. With auth on, a user pays only from a wallet that is theirs: the one its
 * token's `wallet_address` claim names, a `sub` that is the wallet itself, or one linked here.
 */
export function createWalletLinks(db: Db) {
  /**
   * Links `wallet` to the user, given the wallet key's Ed25519 signature of linkMessage(userId, wallet).
   * @param signature base58 (what a wallet returns) or base64
   * @throws ValidationError naming `wallet` or `signature`
   */
  async function link(userId: string, wallet: string, signature: string): Promise<void> {
    const key = walletAddress(wallet, 'wallet');
    const sig = decodeSignature(signature);
    const publicKey = createPublicKey({ key: Buffer.concat([ED25519_SPKI_PREFIX, key.toBuffer()]), format: 'der', type: 'spki' });
    if (!verify(null, Buffer.from(linkMessage(userId, key.toBase58())), publicKey, sig)) {
      throw new ValidationError('signature', `is not ${key.toBase58()}'s signature of "${linkMessage(userId, key.toBase58())}"`);
    }
    const linked = await list(userId);
    if (!linked.some((l) => l.wallet === key.toBase58()) && linked.length >= MAX_LINKS_PER_USER) {
      throw new ValidationError('wallet', `at most ${MAX_LINKS_PER_USER} wallets may be linked to one user: unlink one first`);
    }
    await db.insert(userWallets).values({ userId, wallet: key.toBase58() }).onConflictDoNothing();
  }

  /** @returns whether the wallet was linked to the user */
  async function unlink(userId: string, wallet: string): Promise<boolean> {
    const gone = await db.delete(userWallets).where(and(eq(userWallets.userId, userId), eq(userWallets.wallet, wallet))).returning({ wallet: userWallets.wallet });
    return gone.length > 0;
  }

  /** The wallet the user linked first, '' when none: where its nodes without a wallet of their own are paid. */
  async function firstLinked(userId: string): Promise<string> {
    const [first] = await db.select({ wallet: userWallets.wallet }).from(userWallets).where(eq(userWallets.userId, userId)).orderBy(asc(userWallets.linkedAt), asc(userWallets.wallet)).limit(1);
    return first?.wallet ?? '';
  }

  async function list(userId: string): Promise<{ wallet: string; linkedAt: Date }[]> {
    return db.select({ wallet: userWallets.wallet, linkedAt: userWallets.linkedAt }).from(userWallets).where(eq(userWallets.userId, userId)).orderBy(asc(userWallets.linkedAt));
  }

  /**
   * Whether the signed-in user may pay from `wallet`.
   * @param claim the token's wallet_address claim ('' or undefined when it has none)
   */
  async function isUsersWallet(userId: string, claim: string | undefined, wallet: string): Promise<boolean> {
    if (claim === wallet || userId === wallet) return true;
    const [row] = await db.select({ wallet: userWallets.wallet }).from(userWallets).where(and(eq(userWallets.userId, userId), eq(userWallets.wallet, wallet)));
    return row !== undefined;
  }

  return { link, unlink, list, firstLinked, isUsersWallet };
}

export type WalletLinks = ReturnType<typeof createWalletLinks>;

/**
 * Refuses paying from `wallet` for a signed-in user whose wallet it is not (see isUsersWallet); without links
 * (none configured), only the token's claim or `sub` make it theirs.
 * @throws ForbiddenError naming `field`
 */
export async function requireUsersWallet(
  links: Pick<WalletLinks, 'isUsersWallet'> | undefined,
  p: { userId: string; claim: string | undefined; wallet: string; field: string },
): Promise<void> {
  const theirs = links ? await links.isUsersWallet(p.userId, p.claim, p.wallet) : p.claim === p.wallet || p.userId === p.wallet;
  if (theirs) return;
  throw new ForbiddenError(
    p.claim
      ? `${p.field} ${p.wallet} is not the signed-in user's wallet (${p.claim}), nor linked to the user (POST /api/wallet-links)`
      : `${p.field} ${p.wallet} cannot be tied to the signed-in user: the token carries no wallet_address claim, and the wallet is not linked to the user (POST /api/wallet-links)`,
  );
}

/** A 64-byte signature from base58 or base64. @throws ValidationError naming `signature` */
function decodeSignature(value: string): Buffer {
  const text = value.trim();
  let bytes: Buffer | undefined;
  // (Kit's base58 "encoder" turns base58 text into bytes.)
  if (/^[1-9A-HJ-NP-Za-km-z]{64,88}$/.test(text)) bytes = Buffer.from(getBase58Encoder().encode(text));
  if (bytes?.length !== 64 && /^[A-Za-z0-9+/]{86}={0,2}$/.test(text)) bytes = Buffer.from(text, 'base64');
  if (bytes?.length !== 64) throw new ValidationError('signature', 'must be the 64-byte Ed25519 signature, base58 or base64');
  return bytes;
}
