import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { toProtocolFailure, type ProtocolFailure } from './errors';

/**
 * Wraps a handler so that every outcome is a gRPC OK reply: a domain error becomes the reply `onFailure`
 * builds (with `status` and `Error{code, message}`), an unexpected one is logged and reported as a 500.
 */
export function unary<Req, Res>(
  log: Logger,
  method: string,
  handler: (request: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>,
  onFailure: (failure: ProtocolFailure, request: Req) => Res,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    handler(call.request, call).then(
      (response) => callback(null, response),
      (err: unknown) => {
        const { failure, unexpected } = toProtocolFailure(err);
        if (unexpected) log.error({ err: summarize(err), method }, 'request failed');
        else log.debug({ method, code: failure.error.code, message: failure.error.message }, 'request refused');
        callback(null, onFailure(failure, call.request));
      },
    );
  };
}

/** An error for the log, bounded: driver errors can carry whole queries and their parameters. */
export function summarize(err: unknown): { name: string; message: string; cause?: string; stack?: string } {
  const e = err as Error & { cause?: unknown };
  return {
    name: e?.name ?? 'Error',
    message: String(e?.message ?? err).slice(0, 1000),
    ...(e?.cause !== undefined && { cause: String((e.cause as Error)?.message ?? e.cause).slice(0, 500) }),
    stack: e?.stack?.split('\n').slice(0, 8).join('\n'),
  };
}

/** Reply builder for the common shape `{status, error}`. */
export const statusAndError = (f: ProtocolFailure) => ({ status: f.status, error: f.error });
