import { Metadata, type ServerUnaryCall } from '@grpc/grpc-js';
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

/**
 * For replies without an error field (ListNodes, ListJobs): a refusal is an empty page, and its reason travels
 * as the response metadata `x-cyxwiz-error-code` and `x-cyxwiz-error-message`.
 */
export function sendRefusalMetadata(call: ServerUnaryCall<unknown, unknown>, err: unknown): void {
  const { failure } = toProtocolFailure(err);
  const md = new Metadata();
  md.set('x-cyxwiz-error-code', String(failure.error.code));
  md.set('x-cyxwiz-error-message', failure.error.message);
  call.sendMetadata(md);
}
