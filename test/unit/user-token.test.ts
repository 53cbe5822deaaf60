import { createHmac } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { authProblem, callerOf, checksExpiry, isNodeMethod, isOpenMethod } from '../../src/api/grpc/auth';
import { ForbiddenError, requireOwner } from '../../src/domain/errors';
import { signP2PToken } from '../../src/services/p2p-token';
import { verifyUserToken } from '../../src/services/user-token';
import { createWalletLinks, decodeSignature, linkExpiry, linkMessage } from '../../src/services/wallet-links';
import type { Db } from '../../src/db/client';
import { getBase58Decoder } from '@solana/kit';
import { Keypair } from '@solana/web3.js';

const SECRET = 'website-login-secret';
const b64 = (v: object | string) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/** An HS256 JWT as the CyxWiz website's login issues one. */
function jwt(claims: object, secret = SECRET, header: object = { alg: 'HS256', typ: 'JWT' }): string {
  const signing = `${b64(header)}.${b64(claims)}`;
  return `${signing}.${createHmac('sha256', secret).update(signing).digest('base64url')}`;
}

const NOW = 1_800_000_000;

describe('verifyUserToken', () => {
  it('refuses a P2P token this server minted for a node, though one secret signed both', () => {
    const p2p = signP2PToken(SECRET, { sub: 'the-submitter', jobId: 'j', nodeId: 'n', expiresAt: NOW + 60, now: NOW }).token;
    expect(() => verifyUserToken(SECRET, p2p, NOW)).toThrow('a P2P token is not a user token');
  });

  it('returns the claims of a token signed with the secret, with or without an expiry', () => {
    expect(verifyUserToken(SECRET, jwt({ sub: 'user-1', exp: NOW + 60 }), NOW)).toMatchObject({ sub: 'user-1' });
    expect(verifyUserToken(SECRET, jwt({ sub: 'user-1' }), NOW)).toMatchObject({ sub: 'user-1' });
  });

  it.each([
    ['another secret', jwt({ sub: 'u' }, 'other'), 'bad signature'],
    ['expired', jwt({ sub: 'u', exp: NOW }), 'expired'],
    ['alg none', jwt({ sub: 'u' }, SECRET, { alg: 'none' }), 'unexpected alg none'],
    ['two parts', 'a.b', 'malformed token'],
    ['a body that is not JSON', (() => { const s = `${b64({ alg: 'HS256' })}.${b64('not json')}`; return `${s}.${createHmac('sha256', SECRET).update(s).digest('base64url')}`; })(), 'malformed token'],
  ])('refuses %s', (_name, token, why) => {
    expect(() => verifyUserToken(SECRET, token, NOW)).toThrow(why);
  });
});

describe('bearer authentication of gRPC calls', () => {
  const md = (value?: string) => {
    const m = new grpc.Metadata();
    if (value !== undefined) m.set('authorization', value);
    return m;
  };

  it('says what is missing or wrong, and nothing for a good token', () => {
    expect(authProblem(SECRET, md())).toBe('missing authorization: Bearer <token>');
    expect(authProblem(SECRET, md('Basic abc'))).toBe('authorization must be "Bearer <token>"');
    expect(authProblem(SECRET, md(`Bearer ${jwt({ sub: 'u' }, 'other')}`))).toBe('invalid token: bad signature');
    expect(authProblem(SECRET, md(`Bearer ${jwt({ sub: 'u', exp: NOW + 5 })}`), NOW)).toBeUndefined();
  });

  it('leaves discovery, NotifyJobAccepted (the node sends no header) and health open', () => {
    expect(isOpenMethod('/cyxwiz.protocol.NodeDiscoveryService/ListNodes')).toBe(true);
    expect(isOpenMethod('/cyxwiz.protocol.NodeService/NotifyJobAccepted')).toBe(true);
    expect(isOpenMethod('/grpc.health.v1.Health/Check')).toBe(true);
    expect(isOpenMethod('/cyxwiz.protocol.NodeService/Heartbeat')).toBe(false);
    expect(isOpenMethod('/cyxwiz.protocol.JobReservationService/ReserveNode')).toBe(false);
  });
});

describe('callerOf and requireOwner', () => {
  const call = (header?: string) => {
    const metadata = new grpc.Metadata();
    if (header) metadata.set('authorization', header);
    return { metadata };
  };

  it('names the verified user behind a call, and nobody when auth is off or the token does not verify', () => {
    const caller = callerOf(SECRET);
    expect(caller(call(`Bearer ${jwt({ sub: 'user-1' })}`))).toBe('user-1');
    expect(caller(call(`Bearer ${jwt({ iat: 1 })}`))).toBe(''); // verified, but no sub: owns nothing
    expect(caller(call(`Bearer ${jwt({ sub: 'user-1' }, 'forged')}`))).toBeUndefined();
    expect(caller(call())).toBeUndefined();
    // Auth off: the interceptor checks nothing, so a token proves nothing.
    expect(callerOf('')(call(`Bearer ${jwt({ sub: 'user-1' })}`))).toBeUndefined();
  });

  it('refuses a known caller acting on what another user owns, and nothing else', () => {
    expect(() => requireOwner('user-1', 'user-2', 'job j')).toThrow(new ForbiddenError('job j belongs to another user'));
    expect(() => requireOwner('user-1', '', 'job j')).toThrow(ForbiddenError);
    for (const [owner, caller] of [['user-1', 'user-1'], ['user-1', undefined], [null, 'user-2'], ['', 'user-2']] as const) {
      expect(() => requireOwner(owner, caller, 'job j')).not.toThrow();
    }
  });
});

describe('node calls and token expiry', () => {
  it('knows a node daemon\'s calls, whose token expiry is not held against them (the original never checked it)', () => {
    for (const m of ['NodeService/Heartbeat', 'NodeService/RegisterNode', 'JobStatusService/UpdateJobStatus', 'JobReservationService/ReportReservationEndFromNode']) {
      expect(isNodeMethod(`/cyxwiz.protocol.${m}`)).toBe(true);
    }
    for (const m of ['JobService/SubmitJob', 'JobReservationService/ReleaseReservation', 'WalletService/GetBalance']) {
      expect(isNodeMethod(`/cyxwiz.protocol.${m}`)).toBe(false);
    }
    // AUTH_CHECK_EXPIRY=true holds the Engine's calls to exp, never a node's; off (the default), no call.
    expect(checksExpiry('/cyxwiz.protocol.JobService/GetJobStatus', true)).toBe(true);
    expect(checksExpiry('/cyxwiz.protocol.NodeService/Heartbeat', true)).toBe(false);
    expect(checksExpiry('/cyxwiz.protocol.JobService/GetJobStatus', false)).toBe(false);
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${jwt({ sub: 'daemon', exp: NOW - 60 })}`);
    expect(authProblem(SECRET, md, NOW)).toBe('invalid token: expired');
    expect(authProblem(SECRET, md, NOW, false)).toBeUndefined();
    expect(callerOf(SECRET)({ metadata: md })).toBe('daemon');
  });
});

describe("wallet links: the proof a wallet is the user's", () => {
  it('reads a signature as base58 or base64, and both when it could be either', () => {
    const bytes = Buffer.alloc(64, 7);
    expect(decodeSignature(bytes.toString('base64'))).toEqual([bytes]);
    expect(decodeSignature(getBase58Decoder().decode(bytes))).toEqual([bytes]);
    // A base64 signature that is base58 text too is read as base64 all the same (the base58 reading, when it is
    // 64 bytes, is tried beside it).
    const both = Buffer.alloc(64, 0x82).toString('base64').replace(/=+$/, ''); // unpadded, as some wallets send it
    expect(both).toMatch(/^[1-9A-HJ-NP-Za-km-z]+$/);
    expect(decodeSignature(both)).toContainEqual(Buffer.from(both, 'base64'));
    expect(() => decodeSignature('not a signature')).toThrow(/^signature:/);
    expect(() => decodeSignature(Buffer.alloc(63).toString('base64'))).toThrow(/64-byte/);
  });

  it('refuses keys of small order, whose trivial signatures verify for many messages (no one holds them)', async () => {
    const links = createWalletLinks({} as Db); // refused before Postgres is asked
    const trivial = Buffer.concat([Buffer.from([1]), Buffer.alloc(63)]).toString('base64'); // R = identity, S = 0
    const expiresAt = linkExpiry(NOW * 1000);
    // The identity point (order 1) and the point of order 2.
    for (const key of ['4uQeVj5tqViQh7yWWGStvkEG1Zmhx6uasJtWCJziofM', 'Gx9dDNxzpALCowVuZb7pBceBLJugLA8sPa6TJDXrpfeW']) {
      await expect(links.link('user-1', key, trivial, expiresAt, NOW * 1000)).rejects.toMatchObject({ field: 'wallet', message: expect.stringContaining('no key anyone can sign with') });
    }
    const identity = '4uQeVj5tqViQh7yWWGStvkEG1Zmhx6uasJtWCJziofM';
    const ordinary = Keypair.generate().publicKey.toBase58();
    // An expiry that is no instant as written (30 February) is refused, though a date parser would read one.
    await expect(links.link('user-1', ordinary, trivial, '2027-02-30T00:00:00.000Z', NOW * 1000)).rejects.toMatchObject({ field: 'expiresAt' });
    await expect(links.link('user-1', ordinary, trivial, expiresAt, NOW * 1000)).rejects.toMatchObject({ field: 'signature' });
    expect(linkMessage('user-1', identity, expiresAt)).toContain(`(until ${expiresAt})`);
    await expect(links.link('', identity, trivial, expiresAt, NOW * 1000)).rejects.toMatchObject({ code: 403 });
    await expect(links.link('user-1', identity, trivial, '2020-01-01T00:00:00.000Z', NOW * 1000)).rejects.toMatchObject({ field: 'expiresAt' });
  });
});
