import * as grpc from '@grpc/grpc-js';
import { bearerAuth, callerOf, callerWalletOf } from './auth';
import type { Logger } from 'pino';
import { loadProtocol } from '../../protocol/load';
import { createCostEstimator } from '../../services/cost-estimate';
import type { DiscoveryService } from '../../services/discovery-service';
import { createDiscoveryHandlers } from './discovery-handlers';
import { createHealth } from './health';
import { createJobHandlers, type JobHandlerDeps } from './job-handlers';
import { createNodeHandlers } from './node-handlers';
import type { NodeService } from '../../services/nodes-service';
import type { WalletService } from '../../services/wallet-service';
import type { ReservationService } from '../../services/reservation-service';
import { createReservationHandlers } from './reservation-handlers';
import { createWalletHandlers } from './wallet-handlers';

export interface GrpcServerDeps extends JobHandlerDeps {
  nodes: NodeService;
  discovery: DiscoveryService;
  wallets: WalletService;
  reservations: ReservationService;
  log: Logger;
  /** HS256 secret of users' bearer tokens: set, every call but the open ones needs one (see auth.ts). */
  authJwtSecret?: string;
  /** Refuse expired tokens on the Engine's calls (AUTH_CHECK_EXPIRY). */
  authCheckExpiry?: boolean;
}

export const SERVED_SERVICES = [
  'cyxwiz.protocol.JobService',
  'cyxwiz.protocol.NodeService',
  'cyxwiz.protocol.NodeDiscoveryService',
  'cyxwiz.protocol.JobStatusService',
  'cyxwiz.protocol.WalletService',
  'cyxwiz.protocol.JobReservationService',
];

/** The gRPC server of package cyxwiz.protocol, plain HTTP/2 as the shipping clients speak it, with grpc.health.v1. */
export function createGrpcServer(deps: GrpcServerDeps) {
  const protocol = loadProtocol();
  const server = new grpc.Server({
    // gRPC's own default: a job's config is at most 1.5 MiB as JSON (a 1 MiB model definition). A larger limit let
    // one unauthenticated FindNodes of 15 MB cost the process a quarter of a gigabyte while it was decoded.
    'grpc.max_receive_message_length': 4 * 1024 * 1024,
    // A client that vanished (an Engine's laptop closed on a StreamJobUpdates) is found within 80 s: grpc-js
    // would otherwise ping after ~24 days, and the stream and its listener linger until then.
    'grpc.keepalive_time_ms': 60_000,
    'grpc.keepalive_timeout_ms': 20_000,
    // Bounds on one connection: grpc-js leaves HTTP/2's session memory unlimited (MB here) and streams unbounded,
    // so one client holding streams it never reads could grow the process without end.
    'grpc-node.max_session_memory': 64,
    'grpc.max_concurrent_streams': 1000,
    interceptors: deps.authJwtSecret ? [bearerAuth(deps.authJwtSecret, deps.authCheckExpiry ?? false)] : [],
  });
  const caller = callerOf(deps.authJwtSecret);
  const callerWallet = callerWalletOf(deps.authJwtSecret);
  const nodeHandlers = createNodeHandlers({ nodes: deps.nodes, log: deps.log, caller, callerWallet });
  server.addService(
    protocol.JobService.service,
    createJobHandlers({ ...deps, caller, callerWallet }) as unknown as grpc.UntypedServiceImplementation,
  );
  server.addService(protocol.NodeService.service, nodeHandlers.node as unknown as grpc.UntypedServiceImplementation);
  server.addService(
    protocol.NodeDiscoveryService.service,
    createDiscoveryHandlers({ discovery: deps.discovery, log: deps.log }) as unknown as grpc.UntypedServiceImplementation,
  );
  server.addService(protocol.JobStatusService.service, nodeHandlers.jobStatus as unknown as grpc.UntypedServiceImplementation);
  server.addService(
    protocol.WalletService.service,
    createWalletHandlers({ wallets: deps.wallets, estimator: createCostEstimator({ discovery: deps.discovery, tokenDecimals: deps.tokenDecimals }), log: deps.log, caller }) as unknown as grpc.UntypedServiceImplementation,
  );
  server.addService(
    protocol.JobReservationService.service,
    createReservationHandlers({ reservations: deps.reservations, tokenDecimals: deps.tokenDecimals, log: deps.log, caller, callerWallet }) as unknown as grpc.UntypedServiceImplementation,
  );
  const health = createHealth(['', ...SERVED_SERVICES]);
  health.addToServer(server);

  async function listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) =>
      server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound))),
    );
  }

  /** Stops accepting calls, lets running ones finish for up to `graceMs`, then cuts them. */
  async function shutdown(graceMs = 5000): Promise<void> {
    for (const s of ['', ...SERVED_SERVICES]) health.setStatus(s, 'NOT_SERVING');
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        server.forceShutdown();
        resolve();
      }, graceMs);
      server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  return { server, listen, shutdown };
}
