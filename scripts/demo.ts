/**
 * `npm run demo`, against a running `npm start` (embedded defaults): one simulated node with the demo node
 * wallet registers, an Engine submits a job paid by the server's payer account, the node runs and
 * completes it, and the script prints the token balances before and after: the escrow fills and empties,
 * the node receives 90 %, the treasury 10 %. Then the demo Engine wallet reserves the same node for 10 minutes
 * (the Engine's hotel-room flow: ReserveNode → EngineHeartbeat → ReleaseReservation), paid through the allowance
 * that wallet gave the escrow authority.
 */
import { Connection, PublicKey } from '@solana/web3.js';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { LocalChainSetup } from '../src/chain/bootstrap';
import { escrowAddress, tokenAccountOf } from '../src/chain/instructions';
import { loadConfig } from '../src/config';
import { protocolClient } from '../test/support/grpc-clients';
import { SimNode } from '../test/support/sim-node';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const config = loadConfig();
  const central = `127.0.0.1:${config.grpc.port}`;
  const setup = JSON.parse(readFileSync(path.join(config.dataDir, 'keys', 'chain.json'), 'utf8')) as LocalChainSetup;
  const connection = new Connection(config.chain.rpcUrl ?? `http://127.0.0.1:${config.chain.localLedgerPort}`, 'confirmed');
  const mint = new PublicKey(setup.mint);
  const units = async (account: PublicKey) =>
    BigInt((await connection.getTokenAccountBalance(account).catch(() => ({ value: { amount: '0' } }))).value.amount);
  const wallets = {
    node: tokenAccountOf(new PublicKey(setup.demoWallets.node), mint),
    treasury: tokenAccountOf(new PublicKey(setup.treasury), mint),
    payer: tokenAccountOf(new PublicKey(setup.payer), mint),
    engine: tokenAccountOf(new PublicKey(setup.demoWallets.engine), mint),
  };
  const balances = async (jobId?: string) => ({
    ...Object.fromEntries(await Promise.all(Object.entries(wallets).map(async ([k, v]) => [k, await units(v)]))),
    escrow: jobId ? await units(escrowAddress(new PublicKey(setup.escrowAuthority), jobId)) : 0n,
  });

  const node = await new SimNode({ central, port: 52052, wallet: setup.demoWallets.node, heartbeatMs: 2000 }).start();
  console.log(`node ${node.nodeId} registered with wallet ${setup.demoWallets.node}`);
  const before = await balances();
  const jobs = protocolClient('JobService', central);
  const submitted = await jobs.call('SubmitJob', {
    config: { job_type: 1, dataset_uri: 'remote://demo', batch_size: 32, epochs: 3, required_device: 2, payment_amount: 2.5 },
  });
  if (submitted.status !== 1) throw new Error(`SubmitJob failed: ${submitted.error?.message}`);
  const jobId: string = submitted.job_id;
  console.log(`job ${jobId} submitted (2.5 CYXWIZ)`);
  let status;
  for (let i = 0; i < 100 && !(status = await jobs.call('GetJobStatus', { job_id: jobId })).node_assignment; i++) await sleep(100);
  console.log(`assigned to ${status.node_assignment.node_id} at ${status.node_assignment.node_endpoint}`);
  console.log('escrowed:', await balances(jobId));
  await node.accepted(jobId);
  for (let epoch = 1; epoch <= 3; epoch++) await node.progress(jobId, epoch / 3, epoch);
  const done = await node.complete(jobId);
  console.log(`completed: payment_released=${done.payment_released} tx=${done.payment_tx_hash}`);
  const after = await balances(jobId);
  console.log('after:', after);
  console.log(`node +${after.node - before.node}, treasury +${after.treasury - before.treasury}, payer ${after.payer - before.payer}, escrow ${after.escrow}`);
  console.log(`see it in the Web UI: http://127.0.0.1:${config.temporal.uiPort}/namespaces/${config.temporal.namespace}/workflows/${jobId}`);
  jobs.close();

  // The hotel-room flow: reserve the node, heartbeat as the Engine does, release.
  const reservations = protocolClient('JobReservationService', central);
  const beforeReservation = await balances();
  const reserved = await reservations.call('ReserveNode', { node_id: node.nodeId, user_wallet: setup.demoWallets.engine, duration_minutes: 10 }, { deadlineMs: 30_000 });
  if (reserved.status !== 1) throw new Error(`ReserveNode failed: ${reserved.error?.message}`);
  const claims = JSON.parse(Buffer.from(reserved.p2p_auth_token.split('.')[1], 'base64url').toString());
  console.log(`reservation ${reserved.reservation_id}: node ${reserved.node_endpoint}, ${reserved.escrow_amount} units escrowed at ${reserved.price_per_hour} CYXWIZ/h`);
  console.log('P2P token claims:', claims);
  for (let i = 0; i < 2; i++) {
    const hb = await reservations.call('EngineHeartbeat', { reservation_id: reserved.reservation_id, job_id: reserved.job_id, training_active: true, job_progress: 0.5, current_metrics: { loss: 0.3 } });
    console.log(`EngineHeartbeat: ${hb.time_remaining_seconds} s left`);
    await sleep(1000);
  }
  const released = await reservations.call('ReleaseReservation', { reservation_id: reserved.reservation_id, reason: 'User requested release' }, { deadlineMs: 30_000 });
  console.log(`released after ${released.time_used_seconds} s: paid ${released.payment_released}, refunded ${released.refund_amount} (policy ${config.reservations.earlyRelease}) tx=${released.payment_tx_hash}`);
  const afterReservation = await balances();
  console.log(`engine ${afterReservation.engine - beforeReservation.engine}, node +${afterReservation.node - beforeReservation.node}, treasury +${afterReservation.treasury - beforeReservation.treasury}`);
  reservations.close();
  await node.stop();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
