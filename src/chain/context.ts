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

/** The genesis hashes of the public clusters. */
const PUBLIC_CLUSTERS: Record<string, Config['chain']['cluster']> = {
  '5eykt4UsFv8P8NJdTREpY1vzqKqZKvdpKuc147dw2N9d': 'mainnet-beta',
  EtWTRABZaYq6iMfeYKouRu166VU2xqa1wcaWoxPkrZBG: 'devnet',
  '4uhcVJyU9pJkvQyS88uRDiswHXSCkY3zQawwpjk2NsNY': 'testnet',
};

/**
 * Why SOLANA_CLUSTER cannot be the cluster whose genesis hash the RPC endpoint gave, or undefined. The safeguards
 * of mainnet-beta (no server payer, no demo keys) go by SOLANA_CLUSTER, so a public cluster's endpoint must be
 * declared as that cluster; any other chain (a local or private validator) may be declared as any.
 */
export function clusterMismatch(declared: Config['chain']['cluster'], genesisHash: string): string | undefined {
  const actual = PUBLIC_CLUSTERS[genesisHash];
  if (!actual || actual === declared) return undefined;
  return `SOLANA_RPC_URL is a ${actual} endpoint (genesis hash ${genesisHash}) but SOLANA_CLUSTER is ${declared}: set SOLANA_CLUSTER=${actual}`;
}

/**
 * Opens the configured cluster: loads the keys, checks that SOLANA_CLUSTER names the endpoint's cluster and
 * the mint's decimals against TOKEN_DECIMALS, and refuses mainnet with a key generated for a local ledger.
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
  const mismatch = clusterMismatch(c.cluster, await connection.getGenesisHash());
  if (mismatch) throw new ChainConfigError(mismatch);
  const mintInfo = await getMint(connection, mint, c.commitment);
  if (mintInfo.decimals !== config.payments.tokenDecimals) {
    throw new ChainConfigError(`mint ${mint.toBase58()} has ${mintInfo.decimals} decimals but TOKEN_DECIMALS is ${config.payments.tokenDecimals}`);
  }
  return { connection, cluster: c.cluster, commitment: c.commitment, mint, decimals: mintInfo.decimals, treasury, authority, payer };
}
