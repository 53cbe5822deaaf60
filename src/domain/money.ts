import { ValidationError } from './errors';

/** Basis points in one whole: 10_000 bps = 100 %. */
export const BPS = 10_000n;
/** Largest amount of smallest units: SPL token amounts are u64, the ledger's columns signed 64-bit. */
export const MAX_UNITS = 2n ** 63n - 1n;

/**
 * Converts an amount of whole tokens, as the protocol carries it (a double), to integer smallest units.
 * The double's shortest round-trip decimal form is what the client meant ("0.1", not 0.1000000000000000055…);
 * more fractional digits than the mint has are refused rather than rounded, so no client loses a unit silently.
 * @throws ValidationError naming `field` for NaN, infinities, zero, negatives and excess precision.
 */
export function tokensToUnits(amount: number, decimals: number, field: string): bigint {
  if (!Number.isFinite(amount)) throw new ValidationError(field, 'must be a finite number');
  if (amount <= 0) throw new ValidationError(field, 'must be greater than zero');
  const [mantissa, exponentPart] = amount.toExponential().split('e');
  const exponent = Number(exponentPart);
  const [intDigits, fracDigits = ''] = mantissa.split('.');
  const digits = intDigits + fracDigits;
  // value = digits × 10^(exponent − fracDigits.length); scale to smallest units.
  const shift = exponent - fracDigits.length + decimals;
  if (shift < 0) {
    const dropped = digits.slice(digits.length + shift);
    if (/[1-9]/.test(dropped) || -shift > digits.length) {
      throw new ValidationError(field, `has more than ${decimals} decimal places`);
    }
    return BigInt(digits.slice(0, digits.length + shift) || '0');
  }
  const units = BigInt(digits) * 10n ** BigInt(shift);
  if (units > MAX_UNITS) throw new ValidationError(field, `is larger than ${unitsToTokenString(MAX_UNITS, decimals)}`);
  return units;
}

/** Formats smallest units as a decimal string of whole tokens, without losing precision ("1.5", "0.000000001"). */
export function unitsToTokenString(units: bigint, decimals: number): string {
  const negative = units < 0n;
  const abs = negative ? -units : units;
  const scale = 10n ** BigInt(decimals);
  const whole = abs / scale;
  const frac = (abs % scale).toString().padStart(decimals, '0').replace(/0+$/, '');
  return `${negative ? '-' : ''}${whole}${frac ? `.${frac}` : ''}`;
}

/** Whole tokens as a double, for protocol fields that carry doubles. Display only: never computed with. */
export function unitsToTokens(units: bigint, decimals: number): number {
  return Number(unitsToTokenString(units, decimals));
}

export interface Split {
  node: bigint;
  platform: bigint;
}

/**
 * Splits an escrow between the node and the platform: the node gets floor((100 % − fee) × amount),
 * the platform the remainder, so the legs always sum to the escrow exactly.
 */
export function splitPayment(amount: bigint, platformFeeBps: bigint): Split {
  if (amount < 0n) throw new RangeError('amount must not be negative');
  if (platformFeeBps < 0n || platformFeeBps > BPS) throw new RangeError('platform fee must be 0..10000 bps');
  const node = (amount * (BPS - platformFeeBps)) / BPS;
  return { node, platform: amount - node };
}
