import { describe, expect, test } from 'vitest';
import {
  type BucketState,
  giveBack,
  newBucket,
  normalizePolicy,
  reserve,
  tokensAt,
  tryTake,
} from '@tollgate/core/internal';

const P = (rate: number, per: number | string = 1000, capacity?: number) =>
  normalizePolicy(capacity === undefined ? { rate, per } : ({ rate, per, capacity } as never));

describe('bucket math on fixed instants', () => {
  test('a new bucket is full and takes exactly capacity, then says when the next token comes', () => {
    const p = P(10, '1s'); // 1 token / 100 ms
    const b = newBucket(p, 0);
    for (let i = 0; i < 10; i++) expect(tryTake(b, p, 0, 1).allowed).toBe(true);
    const d = tryTake(b, p, 0, 1);
    expect(d).toEqual({ allowed: false, remaining: 0, retryAfterMs: 100, resetAfterMs: 1000 });
    expect(tryTake(b, p, 99, 1).allowed).toBe(false);
    expect(tryTake(b, p, 100, 1).allowed).toBe(true);
  });

  test.each([
    // [rate, per, capacity, taken first, cost, allowed, retryAfterMs]
    [10, 1000, 10, 0, 10, true, 0],
    [10, 1000, 10, 10, 0.5, false, 50],
    [10, 1000, 10, 9.5, 1, false, 50],
    [1, 3_600_000, 1, 0, 0.5, true, 0],
    [2, 1000, 1, 1, 0.5, false, 250],
    [5, 1000, 20, 0, 20, true, 0],
  ])('rate %d per %d cap %d, %d taken: cost %d → allowed %s, retry %d', (rate, per, cap, taken, cost, allowed, retry) => {
    const p = normalizePolicy({ rate, per, capacity: cap });
    const b = newBucket(p, 0);
    if (taken > 0) expect(tryTake(b, p, 0, taken).allowed).toBe(true);
    const d = tryTake(b, p, 0, cost);
    expect(d.allowed).toBe(allowed);
    expect(d.retryAfterMs).toBe(retry);
  });

  test('a cost above capacity is never allowed at once (the limiter refuses it before the math)', () => {
    const p = P(10, '1s', 10);
    const d = tryTake(newBucket(p, 0), p, 0, 10.5);
    expect(d.allowed).toBe(false);
    expect(d.retryAfterMs).toBe(50);
  });

  test('fractions: cost 0.25 at 1 token/s takes 4 calls per token', () => {
    const p = P(1, '1s', 1);
    const b = newBucket(p, 0);
    let n = 0;
    while (tryTake(b, p, 0, 0.25).allowed) n++;
    expect(n).toBe(4);
    expect(tryTake(b, p, 250, 0.25).allowed).toBe(true);
    expect(tryTake(b, p, 250, 0.25).allowed).toBe(false);
  });

  test('a clock going backwards adds nothing and never moves the bucket back', () => {
    const p = P(10, '1s');
    const b = newBucket(p, 1000);
    tryTake(b, p, 1000, 10);
    tryTake(b, p, 500, 1);
    expect(b.updatedAt).toBe(1000);
    expect(tokensAt(b, p, 1000)).toBe(0);
    expect(tryTake(b, p, 1100, 1).allowed).toBe(true);
  });

  test('reserve goes into debt and says how long to wait; maxWaitMs refuses with nothing taken', () => {
    const p = P(10, '1s'); // 100 ms a token
    const b = newBucket(p, 0);
    expect(reserve(b, p, 0, 10, -1)).toMatchObject({ ok: true, waitMs: 0 });
    expect(reserve(b, p, 0, 3, -1)).toMatchObject({ ok: true, waitMs: 300, remaining: 0 });
    expect(b.tokens).toBe(-3);
    expect(reserve(b, p, 0, 1, 399)).toMatchObject({ ok: false, waitMs: 400 });
    expect(b.tokens).toBe(-3);
    expect(reserve(b, p, 0, 1, 400)).toMatchObject({ ok: true, waitMs: 400 });
    // the debt is repaid on schedule: at 400 ms the bucket is back at 0
    expect(tokensAt(b, p, 400)).toBeCloseTo(0, 9);
    expect(tryTake(b, p, 500, 1).allowed).toBe(true);
  });

  test('refund gives tokens back, capped at capacity', () => {
    const p = P(10, '1s');
    const b = newBucket(p, 0);
    tryTake(b, p, 0, 4);
    expect(giveBack(b, p, 0, 3)).toBe(9);
    expect(giveBack(b, p, 0, 100)).toBe(10);
  });

  test('after waiting exactly retryAfterMs the call is allowed, for awkward rates', () => {
    for (const [rate, per] of [
      [7, 1000],
      [3, 1000],
      [1, 3_600_000],
      [1e6, 1000],
      [13, 60_000],
    ] as const) {
      const p = P(rate, per);
      const b: BucketState = newBucket(p, 0);
      tryTake(b, p, 0, p.capacity);
      let t = 0;
      for (let i = 0; i < 50; i++) {
        const d = tryTake(b, p, t, 1);
        if (!d.allowed) {
          t += d.retryAfterMs;
          expect(tryTake(b, p, t, 1).allowed).toBe(true);
        }
      }
    }
  });

  test('extremes: rate 1/3600 per second and 10^6 per second drift ≤ 1 token over 10^6 s', () => {
    for (const [rate, per, capacity] of [
      [1, 3_600_000, 10],
      [1_000_000, 1000, 2_000_000],
    ] as const) {
      const p = P(rate, per, capacity);
      const b = newBucket(p, 0);
      tryTake(b, p, 0, p.capacity); // empty it
      // Take everything that arrives, polling at irregular steps, for 10^6 seconds.
      const horizon = 1e9; // ms
      let t = 0;
      let taken = 0;
      // Irregular steps, each shorter than the time to fill the bucket (so nothing overflows).
      const fillMs = (p.capacity - 1) / p.ratePerMs;
      let step = 1;
      while (t < horizon) {
        t = Math.min(horizon, t + step);
        const have = tokensAt(b, p, t);
        if (have >= 1) {
          const n = Math.floor(have);
          if (tryTake(b, p, t, n).allowed) taken += n;
        }
        step = step * 1.7 + 13;
        if (step > fillMs * 0.9) step = 7;
      }
      const ideal = horizon * p.ratePerMs;
      // taken is whole tokens; the fraction left in the bucket is < 1.
      expect(Math.abs(ideal - (taken + tokensAt(b, p, horizon)))).toBeLessThanOrEqual(1);
      expect(ideal - taken).toBeLessThan(2);
    }
  });
});

describe('policy validation names the option, the constraint and the value', () => {
  test.each([
    [{ rate: 0 }, /policy\.rate must be a finite number > 0.*received 0/],
    [{ rate: -1 }, /policy\.rate .*received -1/],
    [{ rate: Number.NaN }, /policy\.rate .*received NaN/],
    [{ rate: Number.POSITIVE_INFINITY }, /policy\.rate .*received Infinity/],
    [{ rate: '10' }, /policy\.rate must be a number \(received "10"\)/],
    [{ rate: 1, per: '1 fortnight' }, /policy\.per must be a duration.*received "1 fortnight"/],
    [{ rate: 1, per: 0 }, /policy\.per .*received 0/],
    [{ rate: 1, capacity: 0 }, /policy\.capacity .*received 0/],
    [{ rate: 1, burst: 3 }, /unknown option\(s\) burst/],
    [null, /policy: must be an object/],
  ])('%j', (input, message) => {
    expect(() => normalizePolicy(input)).toThrow(message);
    try {
      normalizePolicy(input);
    } catch (e) {
      expect((e as { code: string }).code).toBe('ERR_TOLLGATE_INVALID_OPTIONS');
    }
  });

  test.each([
    [{ rate: 10 }, { rate: 10, perMs: 1000, capacity: 10 }],
    [{ rate: 10, per: '500ms' }, { perMs: 500 }],
    [
      { rate: 10, per: '1m', capacity: 100 },
      { perMs: 60_000, capacity: 100 },
    ],
    [{ rate: 1, per: '1h' }, { perMs: 3_600_000 }],
    [{ rate: 1, per: '1.5s' }, { perMs: 1500 }],
    [{ rate: 1, per: 250 }, { perMs: 250 }],
  ])('%j parses', (input, expected) => {
    expect(normalizePolicy(input)).toMatchObject(expected);
  });
});
