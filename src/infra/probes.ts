import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';

/** Whether the gRPC server at `address` answers grpc.health.v1 Check with SERVING (within 1 s). */
export async function grpcServing(address: string): Promise<boolean> {
  const Health = grpc.makeGenericClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health');
  const client = new Health(address, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    Check(req: { service: string }, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: { status: string | number }) => void): void;
  };
  try {
    const res = await new Promise<{ status: string | number }>((resolve, reject) =>
      client.Check({ service: '' }, { deadline: Date.now() + 1000 }, (err, r) => (err ? reject(err) : resolve(r))),
    );
    return res.status === 'SERVING' || res.status === 1;
  } catch {
    return false;
  } finally {
    client.close();
  }
}

/** Whether `GET <url>/api/health` answers 200 (within 2 s). */
export async function restHealthy(url: string): Promise<boolean> {
  try {
    return (await fetch(`${url}/api/health`, { signal: AbortSignal.timeout(2000) })).status === 200;
  } catch {
    return false;
  }
}
