import * as grpc from '@grpc/grpc-js';
import { bearerToken, userOf, verifyUserToken, walletClaimOf, type UserClaims } from '../../services/user-token';

/**
 * Calls that need no user token: node discovery (the original left it open, the Engine browses before login),
 * NotifyJobAccepted (the shipping node sends it without a header) and the gRPC health service.
 */
const OPEN_METHODS = [/^\/cyxwiz\.protocol\.NodeDiscoveryService\//, /^\/cyxwiz\.protocol\.NodeService\/NotifyJobAccepted$/, /^\/grpc\.health\.v1\.Health\//];

export const isOpenMethod = (path: string) => OPEN_METHODS.some((re) => re.test(path));

/**
 * Calls a node daemon makes. It logs in once and keeps that token for as long as it runs (it never refreshes
 * it), and the original server never checked `exp`: on these the token's expiry is never held against the node,
 * or its heartbeats would fail once the website's token expired (AUTH_CHECK_EXPIRY applies to the Engine's
 * calls only). The signature is checked all the same.
 */
const NODE_METHODS = [
  /^\/cyxwiz\.protocol\.NodeService\//,
  /^\/cyxwiz\.protocol\.JobStatusService\//,
  /^\/cyxwiz\.protocol\.JobReservationService\/Report(JobCompleteFromNode|ReservationEndFromNode)$/,
];

export const isNodeMethod = (path: string) => NODE_METHODS.some((re) => re.test(path));

/** Whether a call's token must not be past its `exp`: with AUTH_CHECK_EXPIRY, on every call but a node's. */
export const checksExpiry = (path: string, checkExpiry: boolean) => checkExpiry && !isNodeMethod(path);

/** Why a call's metadata does not authenticate it, or undefined when it does. */
export function authProblem(secret: string, metadata: grpc.Metadata, nowS?: number, checkExpiry = true): string | undefined {
  const header = metadata.get('authorization')[0];
  if (typeof header !== 'string' || !header) return 'missing authorization: Bearer <token>';
  const token = bearerToken(header);
  if (!token) return 'authorization must be "Bearer <token>"';
  try {
    verifyUserToken(secret, token, nowS, checkExpiry);
    return undefined;
  } catch (err) {
    return `invalid token: ${(err as Error).message}`;
  }
}

/**
 * A server interceptor that requires `authorization: Bearer <HS256 JWT signed with secret>` on every call but
 * the open ones, as the original server did; others end with UNAUTHENTICATED before reaching a handler.
 */
export function bearerAuth(secret: string, checkExpiry: boolean): grpc.ServerInterceptor {
  return (methodDescriptor, call) => {
    if (isOpenMethod(methodDescriptor.path)) return new grpc.ServerInterceptingCall(call);
    const listener = new grpc.ServerListenerBuilder()
      .withOnReceiveMetadata((metadata, next) => {
        const problem = authProblem(secret, metadata, undefined, checksExpiry(methodDescriptor.path, checkExpiry));
        if (problem) call.sendStatus({ code: grpc.status.UNAUTHENTICATED, details: problem, metadata: new grpc.Metadata() });
        else next(metadata);
      })
      .build();
    const responder = new grpc.ResponderBuilder().withStart((next) => next(listener)).build();
    return new grpc.ServerInterceptingCall(call, responder);
  };
}

/** Who made a call: the verified token's `sub` ('' when it has none), undefined when auth is off or no token came. */
export type CallerOf = (call: { metadata: grpc.Metadata }) => string | undefined;

/** The claims of a call's valid token, or undefined (auth off, no token, or one that does not verify). */
function claimsOf(secret: string | undefined): (call: { metadata: grpc.Metadata }) => UserClaims | undefined {
  if (!secret) return () => undefined;
  return ({ metadata }) => {
    const token = bearerToken(metadata.get('authorization')[0]);
    if (!token) return undefined;
    try {
      // The interceptor has held the token to its expiry where that applies.
      return verifyUserToken(secret, token, undefined, false);
    } catch {
      return undefined;
    }
  };
}

/**
 * The caller of a call as the services see it, to refuse acting on what another user owns (`requireOwner`).
 * Undefined when auth is off (the interceptor checks nothing, so a token proves nothing) or the call carried no
 * valid token (the open methods).
 */
export function callerOf(secret: string | undefined): CallerOf {
  const claims = claimsOf(secret);
  return (call) => {
    const c = claims(call);
    if (!c) return undefined;
    return userOf(c);
  };
}

/**
 * The signed-in user's wallet: the token's `wallet_address` claim (optional among the original's token claims,
 * which it read after its user database), '' when the token has none, undefined as for callerOf.
 */
export function callerWalletOf(secret: string | undefined): CallerOf {
  const claims = claimsOf(secret);
  return (call) => {
    const c = claims(call);
    if (!c) return undefined;
    return walletClaimOf(c);
  };
}
