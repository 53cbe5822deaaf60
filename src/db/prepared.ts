import type { DbOrTx } from './client';

/** A statement that runs with named parameters. */
export interface Prepared<P, R> {
  execute(params: P): Promise<R>;
}

/**
 * A hot statement, built once per database handle and run as a named prepared statement: building a query
 * costs more client CPU than its round trip, and Postgres plans a named statement once per connection.
 */
export function preparedStatement<P, R>(build: (db: DbOrTx) => Prepared<P, R>): (db: DbOrTx) => Prepared<P, R> {
  const byDb = new WeakMap<DbOrTx, Prepared<P, R>>();
  return (db) => {
    let statement = byDb.get(db);
    if (!statement) {
      statement = build(db);
      byDb.set(db, statement);
    }
    return statement;
  };
}
