import * as grpc from '@grpc/grpc-js';
import { loadProtocol } from '../../src/protocol/load';

type Callback<T> = (err: grpc.ServiceError | null, res: T) => void;
type AnyClient = grpc.Client & Record<string, (req: unknown, meta: grpc.Metadata, opts: grpc.CallOptions, cb: Callback<unknown>) => void>;

/**
 * A promise-based client for one cyxwiz.protocol service, as a real Engine or node uses it: plain h2c,
 * a deadline per call, optional metadata.
 */
type ServiceName = 'JobService' | 'NodeService' | 'JobStatusService' | 'WalletService' | 'JobReservationService' | 'NodeDiscoveryService';

export function protocolClient(service: ServiceName, address: string, channelOptions: grpc.ChannelOptions = {}) {
  const ctor = loadProtocol()[service];
  const client = new ctor(address, grpc.credentials.createInsecure(), channelOptions) as unknown as AnyClient;
  return {
    raw: client,
    call<T = any>(method: string, request: unknown, opts: { deadlineMs?: number; metadata?: grpc.Metadata } = {}): Promise<T> {
      return new Promise((resolve, reject) =>
        client[method](request, opts.metadata ?? new grpc.Metadata(), { deadline: Date.now() + (opts.deadlineMs ?? 10_000) }, (err, res) =>
          err ? reject(err) : resolve(res as T),
        ),
      );
    },
    /** As `call`, also resolving the response's initial and trailing metadata (e.g. CancelJob's x-cyxwiz-refund-tx). */
    callWithMetadata<T = any>(
      method: string,
      request: unknown,
      opts: { deadlineMs?: number; metadata?: grpc.Metadata } = {},
    ): Promise<{ response: T; metadata: grpc.Metadata; trailers: grpc.Metadata }> {
      return new Promise((resolve, reject) => {
        let metadata = new grpc.Metadata();
        let trailers = new grpc.Metadata();
        let response: T | undefined;
        let pending = 2;
        const done = () => --pending === 0 && resolve({ response: response as T, metadata, trailers });
        const call = (client[method] as unknown as (...args: unknown[]) => grpc.ClientUnaryCall)(
          request,
          opts.metadata ?? new grpc.Metadata(),
          { deadline: Date.now() + (opts.deadlineMs ?? 10_000) },
          (err: grpc.ServiceError | null, res: T) => {
            if (err) return reject(err);
            response = res;
            done();
          },
        );
        call.on('metadata', (md: grpc.Metadata) => (metadata = md));
        call.on('status', (status: grpc.StatusObject) => {
          trailers = status.metadata;
          done();
        });
      });
    },
    stream(method: string, request: unknown): grpc.ClientReadableStream<any> {
      // No deadline: a stream lives as long as its job.
      return (client as unknown as Record<string, (req: unknown) => grpc.ClientReadableStream<any>>)[method](request);
    },
    close: () => client.close(),
  };
}
