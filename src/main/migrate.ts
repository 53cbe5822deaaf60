import { loadConfig } from '../config';
import { migrateDatabase, openDatabase } from '../db/client';
import { required } from './lifecycle';

/** `npm run migrate`: applies pending migrations to DATABASE_URL. */
async function main(): Promise<void> {
  const config = loadConfig();
  const database = openDatabase(required(config.database.url, 'DATABASE_URL'), { max: 1 });
  try {
    await migrateDatabase(database.db);
    console.log('migrations applied');
  } finally {
    await database.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
