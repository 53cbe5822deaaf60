import { createHmac } from 'node:crypto';

/** Issuer the shipping node's P2P validator requires. */
export const P2P_ISSUER = 'CyxWiz-Central-Server';

export interface P2PClaims {
  /** The user: wallet or engine id. */
  sub: string;
  /** Must equal the job_id the Engine sends in ConnectRequest. */
  job_id: string;
  /** Must equal the id the node got from RegisterNode. */
  node_id: string;
  iat: number;
  exp: number;
  iss: typeof P2P_ISSUER;
}

const b64url = (data: Buffer | string) => Buffer.from(data).toString('base64url');

/**
 * Mints the HS256 token a node accepts for a P2P connection (jwt-cpp on the node checks iss, exp, iat,
 * job_id and node_id). `iat` is one second in the past so a node clock slightly behind ours still accepts it.
 */
export function signP2PToken(
  secret: string,
  claims: { sub: string; jobId: string; nodeId: string; expiresAt: number; now?: number },
): { token: string; expiresAt: number } {
  const iat = Math.floor((claims.now ?? Date.now()) / 1000) - 1;
  const payload: P2PClaims = {
    sub: claims.sub,
    job_id: claims.jobId,
    node_id: claims.nodeId,
    iat,
    exp: claims.expiresAt,
    iss: P2P_ISSUER,
  };
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(payload));
  const signature = b64url(createHmac('sha256', secret).update(`${head}.${body}`).digest());
  return { token: `${head}.${body}.${signature}`, expiresAt: claims.expiresAt };
}

/**
 * Verifies a P2P token as the node does. Returns the claims, or throws with the reason.
 * Used by tests and simulated nodes.
 */
export function verifyP2PToken(secret: string, token: string, nowS = Math.floor(Date.now() / 1000)): P2PClaims {
  const [head, body, signature] = token.split('.');
  if (!head || !body || !signature) throw new Error('malformed token');
  const expected = b64url(createHmac('sha256', secret).update(`${head}.${body}`).digest());
  if (expected !== signature) throw new Error('bad signature');
  const header = JSON.parse(Buffer.from(head, 'base64url').toString()) as { alg?: string };
  if (header.alg !== 'HS256') throw new Error(`unexpected alg ${header.alg}`);
  const claims = JSON.parse(Buffer.from(body, 'base64url').toString()) as P2PClaims;
  if (claims.iss !== P2P_ISSUER) throw new Error(`unexpected issuer ${claims.iss}`);
  if (!(claims.exp > nowS)) throw new Error('expired');
  if (claims.iat > nowS) throw new Error('issued in the future');
  if (!claims.job_id || !claims.node_id) throw new Error('missing job_id or node_id');
  return claims;
}
