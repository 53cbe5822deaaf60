import { createPublicKey, verify } from 'node:crypto';
import { ed25519 } from '@noble/curves/ed25519';
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
/** How long a link message may be signed for: a signature got by phishing is of no use after that. */
export const LINK_MESSAGE_TTL_MS = 10 * 60_000;

/**
 * What a wallet's key signs (UTF-8 bytes, as wallets' signMessage does) to prove it is the user's, until
 * `expiresAt` (an ISO instant, whole seconds).
 */
export function linkMessage(userId: string, wallet: string, expiresAt: string): string {
  return `CyxWiz Central: wallet ${wallet} belongs to user ${userId} (until ${expiresAt})`;
}

/** A link message's expiry for one asked for now. */
export const linkExpiry = (now = Date.now()): string => new Date(Math.ceil((now + LINK_MESSAGE_TTL_MS) / 1000) * 1000).toISOString();

/**
 * Wallets users proved are theirs. With auth on, a user pays only from a wallet that is theirs: the one its
 * token's `wallet_address` claim names, a `sub` that is the wallet itself, or one linked here.
 */
export function createWalletLinks(db: Db) {
  /**
   * Links `wallet` to the user, given the wallet key's Ed25519 signature of linkMessage(userId, wallet, expiresAt)
   * before `expiresAt`.
   * @param signature base58 (what a wallet returns) or base64
   * @returns whether it was not linked before
   * @throws ValidationError naming `wallet`, `expiresAt` or `signature`; ForbiddenError for a token naming no user
   */
  async function link(userId: string, wallet: string, signature: string, expiresAt: string, now = Date.now()): Promise<boolean> {
    if (!userId) throw new ForbiddenError('authorization: the token names no user (sub): no wallet can be linked to it');
    const key = walletAddress(wallet, 'wallet');
    const until = Date.parse(expiresAt);
    if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000Z$/.test(expiresAt) || !Number.isFinite(until) || new Date(until).toISOString() !== expiresAt) {
      throw new ValidationError('expiresAt', 'must be the expiry GET /api/wallet-links?wallet= gave with the message');
    }
    if (until <= now) throw new ValidationError('expiresAt', `the message expired at ${expiresAt}: ask for a new one`);
    if (until > now + LINK_MESSAGE_TTL_MS + 60_000) throw new ValidationError('expiresAt', `is more than ${LINK_MESSAGE_TTL_MS / 60_000} minutes ahead`);
    // A key of small order (no one holds it; trivial signatures verify for many messages) proves nothing, and
    // neither does an address off the curve (a program's).
    if (!isOrdinaryKey(key.toBytes())) throw new ValidationError('wallet', `${key.toBase58()} is no key anyone can sign with`);
    const message = linkMessage(userId, key.toBase58(), expiresAt);
    const publicKey = createPublicKey({ key: Buffer.concat([ED25519_SPKI_PREFIX, key.toBuffer()]), format: 'der', type: 'spki' });
    if (!decodeSignature(signature).some((sig) => verify(null, Buffer.from(message), publicKey, sig))) {
      throw new ValidationError('signature', `is not ${key.toBase58()}'s signature of "${message}"`);
    }
    const linked = await list(userId);
    if (!linked.some((l) => l.wallet === key.toBase58()) && linked.length >= MAX_LINKS_PER_USER) {
      throw new ValidationError('wallet', `at most ${MAX_LINKS_PER_USER} wallets may be linked to one user: unlink one first`);
    }
    const added = await db.insert(userWallets).values({ userId, wallet: key.toBase58() }).onConflictDoNothing().returning({ wallet: userWallets.wallet });
    return added.length > 0;
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
    // Tokens that name no user would all be this one: none of them has linked wallets.
    if (!userId) return false;
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

/** A wallet address as it is written canonically, '' when `value` is none (a token's claim may be anything). */
export function walletOrNone(value: string | undefined): string {
  try {
    return value ? walletAddress(value).toBase58() : '';
  } catch {
    return '';
  }
}

/** Whether 32 bytes are a point on the curve that is not of small order: a key someone may hold. */
function isOrdinaryKey(bytes: Uint8Array): boolean {
  try {
    return !ed25519.ExtendedPoint.fromHex(bytes).isSmallOrder();
  } catch {
    return false;
  }
}

/**
 * The 64-byte signatures a text may be: base58 and base64 (some texts are both).
 * @throws ValidationError naming `signature` when it is neither
 */
export function decodeSignature(value: string): Buffer[] {
  const text = value.trim();
  const found: Buffer[] = [];
  // (Kit's base58 "encoder" turns base58 text into bytes.)
  if (/^[1-9A-HJ-NP-Za-km-z]{64,88}$/.test(text)) found.push(Buffer.from(getBase58Encoder().encode(text)));
  if (/^[A-Za-z0-9+/]{86}(==)?$/.test(text)) found.push(Buffer.from(text, 'base64'));
  const sigs = found.filter((b) => b.length === 64);
  if (sigs.length === 0) throw new ValidationError('signature', 'must be the 64-byte Ed25519 signature, base58 or base64');
  return sigs;
}
