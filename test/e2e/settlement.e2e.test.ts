import { randomBytes } from 'node:crypto';
import { getAccount } from '@solana/spl-token';
import { Keypair } from '@solana/web3.js';
import { getBase58Decoder } from '@solana/kit';
import { jobIdAsUint64 } from '../../src/services/wallet-service';
import { protocolClient } from '../support/grpc-clients';
import type { SimNode } from '../support/sim-node';
import { useSystem } from '../support/system';
import { moves, testChain, type TestChain } from './chain';
import {
  eventually,
  GiB,
  jobConfig,
  jobStatus,
  nodePool,
  paymentLegs,
  restGet,
  restPost,
  S,
  submitJob,
  unfittable,
  waitForAssignment,
  type ProtocolClient,
} from './helpers';

/** wallet.proto TransactionType / TransactionStatus. */
const TX_TYPE = { JOB_PAYMENT: 1, REWARD_CLAIM: 2, REFUND: 5 } as const;
const TX_STATUS = { CONFIRMED: 1 } as const;

const uid = () => randomBytes(4).toString('hex');
const b58 = getBase58Decoder();

const sys = useSystem({ name: 'settlement' });
const nodes = nodePool(sys);
let engine: ProtocolClient;
let walletApi: ProtocolClient;
let chain: TestChain;
/** The Engine's own wallet on the local ledger: pays jobs directly into their escrow accounts. */
let payerWallet: Keypair;
let payerAddress: string;
/** Every node of this file; any of them may take a 1 GiB job. */
const fleet: SimNode[] = [];

beforeAll(async () => {
  engine = protocolClient('JobService', sys().grpcAddress);
  walletApi = protocolClient('WalletService', sys().grpcAddress);
  chain = testChain();
  payerWallet = chain.demoWallet('engine');
  payerAddress = payerWallet.publicKey.toBase58();
  fleet.push(await nodes.start({ name: 'paid-node' }));
});

afterAll(async () => {
  engine?.close();
  walletApi?.close();
  await nodes.stopAll();
});

const holderOf = (nodeId: string) => {
  const holder = fleet.find((n) => n.nodeId === nodeId);
  if (!holder) throw new Error(`job went to unknown node ${nodeId}`);
  return holder;
};

/** Takes a job through accept → complete on whichever node holds it. */
async function runToCompletion(jobId: string): Promise<{ holder: SimNode; completion: any }> {
  const { node_assignment } = await waitForAssignment(engine, jobId);
  const holder = holderOf(node_assignment.node_id);
  expect(await holder.accepted(jobId)).toMatchObject({ status: S.SUCCESS });
  const completion = await holder.complete(jobId, { deadlineMs: 30_000 });
  return { holder, completion };
}

/** Opens the job's escrow account through REST and checks it on chain: a CYXWIZ account of the escrow authority. */
async function openEscrow(jobId: string): Promise<string> {
  const opened = await restPost(sys(), `/api/escrows/${jobId}`);
  const escrowAccount = chain.escrowAccount(jobId);
  expect(opened).toEqual({ status: 200, body: { jobId, escrowAccount: escrowAccount.toBase58(), mint: chain.mint.toBase58(), decimals: chain.decimals } });
  return opened.body.escrowAccount;
}

/** What the system holds about a job id: its row, events, payments (all zero for a refused submission). */
async function recorded(jobId: string): Promise<{ jobs: number; events: number; payments: number }> {
  const [row] = await sys().query<{ jobs: number; events: number; payments: number }>(
    `SELECT (SELECT count(*)::int FROM jobs WHERE id = $1) AS jobs,
            (SELECT count(*)::int FROM job_events WHERE job_id = $1) AS events,
            (SELECT count(*)::int FROM payments WHERE job_id = $1) AS payments`,
    [jobId],
  );
  return row;
}

/** State from the owed-payment test, for the WalletService test. */
let owed: { wallet: string; jobId: string; signature: string } | undefined;
/** State from the payer-paid tests, for the WalletService test. */
const payerLegs: { escrowTx: string[]; refundTx: string[] } = { escrowTx: [], refundTx: [] };

describe('a node without a wallet', () => {
  test('is owed its payment: nothing moves on chain until it registers a wallet, then the legs are paid within seconds', async () => {
    // Only this node has the 32 GiB of VRAM the job needs.
    const node = await nodes.start({ name: 'walletless', wallet: '', vramBytes: 64 * GiB });
    fleet.push(node);
    const treasuryBefore = await chain.accountBalance(chain.ata(chain.treasury));
    const jobId = await submitJob(engine, jobConfig({ estimated_memory: String(32 * GiB) }));
    const escrowAccount = chain.escrowAccount(jobId);
    expect((await waitForAssignment(engine, jobId)).node_assignment.node_id).toBe(node.nodeId);
    expect(await node.accepted(jobId)).toMatchObject({ status: S.SUCCESS });

    const completion = await node.complete(jobId, { deadlineMs: 30_000 });
    expect(completion).toMatchObject({ status: S.SUCCESS, payment_released: false, payment_tx_hash: '' });
    expect((await jobStatus(engine, jobId)).status).toMatchObject({ status: S.SUCCESS, progress: 1 });
    const owedLegs = await paymentLegs(sys(), jobId);
    expect(owedLegs.escrow).toMatchObject({ amount: '1500000000', state: 'confirmed' });
    expect(owedLegs.release_node).toMatchObject({ amount: '1350000000', state: 'owed', txRef: null });
    expect(owedLegs.release_platform).toMatchObject({ amount: '150000000', state: 'owed', txRef: null });
    expect(owedLegs.refund).toBeUndefined();
    // A retried report gets the same answer: still owed, no signature.
    expect(await node.complete(jobId, { deadlineMs: 30_000 })).toMatchObject({ status: S.SUCCESS, payment_released: false, payment_tx_hash: '' });
    // The money waits in the job's escrow account; the treasury got nothing yet either.
    expect(await chain.balances({ escrow: escrowAccount, treasury: chain.ata(chain.treasury) })).toEqual({ escrow: 1_500_000_000n, treasury: treasuryBefore });

    // It registers again from the same ip:port, without its id, now with a wallet that has no token account for
    // the mint yet: still owed (the platform opens no account for a payee), and the job says why.
    const wallet = Keypair.generate().publicKey.toBase58();
    node.wallet = wallet;
    const nodeId = node.nodeId;
    expect(await node.register({ claimId: false })).toBe(nodeId);
    const still = await eventually('the job to say why it is still owed', async () => {
      const { body } = await restGet(sys(), `/api/jobs/${jobId}`);
      return /still owed until its wallet can receive them/.test(body.events.at(-1).reason) ? body.events.at(-1).reason : undefined;
    }, 10_000);
    expect(still).toContain(`${wallet} has no token account for ${chain.mint.toBase58()}`);
    expect((await paymentLegs(sys(), jobId)).release_node).toMatchObject({ state: 'owed', txRef: null });
    expect(await chain.connection.getAccountInfo(chain.ata(wallet))).toBeNull();

    // The operator opens it and the node registers again (a daemon restart): paid.
    await chain.openTokenAccount(wallet);
    expect(await node.register({ claimId: false })).toBe(nodeId);
    const paid = await eventually(
      'the owed legs to be paid',
      async () => {
        const legs = await paymentLegs(sys(), jobId);
        return legs.release_node?.state === 'confirmed' && legs.release_platform?.state === 'confirmed' ? legs : undefined;
      },
      10_000,
    );
    expect(paid.release_node).toMatchObject({ amount: '1350000000', toAccount: wallet, txRef: expect.any(String) });
    expect(paid.release_platform).toMatchObject({ amount: '150000000', toAccount: chain.treasury.toBase58(), txRef: paid.release_node!.txRef });
    expect(await chain.balances({ node: chain.ata(wallet), escrow: escrowAccount, treasury: chain.ata(chain.treasury) })).toEqual({
      node: 1_350_000_000n,
      escrow: 0n,
      treasury: treasuryBefore + 150_000_000n,
    });
    expect(await chain.tokenMoves(paid.release_node!.txRef!)).toEqual(
      moves([[escrowAccount, -1_500_000_000n], [chain.ata(wallet), 1_350_000_000n], [chain.ata(chain.treasury), 150_000_000n]]),
    );
    // The job stays completed; its history says the owed payment went out.
    const { body } = await restGet(sys(), `/api/jobs/${jobId}`);
    expect(body.status).toBe('completed');
    expect(body.events.at(-1).reason).toMatch(/owed payment released/);
    owed = { wallet, jobId, signature: paid.release_node!.txRef! };
    // Reported again now, the completion shows the payment.
    expect(await node.complete(jobId, { deadlineMs: 30_000 })).toMatchObject({ status: S.SUCCESS, payment_released: true, payment_tx_hash: owed.signature });

    // Registering once more changes nothing: still one release.
    await node.register();
    await new Promise((r) => setTimeout(r, 500));
    expect(await chain.accountBalance(chain.ata(wallet))).toBe(1_350_000_000n);
    expect((await paymentLegs(sys(), jobId)).release_node!.txRef).toBe(owed.signature);
  });

  test('a node that registered a wallet keeps it when it registers again without one (in proto3 an empty field is an absent one)', async () => {
    // Shipping daemons always send wallet_address "" (CYXWIZ-PROTOCOL.md §3): a daemon restart must not
    // silently turn the node's payments into owed ones. Only this node has the 100 GiB of VRAM the job needs.
    const node = await nodes.start({ name: 'restarting', vramBytes: 128 * GiB });
    fleet.push(node);
    const wallet = node.wallet;
    node.wallet = '';
    expect(await node.register()).toBe(node.nodeId);
    node.wallet = wallet;

    try {
      const jobId = await submitJob(engine, jobConfig({ estimated_memory: String(100 * GiB) }));
      expect((await waitForAssignment(engine, jobId)).node_assignment.node_id).toBe(node.nodeId);
      expect(await node.accepted(jobId)).toMatchObject({ status: S.SUCCESS });
      const completion = await node.complete(jobId, { deadlineMs: 30_000 });
      expect({ completion, legs: await paymentLegs(sys(), jobId) }).toMatchObject({
        completion: { status: S.SUCCESS, payment_released: true },
        legs: { release_node: { toAccount: wallet, state: 'confirmed' } },
      });
      expect(await chain.accountBalance(chain.ata(wallet))).toBe(1_350_000_000n);
    } finally {
      // Whatever the outcome, the node has its wallet for the tests after this one, and whatever it was owed
      // is paid before they measure balances.
      await node.register();
      await eventually('no leg of this system to wait for a wallet or the chain', async () =>
        (await sys().query("SELECT 1 FROM payments WHERE state IN ('owed', 'pending', 'sent')")).length === 0,
      );
    }
  });
});

describe('a payer who pays the escrow account directly (config.escrow_tx_hash)', () => {
  test('opens the escrow via REST, pays it, and the job is accepted, run, and released from that escrow', async () => {
    const jobId = `paid-${uid()}`;
    const escrowAccount = await openEscrow(jobId);
    const account = await getAccount(chain.connection, chain.escrowAccount(jobId), 'confirmed');
    expect({ mint: account.mint.toBase58(), owner: account.owner.toBase58(), amount: account.amount }).toEqual({
      mint: chain.mint.toBase58(),
      owner: chain.authority.toBase58(),
      amount: 0n,
    });
    // Opening it again is a no-op.
    expect((await restPost(sys(), `/api/escrows/${jobId}`)).body.escrowAccount).toBe(escrowAccount);

    const wallets = Object.fromEntries(fleet.map((n, i) => [`node${i}`, chain.ata(n.wallet)]));
    const before = await chain.balances({ ...wallets, payer: chain.ata(payerAddress), serverPayer: chain.ata(chain.payer), treasury: chain.ata(chain.treasury) });
    const signature = await chain.transfer(payerWallet, [{ account: escrowAccount, amount: 2_000_000_000n }]);
    payerLegs.escrowTx.push(signature);
    const submitted = await engine.call('SubmitJob', {
      config: jobConfig({ job_id: jobId, payment_amount: 2, payment_address: payerAddress, escrow_tx_hash: signature }),
    });
    expect(submitted).toMatchObject({ status: S.SUCCESS, job_id: jobId });

    const { holder, completion } = await runToCompletion(jobId);
    expect(completion).toMatchObject({ status: S.SUCCESS, payment_released: true });
    const legs = await paymentLegs(sys(), jobId);
    expect(legs).toEqual({
      escrow: expect.objectContaining({ amount: '2000000000', state: 'confirmed', fromAccount: payerAddress, toAccount: escrowAccount, txRef: signature }),
      release_node: expect.objectContaining({ amount: '1800000000', state: 'confirmed', toAccount: holder.wallet, txRef: completion.payment_tx_hash }),
      release_platform: expect.objectContaining({ amount: '200000000', state: 'confirmed', toAccount: chain.treasury.toBase58(), txRef: completion.payment_tx_hash }),
    });

    // On chain: the payer's 2 tokens went into the escrow and out 90/10; the server's payer was not touched.
    const after = await chain.balances({ ...wallets, payer: chain.ata(payerAddress), serverPayer: chain.ata(chain.payer), treasury: chain.ata(chain.treasury) });
    const holderKey = `node${fleet.indexOf(holder)}`;
    const deltas = Object.fromEntries(Object.entries(after).map(([k, v]) => [k, v - before[k as keyof typeof before]]));
    expect(deltas).toEqual({
      ...Object.fromEntries(Object.keys(wallets).map((k) => [k, k === holderKey ? 1_800_000_000n : 0n])),
      payer: -2_000_000_000n,
      serverPayer: 0n,
      treasury: 200_000_000n,
    });
    expect(await chain.accountBalance(escrowAccount)).toBe(0n);
    expect(await chain.tokenMoves(signature)).toEqual(moves([[chain.ata(payerAddress), -2_000_000_000n], [chain.escrowAccount(jobId), 2_000_000_000n]]));
    expect(await chain.tokenMoves(completion.payment_tx_hash)).toEqual(
      moves([[chain.escrowAccount(jobId), -2_000_000_000n], [chain.ata(holder.wallet), 1_800_000_000n], [chain.ata(chain.treasury), 200_000_000n]]),
    );
  });

  test('a cancelled payer-paid job refunds to the payer; CancelJob tells the refund signature in x-cyxwiz-refund-tx', async () => {
    const jobId = `paid-cancel-${uid()}`;
    const escrowAccount = await openEscrow(jobId);
    const payerBefore = await chain.accountBalance(chain.ata(payerAddress));
    const signature = await chain.transfer(payerWallet, [{ account: escrowAccount, amount: 3_000_000_000n }]);
    payerLegs.escrowTx.push(signature);
    const submitted = await engine.call('SubmitJob', {
      config: unfittable({ job_id: jobId, payment_amount: 3, payment_address: payerAddress, escrow_tx_hash: signature }),
    });
    expect(submitted).toMatchObject({ status: S.SUCCESS, job_id: jobId });
    await eventually('the job to be queued', async () => (await restGet(sys(), `/api/jobs/${jobId}`)).body.status === 'queued');
    expect(await chain.balances({ payer: chain.ata(payerAddress), escrow: escrowAccount })).toEqual({ payer: payerBefore - 3_000_000_000n, escrow: 3_000_000_000n });

    const { response, metadata } = await engine.callWithMetadata('CancelJob', { job_id: jobId, reason: 'payer changed their mind' }, { deadlineMs: 30_000 });
    expect(response).toMatchObject({ status: S.SUCCESS, refund_issued: true });
    const legs = await paymentLegs(sys(), jobId);
    expect(Object.keys(legs).sort()).toEqual(['escrow', 'refund']);
    expect(legs.refund).toMatchObject({ amount: '3000000000', state: 'confirmed', fromAccount: escrowAccount, toAccount: payerAddress });
    expect(metadata.get('x-cyxwiz-refund-tx')).toEqual([legs.refund!.txRef]);
    payerLegs.refundTx.push(legs.refund!.txRef!);

    expect(await chain.balances({ payer: chain.ata(payerAddress), escrow: escrowAccount })).toEqual({ payer: payerBefore, escrow: 0n });
    expect(await chain.tokenMoves(legs.refund!.txRef!)).toEqual(moves([[chain.escrowAccount(jobId), -3_000_000_000n], [chain.ata(payerAddress), 3_000_000_000n]]));
  });

  describe('a bad escrow_tx_hash is refused by SubmitJob with Error{400} naming config.escrow_tx_hash, and nothing is recorded', () => {
    /** Submits `jobId` paid by `signature`; expects the refusal and that nothing about the job was kept. */
    async function expectRefused(jobId: string, signature: string, why: RegExp, overrides: Record<string, unknown> = {}) {
      const paymentsBefore = (await sys().query<{ n: number }>('SELECT count(*)::int AS n FROM payments'))[0].n;
      const res = await engine.call('SubmitJob', {
        config: jobConfig({ job_id: jobId, payment_amount: 2, payment_address: payerAddress, escrow_tx_hash: signature, ...overrides }),
      });
      expect(res).toMatchObject({ status: S.FAILED, job_id: '', error: { code: 400 } });
      expect(res.error.message).toMatch(/^config\.escrow_tx_hash: /);
      expect(res.error.message).toMatch(why);
      expect(await recorded(jobId)).toEqual({ jobs: 0, events: 0, payments: 0 });
      expect((await sys().query<{ n: number }>('SELECT count(*)::int AS n FROM payments'))[0].n).toBe(paymentsBefore);
      expect((await jobStatus(engine, jobId)).error.code).toBe(404);
    }

    test('a signature the chain does not know', async () => {
      const unknown = b58.decode(randomBytes(64));
      await expectRefused(`bad-unknown-${uid()}`, unknown, /not found as a confirmed transaction/);
      await expectRefused(`bad-garbage-${uid()}`, 'not-a-signature', /escrow_tx_hash/);
    });

    test('a transaction that moved less than the job needs', async () => {
      const jobId = `bad-short-${uid()}`;
      const escrowAccount = await openEscrow(jobId);
      const signature = await chain.transfer(payerWallet, [{ account: escrowAccount, amount: 2_000_000_000n - 1n }]);
      await expectRefused(jobId, signature, /moved 1999999999 units into the escrow, the job needs 2000000000/);
    });

    test('the refused payer takes the transfer back over REST: POST /api/escrows/:jobId/reclaim, once', async () => {
      const jobId = `reclaim-${uid()}`;
      const escrowAccount = await openEscrow(jobId);
      const before = await chain.accountBalance(chain.ata(payerAddress));
      const signature = await chain.transfer(payerWallet, [{ account: escrowAccount, amount: 1_999_999_999n }]);
      await expectRefused(jobId, signature, /moved 1999999999 units/);

      const reclaim = (body: object) => restPost(sys(), `/api/escrows/${jobId}/reclaim`, body);
      expect(await reclaim({ escrowTxHash: signature })).toMatchObject({ status: 400, body: { error: { field: 'paymentAddress' } } });
      expect(await reclaim({ escrowTxHash: 'nope', paymentAddress: payerAddress })).toMatchObject({ status: 400, body: { error: { field: 'escrowTxHash' } } });
      const back = await reclaim({ escrowTxHash: signature, paymentAddress: payerAddress });
      expect(back).toMatchObject({ status: 200, body: { jobId, refund: { amount: '1999999999', to: payerAddress } } });
      expect(await chain.balances({ payer: chain.ata(payerAddress), escrow: escrowAccount })).toEqual({ payer: before, escrow: 0n });
      expect(await chain.memos(back.body.refund.txRef)).toEqual([`cyxwiz ${jobId}/reclaim/${signature}/refund`]);
      expect((await reclaim({ escrowTxHash: signature, paymentAddress: payerAddress })).body.refund).toEqual(back.body.refund);
      // No job holds this id (its submission was refused): its escrow account's ledger shows the reclaim all the same.
      const ledger = await restGet(sys(), `/api/jobs/${jobId}/payments`);
      expect(ledger).toMatchObject({ status: 200, body: { jobId } });
      expect(ledger.body.payments.map((p: { leg: string; reclaim?: string }) => [p.leg, p.reclaim])).toEqual([
        ['escrow', `${jobId}/reclaim/${signature}`],
        ['refund', `${jobId}/reclaim/${signature}`],
      ]);
      expect((await restGet(sys(), `/api/jobs/never-${uid()}/payments`)).status).toBe(404);
      // The payer's history shows the transfer and its way back.
      payerLegs.escrowTx.push(signature);
      payerLegs.refundTx.push(back.body.refund.txRef);

      // The transfer that funds a job stays with the job while it runs.
      expect(payerLegs.escrowTx.length).toBeGreaterThan(0);
      const [funded] = await sys().query<{ job_id: string }>(`select job_id from payments where leg = 'escrow' and tx_ref = $1`, [payerLegs.escrowTx[0]]);
      expect((await restPost(sys(), `/api/escrows/${funded.job_id}/reclaim`, { escrowTxHash: payerLegs.escrowTx[0], paymentAddress: payerAddress })).status).toBe(409);
    });

    test("a transaction that paid another job's escrow account", async () => {
      expect(payerLegs.escrowTx.length).toBeGreaterThan(0);
      const jobId = `bad-other-${uid()}`;
      await openEscrow(jobId);
      await expectRefused(jobId, payerLegs.escrowTx[0], /does not pay this job's escrow account/);
    });

    test('a transaction already used for a job funds no other job: one transfer into two escrows funds each once', async () => {
      const [first, second] = [`reuse-a-${uid()}`, `reuse-b-${uid()}`];
      const [escrowA, escrowB] = [await openEscrow(first), await openEscrow(second)];
      const signature = await chain.transfer(payerWallet, [
        { account: escrowA, amount: 2_000_000_000n },
        { account: escrowB, amount: 2_000_000_000n },
      ]);
      const accepted = await engine.call('SubmitJob', {
        config: unfittable({ job_id: first, payment_amount: 2, payment_address: payerAddress, escrow_tx_hash: signature }),
      });
      expect(accepted).toMatchObject({ status: S.SUCCESS, job_id: first });
      await eventually('the first job to hold its escrow', async () => (await paymentLegs(sys(), first)).escrow?.state === 'confirmed');

      // The second escrow account's share funds the second job (before, it was stranded there); a third job's
      // account the transaction never paid is refused.
      expect(
        await engine.call('SubmitJob', { config: unfittable({ job_id: second, payment_amount: 2, payment_address: payerAddress, escrow_tx_hash: signature }) }),
      ).toMatchObject({ status: S.SUCCESS, job_id: second });
      await eventually('the second job to hold its escrow', async () => (await paymentLegs(sys(), second)).escrow?.state === 'confirmed');
      const third = `reuse-c-${uid()}`;
      await openEscrow(third);
      await expectRefused(third, signature, /does not pay this job's escrow account/);
      expect(await engine.call('CancelJob', { job_id: second }, { deadlineMs: 30_000 })).toMatchObject({ status: S.SUCCESS, refund_issued: true });
      payerLegs.refundTx.push((await paymentLegs(sys(), second)).refund!.txRef!);
      // Submitting the first job again is still the same job.
      expect(
        await engine.call('SubmitJob', { config: unfittable({ job_id: first, payment_amount: 2, payment_address: payerAddress, escrow_tx_hash: signature }) }),
      ).toMatchObject({ status: S.SUCCESS, job_id: first });
      expect(await engine.call('CancelJob', { job_id: first }, { deadlineMs: 30_000 })).toMatchObject({ status: S.SUCCESS, refund_issued: true });
      payerLegs.refundTx.push((await paymentLegs(sys(), first)).refund!.txRef!);
      payerLegs.escrowTx.push(signature, signature); // one payment per job it funded
    });

    test('a transaction whose tokens did not come from payment_address', async () => {
      const jobId = `bad-payer-${uid()}`;
      const escrowAccount = await openEscrow(jobId);
      const signature = await chain.transfer(payerWallet, [{ account: escrowAccount, amount: 2_000_000_000n }]);
      await expectRefused(jobId, signature, /did not come from payment_address/, { payment_address: Keypair.generate().publicKey.toBase58() });
    });
  });
});

test('CancelJob of a server-escrowed job sends the refund signature as x-cyxwiz-refund-tx; that transaction is on chain', async () => {
  const payerBefore = await chain.accountBalance(chain.ata(chain.payer));
  const jobId = await submitJob(engine, jobConfig());
  const { node_assignment } = await waitForAssignment(engine, jobId);
  const holder = holderOf(node_assignment.node_id);
  const nodeBefore = await chain.accountBalance(chain.ata(holder.wallet));

  const { response, metadata } = await engine.callWithMetadata('CancelJob', { job_id: jobId, reason: 'not needed' }, { deadlineMs: 30_000 });
  expect(response).toMatchObject({ status: S.SUCCESS, refund_issued: true });
  const refundTx = metadata.get('x-cyxwiz-refund-tx');
  expect(refundTx).toHaveLength(1);
  const legs = await paymentLegs(sys(), jobId);
  expect(legs.refund).toMatchObject({ state: 'confirmed', amount: '1500000000', toAccount: chain.payer.toBase58(), txRef: refundTx[0] });
  expect(await chain.tokenMoves(String(refundTx[0]))).toEqual(
    moves([[chain.escrowAccount(jobId), -1_500_000_000n], [chain.ata(chain.payer), 1_500_000_000n]]),
  );
  expect(await chain.balances({ payer: chain.ata(chain.payer), escrow: chain.escrowAccount(jobId), node: chain.ata(holder.wallet) })).toEqual({
    payer: payerBefore,
    escrow: 0n,
    node: nodeBefore,
  });

  // Asked again (a retry), the cancel that ended it answers: the same refund and signature; nothing moves twice.
  const again = await engine.callWithMetadata('CancelJob', { job_id: jobId }, { deadlineMs: 10_000 });
  expect(again.response).toMatchObject({ status: S.SUCCESS, refund_issued: true });
  expect(again.metadata.get('x-cyxwiz-refund-tx')).toEqual(refundTx);
  expect((await paymentLegs(sys(), jobId)).refund).toMatchObject({ txRef: refundTx[0] });
  expect(await chain.accountBalance(chain.ata(chain.payer))).toBe(payerBefore);
});

describe('WalletService', () => {
  test('GetBalance reads the paid node wallet from the chain; GetTransactionHistory lists its payment with the signature', async () => {
    expect(owed).toBeDefined();
    const { wallet, jobId, signature } = owed!;
    // The node may have been paid for later jobs of this file too: compare with the chain and the ledger.
    const onChain = await chain.accountBalance(chain.ata(wallet));
    expect(onChain).toBeGreaterThanOrEqual(1_350_000_000n);
    const balance = await walletApi.call('GetBalance', { wallet_address: wallet });
    expect(balance).toMatchObject({ status: S.SUCCESS, cyxwiz_balance: Number(onChain) / 1e9, sol_balance: 0, token_mint: chain.mint.toBase58() });

    const history = await walletApi.call('GetTransactionHistory', { wallet_address: wallet, limit: 10, offset: 0 });
    expect(history.status).toBe(S.SUCCESS);
    expect(history.transactions).toContainEqual(
      expect.objectContaining({ signature, type: TX_TYPE.REWARD_CLAIM, status: TX_STATUS.CONFIRMED, amount: 1.35, job_id: jobIdAsUint64(jobId) }),
    );
    const owedPayment = history.transactions.find((t: any) => t.signature === signature);
    expect(owedPayment.description).toContain(jobId);
    expect(Number(owedPayment.timestamp)).toBeGreaterThan(Date.now() / 1000 - 600);
    // Every payment it lists is one the wallet received; together they are its balance.
    const ledgerLegs = await sys().query<{ tx_ref: string }>("SELECT tx_ref FROM payments WHERE to_account = $1 AND leg = 'release_node'", [wallet]);
    expect(history.total_count).toBe(ledgerLegs.length);
    expect(history.transactions.map((t: any) => t.signature).sort()).toEqual(ledgerLegs.map((l) => l.tx_ref).sort());
    expect(history.transactions.every((t: any) => t.type === TX_TYPE.REWARD_CLAIM && t.status === TX_STATUS.CONFIRMED)).toBe(true);
    const total = history.transactions.reduce((sum: number, t: any) => sum + t.amount, 0);
    expect(total).toBeCloseTo(Number(onChain) / 1e9, 9);
    // It pages no deeper than 10,000 legs (a count and an offset over every leg of the treasury would not end).
    expect(await walletApi.call('GetTransactionHistory', { wallet_address: wallet, limit: 10, offset: 10_001 })).toMatchObject({
      status: S.FAILED,
      message: expect.stringContaining('offset'),
    });
  });

  test("GetTransactionHistory of a payer-paid wallet lists its escrows and refunds with their signatures, paged", async () => {
    expect(payerLegs.escrowTx.length).toBeGreaterThanOrEqual(2);
    expect(payerLegs.refundTx.length).toBeGreaterThanOrEqual(1);
    const all = await walletApi.call('GetTransactionHistory', { wallet_address: payerAddress, limit: 100, offset: 0 });
    expect(all.status).toBe(S.SUCCESS);
    const bySignature = (type: number) => all.transactions.filter((t: any) => t.type === type).map((t: any) => t.signature).sort();
    expect(bySignature(TX_TYPE.JOB_PAYMENT)).toEqual([...payerLegs.escrowTx].sort());
    expect(bySignature(TX_TYPE.REFUND)).toEqual([...payerLegs.refundTx].sort());
    expect(all.total_count).toBe(all.transactions.length);
    const page = await walletApi.call('GetTransactionHistory', { wallet_address: payerAddress, limit: 1, offset: 1 });
    expect(page).toMatchObject({ status: S.SUCCESS, total_count: all.total_count });
    expect(page.transactions).toEqual([all.transactions[1]]);

    const balance = await walletApi.call('GetBalance', { wallet_address: payerAddress });
    expect(balance.cyxwiz_balance).toBe(Number(await chain.accountBalance(chain.ata(payerAddress))) / 10 ** chain.decimals);
    expect(balance.sol_balance).toBeGreaterThan(0);
  });

  test('ConnectWallet validates the address', async () => {
    expect(await walletApi.call('ConnectWallet', { wallet_address: payerAddress })).toMatchObject({ status: S.SUCCESS, is_valid: true, wallet_address: payerAddress });
    for (const bad of ['not-a-wallet', '', '0OIl', 'x'.repeat(50)]) {
      const res = await walletApi.call('ConnectWallet', { wallet_address: bad });
      expect({ bad, is_valid: res.is_valid, status: res.status }).toEqual({ bad, is_valid: false, status: S.ERROR });
    }
    const balance = await walletApi.call('GetBalance', { wallet_address: 'not-a-wallet' });
    expect(balance.status).not.toBe(S.SUCCESS);
    expect(balance.message).toMatch(/wallet_address/);
  });
});
