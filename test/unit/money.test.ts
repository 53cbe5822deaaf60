import { ValidationError } from '../../src/domain/errors';
import { splitPayment, tokensToUnits, unitsToTokenString } from '../../src/domain/money';

describe('tokensToUnits', () => {
  it.each([
    [1, 9, 1_000_000_000n],
    [1.5, 9, 1_500_000_000n],
    [0.1, 9, 100_000_000n],
    [0.3, 9, 300_000_000n],
    [123.456789, 9, 123_456_789_000n],
    [1e-9, 9, 1n],
    [0.000000001, 9, 1n],
    [7, 0, 7n],
  ])('%p tokens at %p decimals is %p units', (amount, decimals, units) => {
    expect(tokensToUnits(amount as number, decimals as number, 'f')).toBe(units);
  });

  it('converts large whole amounts exactly, up to the largest 64-bit amount', () => {
    expect(tokensToUnits(9_000_000_000, 9, 'f')).toBe(9_000_000_000_000_000_000n);
    expect(tokensToUnits(9007199254740991, 0, 'f')).toBe(9007199254740991n);
    expect(() => tokensToUnits(1e10, 9, 'config.payment_amount')).toThrow(/config.payment_amount: is larger than 9223372036.854775807/);
  });

  it.each([0, -1, -0.5, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY])('refuses %p', (amount) => {
    expect(() => tokensToUnits(amount, 9, 'config.payment_amount')).toThrow(ValidationError);
  });

  it('refuses more decimals than the mint has, naming the field', () => {
    expect(() => tokensToUnits(1e-10, 9, 'config.payment_amount')).toThrow(/config.payment_amount: has more than 9 decimal places/);
    expect(() => tokensToUnits(2.5, 0, 'x')).toThrow(/more than 0 decimal places/);
    expect(() => tokensToUnits(0.123, 2, 'x')).toThrow(ValidationError);
  });

  it('round-trips through the decimal string for many amounts', () => {
    for (let i = 1; i < 5000; i++) {
      const units = BigInt(i) * 7919n + BigInt(i % 13);
      const asTokens = Number(unitsToTokenString(units, 6));
      expect(tokensToUnits(asTokens, 6, 'f')).toBe(units);
    }
  });
});

describe('unitsToTokenString', () => {
  it('formats without losing precision', () => {
    expect(unitsToTokenString(1_500_000_000n, 9)).toBe('1.5');
    expect(unitsToTokenString(1n, 9)).toBe('0.000000001');
    expect(unitsToTokenString(10n ** 27n, 9)).toBe('1000000000000000000');
    expect(unitsToTokenString(0n, 9)).toBe('0');
    expect(unitsToTokenString(-5n, 1)).toBe('-0.5');
  });
});

describe('splitPayment', () => {
  it('pays floor(90 %) to the node and the rest to the platform', () => {
    expect(splitPayment(1_500_000_000n, 1000n)).toEqual({ node: 1_350_000_000n, platform: 150_000_000n });
    expect(splitPayment(1n, 1000n)).toEqual({ node: 0n, platform: 1n });
    expect(splitPayment(19n, 1000n)).toEqual({ node: 17n, platform: 2n });
  });

  it('always sums to the escrow, never negative, over many amounts and fees', () => {
    let seed = 42;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
    for (let i = 0; i < 10_000; i++) {
      const amount = BigInt(Math.floor(rand() * 2 ** 40)) * BigInt(1 + Math.floor(rand() * 1000));
      const fee = BigInt(Math.floor(rand() * 10_001));
      const { node, platform } = splitPayment(amount, fee);
      expect(node + platform).toBe(amount);
      expect(node >= 0n && platform >= 0n).toBe(true);
      // the node's share is exactly floor(amount × (1 − fee))
      expect(node).toBe((amount * (10_000n - fee)) / 10_000n);
    }
  });

  it('rejects nonsense', () => {
    expect(() => splitPayment(-1n, 1000n)).toThrow(RangeError);
    expect(() => splitPayment(1n, 10_001n)).toThrow(RangeError);
  });
});
