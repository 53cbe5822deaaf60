import { Keypair } from '@solana/web3.js';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** Thrown when a keypair cannot be loaded; says where from, never what the key is. */
export class KeyLoadError extends Error {
  constructor(what: string, why: string) {
    super(`cannot load ${what}: ${why}`);
    this.name = 'KeyLoadError';
  }
}

function parseSecret(text: string, what: string): Keypair {
  let bytes: unknown;
  try {
    bytes = JSON.parse(text);
  } catch {
    throw new KeyLoadError(what, 'not a Solana CLI keypair (a JSON array of 64 numbers)');
  }
  if (!Array.isArray(bytes) || bytes.length !== 64 || !bytes.every((b) => Number.isInteger(b) && b >= 0 && b <= 255)) {
    throw new KeyLoadError(what, 'not a Solana CLI keypair (a JSON array of 64 numbers)');
  }
  try {
    return Keypair.fromSecretKey(Uint8Array.from(bytes as number[]));
  } catch {
    throw new KeyLoadError(what, 'the secret key is invalid');
  }
}

/**
 * Loads a keypair from a Solana CLI keypair file (`~` expanded) or, when `inline` is set, from that JSON
 * array (for secrets passed through the environment).
 * @throws KeyLoadError
 */
export function loadKeypair(what: string, source: { file?: string; inline?: string }): Keypair {
  if (source.inline) return parseSecret(source.inline, what);
  if (!source.file) throw new KeyLoadError(what, 'no keypair file or secret configured');
  const file = source.file.startsWith('~/') ? path.join(os.homedir(), source.file.slice(2)) : source.file;
  if (!existsSync(file)) throw new KeyLoadError(what, `keypair file ${file} does not exist`);
  return parseSecret(readFileSync(file, 'utf8'), `${what} (${file})`);
}

/** Writes a keypair as a Solana CLI keypair file, readable by its owner only. */
export function writeKeypair(file: string, keypair: Keypair): void {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(Array.from(keypair.secretKey)), { mode: 0o600 });
  chmodSync(file, 0o600);
}
