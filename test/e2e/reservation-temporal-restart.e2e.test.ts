import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { splitPayment } from '../../src/domain/money';
import { getFreePort } from '../../src/infra/process';
import { startTemporalDevServer, type TemporalDevServer } from '../../src/infra/temporal-dev-server';
import { SEARCH_ATTRIBUTE_TYPES } from '../../src/workflows/search-attributes';
import { testTemporalCli } from '../support/env';
import { protocolClient } from '../support/grpc-clients';
import { startSystem, type RunningSystem } from '../support/system';
import { testChain } from './chain';
import { eventually, nodePool, S } from './helpers';

/*
 * A reservation survives a restart of the Temporal server itself: this file runs its own dev server with a
 * SQLite file (as `npm start` does), stops it in the middle of a reservation and starts it again on the same
 * port. The worker and the API reconnect; the end timer fires and the node is paid exactly once.
 */

const NAMESPACE = 'cyxwiz-reservation-restart';
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cyxwiz-res-restart-'));
let port = 0;
let temporal: TemporalDevServer | undefined;
let system: RunningSystem | undefined;

const startTemporal = () =>
  startTemporalDevServer({ cli: testTemporalCli(), dbFile: path.join(dir, 'temporal.db'), port, namespace: NAMESPACE, headless: true, searchAttributes: SEARCH_ATTRIBUTE_TYPES });

beforeAll(async () => {
  port = await getFreePort();
  temporal = await startTemporal();
  system = await startSystem({
    name: 'reservation-temporal-restart',
    env: { TEMPORAL_ADDRESS: temporal.address, TEMPORAL_NAMESPACE: NAMESPACE, RESERVATION_MINUTE_MS: 1000, RESERVATION_NODE_TIMEOUT_S: 15 },
  });
}, 180_000);

const nodes = nodePool(() => system!);

afterAll(async () => {
  await nodes.stopAll();
  await system?.stop();
  await temporal?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
}, 60_000);

test('the reservation, its timer and its money survive a restart of the Temporal server', async () => {
  const chain = testChain();
  const engine = protocolClient('JobReservationService', system!.grpcAddress);
  try {
    const node = await nodes.start({ name: 'restart-node' });
    const user = await chain.approvingWallet(100n * 10n ** 9n);

    const reply = await engine.call('ReserveNode', { node_id: node.nodeId, user_wallet: user.publicKey.toBase58(), duration_minutes: 20 }, { deadlineMs: 30_000 });
    expect(reply).toMatchObject({ status: S.SUCCESS });
    const id = reply.reservation_id;
    const escrow = BigInt(reply.escrow_amount);
    const nodeBefore = await chain.accountBalance(chain.ata(node.wallet));

    await temporal!.stop();
    temporal = await startTemporal();

    // The Engine keeps heartbeating through it (those touch Postgres only).
    expect(await engine.call('EngineHeartbeat', { reservation_id: id, job_id: id, training_active: true, job_progress: 0.5, current_metrics: {} })).toMatchObject({ status: S.SUCCESS });
    const expired = await eventually(
      'the reservation to expire after the restart',
      async () => {
        const { reservation } = await engine.call('GetReservation', { reservation_id: id });
        return reservation.status === 7 && reservation;
      },
      60_000,
    );
    expect(expired.escrow_amount).toBe(escrow.toString());
    const split = splitPayment(escrow, 1000n);
    await eventually('the node to be paid', async () => (await chain.accountBalance(chain.ata(node.wallet))) - nodeBefore === split.node);
    const legs = await system!.query<{ leg: string; amount: string; state: string }>(
      `select leg, amount::text as amount, state from payments where job_id = $1 order by leg`,
      [id],
    );
    expect(legs).toEqual([
      { leg: 'escrow', amount: escrow.toString(), state: 'confirmed' },
      { leg: 'release_node', amount: split.node.toString(), state: 'confirmed' },
      { leg: 'release_platform', amount: split.platform.toString(), state: 'confirmed' },
    ]);
  } finally {
    engine.close();
  }
});
