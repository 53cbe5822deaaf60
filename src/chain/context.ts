import { getMint } from '@solana/spl-token';
import { Connection, Keypair, PublicKey } from '@solana/web3.js';
import type { Config } from '../config';
import { loadKeypair } from './keys';
import { rpcFetch } from './rpc-transport';
import type { ChainCommitment } from './settlement';

/** Everything the server needs to move CYXWIZ on one cluster. Keys are held here and never logged. */
export interface ChainContext {
  connection: Connection;
  cluster: Config['chain']['cluster'];
  commitment: ChainCommitment;
  mint: PublicKey;
  decimals: number;
  treasury: PublicKey;
  authority: Keypair;
  payer?: Keypair;
}

/** Thrown when the chain settings are incomplete or unsafe; names the setting. */
export class ChainConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ChainConfigError';
  }
}

function publicKey(value: string | undefined, name: string): PublicKey {
  if (!value) throw new ChainConfigError(`${name} must be set when SOLANA_RPC_URL is set`);
  try {
    return new PublicKey(value);
  } catch {
    throw new ChainConfigError(`${name} is not a base58 public key`);
  }
}

/**
 * Opens the configured cluster: loads the keys, checks the mint's decimals against TOKEN_DECIMALS, and
 * refuses mainnet with a key generated for a local ledger.
 * @throws ChainConfigError, KeyLoadError
 */
export async function openChain(config: Config, opts: { rpcUrl: string; demoKeys?: string[] }): Promise<ChainContext> {
  const c = config.chain;
  const authority = loadKeypair('the escrow authority (ESCROW_AUTHORITY_KEYPAIR / ESCROW_AUTHORITY_SECRET)', c.escrowAuthority);
  const payer = c.payer.file || c.payer.inline ? loadKeypair('the payer (PAYER_KEYPAIR / PAYER_SECRET)', c.payer) : undefined;
  const mint = publicKey(c.mint, 'CYXWIZ_MINT');
  const treasury = publicKey(c.treasury, 'PLATFORM_TREASURY');
  if (c.cluster === 'mainnet-beta') {
    const demo = new Set(opts.demoKeys ?? []);
    for (const [name, key] of [['escrow authority', authority.publicKey], ['payer', payer?.publicKey], ['treasury', treasury]] as const) {
      if (key && demo.has(key.toBase58())) throw new ChainConfigError(`refusing to run on mainnet-beta with the demo ${name} key of a local ledger`);
    }
  }
  const connection = new Connection(opts.rpcUrl, {
    commitment: c.commitment,
    disableRetryOnRateLimit: false,
    fetch: rpcFetch as unknown as typeof fetch,
  });
  const mintInfo = await getMint(connection, mint, c.commitment);
  if (mintInfo.decimals !== config.payments.tokenDecimals) {
    throw new ChainConfigError(`mint ${mint.toBase58()} has ${mintInfo.decimals} decimals but TOKEN_DECIMALS is ${config.payments.tokenDecimals}`);
  }
  return { connection, cluster: c.cluster, commitment: c.commitment, mint, decimals: mintInfo.decimals, treasury, authority, payer };
}
