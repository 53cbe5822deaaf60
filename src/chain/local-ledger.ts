import { address, getBase58Decoder, getBase58Encoder, getTransactionDecoder, lamports } from '@solana/kit';
import { TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID } from '@solana/spl-token';
import { PublicKey, VersionedTransaction } from '@solana/web3.js';
import { FailedTransactionMetadata, LiteSVM } from 'litesvm';
import { appendFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import path from 'node:path';

/**
 * A local Solana ledger: the real Solana runtime (LiteSVM) behind a JSON-RPC endpoint, so the very same
 * `Connection`-based code runs against it and against devnet or mainnet. Blocks advance on a timer and
 * blockhashes expire after 150 blocks as on a cluster, so the exactly-once logic meets real expiry.
 * State (accounts and transactions) persists in `dataDir`.
 */
export interface LocalLedgerOptions {
  /** Where the snapshot and the transaction log live; in memory when absent. */
  dataDir?: string;
  host?: string;
  port: number;
  /** Milliseconds per block (Solana: ~400). */
  slotMs?: number;
  log?: (msg: string) => void;
}

export interface LocalLedger {
  url: string;
  port: number;
  /** Advances the chain by `blocks` blocks at once (expires blockhashes); for operators and tests. */
  advance(blocks: number): void;
  stop(): Promise<void>;
}

/** Blocks a blockhash stays valid for, as on Solana clusters. */
const BLOCKHASH_VALIDITY = 150;
/** How often the height is saved between transactions (see heightSaver). */
const HEIGHT_SAVE_MS = 5000;
const TOKEN_PROGRAMS = new Set([TOKEN_PROGRAM_ID.toBase58(), TOKEN_2022_PROGRAM_ID.toBase58()]);
const b58 = { encode: getBase58Decoder(), decode: getBase58Encoder() };

interface StoredTx {
  signature: string;
  slot: number;
  blockTime: number;
  tx: string; // base64 wire bytes
  meta: RpcMeta;
}

interface TokenBalance {
  accountIndex: number;
  mint: string;
  owner: string;
  programId: string;
  uiTokenAmount: { amount: string; decimals: number; uiAmount: number | null; uiAmountString: string };
}

interface RpcMeta {
  err: unknown;
  fee: number;
  preBalances: number[];
  postBalances: number[];
  preTokenBalances: TokenBalance[];
  postTokenBalances: TokenBalance[];
  logMessages: string[];
  innerInstructions: unknown[];
  rewards: unknown[];
  loadedAddresses: { writable: string[]; readonly: string[] };
  computeUnitsConsumed: number;
  status: { Ok: null } | { Err: unknown };
}

class RpcError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly data?: unknown,
  ) {
    super(message);
  }
}

/** Starts the ledger and its JSON-RPC endpoint. */
export async function startLocalLedger(opts: LocalLedgerOptions): Promise<LocalLedger> {
  const log = opts.log ?? (() => undefined);
  const dir = opts.dataDir;
  const txFile = dir && path.join(dir, 'transactions.jsonl');
  const stateFile = dir && path.join(dir, 'ledger.json');
  const snapshotOf = (generation: number) => path.join(dir!, `ledger.${generation}.snapshot`);
  if (dir) mkdirSync(dir, { recursive: true });

  // Crash consistency: every save writes the accounts to a new generation's snapshot, then atomically
  // replaces ledger.json, which names that generation. Transactions are logged with the generation that will
  // include them, and on load a logged transaction newer than the saved generation never happened (its
  // account changes were not saved either), so the log and the balances always agree.
  const fresh = () => new LiteSVM().withSigverify(true).withBlockhashCheck(false).withTransactionHistory(0n);
  const state: { height: number; blockhashes: Record<string, number>; generation: number } =
    stateFile && existsSync(stateFile) ? { generation: 0, ...JSON.parse(readFileSync(stateFile, 'utf8')) } : { height: 1, blockhashes: {}, generation: 0 };
  const svm = dir && state.generation > 0 && existsSync(snapshotOf(state.generation))
    ? LiteSVM.loadFromFile(snapshotOf(state.generation)).withBlockhashCheck(false)
    : fresh();
  const transactions = new Map<string, StoredTx>();
  if (txFile && existsSync(txFile)) {
    const kept: string[] = [];
    let dropped = 0;
    for (const line of readFileSync(txFile, 'utf8').split('\n')) {
      if (!line) continue;
      const t = JSON.parse(line) as StoredTx & { generation?: number };
      if ((t.generation ?? 0) <= state.generation) {
        transactions.set(t.signature, t);
        kept.push(line);
      } else {
        dropped += 1;
      }
    }
    // A transaction logged for a generation that was never saved did not happen: out of the log for good, or the
    // next save (which reaches that generation number) would bring it back as landed, its changes lost.
    if (dropped > 0) {
      writeFileSync(`${txFile}.tmp`, kept.map((l) => `${l}\n`).join(''));
      renameSync(`${txFile}.tmp`, txFile);
      log(`local ledger: ${dropped} logged transaction(s) of an unsaved generation dropped`);
    }
  }
  let currentBlockhash = svm.latestBlockhash();
  state.blockhashes[currentBlockhash] ??= state.height;
  log(`local ledger at height ${state.height}, ${transactions.size} transactions`);

  const persist = () => {
    if (!dir || !stateFile) return;
    const generation = state.generation + 1;
    svm.saveToFile(snapshotOf(generation));
    // Forget blockhashes that can no longer be used.
    for (const [h, at] of Object.entries(state.blockhashes)) if (at + BLOCKHASH_VALIDITY < state.height) delete state.blockhashes[h];
    writeFileSync(`${stateFile}.tmp`, JSON.stringify({ ...state, generation }));
    renameSync(`${stateFile}.tmp`, stateFile);
    if (state.generation > 0) rmSync(snapshotOf(state.generation), { force: true });
    state.generation = generation;
  };

  function advance(blocks: number): void {
    state.height += blocks;
    svm.warpToSlot(BigInt(state.height));
  }

  const ticker = setInterval(() => advance(1), opts.slotMs ?? 400);
  ticker.unref();
  // The height (and the blockhashes it makes valid) saved now and then between transactions: after a crash the
  // chain does not fall back to its last transaction's height, where attempts signed since would wait for
  // their blockhash to expire as long as the ledger had been idle.
  const heightSaver = setInterval(() => {
    if (!stateFile || state.generation === 0) return;
    try {
      writeFileSync(`${stateFile}.tmp`, JSON.stringify(state));
      renameSync(`${stateFile}.tmp`, stateFile);
    } catch (err) {
      log(`local ledger: could not save its height: ${(err as Error).message}`);
    }
  }, HEIGHT_SAVE_MS);
  heightSaver.unref();

  const context = () => ({ slot: state.height, apiVersion: '2.2.0' });

  function latestBlockhash() {
    if (state.blockhashes[currentBlockhash] !== state.height) {
      svm.expireBlockhash();
      currentBlockhash = svm.latestBlockhash();
      state.blockhashes[currentBlockhash] = state.height;
    }
    return { blockhash: currentBlockhash, lastValidBlockHeight: state.height + BLOCKHASH_VALIDITY };
  }

  function accountInfo(pubkey: string) {
    const a = svm.getAccount(address(pubkey));
    if (!a.exists) return null;
    return {
      data: [Buffer.from(a.data).toString('base64'), 'base64'],
      executable: a.executable,
      lamports: Number(a.lamports),
      owner: a.programAddress,
      rentEpoch: 0,
      space: a.data.length,
    };
  }

  function tokenBalances(keys: string[]): TokenBalance[] {
    const out: TokenBalance[] = [];
    keys.forEach((key, accountIndex) => {
      const a = svm.getAccount(address(key));
      if (!a.exists || !TOKEN_PROGRAMS.has(a.programAddress) || a.data.length < 165) return;
      const data = Buffer.from(a.data);
      const mint = new PublicKey(data.subarray(0, 32)).toBase58();
      const m = svm.getAccount(address(mint));
      const decimals = m.exists ? Buffer.from(m.data)[44] : 0;
      const amount = data.readBigUInt64LE(64);
      const ui = Number(amount) / 10 ** decimals;
      out.push({
        accountIndex,
        mint,
        owner: new PublicKey(data.subarray(32, 64)).toBase58(),
        programId: a.programAddress,
        uiTokenAmount: { amount: amount.toString(), decimals, uiAmount: ui, uiAmountString: String(ui) },
      });
    });
    return out;
  }

  const lamportsOf = (keys: string[]) => keys.map((k) => Number(svm.getBalance(address(k)) ?? 0n));

  function sendTransaction(encoded: string, encoding: string): string {
    const bytes = encoding === 'base58' ? Buffer.from(b58.decode.encode(encoded)) : Buffer.from(encoded, 'base64');
    const parsed = VersionedTransaction.deserialize(bytes);
    const signature = b58.encode.decode(parsed.signatures[0]);
    if (transactions.has(signature)) {
      throw new RpcError(-32002, 'Transaction simulation failed: This transaction has already been processed', {
        err: 'AlreadyProcessed',
        logs: [],
      });
    }
    const validFrom = state.blockhashes[parsed.message.recentBlockhash];
    if (validFrom === undefined || validFrom + BLOCKHASH_VALIDITY < state.height) {
      throw new RpcError(-32002, 'Transaction simulation failed: Blockhash not found', { err: 'BlockhashNotFound', logs: [] });
    }
    const keys = parsed.message.staticAccountKeys.map((k) => k.toBase58());
    const kitTx = getTransactionDecoder().decode(bytes);
    const simulated = svm.simulateTransaction(kitTx);
    if (simulated instanceof FailedTransactionMetadata) {
      const logs = simulated.meta().logs();
      throw new RpcError(-32002, `Transaction simulation failed: ${simulated.toString()}`, { err: simulated.toString(), logs });
    }
    const preBalances = lamportsOf(keys);
    const preTokenBalances = tokenBalances(keys);
    const result = svm.sendTransaction(kitTx);
    if (result instanceof FailedTransactionMetadata) {
      throw new RpcError(-32002, `Transaction failed: ${result.toString()}`, { err: result.toString(), logs: result.meta().logs() });
    }
    const stored: StoredTx = {
      signature,
      slot: state.height,
      blockTime: Math.floor(Date.now() / 1000),
      tx: bytes.toString('base64'),
      meta: {
        err: null,
        fee: 5000 * parsed.signatures.length,
        preBalances,
        postBalances: lamportsOf(keys),
        preTokenBalances,
        postTokenBalances: tokenBalances(keys),
        logMessages: result.logs(),
        innerInstructions: [],
        rewards: [],
        loadedAddresses: { writable: [], readonly: [] },
        computeUnitsConsumed: Number(result.computeUnitsConsumed()),
        status: { Ok: null },
      },
    };
    transactions.set(signature, stored);
    if (txFile) appendFileSync(txFile, `${JSON.stringify({ ...stored, generation: state.generation + 1 })}\n`);
    persist();
    return signature;
  }

  function getTransaction(signature: string) {
    const t = transactions.get(signature);
    if (!t) return null;
    const parsed = VersionedTransaction.deserialize(Buffer.from(t.tx, 'base64'));
    const m = parsed.message;
    return {
      slot: t.slot,
      blockTime: t.blockTime,
      version: 'legacy',
      transaction: {
        signatures: parsed.signatures.map((s) => b58.encode.decode(s)),
        message: {
          accountKeys: m.staticAccountKeys.map((k) => k.toBase58()),
          header: m.header,
          instructions: m.compiledInstructions.map((ix) => ({
            programIdIndex: ix.programIdIndex,
            accounts: ix.accountKeyIndexes,
            data: b58.encode.decode(ix.data),
            stackHeight: null,
          })),
          recentBlockhash: m.recentBlockhash,
        },
      },
      meta: t.meta,
    };
  }

  const methods: Record<string, (params: any[]) => unknown> = {
    getHealth: () => 'ok',
    getVersion: () => ({ 'solana-core': '2.2.0-litesvm', 'feature-set': 0 }),
    getGenesisHash: () => 'cyxwiz-local-ledger',
    getSlot: () => state.height,
    getBlockHeight: () => state.height,
    getEpochInfo: () => ({ absoluteSlot: state.height, blockHeight: state.height, epoch: 0, slotIndex: state.height, slotsInEpoch: 432000 }),
    getLatestBlockhash: () => ({ context: context(), value: latestBlockhash() }),
    isBlockhashValid: ([hash]) => {
      const at = state.blockhashes[hash as string];
      return { context: context(), value: at !== undefined && at + BLOCKHASH_VALIDITY >= state.height };
    },
    getBalance: ([pubkey]) => ({ context: context(), value: Number(svm.getBalance(address(pubkey as string)) ?? 0n) }),
    getAccountInfo: ([pubkey]) => ({ context: context(), value: accountInfo(pubkey as string) }),
    getMultipleAccounts: ([keys]) => ({ context: context(), value: (keys as string[]).map(accountInfo) }),
    getMinimumBalanceForRentExemption: ([len]) => Number(svm.minimumBalanceForRentExemption(BigInt(len as number))),
    getTokenAccountBalance: ([pubkey]) => {
      const [balance] = tokenBalances([pubkey as string]);
      if (!balance) throw new RpcError(-32602, 'Invalid param: not a token account');
      return { context: context(), value: balance.uiTokenAmount };
    },
    getFeeForMessage: () => ({ context: context(), value: 5000 }),
    requestAirdrop: ([pubkey, amount]) => {
      const r = svm.airdrop(address(pubkey as string), lamports(BigInt(amount as number)));
      if (!r || r instanceof FailedTransactionMetadata) throw new RpcError(-32603, 'airdrop failed');
      persist();
      return b58.encode.decode(r.signature());
    },
    sendTransaction: ([encoded, config]) => {
      const { encoding, minContextSlot } = (config ?? {}) as { encoding?: string; minContextSlot?: number };
      if (minContextSlot !== undefined && minContextSlot > state.height) {
        throw new RpcError(-32016, 'Minimum context slot has not been reached', { contextSlot: state.height });
      }
      return sendTransaction(encoded as string, encoding ?? 'base58');
    },
    getSignatureStatuses: ([sigs]) => ({
      context: context(),
      value: (sigs as string[]).map((s) => {
        const t = transactions.get(s);
        if (!t) return null;
        return { slot: t.slot, confirmations: null, err: null, status: { Ok: null }, confirmationStatus: 'finalized' };
      }),
    }),
    getTransaction: ([signature]) => getTransaction(signature as string),
    /** Not a Solana method: moves the chain forward, expiring blockhashes. */
    cyxwiz_advance: ([blocks]) => {
      advance(Number(blocks));
      return state.height;
    },
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (req.method !== 'POST') {
      res.writeHead(405).end();
      return;
    }
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    let body: any;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32700, message: 'Parse error' } }));
      return;
    }
    const answer = (call: any) => {
      const fn = methods[call.method];
      if (!fn) return { jsonrpc: '2.0', id: call.id, error: { code: -32601, message: `Method not found: ${call.method}` } };
      try {
        return { jsonrpc: '2.0', id: call.id, result: fn(call.params ?? []) };
      } catch (err) {
        if (err instanceof RpcError) return { jsonrpc: '2.0', id: call.id, error: { code: err.code, message: err.message, data: err.data } };
        return { jsonrpc: '2.0', id: call.id, error: { code: -32603, message: (err as Error).message } };
      }
    };
    const reply = Array.isArray(body) ? body.map(answer) : answer(body);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(reply));
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err) => {
      log(`local ledger request failed: ${(err as Error).message}`);
      if (!res.headersSent) res.writeHead(500).end();
    });
  });
  const host = opts.host ?? '127.0.0.1';
  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, host, () => {
      const a = server.address();
      resolve(typeof a === 'object' && a ? a.port : opts.port);
    });
  });
  persist();

  return {
    url: `http://${host}:${port}`,
    port,
    advance,
    async stop() {
      clearInterval(ticker);
      clearInterval(heightSaver);
      await new Promise<void>((resolve) => server.close(() => resolve()));
      persist();
    },
  };
}
