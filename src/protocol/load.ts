import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import path from 'node:path';

/** proto/ at the project root; the same two levels up from src/protocol and dist/protocol. */
export const PROTO_DIR = path.resolve(__dirname, '../../proto');
export const PROTO_FILES = ['common.proto', 'job.proto', 'node.proto', 'execution.proto', 'reservation.proto', 'wallet.proto'];

/**
 * Field names as on the wire (snake_case), int64 as decimal strings, enums as numbers, unset fields as
 * their defaults: what the protocol's clients expect and what handlers map from.
 */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: String,
  enums: Number,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

type ServiceCtor = grpc.ServiceClientConstructor;

export interface CyxwizProtocol {
  packageDefinition: protoLoader.PackageDefinition;
  JobService: ServiceCtor;
  NodeService: ServiceCtor;
  NodeDiscoveryService: ServiceCtor;
  JobStatusService: ServiceCtor;
  JobReservationService: ServiceCtor;
  WalletService: ServiceCtor;
}

let cached: CyxwizProtocol | undefined;

/** Loads package cyxwiz.protocol once per process. */
export function loadProtocol(): CyxwizProtocol {
  if (cached) return cached;
  const packageDefinition = protoLoader.loadSync(PROTO_FILES, LOADER_OPTIONS);
  const root = grpc.loadPackageDefinition(packageDefinition) as unknown as {
    cyxwiz: { protocol: Record<string, ServiceCtor> };
  };
  const pkg = root.cyxwiz.protocol;
  cached = {
    packageDefinition,
    JobService: pkg.JobService,
    NodeService: pkg.NodeService,
    NodeDiscoveryService: pkg.NodeDiscoveryService,
    JobStatusService: pkg.JobStatusService,
    JobReservationService: pkg.JobReservationService,
    WalletService: pkg.WalletService,
  };
  return cached;
}
