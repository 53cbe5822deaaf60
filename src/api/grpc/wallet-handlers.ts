import type { Logger } from 'pino';
import { TooManyRequestsError, ValidationError } from '../../domain/errors';
import { LIST_DEPTH, StatusCode } from '../../domain/job';
import type { CostEstimator } from '../../services/cost-estimate';
import { callerGate } from '../../services/heartbeat-hub';
import { walletAddress, type WalletService } from '../../services/wallet-service';
import type { CallerOf } from './auth';
import { peerIp } from './mappers';
import { unary } from './unary';

const DEFAULT_HISTORY = 20;
const MAX_HISTORY = 500;
/**
 * GetBalance calls one caller may make a minute: each wallet not asked about in the last 2 s costs two calls to
 * the RPC provider, whose quota the settlements share.
 */
const BALANCE_LOOKUPS_PER_MINUTE = 120;

/** WalletService: wallet.proto replies carry `status` and a `message` (they have no Error field). */
export function createWalletHandlers(deps: { wallets: WalletService; estimator: CostEstimator; log: Logger; caller?: CallerOf }) {
  const { wallets, estimator, log } = deps;
  const mayLookUpBalance = callerGate(BALANCE_LOOKUPS_PER_MINUTE)!;
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
      async (req, call) => {
        if (!mayLookUpBalance({ owner: deps.caller?.(call), address: peerIp(call.getPeer()) })) {
          throw new TooManyRequestsError(`too many balances asked by this caller in the last minute (at most ${BALANCE_LOOKUPS_PER_MINUTE}): ask again in a minute`);
        }
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
        if (req.offset > LIST_DEPTH) throw new ValidationError('offset', `must be at most ${LIST_DEPTH} (the history pages no deeper)`);
        const h = await wallets.history(req.wallet_address, Math.min(req.limit || DEFAULT_HISTORY, MAX_HISTORY), req.offset);
        return { status: StatusCode.SUCCESS, message: '', transactions: h.transactions, total_count: h.total };
      },
      (f) => ({ ...failed(f), transactions: [], total_count: 0 }),
    ),
    EstimateJobCost: unary<{ model_type: string; epochs: number; dataset_size: number; node_tier: string }, object>(
      log,
      'EstimateJobCost',
      async (req) => {
        const e = await estimator.estimate({ modelType: req.model_type, epochs: req.epochs, datasetSize: req.dataset_size, nodeTier: req.node_tier });
        return { status: StatusCode.SUCCESS, message: '', estimated_cost: e.tokens, estimated_time_minutes: e.minutes, breakdown: e.breakdown };
      },
      (f) => ({ ...failed(f), estimated_cost: 0, estimated_time_minutes: 0, breakdown: '' }),
    ),
  };
}
