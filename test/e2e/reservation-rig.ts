import type { Keypair } from '@solana/web3.js';
import { reservationCost, unitsPerHour } from '../../src/domain/reservation';
import { protocolClient } from '../support/grpc-clients';
import type { RunningSystem } from '../support/system';
import { testChain, type TestChain } from './chain';
import { nodePool, type ProtocolClient } from './helpers';

/** Decimals of the test ledger's CYXWIZ mint. */
const DECIMALS = 9;

/** What a reservation test file drives the system with: the Engine's clients, a node pool and the ledger. */
export interface ReservationRig {
  /** JobReservationService, as the Engine calls it. */
  engine: ProtocolClient;
  discovery: ProtocolClient;
  chain: TestChain;
  nodes: ReturnType<typeof nodePool>;
  /** ReserveNode as the shipping Engine sends it (its deadline 30 s unless given). */
  reserve(nodeId: string, wallet: string, minutes: number, deadlineMs?: number): Promise<any>;
  /** The reservation holding the node (`nodes.reserved_by`), null when it is free. */
  reservedBy(nodeId: string): Promise<string | null>;
  /** A started node of the pool and a funded user who approved the escrow authority (1,000 CYXWIZ). */
  nodeAndUser(nodeName: string): Promise<{ node: Awaited<ReturnType<ReturnType<typeof nodePool>['start']>>; user: Keypair; wallet: string }>;
  /** The escrow a reservation of `minutes` on the node must hold, from its advertised price (GetNodeInfo). */
  expectedEscrow(nodeId: string, minutes: number): Promise<{ perHour: bigint; escrow: bigint }>;
}

/** Opens the clients before the file's tests and closes them (and stops the pool's nodes) after. */
export function reservationRig(sys: () => RunningSystem): ReservationRig {
  const rig = { nodes: nodePool(sys) } as ReservationRig;
  beforeAll(() => {
    rig.engine = protocolClient('JobReservationService', sys().grpcAddress);
    rig.discovery = protocolClient('NodeDiscoveryService', sys().grpcAddress);
    rig.chain = testChain();
  });
  afterAll(async () => {
    rig.engine?.close();
    rig.discovery?.close();
    await rig.nodes.stopAll();
  });
  rig.reserve = (nodeId, wallet, minutes, deadlineMs = 30_000) =>
    rig.engine.call(
      'ReserveNode',
      { node_id: nodeId, user_wallet: wallet, duration_minutes: minutes, job_config: { model_definition: '{}', dataset_uri: 'remote://engine' } },
      { deadlineMs },
    );
  rig.reservedBy = async (nodeId) =>
    (await sys().query<{ reserved_by: string | null }>('select reserved_by from nodes where id = $1', [nodeId]))[0].reserved_by;
  rig.nodeAndUser = async (nodeName) => {
    const node = await rig.nodes.start({ name: nodeName });
    const user = await rig.chain.approvingWallet(1_000n * 10n ** 9n, 1_000n * 10n ** 9n);
    return { node, user, wallet: user.publicKey.toBase58() };
  };
  rig.expectedEscrow = async (nodeId, minutes) => {
    const info = await rig.discovery.call('GetNodeInfo', { node_id: nodeId });
    const perHour = unitsPerHour(info.info.pricing.price_per_hour, DECIMALS);
    return { perHour, escrow: reservationCost(perHour, minutes) };
  };
  return rig;
}
