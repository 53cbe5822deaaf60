import * as grpc from '@grpc/grpc-js';
import { loadProtocol } from '../../src/protocol/load';

/**
 * The heartbeat baseline: a bare grpc-js server with the same proto (cyxwiz.protocol.NodeService) answering
 * Heartbeat with the same reply the API gives (SUCCESS, keep_alive, no jobs to cancel), doing nothing else.
 * Usage: echo-server.ts <port>. Prints "echo ready <port>".
 */
const port = Number(process.argv[2]);
const { NodeService } = loadProtocol();
const server = new grpc.Server();
server.addService(NodeService.service, {
  Heartbeat: (_call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => {
    cb(null, { status: 1, keep_alive: true, jobs_to_cancel: [] });
  },
});
server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
  console.log(`echo ready ${bound}`);
});
const stop = () => server.tryShutdown(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
