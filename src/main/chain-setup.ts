import path from 'node:path';
import type { Logger } from 'pino';
import { demoPublicKeys, ensureLocalChain, type LocalChainSetup } from '../chain/bootstrap';
import { openChain, type ChainContext } from '../chain/context';
import { startLocalLedger, type LocalLedger } from '../chain/local-ledger';
import type { Config } from '../config';
import type { Db } from '../db/client';
import { createChainSettlement, type ChainSettlement } from '../chain/settlement';
import { Connection } from '@solana/web3.js';
import { required } from './lifecycle';

export const keysDir = (config: Config) => path.join(config.dataDir, 'keys');

/** The configured cluster (SOLANA_RPC_URL and keys), as `start:api` and `start:worker` use it. */
export function connectConfiguredChain(config: Config): Promise<ChainContext> {
  return openChain(config, { rpcUrl: required(config.chain.rpcUrl, 'SOLANA_RPC_URL'), demoKeys: demoPublicKeys(keysDir(config)) });
}

/**
 * `npm start`'s chain: the configured cluster when SOLANA_RPC_URL is set, otherwise a local ledger in
 * DATA_DIR/ledger, set up once with a mint, treasury, escrow authority, payer and demo wallets.
 */
export async function startEmbeddedChain(
  config: Config,
  log: Logger,
): Promise<{ chain: ChainContext; rpcUrl: string; ledger?: LocalLedger; setup?: LocalChainSetup }> {
  if (config.chain.rpcUrl) return { chain: await connectConfiguredChain(config), rpcUrl: config.chain.rpcUrl };
  const ledger = await startLocalLedger({
    dataDir: path.join(config.dataDir, 'ledger'),
    port: config.chain.localLedgerPort,
    slotMs: config.chain.localLedgerSlotMs,
    log: (msg) => log.debug({ component: 'local-ledger' }, msg),
  });
  try {
    const setup = await ensureLocalChain(new Connection(ledger.url, config.chain.commitment), keysDir(config), config.payments.tokenDecimals);
    const chain = await openChain(withLocalChain(config, setup), { rpcUrl: ledger.url });
    return { chain, rpcUrl: ledger.url, ledger, setup };
  } catch (err) {
    await ledger.stop();
    throw err;
  }
}

/** The config with a local ledger's mint, treasury and key files filled in. */
export function withLocalChain(config: Config, setup: LocalChainSetup): Config {
  return {
    ...config,
    chain: {
      ...config.chain,
      cluster: 'localnet',
      mint: setup.mint,
      treasury: setup.treasury,
      escrowAuthority: { file: setup.keyFiles.escrowAuthority },
      payer: { file: setup.keyFiles.payer },
    },
  };
}

/** The settlement over a chain, with the payment settings of the config. */
export function settlementFor(config: Config, chain: ChainContext, db: Db): ChainSettlement {
  return createChainSettlement({
    db,
    connection: chain.connection,
    commitment: chain.commitment,
    mint: chain.mint,
    decimals: chain.decimals,
    authority: chain.authority,
    treasury: chain.treasury,
    payer: chain.payer,
    platformFeeBps: config.payments.platformFeeBps,
    confirmTimeoutMs: config.chain.confirmTimeoutMs,
    priorityFeeMicroLamports: config.chain.priorityFeeMicroLamports,
  });
}
