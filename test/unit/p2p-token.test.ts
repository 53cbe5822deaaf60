import { createHmac } from 'node:crypto';
import { P2P_ISSUER, signP2PToken, verifyP2PToken } from '../../src/services/p2p-token';

const SECRET = 'your-super-secret-jwt-key-change-in-production';

describe('P2P tokens', () => {
  const now = Date.UTC(2026, 10, 27, 12) ;
  const nowS = Math.floor(now / 1000);

  it('carries the claims the shipping node checks, signed HS256 with its secret', () => {
    const { token } = signP2PToken(SECRET, { sub: 'wallet1', jobId: 'job-1', nodeId: 'node-1', expiresAt: nowS + 3600, now });
    const [head, body, sig] = token.split('.');
    expect(JSON.parse(Buffer.from(head, 'base64url').toString())).toEqual({ alg: 'HS256', typ: 'JWT' });
    expect(JSON.parse(Buffer.from(body, 'base64url').toString())).toEqual({
      sub: 'wallet1',
      job_id: 'job-1',
      node_id: 'node-1',
      iat: nowS - 1,
      exp: nowS + 3600,
      iss: P2P_ISSUER,
    });
    expect(sig).toBe(createHmac('sha256', SECRET).update(`${head}.${body}`).digest('base64url'));
    expect(verifyP2PToken(SECRET, token, nowS).node_id).toBe('node-1');
  });

  it('is refused with another secret, once expired, or when tampered with', () => {
    const { token } = signP2PToken(SECRET, { sub: 's', jobId: 'j', nodeId: 'n', expiresAt: nowS + 10, now });
    expect(() => verifyP2PToken('other', token, nowS)).toThrow('bad signature');
    expect(() => verifyP2PToken(SECRET, token, nowS + 11)).toThrow('expired');
    const [h, b, s] = token.split('.');
    const forged = Buffer.from(Buffer.from(b, 'base64url').toString().replace('"n"', '"x"')).toString('base64url');
    expect(() => verifyP2PToken(SECRET, `${h}.${forged}.${s}`, nowS)).toThrow('bad signature');
  });
});
