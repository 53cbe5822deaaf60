import { TOKEN_PROGRAM_ID } from '@solana/spl-token';
import { Keypair, PublicKey, type Connection } from '@solana/web3.js';
import { clusterMismatch } from '../../src/chain/context';
import { escrowAddress, escrowSeed, memoInstruction, MEMO_PROGRAM_ID } from '../../src/chain/instructions';
import { createChainSettlement } from '../../src/chain/settlement';
import type { Db } from '../../src/db/client';
import { loadConfig } from '../../src/config';
import { ValidationError } from '../../src/domain/errors';
import { jobIdAsUint64, walletAddress } from '../../src/services/wallet-service';

describe('escrow addresses', () => {
  it('are createAccountWithSeed addresses of the escrow authority, one per job id', async () => {
    const authority = Keypair.generate().publicKey;
    for (const jobId of ['b8f98e1d-030b-427f-8605-439b47ab1438', 'my-job.1', 'x'.repeat(128)]) {
      const seed = escrowSeed(jobId);
      expect(seed).toMatch(/^[0-9a-f]{32}$/);
      expect(escrowAddress(authority, jobId).equals(await PublicKey.createWithSeed(authority, seed, TOKEN_PROGRAM_ID))).toBe(true);
    }
    expect(escrowAddress(authority, 'a').equals(escrowAddress(authority, 'b'))).toBe(false);
    expect(escrowAddress(authority, 'a').equals(escrowAddress(Keypair.generate().publicKey, 'a'))).toBe(false);
  });

  it('carry the idempotency key in a memo signed by the fee payer', () => {
    const signer = Keypair.generate().publicKey;
    const ix = memoInstruction('cyxwiz job-1/escrow', signer);
    expect(ix.programId.equals(MEMO_PROGRAM_ID)).toBe(true);
    expect(ix.data.toString()).toBe('cyxwiz job-1/escrow');
    expect(ix.keys).toEqual([{ pubkey: signer, isSigner: true, isWritable: false }]);
  });
});

describe('wallet protocol mapping', () => {
  it('derives Transaction.job_id (uint64) from a UUID as the original server did, and from other ids by hash', () => {
    // first 8 bytes of the UUID, little-endian
    expect(jobIdAsUint64('01000000-0000-0000-ffff-ffffffffffff')).toBe('1');
    expect(jobIdAsUint64('ffffffff-ffff-ffff-0000-000000000000')).toBe('18446744073709551615');
    expect(jobIdAsUint64('my-job')).toBe(jobIdAsUint64('my-job'));
    expect(jobIdAsUint64('my-job')).not.toBe(jobIdAsUint64('my-job-2'));
  });

  it('validates wallet addresses, naming the field', () => {
    const key = Keypair.generate().publicKey.toBase58();
    expect(walletAddress(key).toBase58()).toBe(key);
    expect(() => walletAddress('')).toThrow(ValidationError);
    expect(() => walletAddress('not-base58-0OIl')).toThrow(/wallet_address: is not a base58 Solana address/);
  });
});

describe('chain configuration', () => {
  it('defaults to a local ledger with confirmed commitment and reads cluster settings', () => {
    expect(loadConfig({}).chain).toMatchObject({ rpcUrl: undefined, cluster: 'localnet', commitment: 'confirmed', localLedgerPort: 8899 });
    const c = loadConfig({ SOLANA_RPC_URL: 'https://api.devnet.solana.com', SOLANA_CLUSTER: 'devnet', ESCROW_AUTHORITY_KEYPAIR: '~/k.json' });
    expect(c.chain).toMatchObject({ rpcUrl: 'https://api.devnet.solana.com', cluster: 'devnet', escrowAuthority: { file: '~/k.json' } });
    expect(() => loadConfig({ SOLANA_COMMITMENT: 'max' })).toThrow(/SOLANA_COMMITMENT/);
  });

  it("refuses a public cluster's endpoint declared as another cluster (mainnet's safeguards go by SOLANA_CLUSTER)", () => {
    const mainnet = '5eykt4UsFv8P8NJdTREpY1vzqKqZKvdpKuc147dw2N9d';
    expect(clusterMismatch('localnet', mainnet)).toBe(
      `SOLANA_RPC_URL is a mainnet-beta endpoint (genesis hash ${mainnet}) but SOLANA_CLUSTER is localnet: set SOLANA_CLUSTER=mainnet-beta`,
    );
    expect(clusterMismatch('devnet', mainnet)).toMatch(/set SOLANA_CLUSTER=mainnet-beta/);
    expect(clusterMismatch('mainnet-beta', 'EtWTRABZaYq6iMfeYKouRu166VU2xqa1wcaWoxPkrZBG')).toMatch(/is a devnet endpoint/);
    expect(clusterMismatch('mainnet-beta', mainnet)).toBeUndefined();
    expect(clusterMismatch('testnet', '4uhcVJyU9pJkvQyS88uRDiswHXSCkY3zQawwpjk2NsNY')).toBeUndefined();
    // A local or private validator may be declared as any cluster (mainnet's safeguards on one are only stricter).
    expect(clusterMismatch('localnet', 'cyxwiz-local-ledger')).toBeUndefined();
    expect(clusterMismatch('mainnet-beta', 'cyxwiz-local-ledger')).toBeUndefined();
  });
});

describe('what the chain says about a recorded attempt', () => {
  /**
   * A settlement over an RPC that answers the statuses given, in turn, from a node at `seenSlot` (default: caught
   * up), and whose finalized chain is at `height` (slot = height here).
   */
  function settlementOver(statuses: (object | null)[], height: number, seenSlot = height) {
    const asked: string[] = [];
    const connection = {
      getSignatureStatuses: async () => {
        asked.push('status');
        return { context: { slot: seenSlot }, value: [statuses.shift() ?? null] };
      },
      getEpochInfo: async (commitment: string) => {
        asked.push(`height ${commitment}`);
        return { absoluteSlot: height, blockHeight: height, epoch: 0, slotIndex: height, slotsInEpoch: 432_000 };
      },
    } as unknown as Connection;
    const settlement = createChainSettlement({
      db: {} as Db,
      connection,
      commitment: 'confirmed',
      mint: Keypair.generate().publicKey,
      decimals: 9,
      authority: Keypair.generate(),
      treasury: Keypair.generate().publicKey,
      platformFeeBps: 1000,
      confirmTimeoutMs: 1000,
    });
    return { settlement, asked };
  }
  const landed = { slot: 7, confirmations: 1, err: null, confirmationStatus: 'confirmed' };

  it('an attempt that lands between the status read and the height read counts as landed, not expired (never signed again)', async () => {
    const { settlement, asked } = settlementOver([null, landed], 200);
    expect(await settlement.chainState('sig', 150)).toEqual({ kind: 'landed', slot: 7 });
    expect(asked).toEqual(['status', 'height finalized', 'status']);
  });

  it('unknown past its last valid block on both reads: expired; unknown before it: pending; known: as the cluster says', async () => {
    expect(await settlementOver([null, null], 200).settlement.chainState('sig', 150)).toEqual({ kind: 'expired' });
    const pending = settlementOver([null], 100);
    expect(await pending.settlement.chainState('sig', 150)).toEqual({ kind: 'pending' });
    expect(pending.asked).toEqual(['status', 'height finalized']);
    expect(await settlementOver([landed], 999).settlement.chainState('sig', 150)).toEqual({ kind: 'landed', slot: 7 });
    expect(await settlementOver([{ ...landed, err: { InstructionError: [0, 'x'] } }], 0).settlement.chainState('sig', 150)).toMatchObject({ kind: 'failed' });
  });

  it('"unknown" from a node behind the finalized block past the last valid height is not expired (a load balancer\'s lagging node)', async () => {
    expect(await settlementOver([null, null], 200, 180).settlement.chainState('sig', 150)).toEqual({ kind: 'pending' });
    expect(await settlementOver([null, null], 200, 200).settlement.chainState('sig', 150)).toEqual({ kind: 'expired' });
  });

  it('an error counts only at the configured commitment: a processed one may be on a fork that is dropped', async () => {
    const processedError = { ...landed, err: { InstructionError: [0, 'x'] }, confirmationStatus: 'processed' };
    expect(await settlementOver([processedError], 0).settlement.chainState('sig', 150)).toEqual({ kind: 'pending' });
  });
});
