import {
  createAssociatedTokenAccountIdempotentInstruction,
  createInitializeMint2Instruction,
  createMintToCheckedInstruction,
  MINT_SIZE,
  TOKEN_PROGRAM_ID,
} from '@solana/spl-token';
import {
  Connection,
  Keypair,
  LAMPORTS_PER_SOL,
  PublicKey,
  SystemProgram,
  Transaction,
  VersionedTransaction,
  type TransactionInstruction,
} from '@solana/web3.js';
import { getBase58Decoder, getBase58Encoder } from '@solana/kit';
import { ApplicationFailure } from '@temporalio/common';
import fs from 'node:fs';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { ensureLocalChain, type LocalChainSetup } from '../../src/chain/bootstrap';
import { MEMO_PROGRAM_ID, tokenAccountOf } from '../../src/chain/instructions';
import { loadKeypair } from '../../src/chain/keys';
import { startLocalLedger, type LocalLedger } from '../../src/chain/local-ledger';
import { createChainSettlement, type ChainCommitment, type ChainSettlementDeps, type SettlementHooks } from '../../src/chain/settlement';
import type { Db } from '../../src/db/client';
import { nodes } from '../../src/db/schema';
import { seededRandom } from './random';

export { seededRandom };

const b58 = getBase58Decoder();

/** A local ledger of one test file's own, set up like `npm start` sets up the embedded one. */
export interface TestChain {
  ledger: LocalLedger;
  /** The ledger's own JSON-RPC URL (no proxy). */
  url: string;
  /** A direct connection, for reading balances and statuses: never faulty. */
  connection: Connection;
  setup: LocalChainSetup;
  keysDir: string;
  authority: Keypair;
  payer: Keypair;
  mint: PublicKey;
  treasury: PublicKey;
  decimals: number;
  stop(): Promise<void>;
}

/** A temp directory removed by the returned function. */
export function tempDir(label: string): { dir: string; remove(): void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `cyxwiz-${label}-`));
  return { dir, remove: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Starts a ledger on a free port (in memory unless `dataDir`) and runs the first-start bootstrap into a temp keys
 * directory (or `keysDir`). Blocks tick every `slotMs` (400 ms, as on a cluster: a blockhash lives 60 s).
 */
export async function startTestChain(opts: { dataDir?: string; keysDir?: string; slotMs?: number; decimals?: number } = {}): Promise<TestChain> {
  const ledger = await startLocalLedger({ port: 0, dataDir: opts.dataDir, slotMs: opts.slotMs ?? 400 });
  const keys = opts.keysDir ? { dir: opts.keysDir, remove: () => undefined } : tempDir('keys');
  const connection = new Connection(ledger.url, 'confirmed');
  const setup = await ensureLocalChain(connection, keys.dir, opts.decimals ?? 9);
  return {
    ledger,
    url: ledger.url,
    connection,
    setup,
    keysDir: keys.dir,
    authority: loadKeypair('escrow authority', { file: setup.keyFiles.escrowAuthority }),
    payer: loadKeypair('payer', { file: setup.keyFiles.payer }),
    mint: new PublicKey(setup.mint),
    treasury: new PublicKey(setup.treasury),
    decimals: setup.decimals,
    stop: async () => {
      await ledger.stop();
      keys.remove();
    },
  };
}

/**
 * `fetch` whose network errors are `Error`s of this realm. Jest runs test code in a vm context while the global
 * fetch (undici) throws TypeErrors of the outer realm; web3.js's RPC client reports a failed fetch only when
 * `err instanceof Error`, so under jest a dropped connection would leave the call hanging forever (outside jest
 * the realms are the same and the call fails at once, which is what this restores).
 */
export const sameRealmFetch = (input: Parameters<typeof fetch>[0], init?: Parameters<typeof fetch>[1]): Promise<Response> =>
  fetch(input, init).catch((err: unknown) => {
    const cause = (err as { cause?: { message?: string } })?.cause?.message;
    throw new Error(`${String((err as Error)?.message ?? err)}${cause ? `: ${cause}` : ''}`);
  });

/** A settlement on `chain` as the worker builds it; `rpcUrl` points it at a proxy, `hooks` crash it. */
export function settlementOn(
  chain: TestChain,
  db: Db,
  opts: Partial<Omit<ChainSettlementDeps, 'db'>> & { rpcUrl?: string; hooks?: SettlementHooks } = {},
) {
  const commitment: ChainCommitment = opts.commitment ?? 'confirmed';
  const connection = opts.connection ?? new Connection(opts.rpcUrl ?? chain.url, { commitment, disableRetryOnRateLimit: true, fetch: sameRealmFetch });
  return createChainSettlement({
    db,
    connection,
    commitment,
    mint: opts.mint ?? chain.mint,
    decimals: opts.decimals ?? chain.decimals,
    authority: opts.authority ?? chain.authority,
    treasury: opts.treasury ?? chain.treasury,
    payer: 'payer' in opts ? opts.payer : chain.payer,
    platformFeeBps: opts.platformFeeBps ?? 1000,
    confirmTimeoutMs: opts.confirmTimeoutMs ?? 5_000,
    pollMs: opts.pollMs ?? 20,
    blockhashReuseMs: opts.blockhashReuseMs,
    priorityFeeMicroLamports: opts.priorityFeeMicroLamports,
    hooks: opts.hooks,
  });
}

export const ataOf = (wallet: PublicKey, mint: PublicKey): PublicKey => tokenAccountOf(wallet, mint);

/** A token account's balance read through `getTokenAccountBalance`; 0 when the account does not exist. */
export async function tokenBalance(connection: Connection, account: PublicKey): Promise<bigint> {
  const info = await connection.getAccountInfo(account);
  if (!info) return 0n;
  const { value } = await connection.getTokenAccountBalance(account);
  return BigInt(value.amount);
}

/** Balances of several token accounts at once, keyed as given. */
export async function balances<K extends string>(connection: Connection, accounts: Record<K, PublicKey>): Promise<Record<K, bigint>> {
  const out = {} as Record<K, bigint>;
  for (const [k, a] of Object.entries(accounts) as [K, PublicKey][]) out[k] = await tokenBalance(connection, a);
  return out;
}

/** Signs and sends a transaction directly to the ledger (which executes it on receipt); returns its signature. */
export async function sendTransaction(connection: Connection, feePayer: Keypair, instructions: TransactionInstruction[], extraSigners: Keypair[] = []): Promise<string> {
  const { blockhash, lastValidBlockHeight } = await connection.getLatestBlockhash();
  const tx = new Transaction({ feePayer: feePayer.publicKey, blockhash, lastValidBlockHeight }).add(...instructions);
  tx.sign(feePayer, ...extraSigners);
  return connection.sendRawTransaction(tx.serialize());
}

/** Mints `units` of `mint` (whose authority is the chain's escrow authority unless given) to `owner`'s token account. */
export async function mintUnits(chain: TestChain, owner: PublicKey, units: bigint, opts: { mint?: PublicKey; decimals?: number } = {}): Promise<void> {
  const mint = opts.mint ?? chain.mint;
  const ata = ataOf(owner, mint);
  await sendTransaction(chain.connection, chain.authority, [
    createAssociatedTokenAccountIdempotentInstruction(chain.authority.publicKey, ata, owner, mint),
    createMintToCheckedInstruction(mint, ata, chain.authority.publicKey, units, opts.decimals ?? chain.decimals),
  ]);
}

/** Creates another SPL mint whose authority is the chain's escrow authority (a token that is not CYXWIZ). */
export async function createOtherMint(chain: TestChain, decimals = chain.decimals): Promise<PublicKey> {
  const mint = Keypair.generate();
  const rent = await chain.connection.getMinimumBalanceForRentExemption(MINT_SIZE);
  await sendTransaction(
    chain.connection,
    chain.authority,
    [
      SystemProgram.createAccount({ fromPubkey: chain.authority.publicKey, newAccountPubkey: mint.publicKey, lamports: rent, space: MINT_SIZE, programId: TOKEN_PROGRAM_ID }),
      createInitializeMint2Instruction(mint.publicKey, decimals, chain.authority.publicKey, null),
    ],
    [mint],
  );
  return mint.publicKey;
}

/** A new wallet with SOL for fees and its token account of the mint, holding `units`. */
export async function fundedWallet(chain: TestChain, units: bigint, opts: { mint?: PublicKey; decimals?: number } = {}): Promise<Keypair> {
  const wallet = Keypair.generate();
  await chain.connection.requestAirdrop(wallet.publicKey, 10 * LAMPORTS_PER_SOL);
  await mintUnits(chain, wallet.publicKey, units, opts);
  return wallet;
}

/**
 * A new wallet that can be paid: its token account for `chain`'s mint is open (the platform never opens one for
 * a payee; its owner does).
 */
export async function receivingWallet(chain: TestChain): Promise<PublicKey> {
  const wallet = Keypair.generate().publicKey;
  await openTokenAccount(chain, wallet);
  return wallet;
}

/** Opens `owner`'s token account for `chain`'s mint, as its owner would (the rent paid by the test's authority). */
export async function openTokenAccount(chain: TestChain, owner: PublicKey): Promise<void> {
  await sendTransaction(chain.connection, chain.authority, [
    createAssociatedTokenAccountIdempotentInstruction(chain.authority.publicKey, ataOf(owner, chain.mint), owner, chain.mint),
  ]);
}

/** Registers a node row (the columns release reads). */
export async function insertNode(db: Db, id: string, wallet = ''): Promise<void> {
  await db.insert(nodes).values({ id, walletAddress: wallet }).onConflictDoUpdate({ target: nodes.id, set: { walletAddress: wallet } });
}

/** What a settlement call failed with, asserting it failed at all. */
export async function failureOf(promise: Promise<unknown>): Promise<ApplicationFailure> {
  let result: unknown;
  try {
    result = await promise;
  } catch (err) {
    if (!(err instanceof ApplicationFailure)) throw new Error(`expected an ApplicationFailure, got ${(err as Error)?.stack ?? String(err)}`);
    return err;
  }
  throw new Error(`expected a failure, got ${JSON.stringify(result, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))}`);
}

/** True for the failures Temporal would not retry. */
export const isPermanent = (err: unknown): boolean => err instanceof ApplicationFailure && err.nonRetryable === true;

/**
 * Calls `fn` until it succeeds, as Temporal retries an activity: every error but a non-retryable
 * ApplicationFailure is retried. Returns the result and how many attempts failed.
 */
export async function withRetries<T>(fn: () => Promise<T>, opts: { attempts?: number; delayMs?: number } = {}): Promise<{ value: T; failures: unknown[] }> {
  const failures: unknown[] = [];
  for (let i = 0; i < (opts.attempts ?? 60); i++) {
    try {
      return { value: await fn(), failures };
    } catch (err) {
      if (isPermanent(err)) throw err;
      failures.push(err);
      await new Promise((r) => setTimeout(r, opts.delayMs ?? 5));
    }
  }
  throw new Error(`still failing after ${failures.length} attempts; last: ${String((failures.at(-1) as Error)?.message)}`);
}

/** The memo text of a wire transaction, if it carries one. */
export function memoOf(bytes: Buffer): string | undefined {
  const tx = VersionedTransaction.deserialize(bytes);
  const keys = tx.message.staticAccountKeys;
  const ix = tx.message.compiledInstructions.find((i) => keys[i.programIdIndex]?.equals(MEMO_PROGRAM_ID));
  return ix ? Buffer.from(ix.data).toString('utf8') : undefined;
}

export const signatureOf = (bytes: Buffer): string => b58.decode(VersionedTransaction.deserialize(bytes).signatures[0]);

// ---------------------------------------------------------------------------------------------------------------
// A JSON-RPC proxy that records every transaction sent through it and injects faults.

/** What the proxy does with one request. */
export type Fault =
  | { kind: 'pass' }
  /** 429 Too Many Requests, not forwarded. */
  | { kind: 'rate-limit' }
  /** 503 Service Unavailable, not forwarded. */
  | { kind: 'unavailable' }
  /** Forwarded (the ledger acts on it), then the connection is cut before the client sees the answer. */
  | { kind: 'drop-response' }
  /** Forwarded after `ms`. */
  | { kind: 'delay'; ms: number }
  /**
   * Answered by a node `slots` behind the cluster (a lagging backend behind a load balancer): a status request
   * gets no statuses and that node's slot; other requests pass.
   */
  | { kind: 'lagging'; slots: number }
  /** A send answered with its signature but never forwarded (dropped on its way to a leader). */
  | { kind: 'swallow' };

export interface ProxiedCall {
  index: number;
  method: string;
}

export interface SentTransaction {
  signature: string;
  bytes: Buffer;
  memo?: string;
  fault: Fault['kind'];
  /** The slot the sender asked the preflighting node to have reached. */
  minContextSlot?: number;
  /** Whether the ledger received the request. */
  forwarded: boolean;
}

export interface RpcProxy {
  url: string;
  /** Every sendTransaction request that reached the proxy, in order. */
  sent: SentTransaction[];
  /** How many of each fault were injected. */
  injected: Record<Fault['kind'], number>;
  setFaults(plan: (call: ProxiedCall) => Fault): void;
  stop(): Promise<void>;
}

/** Faults drawn at random: each request fails with probability `rate`, spread over the kinds given. */
export function randomFaults(opts: { seed: number; rate: number; kinds?: Fault[] }): (call: ProxiedCall) => Fault {
  const rnd = seededRandom(opts.seed);
  const kinds = opts.kinds ?? [{ kind: 'rate-limit' }, { kind: 'unavailable' }, { kind: 'drop-response' }, { kind: 'delay', ms: 150 }];
  return () => (rnd() < opts.rate ? kinds[Math.floor(rnd() * kinds.length)] : { kind: 'pass' });
}

/** Starts a JSON-RPC proxy in front of `target` (no faults until {@link RpcProxy.setFaults}). */
export async function startRpcProxy(target: string): Promise<RpcProxy> {
  let plan: (call: ProxiedCall) => Fault = () => ({ kind: 'pass' });
  let index = 0;
  const sent: SentTransaction[] = [];
  const injected: Record<Fault['kind'], number> = { pass: 0, 'rate-limit': 0, unavailable: 0, 'drop-response': 0, delay: 0, lagging: 0, swallow: 0 };
  const upstream = new URL(target);

  const forward = (body: Buffer) =>
    new Promise<{ status: number; body: Buffer }>((resolve, reject) => {
      const req = httpRequest(
        { hostname: upstream.hostname, port: upstream.port, path: upstream.pathname, method: 'POST', headers: { 'content-type': 'application/json' } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode ?? 500, body: Buffer.concat(chunks) }));
          res.on('error', reject);
        },
      );
      req.on('error', reject);
      req.end(body);
    });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks);
    let call: { method?: string; params?: unknown[] } = {};
    try {
      const parsed = JSON.parse(body.toString('utf8'));
      call = Array.isArray(parsed) ? parsed[0] ?? {} : parsed;
    } catch {
      // forwarded as is; the ledger answers the parse error
    }
    const method = call.method ?? '?';
    const fault = plan({ index: index++, method });
    injected[fault.kind] += 1;
    let record: SentTransaction | undefined;
    if (method === 'sendTransaction') {
      const [encoded, config] = (call.params ?? []) as [string, { encoding?: string; minContextSlot?: number } | undefined];
      const bytes = config?.encoding === 'base64' ? Buffer.from(encoded, 'base64') : Buffer.from(getBase58Encoder().encode(encoded));
      record = { signature: signatureOf(bytes), bytes, memo: memoOf(bytes), fault: fault.kind, minContextSlot: config?.minContextSlot, forwarded: false };
      sent.push(record);
    }
    if (fault.kind === 'rate-limit' || fault.kind === 'unavailable') {
      const status = fault.kind === 'rate-limit' ? 429 : 503;
      res.writeHead(status, { 'content-type': 'text/plain' }).end(fault.kind);
      return;
    }
    if (fault.kind === 'swallow' && record) {
      const id = (call as { id?: unknown }).id ?? null;
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id, result: record.signature }));
      return;
    }
    if (fault.kind === 'delay') await new Promise((r) => setTimeout(r, fault.ms));
    if (record) record.forwarded = true;
    const answer = await forward(body);
    if (fault.kind === 'drop-response') {
      res.socket?.destroy();
      return;
    }
    if (fault.kind === 'lagging' && method === 'getSignatureStatuses') {
      const reply = JSON.parse(answer.body.toString('utf8'));
      const { context, value } = reply.result;
      reply.result = { context: { ...context, slot: Math.max(0, context.slot - fault.slots) }, value: value.map(() => null) };
      res.writeHead(answer.status, { 'content-type': 'application/json' }).end(JSON.stringify(reply));
      return;
    }
    res.writeHead(answer.status, { 'content-type': 'application/json' }).end(answer.body);
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) res.writeHead(502).end();
    });
  });
  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const a = server.address();
      resolve(typeof a === 'object' && a ? a.port : 0);
    });
  });
  return {
    url: `http://127.0.0.1:${port}`,
    sent,
    injected,
    setFaults: (p) => {
      plan = p;
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/**
 * The transactions among `candidates` that landed on the ledger and carry `memo`, deduplicated by signature:
 * the on-chain count of one leg's transfers.
 */
export async function landedWithMemo(connection: Connection, candidates: { signature: string; bytes: Buffer }[], memo: string): Promise<string[]> {
  const signatures = [...new Set(candidates.filter((c) => memoOf(c.bytes) === memo).map((c) => c.signature))];
  if (signatures.length === 0) return [];
  const { value } = await connection.getSignatureStatuses(signatures, { searchTransactionHistory: true });
  return signatures.filter((_, i) => value[i] !== null && value[i]?.err === null);
}
