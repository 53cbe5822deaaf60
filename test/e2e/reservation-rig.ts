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
  /** ReserveNode as the shipping Engine sends it (30 s deadline). */
  reserve(nodeId: string, wallet: string, minutes: number): Promise<any>;
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
  rig.reserve = (nodeId, wallet, minutes) =>
    rig.engine.call(
      'ReserveNode',
      { node_id: nodeId, user_wallet: wallet, duration_minutes: minutes, job_config: { model_definition: '{}', dataset_uri: 'remote://engine' } },
      { deadlineMs: 30_000 },
    );
  rig.expectedEscrow = async (nodeId, minutes) => {
    const info = await rig.discovery.call('GetNodeInfo', { node_id: nodeId });
    const perHour = unitsPerHour(info.info.pricing.price_per_hour, DECIMALS);
    return { perHour, escrow: reservationCost(perHour, minutes) };
  };
  return rig;
}
