/**
 * The one rule for ids that come from outside (jobs, nodes, reservations, and the ids inside page tokens): 1-128
 * letters, digits, `_ . : -`, starting with a letter or digit — printable, no whitespace, safe in Postgres,
 * Temporal workflow ids and URLs.
 */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

export const isId = (value: string): boolean => ID_PATTERN.test(value);

/** Workflow id of the ledger reconciliation; its schedule's runs take it with a time suffix. */
export const RECONCILE_WORKFLOW_ID = 'reconcile-ledger';

/**
 * Ids the server uses for its own workflows: a job whose id took one would share that workflow id (and
 * never start). Jobs and reservations share one namespace too; a reservation's id is the server's UUID.
 */
export const isReservedId = (value: string): boolean => value.startsWith(RECONCILE_WORKFLOW_ID);

const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Whether the id has the shape of the server's own (randomUUID) ids, such as a reservation's. */
export const isUuid = (value: string): boolean => UUID_PATTERN.test(value);
