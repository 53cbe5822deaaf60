import { createHmac, createPrivateKey, sign } from 'node:crypto';
import { getBase58Decoder } from '@solana/kit';
import { Keypair } from '@solana/web3.js';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { protocolClient } from '../support/grpc-clients';
import { useSystem } from '../support/system';
import { eventually, S, unfittable, type ProtocolClient } from './helpers';

/*
 * With AUTH_JWT_SECRET set, the server asks for the users' bearer token as the original did (CYXWIZ-PROTOCOL.md
 * §0): every service but node discovery, NotifyJobAccepted and health.
 */
const SECRET = 'website-login-secret';
const OPERATOR_TOKEN = 'operator-token-of-this-test';
const sys = useSystem({ name: 'auth', env: { AUTH_JWT_SECRET: SECRET, REST_OPERATOR_TOKEN: OPERATOR_TOKEN } });

const b64 = (v: object) => Buffer.from(JSON.stringify(v)).toString('base64url');
function token(claims: object, secret = SECRET): string {
  const signing = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${signing}.${createHmac('sha256', secret).update(signing).digest('base64url')}`;
}
const bearer = (t: string) => {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${t}`);
  return md;
};
const nowS = () => Math.floor(Date.now() / 1000);

let nodeApi: ProtocolClient;
let jobs: ProtocolClient;
let discovery: ProtocolClient;

beforeAll(() => {
  nodeApi = protocolClient('NodeService', sys().grpcAddress);
  jobs = protocolClient('JobService', sys().grpcAddress);
  discovery = protocolClient('NodeDiscoveryService', sys().grpcAddress);
});

afterAll(() => {
  for (const c of [nodeApi, jobs, discovery]) c?.close();
});

const registration = {
  info: { node_id: 'node_auth_1', name: 'auth node', cpu_cores: 8, ram_total: String(16 * 2 ** 30), ip_address: '127.0.0.1', port: 50052, devices: [] },
  authentication_token: '',
};

test('a call without a valid bearer token ends UNAUTHENTICATED before it reaches the server, and changes nothing', async () => {
  for (const metadata of [undefined, bearer(token({ sub: 'u' }, 'another-secret'))]) {
    await expect(nodeApi.call('RegisterNode', registration, { metadata })).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
    await expect(jobs.call('GetJobStatus', { job_id: 'any' }, { metadata })).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
  }
  await expect(jobs.call('GetJobStatus', { job_id: 'any' })).rejects.toMatchObject({ details: 'missing authorization: Bearer <token>' });
  expect(await sys().query('select id from nodes where id = $1', ['node_auth_1'])).toEqual([]);
});

test('an expired token is taken, as the original server took it: the shipping node and Engine never refresh theirs', async () => {
  const expired = () => bearer(token({ sub: 'daemon-user', exp: nowS() - 3600 }));
  // (AUTH_CHECK_EXPIRY=true refuses it on the Engine's calls: test/unit/user-token.test.ts.)
  expect(await jobs.call('GetJobStatus', { job_id: 'any' }, { metadata: expired() })).toMatchObject({ error: { code: 404 } });
  expect(await nodeApi.call('Heartbeat', { node_id: 'node_auth_expired', current_status: null, active_jobs: [] }, { metadata: expired() })).toMatchObject({
    status: S.SUCCESS,
    keep_alive: true,
  });
});

test('with a valid token the call goes through; discovery, NotifyJobAccepted and health need none', async () => {
  const md = () => bearer(token({ sub: 'user-1', exp: nowS() + 3600 }));
  expect(await nodeApi.call('RegisterNode', registration, { metadata: md() })).toMatchObject({ status: S.SUCCESS, node_id: 'node_auth_1' });
  expect(await jobs.call('GetJobStatus', { job_id: 'no-such-job' }, { metadata: md() })).toMatchObject({ error: { code: 404 } });

  expect((await discovery.call('ListNodes', { page_size: 10 })).nodes.map((n: { node_id: string }) => n.node_id)).toContain('node_auth_1');
  // The shipping node sends NotifyJobAccepted without a header: it is answered (here: no such job).
  expect(await nodeApi.call('NotifyJobAccepted', { node_id: 'node_auth_1', job_id: 'no-such-job' })).toMatchObject({ status: S.FAILED, error: { code: 404 } });
  const Health = grpc.makeGenericClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health');
  const health = new Health(sys().grpcAddress, grpc.credentials.createInsecure()) as any;
  try {
    const res = await new Promise<any>((resolve, reject) =>
      health.Check({ service: '' }, { deadline: Date.now() + 5000 }, (err: unknown, r: unknown) => (err ? reject(err) : resolve(r))),
    );
    expect(res.status).toBe('SERVING');
  } finally {
    health.close();
  }
});

test('a user acts only on what is theirs: another user cannot take over their node, report for it, or cancel their job', async () => {
  const as = (sub: string) => bearer(token({ sub, exp: nowS() + 3600 }));
  const owned = { ...registration, info: { ...registration.info, node_id: 'node_auth_owned', ip_address: '127.0.0.2', wallet_address: 'So11111111111111111111111111111111111111112' } };
  expect(await nodeApi.call('RegisterNode', owned, { metadata: as('owner-1') })).toMatchObject({ status: S.SUCCESS, node_id: 'node_auth_owned' });

  // Another user registering under that node's id (a copied registration file) gets a node of its own, with a
  // fresh id (the shipping node stores the id it is given): that node, its wallet and what it is owed stay put.
  const copied = { ...owned, info: { ...owned.info, ip_address: '127.0.0.3', wallet_address: 'SysvarC1ock11111111111111111111111111111111' } };
  const other = await nodeApi.call('RegisterNode', copied, { metadata: as('someone-else') });
  expect(other).toMatchObject({ status: S.SUCCESS, node_id: expect.stringMatching(/^[0-9a-f-]{36}$/) });
  expect(await sys().query('select wallet_address, owner from nodes where id = $1', ['node_auth_owned'])).toEqual([
    { wallet_address: 'So11111111111111111111111111111111111111112', owner: 'owner-1' },
  ]);
  expect(await sys().query('select owner from nodes where id = $1', [other.node_id])).toEqual([{ owner: 'someone-else' }]);
  // Its owner registers it again, also from a new address at once (the token proves it is theirs).
  expect(await nodeApi.call('RegisterNode', { ...owned, info: { ...owned.info, ip_address: '127.0.0.4' } }, { metadata: as('owner-1') })).toMatchObject({
    status: S.SUCCESS,
    node_id: 'node_auth_owned',
  });
  expect(await nodeApi.call('RegisterNode', owned, { metadata: as('owner-1') })).toMatchObject({ status: S.SUCCESS, node_id: 'node_auth_owned' });
  // Another user's own node at the same LAN address and shipping port (and no wallet) is a node of its own.
  const neighbour = { ...owned, info: { ...owned.info, node_id: 'node_auth_neighbour', wallet_address: '' } };
  expect(await nodeApi.call('RegisterNode', neighbour, { metadata: as('someone-else') })).toMatchObject({ status: S.SUCCESS, node_id: 'node_auth_neighbour' });

  // Reports about the node come from its owner only (here the owner's is refused further on: it holds no such job).
  const report = { node_id: 'node_auth_owned', job_id: 'no-such-job', status: { job_id: 'no-such-job', status: S.IN_PROGRESS, progress: 0.5 } };
  expect(await nodeApi.call('ReportProgress', report, { metadata: as('someone-else') })).toMatchObject({ error: { code: 403 } });
  expect(await nodeApi.call('ReportProgress', report, { metadata: as('owner-1') })).toMatchObject({ error: { code: 404 } });

  // A job is cancelled (and refunded) by the user who submitted it, no one else.
  const submitted = await jobs.call('SubmitJob', { config: unfittable({ job_id: 'job-auth-owned' }) }, { metadata: as('owner-1') });
  expect(submitted).toMatchObject({ status: S.SUCCESS, job_id: 'job-auth-owned' });
  expect(await jobs.call('CancelJob', { job_id: 'job-auth-owned', reason: 'not mine' }, { metadata: as('someone-else') })).toMatchObject({
    error: { code: 403, message: expect.stringContaining('job job-auth-owned belongs to another user') },
  });
  // The same job id submitted by someone else is not theirs either.
  expect(await jobs.call('SubmitJob', { config: unfittable({ job_id: 'job-auth-owned' }) }, { metadata: as('someone-else') })).toMatchObject({ error: { code: 403 } });
  expect(await jobs.call('CancelJob', { job_id: 'job-auth-owned', reason: 'mine' }, { metadata: as('owner-1') })).toMatchObject({ status: S.SUCCESS });
});

test('a job\'s P2P token, a reservation\'s progress and a wallet\'s allowance are its own user\'s alone', async () => {
  const as = (sub: string, claims: object = {}) => bearer(token({ sub, exp: nowS() + 3600, ...claims }));
  // GetJobStatus: the status for anyone who has the job's id, the way in to the node for the owner only.
  expect(await jobs.call('SubmitJob', { config: unfittable({ job_id: 'job-auth-token' }) }, { metadata: as('owner-1') })).toMatchObject({ status: S.SUCCESS });
  // ListJobs (the Engine asks it without user_id, then polls every job it gets): each user's own jobs.
  const listed = async (sub: string, req: object = {}) => (await jobs.call('ListJobs', { page_size: 100, ...req }, { metadata: as(sub) })).jobs.map((j: { job_id: string }) => j.job_id);
  expect(await listed('owner-1')).toContain('job-auth-token');
  expect(await listed('someone-else')).not.toContain('job-auth-token');
  expect(await listed('someone-else', { user_id: 'cyxwiz-engine' })).not.toContain('job-auth-token');
  // Set running by hand once the job has settled into the queue (its workflow's own record would undo it).
  await eventually('the job to wait in the queue', async () => (await sys().query<{ status: string }>('select status from jobs where id = $1', ['job-auth-token']))[0]?.status === 'queued');
  await sys().query("update jobs set status = 'running', assigned_node_id = 'node_auth_owned' where id = $1", ['job-auth-token']);
  const others = await jobs.call('GetJobStatus', { job_id: 'job-auth-token' }, { metadata: as('someone-else') });
  expect(others.status).toMatchObject({ job_id: 'job-auth-token', status: S.IN_PROGRESS });
  expect(others.node_assignment).toBeNull();
  const owners = await jobs.call('GetJobStatus', { job_id: 'job-auth-token' }, { metadata: as('owner-1') });
  expect(owners.node_assignment).toMatchObject({ node_id: 'node_auth_owned', auth_token: expect.any(String) });
  expect(await jobs.call('CancelJob', { job_id: 'job-auth-token', reason: 'done' }, { metadata: as('owner-1') })).toMatchObject({ status: S.SUCCESS });

  // EngineHeartbeat reports on the owner's reservation only; another user's changes nothing.
  const reservations = protocolClient('JobReservationService', sys().grpcAddress);
  const id = '7f0c2a4e-8d1b-4c3a-9e2f-5a6b7c8d9e0f';
  await sys().query(
    `insert into reservations (id, node_id, user_wallet, owner, status, duration_minutes, price_per_hour_units, escrow_units, start_at, end_at)
     values ($1, 'node_auth_owned', 'So11111111111111111111111111111111111111112', 'owner-1', 'active', 60, 1000, 1000, now(), now() + interval '1 hour')`,
    [id],
  );
  try {
    const beat = { reservation_id: id, job_id: id, training_active: true, job_progress: 0.5, current_metrics: { loss: 0.3 } };
    expect(await reservations.call('EngineHeartbeat', beat, { metadata: as('someone-else') })).toMatchObject({ error: { code: 403 } });
    expect(await sys().query('select job_progress from reservations where id = $1', [id])).toEqual([{ job_progress: 0 }]);
    expect(await reservations.call('EngineHeartbeat', beat, { metadata: as('owner-1') })).toMatchObject({ status: S.SUCCESS });
    expect(await sys().query('select job_progress from reservations where id = $1', [id])).toEqual([{ job_progress: 0.5 }]);

    // A job may not take a reservation's id (its workflow and ledger entries go by it) or the server's own ids.
    expect(await jobs.call('SubmitJob', { config: unfittable({ job_id: id }) }, { metadata: as('owner-1') })).toMatchObject({
      error: { code: 409, message: expect.stringContaining('is the id of a reservation') },
    });
    expect(await jobs.call('SubmitJob', { config: unfittable({ job_id: 'reconcile-ledger-2026' }) }, { metadata: as('owner-1') })).toMatchObject({
      error: { code: 400, message: expect.stringContaining('config.job_id') },
    });
    expect(await sys().query('select id from jobs where id = any($1)', [[id, 'reconcile-ledger-2026']])).toEqual([]);
  } finally {
    await sys().query('delete from reservations where id = $1', [id]);
  }

  // A job paid by the payer's own transfer is the payer's to submit: whoever saw the transfer on chain cannot take
  // it over (and have their node paid with it). Refused before the chain is asked.
  const payerWallet = 'So11111111111111111111111111111111111111112';
  const someSignature = '5VERv8NMvzbJMEkV8xnrLkEaWRtSz9CosKDYjCJjBRnbJLgp8uirBgmQpjKhoR4tjF3ZpRzrFmBV6UjKdiSZkQUW';
  const paid = unfittable({ job_id: 'job-auth-paid', payment_address: payerWallet, escrow_tx_hash: someSignature });
  for (const claims of [{}, { wallet_address: 'SysvarC1ock11111111111111111111111111111111' }]) {
    const refused = await jobs.call('SubmitJob', { config: paid }, { metadata: as('someone-else', claims) });
    expect(refused).toMatchObject({ error: { code: 403, message: expect.stringContaining(`config.payment_address ${payerWallet}`) } });
  }
  expect(await sys().query('select id from jobs where id = $1', ['job-auth-paid'])).toEqual([]);
  // The payer's own user gets past that check (to the chain's: this transfer never happened).
  expect(await jobs.call('SubmitJob', { config: paid }, { metadata: as('payer', { wallet_address: payerWallet }) })).toMatchObject({
    error: { code: 400, message: expect.stringContaining('config.escrow_tx_hash') },
  });

  // ReserveNode spends user_wallet's allowance: only for the user whose token names that wallet.
  const wallet = 'SysvarC1ock11111111111111111111111111111111';
  const reserve = { node_id: 'node_auth_owned', user_wallet: wallet, duration_minutes: 60, job_config: null };
  for (const [claims, message] of [
    [{}, 'carries no wallet_address claim'],
    [{ wallet_address: 'So11111111111111111111111111111111111111112' }, "is not the signed-in user's wallet"],
  ] as const) {
    expect(await reservations.call('ReserveNode', reserve, { metadata: as('someone-else', claims), deadlineMs: 30_000 })).toMatchObject({
      error: { code: 403, message: expect.stringContaining(`user_wallet ${wallet}`) },
    });
    expect((await reservations.call('ReserveNode', reserve, { metadata: as('someone-else', claims), deadlineMs: 30_000 })).error.message).toContain(message);
  }
  expect(await sys().query('select id from reservations where user_wallet = $1', [wallet])).toEqual([]);
  // The wallet's own user gets past that check (here to the next: this node is no such node).
  expect(await reservations.call('ReserveNode', { ...reserve, node_id: 'node_auth_nowhere' }, { metadata: as('wallet-user', { wallet_address: wallet }), deadlineMs: 30_000 })).toMatchObject({
    error: { code: 404 },
  });
  reservations.close();
});

test('REST escrow routes are for signed-in payers, and each may open only so many new escrow accounts (the platform pays their rent)', async () => {
  const post = (path: string, authorization?: string, body?: object) =>
    fetch(`${sys().restUrl}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(authorization && { authorization }) },
      body: body ? JSON.stringify(body) : undefined,
    }).then(async (r) => ({ status: r.status, retryAfter: r.headers.get('retry-after'), body: (await r.json()) as any }));
  const run = Date.now().toString(36);

  for (const authorization of [undefined, 'Bearer not-a-token', `Bearer ${token({ sub: 'payer' }, 'another-secret')}`]) {
    expect(await post(`/api/escrows/job-${run}-anon`, authorization)).toMatchObject({ status: 401, body: { error: { code: 401, message: expect.stringContaining('authorization') } } });
    expect((await post(`/api/escrows/job-${run}-anon/reclaim`, authorization, { escrowTxHash: 'x', paymentAddress: 'y' })).status).toBe(401);
  }

  const payer = `Bearer ${token({ sub: `payer-${run}` })}`;
  const opened = await Promise.all(Array.from({ length: 20 }, (_, i) => post(`/api/escrows/job-${run}-${i}`, payer)));
  expect(opened.map((r) => r.status)).toEqual(opened.map(() => 200));
  // The same account again costs nothing and is answered; a 21st new one within the minute is not.
  expect((await post(`/api/escrows/job-${run}-0`, payer)).body.escrowAccount).toBe(opened[0].body.escrowAccount);
  expect(await post(`/api/escrows/job-${run}-20`, payer)).toMatchObject({ status: 429, retryAfter: '60', body: { error: { code: 429 } } });
  // Another payer has a quota of its own.
  expect((await post(`/api/escrows/job-${run}-20`, `Bearer ${token({ sub: `other-${run}` })}`)).status).toBe(200);
  // A transfer goes back at its payer's own asking only.
  const wallet = 'So11111111111111111111111111111111111111112';
  const someSignature = '5VERv8NMvzbJMEkV8xnrLkEaWRtSz9CosKDYjCJjBRnbJLgp8uirBgmQpjKhoR4tjF3ZpRzrFmBV6UjKdiSZkQUW';
  expect(await post(`/api/escrows/job-${run}-0/reclaim`, payer, { escrowTxHash: someSignature, paymentAddress: wallet })).toMatchObject({
    status: 403,
    body: { error: { message: expect.stringContaining(`paymentAddress ${wallet}`) } },
  });
});

test('a user links a wallet by a signature of its key, and may then pay from it: its token need not name it', async () => {
  const rest = (method: string, path: string, authorization?: string, body?: object) =>
    fetch(`${sys().restUrl}${path}`, {
      method,
      headers: { 'content-type': 'application/json', ...(authorization && { authorization }) },
      body: body ? JSON.stringify(body) : undefined,
    }).then(async (r) => ({ status: r.status, body: (await r.json()) as any }));
  const user = `linker-${Date.now().toString(36)}`;
  const authorization = `Bearer ${token({ sub: user, exp: nowS() + 3600 })}`;
  const key = Keypair.generate();
  const wallet = key.publicKey.toBase58();
  const signWith = (k: Keypair, message: string) => {
    const privateKey = createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b657004220420', 'hex'), Buffer.from(k.secretKey.subarray(0, 32))]), format: 'der', type: 'pkcs8' });
    return getBase58Decoder().decode(sign(null, Buffer.from(message), privateKey));
  };

  expect((await rest('GET', '/api/wallet-links')).status).toBe(401);
  const asked = await rest('GET', `/api/wallet-links?wallet=${wallet}`, authorization);
  const { expiresAt } = asked.body;
  expect(asked).toMatchObject({ status: 200, body: { user, wallets: [], message: `CyxWiz Central: wallet ${wallet} belongs to user ${user} (until ${expiresAt})` } });
  expect(Date.parse(expiresAt) - Date.now()).toBeGreaterThan(5 * 60_000);
  // Another key's signature, the message for another user, or one past its expiry, proves nothing.
  expect(await rest('POST', '/api/wallet-links', authorization, { wallet, expiresAt, signature: signWith(Keypair.generate(), asked.body.message) })).toMatchObject({
    status: 400,
    body: { error: { field: 'signature' } },
  });
  expect((await rest('POST', '/api/wallet-links', authorization, { wallet, expiresAt, signature: signWith(key, `CyxWiz Central: wallet ${wallet} belongs to user someone-else (until ${expiresAt})`) })).status).toBe(400);
  const past = new Date(Math.floor(Date.now() / 1000) * 1000 - 1000).toISOString();
  expect(await rest('POST', '/api/wallet-links', authorization, { wallet, expiresAt: past, signature: signWith(key, `CyxWiz Central: wallet ${wallet} belongs to user ${user} (until ${past})`) })).toMatchObject({
    status: 400,
    body: { error: { field: 'expiresAt' } },
  });
  expect(await rest('POST', '/api/wallet-links', authorization, { wallet, expiresAt, signature: signWith(key, asked.body.message) })).toMatchObject({ status: 201, body: { user, wallet } });
  expect((await rest('GET', '/api/wallet-links', authorization)).body.wallets).toEqual([{ wallet, linkedAt: expect.any(String) }]);

  // ReserveNode from the linked wallet gets past the wallet check (here to the next: no such node).
  const reservations = protocolClient('JobReservationService', sys().grpcAddress);
  try {
    const reserve = { node_id: 'node_auth_nowhere', user_wallet: wallet, duration_minutes: 60, job_config: null };
    const as = bearer(token({ sub: user, exp: nowS() + 3600 }));
    expect(await reservations.call('ReserveNode', reserve, { metadata: as, deadlineMs: 30_000 })).toMatchObject({ error: { code: 404 } });
    expect(await rest('DELETE', `/api/wallet-links/${wallet}`, authorization)).toMatchObject({ status: 200, body: { unlinked: true } });
    expect(await reservations.call('ReserveNode', reserve, { metadata: as, deadlineMs: 30_000 })).toMatchObject({
      error: { code: 403, message: expect.stringContaining('not linked to the user') },
    });
    expect((await rest('DELETE', `/api/wallet-links/${wallet}`, authorization)).status).toBe(404);
    expect(await rest('DELETE', '/api/wallet-links/bad%00wallet', authorization)).toMatchObject({ status: 400, body: { error: { field: 'wallet' } } });
  } finally {
    reservations.close();
  }
});

test("REST's operator routes ask for the operator token; the health probe and the user routes do not", async () => {
  const get = (path: string, authorization?: string) => fetch(`${sys().restUrl}${path}`, { headers: authorization ? { authorization } : {} });
  for (const path of ['/api/stats', '/api/jobs', '/api/jobs/job-auth-token', '/api/jobs/job-auth-token/payments', '/api/nodes', '/api/nodes/node_auth_owned', '/api/reservations']) {
    const refused = await get(path);
    expect(refused.status).toBe(401);
    expect(((await refused.json()) as { error: { message: string } }).error.message).toContain('operator token');
    expect((await get(path, 'Bearer not-the-operator-token')).status).toBe(401);
    expect((await get(path, `Bearer ${token({ sub: 'owner-1', exp: nowS() + 3600 })}`)).status).toBe(401); // a user's token is not the operator's
    expect((await get(path, `Bearer ${OPERATOR_TOKEN}`)).status).toBe(200);
  }
  expect((await get('/api/health')).status).toBe(200);
  expect((await get('/api/wallet-links')).status).toBe(401); // a user route: the user's token, as before
});
