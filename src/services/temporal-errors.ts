import { isGrpcServiceError } from '@temporalio/client';
import { UnavailableError } from '../domain/errors';

/** A failure to reach Temporal (its service or the transport) as an UnavailableError (503); undefined for others. */
export function temporalUnavailable(err: unknown): UnavailableError | undefined {
  if (isGrpcServiceError(err) || (err as Error)?.name === 'ServiceError' || (err as Error)?.name === 'TransportError') {
    return new UnavailableError(`Temporal unavailable: ${(err as Error).message}`);
  }
  // A call given up on (its time limit) or an update no worker accepted in time.
  if ((err as Error)?.name === 'WorkflowUpdateRPCTimeoutOrCancelledError' || (err as Error)?.name === 'AbortError' || (err as Error)?.name === 'TimeoutError') {
    return new UnavailableError(`Temporal did not answer in time (is a worker running?): ${(err as Error).message}`);
  }
  return undefined;
}
