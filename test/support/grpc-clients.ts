import * as grpc from '@grpc/grpc-js';
import { loadProtocol } from '../../src/protocol/load';

type Callback<T> = (err: grpc.ServiceError | null, res: T) => void;
type AnyClient = grpc.Client & Record<string, (req: unknown, meta: grpc.Metadata, opts: grpc.CallOptions, cb: Callback<unknown>) => void>;

/**
 * A promise-based client for one cyxwiz.protocol service, as a real Engine or node uses it: plain h2c,
 * a deadline per call, optional metadata.
 */
export function protocolClient(service: 'JobService' | 'NodeService' | 'JobStatusService' | 'WalletService', address: string, channelOptions: grpc.ChannelOptions = {}) {
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
    stream(method: string, request: unknown): grpc.ClientReadableStream<any> {
      // No deadline: a stream lives as long as its job.
      return (client as unknown as Record<string, (req: unknown) => grpc.ClientReadableStream<any>>)[method](request);
    },
    close: () => client.close(),
  };
}
