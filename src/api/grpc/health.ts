import type * as grpc from '@grpc/grpc-js';
import { service as healthService, type ServingStatus } from 'grpc-health-check';

/** Open Watch streams in all: each holds a call until its client goes. */
const MAX_WATCHERS = 1000;
const RESOURCE_EXHAUSTED = 8;
const NOT_FOUND = 5;

/**
 * grpc.health.v1 for a fixed set of service names. grpc-health-check's own implementation keeps a watcher set for
 * any name a caller asks about, for good (names of megabytes included, without authentication). Here, as the
 * health spec asks, a Watch of an unknown name is answered SERVICE_UNKNOWN and stays open, but keeps nothing of the
 * name; open watches are bounded (past the bound: RESOURCE_EXHAUSTED, no message).
 */
export function createHealth(names: readonly string[]) {
  const statuses = new Map<string, ServingStatus>(names.map((n) => [n, 'SERVING']));
  const watchers = new Map<string, Set<(status: ServingStatus) => void>>(names.map((n) => [n, new Set()]));
  let watching = 0;

  function setStatus(name: string, status: ServingStatus): void {
    if (!statuses.has(name)) return;
    statuses.set(name, status);
    for (const watcher of watchers.get(name)!) watcher(status);
  }

  function addToServer(server: grpc.Server): void {
    server.addService(healthService as unknown as grpc.ServiceDefinition, {
      check: (call: grpc.ServerUnaryCall<{ service: string }, object>, callback: grpc.sendUnaryData<object>) => {
        const status = statuses.get(call.request.service);
        if (status) callback(null, { status });
        else callback({ code: NOT_FOUND, details: `Health status unknown for service ${call.request.service.slice(0, 200)}` });
      },
      watch: (call: grpc.ServerWritableStream<{ service: string }, object>) => {
        if (watching >= MAX_WATCHERS) {
          call.emit('error', { code: RESOURCE_EXHAUSTED, details: `too many open health watches (at most ${MAX_WATCHERS})` });
          return;
        }
        watching += 1;
        const set = watchers.get(call.request.service);
        // The call keeps its request while open: an unknown name (up to the message limit) is not kept with it.
        if (!set) (call.request as { service: string }).service = '';
        const watcher = (status: ServingStatus) => void call.write({ status });
        set?.add(watcher);
        let gone = false;
        const stop = () => {
          if (gone) return;
          gone = true;
          set?.delete(watcher);
          watching -= 1;
        };
        call.on('cancelled', stop);
        call.on('close', stop);
        call.on('finish', stop);
        call.write({ status: set ? statuses.get(call.request.service)! : 'SERVICE_UNKNOWN' });
      },
      list: (_call: grpc.ServerUnaryCall<object, object>, callback: grpc.sendUnaryData<object>) => {
        callback(null, { statuses: Object.fromEntries([...statuses].map(([name, status]) => [name, { status }])) });
      },
    });
  }

  return { setStatus, addToServer };
}
