import { VersionedTransaction, type PublicKey } from '@solana/web3.js';
import { eq } from 'drizzle-orm';
import { randomBytes } from 'node:crypto';
import { escrowAddress } from '../../src/chain/instructions';
import type { ChainSettlement, Leg, LegReceipt, ReleaseOutcome, SettlementHooks } from '../../src/chain/settlement';
import { payments } from '../../src/db/schema';
import { freshDatabase } from '../support/db';
import {
  ataOf,
  insertNode,
  landedWithMemo,
  receivingWallet,
  settlementOn,
  startRpcProxy,
  startTestChain,
  tokenBalance,
  withRetries,
  type RpcProxy,
  type TestChain,
} from '../support/chain';

/** Thrown by a hook: the worker process dies at that point. */
class WorkerDied extends Error {
  constructor(point: string) {
    super(`worker died ${point}`);
    this.name = 'WorkerDied';
  }
}

type Step = 'escrow' | 'release' | 'refund';
type HookPoint = keyof SettlementHooks;

/**
 * Kills the worker at each step of each leg (a settlement whose hook throws) and retries the same call from a
 * fresh settlement (a restarted worker without hooks): exactly one transfer must reach the chain and the ledger
 * must name the signature that landed. Every transaction goes through a recording proxy, so the test counts the
 * landed transactions that carry the leg's memo.
 */
describe('chain settlement: exactly once across worker crashes', () => {
  let chain: TestChain;
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let proxy: RpcProxy;
  let healthy: ChainSettlement;
  const run = randomBytes(3).toString('hex');
  let seq = 0;

  beforeAll(async () => {
    [database, chain] = await Promise.all([freshDatabase(), startTestChain()]);
    proxy = await startRpcProxy(chain.url);
    healthy = settlementOn(chain, database.db, { rpcUrl: proxy.url });
  });
  afterAll(async () => {
    await proxy?.stop();
    await chain?.stop();
    await database?.drop();
  });

  const balanceOf = (account: PublicKey) => tokenBalance(chain.connection, account);
  const crashingAt = (point: HookPoint) =>
    settlementOn(chain, database.db, {
      rpcUrl: proxy.url,
      hooks: {
        [point]: () => {
          throw new WorkerDied(point);
        },
      },
    });
  const restarted = () => settlementOn(chain, database.db, { rpcUrl: proxy.url });
  const legRows = (jobId: string, legs: Leg[]) =>
    database.db
      .select()
      .from(payments)
      .where(eq(payments.jobId, jobId))
      .then((rows) => legs.map((l) => rows.find((r) => r.leg === l)!));

  const LEGS: Record<Step, Leg[]> = { escrow: ['escrow'], release: ['release_node', 'release_platform'], refund: ['refund'] };

  /** A job ready for `step`: nothing for escrow, a confirmed escrow for release and refund. */
  async function jobReadyFor(step: Step, amount: bigint) {
    const jobId = `job-${run}-${step}-${++seq}`;
    const wallet = await receivingWallet(chain);
    const nodeId = `node-${jobId}`;
    await insertNode(database.db, nodeId, wallet.toBase58());
    if (step !== 'escrow') await healthy.escrow({ jobId, amount: amount.toString(), payer: chain.payer.publicKey.toBase58() });
    const call = (s: ChainSettlement): Promise<LegReceipt | ReleaseOutcome> =>
      step === 'escrow'
        ? s.escrow({ jobId, amount: amount.toString(), payer: chain.payer.publicKey.toBase58() })
        : step === 'release'
          ? s.release({ jobId, nodeId })
          : s.refund({ jobId });
    const accounts = {
      payer: ataOf(chain.payer.publicKey, chain.mint),
      escrow: escrowAddress(chain.authority.publicKey, jobId),
      node: ataOf(wallet, chain.mint),
      treasury: ataOf(chain.treasury, chain.mint),
    };
    const snapshot = async () => ({
      payer: await balanceOf(accounts.payer),
      escrow: await balanceOf(accounts.escrow),
      node: await balanceOf(accounts.node),
      treasury: await balanceOf(accounts.treasury),
    });
    const memo = `cyxwiz ${jobId}/${step}`;
    return { jobId, call, snapshot, memo, legs: LEGS[step] };
  }

  /** The balance changes one successful `step` of `amount` makes. */
  function expectedDelta(step: Step, amount: bigint) {
    const node = (amount * 9n) / 10n;
    if (step === 'escrow') return { payer: -amount, escrow: amount, node: 0n, treasury: 0n };
    if (step === 'release') return { payer: 0n, escrow: -amount, node, treasury: amount - node };
    return { payer: amount, escrow: -amount, node: 0n, treasury: 0n };
  }

  /** The receipts a call returned, one per leg. */
  const receiptsOf = (result: LegReceipt | ReleaseOutcome): LegReceipt[] =>
    'owed' in result ? (result.owed ? [] : [result.node, result.platform]) : [result];

  const diff = (a: Record<string, bigint>, b: Record<string, bigint>) => Object.fromEntries(Object.keys(a).map((k) => [k, b[k] - a[k]]));

  const steps: Step[] = ['escrow', 'release', 'refund'];
  const points: HookPoint[] = ['afterRecord', 'afterSend', 'afterConfirm'];
  const cases = steps.flatMap((step) => points.map((point) => [step, point] as const));

  test.each(cases)('%s: the worker dies %s, a restarted worker retries → exactly one transfer, ledger agrees', async (step, point) => {
    const amount = 1_000_003n;
    const job = await jobReadyFor(step, amount);
    const before = await job.snapshot();

    await expect(job.call(crashingAt(point))).rejects.toThrow(WorkerDied);

    // Where the crash left the ledger: a signed attempt recorded before anything was sent.
    const left = await legRows(job.jobId, job.legs);
    for (const row of left) expect(row).toMatchObject({ state: 'sent', txRef: expect.any(String), txBytes: expect.any(String) });
    const crashedSignature = left[0].txRef!;
    const landedAtCrash = await landedWithMemo(chain.connection, proxy.sent, job.memo);
    expect(landedAtCrash).toEqual(point === 'afterRecord' ? [] : [crashedSignature]);

    const { value: result } = await withRetries(() => job.call(restarted()));

    expect(diff(before, await job.snapshot())).toEqual(expectedDelta(step, amount));
    const landed = await landedWithMemo(chain.connection, proxy.sent, job.memo);
    expect(landed).toEqual([crashedSignature]); // the recorded attempt is the one that landed, once
    for (const row of await legRows(job.jobId, job.legs)) expect(row).toMatchObject({ state: 'confirmed', txRef: crashedSignature });
    expect(receiptsOf(result).map((r) => r.txRef)).toEqual(job.legs.map(() => crashedSignature));

    // A further retry changes nothing.
    const after = await job.snapshot();
    await job.call(restarted());
    expect(await job.snapshot()).toEqual(after);
    expect(await landedWithMemo(chain.connection, proxy.sent, job.memo)).toEqual([crashedSignature]);
  });

  test.each(steps)('%s: recorded, never sent, blockhash expired → the retry signs a new transaction and exactly one lands', async (step) => {
    const amount = 2_000_001n;
    const job = await jobReadyFor(step, amount);
    const before = await job.snapshot();

    await expect(job.call(crashingAt('afterRecord'))).rejects.toThrow(WorkerDied);
    const [left] = await legRows(job.jobId, job.legs);
    const stale = { signature: left.txRef!, bytes: Buffer.from(left.txBytes!, 'base64') };
    chain.ledger.advance(200);
    const { recentBlockhash } = VersionedTransaction.deserialize(stale.bytes).message;
    expect((await chain.connection.isBlockhashValid(recentBlockhash)).value).toBe(false);

    const { value: result } = await withRetries(() => job.call(restarted()));

    expect(diff(before, await job.snapshot())).toEqual(expectedDelta(step, amount));
    const landed = await landedWithMemo(chain.connection, proxy.sent, job.memo);
    expect(landed).toHaveLength(1);
    expect(landed[0]).not.toBe(stale.signature);
    const rows = await legRows(job.jobId, job.legs);
    for (const row of rows) expect(row).toMatchObject({ state: 'confirmed', txRef: landed[0] });
    expect(rows[0].sendAttempts).toBe(2);
    expect(receiptsOf(result).map((r) => r.txRef)).toEqual(job.legs.map(() => landed[0]));
    // The abandoned attempt can never land now.
    await expect(chain.connection.sendRawTransaction(stale.bytes, { skipPreflight: false })).rejects.toThrow(/Blockhash not found/);
    const { value } = await chain.connection.getSignatureStatuses([stale.signature], { searchTransactionHistory: true });
    expect(value[0]).toBeNull();
  });

  test.each(steps)('%s: sent and landed, then the blockhash expired → the retry finds the landed signature, signs nothing, even while a lagging RPC node answers "unknown"', async (step) => {
    const amount = 3_000_007n;
    const job = await jobReadyFor(step, amount);
    const before = await job.snapshot();

    await expect(job.call(crashingAt('afterSend'))).rejects.toThrow(WorkerDied);
    const [left] = await legRows(job.jobId, job.legs);
    chain.ledger.advance(200);
    const sentBefore = proxy.sent.length;

    // Behind a load balancer, status answers from a node 500 slots behind, which has not seen the landing: the
    // attempt is not taken for expired (that would sign a second transaction), only for not confirmed yet.
    proxy.setFaults(({ method }) => (method === 'getSignatureStatuses' ? { kind: 'lagging', slots: 500 } : { kind: 'pass' }));
    try {
      await expect(job.call(settlementOn(chain, database.db, { rpcUrl: proxy.url, confirmTimeoutMs: 1000 }))).rejects.toThrow(/not confirmed yet/);
    } finally {
      proxy.setFaults(() => ({ kind: 'pass' }));
    }
    for (const row of await legRows(job.jobId, job.legs)) expect(row).toMatchObject({ state: 'sent', txRef: left.txRef });

    await withRetries(() => job.call(restarted()));

    expect(proxy.sent.slice(sentBefore).filter((t) => t.signature !== left.txRef)).toEqual([]); // nothing new signed
    expect(diff(before, await job.snapshot())).toEqual(expectedDelta(step, amount));
    expect(await landedWithMemo(chain.connection, proxy.sent, job.memo)).toEqual([left.txRef]);
    for (const row of await legRows(job.jobId, job.legs)) expect(row).toMatchObject({ state: 'confirmed', txRef: left.txRef, sendAttempts: 1 });
  });

  test.each(['release', 'refund'] as const)('%s: preflighted only by an RPC node that has seen the escrow (a lagging one would find the escrow account missing: a permanent refusal)', async (step) => {
    const job = await jobReadyFor(step, 6_000_013n);
    const [escrowRow] = await legRows(job.jobId, ['escrow']);
    expect(escrowRow.slot).toEqual(expect.any(Number));

    await withRetries(() => job.call(restarted()));

    const sends = proxy.sent.filter((t) => t.memo === job.memo);
    expect(sends.length).toBeGreaterThan(0);
    for (const t of sends) expect(t.minContextSlot).toBe(escrowRow.slot);
    // A node that has not reached that slot refuses the send; nothing is recorded as failed.
    await expect(chain.connection.sendRawTransaction(sends[0].bytes, { minContextSlot: Number.MAX_SAFE_INTEGER })).rejects.toThrow(/Minimum context slot/);
  });

  test.each(steps)('%s: two workers run the same leg at once (a timed-out attempt still running) → one transfer', async (step) => {
    const amount = 4_000_037n;
    const job = await jobReadyFor(step, amount);
    const before = await job.snapshot();

    const results = await Promise.all([withRetries(() => job.call(restarted())), withRetries(() => job.call(restarted()))]);

    expect(diff(before, await job.snapshot())).toEqual(expectedDelta(step, amount));
    const landed = await landedWithMemo(chain.connection, proxy.sent, job.memo);
    expect(landed).toHaveLength(1);
    expect(results[0].value).toEqual(results[1].value);
    for (const row of await legRows(job.jobId, job.legs)) expect(row).toMatchObject({ state: 'confirmed', txRef: landed[0] });
  });
});
