import { createTransferCheckedInstruction } from '@solana/spl-token';
import { getBase58Decoder } from '@solana/kit';
import { and, eq, inArray } from 'drizzle-orm';
import { randomBytes } from 'node:crypto';
import { escrowAddress } from '../../src/chain/instructions';
import { loadKeypair } from '../../src/chain/keys';
import { reconcileLedger, type ReconcileReport } from '../../src/chain/reconcile';
import type { ChainSettlement, Leg } from '../../src/chain/settlement';
import { jobs, openedEscrowAccounts, payments, reservations } from '../../src/db/schema';
import { freshDatabase } from '../support/db';
import { ataOf, insertNode, receivingWallet, sendTransaction, settlementOn, startTestChain, tokenBalance, type TestChain } from '../support/chain';

class WorkerDied extends Error {}

/**
 * The reconciliation against the chain: it completes legs left `sent` whose transaction landed, reopens legs
 * whose transaction can no longer land, and reports escrow balances the ledger does not explain. Each test has
 * a database of its own (the reconciliation looks at every recent leg); the ledger is shared.
 */
describe('ledger reconciliation against the local ledger', () => {
  let chain: TestChain;
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let settlement: ChainSettlement;
  const run = randomBytes(3).toString('hex');
  let seq = 0;
  const newJobId = (label: string) => `job-${run}-${label}-${++seq}`;

  beforeAll(async () => {
    chain = await startTestChain();
  });
  afterAll(async () => {
    await chain?.stop();
  });
  beforeEach(async () => {
    database = await freshDatabase();
    settlement = settlementOn(chain, database.db);
  });
  afterEach(async () => {
    await database?.drop();
  });

  const reconcile = (staleAfterMs = 0): Promise<ReconcileReport> =>
    reconcileLedger({ db: database.db, settlement, staleAfterMs, recentMs: 3_600_000 });
  const crashingAt = (point: 'afterRecord' | 'afterSend' | 'afterConfirm') =>
    settlementOn(chain, database.db, {
      hooks: {
        [point]: () => {
          throw new WorkerDied(point);
        },
      },
    });
  const legRow = async (jobId: string, leg: Leg) =>
    (await database.db.select().from(payments).where(and(eq(payments.jobId, jobId), eq(payments.leg, leg))))[0];
  const escrowed = async (label: string, amount = 10_000n) => {
    const jobId = newJobId(label);
    await settlement.escrow({ jobId, amount: amount.toString(), payer: chain.payer.publicKey.toBase58() });
    return jobId;
  };
  const withNode = async (jobId: string, given?: string) => {
    const wallet = given ?? (await receivingWallet(chain)).toBase58();
    await insertNode(database.db, `node-${jobId}`, wallet);
    return `node-${jobId}`;
  };
  const empty = { completed: [], reopened: [], failed: [], inFlight: [], mismatches: [] };

  test('a clean ledger: nothing to complete, reopen or report', async () => {
    const released = await escrowed('released');
    await settlement.release({ jobId: released, nodeId: await withNode(released) });
    const refunded = await escrowed('refunded');
    await settlement.refund({ jobId: refunded });
    await escrowed('held');
    const owed = await escrowed('owed');
    expect(await settlement.release({ jobId: owed, nodeId: await withNode(owed, '') })).toMatchObject({ owed: true });

    const report = await reconcile();

    expect(report).toMatchObject(empty);
    expect(report.checkedEscrows).toBe(4);
    expect(report.checkedLegs).toBe(0);
  });

  test('completes a leg left `sent` whose transaction landed (the worker died after confirm, never retried)', async () => {
    const jobId = await escrowed('landed');
    const nodeId = await withNode(jobId);
    await expect(crashingAt('afterConfirm').release({ jobId, nodeId })).rejects.toThrow(WorkerDied);
    const left = await legRow(jobId, 'release_node');
    expect(left.state).toBe('sent');

    // Not stale yet: left alone.
    expect((await reconcile(3_600_000)).completed).toEqual([]);
    expect((await legRow(jobId, 'release_node')).state).toBe('sent');

    const report = await reconcile();

    expect(report.completed.sort()).toEqual([`${jobId}/release_node`, `${jobId}/release_platform`]);
    expect(report.checkedLegs).toBe(2);
    expect(report.mismatches).toEqual([]);
    for (const leg of ['release_node', 'release_platform'] as const) {
      expect(await legRow(jobId, leg)).toMatchObject({ state: 'confirmed', txRef: left.txRef, slot: expect.any(Number) });
    }
    expect(await tokenBalance(chain.connection, escrowAddress(chain.authority.publicKey, jobId))).toBe(0n);
    // Reconciling again finds nothing.
    expect(await reconcile()).toMatchObject(empty);
  });

  test("a reservation's refund left `sent` and completed here shows its signature on the reservation, which keeps one it already shows", async () => {
    const potId = await escrowed('reservation-refund');
    const nodeId = await withNode(potId);
    // The reservation ended with its refund due; the worker died once the refund had landed.
    await database.db.insert(reservations).values({
      id: potId, nodeId, userWallet: chain.payer.publicKey.toBase58(), durationMinutes: 10, pricePerHourUnits: 60_000n,
      escrowUnits: 10_000n, startAt: new Date(), endAt: new Date(), status: 'cancelled', paidUnits: 0n, refundUnits: 10_000n,
    });
    await expect(crashingAt('afterConfirm').refund({ jobId: potId })).rejects.toThrow(WorkerDied);
    const left = await legRow(potId, 'refund');

    expect((await reconcile()).completed).toEqual([`${potId}/refund`]);

    const shown = async () => (await database.db.select({ refundTx: reservations.refundTx }).from(reservations).where(eq(reservations.id, potId)))[0].refundTx;
    expect(await shown()).toBe(left.txRef);
    await settlement.showReservationRefund(`${potId}/ext-2`, 'another-signature');
    expect(await shown()).toBe(left.txRef);
  });

  test('a leg still in flight (sent moments ago, landed) is not reported as an escrow mismatch', async () => {
    const jobId = await escrowed('young');
    const nodeId = await withNode(jobId);
    await expect(crashingAt('afterConfirm').release({ jobId, nodeId })).rejects.toThrow(WorkerDied);

    const report = await reconcile(3_600_000);

    // The chain already shows the release; the ledger will within the activity's retry. Nothing disagrees yet.
    expect(report.mismatches).toEqual([]);
  });

  test('reopens a leg whose transaction expired without landing; the retry then pays exactly once', async () => {
    const jobId = await escrowed('expired');
    await expect(crashingAt('afterRecord').refund({ jobId })).rejects.toThrow(WorkerDied);
    const left = await legRow(jobId, 'refund');
    expect(left.state).toBe('sent');
    chain.ledger.advance(200);

    const report = await reconcile();

    expect(report.reopened).toEqual([`${jobId}/refund`]);
    expect(report.completed).toEqual([]);
    expect(report.mismatches).toEqual([]);
    expect(await legRow(jobId, 'refund')).toMatchObject({ state: 'pending', txRef: null, txBytes: null, lastError: expect.stringMatching(/expired/) });
    const { value } = await chain.connection.getSignatureStatuses([left.txRef!], { searchTransactionHistory: true });
    expect(value[0]).toBeNull();

    const payerBefore = await tokenBalance(chain.connection, ataOf(chain.payer.publicKey, chain.mint));
    const receipt = await settlementOn(chain, database.db).refund({ jobId });
    expect(receipt.txRef).not.toBe(left.txRef);
    expect((await tokenBalance(chain.connection, ataOf(chain.payer.publicKey, chain.mint))) - payerBefore).toBe(10_000n);
    expect(await tokenBalance(chain.connection, escrowAddress(chain.authority.publicKey, jobId))).toBe(0n);
  });

  test('pays a recorded refund nobody is settling (its workflow closed after deciding it), once quiet; not one still fresh', async () => {
    const jobId = await escrowed('refund-left', 3_000n);
    const escrowRow = await legRow(jobId, 'escrow');
    const payerBefore = await tokenBalance(chain.connection, ataOf(chain.payer.publicKey, chain.mint));
    await database.db.insert(payments).values({
      jobId, leg: 'refund', amount: 3_000n, fromAccount: escrowRow.toAccount, toAccount: chain.payer.publicKey.toBase58(), state: 'pending',
      idempotencyKey: `${jobId}/refund`, memo: `cyxwiz ${jobId}/refund`,
    });
    const pass = (quietForMs: number) => reconcileLedger({ db: database.db, settlement, staleAfterMs: 0, recentMs: 0, settleRefunds: { quietForMs, limit: 100 } });

    expect((await pass(60_000)).refundsPaid).not.toContain(jobId); // recorded a moment ago: its settler may be at it
    const report = await pass(0);
    expect(report.refundsPaid).toContain(jobId);
    expect(await legRow(jobId, 'refund')).toMatchObject({ state: 'confirmed', txRef: expect.any(String) });
    expect(await tokenBalance(chain.connection, ataOf(chain.payer.publicKey, chain.mint))).toBe(payerBefore + 3_000n);
    expect((await pass(0)).refundsPaid).not.toContain(jobId);
    expect(await tokenBalance(chain.connection, ataOf(chain.payer.publicKey, chain.mint))).toBe(payerBefore + 3_000n);

    // A refund its escrow account does not hold the money for is reported, not paid out of whatever is there.
    const short = await escrowed('refund-short', 1_000n);
    await database.db.insert(payments).values({
      jobId: short, leg: 'refund', amount: 5_000n, fromAccount: (await legRow(short, 'escrow')).toAccount, toAccount: chain.payer.publicKey.toBase58(),
      state: 'pending', idempotencyKey: `${short}/refund`, memo: `cyxwiz ${short}/refund`,
    });
    const refused = await pass(0);
    expect(refused.refundsPaid).not.toContain(short);
    expect(refused.refundErrors).toContain(`${short}/refund: its escrow account holds 1000 units, less than the 5000 its ledger has yet to pay: not paid`);
    expect(await legRow(short, 'refund')).toMatchObject({ state: 'pending', txRef: null });
  });

  test('reports an escrow balance the ledger does not explain (a stray transfer into an escrow account)', async () => {
    const stray = await escrowed('stray', 5_000n);
    const untouched = await escrowed('untouched', 5_000n);
    const engine = loadKeypair('demo engine wallet', { file: chain.setup.keyFiles.demo.engine });
    await sendTransaction(chain.connection, engine, [
      createTransferCheckedInstruction(ataOf(engine.publicKey, chain.mint), chain.mint, escrowAddress(chain.authority.publicKey, stray), engine.publicKey, 7n, chain.decimals),
    ]);

    const report = await reconcile();

    expect(report.mismatches).toEqual([`${stray}: escrow holds 5007 units on chain, the ledger expects 5000`]);
    expect(report.mismatches.join()).not.toContain(untouched);
    expect(report.completed).toEqual([]);
    expect(report.reopened).toEqual([]);
  });

  test('closes the escrow accounts of settled ledgers, taking their rent back; never one that holds tokens or one still owed', async () => {
    const released = await escrowed('close-released');
    await settlement.release({ jobId: released, nodeId: await withNode(released) });
    const refunded = await escrowed('close-refunded');
    await settlement.refund({ jobId: refunded });
    const held = await escrowed('close-held');
    const owed = await escrowed('close-owed');
    await settlement.release({ jobId: owed, nodeId: await withNode(owed, '') });
    const stray = await escrowed('close-stray');
    await settlement.refund({ jobId: stray });
    const engine = loadKeypair('demo engine wallet', { file: chain.setup.keyFiles.demo.engine });
    await sendTransaction(chain.connection, engine, [
      createTransferCheckedInstruction(ataOf(engine.publicKey, chain.mint), chain.mint, escrowAddress(chain.authority.publicKey, stray), engine.publicKey, 3n, chain.decimals),
    ]);
    const account = (jobId: string) => chain.connection.getAccountInfo(escrowAddress(chain.authority.publicKey, jobId));
    const rent = (await account(released))!.lamports;
    const authorityBefore = await chain.connection.getBalance(chain.authority.publicKey);

    // Settled moments ago: not yet (a settlement may still be asked again).
    expect((await reconcileLedger({ db: database.db, settlement, staleAfterMs: 0, recentMs: 0, closeAccounts: { settledForMs: 60_000, limit: 10 } })).closedAccounts).toBe(0);
    const report = await reconcileLedger({ db: database.db, settlement, staleAfterMs: 0, recentMs: 0, closeAccounts: { settledForMs: 0, limit: 10 } });

    expect(report.closedAccounts).toBe(2);
    expect(await account(released)).toBeNull();
    expect(await account(refunded)).toBeNull();
    for (const open of [held, owed, stray]) expect(await account(open)).not.toBeNull();
    expect(report.mismatches).toEqual([expect.stringContaining(`${stray}: settled, yet its escrow account holds tokens`)]);
    // Two rents back, less two fees.
    expect(await chain.connection.getBalance(chain.authority.publicKey)).toBe(authorityBefore + 2 * rent - 2 * 5000);
    expect((await legRow(released, 'escrow')).accountClosedAt).toEqual(expect.any(Date));
    // Nothing left to close: the next pass sends nothing; the closed job's account cannot be opened again.
    expect((await reconcileLedger({ db: database.db, settlement, staleAfterMs: 0, recentMs: 0, closeAccounts: { settledForMs: 0, limit: 10 } })).closedAccounts).toBe(0);
    await expect(settlement.openEscrowAccount(released)).rejects.toMatchObject({ code: 409 });
  });

  test('closes an escrow account opened ahead of a job that none used within a day, or only reclaims used; never one with tokens, a job\'s ledger, or an unfinished job', async () => {
    const unused = newJobId('opened-unused');
    const funded = newJobId('opened-funded');
    const reclaimed = newJobId('opened-reclaimed');
    const used = await escrowed('opened-used');
    const pending = newJobId('opened-pending');
    for (const jobId of [unused, funded, reclaimed, pending]) await settlement.openEscrowAccount(jobId);
    await database.db.insert(openedEscrowAccounts).values({ jobId: used, openedAt: new Date() }); // opened before its job escrowed
    const engine = loadKeypair('demo engine wallet', { file: chain.setup.keyFiles.demo.engine });
    const pay = (jobId: string, units: bigint) =>
      sendTransaction(chain.connection, engine, [
        createTransferCheckedInstruction(ataOf(engine.publicKey, chain.mint), chain.mint, escrowAddress(chain.authority.publicKey, jobId), engine.publicKey, units, chain.decimals),
      ]);
    await pay(funded, 3n);
    const back = await pay(reclaimed, 4n);
    await settlement.reclaimTransfer({ jobId: reclaimed, payer: engine.publicKey.toBase58(), signature: back });
    await database.db.insert(jobs).values({
      id: pending, status: 'pending', jobType: 'TRAINING', priority: 'NORMAL', requiredDevice: 'CUDA', configHash: 'h', paymentUnits: 10n,
      config: { jobId: pending } as never,
    });
    const account = (jobId: string) => chain.connection.getAccountInfo(escrowAddress(chain.authority.publicKey, jobId));
    const rent = (await account(unused))!.lamports;
    const authorityBefore = await chain.connection.getBalance(chain.authority.publicKey);
    const pass = (unusedForMs: number, limit = 10) => reconcileLedger({ db: database.db, settlement, staleAfterMs: 0, recentMs: 0, closeUnused: { unusedForMs, limit } });
    const opened = async () => (await database.db.select().from(openedEscrowAccounts)).map((o) => o.jobId).sort();

    // Opened moments ago: its payer may be on the way.
    expect((await pass(86_400_000)).closedAccounts).toBe(0);
    const report = await pass(0);

    expect(report.closedAccounts).toBe(2);
    for (const gone of [unused, reclaimed]) expect(await account(gone)).toBeNull();
    for (const open of [funded, used, pending]) expect(await account(open)).not.toBeNull();
    expect(report.mismatches).toEqual([expect.stringContaining(`${funded}: an escrow account opened ahead of a job that has not used it holds tokens`)]);
    expect(await chain.connection.getBalance(chain.authority.publicKey)).toBe(authorityBefore + 2 * rent - 2 * 5000);
    // The job's ledger closes its own account once settled; what is left is looked at again.
    expect(await opened()).toEqual([funded, pending].sort());
    // A pass that cannot take them all goes on where the last stopped: one holding tokens holds none back.
    for (const jobId of [unused, reclaimed]) {
      chain.ledger.advance(1); // a day later on a cluster: the same opening would otherwise be the very same transaction
      await settlement.openEscrowAccount(jobId);
    }
    // The two it must leave come first.
    await database.db.update(openedEscrowAccounts).set({ openedAt: new Date(Date.now() - 60_000) }).where(inArray(openedEscrowAccounts.jobId, [funded, pending]));
    await database.db.update(openedEscrowAccounts).set({ openedAt: new Date(Date.now() - 30_000) }).where(inArray(openedEscrowAccounts.jobId, [unused, reclaimed]));
    const closedBySmallPasses = [];
    for (let i = 0; i < 4; i++) closedBySmallPasses.push((await pass(1000, 1)).closedAccounts);
    expect(closedBySmallPasses.reduce((a, b) => a + b, 0)).toBe(2);
    expect(await opened()).toEqual([funded, pending].sort());
  });

  test('reports a confirmed leg whose signature the chain does not know', async () => {
    const jobId = await escrowed('forged');
    await settlement.refund({ jobId });
    const forged = getBase58Decoder().decode(randomBytes(64));
    await database.db.update(payments).set({ txRef: forged }).where(and(eq(payments.jobId, jobId), eq(payments.leg, 'refund')));

    const report = await reconcile();

    expect(report.mismatches).toEqual([expect.stringContaining(`${jobId}/refund: confirmed in the ledger`)]);
    expect(report.mismatches[0]).toContain(forged);
  });
});
