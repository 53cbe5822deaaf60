/**
 * Domain errors. Each carries an HTTP-like `code`, the one the CyxWiz protocol puts in `Error{code}`;
 * transports map them in one table each (src/api/grpc/errors.ts, src/api/rest/errors.ts).
 */
export abstract class DomainError extends Error {
  abstract readonly code: number;
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A request field is missing or invalid. `field` names it, as the client spells it. */
export class ValidationError extends DomainError {
  readonly code = 400;
  constructor(readonly field: string, problem: string) {
    super(`${field}: ${problem}`);
  }
}

/** The caller is not the party allowed to do this (for example a node that no longer holds the job). */
export class ForbiddenError extends DomainError {
  readonly code = 403;
}

export class NotFoundError extends DomainError {
  readonly code = 404;
  constructor(readonly entity: string, readonly id: string) {
    super(`${entity} ${id} not found`);
  }
}

/** The request is valid but conflicts with the current state (for example cancelling a finished job). */
export class ConflictError extends DomainError {
  readonly code = 409;
}

/** The call needs a valid user token (auth on) and came without one. */
export class UnauthenticatedError extends DomainError {
  readonly code = 401;
}

/** The caller asked too often for something that costs the platform; it may ask again later. */
export class TooManyRequestsError extends DomainError {
  readonly code = 429;
}

/** A dependency (Temporal, Postgres, a node) is unavailable; the caller may retry. */
export class UnavailableError extends DomainError {
  readonly code = 503;
}

/** The payment could not be escrowed (no allowance, not enough funds, a refused transaction). */
export class PaymentRequiredError extends DomainError {
  readonly code = 402;
}

/** The thing asked about existed but is over (for example an ended reservation). */
export class GoneError extends DomainError {
  readonly code = 410;
}

/**
 * Refuses a caller that is not the owner: both known (AUTH_JWT_SECRET set, the row has an owner) and different.
 * Without auth, or for a row made without it, anyone may act, as with the original server.
 * @throws ForbiddenError
 */
export function requireOwner(owner: string | null | undefined, caller: string | undefined, what: string): void {
  if (caller !== undefined && owner && owner !== caller) throw new ForbiddenError(`${what} belongs to another user`);
}
