import type { Logger } from 'pino';
import { ValidationError } from '../../domain/errors';
import { StatusCode } from '../../domain/job';
import { walletAddress, type WalletService } from '../../services/wallet-service';
import { unary } from './unary';

const DEFAULT_HISTORY = 20;
const MAX_HISTORY = 500;

/** Legacy estimate (§4.7 of the protocol notes) until the scheduler's cost model replaces it. */
const MODEL_BASE: Record<string, number> = { MNIST: 0.1, SimpleNN: 0.1, 'ResNet-18': 1, 'VGG-16': 1, 'ResNet-50': 10, 'GPT-2': 10, 'GPT-3': 50, 'BERT-Large': 50 };
const TIER: Record<string, number> = { basic: 1, premium: 1.5, enterprise: 2 };

/** WalletService: wallet.proto replies carry `status` and a `message` (they have no Error field). */
export function createWalletHandlers(deps: { wallets: WalletService; log: Logger }) {
  const { wallets, log } = deps;
  const failed = (f: { status: number; error: { message: string } }) => ({ status: f.status, message: f.error.message });

  return {
    ConnectWallet: unary<{ wallet_address: string }, object>(
      log,
      'ConnectWallet',
      async (req) => {
        try {
          const key = walletAddress(req.wallet_address);
          return { status: StatusCode.SUCCESS, message: 'valid Solana address', is_valid: true, wallet_address: key.toBase58() };
        } catch (err) {
          if (!(err instanceof ValidationError)) throw err;
          return { status: StatusCode.ERROR, message: err.message, is_valid: false, wallet_address: req.wallet_address };
        }
      },
      (f) => ({ ...failed(f), is_valid: false, wallet_address: '' }),
    ),
    GetBalance: unary<{ wallet_address: string }, object>(
      log,
      'GetBalance',
      async (req) => {
        const b = await wallets.balance(req.wallet_address);
        return { status: StatusCode.SUCCESS, message: '', sol_balance: b.sol, cyxwiz_balance: b.cyxwiz, token_mint: b.mint };
      },
      (f) => ({ ...failed(f), sol_balance: 0, cyxwiz_balance: 0, token_mint: '' }),
    ),
    GetTransactionHistory: unary<{ wallet_address: string; limit: number; offset: number }, object>(
      log,
      'GetTransactionHistory',
      async (req) => {
        if (req.limit < 0) throw new ValidationError('limit', 'must not be negative');
        if (req.offset < 0) throw new ValidationError('offset', 'must not be negative');
        const h = await wallets.history(req.wallet_address, Math.min(req.limit || DEFAULT_HISTORY, MAX_HISTORY), req.offset);
        return { status: StatusCode.SUCCESS, message: '', transactions: h.transactions, total_count: h.total };
      },
      (f) => ({ ...failed(f), transactions: [], total_count: 0 }),
    ),
    EstimateJobCost: unary<{ model_type: string; epochs: number; dataset_size: number; node_tier: string }, object>(
      log,
      'EstimateJobCost',
      async (req) => {
        if (req.epochs < 0) throw new ValidationError('epochs', 'must not be negative');
        if (req.dataset_size < 0) throw new ValidationError('dataset_size', 'must not be negative');
        const base = MODEL_BASE[req.model_type] ?? 0.5;
        const data = Math.max(req.dataset_size / 10_000, 0.1);
        const epochs = Math.max(req.epochs, 1);
        const tier = TIER[req.node_tier] ?? 1;
        const cost = base * data * epochs * tier;
        return {
          status: StatusCode.SUCCESS,
          message: '',
          estimated_cost: cost,
          estimated_time_minutes: cost * 10,
          breakdown: `base ${base} (${req.model_type || 'default'}) × dataset ${data} × epochs ${epochs} × tier ${tier} = ${cost} CYXWIZ`,
        };
      },
      (f) => ({ ...failed(f), estimated_cost: 0, estimated_time_minutes: 0, breakdown: '' }),
    ),
  };
}
