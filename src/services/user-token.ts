import { createHmac, timingSafeEqual } from 'node:crypto';
import { P2P_ISSUER } from './p2p-token';

/** What a verified user token says; only the standard claims are read. */
export interface UserClaims {
  sub?: string;
  exp?: number;
  iat?: number;
  [claim: string]: unknown;
}

/** The user a token names: its `sub` ('' when it has none). */
export const userOf = (c: UserClaims): string => (typeof c.sub === 'string' ? c.sub : '');

/** The user's wallet a token names: its `wallet_address` claim, optional among the website's claims ('' without). */
export const walletClaimOf = (c: UserClaims): string => (typeof c.wallet_address === 'string' ? c.wallet_address.trim() : '');

/** The token of an `authorization` header's value `Bearer <token>`, undefined when it has no such form. */
export function bearerToken(header: unknown): string | undefined {
  return typeof header === 'string' ? /^Bearer\s+(\S+)$/i.exec(header.trim())?.[1] : undefined;
}

/**
 * Verifies a user's bearer token, as the CyxWiz website's login issues it (HS256 JWT, CYXWIZ-PROTOCOL.md §0):
 * the signature with `secret`, the algorithm, and `exp` when present and `checkExpiry` (the original server never
 * checked it). @returns the claims. @throws Error saying what is wrong.
 */
export function verifyUserToken(secret: string, token: string, nowS = Math.floor(Date.now() / 1000), checkExpiry = true): UserClaims {
  const parts = token.split('.');
  if (parts.length !== 3 || parts.some((p) => !p)) throw new Error('malformed token');
  const [head, body, signature] = parts;
  const expected = createHmac('sha256', secret).update(`${head}.${body}`).digest();
  const given = Buffer.from(signature, 'base64url');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw new Error('bad signature');
  let header: { alg?: unknown };
  let claims: UserClaims;
  try {
    header = JSON.parse(Buffer.from(head, 'base64url').toString('utf8')) as { alg?: unknown };
    claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as UserClaims;
  } catch {
    throw new Error('malformed token');
  }
  if (header.alg !== 'HS256') throw new Error(`unexpected alg ${String(header.alg)}`);
  if (claims === null || typeof claims !== 'object') throw new Error('malformed token');
  // A P2P token this server minted for a node (it names the job's submitter as `sub`) is no user's login, even
  // where one secret signs both.
  if (claims.iss === P2P_ISSUER) throw new Error('a P2P token is not a user token');
  if (checkExpiry && claims.exp !== undefined && !(typeof claims.exp === 'number' && claims.exp > nowS)) throw new Error('expired');
  return claims;
}
