import {
  createApproveCheckedInstruction,
  createAssociatedTokenAccountIdempotentInstruction,
  createTransferCheckedInstruction,
  getAccount,
  TokenAccountNotFoundError,
} from '@solana/spl-token';
import { Connection, Keypair, LAMPORTS_PER_SOL, PublicKey, Transaction } from '@solana/web3.js';
import { escrowAddress, MEMO_PROGRAM_ID, tokenAccountOf } from '../../src/chain/instructions';
import { loadKeypair } from '../../src/chain/keys';
import { testChainSetup, testSolanaRpcUrl } from '../support/env';
import { eventually } from '../support/system';

type Address = PublicKey | string;
const key = (a: Address) => (typeof a === 'string' ? new PublicKey(a) : a);

/**
 * The shared local Solana ledger as an auditor and a paying Engine see it: token balances read through a
 * plain web3.js `Connection`, never through the system under test.
 */
export function testChain() {
  const setup = testChainSetup();
  const connection = new Connection(testSolanaRpcUrl(), 'confirmed');
  const mint = new PublicKey(setup.mint);
  const authority = new PublicKey(setup.escrowAuthority);
  const treasury = new PublicKey(setup.treasury);
  /** The server's payer account (escrows jobs submitted without their own escrow transaction). */
  const payer = new PublicKey(setup.payer);

  /** The wallet's CYXWIZ token account (its associated token account). */
  const ata = (wallet: Address) => tokenAccountOf(key(wallet), mint);
  /** The job's escrow token account. */
  const escrowAccount = (jobId: string) => escrowAddress(authority, jobId);

  /** Balance of a CYXWIZ token account in smallest units; 0 when the account does not exist. */
  async function accountBalance(account: Address): Promise<bigint> {
    try {
      const acc = await getAccount(connection, key(account), 'confirmed');
      if (!acc.mint.equals(mint)) throw new Error(`${key(account).toBase58()} holds mint ${acc.mint.toBase58()}, not CYXWIZ`);
      return acc.amount;
    } catch (err) {
      if (err instanceof TokenAccountNotFoundError) return 0n;
      throw err;
    }
  }

  /** Balances of named token accounts, read side by side. */
  async function balances<K extends string>(accounts: Record<K, Address>): Promise<Record<K, bigint>> {
    const entries = await Promise.all(Object.entries<Address>(accounts).map(async ([name, a]) => [name, await accountBalance(a)] as const));
    return Object.fromEntries(entries) as Record<K, bigint>;
  }

  /**
   * How a confirmed transaction changed each CYXWIZ token account it touched, by token account address
   * (accounts it left unchanged are omitted). Throws when the chain does not know the signature.
   */
  async function tokenMoves(signature: string): Promise<Record<string, bigint>> {
    const tx = await connection.getTransaction(signature, { commitment: 'confirmed', maxSupportedTransactionVersion: 0 });
    if (!tx?.meta) throw new Error(`transaction ${signature} is not on chain`);
    if (tx.meta.err) throw new Error(`transaction ${signature} failed on chain: ${JSON.stringify(tx.meta.err)}`);
    const keys = tx.transaction.message.staticAccountKeys.map((k) => k.toBase58());
    const moves: Record<string, bigint> = {};
    const add = (list: typeof tx.meta.preTokenBalances, sign: bigint) => {
      for (const b of list ?? []) {
        if (b.mint !== mint.toBase58()) continue;
        const account = keys[b.accountIndex];
        moves[account] = (moves[account] ?? 0n) + sign * BigInt(b.uiTokenAmount.amount);
      }
    };
    add(tx.meta.preTokenBalances, -1n);
    add(tx.meta.postTokenBalances, 1n);
    for (const [a, d] of Object.entries(moves)) if (d === 0n) delete moves[a];
    return moves;
  }

  /** The memo texts a confirmed transaction carries. */
  async function memos(signature: string): Promise<string[]> {
    const tx = await connection.getTransaction(signature, { commitment: 'confirmed', maxSupportedTransactionVersion: 0 });
    if (!tx) throw new Error(`transaction ${signature} is not on chain`);
    const { message } = tx.transaction;
    return message.compiledInstructions
      .filter((ix) => message.staticAccountKeys[ix.programIdIndex].equals(MEMO_PROGRAM_ID))
      .map((ix) => Buffer.from(ix.data).toString('utf8'));
  }

  /**
   * Transfers CYXWIZ from `from`'s token account into token accounts (e.g. a job's escrow), in one transaction,
   * as a paying Engine would. @returns the signature once the transaction is confirmed.
   */
  async function transfer(from: Keypair, to: { account: Address; amount: bigint }[]): Promise<string> {
    const { blockhash, lastValidBlockHeight } = await connection.getLatestBlockhash('confirmed');
    const tx = new Transaction({ feePayer: from.publicKey, blockhash, lastValidBlockHeight }).add(
      ...to.map((t) => createTransferCheckedInstruction(ata(from.publicKey), mint, key(t.account), from.publicKey, t.amount, setup.decimals)),
    );
    tx.sign(from);
    const signature = await connection.sendRawTransaction(tx.serialize(), { preflightCommitment: 'confirmed' });
    await confirmed(signature, `transaction ${signature} to be confirmed`, 10_000);
    return signature;
  }

  /** Waits until `signature` is confirmed (the local ledger has no websocket for confirmTransaction: polled). */
  async function confirmed(signature: string, what: string, timeoutMs?: number): Promise<void> {
    await eventually(what, async () => {
      const { value } = await connection.getSignatureStatuses([signature]);
      if (value[0]?.err) throw new Error(`transaction ${signature} failed: ${JSON.stringify(value[0].err)}`);
      return value[0]?.confirmationStatus === 'confirmed' || value[0]?.confirmationStatus === 'finalized';
    }, timeoutMs);
  }

  /** A demo wallet of the local ledger (e.g. 'engine'), loaded from its key file. */
  const demoWallet = (name: string) => loadKeypair(`demo ${name} wallet`, { file: setup.keyFiles.demo[name] });

  /**
   * A new user wallet holding `units` CYXWIZ (from the demo node wallet) that lets the escrow authority move
   * `allowance` of them (an SPL approve), as a user does once before reserving nodes.
   */
  async function approvingWallet(units: bigint, allowance = units): Promise<Keypair> {
    const user = Keypair.generate();
    await connection.requestAirdrop(user.publicKey, LAMPORTS_PER_SOL);
    const funder = demoWallet('node');
    const { blockhash, lastValidBlockHeight } = await connection.getLatestBlockhash('confirmed');
    const tx = new Transaction({ feePayer: funder.publicKey, blockhash, lastValidBlockHeight }).add(
      createAssociatedTokenAccountIdempotentInstruction(funder.publicKey, ata(user.publicKey), user.publicKey, mint),
      createTransferCheckedInstruction(ata(funder.publicKey), mint, ata(user.publicKey), funder.publicKey, units, setup.decimals),
      createApproveCheckedInstruction(ata(user.publicKey), mint, authority, user.publicKey, allowance, setup.decimals),
    );
    tx.sign(funder, user);
    await confirmed(await connection.sendRawTransaction(tx.serialize()), 'the user wallet to be funded');
    return user;
  }

  /**
   * Opens `owner`'s CYXWIZ token account, as a node operator does once so the wallet can be paid (the platform
   * never opens one for a payee); the demo node wallet pays its rent. Confirmed on return.
   */
  async function openTokenAccount(owner: Address): Promise<void> {
    const funder = demoWallet('node');
    const { blockhash, lastValidBlockHeight } = await connection.getLatestBlockhash('confirmed');
    const tx = new Transaction({ feePayer: funder.publicKey, blockhash, lastValidBlockHeight }).add(
      createAssociatedTokenAccountIdempotentInstruction(funder.publicKey, ata(owner), key(owner), mint),
    );
    tx.sign(funder);
    await confirmed(await connection.sendRawTransaction(tx.serialize()), `the token account of ${key(owner).toBase58()} to be open`);
  }

  return {
    connection, mint, decimals: setup.decimals, authority, treasury, payer, ata, escrowAccount, accountBalance, balances, tokenMoves, memos, transfer,
    demoWallet, approvingWallet, openTokenAccount,
  };
}

export type TestChain = ReturnType<typeof testChain>;

/** Token account address → change, as {@link TestChain.tokenMoves} reports it, for readable expectations. */
export const moves = (entries: [PublicKey, bigint][]): Record<string, bigint> =>
  Object.fromEntries(entries.map(([a, d]) => [a.toBase58(), d]));
