import { ConfigError, loadConfig, SHIPPING_NODE_P2P_SECRET } from '../../src/config';

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

  it('refuses the processed commitment on a real cluster (a dropped fork could count a leg paid)', () => {
    expect(loadConfig({ SOLANA_COMMITMENT: 'processed' }).chain.commitment).toBe('processed');
    expect(() => loadConfig({ SOLANA_RPC_URL: 'https://api.devnet.solana.com', SOLANA_COMMITMENT: 'processed' })).toThrow(/SOLANA_COMMITMENT/);
    expect(loadConfig({ SOLANA_RPC_URL: 'https://api.devnet.solana.com', SOLANA_COMMITMENT: 'finalized' }).chain.commitment).toBe('finalized');
  });
});
