/**
 * Failure types of the payment activities that no retry can fix. Shared by the settlement (which throws
 * them) and the job workflow (which lists them as non-retryable and fails the job visibly).
 */
export const PaymentFailures = {
  escrowMissing: 'EscrowMissing',
  alreadySettled: 'EscrowAlreadySettled',
  insufficientFunds: 'InsufficientFunds',
  escrowRejected: 'EscrowRejected',
  transactionFailed: 'TransactionFailed',
} as const;

export const PAYMENT_NON_RETRYABLE: string[] = Object.values(PaymentFailures);

/** Where a job's money is, as the EscrowState search attribute shows it. */
export type EscrowState = 'none' | 'held' | 'owed' | 'released' | 'refunded';
