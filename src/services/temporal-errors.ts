import { isGrpcServiceError } from '@temporalio/client';
import { UnavailableError } from '../domain/errors';

/** Temporal could not be reached, or did not answer in time: asked again later, the same call may succeed. */
export class TemporalAwayError extends UnavailableError {}

/** A failure to reach Temporal (its service or the transport) as a TemporalAwayError (503); undefined for others. */
export function temporalUnavailable(err: unknown): TemporalAwayError | undefined {
  if (isGrpcServiceError(err) || (err as Error)?.name === 'ServiceError' || (err as Error)?.name === 'TransportError') {
    return new TemporalAwayError(`Temporal unavailable: ${(err as Error).message}`);
  }
  // A call given up on (its time limit) or an update no worker accepted in time.
  if ((err as Error)?.name === 'WorkflowUpdateRPCTimeoutOrCancelledError' || (err as Error)?.name === 'AbortError' || (err as Error)?.name === 'TimeoutError') {
    return new TemporalAwayError(`Temporal did not answer in time (is a worker running?): ${(err as Error).message}`);
  }
  return undefined;
}
