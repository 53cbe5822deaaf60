/**
 * The one rule for ids that come from outside (jobs, nodes, reservations, and the ids inside page tokens): 1-128
 * letters, digits, `_ . : -`, starting with a letter or digit — printable, no whitespace, safe in Postgres,
 * Temporal workflow ids and URLs.
 */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;

export const isId = (value: string): boolean => ID_PATTERN.test(value);
