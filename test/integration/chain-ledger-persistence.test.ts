import { createTransferCheckedInstruction } from '@solana/spl-token';
import { Connection, Keypair, PublicKey, Transaction } from '@solana/web3.js';
import fs from 'node:fs';
import path from 'node:path';
import { demoPublicKeys, ensureLocalChain } from '../../src/chain/bootstrap';
import { ChainConfigError, openChain } from '../../src/chain/context';
import { KeyLoadError, loadKeypair, writeKeypair } from '../../src/chain/keys';
import { startLocalLedger } from '../../src/chain/local-ledger';
import { loadConfig } from '../../src/config';
import { ataOf, startTestChain, tempDir, tokenBalance, type TestChain } from '../support/chain';

/**
 * The embedded ledger keeps its accounts and transactions in its data folder across restarts, the bootstrap
 * finds its setup again, and the key handling refuses mainnet with demo keys and never shows a secret.
 */
describe('local ledger persistence', () => {
  test('a restarted ledger on the same data folder has the same balances, transactions and setup', async () => {
    const data = tempDir('ledger');
    const keys = tempDir('keys');
    try {
      const first = await startLocalLedger({ port: 0, dataDir: data.dir });
      let connection = new Connection(first.url, 'confirmed');
      const setup = await ensureLocalChain(connection, keys.dir, 6);
      const mint = new PublicKey(setup.mint);
      const engine = loadKeypair('engine', { file: setup.keyFiles.demo.engine });
      const nodeWallet = new PublicKey(setup.demoWallets.node);
      const { blockhash, lastValidBlockHeight } = await connection.getLatestBlockhash();
      const tx = new Transaction({ feePayer: engine.publicKey, blockhash, lastValidBlockHeight }).add(
        createTransferCheckedInstruction(ataOf(engine.publicKey, mint), mint, ataOf(nodeWallet, mint), engine.publicKey, 1_234_567n, 6),
      );
      tx.sign(engine);
      const wire = tx.serialize();
      const signature = await connection.sendRawTransaction(wire);
      const accounts = [ataOf(engine.publicKey, mint), ataOf(nodeWallet, mint), ataOf(new PublicKey(setup.payer), mint), ataOf(new PublicKey(setup.treasury), mint)];
      const read = async () => ({
        tokens: await Promise.all(accounts.map((a) => tokenBalance(connection, a))),
        lamports: await connection.getBalance(engine.publicKey),
        height: await connection.getBlockHeight(),
      });
      const before = await read();
      expect(before.tokens).toEqual([10_000n * 10n ** 6n - 1_234_567n, 10_000n * 10n ** 6n + 1_234_567n, 1_000_000n * 10n ** 6n, 0n]);
      await first.stop();
      const files = fs.readdirSync(data.dir).sort();
      expect(files).toEqual(expect.arrayContaining(['ledger.json', 'transactions.jsonl']));
      // exactly one snapshot: the generation ledger.json names
      const generation = JSON.parse(fs.readFileSync(path.join(data.dir, 'ledger.json'), 'utf8')).generation;
      expect(files.filter((f) => f.endsWith('.snapshot'))).toEqual([`ledger.${generation}.snapshot`]);

      const second = await startLocalLedger({ port: 0, dataDir: data.dir });
      try {
        connection = new Connection(second.url, 'confirmed');
        const after = await read();
        expect(after.tokens).toEqual(before.tokens);
        expect(after.lamports).toBe(before.lamports);
        expect(after.height).toBeGreaterThanOrEqual(before.height); // block heights never go back (expiry depends on it)

        // The bootstrap finds its setup: same mint, no second mint created.
        expect(await ensureLocalChain(connection, keys.dir, 6)).toEqual(setup);
        expect(after.tokens[2]).toBe(1_000_000n * 10n ** 6n);

        // Old transactions still answer, and a resend of one is refused.
        const { value } = await connection.getSignatureStatuses([signature], { searchTransactionHistory: true });
        expect(value[0]).toMatchObject({ err: null, confirmationStatus: 'finalized' });
        const old = await connection.getTransaction(signature, { commitment: 'confirmed', maxSupportedTransactionVersion: 0 });
        expect(old?.meta?.err).toBeNull();
        expect(old?.transaction.signatures[0]).toBe(signature);
        const change = (owner: PublicKey) =>
          BigInt(old!.meta!.postTokenBalances!.find((b) => b.owner === owner.toBase58())!.uiTokenAmount.amount) -
          BigInt(old!.meta!.preTokenBalances!.find((b) => b.owner === owner.toBase58())!.uiTokenAmount.amount);
        expect(change(nodeWallet)).toBe(1_234_567n);
        await expect(connection.sendRawTransaction(wire)).rejects.toThrow(/already been processed/);
        expect(await tokenBalance(connection, accounts[1])).toBe(after.tokens[1]);

        // Signatures are still verified after a restart: a forged one is refused.
        const { blockhash: fresh } = await connection.getLatestBlockhash();
        const forged = new Transaction({ feePayer: engine.publicKey, blockhash: fresh, lastValidBlockHeight: 0 }).add(
          createTransferCheckedInstruction(ataOf(engine.publicKey, mint), mint, ataOf(nodeWallet, mint), engine.publicKey, 1n, 6),
        );
        forged.signatures = [{ publicKey: engine.publicKey, signature: Buffer.alloc(64, 7) }];
        await expect(connection.sendRawTransaction(forged.serialize({ verifySignatures: false }))).rejects.toThrow(/signature/i);
        expect(await tokenBalance(connection, accounts[0])).toBe(after.tokens[0]);

        // And the ledger keeps working.
        const next = await connection.sendRawTransaction(
          (() => {
            const t = new Transaction({ feePayer: engine.publicKey, blockhash: fresh, lastValidBlockHeight: 0 }).add(
              createTransferCheckedInstruction(ataOf(engine.publicKey, mint), mint, ataOf(nodeWallet, mint), engine.publicKey, 1n, 6),
            );
            t.sign(engine);
            return t.serialize();
          })(),
        );
        expect(next).not.toBe(signature);
        expect(await tokenBalance(connection, accounts[1])).toBe(after.tokens[1] + 1n);
      } finally {
        await second.stop();
      }
    } finally {
      data.remove();
      keys.remove();
    }
  });

  test('killed between logging a transaction and saving the accounts, the restarted ledger still agrees with itself', async () => {
    // `npm start` runs the ledger inside the worker's process, so a worker killed during a send kills the ledger
    // too. sendTransaction appends to transactions.jsonl and then saves a new snapshot generation and
    // ledger.json: the files on disk after a kill between the two are the old snapshot and state with the new
    // log line.
    const data = tempDir('ledger-crash');
    const keys = tempDir('keys-crash');
    try {
      const first = await startLocalLedger({ port: 0, dataDir: data.dir });
      const setup = await ensureLocalChain(new Connection(first.url, 'confirmed'), keys.dir, 6);
      await first.stop();
      const stateFiles = () => fs.readdirSync(data.dir).filter((f) => f === 'ledger.json' || f.endsWith('.snapshot'));
      const saved = Object.fromEntries(stateFiles().map((f) => [f, fs.readFileSync(path.join(data.dir, f))]));

      const second = await startLocalLedger({ port: 0, dataDir: data.dir });
      const mint = new PublicKey(setup.mint);
      const engine = loadKeypair('engine', { file: setup.keyFiles.demo.engine });
      const nodeAta = ataOf(new PublicKey(setup.demoWallets.node), mint);
      const connection = new Connection(second.url, 'confirmed');
      const before = await tokenBalance(connection, nodeAta);
      const { blockhash, lastValidBlockHeight } = await connection.getLatestBlockhash();
      const tx = new Transaction({ feePayer: engine.publicKey, blockhash, lastValidBlockHeight }).add(
        createTransferCheckedInstruction(ataOf(engine.publicKey, mint), mint, nodeAta, engine.publicKey, 5_000n, 6),
      );
      tx.sign(engine);
      const signature = await connection.sendRawTransaction(tx.serialize());
      await second.stop();
      for (const f of stateFiles()) fs.rmSync(path.join(data.dir, f));
      for (const [file, bytes] of Object.entries(saved)) fs.writeFileSync(path.join(data.dir, file), bytes);

      /** Restarts the ledger: either the transfer happened (known and applied) or it did not (unknown, not applied), never half. */
      const expectWholeOrNothing = async () => {
        const restarted = await startLocalLedger({ port: 0, dataDir: data.dir });
        try {
          const c = new Connection(restarted.url, 'confirmed');
          const { value } = await c.getSignatureStatuses([signature], { searchTransactionHistory: true });
          const moved = (await tokenBalance(c, nodeAta)) - before;
          expect({ known: value[0] !== null, moved }).toEqual(value[0] !== null ? { known: true, moved: 5_000n } : { known: false, moved: 0n });
        } finally {
          await restarted.stop();
        }
      };
      await expectWholeOrNothing();
      // And it stays so across the next restarts (the save at that start reached the generation the dropped
      // transaction was logged for: it must not come back as landed with its changes lost).
      await expectWholeOrNothing();
    } finally {
      data.remove();
      keys.remove();
    }
  });

  test('forged signatures are refused by a fresh ledger too', async () => {
    const chain = await startTestChain();
    try {
      const engine = loadKeypair('engine', { file: chain.setup.keyFiles.demo.engine });
      const { blockhash } = await chain.connection.getLatestBlockhash();
      const forged = new Transaction({ feePayer: engine.publicKey, blockhash, lastValidBlockHeight: 0 }).add(
        createTransferCheckedInstruction(ataOf(engine.publicKey, chain.mint), chain.mint, ataOf(chain.treasury, chain.mint), engine.publicKey, 1n, chain.decimals),
      );
      forged.signatures = [{ publicKey: engine.publicKey, signature: Buffer.alloc(64, 7) }];
      await expect(chain.connection.sendRawTransaction(forged.serialize({ verifySignatures: false }))).rejects.toThrow(/signature/i);
      expect(await tokenBalance(chain.connection, ataOf(chain.treasury, chain.mint))).toBe(0n);
    } finally {
      await chain.stop();
    }
  });
});

describe('key handling: no demo keys on mainnet, no secrets in errors', () => {
  let chain: TestChain;
  beforeAll(async () => {
    chain = await startTestChain();
  });
  afterAll(async () => {
    await chain?.stop();
  });

  const envFor = (over: Record<string, string> = {}) => ({
    SOLANA_RPC_URL: chain.url,
    SOLANA_CLUSTER: 'mainnet-beta',
    CYXWIZ_MINT: chain.setup.mint,
    PLATFORM_TREASURY: chain.setup.treasury,
    ESCROW_AUTHORITY_KEYPAIR: chain.setup.keyFiles.escrowAuthority,
    PAYER_KEYPAIR: chain.setup.keyFiles.payer,
    // A payer account on mainnet only when the operator says so (it pays for anyone's unfunded job).
    SERVER_PAYER_ON_MAINNET: 'true',
    TOKEN_DECIMALS: String(chain.decimals),
    ...over,
  });
  const open = (env: Record<string, string>) => openChain(loadConfig(env), { rpcUrl: chain.url, demoKeys: demoPublicKeys(chain.keysDir) });

  test('openChain refuses mainnet-beta with any demo key of a local ledger, and accepts it on localnet', async () => {
    const own = tempDir('own-keys');
    try {
      const authorityFile = path.join(own.dir, 'authority.json');
      const payerFile = path.join(own.dir, 'payer.json');
      writeKeypair(authorityFile, Keypair.generate());
      writeKeypair(payerFile, Keypair.generate());
      const ownTreasury = Keypair.generate().publicKey.toBase58();

      await expect(open(envFor())).rejects.toThrow(new ChainConfigError('refusing to run on mainnet-beta with the demo escrow authority key of a local ledger'));
      await expect(open(envFor({ ESCROW_AUTHORITY_KEYPAIR: authorityFile }))).rejects.toThrow(/mainnet-beta with the demo payer key/);
      await expect(open(envFor({ ESCROW_AUTHORITY_KEYPAIR: authorityFile, PAYER_KEYPAIR: payerFile }))).rejects.toThrow(/mainnet-beta with the demo treasury key/);
      // The refusal is about the keys: with keys of its own the same configuration opens.
      const ok = await open(envFor({ ESCROW_AUTHORITY_KEYPAIR: authorityFile, PAYER_KEYPAIR: payerFile, PLATFORM_TREASURY: ownTreasury }));
      expect(ok.cluster).toBe('mainnet-beta');
      // Demo keys are what a local ledger is for.
      const local = await open(envFor({ SOLANA_CLUSTER: 'localnet' }));
      expect(local.authority.publicKey.toBase58()).toBe(chain.setup.escrowAuthority);
      expect(local.decimals).toBe(chain.decimals);
    } finally {
      own.remove();
    }
  });

  test('loadKeypair errors say where the key came from, never what it is', () => {
    const keypair = Keypair.generate();
    const secret = Array.from(keypair.secretKey);
    const own = tempDir('bad-keys');
    const attempts: Array<{ source: { file?: string; inline?: string }; why: RegExp }> = [];
    try {
      // A secret whose public half does not match.
      const mismatched = [...secret.slice(0, 32), ...Array.from(Keypair.generate().publicKey.toBytes())];
      attempts.push({ source: { inline: JSON.stringify(mismatched) }, why: /secret key is invalid/ });
      const mismatchedFile = path.join(own.dir, 'mismatched.json');
      fs.writeFileSync(mismatchedFile, JSON.stringify(mismatched));
      attempts.push({ source: { file: mismatchedFile }, why: /secret key is invalid/ });
      // One byte short, one out of range, not JSON at all (a secret pasted in another format).
      attempts.push({ source: { inline: JSON.stringify(secret.slice(0, 63)) }, why: /not a Solana CLI keypair/ });
      attempts.push({ source: { inline: JSON.stringify([...secret.slice(0, 63), 256]) }, why: /not a Solana CLI keypair/ });
      attempts.push({ source: { inline: `${secret.join(' ')}` }, why: /not a Solana CLI keypair/ });
      attempts.push({ source: { inline: `[${secret.join(',')}` }, why: /not a Solana CLI keypair/ });
      const truncatedFile = path.join(own.dir, 'truncated.json');
      fs.writeFileSync(truncatedFile, `[${secret.join(',')}`);
      attempts.push({ source: { file: truncatedFile }, why: /not a Solana CLI keypair/ });
      attempts.push({ source: { file: path.join(own.dir, 'missing.json') }, why: /does not exist/ });
      attempts.push({ source: {}, why: /no keypair file or secret configured/ });

      // Runs of the secret long enough to matter: any 4 consecutive bytes as JSON would print them.
      const fragments = Array.from({ length: 61 }, (_, i) => secret.slice(i, i + 4).join(','));
      for (const { source, why } of attempts) {
        let error: unknown;
        try {
          loadKeypair('the escrow authority', source);
        } catch (err) {
          error = err;
        }
        expect(error).toBeInstanceOf(KeyLoadError);
        const shown = [String(error), (error as Error).stack ?? '', JSON.stringify(error), String((error as Error & { cause?: unknown }).cause ?? '')].join('\n');
        expect((error as Error).message).toMatch(why);
        expect((error as Error).message).toContain('the escrow authority');
        const leaked = fragments.filter((f) => shown.includes(f));
        expect({ source: Object.keys(source), leaked }).toEqual({ source: Object.keys(source), leaked: [] });
        expect(shown).not.toContain(Buffer.from(keypair.secretKey).toString('base64'));
        expect(shown).not.toContain(Buffer.from(keypair.secretKey).toString('hex'));
      }
    } finally {
      own.remove();
    }
  });
});
