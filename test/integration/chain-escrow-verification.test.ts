import { createAssociatedTokenAccountIdempotentInstruction, createCloseAccountInstruction, createTransferCheckedInstruction } from '@solana/spl-token';
import { Keypair, PublicKey, Transaction } from '@solana/web3.js';
import { getBase58Decoder } from '@solana/kit';
import { eq } from 'drizzle-orm';
import { randomBytes } from 'node:crypto';
import { escrowAddress } from '../../src/chain/instructions';
import { loadKeypair } from '../../src/chain/keys';
import type { ChainSettlement } from '../../src/chain/settlement';
import { payments } from '../../src/db/schema';
import { freshDatabase } from '../support/db';
import {
  ataOf,
  createOtherMint,
  failureOf,
  fundedWallet,
  openTokenAccount,
  sendTransaction,
  settlementOn,
  startTestChain,
  tokenBalance,
  type TestChain,
} from '../support/chain';

/**
 * A payer who pays into the job's escrow account with its own transaction (JobConfig.escrow_tx_hash): the
 * good payment is accepted, and every kind of bad one is refused for good (EscrowRejected) with a reason.
 */
describe('payer-paid escrow: verification of escrow_tx_hash on chain', () => {
  let chain: TestChain;
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let settlement: ChainSettlement;
  let engine: Keypair;
  const run = randomBytes(3).toString('hex');
  let seq = 0;
  const newJobId = (label: string) => `job-${run}-${label}-${++seq}`;

  beforeAll(async () => {
    [database, chain] = await Promise.all([freshDatabase(), startTestChain()]);
    // The server's payer is not involved: these escrows are paid by the payer's own transactions.
    settlement = settlementOn(chain, database.db, { payer: undefined });
    engine = loadKeypair('demo engine wallet', { file: chain.setup.keyFiles.demo.engine });
  });
  afterAll(async () => {
    await chain?.stop();
    await database?.drop();
  });

  const escrowOf = (jobId: string) => escrowAddress(chain.authority.publicKey, jobId);
  const balanceOf = (account: PublicKey) => tokenBalance(chain.connection, account);
  const rowsOf = (jobId: string) => database.db.select().from(payments).where(eq(payments.jobId, jobId));

  /** The payer's own transfer of `amount` into `to` (a token account), signed and sent by `from`. */
  function pay(from: Keypair, to: PublicKey, amount: bigint, mint = chain.mint): Promise<string> {
    return sendTransaction(chain.connection, from, [createTransferCheckedInstruction(ataOf(from.publicKey, mint), mint, to, from.publicKey, amount, chain.decimals)]);
  }

  /** The payer's transfer of `amount` into `to`, signed by `from` and not sent: its bytes and signature. */
  async function signedTransfer(from: Keypair, to: PublicKey, amount: bigint): Promise<{ bytes: Buffer; signature: string }> {
    const { blockhash, lastValidBlockHeight } = await chain.connection.getLatestBlockhash();
    const tx = new Transaction({ feePayer: from.publicKey, blockhash, lastValidBlockHeight }).add(
      createTransferCheckedInstruction(ataOf(from.publicKey, chain.mint), chain.mint, to, from.publicKey, amount, chain.decimals),
    );
    tx.sign(from);
    return { bytes: tx.serialize(), signature: getBase58Decoder().decode(tx.signature!) };
  }

  /** Expects escrow() to refuse `signature` for `jobId` for good, naming `reason`, and to record and move nothing. */
  async function expectRejected(jobId: string, amount: bigint, payer: PublicKey, signature: string, reason: RegExp) {
    const escrowBefore = await balanceOf(escrowOf(jobId));
    const failure = await failureOf(settlement.escrow({ jobId, amount: amount.toString(), payer: payer.toBase58(), escrowTxHash: signature }));
    expect({ type: failure.type, nonRetryable: failure.nonRetryable }).toEqual({ type: 'EscrowRejected', nonRetryable: true });
    expect(failure.message).toMatch(reason);
    expect(failure.message).toContain(signature);
    expect(await rowsOf(jobId)).toEqual([]);
    expect(await balanceOf(escrowOf(jobId))).toBe(escrowBefore);
    return failure;
  }

  test('the good payment: openEscrowAccount, the payer pays into it, escrow accepts it; refund goes back to the payer', async () => {
    const jobId = newJobId('good');
    const address = await settlement.openEscrowAccount(jobId);
    expect(address.equals(escrowOf(jobId))).toBe(true);
    expect(await balanceOf(address)).toBe(0n);
    const account = await chain.connection.getAccountInfo(address);
    expect(Buffer.from(account!.data).subarray(0, 32).equals(chain.mint.toBuffer())).toBe(true);
    // Opening again is a no-op.
    expect((await settlement.openEscrowAccount(jobId)).equals(address)).toBe(true);

    const payerBefore = await balanceOf(ataOf(engine.publicKey, chain.mint));
    const signature = await pay(engine, address, 2_500n);

    expect(await settlement.verifyEscrowTransaction({ jobId, amount: 2_500n, payer: engine.publicKey.toBase58(), signature })).toBe(2_500n);
    const receipt = await settlement.escrow({ jobId, amount: '2500', payer: engine.publicKey.toBase58(), escrowTxHash: signature });
    expect(receipt).toEqual({ leg: 'escrow', amount: '2500', to: address.toBase58(), txRef: signature });
    expect(await rowsOf(jobId)).toEqual([expect.objectContaining({ leg: 'escrow', state: 'confirmed', txRef: signature, fromAccount: engine.publicKey.toBase58(), amount: 2_500n })]);
    // Accepting again is idempotent.
    expect(await settlement.escrow({ jobId, amount: '2500', payer: engine.publicKey.toBase58(), escrowTxHash: signature })).toEqual(receipt);

    const refund = await settlement.refund({ jobId });
    expect(refund).toMatchObject({ amount: '2500', to: engine.publicKey.toBase58() });
    expect(await balanceOf(ataOf(engine.publicKey, chain.mint))).toBe(payerBefore);
    expect(await balanceOf(address)).toBe(0n);
  });

  test('a refund to a payer who closed their token account since waits, with the reason on the leg: the platform opens none, and it is paid once the payer does', async () => {
    const payer = await fundedWallet(chain, 1_200n);
    const jobId = newJobId('closed-payer');
    const address = await settlement.openEscrowAccount(jobId);
    const signature = await pay(payer, address, 1_200n);
    await settlement.escrow({ jobId, amount: '1200', payer: payer.publicKey.toBase58(), escrowTxHash: signature });
    const payerAccount = ataOf(payer.publicKey, chain.mint);
    await sendTransaction(chain.connection, payer, [createCloseAccountInstruction(payerAccount, payer.publicKey, payer.publicKey)]);
    expect(await chain.connection.getAccountInfo(payerAccount)).toBeNull();

    const failure = await failureOf(settlement.refund({ jobId }));
    expect(failure.nonRetryable).toBeFalsy();
    expect(failure.message).toBe(`the refund waits: ${payer.publicKey.toBase58()} has no token account for ${chain.mint.toBase58()} (${payerAccount.toBase58()}); the platform does not open one for it`);
    const refundLeg = (await rowsOf(jobId)).find((r) => r.leg === 'refund');
    expect(refundLeg).toMatchObject({ state: 'pending', txRef: null, lastError: failure.message });
    expect(await chain.connection.getAccountInfo(payerAccount)).toBeNull();
    expect(await balanceOf(address)).toBe(1_200n);

    await openTokenAccount(chain, payer.publicKey);
    expect(await settlement.refund({ jobId })).toMatchObject({ leg: 'refund', amount: '1200', to: payer.publicKey.toBase58() });
    expect(await balanceOf(payerAccount)).toBe(1_200n);
    expect(await balanceOf(address)).toBe(0n);
  });

  test('a payment of more than the amount is accepted, and the whole of it is what refund returns', async () => {
    const jobId = newJobId('overpaid');
    const address = await settlement.openEscrowAccount(jobId);
    const payerBefore = await balanceOf(ataOf(engine.publicKey, chain.mint));
    const signature = await pay(engine, address, 1_500n);

    const receipt = await settlement.escrow({ jobId, amount: '1000', payer: engine.publicKey.toBase58(), escrowTxHash: signature });
    expect(receipt.amount).toBe('1500');
    await settlement.refund({ jobId });
    expect(await balanceOf(ataOf(engine.publicKey, chain.mint))).toBe(payerBefore);
    expect(await balanceOf(address)).toBe(0n);
  });

  test('wrong mint: another token paid into the job’s escrow address is refused', async () => {
    const jobId = newJobId('wrong-mint');
    const otherMint = await createOtherMint(chain);
    // The escrow account at this job's address holds the other token (opened by a server configured for it).
    await settlementOn(chain, database.db, { mint: otherMint }).openEscrowAccount(jobId);
    const payer = await fundedWallet(chain, 5_000n, { mint: otherMint });
    const signature = await pay(payer, escrowOf(jobId), 5_000n, otherMint);

    await expectRejected(jobId, 5_000n, payer.publicKey, signature, new RegExp(`mint ${otherMint.toBase58()}`));
  });

  test('wrong amount: less than the job needs is refused, naming both amounts', async () => {
    const jobId = newJobId('short');
    const address = await settlement.openEscrowAccount(jobId);
    const signature = await pay(engine, address, 999n);

    await expectRejected(jobId, 1_000n, engine.publicKey, signature, /moved 999 units.*needs 1000/);
  });

  test('wrong destination: a payment into another job’s escrow or into a wallet’s token account is refused', async () => {
    const jobId = newJobId('dest');
    const otherJob = newJobId('dest-other');
    await settlement.openEscrowAccount(jobId);
    const intoOtherEscrow = await pay(engine, await settlement.openEscrowAccount(otherJob), 1_000n);
    const nodeWallet = loadKeypair('demo node wallet', { file: chain.setup.keyFiles.demo.node });
    const intoWallet = await pay(engine, ataOf(nodeWallet.publicKey, chain.mint), 1_000n);

    await expectRejected(jobId, 1_000n, engine.publicKey, intoOtherEscrow, new RegExp(`does not pay this job's escrow account ${escrowOf(jobId).toBase58()}`));
    await expectRejected(jobId, 1_000n, engine.publicKey, intoWallet, /does not pay this job's escrow account/);
  });

  test('reused: a transaction that funded one job cannot fund another', async () => {
    const first = newJobId('reuse-a');
    const second = newJobId('reuse-b');
    const signature = await pay(engine, await settlement.openEscrowAccount(first), 1_000n);
    await settlement.escrow({ jobId: first, amount: '1000', payer: engine.publicKey.toBase58(), escrowTxHash: signature });
    await settlement.openEscrowAccount(second);

    await expectRejected(second, 1_000n, engine.publicKey, signature, /escrow/);
  });

  test('one transaction paying two escrows funds each of the two jobs once, and neither twice', async () => {
    const first = newJobId('both-a');
    const second = newJobId('both-b');
    const [a, b] = [await settlement.openEscrowAccount(first), await settlement.openEscrowAccount(second)];
    const mint = chain.mint;
    const from = ataOf(engine.publicKey, mint);
    const signature = await sendTransaction(chain.connection, engine, [
      createTransferCheckedInstruction(from, mint, a, engine.publicKey, 1_000n, chain.decimals),
      createTransferCheckedInstruction(from, mint, b, engine.publicKey, 1_000n, chain.decimals),
    ]);
    await settlement.escrow({ jobId: first, amount: '1000', payer: engine.publicKey.toBase58(), escrowTxHash: signature });
    // Before, the second account's 1,000 units stayed there with no job and no reclaim able to take them.
    const second_ = await settlement.escrow({ jobId: second, amount: '1000', payer: engine.publicKey.toBase58(), escrowTxHash: signature });
    expect(second_.amount).toBe('1000');
    const third = newJobId('both-c');
    await settlement.openEscrowAccount(third);
    await expectRejected(third, 1_000n, engine.publicKey, signature, /does not pay this job's escrow account/);
    const rows = await database.db.select().from(payments).where(eq(payments.txRef, signature));
    expect(rows.map((r) => r.toAccount).sort()).toEqual([a.toBase58(), b.toBase58()].sort());
  });

  test('one transaction paying two escrows, claimed by both jobs at the same moment: each holds its own', async () => {
    const first = newJobId('race-a');
    const second = newJobId('race-b');
    const [a, b] = [await settlement.openEscrowAccount(first), await settlement.openEscrowAccount(second)];
    const from = ataOf(engine.publicKey, chain.mint);
    const signature = await sendTransaction(chain.connection, engine, [
      createTransferCheckedInstruction(from, chain.mint, a, engine.publicKey, 1_000n, chain.decimals),
      createTransferCheckedInstruction(from, chain.mint, b, engine.publicKey, 1_000n, chain.decimals),
    ]);
    const claim = (jobId: string) => settlement.escrow({ jobId, amount: '1000', payer: engine.publicKey.toBase58(), escrowTxHash: signature });

    const outcomes = await Promise.allSettled([claim(first), claim(second)]);

    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'fulfilled']);
    const rows = await database.db.select().from(payments).where(eq(payments.txRef, signature));
    expect(rows.map((r) => r.jobId).sort()).toEqual([first, second].sort());
  });

  test('unconfirmed or unknown: a signature the chain does not have is refused', async () => {
    const jobId = newJobId('unknown');
    const address = await settlement.openEscrowAccount(jobId);
    // Signed, a valid payment, but never sent.
    const { signature: unsentSignature } = await signedTransfer(engine, address, 1_000n);
    const madeUp = getBase58Decoder().decode(randomBytes(64));

    await expectRejected(jobId, 1_000n, engine.publicKey, unsentSignature, /not found as a confirmed transaction/);
    await expectRejected(jobId, 1_000n, engine.publicKey, madeUp, /not found as a confirmed transaction/);
  });

  test('a payer a moment ahead of the cluster: a transaction that lands while it is being checked is accepted', async () => {
    const jobId = newJobId('ahead');
    const address = await settlement.openEscrowAccount(jobId);
    const { bytes, signature } = await signedTransfer(engine, address, 1_500n);

    const verified = settlement.verifyEscrowTransaction({ jobId, amount: 1_500n, payer: engine.publicKey.toBase58(), signature });
    await new Promise((r) => setTimeout(r, 300));
    await chain.connection.sendRawTransaction(bytes);
    expect(await verified).toBe(1_500n);
  });

  test('a payer other than payment_address is refused', async () => {
    const jobId = newJobId('other-payer');
    const address = await settlement.openEscrowAccount(jobId);
    const signature = await pay(engine, address, 1_000n);
    const claimed = new PublicKey(chain.setup.demoWallets.node);

    await expectRejected(jobId, 1_000n, claimed, signature, new RegExp(`did not come from payment_address ${claimed.toBase58()}`));
  });

  describe('reclaim: the payer takes back a transfer no job holds', () => {
    test('a refused submission (paid too little): the transfer comes back whole, once, however often it is asked', async () => {
      const jobId = newJobId('reclaim-short');
      const address = await settlement.openEscrowAccount(jobId);
      const payerAta = ataOf(engine.publicKey, chain.mint);
      const before = await balanceOf(payerAta);
      const signature = await pay(engine, address, 999n);
      await expectRejected(jobId, 1_000n, engine.publicKey, signature, /moved 999 units/);

      const refund = await settlement.reclaimTransfer({ jobId, payer: engine.publicKey.toBase58(), signature });
      expect(refund).toMatchObject({ leg: 'refund', amount: '999', to: engine.publicKey.toBase58() });
      expect(await balanceOf(payerAta)).toBe(before);
      expect(await balanceOf(address)).toBe(0n);
      // Asked again: the same refund, nothing moves.
      expect(await settlement.reclaimTransfer({ jobId, payer: engine.publicKey.toBase58(), signature })).toEqual(refund);
      expect(await balanceOf(payerAta)).toBe(before);
      // The transfer is spent: no job can take it up now.
      await expectRejected(jobId, 999n, engine.publicKey, signature, /already used for job .*\/reclaim\//);
    });

    test('a second transfer into a finished job\'s escrow account comes back; the job\'s own stays the job\'s', async () => {
      const jobId = newJobId('reclaim-twice');
      const address = await settlement.openEscrowAccount(jobId);
      const first = await pay(engine, address, 1_000n);
      const second = await pay(engine, address, 1_001n); // not 1,000: the same transfer twice would be one transaction
      await settlement.escrow({ jobId, amount: '1000', payer: engine.publicKey.toBase58(), escrowTxHash: first });

      // The transfer that funds the job is the job's.
      await expect(settlement.reclaimTransfer({ jobId, payer: engine.publicKey.toBase58(), signature: first })).rejects.toMatchObject({
        code: 409,
        message: expect.stringContaining(`funds job ${jobId}`),
      });
      await settlement.refund({ jobId });
      expect(await balanceOf(address)).toBe(1_001n);
      expect(await settlement.reclaimTransfer({ jobId, payer: engine.publicKey.toBase58(), signature: second })).toMatchObject({ amount: '1001' });
      expect(await balanceOf(address)).toBe(0n);
    });

    test('the payer\'s token account is never created at the platform\'s cost (closed after paying: refused until it is open again)', async () => {
      const jobId = newJobId('reclaim-closed');
      const address = await settlement.openEscrowAccount(jobId);
      const payer = await fundedWallet(chain, 1_000n);
      const payerAta = ataOf(payer.publicKey, chain.mint);
      const signature = await pay(payer, address, 1_000n);
      await sendTransaction(chain.connection, payer, [createCloseAccountInstruction(payerAta, payer.publicKey, payer.publicKey)]);
      const authorityBefore = await chain.connection.getBalance(chain.authority.publicKey);

      await expect(settlement.reclaimTransfer({ jobId, payer: payer.publicKey.toBase58(), signature })).rejects.toMatchObject({
        code: 409,
        message: expect.stringContaining(`has no token account for ${chain.mint.toBase58()}`),
      });
      expect(await rowsOf(`${jobId}/reclaim/${signature}`)).toEqual([]);
      expect(await chain.connection.getBalance(chain.authority.publicKey)).toBe(authorityBefore);

      await sendTransaction(chain.connection, payer, [createAssociatedTokenAccountIdempotentInstruction(payer.publicKey, payerAta, payer.publicKey, chain.mint)]);
      expect(await settlement.reclaimTransfer({ jobId, payer: payer.publicKey.toBase58(), signature })).toMatchObject({ amount: '1000' });
      expect(await balanceOf(payerAta)).toBe(1_000n);
    });

    test('only the wallet that paid gets it back; a transfer into another account is not this escrow\'s', async () => {
      const jobId = newJobId('reclaim-who');
      const address = await settlement.openEscrowAccount(jobId);
      const signature = await pay(engine, address, 500n);
      const someoneElse = new PublicKey(chain.setup.demoWallets.node).toBase58();
      const failure = await failureOf(settlement.reclaimTransfer({ jobId, payer: someoneElse, signature }));
      expect(failure).toMatchObject({ type: 'EscrowRejected', message: expect.stringContaining('did not come from payment_address') });
      const elsewhere = await failureOf(settlement.reclaimTransfer({ jobId: newJobId('reclaim-other'), payer: engine.publicKey.toBase58(), signature }));
      expect(elsewhere.message).toContain("does not pay this job's escrow account");
      expect(await balanceOf(address)).toBe(500n);
    });
  });

  test('without escrow_tx_hash a server with no payer account refuses (EscrowRejected)', async () => {
    const failure = await failureOf(settlement.escrow({ jobId: newJobId('no-payer'), amount: '1', payer: Keypair.generate().publicKey.toBase58() }));
    expect(failure).toMatchObject({ type: 'EscrowRejected', nonRetryable: true });
  });
});
