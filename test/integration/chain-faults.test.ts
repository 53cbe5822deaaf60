import { ComputeBudgetProgram, Keypair, type PublicKey } from '@solana/web3.js';
import { eq } from 'drizzle-orm';
import { randomBytes } from 'node:crypto';
import { escrowAddress } from '../../src/chain/instructions';
import type { ChainCommitment, Leg } from '../../src/chain/settlement';
import { payments } from '../../src/db/schema';
import { freshDatabase } from '../support/db';
import {
  ataOf,
  insertNode,
  landedWithMemo,
  randomFaults,
  receivingWallet,
  seededRandom,
  settlementOn,
  startRpcProxy,
  startTestChain,
  tokenBalance,
  withRetries,
  type Fault,
  type RpcProxy,
  type TestChain,
} from '../support/chain';

/**
 * RPC failure injection: the settlement reaches the ledger through a proxy that answers 429 or 503 without
 * forwarding, forwards and then drops the answer (the transaction lands, the client sees an error), or delays.
 * Every call is retried as Temporal would; no payment may happen twice or be lost.
 */
describe('chain settlement under RPC faults', () => {
  let chain: TestChain;
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let proxy: RpcProxy;
  const run = randomBytes(3).toString('hex');

  beforeAll(async () => {
    [database, chain] = await Promise.all([freshDatabase(), startTestChain()]);
    proxy = await startRpcProxy(chain.url);
  });
  afterAll(async () => {
    await proxy?.stop();
    await chain?.stop();
    await database?.drop();
  });

  const balanceOf = (account: PublicKey) => tokenBalance(chain.connection, account);

  test('20 jobs settled through a faulty RPC: every leg lands exactly once, every escrow ends empty, sums match', async () => {
    const JOBS = 20;
    const random = seededRandom(20240601);
    const wallets = await Promise.all([0, 1, 2, 3].map(() => receivingWallet(chain)));
    const jobs = Array.from({ length: JOBS }, (_, i) => ({
      jobId: `job-${run}-fault-${i}`,
      nodeId: `node-${run}-${i % wallets.length}`,
      wallet: wallets[i % wallets.length],
      amount: BigInt(1 + Math.floor(random() * 1e9)) * (i % 3 === 0 ? 1_000n : 1n) + BigInt(i),
      outcome: i % 2 === 0 ? ('release' as const) : ('refund' as const),
    }));
    for (const [i, wallet] of wallets.entries()) await insertNode(database.db, `node-${run}-${i}`, wallet.toBase58());
    const accounts = { payer: ataOf(chain.payer.publicKey, chain.mint), treasury: ataOf(chain.treasury, chain.mint) };
    const payerBefore = await balanceOf(accounts.payer);
    const treasuryBefore = await balanceOf(accounts.treasury);

    // A fifth of all requests fail; half of the sends do, so "landed but the client saw an error" happens often.
    const general = randomFaults({ seed: 7, rate: 0.2 });
    const sends = randomFaults({ seed: 11, rate: 0.5, kinds: [{ kind: 'drop-response' }, { kind: 'unavailable' }, { kind: 'rate-limit' }, { kind: 'delay', ms: 100 }] });
    proxy.setFaults((call): Fault => (call.method === 'sendTransaction' ? sends(call) : general(call)));
    const settlement = settlementOn(chain, database.db, { rpcUrl: proxy.url, confirmTimeoutMs: 1_000 });

    let retried = 0;
    const retrying = async <T>(fn: () => Promise<T>) => {
      const { value, failures } = await withRetries(fn, { attempts: 300, delayMs: 2 });
      retried += failures.length;
      return value;
    };
    // Jobs run side by side, as the worker runs many workflows.
    await Promise.all(
      jobs.map(async (job) => {
        await retrying(() => settlement.escrow({ jobId: job.jobId, amount: job.amount.toString(), payer: chain.payer.publicKey.toBase58() }));
        if (job.outcome === 'release') await retrying(() => settlement.release({ jobId: job.jobId, nodeId: job.nodeId }));
        else await retrying(() => settlement.refund({ jobId: job.jobId }));
      }),
    );
    proxy.setFaults(() => ({ kind: 'pass' }));

    // The faults did happen, including transactions that landed while their sender saw an error.
    expect(retried).toBeGreaterThan(10);
    expect(proxy.injected['rate-limit'] + proxy.injected.unavailable).toBeGreaterThan(0);
    const droppedButLanded = await landedAmong(proxy.sent.filter((s) => s.fault === 'drop-response').map((s) => s.signature));
    expect(droppedButLanded.length).toBeGreaterThan(0);

    const problems: string[] = [];
    for (const job of jobs) {
      const escrowLeft = await balanceOf(escrowAddress(chain.authority.publicKey, job.jobId));
      if (escrowLeft !== 0n) problems.push(`${job.jobId}: escrow still holds ${escrowLeft}`);
      const rows = await database.db.select().from(payments).where(eq(payments.jobId, job.jobId));
      for (const [step, legs] of [['escrow', ['escrow']], [job.outcome, job.outcome === 'release' ? ['release_node', 'release_platform'] : ['refund']]] as [string, Leg[]][]) {
        const landed = await landedWithMemo(chain.connection, proxy.sent, `cyxwiz ${job.jobId}/${step}`);
        if (landed.length !== 1) problems.push(`${job.jobId}/${step}: ${landed.length} transactions landed`);
        for (const leg of legs) {
          const row = rows.find((r) => r.leg === leg);
          if (row?.state !== 'confirmed' || row.txRef !== landed[0]) problems.push(`${job.jobId}/${leg}: ledger ${row?.state} ${row?.txRef}, chain ${landed}`);
        }
      }
      if (rows.length !== (job.outcome === 'release' ? 3 : 2)) problems.push(`${job.jobId}: ${rows.map((r) => r.leg)}`);
    }
    expect(problems).toEqual([]);

    const released = jobs.filter((j) => j.outcome === 'release');
    const nodeShare = (amount: bigint) => (amount * 9n) / 10n;
    expect(await balanceOf(accounts.payer)).toBe(payerBefore - released.reduce((s, j) => s + j.amount, 0n));
    expect((await balanceOf(accounts.treasury)) - treasuryBefore).toBe(released.reduce((s, j) => s + j.amount - nodeShare(j.amount), 0n));
    for (const wallet of wallets) {
      const owed = released.filter((j) => j.wallet.equals(wallet)).reduce((s, j) => s + nodeShare(j.amount), 0n);
      expect(await balanceOf(ataOf(wallet, chain.mint))).toBe(owed);
    }
  });

  test('the platform’s fee payer out of SOL: once the operator tops it up, the release pays, exactly once', async () => {
    // An escrow authority of its own with just enough SOL for the escrow (account rent + its two signatures' fees,
    // staying rent-exempt), so the release cannot pay its fee.
    const authority = Keypair.generate();
    const rent = await chain.connection.getMinimumBalanceForRentExemption(165);
    const keepAlive = await chain.connection.getMinimumBalanceForRentExemption(0);
    await chain.connection.requestAirdrop(authority.publicKey, rent + keepAlive + 10_000);
    const settlement = settlementOn(chain, database.db, { authority });
    const jobId = `job-${run}-fee-payer`;
    const nodeId = `node-${jobId}`;
    const wallet = await receivingWallet(chain);
    await insertNode(database.db, nodeId, wallet.toBase58());
    await settlement.escrow({ jobId, amount: '1000', payer: chain.payer.publicKey.toBase58() });
    const escrow = escrowAddress(authority.publicKey, jobId);
    expect(await balanceOf(escrow)).toBe(1000n);

    const first = await settlement.release({ jobId, nodeId }).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(first).toBeDefined();
    expect(await balanceOf(escrow)).toBe(1000n);
    expect(await balanceOf(ataOf(wallet, chain.mint))).toBe(0n);
    // The ledger says why, not only that the attempt expired, through every new attempt until the top-up.
    const legs = async () =>
      (await database.db.select().from(payments).where(eq(payments.jobId, jobId))).filter((r) => r.leg !== 'escrow');
    const refused = { lastError: expect.stringMatching(/^send refused: .*(insufficient lamports|InsufficientFundsFor)/i) };
    expect(await legs()).toEqual([expect.objectContaining({ ...refused, sendAttempts: 1 }), expect.objectContaining({ ...refused, sendAttempts: 1 })]);
    chain.ledger.advance(200);
    await settlement.release({ jobId, nodeId }).catch(() => undefined);
    expect(await legs()).toEqual([expect.objectContaining({ ...refused, sendAttempts: 2 }), expect.objectContaining({ ...refused, sendAttempts: 2 })]);

    // The operator tops up the fee payer; Temporal (or the owed-payment path) calls release again.
    await chain.connection.requestAirdrop(authority.publicKey, 1_000_000_000);
    const { value } = await withRetries(() => settlement.release({ jobId, nodeId }), { attempts: 20 });

    expect(value).toMatchObject({ owed: false, node: { amount: '900' }, platform: { amount: '100' } });
    expect(await balanceOf(ataOf(wallet, chain.mint))).toBe(900n);
    expect(await balanceOf(escrow)).toBe(0n);
  });

  test('a send the cluster drops on its way (the RPC answered it) is sent again while awaited, not left to expire; with a priority fee when configured', async () => {
    const settlement = settlementOn(chain, database.db, { rpcUrl: proxy.url, priorityFeeMicroLamports: 5_000 });
    const jobId = `job-${run}-swallowed`;
    let sends = 0;
    proxy.setFaults(({ method }) => (method === 'sendTransaction' && ++sends === 1 ? { kind: 'swallow' } : { kind: 'pass' }));
    try {
      await settlement.escrow({ jobId, amount: '1000', payer: chain.payer.publicKey.toBase58() });
    } finally {
      proxy.setFaults(() => ({ kind: 'pass' }));
    }
    const [row] = await database.db.select().from(payments).where(eq(payments.jobId, jobId));
    expect(row).toMatchObject({ state: 'confirmed', sendAttempts: 1 });
    expect(proxy.sent.filter((t) => t.signature === row.txRef).map((t) => t.fault)).toEqual(['swallow', 'pass']);
    expect(await balanceOf(escrowAddress(chain.authority.publicKey, jobId))).toBe(1000n);
    const landed = await chain.connection.getTransaction(row.txRef!, { maxSupportedTransactionVersion: 0 });
    const programs = landed!.transaction.message.compiledInstructions.map((i) => landed!.transaction.message.staticAccountKeys[i.programIdIndex].toBase58());
    expect(programs[0]).toBe(ComputeBudgetProgram.programId.toBase58());
  });

  async function landedAmong(signatures: string[]): Promise<string[]> {
    if (signatures.length === 0) return [];
    const { value } = await chain.connection.getSignatureStatuses(signatures, { searchTransactionHistory: true });
    return signatures.filter((_, i) => value[i] !== null);
  }

  test.each(['finalized', 'processed'] as ChainCommitment[])('commitment %s: escrow, release and refund settle against the ledger', async (commitment) => {
    const settlement = settlementOn(chain, database.db, { commitment });
    const wallet = await receivingWallet(chain);
    const nodeId = `node-${run}-${commitment}`;
    await insertNode(database.db, nodeId, wallet.toBase58());
    const payerAta = ataOf(chain.payer.publicKey, chain.mint);
    const payerBefore = await balanceOf(payerAta);
    const released = `job-${run}-${commitment}-released`;
    const refunded = `job-${run}-${commitment}-refunded`;

    await settlement.escrow({ jobId: released, amount: '1000', payer: chain.payer.publicKey.toBase58() });
    await settlement.escrow({ jobId: refunded, amount: '500', payer: chain.payer.publicKey.toBase58() });
    expect(await settlement.escrowBalance(released)).toBe(1000n);
    const release = await settlement.release({ jobId: released, nodeId });
    const refund = await settlement.refund({ jobId: refunded });

    expect(release).toMatchObject({ owed: false, node: { amount: '900' }, platform: { amount: '100' } });
    expect(refund).toMatchObject({ amount: '500', to: chain.payer.publicKey.toBase58() });
    expect(await balanceOf(ataOf(wallet, chain.mint))).toBe(900n);
    expect(await balanceOf(payerAta)).toBe(payerBefore - 1000n);
    expect(await balanceOf(escrowAddress(chain.authority.publicKey, released))).toBe(0n);
    expect(await balanceOf(escrowAddress(chain.authority.publicKey, refunded))).toBe(0n);
    const rows = await database.db.select().from(payments).where(eq(payments.jobId, released));
    expect(rows.map((r) => r.state)).toEqual(['confirmed', 'confirmed', 'confirmed']);
  });
});
