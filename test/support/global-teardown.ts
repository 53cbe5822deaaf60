import { teardownTestInfra } from './global-setup';

/** Jest globalTeardown: stops the servers started by global-setup.ts and removes their temp files. */
export default async function globalTeardown(): Promise<void> {
  await teardownTestInfra();
}
