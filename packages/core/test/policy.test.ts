/**
 * Policies and options as a user types them: durations in the spellings people write, and an
 * unknown option answered with the one they meant.
 */
import { InvalidOptionsError, MemoryBackend, RateLimiter, SharedLimiter, type PolicyInput } from '@tollgate/core';
import { normalizePolicy, parseDuration } from '@tollgate/core/internal';
import { describe, expect, test } from 'vitest';

const backend = new MemoryBackend();
const error = (f: () => unknown): InvalidOptionsError => {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(InvalidOptionsError);
    return e as InvalidOptionsError;
  }
  throw new Error('expected InvalidOptionsError');
};

describe('durations', () => {
  test.each([
    ['250ms', 250],
    ['250 ms', 250],
    ['250MS', 250],
    ['1s', 1000],
    ['1S', 1000],
    ['2 sec', 2000],
    ['3 seconds', 3000],
    ['1.5m', 90_000],
    ['1min', 60_000],
    ['1 min', 60_000],
    ['1 Minute', 60_000],
    ['1h', 3_600_000],
    ['1hr', 3_600_000],
    ['2 hours', 7_200_000],
    ['1d', 86_400_000],
    ['1 day', 86_400_000],
    [' .5s ', 500],
    [1500, 1500],
  ])('%j is %i ms, as `per` too', (input, ms) => {
    expect(parseDuration(input)).toBe(ms);
    expect(normalizePolicy({ rate: 1, per: input }).perMs).toBe(ms);
  });

  test.each([
    '1 fortnight',
    '1 constructor',
    'x',
    '1',
    '1 s s',
    '-1s',
    '0s',
    'ms',
    '1e3ms',
    '',
  ])('%j is refused, naming the forms accepted', (input) => {
    expect(parseDuration(input)).toBeUndefined();
    const e = error(() => new RateLimiter({ backend, policy: { rate: 1, per: input } }));
    expect(e.message).toBe(
      `invalid policy: policy.per must be a duration > 0: ms as a number, or a number and a unit: '250ms', '1s', '1.5m', '1h', '1d' (ms / s, sec, second / m, min, minute / h, hr, hour / d, day; plurals, any case, a space allowed: '2 sec', '1 Min') (received ${JSON.stringify(input)})`,
    );
    expect(e.issues).toEqual([{ path: 'policy.per', message: expect.stringContaining("'1.5m'") }]);
  });
});

describe('an unknown option is answered with the nearest known one', () => {
  test('{ rate, period }: "unknown option(s) period — did you mean per?"', () => {
    const e = error(() => new RateLimiter({ backend, policy: { rate: 10, period: '1s' } as unknown as PolicyInput }));
    expect(e.message).toBe('invalid policy: unknown option(s) period — did you mean per?');
    expect(e.issues).toEqual([{ path: 'policy', message: 'unknown option(s) period — did you mean per?' }]);
  });

  test.each([
    [{ rate: 1, burst: 5 }, 'burst — did you mean capacity?'],
    [{ rate: 1, capcity: 5 }, 'capcity — did you mean capacity?'],
    [{ rate: 1, Per: '1s' }, 'Per — did you mean per?'],
    [{ rate: 1, window: '1s', max: 3 }, 'window — did you mean per?, max — did you mean capacity?'],
  ])('policy %j: %s', (policy, said) => {
    expect(error(() => normalizePolicy(policy)).message).toBe(`invalid policy: unknown option(s) ${said}`);
  });

  test("the limiters' own options too, and a missing one is required", () => {
    expect(
      error(() => new RateLimiter({ backend, policy: { rate: 1 }, onBackendErrror: 'fail-open' } as never)).message,
    ).toBe('invalid RateLimiter options: (options) unknown option(s) onBackendErrror — did you mean onBackendError?');
    expect(error(() => new SharedLimiter({ backend, policy: { rate: 1 }, weights: () => 1 } as never)).message).toBe(
      'invalid SharedLimiter options: (options) unknown option(s) weights — did you mean weight?',
    );
    expect(error(() => new RateLimiter({ backend } as never)).message).toBe(
      'invalid RateLimiter options: policy is required',
    );
  });
});

describe('keys', () => {
  test("any string is a key, '' included (a limiter does not decide what a user is)", async () => {
    const l = new RateLimiter({ backend, name: 'empty-key', policy: { rate: 1, per: '1h' } });
    expect((await l.tryAcquire('')).allowed).toBe(true);
    expect((await l.tryAcquire('')).allowed).toBe(false);
    expect((await l.tryAcquire(' ')).allowed).toBe(true);
  });
});
