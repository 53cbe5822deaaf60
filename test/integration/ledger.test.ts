import { MockActivityEnvironment } from '@temporalio/testing';
import { ApplicationFailure } from '@temporalio/common';
import { eq } from 'drizzle-orm';
import { createPaymentActivities, PaymentErrors, type ReleaseReceipt } from '../../src/activities/payments';
import { payments, nodes } from '../../src/db/schema';
import { freshDatabase } from '../support/db';
import { silentLogger } from '../support/silent-logger';

describe('payment ledger activities (real Postgres)', () => {
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let acts: ReturnType<typeof createPaymentActivities>;
  const env = new MockActivityEnvironment(undefined, { logger: silentLogger });

  beforeAll(async () => {
    database = await freshDatabase();
    acts = createPaymentActivities({ db: database.db, platformFeeBps: 1000, platformAccount: 'platform', defaultPayerAccount: 'payer' });
    await database.db.insert(nodes).values({ id: 'node-w', walletAddress: 'NodeWallet111' });
  });
  afterAll(() => database.drop());

  const legs = (jobId: string) => database.db.select().from(payments).where(eq(payments.jobId, jobId));

  it('escrows once however often the activity runs', async () => {
    const a = await env.run(acts.escrow, { jobId: 'j1', amount: '1500000000', payer: 'Alice' });
    const b = await env.run(acts.escrow, { jobId: 'j1', amount: '1500000000', payer: 'Alice' });
    expect(b).toEqual(a);
    expect(a).toMatchObject({ leg: 'escrow', amount: '1500000000' });
    expect(await legs('j1')).toHaveLength(1);
  });

  it('releases 90/10 to the node wallet and the platform, exactly once, summing to the escrow', async () => {
    const first: ReleaseReceipt = await env.run(acts.release, { jobId: 'j1', nodeId: 'node-w' });
    const again = await env.run(acts.release, { jobId: 'j1', nodeId: 'node-w' });
    expect(again).toEqual(first);
    expect(first.node).toMatchObject({ amount: '1350000000', to: 'NodeWallet111' });
    expect(first.platform).toMatchObject({ amount: '150000000', to: 'platform' });
    const rows = await legs('j1');
    expect(rows.map((r) => r.leg).sort()).toEqual(['escrow', 'release_node', 'release_platform']);
    const paidOut = rows.filter((r) => r.leg !== 'escrow').reduce((sum, r) => sum + r.amount, 0n);
    expect(paidOut).toBe(rows.find((r) => r.leg === 'escrow')!.amount);
  });

  it('refuses to refund a released escrow, permanently', async () => {
    const err = await env.run(acts.refund, { jobId: 'j1' }).catch((e) => e);
    expect(err).toBeInstanceOf(ApplicationFailure);
    expect(err).toMatchObject({ type: PaymentErrors.alreadySettled, nonRetryable: true });
  });

  it('refunds the whole escrow to its payer once, and then refuses a release', async () => {
    await env.run(acts.escrow, { jobId: 'j2', amount: '7', payer: '' });
    const r1 = await env.run(acts.refund, { jobId: 'j2' });
    const r2 = await env.run(acts.refund, { jobId: 'j2' });
    expect(r2).toEqual(r1);
    expect(r1).toMatchObject({ leg: 'refund', amount: '7', to: 'payer' });
    await expect(env.run(acts.release, { jobId: 'j2', nodeId: 'node-w' })).rejects.toMatchObject({ type: PaymentErrors.alreadySettled });
    expect(await legs('j2')).toHaveLength(2);
  });

  it('pays a node without a wallet to its ledger account', async () => {
    await env.run(acts.escrow, { jobId: 'j3', amount: '100', payer: 'Bob' });
    const r: ReleaseReceipt = await env.run(acts.release, { jobId: 'j3', nodeId: 'no-wallet-node' });
    expect(r.node).toMatchObject({ amount: '90', to: 'node:no-wallet-node' });
  });

  it('settles a job exactly one way when release and refund race', async () => {
    for (let i = 0; i < 10; i++) {
      const jobId = `race-${i}`;
      await env.run(acts.escrow, { jobId, amount: '1000', payer: 'Carol' });
      const results = await Promise.allSettled([
        env.run(acts.release, { jobId, nodeId: 'node-w' }),
        env.run(acts.refund, { jobId }),
        env.run(acts.release, { jobId, nodeId: 'node-w' }),
      ]);
      const rows = await legs(jobId);
      const released = rows.some((r) => r.leg === 'release_node');
      const refunded = rows.some((r) => r.leg === 'refund');
      expect(released !== refunded).toBe(true);
      expect(rows).toHaveLength(released ? 3 : 2);
      expect(results.filter((r) => r.status === 'fulfilled').length).toBeGreaterThan(0);
    }
  });

  it('refuses to settle a job that has no escrow', async () => {
    await expect(env.run(acts.release, { jobId: 'nope', nodeId: 'node-w' })).rejects.toMatchObject({ type: PaymentErrors.escrowMissing });
    await expect(env.run(acts.refund, { jobId: 'nope' })).rejects.toMatchObject({ type: PaymentErrors.escrowMissing });
  });
});
