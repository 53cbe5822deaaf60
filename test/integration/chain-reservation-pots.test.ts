import { createApproveCheckedInstruction, createCloseAccountInstruction } from '@solana/spl-token';
import { Keypair, type PublicKey } from '@solana/web3.js';
import { and, eq, like, or } from 'drizzle-orm';
import { randomBytes } from 'node:crypto';
import { escrowAddress } from '../../src/chain/instructions';
import type { ChainSettlement, Leg } from '../../src/chain/settlement';
import { payments, reservations } from '../../src/db/schema';
import { splitPayment } from '../../src/domain/money';
import { PaymentFailures } from '../../src/domain/payments';
import { freshDatabase } from '../support/db';
import { ataOf, failureOf, fundedWallet, insertNode, openTokenAccount, receivingWallet, sendTransaction, settlementOn, startTestChain, tokenBalance, type TestChain } from '../support/chain';

/**
 * Reservation money on a local ledger of this file's own: pots funded from the user's allowance (SPL delegate)
 * or the server's payer, and settled as "pay X at 90/10, refund the rest", each leg exactly once, also when
 * the process dies between recording, sending and confirming, and when the node has no wallet yet.
 */
describe('reservation pots: allowance escrow and split settlement', () => {
  let chain: TestChain;
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let settlement: ChainSettlement;
  const run = randomBytes(3).toString('hex');
  let seq = 0;
  const newPot = (label: string) => `res-${run}-${label}-${++seq}`;

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
  const escrowOf = (potId: string) => escrowAddress(chain.authority.publicKey, potId);
  const legsOf = (potId: string) => database.db.select().from(payments).where(eq(payments.jobId, potId));

  /** A user holding `units` who allowed the escrow authority `allowance` of them. */
  async function approvingUser(units: bigint, allowance = units): Promise<Keypair> {
    const user = await fundedWallet(chain, units);
    await sendTransaction(chain.connection, user, [
      createApproveCheckedInstruction(ata(user.publicKey), chain.mint, chain.authority.publicKey, user.publicKey, allowance, chain.decimals),
    ]);
    await waitFor(async () => (await chain.connection.getTokenAccountBalance(ata(user.publicKey))).value.amount === units.toString());
    return user;
  }

  test('a pot is funded from the user through its allowance, once however often it is asked', async () => {
    const user = await approvingUser(5_000n);
    const potId = newPot('allowance');
    const first = await settlement.escrowPot({ potId, amount: '1200', owner: user.publicKey.toBase58() });
    const again = await settlement.escrowPot({ potId, amount: '1200', owner: user.publicKey.toBase58() });
    expect(again).toEqual(first);
    expect(first).toMatchObject({ leg: 'escrow', amount: '1200', fundedBy: user.publicKey.toBase58(), to: escrowOf(potId).toBase58() });
    expect(await balanceOf(escrowOf(potId))).toBe(1200n);
    expect(await balanceOf(ata(user.publicKey))).toBe(3800n);
    // Another pot asked under the same id (an operator's reset of the workflow) is refused, not taken as paid.
    const refused = await failureOf(settlement.escrowPot({ potId, amount: '600', owner: user.publicKey.toBase58() }));
    expect(refused).toMatchObject({ type: PaymentFailures.escrowRejected, nonRetryable: true });
    expect(refused.message).toMatch(/not this job's: amount 1200, not 600/);
    expect(await balanceOf(ata(user.publicKey))).toBe(3800n);
  });

  test('without an allowance the server payer funds the pot; a too-small allowance is refused for good and nothing moves', async () => {
    const stranger = await fundedWallet(chain, 0n);
    const potId = newPot('payer');
    const payerBefore = await balanceOf(ata(chain.payer.publicKey));
    expect(await settlement.escrowPot({ potId, amount: '700', owner: stranger.publicKey.toBase58() })).toMatchObject({ fundedBy: chain.payer.publicKey.toBase58() });
    expect(await balanceOf(ata(chain.payer.publicKey))).toBe(payerBefore - 700n);

    const stingy = await approvingUser(5_000n, 100n);
    const refused = newPot('stingy');
    const failure = await failureOf(settlement.escrowPot({ potId: refused, amount: '700', owner: stingy.publicKey.toBase58() }));
    expect(failure).toMatchObject({ type: PaymentFailures.insufficientFunds, nonRetryable: true });
    expect(await legsOf(refused)).toEqual([]);

    // No allowance and no server payer: refused, naming what is missing.
    const strict = settlementOn(chain, database.db, { payer: undefined });
    const none = await failureOf(strict.escrowPot({ potId: newPot('strict'), amount: '700', owner: stranger.publicKey.toBase58() }));
    expect(none).toMatchObject({ type: PaymentFailures.escrowRejected });
    expect(none.message).toMatch(/has not approved the escrow authority/);
  });

  test('settling pays 90/10 of what the node earned and refunds the rest in one transaction; a second call moves nothing', async () => {
    const user = await approvingUser(10_000n);
    const nodeWallet = (await fundedWallet(chain, 0n)).publicKey;
    await insertNode(database.db, `node-${run}-split`, nodeWallet.toBase58());
    const potId = newPot('split');
    await settlement.escrowPot({ potId, amount: '1000', owner: user.publicKey.toBase58() });
    const treasuryBefore = await balanceOf(ata(chain.treasury));

    const outcome = await settlement.settlePot({ potId, nodeId: `node-${run}-split`, payUnits: '333' });
    const split = splitPayment(333n, 1000n);
    expect(outcome).toMatchObject({ paid: '333', nodeAmount: split.node.toString(), refunded: '667', owed: false });
    expect(outcome.paymentTx).toBe(outcome.refundTx); // one transaction for all three legs
    expect(await balanceOf(ata(nodeWallet))).toBe(split.node);
    expect(await balanceOf(ata(chain.treasury))).toBe(treasuryBefore + split.platform);
    expect(await balanceOf(ata(user.publicKey))).toBe(10_000n - 1000n + 667n);
    expect(await balanceOf(escrowOf(potId))).toBe(0n);

    // Asked again, even for a different amount: the recorded split stands and nothing moves twice.
    expect(await settlement.settlePot({ potId, nodeId: `node-${run}-split`, payUnits: '1000' })).toEqual(outcome);
    expect(await balanceOf(ata(nodeWallet))).toBe(split.node);
    expect(await balanceOf(ata(user.publicKey))).toBe(10_000n - 1000n + 667n);
  });

  test('a user who closed their token account since funding: the node is paid and the pot settled now, the refund waits (reason on the leg) and is paid once it is open again', async () => {
    const user = await approvingUser(1_000n);
    const nodeWallet = await receivingWallet(chain);
    await insertNode(database.db, `node-${run}-closed`, nodeWallet.toBase58());
    const potId = newPot('closed');
    // Its reservation row, as it ends with the refund due and unsigned.
    await database.db.insert(reservations).values({
      id: potId, nodeId: `node-${run}-closed`, userWallet: user.publicKey.toBase58(), durationMinutes: 10, pricePerHourUnits: 6000n,
      escrowUnits: 1000n, startAt: new Date(), endAt: new Date(), status: 'cancelled', paidUnits: 400n, refundUnits: 600n,
    });
    await settlement.escrowPot({ potId, amount: '1000', owner: user.publicKey.toBase58() });
    await sendTransaction(chain.connection, user, [createCloseAccountInstruction(ata(user.publicKey), user.publicKey, user.publicKey)]);

    // Settled for the reservation (its other pots and its end are not held back): the refund is due, unsigned.
    const outcome = await settlement.settlePot({ potId, nodeId: `node-${run}-closed`, payUnits: '400' });
    expect(outcome).toMatchObject({ paid: '400', refunded: '600', refundTx: '', owed: false });
    const split = splitPayment(400n, 1000n);
    expect(await balanceOf(ata(nodeWallet))).toBe(split.node);
    expect(await chain.connection.getAccountInfo(ata(user.publicKey))).toBeNull();
    expect(await balanceOf(escrowOf(potId))).toBe(600n);
    expect((await legsOf(potId)).find((l) => l.leg === 'refund')).toMatchObject({
      state: 'pending',
      lastError: `the refund waits: ${user.publicKey.toBase58()} has no token account for ${chain.mint.toBase58()} (${ata(user.publicKey).toBase58()}); the platform does not open one for it`,
    });
    // The reconciliation's pass leaves it while the account is closed, and pays it once it is open.
    expect((await settlement.settleQuietRefunds({ quietForMs: 0, limit: 100 })).paid).not.toContain(potId);
    await openTokenAccount(chain, user.publicKey);
    expect(await settlement.settleQuietRefunds({ quietForMs: 0, limit: 100 })).toMatchObject({ paid: expect.arrayContaining([potId]), errors: [] });
    expect(await balanceOf(ata(user.publicKey))).toBe(600n);
    expect(await balanceOf(escrowOf(potId))).toBe(0n);
    const paidLeg = (await legsOf(potId)).find((l) => l.leg === 'refund');
    expect(paidLeg).toMatchObject({ state: 'confirmed' });
    // The reservation shows the refund's signature now.
    expect((await database.db.select({ refundTx: reservations.refundTx }).from(reservations).where(eq(reservations.id, potId)))[0].refundTx).toBe(paidLeg!.txRef);
    // Asked again, the pot's outcome now shows the refund's signature; nothing moves twice.
    expect(await settlement.settlePot({ potId, nodeId: `node-${run}-closed`, payUnits: '400' })).toMatchObject({ refunded: '600', refundTx: expect.any(String) });
    expect(await balanceOf(ata(user.publicKey))).toBe(600n);
    expect((await settlement.settleQuietRefunds({ quietForMs: 0, limit: 100 })).paid).not.toContain(potId);
  });

  test('a user who closes their token account while the settlement is in flight: once that attempt expires, the node is paid without the refund, which waits', async () => {
    const user = await approvingUser(1_000n);
    const nodeWallet = await receivingWallet(chain);
    const nodeId = `node-${run}-closed-later`;
    await insertNode(database.db, nodeId, nodeWallet.toBase58());
    const potId = newPot('closed-later');
    await settlement.escrowPot({ potId, amount: '1000', owner: user.publicKey.toBase58() });
    // An attempt paying all three legs is recorded (the payer could receive then) and never sent: the worker died.
    const dying = settlementOn(chain, database.db, {
      hooks: {
        afterRecord: () => {
          throw new Error('simulated crash afterRecord');
        },
      },
    });
    await expect(dying.settlePot({ potId, nodeId, payUnits: '400' })).rejects.toThrow('simulated crash afterRecord');
    await sendTransaction(chain.connection, user, [createCloseAccountInstruction(ata(user.publicKey), user.publicKey, user.publicKey)]);
    chain.ledger.advance(200); // the recorded attempt's blockhash expires

    // The attempt is given up, and the legs signed again without the refund its payer cannot receive.
    const outcome = await waitFor(() => settlement.settlePot({ potId, nodeId, payUnits: '400' }).catch(() => undefined));
    expect(outcome).toMatchObject({ paid: '400', refunded: '600', refundTx: '', owed: false, paymentTx: expect.any(String) });
    expect(await balanceOf(ata(nodeWallet))).toBe(splitPayment(400n, 1000n).node);
    expect(await balanceOf(escrowOf(potId))).toBe(600n);
    expect((await legsOf(potId)).find((l) => l.leg === 'refund')).toMatchObject({ state: 'pending', lastError: expect.stringMatching(/^the refund waits: .* has no token account/) });
  });

  test("a treasury without its token account yet gets it opened by the first settlement (the platform's own account)", async () => {
    const treasury = Keypair.generate().publicKey;
    const fresh = settlementOn(chain, database.db, { treasury });
    const user = await approvingUser(1_000n);
    const nodeWallet = await receivingWallet(chain);
    await insertNode(database.db, `node-${run}-treasury`, nodeWallet.toBase58());
    const potId = newPot('treasury');
    await fresh.escrowPot({ potId, amount: '1000', owner: user.publicKey.toBase58() });
    expect(await fresh.settlePot({ potId, nodeId: `node-${run}-treasury`, payUnits: '1000' })).toMatchObject({ paid: '1000', owed: false });
    expect(await balanceOf(ata(treasury))).toBe(splitPayment(1000n, 1000n).platform);
  });

  test('nothing earned is a full refund; everything earned pays with no refund leg', async () => {
    const user = await approvingUser(10_000n);
    const nodeWallet = (await fundedWallet(chain, 0n)).publicKey;
    await insertNode(database.db, `node-${run}-edges`, nodeWallet.toBase58());
    const [zero, all] = [newPot('zero'), newPot('all')];
    await settlement.escrowPot({ potId: zero, amount: '500', owner: user.publicKey.toBase58() });
    await settlement.escrowPot({ potId: all, amount: '500', owner: user.publicKey.toBase58() });
    expect(await settlement.settlePot({ potId: zero, nodeId: `node-${run}-edges`, payUnits: '0' })).toMatchObject({ paid: '0', refunded: '500', paymentTx: '' });
    expect(await settlement.settlePot({ potId: all, nodeId: `node-${run}-edges`, payUnits: '999999' })).toMatchObject({ paid: '500', refunded: '0', refundTx: '' });
    expect((await legsOf(zero)).map((l) => l.leg).sort()).toEqual(['escrow', 'refund']);
    expect((await legsOf(all)).map((l) => l.leg).sort()).toEqual(['escrow', 'release_node', 'release_platform']);
    expect(await balanceOf(ata(user.publicKey))).toBe(10_000n - 500n);
  });

  test('a node without a wallet: the refund goes now, its share is owed until it registers one, then paid once', async () => {
    const user = await approvingUser(10_000n);
    const nodeId = `node-${run}-owed`;
    await insertNode(database.db, nodeId, '');
    const potId = newPot('owed');
    await settlement.escrowPot({ potId, amount: '1000', owner: user.publicKey.toBase58() });
    const owed = await settlement.settlePot({ potId, nodeId, payUnits: '600' });
    expect(owed).toMatchObject({ owed: true, paymentTx: '', refunded: '400' });
    expect(owed.refundTx).not.toBe('');
    expect(await balanceOf(ata(user.publicKey))).toBe(10_000n - 600n);
    expect(await balanceOf(escrowOf(potId))).toBe(600n);

    const wallet = (await fundedWallet(chain, 0n)).publicKey;
    await insertNode(database.db, nodeId, wallet.toBase58());
    const paid = await settlement.settlePot({ potId, nodeId, payUnits: '600' });
    expect(paid).toMatchObject({ owed: false, refundTx: owed.refundTx });
    expect(paid.paymentTx).not.toBe('');
    expect(await balanceOf(ata(wallet))).toBe(splitPayment(600n, 1000n).node);
    expect(await balanceOf(escrowOf(potId))).toBe(0n);
  });

  test.each(['afterRecord', 'afterSend', 'afterConfirm'] as const)('a crash %s leaves every leg to happen exactly once on retry', async (point) => {
    const user = await approvingUser(10_000n);
    const nodeWallet = (await fundedWallet(chain, 0n)).publicKey;
    const nodeId = `node-${run}-crash-${point}`;
    await insertNode(database.db, nodeId, nodeWallet.toBase58());
    const potId = newPot(`crash-${point}`);
    let armed = true;
    const crashing = settlementOn(chain, database.db, {
      hooks: {
        [point]: (legs: Leg[]) => {
          if (armed && legs.includes('refund')) {
            armed = false;
            throw new Error(`simulated crash ${point}`);
          }
        },
      },
    });
    await crashing.escrowPot({ potId, amount: '900', owner: user.publicKey.toBase58() });
    await expect(crashing.settlePot({ potId, nodeId, payUnits: '450' })).rejects.toThrow(`simulated crash ${point}`);
    const outcome = await waitFor(() => crashing.settlePot({ potId, nodeId, payUnits: '450' }).catch(() => undefined));
    expect(outcome).toMatchObject({ paid: '450', refunded: '450', owed: false });
    expect(await balanceOf(ata(nodeWallet))).toBe(splitPayment(450n, 1000n).node);
    expect(await balanceOf(ata(user.publicKey))).toBe(10_000n - 450n);
    const rows = await database.db
      .select()
      .from(payments)
      .where(and(or(eq(payments.jobId, potId), like(payments.jobId, `${potId}/%`)), eq(payments.state, 'confirmed')));
    expect(rows.map((r) => r.leg).sort()).toEqual(['escrow', 'refund', 'release_node', 'release_platform']);
  });
});

async function waitFor<T>(probe: () => Promise<T | undefined | false>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}
