import { migrateDatabase, openDatabase, type Database } from '../../src/db/client';
import { createTestDatabase, dropTestDatabase } from './env';

/** A fresh, migrated database of its own for one test file. */
export async function freshDatabase(): Promise<Database & { url: string; drop(): Promise<void> }> {
  const url = await createTestDatabase();
  const database = openDatabase(url, { max: 10 });
  await migrateDatabase(database.db);
  return {
    ...database,
    url,
    drop: async () => {
      await database.close();
      await dropTestDatabase(url);
    },
  };
}
