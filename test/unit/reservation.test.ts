import { estimateCostUnits } from '../../src/domain/pricing';
import {
  allocateOverPots,
  costOfSeconds,
  earnedUnits,
  potId,
  RESERVATION_STATUS_CODE,
  reservationCost,
  unitsPerHour,
} from '../../src/domain/reservation';

describe('reservation money', () => {
  test('the hourly price becomes whole units per hour with the cost formula', () => {
    expect(unitsPerHour(0.25, 9)).toBe(250_000_000n);
    expect(unitsPerHour(0.41, 9)).toBe(estimateCostUnits(0.41, 3600, 9, 0));
    expect(unitsPerHour(1, 0)).toBe(1n);
  });

  test('costs are rounded up to a whole unit and exact for whole hours', () => {
    expect(costOfSeconds(3600n, 1)).toBe(1n);
    expect(costOfSeconds(3600n, 0)).toBe(0n);
    expect(costOfSeconds(7200n, 1.2)).toBe(4n); // 2 s at 2 units/s
    expect(costOfSeconds(250_000_000n, 3600)).toBe(250_000_000n);
    expect(reservationCost(250_000_000n, 60)).toBe(250_000_000n);
    expect(reservationCost(250_000_000n, 10)).toBe(41_666_667n); // 250M / 6, rounded up
    expect(costOfSeconds(1_000n, -5)).toBe(0n);
  });

  const base = { escrowed: 1_000_000n, perHour: 3_600_000n, usedSeconds: 600 };

  test.each([
    ['expired', 'full', 1_000_000n],
    ['expired', 'prorated', 1_000_000n],
    ['released', 'full', 1_000_000n],
    ['released', 'prorated', 600_000n],
    ['node_lost', 'full', 600_000n],
    ['node_lost', 'prorated', 600_000n],
    ['withdrawn', 'full', 0n],
    ['withdrawn', 'prorated', 0n],
  ] as const)('%s with policy %s earns %s', (kind, policy, earned) => {
    expect(earnedUnits({ ...base, kind, policy })).toBe(earned);
  });

  test('what the node earns never exceeds the escrow', () => {
    expect(earnedUnits({ ...base, kind: 'released', policy: 'prorated', usedSeconds: 10 * 3600 })).toBe(1_000_000n);
    expect(earnedUnits({ ...base, kind: 'node_lost', policy: 'full', usedSeconds: 0 })).toBe(0n);
  });

  test('earnings fill the pots in order and add up to what was earned', () => {
    expect(allocateOverPots([100n, 50n, 25n], 120n)).toEqual([100n, 20n, 0n]);
    expect(allocateOverPots([100n, 50n], 150n)).toEqual([100n, 50n]);
    expect(allocateOverPots([100n, 50n], 0n)).toEqual([0n, 0n]);
    for (let i = 0; i < 200; i++) {
      const pots = Array.from({ length: 1 + (i % 4) }, (_, k) => BigInt(((i * 7919 + k * 104729) % 100_000) + 1));
      const total = pots.reduce((a, b) => a + b, 0n);
      const earned = (total * BigInt(i % 11)) / 10n;
      const shares = allocateOverPots(pots, earned);
      expect(shares.reduce((a, b) => a + b, 0n)).toBe(earned);
      shares.forEach((s, k) => expect(s >= 0n && s <= pots[k]).toBe(true));
    }
  });

  test('pots are named after the reservation', () => {
    expect(potId('r1', 0)).toBe('r1');
    expect(potId('r1', 2)).toBe('r1/ext-2');
  });

  test('statuses map to reservation.proto numbers', () => {
    expect(RESERVATION_STATUS_CODE).toEqual({ pending: 1, active: 2, completing: 4, completed: 5, cancelled: 6, expired: 7, failed: 8 });
  });
});
