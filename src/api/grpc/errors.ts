import { DomainError, UnavailableError } from '../../domain/errors';
import { StatusCode } from '../../domain/job';
import type { ErrorMsg } from '../../protocol/types';

export interface ProtocolFailure {
  /** `status` of the reply: STATUS_FAILED for refusals the client can act on, STATUS_ERROR for server faults. */
  status: number;
  error: ErrorMsg;
}

/**
 * Domain errors → CyxWiz application errors, which travel inside a gRPC OK reply (the shipping clients read
 * `status` and `error`, and count gRPC errors as a server outage). The one mapping table of the gRPC side.
 */
export function toProtocolFailure(err: unknown): { failure: ProtocolFailure; unexpected: boolean } {
  if (err instanceof UnavailableError) {
    return { failure: { status: StatusCode.ERROR, error: { code: err.code, message: err.message } }, unexpected: false };
  }
  if (err instanceof DomainError) {
    return { failure: { status: StatusCode.FAILED, error: { code: err.code, message: err.message } }, unexpected: false };
  }
  return {
    failure: { status: StatusCode.ERROR, error: { code: 500, message: 'internal server error' } },
    unexpected: true,
  };
}
