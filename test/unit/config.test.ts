import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ConfigError, loadConfig, SHIPPING_NODE_P2P_SECRET } from '../../src/config';
import { temporalConnectionOptions } from '../../src/main/temporal-connection';

describe('loadConfig', () => {
  it('has embedded defaults', () => {
    const c = loadConfig({});
    expect(c.database.url).toBeUndefined();
    expect(c.temporal.address).toBeUndefined();
    expect(c.grpc).toEqual({ host: '0.0.0.0', port: 50051 });
    expect(c.rest.port).toBe(8080);
    expect(c.jobs).toMatchObject({ heartbeatTimeoutMs: 30_000, maxAttempts: 3 });
    expect(c.p2p.secret).toBe(SHIPPING_NODE_P2P_SECRET);
    expect(c.payments).toEqual({ platformFeeBps: 1000, tokenDecimals: 9 });
    expect(Object.isFrozen(c.jobs)).toBe(true);
    // As the shipping clients need: expiry not held against tokens; a reservation's wallet bound to the token.
    expect(c).toMatchObject({ authJwtSecret: '', authCheckExpiry: false, authBindWallet: true });
    expect(loadConfig({ AUTH_CHECK_EXPIRY: 'true', AUTH_BIND_WALLET: 'false' })).toMatchObject({ authCheckExpiry: true, authBindWallet: false });
    expect(() => loadConfig({ AUTH_BIND_WALLET: 'yes' })).toThrow(ConfigError);
    // New node records per caller and minute: 60, 0 for no limit, never negative.
    expect(c.nodes.newNodesPerMinute).toBe(60);
    expect(loadConfig({ NEW_NODES_PER_MINUTE: '0' }).nodes.newNodesPerMinute).toBe(0);
    expect(loadConfig({}).jobs.submitsPerMinute).toBe(600);
    expect(loadConfig({ SUBMIT_JOBS_PER_MINUTE: '0' }).jobs.submitsPerMinute).toBe(0);
    expect(() => loadConfig({ SUBMIT_JOBS_PER_MINUTE: '1e3' })).toThrow(ConfigError);
    expect(() => loadConfig({ NEW_NODES_PER_MINUTE: '-1' })).toThrow(ConfigError);
  });

  it('reads and validates the environment, naming every bad variable', () => {
    expect(loadConfig({ JOB_HEARTBEAT_TIMEOUT_S: '5', DATABASE_URL: 'postgres://x/y' })).toMatchObject({
      jobs: { heartbeatTimeoutMs: 5000 },
      database: { url: 'postgres://x/y' },
    });
    expect(() => loadConfig({ GRPC_PORT: 'abc', PLATFORM_FEE_BPS: '20000' })).toThrow(ConfigError);
    try {
      loadConfig({ GRPC_PORT: 'abc', PLATFORM_FEE_BPS: '20000' });
    } catch (err) {
      expect((err as ConfigError).issues.join('\n')).toMatch(/GRPC_PORT/);
      expect((err as ConfigError).issues.join('\n')).toMatch(/PLATFORM_FEE_BPS/);
    }
  });

  it('reads a variable set to nothing as unset (its default), and numbers only as decimal digits within bounds', () => {
    const refused = (env: Record<string, string>) => {
      try {
        loadConfig(env);
      } catch (err) {
        return (err as ConfigError).issues;
      }
      throw new Error(`accepted ${JSON.stringify(env)}`);
    };
    const blank = loadConfig({ GRPC_PORT: '', REST_PORT: ' ', NEW_NODES_PER_MINUTE: '', PLATFORM_FEE_BPS: '', TOKEN_DECIMALS: '', TEMPORAL_TLS: '' });
    expect(blank.grpc.port).toBe(50051);
    expect(blank.rest.port).toBe(8080);
    expect(blank.nodes.newNodesPerMinute).toBe(60);
    expect(blank.payments).toEqual({ platformFeeBps: 1000, tokenDecimals: 9 });
    expect(blank.temporal.tls).toBe(false);
    // Except names and secrets whose default an operator who set them did not mean.
    for (const name of ['TEMPORAL_NAMESPACE', 'TEMPORAL_TASK_QUEUE', 'P2P_JWT_SECRET']) {
      expect(refused({ [name]: '' })).toEqual([`${name}: must not be blank (unset it for the default)`]);
      expect(refused({ [name]: '  ' })).toEqual([`${name}: must not be blank (unset it for the default)`]);
    }
    expect(loadConfig({ AUTH_JWT_SECRET: '' }).authJwtSecret).toBe('');
    expect(refused({ AUTH_JWT_SECRET: '   ' })).toEqual(['AUTH_JWT_SECRET: must not be only blanks (empty turns authentication off)']);
    expect(loadConfig({ GRPC_PORT: ' 50052 ' }).grpc.port).toBe(50052);
    for (const bad of ['0x1F90', '1e3', '-1', '2.5', '80 80', '99999999999999999999']) {
      expect(refused({ REST_PORT: bad })).toEqual(['REST_PORT: must be a whole number from 0 to 65535']);
    }
    // A delay longer than Node's timers take would fire at once.
    expect(loadConfig({ HEARTBEAT_FLUSH_MS: '2147483647' }).nodes.heartbeatFlushMs).toBe(2_147_483_647);
    expect(refused({ HEARTBEAT_FLUSH_MS: '2147483648' })).toEqual(['HEARTBEAT_FLUSH_MS: must be a whole number from 1 to 2147483647']);
    expect(refused({ RECONCILE_INTERVAL_S: '2147484' })).toEqual(['RECONCILE_INTERVAL_S: must be a whole number from 1 to 2147483']);
    expect(refused({ JOB_HEARTBEAT_TIMEOUT_S: '0' })).toEqual(['JOB_HEARTBEAT_TIMEOUT_S: must be a whole number from 1 to 2147483']);
    // The operator token of REST: unset (open operator routes) or a secret.
    expect(loadConfig({}).rest.operatorToken).toBeUndefined();
    expect(loadConfig({ REST_OPERATOR_TOKEN: 'a-secret-of-16-chars' }).rest.operatorToken).toBe('a-secret-of-16-chars');
    expect(refused({ REST_OPERATOR_TOKEN: 'short' })).toEqual(['REST_OPERATOR_TOKEN: must be at least 16 characters (a secret)']);
  });

  it('connects to Temporal with TLS when given a certificate, a CA or an API key, and wants a certificate and its key together', () => {
    expect(loadConfig({}).temporal.tls).toBe(false);
    expect(loadConfig({ TEMPORAL_API_KEY: 'key' }).temporal).toMatchObject({ tls: true, apiKey: 'key' });
    expect(loadConfig({ TEMPORAL_TLS_CERT: '/c.pem', TEMPORAL_TLS_KEY: '/k.pem' }).temporal).toMatchObject({ tls: true, tlsCert: '/c.pem', tlsKey: '/k.pem' });
    expect(loadConfig({ TEMPORAL_TLS: 'true' }).temporal.tls).toBe(true);
    expect(loadConfig({ TEMPORAL_TLS: 'false' }).temporal.tls).toBe(false);
    // TLS turned off with what needs it: refused, not connected in the clear.
    for (const needsTls of [{ TEMPORAL_TLS_CA: '/ca.pem' }, { TEMPORAL_API_KEY: 'key' }, { TEMPORAL_TLS_CERT: '/c.pem', TEMPORAL_TLS_KEY: '/k.pem' }]) {
      expect(() => loadConfig({ TEMPORAL_TLS: 'false', ...needsTls })).toThrow(/TEMPORAL_TLS: false/);
    }
    expect(() => loadConfig({ TEMPORAL_TLS_CERT: '/c.pem' })).toThrow(/TEMPORAL_TLS_KEY/);

    expect(temporalConnectionOptions(loadConfig({}), 'h:7233')).toEqual({ address: 'h:7233' });
    const dir = mkdtempSync(path.join(tmpdir(), 'tls-'));
    for (const f of ['c.pem', 'k.pem']) writeFileSync(path.join(dir, f), `PEM ${f}`);
    const mtls = loadConfig({ TEMPORAL_TLS_CERT: path.join(dir, 'c.pem'), TEMPORAL_TLS_KEY: path.join(dir, 'k.pem'), TEMPORAL_API_KEY: 'key' });
    expect(temporalConnectionOptions(mtls, 'h:7233')).toEqual({
      address: 'h:7233',
      tls: { clientCertPair: { crt: Buffer.from('PEM c.pem'), key: Buffer.from('PEM k.pem') } },
      apiKey: 'key',
    });
    expect(() => temporalConnectionOptions(loadConfig({ TEMPORAL_TLS_CA: path.join(dir, 'missing.pem') }), 'h:7233')).toThrow(/TEMPORAL_TLS_CA/);
  });

  it('lets the server payer pay on mainnet only when the operator says so (it pays for anyone\'s unfunded job)', () => {
    expect(() => loadConfig({ SOLANA_CLUSTER: 'mainnet-beta', PAYER_SECRET: '[1]' })).toThrow(/SERVER_PAYER_ON_MAINNET/);
    expect(loadConfig({ SOLANA_CLUSTER: 'mainnet-beta', PAYER_SECRET: '[1]', SERVER_PAYER_ON_MAINNET: 'true' }).chain.payer.inline).toBe('[1]');
    expect(loadConfig({ SOLANA_CLUSTER: 'devnet', PAYER_SECRET: '[1]' }).chain.payer.inline).toBe('[1]');
  });

  it('refuses the processed commitment on a real cluster (a dropped fork could count a leg paid)', () => {
    expect(loadConfig({ SOLANA_COMMITMENT: 'processed' }).chain.commitment).toBe('processed');
    expect(() => loadConfig({ SOLANA_RPC_URL: 'https://api.devnet.solana.com', SOLANA_COMMITMENT: 'processed' })).toThrow(/SOLANA_COMMITMENT/);
    expect(loadConfig({ SOLANA_RPC_URL: 'https://api.devnet.solana.com', SOLANA_COMMITMENT: 'finalized' }).chain.commitment).toBe('finalized');
  });
});
