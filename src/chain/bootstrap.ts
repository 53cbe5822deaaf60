import {
  createAssociatedTokenAccountIdempotentInstruction,
  createInitializeMint2Instruction,
  createApproveCheckedInstruction,
  createMintToCheckedInstruction,
  MINT_SIZE,
  TOKEN_PROGRAM_ID,
} from '@solana/spl-token';
import { Connection, Keypair, LAMPORTS_PER_SOL, PublicKey, SystemProgram, Transaction, type TransactionInstruction } from '@solana/web3.js';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { loadKeypair, writeKeypair } from './keys';
import { tokenAccountOf } from './instructions';

/** What a local ledger was set up with: public facts only; the keys are files beside it. */
export interface LocalChainSetup {
  cluster: 'localnet';
  mint: string;
  decimals: number;
  treasury: string;
  escrowAuthority: string;
  payer: string;
  demoWallets: Record<string, string>;
  keyFiles: { escrowAuthority: string; payer: string; demo: Record<string, string> };
}

const DEMO_WALLETS = ['engine', 'node'] as const;
const PAYER_TOKENS = 1_000_000n;
const DEMO_TOKENS = 10_000n;

/**
 * Sets up a fresh local ledger once: the CYXWIZ mint, the platform treasury, the escrow authority, the
 * server's payer account and funded demo wallets, as Solana CLI keypair files in `keysDir`. Later starts
 * read the same setup back (the ledger itself persists), so balances stay consistent across restarts.
 */
export async function ensureLocalChain(connection: Connection, keysDir: string, decimals = 9): Promise<LocalChainSetup> {
  const setupFile = path.join(keysDir, 'chain.json');
  if (existsSync(setupFile)) {
    const setup = JSON.parse(readFileSync(setupFile, 'utf8')) as LocalChainSetup;
    if ((await connection.getAccountInfo(new PublicKey(setup.mint))) !== null) return setup;
  }
  const file = (name: string) => path.join(keysDir, `${name}.json`);
  const authority = Keypair.generate();
  const payer = Keypair.generate();
  const treasury = Keypair.generate();
  const mint = Keypair.generate();
  const demo = Object.fromEntries(DEMO_WALLETS.map((name) => [name, Keypair.generate()])) as Record<string, Keypair>;
  writeKeypair(file('escrow-authority'), authority);
  writeKeypair(file('payer'), payer);
  writeKeypair(file('treasury'), treasury);
  writeKeypair(file('mint'), mint);
  for (const [name, kp] of Object.entries(demo)) writeKeypair(file(`demo-${name}`), kp);

  for (const kp of [authority, payer, ...Object.values(demo)]) {
    await connection.requestAirdrop(kp.publicKey, 100 * LAMPORTS_PER_SOL);
  }
  const unit = 10n ** BigInt(decimals);
  const rent = await connection.getMinimumBalanceForRentExemption(MINT_SIZE);
  const ata = (owner: PublicKey) => tokenAccountOf(owner, mint.publicKey);
  const instructions: TransactionInstruction[] = [
    SystemProgram.createAccount({ fromPubkey: authority.publicKey, newAccountPubkey: mint.publicKey, lamports: rent, space: MINT_SIZE, programId: TOKEN_PROGRAM_ID }),
    createInitializeMint2Instruction(mint.publicKey, decimals, authority.publicKey, null),
    ...[payer.publicKey, treasury.publicKey, ...Object.values(demo).map((k) => k.publicKey)].map((owner) =>
      createAssociatedTokenAccountIdempotentInstruction(authority.publicKey, ata(owner), owner, mint.publicKey),
    ),
    createMintToCheckedInstruction(mint.publicKey, ata(payer.publicKey), authority.publicKey, PAYER_TOKENS * unit, decimals),
    ...Object.values(demo).map((k) => createMintToCheckedInstruction(mint.publicKey, ata(k.publicKey), authority.publicKey, DEMO_TOKENS * unit, decimals)),
    // The demo Engine wallet lets the escrow authority move its tokens (an SPL delegate approval), so its
    // reservations are escrowed from, and refunded to, that wallet.
    createApproveCheckedInstruction(ata(demo.engine.publicKey), mint.publicKey, authority.publicKey, demo.engine.publicKey, DEMO_TOKENS * unit, decimals),
  ];
  const { blockhash, lastValidBlockHeight } = await connection.getLatestBlockhash();
  const tx = new Transaction({ feePayer: authority.publicKey, blockhash, lastValidBlockHeight }).add(...instructions);
  tx.sign(authority, mint, demo.engine);
  await connection.sendRawTransaction(tx.serialize());

  const setup: LocalChainSetup = {
    cluster: 'localnet',
    mint: mint.publicKey.toBase58(),
    decimals,
    treasury: treasury.publicKey.toBase58(),
    escrowAuthority: authority.publicKey.toBase58(),
    payer: payer.publicKey.toBase58(),
    demoWallets: Object.fromEntries(Object.entries(demo).map(([n, k]) => [n, k.publicKey.toBase58()])),
    keyFiles: {
      escrowAuthority: file('escrow-authority'),
      payer: file('payer'),
      demo: Object.fromEntries(DEMO_WALLETS.map((n) => [n, file(`demo-${n}`)])),
    },
  };
  writeFileSync(setupFile, JSON.stringify(setup, null, 2));
  return setup;
}

/** Public keys generated for local ledgers: a mainnet server must never run with one of them. */
export function demoPublicKeys(keysDir: string): string[] {
  const setupFile = path.join(keysDir, 'chain.json');
  if (!existsSync(setupFile)) return [];
  const setup = JSON.parse(readFileSync(setupFile, 'utf8')) as LocalChainSetup;
  return [setup.escrowAuthority, setup.payer, setup.treasury, ...Object.values(setup.demoWallets)];
}

export { loadKeypair };
