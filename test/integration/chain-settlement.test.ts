import { createCloseAccountInstruction, TOKEN_PROGRAM_ID } from '@solana/spl-token';
import { Keypair, PublicKey } from '@solana/web3.js';
import { and, eq } from 'drizzle-orm';
import { randomBytes } from 'node:crypto';
import { escrowAddress } from '../../src/chain/instructions';
import type { ChainSettlement } from '../../src/chain/settlement';
import { payments } from '../../src/db/schema';
import { MAX_UNITS } from '../../src/domain/money';
import { freshDatabase } from '../support/db';
import {
  ataOf,
  failureOf,
  fundedWallet,
  insertNode,
  memoOf,
  mintUnits,
  openTokenAccount,
  receivingWallet,
  seededRandom,
  sendTransaction,
  settlementOn,
  startRpcProxy,
  startTestChain,
  tokenBalance,
  withRetries,
  type RpcProxy,
  type TestChain,
} from '../support/chain';

/**
 * Escrow, release (90/10 in one transaction) and refund against a local ledger of this file's own, read back
 * through a real Connection. The settlement talks to the ledger through a recording proxy (no faults here), so a
 * test can also see which transactions a call sent.
 */
describe('chain settlement: escrow, release and refund on the local ledger', () => {
  let chain: TestChain;
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let proxy: RpcProxy;
  let settlement: ChainSettlement;
  const run = randomBytes(3).toString('hex');
  let seq = 0;
  const newJobId = (label: string) => `job-${run}-${label}-${++seq}`;

  beforeAll(async () => {
    [database, chain] = await Promise.all([freshDatabase(), startTestChain()]);
    proxy = await startRpcProxy(chain.url);
    settlement = settlementOn(chain, database.db, { rpcUrl: proxy.url });
  });
  afterAll(async () => {
    await proxy?.stop();
    await chain?.stop();
    await database?.drop();
  });

  const balanceOf = (account: PublicKey) => tokenBalance(chain.connection, account);
  const escrowOf = (jobId: string) => escrowAddress(chain.authority.publicKey, jobId);
  const payerAta = () => ataOf(chain.payer.publicKey, chain.mint);
  const treasuryAta = () => ataOf(chain.treasury, chain.mint);
  const rowsOf = (jobId: string) => database.db.select().from(payments).where(eq(payments.jobId, jobId));
  const legRow = async (jobId: string, leg: 'escrow' | 'release_node' | 'release_platform' | 'refund') => {
    const [row] = await database.db.select().from(payments).where(and(eq(payments.jobId, jobId), eq(payments.leg, leg)));
    return row;
  };

  /** The landed transaction's memo and token balance changes per account, read from the chain. */
  async function landed(signature: string) {
    const [status] = (await chain.connection.getSignatureStatuses([signature], { searchTransactionHistory: true })).value;
    expect(status).not.toBeNull();
    expect(status?.err).toBeNull();
    const tx = await chain.connection.getTransaction(signature, { commitment: 'confirmed', maxSupportedTransactionVersion: 0 });
    expect(tx?.meta).toBeTruthy();
    const keys = tx!.transaction.message.staticAccountKeys.map((k) => k.toBase58());
    const change = new Map<string, bigint>();
    for (const b of tx!.meta!.postTokenBalances ?? []) change.set(keys[b.accountIndex], BigInt(b.uiTokenAmount.amount));
    for (const b of tx!.meta!.preTokenBalances ?? []) change.set(keys[b.accountIndex], (change.get(keys[b.accountIndex]) ?? 0n) - BigInt(b.uiTokenAmount.amount));
    const wire = proxy.sent.find((s) => s.signature === signature);
    return { memo: wire ? memoOf(wire.bytes) : undefined, change };
  }

  async function escrowed(amount: bigint, jobId = newJobId('escrow')) {
    const receipt = await settlement.escrow({ jobId, amount: amount.toString(), payer: chain.payer.publicKey.toBase58() });
    return { jobId, receipt };
  }

  test('server-payer escrow moves exactly the amount from the payer into the job’s own escrow account', async () => {
    const jobId = newJobId('escrow');
    const amount = 1_234_567_891n;
    const before = await balanceOf(payerAta());
    expect(await balanceOf(escrowOf(jobId))).toBe(0n);

    const receipt = await settlement.escrow({ jobId, amount: amount.toString(), payer: chain.payer.publicKey.toBase58() });

    expect(receipt).toEqual({ leg: 'escrow', amount: amount.toString(), to: escrowOf(jobId).toBase58(), txRef: expect.any(String) });
    expect(await balanceOf(payerAta())).toBe(before - amount);
    expect(await balanceOf(escrowOf(jobId))).toBe(amount);
    // The escrow account is a token account of our mint owned by the escrow authority, at the derived address.
    const account = await chain.connection.getAccountInfo(escrowOf(jobId));
    const data = Buffer.from(account!.data);
    expect(new PublicKey(data.subarray(0, 32)).equals(chain.mint)).toBe(true);
    expect(new PublicKey(data.subarray(32, 64)).equals(chain.authority.publicKey)).toBe(true);

    const tx = await landed(receipt.txRef);
    expect(tx.memo).toContain(`${jobId}/escrow`);
    expect(tx.change.get(escrowOf(jobId).toBase58())).toBe(amount);
    expect(tx.change.get(payerAta().toBase58())).toBe(-amount);
    expect(await legRow(jobId, 'escrow')).toMatchObject({ state: 'confirmed', txRef: receipt.txRef, amount });
  });

  test('release pays floor(90 %) to the node and the rest to the treasury in one transaction; the escrow ends empty', async () => {
    const amount = 1_234_567_891n;
    const { jobId } = await escrowed(amount);
    const wallet = await receivingWallet(chain);
    await insertNode(database.db, `node-${jobId}`, wallet.toBase58());
    const treasuryBefore = await balanceOf(treasuryAta());

    const outcome = await settlement.release({ jobId, nodeId: `node-${jobId}` });

    const nodeShare = (amount * 9n) / 10n; // 1_111_111_101 (floor of …101.9)
    expect(nodeShare).toBe(1_111_111_101n);
    expect(outcome).toEqual({
      owed: false,
      node: { leg: 'release_node', amount: nodeShare.toString(), to: wallet.toBase58(), txRef: expect.any(String) },
      platform: { leg: 'release_platform', amount: (amount - nodeShare).toString(), to: chain.treasury.toBase58(), txRef: expect.any(String) },
    });
    if (outcome.owed) throw new Error('unreachable');
    expect(outcome.node.txRef).toBe(outcome.platform.txRef);
    expect(await balanceOf(ataOf(wallet, chain.mint))).toBe(nodeShare);
    expect((await balanceOf(treasuryAta())) - treasuryBefore).toBe(amount - nodeShare);
    expect(await balanceOf(escrowOf(jobId))).toBe(0n);

    // Both legs are the one transaction, which names its idempotency key.
    const tx = await landed(outcome.node.txRef);
    expect(tx.memo).toContain(`${jobId}/release`);
    expect(tx.change.get(ataOf(wallet, chain.mint).toBase58())).toBe(nodeShare);
    expect(tx.change.get(treasuryAta().toBase58())).toBe(amount - nodeShare);
    expect(tx.change.get(escrowOf(jobId).toBase58())).toBe(-amount);
    for (const leg of ['release_node', 'release_platform'] as const) {
      expect(await legRow(jobId, leg)).toMatchObject({ state: 'confirmed', txRef: outcome.node.txRef });
    }
  });

  test('refund returns the whole escrow to the funder and empties the escrow account', async () => {
    const amount = 777_777_777n;
    const before = await balanceOf(payerAta());
    const { jobId } = await escrowed(amount);
    expect(await balanceOf(payerAta())).toBe(before - amount);

    const receipt = await settlement.refund({ jobId });

    expect(receipt).toEqual({ leg: 'refund', amount: amount.toString(), to: chain.payer.publicKey.toBase58(), txRef: expect.any(String) });
    expect(await balanceOf(payerAta())).toBe(before);
    expect(await balanceOf(escrowOf(jobId))).toBe(0n);
    const tx = await landed(receipt.txRef);
    expect(tx.memo).toContain(`${jobId}/refund`);
    expect(tx.change.get(payerAta().toBase58())).toBe(amount);
    expect(await legRow(jobId, 'refund')).toMatchObject({ state: 'confirmed', txRef: receipt.txRef });
  });

  test('repeating escrow, release and refund are no-ops: the same receipts and no new transfers', async () => {
    const wallet = await receivingWallet(chain);
    const { jobId: released, receipt: escrowReceipt } = await escrowed(5_000n);
    await insertNode(database.db, `node-${released}`, wallet.toBase58());
    const first = await settlement.release({ jobId: released, nodeId: `node-${released}` });
    const { jobId: refunded } = await escrowed(6_000n);
    const firstRefund = await settlement.refund({ jobId: refunded });

    const snapshot = async () => ({
      payer: await balanceOf(payerAta()),
      treasury: await balanceOf(treasuryAta()),
      node: await balanceOf(ataOf(wallet, chain.mint)),
      escrows: [await balanceOf(escrowOf(released)), await balanceOf(escrowOf(refunded))],
    });
    const before = await snapshot();
    const sentBefore = proxy.sent.length;

    for (let i = 0; i < 3; i++) {
      expect(await settlement.escrow({ jobId: released, amount: '5000', payer: chain.payer.publicKey.toBase58() })).toEqual(escrowReceipt);
      expect(await settlement.release({ jobId: released, nodeId: `node-${released}` })).toEqual(first);
      expect(await settlement.refund({ jobId: refunded })).toEqual(firstRefund);
    }

    expect(proxy.sent.length).toBe(sentBefore);
    expect(await snapshot()).toEqual(before);
    expect(before.node).toBe(4_500n);
  });

  test('release after refund and refund after release fail for good with EscrowAlreadySettled, moving nothing', async () => {
    const wallet = await receivingWallet(chain);
    const { jobId: refunded } = await escrowed(1_000n);
    await settlement.refund({ jobId: refunded });
    const { jobId: released } = await escrowed(2_000n);
    await insertNode(database.db, `node-${run}-settled`, wallet.toBase58());
    await settlement.release({ jobId: released, nodeId: `node-${run}-settled` });
    const payerBefore = await balanceOf(payerAta());
    const nodeBefore = await balanceOf(ataOf(wallet, chain.mint));
    const sentBefore = proxy.sent.length;

    const afterRefund = await failureOf(settlement.release({ jobId: refunded, nodeId: `node-${run}-settled` }));
    expect(afterRefund).toMatchObject({ type: 'EscrowAlreadySettled', nonRetryable: true });
    const afterRelease = await failureOf(settlement.refund({ jobId: released }));
    expect(afterRelease).toMatchObject({ type: 'EscrowAlreadySettled', nonRetryable: true });

    expect(proxy.sent.length).toBe(sentBefore);
    expect(await balanceOf(payerAta())).toBe(payerBefore);
    expect(await balanceOf(ataOf(wallet, chain.mint))).toBe(nodeBefore);
    expect((await rowsOf(refunded)).map((r) => r.leg).sort()).toEqual(['escrow', 'refund']);
    expect((await rowsOf(released)).map((r) => r.leg).sort()).toEqual(['escrow', 'release_node', 'release_platform']);
  });

  test('release and refund racing for the same escrow (completion vs cancel): exactly one of them moves the money', async () => {
    for (let round = 0; round < 5; round++) {
      const amount = 3_000n;
      const wallet = await receivingWallet(chain);
      const payerBefore = await balanceOf(payerAta());
      const { jobId } = await escrowed(amount);
      await insertNode(database.db, `node-${jobId}`, wallet.toBase58());
      const other = settlementOn(chain, database.db, { rpcUrl: proxy.url });

      const [released, refunded] = await Promise.allSettled([settlement.release({ jobId, nodeId: `node-${jobId}` }), other.refund({ jobId })]);

      expect([released.status, refunded.status].sort()).toEqual(['fulfilled', 'rejected']);
      const loser = [released, refunded].find((o): o is PromiseRejectedResult => o.status === 'rejected')!;
      expect(loser.reason).toMatchObject({ type: 'EscrowAlreadySettled', nonRetryable: true });
      expect(await balanceOf(escrowOf(jobId))).toBe(0n);
      const nodePaid = await balanceOf(ataOf(wallet, chain.mint));
      const refundedToPayer = (await balanceOf(payerAta())) - (payerBefore - amount);
      expect([nodePaid, refundedToPayer]).toEqual(released.status === 'fulfilled' ? [2_700n, 0n] : [0n, amount]);
    }
  });

  test('a node without a wallet is owed: nothing moves until it registers one, then release pays it', async () => {
    const amount = 10_001n;
    const { jobId } = await escrowed(amount);
    const nodeId = `node-${jobId}`;
    await insertNode(database.db, nodeId, '');
    const treasuryBefore = await balanceOf(treasuryAta());
    const sentBefore = proxy.sent.length;

    const owed = await settlement.release({ jobId, nodeId });

    expect(owed).toEqual({ owed: true, nodeAmount: '9000', platformAmount: '1001', because: 'until it registers a wallet' });
    expect(proxy.sent.length).toBe(sentBefore);
    expect(await balanceOf(escrowOf(jobId))).toBe(amount);
    expect(await balanceOf(treasuryAta())).toBe(treasuryBefore);
    expect(await legRow(jobId, 'release_node')).toMatchObject({ state: 'owed', amount: 9_000n, txRef: null });
    expect(await legRow(jobId, 'release_platform')).toMatchObject({ state: 'owed', amount: 1_001n, txRef: null });
    // Asking again while the node still has no wallet changes nothing.
    expect(await settlement.release({ jobId, nodeId })).toEqual(owed);
    expect(proxy.sent.length).toBe(sentBefore);

    const wallet = await receivingWallet(chain);
    await insertNode(database.db, nodeId, wallet.toBase58());
    const paid = await settlement.release({ jobId, nodeId });

    expect(paid).toMatchObject({ owed: false, node: { amount: '9000', to: wallet.toBase58() }, platform: { amount: '1001' } });
    expect(await balanceOf(ataOf(wallet, chain.mint))).toBe(9_000n);
    expect((await balanceOf(treasuryAta())) - treasuryBefore).toBe(1_001n);
    expect(await balanceOf(escrowOf(jobId))).toBe(0n);
    expect(await legRow(jobId, 'release_node')).toMatchObject({ state: 'confirmed', toAccount: wallet.toBase58() });
  });

  test('a node whose wallet has no token account for the mint is owed, and the platform opens none: paid once the wallet opens it', async () => {
    const { jobId } = await escrowed(2_000n);
    const nodeId = `node-${jobId}`;
    const wallet = Keypair.generate().publicKey;
    await insertNode(database.db, nodeId, wallet.toBase58());
    const sentBefore = proxy.sent.length;

    const owed = await settlement.release({ jobId, nodeId });

    expect(owed).toEqual({ owed: true, nodeAmount: '1800', platformAmount: '200', because: expect.stringContaining(`until its wallet can receive them: ${wallet.toBase58()} has no token account for ${chain.mint.toBase58()}`) });
    expect(proxy.sent.length).toBe(sentBefore);
    expect(await chain.connection.getAccountInfo(ataOf(wallet, chain.mint))).toBeNull();
    expect(await legRow(jobId, 'release_node')).toMatchObject({ state: 'owed', toAccount: `node:${nodeId}` });

    await openTokenAccount(chain, wallet);
    expect(await settlement.release({ jobId, nodeId })).toMatchObject({ owed: false, node: { amount: '1800', to: wallet.toBase58() } });
    expect(await balanceOf(ataOf(wallet, chain.mint))).toBe(1_800n);
    expect(await balanceOf(escrowOf(jobId))).toBe(0n);
  });

  test('a node whose token account closes after it was checked, before its payment is sent: the payment waits and is then owed, never failed for good; paid once it is open again', async () => {
    const { jobId } = await escrowed(2_000n);
    const nodeId = `node-${jobId}`;
    const owner = await fundedWallet(chain, 0n);
    await insertNode(database.db, nodeId, owner.publicKey.toBase58());
    const account = ataOf(owner.publicKey, chain.mint);
    let closed = false;
    const racing = settlementOn(chain, database.db, {
      hooks: {
        afterRecord: async () => {
          if (closed) return;
          closed = true;
          await sendTransaction(chain.connection, owner, [createCloseAccountInstruction(account, owner.publicKey, owner.publicKey)]);
        },
      },
    });

    const first = await failureOf(racing.release({ jobId, nodeId }));
    expect(first.nonRetryable).toBeFalsy();
    expect(await chain.connection.getAccountInfo(account)).toBeNull();
    expect(await legRow(jobId, 'release_node')).toMatchObject({ state: 'sent' });
    // Its blockhash expires unlanded; the retries (as Temporal makes them) end with the node owed.
    chain.ledger.advance(200);
    const { value: owed } = await withRetries(() => settlement.release({ jobId, nodeId }), { attempts: 10 });
    expect(owed).toMatchObject({ owed: true, because: expect.stringContaining(`${owner.publicKey.toBase58()} has no token account`) });
    expect(await legRow(jobId, 'release_node')).toMatchObject({ state: 'owed' });
    expect(await balanceOf(escrowOf(jobId))).toBe(2_000n);

    await openTokenAccount(chain, owner.publicKey);
    expect(await settlement.release({ jobId, nodeId })).toMatchObject({ owed: false, node: { amount: '1800' } });
    expect(await balanceOf(account)).toBe(1_800n);
    expect(await balanceOf(escrowOf(jobId))).toBe(0n);
  });

  test('a node whose stored wallet is not a Solana address is owed, not retried forever; a valid wallet then pays it', async () => {
    const { jobId } = await escrowed(5_000n);
    const nodeId = `node-${jobId}`;
    await insertNode(database.db, nodeId, '0x52908400098527886E0F7030069857D2E4169EE7');
    expect(await settlement.release({ jobId, nodeId })).toEqual({ owed: true, nodeAmount: '4500', platformAmount: '500', because: expect.stringMatching(/^until it registers a wallet that can hold tokens \(0x5290.* cannot\)$/) });
    expect(await legRow(jobId, 'release_node')).toMatchObject({ state: 'owed', toAccount: `node:${nodeId}` });

    const wallet = await receivingWallet(chain);
    await insertNode(database.db, nodeId, wallet.toBase58());
    expect(await settlement.release({ jobId, nodeId })).toMatchObject({ owed: false, node: { amount: '4500', to: wallet.toBase58() } });
    expect(await balanceOf(escrowOf(jobId))).toBe(0n);
  });

  test('a node whose wallet is a token account, the mint or a program is owed: tokens paid there could never be used', async () => {
    for (const bad of [payerAta(), chain.mint, TOKEN_PROGRAM_ID]) {
      const { jobId } = await escrowed(3_000n);
      const nodeId = `node-${jobId}`;
      await insertNode(database.db, nodeId, bad.toBase58());
      expect(await settlement.release({ jobId, nodeId })).toEqual({ owed: true, nodeAmount: '2700', platformAmount: '300', because: `until it registers a wallet that can hold tokens (${bad.toBase58()} cannot)` });
      expect(await balanceOf(escrowOf(jobId))).toBe(3_000n);
    }
  });

  test('a blockhash that expired moments after it was asked (a lagging or restarted cluster) is signed again at once, and pays once', async () => {
    // A settlement that keeps reusing its blockhash, so the second escrow is sure to sign with the stale one.
    const reusing = settlementOn(chain, database.db, { rpcUrl: proxy.url, blockhashReuseMs: 3600_000 });
    const escrowWith = async (amount: bigint) => {
      const jobId = newJobId('stale-blockhash');
      return { jobId, receipt: await reusing.escrow({ jobId, amount: amount.toString(), payer: chain.payer.publicKey.toBase58() }) };
    };
    const first = await escrowWith(1_000_000n);
    chain.ledger.advance(200); // the cluster moves past that blockhash
    const sentBefore = proxy.sent.length;
    const { jobId, receipt } = await escrowWith(2_000_000n);

    const row = await legRow(jobId, 'escrow');
    expect(row).toMatchObject({ state: 'confirmed', sendAttempts: 2, txRef: receipt.txRef, lastError: null });
    const tried = proxy.sent.slice(sentBefore).filter((s) => memoOf(s.bytes)?.includes(jobId));
    expect(tried).toHaveLength(2); // refused in preflight, then signed again with a fresh blockhash
    expect(tried[1].signature).toBe(receipt.txRef);
    expect(await balanceOf(escrowOf(jobId))).toBe(2_000_000n);
    expect(await balanceOf(escrowOf(first.jobId))).toBe(1_000_000n);
  });

  test('a payer without enough tokens fails for good with InsufficientFunds and nothing moves', async () => {
    const poor = await fundedWallet(chain, 5n);
    const poorSettlement = settlementOn(chain, database.db, { rpcUrl: proxy.url, payer: poor });
    const jobId = newJobId('poor');

    const failure = await failureOf(poorSettlement.escrow({ jobId, amount: '10', payer: poor.publicKey.toBase58() }));

    expect(failure).toMatchObject({ type: 'InsufficientFunds', nonRetryable: true });
    expect(await balanceOf(ataOf(poor.publicKey, chain.mint))).toBe(5n);
    expect(await balanceOf(escrowOf(jobId))).toBe(0n);
    expect(await legRow(jobId, 'escrow')).toMatchObject({ state: 'failed' });
    // No transaction touching the escrow landed.
    const sentForJob = proxy.sent.filter((s) => s.memo?.includes(`${jobId}/escrow`));
    const { value } = await chain.connection.getSignatureStatuses(sentForJob.map((s) => s.signature), { searchTransactionHistory: true });
    expect(value.every((v) => v === null)).toBe(true);
  });

  test('asking again after InsufficientFunds is still a permanent failure (not "pending" forever)', async () => {
    const poor = await fundedWallet(chain, 5n);
    const poorSettlement = settlementOn(chain, database.db, { rpcUrl: proxy.url, payer: poor });
    const jobId = newJobId('poor-again');
    await failureOf(poorSettlement.escrow({ jobId, amount: '10', payer: poor.publicKey.toBase58() }));

    const again = await failureOf(poorSettlement.escrow({ jobId, amount: '10', payer: poor.publicKey.toBase58() }));

    expect({ type: again.type, nonRetryable: again.nonRetryable }).toEqual({ type: 'InsufficientFunds', nonRetryable: true });
    expect(await balanceOf(ataOf(poor.publicKey, chain.mint))).toBe(5n);
  });

  test('property: over many amounts the node and platform legs sum exactly to the escrow on chain', async () => {
    const random = seededRandom(0xc1c1);
    const big = (bits: number) => {
      let n = 0n;
      for (let i = 0; i < bits; i += 16) n = (n << 16n) | BigInt(Math.floor(random() * 65536));
      return (n & ((1n << BigInt(bits)) - 1n)) | 1n; // odd, at most `bits` bits
    };
    // Up to the largest amount the ledger's signed 64-bit columns hold (MAX_UNITS); SPL amounts are u64.
    const amounts = [1n, 2n, 9n, 10n, 11n, 19n, 99n, 101n, 999n, 1_000_000_007n, 2n ** 53n + 1n, 2n ** 61n - 1n, 2n ** 62n + 3n, MAX_UNITS];
    for (let i = 0; i < 12; i++) amounts.push(BigInt(1 + Math.floor(random() * 1000)));
    for (let i = 0; i < 8; i++) amounts.push(big(20 + Math.floor(random() * 30)));
    const total = amounts.reduce((a, b) => a + b, 0n);
    expect(total).toBeLessThan(2n ** 64n - 2n ** 60n); // the mint's supply is a u64 too
    // The payer must afford u64-scale amounts: the escrow authority is the test mint's authority.
    await mintUnits(chain, chain.payer.publicKey, total);

    const wallet = await receivingWallet(chain);
    const nodeId = `node-${run}-property`;
    await insertNode(database.db, nodeId, wallet.toBase58());
    const failures: string[] = [];
    for (const amount of amounts) {
      const { jobId } = await escrowed(amount);
      const escrowOnChain = await balanceOf(escrowOf(jobId));
      const nodeBefore = await balanceOf(ataOf(wallet, chain.mint));
      const treasuryBefore = await balanceOf(treasuryAta());
      const outcome = await settlement.release({ jobId, nodeId });
      if (outcome.owed) throw new Error('node has a wallet');
      const nodePaid = (await balanceOf(ataOf(wallet, chain.mint))) - nodeBefore;
      const platformPaid = (await balanceOf(treasuryAta())) - treasuryBefore;
      const facts = {
        escrowOnChain,
        nodePaid,
        platformPaid,
        sum: nodePaid + platformPaid,
        floor90: (amount * 9n) / 10n,
        legs: [BigInt(outcome.node.amount), BigInt(outcome.platform.amount)],
        after: await balanceOf(escrowOf(jobId)),
      };
      const ok =
        facts.escrowOnChain === amount &&
        facts.sum === amount &&
        facts.nodePaid === facts.floor90 &&
        facts.legs[0] === nodePaid &&
        facts.legs[1] === platformPaid &&
        facts.after === 0n &&
        outcome.node.txRef === outcome.platform.txRef;
      if (!ok) failures.push(`${amount}: ${JSON.stringify(facts, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))}`);
    }
    expect(failures).toEqual([]);
  });
});
