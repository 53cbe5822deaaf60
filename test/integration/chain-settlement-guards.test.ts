import { createApproveCheckedInstruction, createMintToCheckedInstruction, createTransferCheckedInstruction } from '@solana/spl-token';
import { Connection, Keypair, type PublicKey } from '@solana/web3.js';
import { and, eq } from 'drizzle-orm';
import { randomBytes } from 'node:crypto';
import { escrowAddress } from '../../src/chain/instructions';
import { reclaimId, type ChainSettlement, type Leg, type PotOutcome, type SettlementHooks } from '../../src/chain/settlement';
import * as jobsRepo from '../../src/db/jobs-repo';
import { payments } from '../../src/db/schema';
import type { JobSpec } from '../../src/domain/job';
import { splitPayment } from '../../src/domain/money';
import { PaymentFailures } from '../../src/domain/payments';
import { freshDatabase } from '../support/db';
import {
  ataOf,
  failureOf,
  fundedWallet,
  insertNode,
  isPermanent,
  sameRealmFetch,
  sendTransaction,
  settlementOn,
  startTestChain,
  tokenBalance,
  withRetries,
  type TestChain,
} from '../support/chain';

/** A point where a settlement waits until the test opens it; `reached` resolves once it waits there. */
class Gate {
  readonly reached: Promise<void>;
  private arrive!: () => void;
  private readonly opened: Promise<void>;
  open!: () => void;

  constructor() {
    this.reached = new Promise((r) => (this.arrive = r));
    this.opened = new Promise((r) => (this.open = r));
  }

  async pass(): Promise<void> {
    this.arrive();
    await this.opened;
  }
}

/**
 * A connection whose first getLatestBlockhash waits at `gate`: the settlement has read its legs and built the
 * transaction but not signed or recorded it, the one window no settlement hook reaches.
 */
class GatedConnection extends Connection {
  constructor(
    url: string,
    private gate?: Gate,
  ) {
    super(url, { commitment: 'confirmed', disableRetryOnRateLimit: true, fetch: sameRealmFetch });
  }

  override async getLatestBlockhash(...args: Parameters<Connection['getLatestBlockhash']>) {
    const gate = this.gate;
    this.gate = undefined;
    await gate?.pass();
    return super.getLatestBlockhash(...args);
  }
}

/**
 * The guards on the money paths that a review found missing: a signed attempt is recorded on all of its legs
 * or none (two attempts of one pot's settlement cannot pay a leg twice), a payer's transaction is bound once
 * per escrow account it pays (not once overall), and escrow() accepts an escrow found under the job's id only
 * when it is the escrow this job asked for.
 */
describe('chain settlement guards', () => {
  let chain: TestChain;
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let settlement: ChainSettlement;
  const run = randomBytes(3).toString('hex');
  let seq = 0;
  const newId = (label: string) => `${label}-${run}-${++seq}`;

  beforeAll(async () => {
    [database, chain] = await Promise.all([freshDatabase(), startTestChain()]);
    settlement = settlementOn(chain, database.db);
  });
  afterAll(async () => {
    await chain?.stop();
    await database?.drop();
  });

  const balanceOf = (account: PublicKey) => tokenBalance(chain.connection, account);
  const ata = (wallet: PublicKey) => ataOf(wallet, chain.mint);
  const escrowOf = (id: string) => escrowAddress(chain.authority.publicKey, id);
  const rowsOf = (id: string) => database.db.select().from(payments).where(eq(payments.jobId, id));
  const legOf = async (id: string, leg: Leg) => (await rowsOf(id)).find((r) => r.leg === leg)!;

  /** A settlement as settlementOn builds it, on a connection that stops once at `gate`. */
  const gatedSettlement = (gate: Gate, hooks?: SettlementHooks) =>
    settlementOn(chain, database.db, { connection: new GatedConnection(chain.url, gate), hooks });

  /** A user holding `units` who allowed the escrow authority to move all of them. */
  async function approvingUser(units: bigint): Promise<Keypair> {
    const user = await fundedWallet(chain, units);
    await sendTransaction(chain.connection, user, [
      createApproveCheckedInstruction(ata(user.publicKey), chain.mint, chain.authority.publicKey, user.publicKey, units, chain.decimals),
    ]);
    await waitFor(async () => (await chain.connection.getAccountInfo(ata(user.publicKey))) !== null);
    return user;
  }

  /** How much `account`'s token balance changed in transaction `signature`. */
  async function movedBy(signature: string, account: PublicKey): Promise<bigint> {
    const tx = await chain.connection.getTransaction(signature, { commitment: 'confirmed', maxSupportedTransactionVersion: 0 });
    const index = tx!.transaction.message.staticAccountKeys.findIndex((k) => k.equals(account));
    if (index < 0) return 0n;
    const amount = (b?: { accountIndex: number; uiTokenAmount: { amount: string } }[] | null) =>
      BigInt(b?.find((x) => x.accountIndex === index)?.uiTokenAmount.amount ?? '0');
    return amount(tx!.meta!.postTokenBalances) - amount(tx!.meta!.preTokenBalances);
  }

  describe('a signed attempt is recorded on all of its legs or none', () => {
    test('two attempts of one pot settlement straddling the node wallet registration pay each leg exactly once', async () => {
      const user = await approvingUser(10_000n);
      const potId = newId('res-straddle');
      const nodeId = `node-${potId}`;
      await settlement.escrowPot({ potId, amount: '1000', owner: user.publicKey.toBase58() });
      // More in the escrow account than the pot: a leg paid twice would land instead of failing for want of funds.
      const surplus = 1_000n;
      await sendTransaction(chain.connection, chain.authority, [
        createMintToCheckedInstruction(chain.mint, escrowOf(potId), chain.authority.publicKey, surplus, chain.decimals),
      ]);
      await waitFor(async () => (await balanceOf(escrowOf(potId))) === 1_000n + surplus);
      const treasuryBefore = await balanceOf(ata(chain.treasury));
      await insertNode(database.db, nodeId, '');

      // Attempt A: the node has no wallet, so its legs are owed and A settles the refund alone.
      const aBuilt = new Gate();
      const aRecorded = new Gate();
      const a = gatedSettlement(aBuilt, {
        afterRecord: async (legs) => {
          if (legs.join() === 'refund') await aRecorded.pass();
        },
      });
      const aDone = a.settlePot({ potId, nodeId, payUnits: '600' });
      await aBuilt.reached;

      // The node registers a wallet; attempt B makes the owed legs pending and groups all three legs.
      const wallet = (await fundedWallet(chain, 0n)).publicKey;
      await insertNode(database.db, nodeId, wallet.toBase58());
      const bBuilt = new Gate();
      const b = gatedSettlement(bBuilt);
      const bDone = b.settlePot({ potId, nodeId, payUnits: '600' });
      await bBuilt.reached;
      expect((await rowsOf(potId)).filter((r) => r.leg !== 'escrow').map((r) => r.state)).toEqual(['pending', 'pending', 'pending']);

      // A records its refund-only transaction; B then tries to record its three-leg one over it.
      aBuilt.open();
      await aRecorded.reached;
      const refundAttempt = (await legOf(potId, 'refund')).txRef!;
      bBuilt.open();
      // A retryable failure is retried, as Temporal would, by the same worker.
      const settled = (attempt: Promise<PotOutcome>, s: ChainSettlement) =>
        attempt.catch(async (err: unknown) => {
          if (isPermanent(err)) throw err;
          return (await withRetries(() => s.settlePot({ potId, nodeId, payUnits: '600' }))).value;
        });
      const bOutcome = await settled(bDone, b);
      aRecorded.open();
      const aOutcome = await settled(aDone, a);

      const split = splitPayment(600n, 1000n);
      expect(bOutcome).toMatchObject({ paid: '600', refunded: '400', owed: false });
      expect(aOutcome).toEqual(bOutcome);
      expect(await balanceOf(ata(wallet))).toBe(split.node);
      expect(await balanceOf(ata(chain.treasury))).toBe(treasuryBefore + split.platform);
      expect(await balanceOf(ata(user.publicKey))).toBe(10_000n - 1000n + 400n);
      expect(await balanceOf(escrowOf(potId))).toBe(surplus);

      // The ledger agrees with the chain: every leg confirmed under the transaction that paid it, and that
      // transaction paid exactly the leg's amount. The refund is A's attempt, which B finished instead of re-signing.
      const rows = await rowsOf(potId);
      const byLeg = (leg: Leg) => rows.find((r) => r.leg === leg)!;
      for (const row of rows) expect(row.state).toBe('confirmed');
      expect(byLeg('refund').txRef).toBe(refundAttempt);
      expect(byLeg('release_node').txRef).toBe(byLeg('release_platform').txRef);
      expect(byLeg('release_node').txRef).not.toBe(refundAttempt);
      expect(await movedBy(refundAttempt, ata(user.publicKey))).toBe(400n);
      expect(await movedBy(refundAttempt, ata(wallet))).toBe(0n);
      expect(await movedBy(byLeg('release_node').txRef!, ata(wallet))).toBe(split.node);
      expect(await movedBy(byLeg('release_node').txRef!, ata(chain.treasury))).toBe(split.platform);
      expect(await movedBy(byLeg('release_node').txRef!, ata(user.publicKey))).toBe(0n);
    });

    test('a transaction is never signed over a leg that is already confirmed', async () => {
      const jobId = newId('job-half');
      const nodeId = `node-${jobId}`;
      await insertNode(database.db, nodeId, '');
      await settlement.escrow({ jobId, amount: '1000', payer: chain.payer.publicKey.toBase58() });
      expect(await settlement.release({ jobId, nodeId })).toMatchObject({ owed: true });
      // The platform's share settled by some other attempt while the node's is still owed.
      await database.db
        .update(payments)
        .set({ state: 'confirmed', txRef: 'settled-elsewhere' })
        .where(and(eq(payments.jobId, jobId), eq(payments.leg, 'release_platform')));
      const wallet = (await fundedWallet(chain, 0n)).publicKey;
      await insertNode(database.db, nodeId, wallet.toBase58());
      const treasuryBefore = await balanceOf(ata(chain.treasury));

      const failure = await failureOf(settlement.release({ jobId, nodeId }));

      expect(isPermanent(failure)).toBe(false);
      expect(failure.message).toMatch(/another attempt settled some of them/);
      expect(await balanceOf(escrowOf(jobId))).toBe(1000n);
      expect(await balanceOf(ata(chain.treasury))).toBe(treasuryBefore);
      expect(await balanceOf(ata(wallet))).toBe(0n);
      expect(await legOf(jobId, 'release_node')).toMatchObject({ state: 'pending', txRef: null, txBytes: null });
    });
  });

  test('an attempt given up under a signature another attempt confirmed stays paid (a late "Blockhash not found", a reconciliation)', async () => {
    const jobId = newId('job-given-up');
    await settlement.escrow({ jobId, amount: '1000', payer: chain.payer.publicKey.toBase58() });
    const escrowRow = await legOf(jobId, 'escrow');
    await settlement.abandonAttempt(jobId, ['escrow'], escrowRow.txRef!, 'the cluster did not know its blockhash');
    expect(await legOf(jobId, 'escrow')).toMatchObject({ state: 'confirmed', txRef: escrowRow.txRef });
    // And asked again, the escrow is the one that landed: nothing moves twice.
    await settlement.escrow({ jobId, amount: '1000', payer: chain.payer.publicKey.toBase58() });
    expect(await balanceOf(escrowOf(jobId))).toBe(1000n);
  });

  describe('a payer transaction is bound once per escrow account', () => {
    /** One transaction of `from` paying `amount` into each of the jobs' escrow accounts. */
    async function payBoth(from: Keypair, jobs: string[], amount: bigint): Promise<string> {
      for (const job of jobs) await settlement.openEscrowAccount(job);
      const signature = await sendTransaction(
        chain.connection,
        from,
        jobs.map((job) => createTransferCheckedInstruction(ata(from.publicKey), chain.mint, escrowOf(job), from.publicKey, amount, chain.decimals)),
      );
      await waitFor(async () => (await balanceOf(escrowOf(jobs[0]))) >= amount);
      return signature;
    }
    const escrowRowsOf = (signature: string) =>
      database.db.select().from(payments).where(and(eq(payments.leg, 'escrow'), eq(payments.txRef, signature)));

    test('one transaction paying two escrow accounts funds both jobs, each once', async () => {
      const payer = await fundedWallet(chain, 5_000n);
      const [j1, j2] = [newId('job-both-a'), newId('job-both-b')];
      const signature = await payBoth(payer, [j1, j2], 1_000n);
      const escrow = (jobId: string) => settlement.escrow({ jobId, amount: '1000', payer: payer.publicKey.toBase58(), escrowTxHash: signature });

      const first = await escrow(j1);
      const second = await escrow(j2);
      expect(first).toEqual({ leg: 'escrow', amount: '1000', to: escrowOf(j1).toBase58(), txRef: signature });
      expect(second).toEqual({ leg: 'escrow', amount: '1000', to: escrowOf(j2).toBase58(), txRef: signature });
      // Asked again: the same rows, nothing new.
      expect(await escrow(j1)).toEqual(first);
      expect(await escrow(j2)).toEqual(second);
      expect((await escrowRowsOf(signature)).map((r) => r.jobId).sort()).toEqual([j1, j2].sort());

      // Each escrow account's money follows its job: no reclaim of either.
      for (const jobId of [j1, j2]) {
        await expect(settlement.reclaimTransfer({ jobId, payer: payer.publicKey.toBase58(), signature })).rejects.toMatchObject({
          code: 409,
          message: expect.stringContaining(`funds job ${jobId}`),
        });
      }
      expect(await balanceOf(escrowOf(j1))).toBe(1_000n);
      expect(await balanceOf(escrowOf(j2))).toBe(1_000n);
      expect(await balanceOf(ata(payer.publicKey))).toBe(3_000n);
    });

    test('the second account of a transaction one job took is reclaimed, once; then neither account takes it again', async () => {
      const payer = await fundedWallet(chain, 5_000n);
      const [j1, j2] = [newId('job-reclaim-a'), newId('job-reclaim-b')];
      const signature = await payBoth(payer, [j1, j2], 1_000n);
      await settlement.escrow({ jobId: j1, amount: '1000', payer: payer.publicKey.toBase58(), escrowTxHash: signature });

      const refund = await settlement.reclaimTransfer({ jobId: j2, payer: payer.publicKey.toBase58(), signature });
      expect(refund).toMatchObject({ leg: 'refund', amount: '1000', to: payer.publicKey.toBase58() });
      expect(await settlement.reclaimTransfer({ jobId: j2, payer: payer.publicKey.toBase58(), signature })).toEqual(refund);
      expect(await balanceOf(escrowOf(j2))).toBe(0n);
      expect(await balanceOf(ata(payer.publicKey))).toBe(4_000n);

      // J2's account has given it back: J2 cannot be funded by it now. J1's account still belongs to J1.
      const refused = await failureOf(settlement.escrow({ jobId: j2, amount: '1000', payer: payer.publicKey.toBase58(), escrowTxHash: signature }));
      expect(refused).toMatchObject({ type: PaymentFailures.escrowRejected, nonRetryable: true });
      expect(refused.message).toContain(`already used for job ${reclaimId(j2, signature)}`);
      await expect(settlement.reclaimTransfer({ jobId: j1, payer: payer.publicKey.toBase58(), signature })).rejects.toMatchObject({ code: 409 });
      expect(await balanceOf(escrowOf(j1))).toBe(1_000n);
      expect((await escrowRowsOf(signature)).map((r) => r.jobId).sort()).toEqual([j1, reclaimId(j2, signature)].sort());
    });

    test('in one escrow account a transaction funds the job or one reclaim, never both, even asked at once', async () => {
      const payer = await fundedWallet(chain, 5_000n);
      const jobId = newId('job-race');
      const signature = await payBoth(payer, [jobId], 1_000n);
      const args = { jobId, payer: payer.publicKey.toBase58(), signature };

      const [funded, reclaimed] = await Promise.allSettled([
        settlement.escrow({ jobId, amount: '1000', payer: args.payer, escrowTxHash: signature }),
        settlement.reclaimTransfer(args),
      ]);

      expect([funded.status, reclaimed.status].sort()).toEqual(['fulfilled', 'rejected']);
      const rows = (await escrowRowsOf(signature)).filter((r) => r.toAccount === escrowOf(jobId).toBase58());
      expect(rows).toHaveLength(1);
      if (funded.status === 'fulfilled') {
        expect(rows[0].jobId).toBe(jobId);
        await expect(settlement.reclaimTransfer(args)).rejects.toMatchObject({ code: 409 });
        expect(await balanceOf(escrowOf(jobId))).toBe(1_000n);
        expect(await balanceOf(ata(payer.publicKey))).toBe(4_000n);
      } else {
        expect(rows[0].jobId).toBe(reclaimId(jobId, signature));
        const again = await failureOf(settlement.escrow({ jobId, amount: '1000', payer: args.payer, escrowTxHash: signature }));
        expect(again.message).toContain('already used for job');
        expect(await balanceOf(escrowOf(jobId))).toBe(0n);
        expect(await balanceOf(ata(payer.publicKey))).toBe(5_000n);
      }
    });

    test('with two payers in one transaction, neither can claim what the other paid', async () => {
      const [x, y] = [await fundedWallet(chain, 5_000n), await fundedWallet(chain, 5_000n)];
      const [j1, j2] = [newId('job-two-payers-a'), newId('job-two-payers-b')];
      for (const job of [j1, j2]) await settlement.openEscrowAccount(job);
      const signature = await sendTransaction(
        chain.connection,
        x,
        [
          createTransferCheckedInstruction(ata(x.publicKey), chain.mint, escrowOf(j1), x.publicKey, 1_000n, chain.decimals),
          createTransferCheckedInstruction(ata(y.publicKey), chain.mint, escrowOf(j2), y.publicKey, 1_000n, chain.decimals),
        ],
        [y],
      );
      await waitFor(async () => (await balanceOf(escrowOf(j2))) === 1_000n);

      // X paid 1000 and all of it went into J1's account: J2's 1000 are Y's.
      const stolen = await failureOf(settlement.reclaimTransfer({ jobId: j2, payer: x.publicKey.toBase58(), signature }));
      expect(stolen).toMatchObject({ type: PaymentFailures.escrowRejected, message: expect.stringContaining('did not come from payment_address') });
      const claimed = await failureOf(settlement.escrow({ jobId: j2, amount: '1000', payer: x.publicKey.toBase58(), escrowTxHash: signature }));
      expect(claimed.message).toContain(`did not come from payment_address ${x.publicKey.toBase58()}`);

      expect(await settlement.escrow({ jobId: j1, amount: '1000', payer: x.publicKey.toBase58(), escrowTxHash: signature })).toMatchObject({ amount: '1000' });
      expect(await settlement.escrow({ jobId: j2, amount: '1000', payer: y.publicKey.toBase58(), escrowTxHash: signature })).toMatchObject({ amount: '1000' });
      expect(await balanceOf(ata(x.publicKey))).toBe(4_000n);
    });
  });

  describe('escrow() accepts an escrow found under the job id only when it is this job’s', () => {
    test('a job id that is a funded reservation pot is refused, naming what differs; nothing moves', async () => {
      const user = await approvingUser(5_000n);
      const potId = newId('res-shared-id');
      await settlement.escrowPot({ potId, amount: '700', owner: user.publicKey.toBase58() });
      const potRows = await rowsOf(potId);
      const payerBefore = await balanceOf(ata(chain.payer.publicKey));

      // Paid by the server's payer: the pot's escrow came from the user, and is a different amount.
      const byServer = await failureOf(settlement.escrow({ jobId: potId, amount: '1000', payer: user.publicKey.toBase58() }));
      expect(byServer).toMatchObject({ type: PaymentFailures.escrowRejected, nonRetryable: true });
      expect(byServer.message).toContain('amount 700, not 1000');
      expect(byServer.message).toContain(`payer ${user.publicKey.toBase58()}, not ${chain.payer.publicKey.toBase58()}`);
      // Same amount: still not this job's escrow (its payer differs).
      const sameAmount = await failureOf(settlement.escrow({ jobId: potId, amount: '700', payer: user.publicKey.toBase58() }));
      expect(sameAmount.message).toContain('payer');

      // Paid by the payer's own transfer into the same escrow account: the recorded escrow is not that transfer.
      const engine = await fundedWallet(chain, 5_000n);
      const signature = await sendTransaction(chain.connection, engine, [
        createTransferCheckedInstruction(ata(engine.publicKey), chain.mint, escrowOf(potId), engine.publicKey, 700n, chain.decimals),
      ]);
      await waitFor(async () => (await balanceOf(escrowOf(potId))) === 1_400n);
      const byTransfer = await failureOf(settlement.escrow({ jobId: potId, amount: '700', payer: engine.publicKey.toBase58(), escrowTxHash: signature }));
      expect(byTransfer).toMatchObject({ type: PaymentFailures.escrowRejected, nonRetryable: true });
      expect(byTransfer.message).toContain(`transaction ${potRows[0].txRef}, not ${signature}`);
      expect(byTransfer.message).toContain(`payer ${user.publicKey.toBase58()}, not ${engine.publicKey.toBase58()}`);

      expect(await rowsOf(potId)).toEqual(potRows);
      expect(await balanceOf(ata(chain.payer.publicKey))).toBe(payerBefore);
      // The refused transfer is not stranded: its payer takes it back.
      expect(await settlement.reclaimTransfer({ jobId: potId, payer: engine.publicKey.toBase58(), signature })).toMatchObject({ amount: '700' });
      expect(await balanceOf(escrowOf(potId))).toBe(700n);
    });

    test('an escrow row for another account under the job id is refused, with or without a server payer', async () => {
      const jobId = newId('job-other-account');
      const elsewhere = Keypair.generate().publicKey.toBase58();
      await database.db.insert(payments).values({
        jobId, leg: 'escrow', amount: 1000n, fromAccount: chain.payer.publicKey.toBase58(), toAccount: elsewhere, state: 'confirmed',
        idempotencyKey: `${jobId}/escrow`, txRef: `elsewhere-${jobId}`,
      });
      const expected = `escrow account ${elsewhere}, not ${escrowOf(jobId).toBase58()}`;

      const withPayer = await failureOf(settlement.escrow({ jobId, amount: '1000', payer: chain.payer.publicKey.toBase58() }));
      expect(withPayer).toMatchObject({ type: PaymentFailures.escrowRejected, nonRetryable: true });
      expect(withPayer.message).toContain(expected);
      const noPayer = settlementOn(chain, database.db, { payer: undefined });
      expect((await failureOf(noPayer.escrow({ jobId, amount: '1000', payer: chain.payer.publicKey.toBase58() }))).message).toContain(expected);
      expect(await balanceOf(escrowOf(jobId))).toBe(0n);
    });

    test('an escrow attempt in flight when the server payer key changes is finished as it was signed, not refused; a new attempt is the new payer’s', async () => {
      class Crash extends Error {}
      const jobId = newId('job-payer-rotated');
      await jobsRepo.insertJob(database.db, { spec: serverPaidJob(jobId, '900'), configHash: 'h' });
      const oldPayer = chain.payer;
      const crashing = settlementOn(chain, database.db, { hooks: { afterSend: () => Promise.reject(new Crash('worker died after sending')) } });
      await expect(crashing.escrow({ jobId, amount: '900', payer: '' })).rejects.toThrow(Crash);
      expect(await legOf(jobId, 'escrow')).toMatchObject({ state: 'sent', fromAccount: oldPayer.publicKey.toBase58() });

      // The next worker has another payer key, or none: the signed bytes are this job's escrow all the same.
      const newPayer = await fundedWallet(chain, 5_000n);
      const rotated = settlementOn(chain, database.db, { payer: newPayer });
      expect((await withRetries(() => rotated.escrow({ jobId, amount: '900', payer: '' }))).value).toMatchObject({ amount: '900' });
      expect(await legOf(jobId, 'escrow')).toMatchObject({ state: 'confirmed', fromAccount: oldPayer.publicKey.toBase58() });
      expect(await settlementOn(chain, database.db, { payer: undefined }).escrow({ jobId, amount: '900', payer: '' })).toMatchObject({ amount: '900' });
      expect(await balanceOf(escrowOf(jobId))).toBe(900n);
      expect(await balanceOf(ata(newPayer.publicKey))).toBe(5_000n);

      // A leg recorded for the old key and never signed is refused by the new one: nothing has moved.
      const unsigned = newId('job-payer-rotated-unsigned');
      await jobsRepo.insertJob(database.db, { spec: serverPaidJob(unsigned, '900'), configHash: 'h' });
      await database.db.insert(payments).values({
        jobId: unsigned, leg: 'escrow', amount: 900n, fromAccount: oldPayer.publicKey.toBase58(), toAccount: escrowOf(unsigned).toBase58(),
        state: 'pending', idempotencyKey: `${unsigned}/escrow`,
      });
      const refused = await failureOf(rotated.escrow({ jobId: unsigned, amount: '900', payer: '' }));
      expect(refused).toMatchObject({ type: PaymentFailures.escrowRejected, nonRetryable: true });
      expect(refused.message).toContain(`payer ${oldPayer.publicKey.toBase58()}, not ${newPayer.publicKey.toBase58()}`);
      expect(await balanceOf(escrowOf(unsigned))).toBe(0n);
    });

    test('a payer-funded escrow is recorded with the slot its transfer landed in, so that its refund is checked by a node that has seen it', async () => {
      const engine = await fundedWallet(chain, 5_000n);
      const jobId = newId('job-payer-slot');
      await settlement.openEscrowAccount(jobId);
      const signature = await sendTransaction(chain.connection, engine, [
        createTransferCheckedInstruction(ata(engine.publicKey), chain.mint, escrowOf(jobId), engine.publicKey, 600n, chain.decimals),
      ]);
      await settlement.escrow({ jobId, amount: '600', payer: engine.publicKey.toBase58(), escrowTxHash: signature });
      const landed = await chain.connection.getTransaction(signature, { commitment: 'confirmed', maxSupportedTransactionVersion: 0 });
      expect((await legOf(jobId, 'escrow')).slot).toBe(landed!.slot);
      expect(await settlement.refund({ jobId })).toMatchObject({ amount: '600', to: engine.publicKey.toBase58() });
      expect(await balanceOf(escrowOf(jobId))).toBe(0n);
    });

    test('the job’s own escrow is still returned when asked again', async () => {
      const jobId = newId('job-own');
      await jobsRepo.insertJob(database.db, { spec: serverPaidJob(jobId, '800'), configHash: 'h' });
      const first = await settlement.escrow({ jobId, amount: '800', payer: chain.payer.publicKey.toBase58() });
      expect(await settlement.escrow({ jobId, amount: '800', payer: chain.payer.publicKey.toBase58() })).toEqual(first);
      expect(await settlementOn(chain, database.db, { payer: undefined }).escrow({ jobId, amount: '800', payer: 'anyone' })).toEqual(first);
      expect(await balanceOf(escrowOf(jobId))).toBe(800n);
    });
  });
});

/** A job paid by the server's payer, as SubmitJob records it. */
const serverPaidJob = (jobId: string, paymentUnits: string): JobSpec => ({
  jobId, jobType: 'TRAINING', priority: 'NORMAL', modelDefinition: '', hyperparameters: {}, datasetUri: 'x', batchSize: 1, epochs: 1,
  requiredDevice: 'CPU', estimatedMemory: 0, estimatedDuration: 0, paymentUnits, paymentAddress: '', escrowTxHash: '', reservationDurationMinutes: 0,
});

async function waitFor(probe: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await probe())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 50));
  }
}
