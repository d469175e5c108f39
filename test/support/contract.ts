/**
 * The backend contract: one suite every storage strategy runs (memory, Redis, hybrid, Redis
 * Cluster). A new backend is done when this passes on it. Tests say what a user sees, with numbers.
 *
 * On a target with `fakeTime` (memory) the suite runs on vitest's fake timers and the backend's
 * clock is the faked performance.now(): every duration is asserted exactly. On Redis time is
 * real, so only what a busy machine cannot break is asserted: order, lower bounds on waits that
 * come from the bucket (measured from before the first call), upper bounds ≥ 3× the nominal.
 * Rates there are slow enough (a token a second or slower) that a call answered a few hundred ms
 * late on a loaded machine cannot find a token the test did not expect.
 */
import {
  AbortedError,
  type Backend,
  CostExceedsCapacityError,
  InvalidArgumentError,
  MaxWaitExceededError,
  RateLimiter,
  type RateLimiterOptions,
} from '@tollgate/core';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test, vi } from 'vitest';

export interface ContractTarget {
  /** A fresh backend whose buckets no other test sees (e.g. a new Redis prefix). */
  make(): Backend;
  close?(): Promise<void> | void;
  /**
   * The backend reads its time from performance.now() at each call (e.g.
   * `new MemoryBackend({ clock: () => performance.now() })`), so the suite can fake it.
   */
  fakeTime?: boolean;
}

/** A timer may fire up to ~1 ms early, and Redis's clock is learned across a round trip. */
const EARLY_MS = 5;

export function backendContract(name: string, setup: () => Promise<ContractTarget>): void {
  describe(`backend contract: ${name}`, () => {
    let target: ContractTarget;
    const limiter = (opts: Omit<RateLimiterOptions, 'backend'>) => new RateLimiter({ backend: target.make(), ...opts });
    const fake = () => target.fakeTime === true;
    /** Let `ms` pass: on fake time the clock jumps (running the timers due), else a real sleep. */
    const pass = (ms: number): Promise<unknown> =>
      fake() ? vi.advanceTimersByTimeAsync(ms) : new Promise((r) => setTimeout(r, ms));
    /** Await `p`; on fake time, run the timers one by one (each at its own instant) until it settles. */
    const until = async <T>(p: Promise<T>): Promise<T> => {
      if (!fake()) return p;
      let settled = false;
      const watched = p.finally(() => {
        settled = true;
      });
      watched.catch(() => {});
      await vi.advanceTimersByTimeAsync(0); // what settles without time passing
      for (let i = 0; i < 10_000 && !settled; i++) await vi.advanceTimersToNextTimerAsync();
      if (!settled) throw new Error('still pending after 10,000 timers on the fake clock');
      return watched;
    };

    beforeAll(async () => {
      target = await setup();
    });
    afterAll(async () => {
      await target?.close?.();
    });
    beforeEach(() => {
      if (fake()) vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    });
    afterEach(() => {
      vi.useRealTimers();
    });

    test('a new key admits exactly its capacity at once, then says when the next token comes', async () => {
      const l = limiter({ policy: { rate: 6, per: '1m', capacity: 5 } }); // a token every 10 s
      const ds = [];
      for (let i = 0; i < 8; i++) ds.push(await l.tryAcquire('user-1'));
      expect(ds.filter((d) => d.allowed)).toHaveLength(5);
      expect(ds.slice(0, 5).map((d) => d.remaining)).toEqual([4, 3, 2, 1, 0]);
      const rejected = ds[5];
      expect(rejected?.allowed).toBe(false);
      if (fake()) {
        // The next token in 10 s, full again in 50.
        expect(rejected?.retryAfterMs).toBe(10_000);
        expect(rejected?.resetAfterMs).toBe(50_000);
      } else {
        // Time passed between the calls: at most that, never more.
        expect(rejected?.retryAfterMs).toBeGreaterThan(0);
        expect(rejected?.retryAfterMs).toBeLessThanOrEqual(10_000);
        expect(rejected?.resetAfterMs).toBeGreaterThan(40_000);
        expect(rejected?.resetAfterMs).toBeLessThanOrEqual(50_000);
      }
    });

    test('after waiting retryAfterMs, the call is allowed', async () => {
      const l = limiter({ policy: { rate: 1, per: '1s', capacity: 1 } });
      expect((await l.tryAcquire('k')).allowed).toBe(true);
      const d = await l.tryAcquire('k');
      expect(d.allowed).toBe(false);
      if (fake()) {
        expect(d.retryAfterMs).toBe(1000);
        await pass(999);
        expect((await l.tryAcquire('k')).allowed).toBe(false);
        await pass(1);
      } else {
        await pass(d.retryAfterMs + 2);
      }
      expect((await l.tryAcquire('k')).allowed).toBe(true);
    });

    test('keys, and limiters of different names on one key, have separate buckets', async () => {
      const backend = target.make();
      const a = new RateLimiter({ backend, policy: { rate: 1, per: '1h' }, name: 'requests' });
      const b = new RateLimiter({ backend, policy: { rate: 1, per: '1h' }, name: 'llm-tokens' });
      expect((await a.tryAcquire('u')).allowed).toBe(true);
      expect((await a.tryAcquire('u')).allowed).toBe(false);
      expect((await b.tryAcquire('u')).allowed).toBe(true);
      expect((await a.tryAcquire('v')).allowed).toBe(true);
    });

    test('fractional costs: 0.25 at capacity 1 admits four calls', async () => {
      const l = limiter({ policy: { rate: 1, per: '1h' } });
      let n = 0;
      for (let i = 0; i < 6; i++) if ((await l.tryAcquire('frac', { cost: 0.25 })).allowed) n++;
      expect(n).toBe(4);
    });

    test('a user over quota waits, and is served in order at the policy rate', async () => {
      const l = limiter({ policy: { rate: 20, per: '1s', capacity: 2 } }); // a token every 50 ms
      const t0 = performance.now();
      const order: number[] = [];
      const waits = await until(
        Promise.all(
          Array.from({ length: 7 }, (_, i) =>
            l.acquire('queue-user').then((g) => {
              order.push(i);
              return { waited: g.waitedMs, at: performance.now() - t0 };
            }),
          ),
        ),
      );
      expect(order).toEqual([0, 1, 2, 3, 4, 5, 6]);
      // 2 at once, then one every 50 ms.
      const expected = [0, 0, 50, 100, 150, 200, 250];
      if (fake()) {
        expect(waits.map((w) => w.at)).toEqual(expected);
        expect(waits.map((w) => w.waited)).toEqual(expected);
        return;
      }
      waits.forEach((w, i) => {
        const e = expected[i] as number;
        // Never before the bucket allows; late only by what a busy machine adds.
        expect(w.at).toBeGreaterThanOrEqual(e - EARLY_MS);
        expect(w.at).toBeLessThanOrEqual(3 * e + 500);
      });
    });

    test("one user's burst does not delay another user", async () => {
      const l = limiter({ policy: { rate: 5, per: '1s', capacity: 1 } }); // 200 ms a token
      const order: string[] = [];
      const burst = Promise.all(Array.from({ length: 5 }, () => l.acquire('busy').then(() => order.push('busy'))));
      const g = await until(l.acquire('quiet'));
      order.push('quiet');
      await until(burst);
      if (fake()) {
        // Admitted at once, while the burst's second token is 200 ms away.
        expect(g.waitedMs).toBe(0);
        expect(order.indexOf('quiet')).toBe(1);
        return;
      }
      // Served by its first answer, before the burst's last token (≥ 800 ms away), where a
      // shared queue would have put it.
      expect(order.indexOf('quiet')).toBeLessThan(5);
      expect(g.waitedMs).toBeLessThan(800);
    });

    test('maxWaitMs: a call that would wait longer fails at once, takes nothing, and says when to retry', async () => {
      const l = limiter({ policy: { rate: 1, per: '1s', capacity: 1 } }); // a token a second
      await l.acquire('mw');
      const t0 = performance.now();
      const err = await l.acquire('mw', { maxWaitMs: 20 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(MaxWaitExceededError);
      expect((err as MaxWaitExceededError).code).toBe('ERR_TOLLGATE_MAX_WAIT_EXCEEDED');
      const retry = (err as MaxWaitExceededError).retryAfterMs;
      if (fake()) {
        expect(performance.now() - t0).toBe(0);
        expect(retry).toBe(1000);
        // Nothing was taken: the next token still comes on the original schedule (1 s, not 2).
        const g = await until(l.acquire('mw', { maxWaitMs: 2000 }));
        expect(g.waitedMs).toBe(1000);
        return;
      }
      expect(retry).toBeGreaterThan(20);
      expect(retry).toBeLessThanOrEqual(1000);
      // Nothing was taken: the bucket still says the next token is ≤ 1 s away (2 s if taken).
      const d = await l.tryAcquire('mw');
      expect(d.allowed || d.retryAfterMs <= 1000).toBe(true);
    });

    test('maxWaitMs counts the queue ahead: behind 3 waiters at a token a second, 1.5 s is too little', async () => {
      const l = limiter({ policy: { rate: 1, per: '1s', capacity: 1 } });
      const ac = new AbortController();
      const ahead = [0, 1, 2].map(() => l.acquire('mwq', { signal: ac.signal }).catch((e: unknown) => e));
      const t0 = performance.now();
      const err = await l.acquire('mwq', { maxWaitMs: 1500 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(MaxWaitExceededError);
      // Its turn would come at 3 s, after the three ahead (0, 1 and 2 s).
      if (fake()) {
        expect(performance.now() - t0).toBe(0);
        expect((err as MaxWaitExceededError).retryAfterMs).toBe(3000);
      } else {
        expect((err as MaxWaitExceededError).retryAfterMs).toBeGreaterThan(1500);
      }
      ac.abort();
      await until(Promise.all(ahead));
    });

    test("an aborted waiter's turn passes to the next one at once, and its token goes back", async () => {
      const l = limiter({ policy: { rate: 1, per: '1s', capacity: 1 } }); // a token a second
      // Taken before the first call: the bucket's times count from no earlier than this.
      const t0 = performance.now();
      await l.acquire('ab');
      const ac = new AbortController();
      const order: string[] = [];
      const at: Record<string, number> = {};
      const seen = (what: string) => () => {
        order.push(what);
        at[what] = performance.now() - t0;
      };
      const head = l.acquire('ab', { signal: ac.signal }).then(seen('head'), (e: unknown) => {
        seen('head aborted')();
        return e;
      });
      const next = l.acquire('ab').then(seen('next'));
      const third = l.acquire('ab').then(seen('third'));
      setTimeout(() => ac.abort(new Error('user went away')), 50);
      expect(await until(head)).toBeInstanceOf(AbortedError);
      await until(Promise.all([next, third]));
      expect(order).toEqual(['head aborted', 'next', 'third']);
      if (fake()) {
        // The next caller takes the head's place at 1 s, and the third comes at 2 s, not 3.
        expect(at).toEqual({ 'head aborted': 50, next: 1000, third: 2000 });
        return;
      }
      // On a real clock only the bucket's lower bounds and generous upper bounds hold; the fake
      // clock above tells 2 s (the token went back) from 3 s (it was lost).
      expect(at.next).toBeGreaterThanOrEqual(1000 - EARLY_MS);
      expect(at.next).toBeLessThanOrEqual(3 * 1000);
      expect(at.third).toBeGreaterThanOrEqual(2000 - EARLY_MS);
      expect(at.third).toBeLessThanOrEqual(3 * 2000);
    });

    test('an already-aborted signal fails at once and takes nothing', async () => {
      const l = limiter({ policy: { rate: 1, per: '1h' } });
      const err = await l.acquire('pre', { signal: AbortSignal.abort() }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AbortedError);
      expect((await l.tryAcquire('pre')).allowed).toBe(true);
    });

    test('a cost above capacity fails at once, for tryAcquire and acquire', async () => {
      const l = limiter({ policy: { rate: 10, per: '1s', capacity: 10 } });
      await expect(l.tryAcquire('big', { cost: 11 })).rejects.toBeInstanceOf(CostExceedsCapacityError);
      const t0 = performance.now();
      await expect(l.acquire('big', { cost: 10.5 })).rejects.toThrow(/exceeds the bucket capacity 10/);
      if (fake()) expect(performance.now() - t0).toBe(0);
      expect((await l.tryAcquire('big', { cost: 10 })).allowed).toBe(true);
    });

    test.each([
      Number.NaN,
      -1,
      0,
      Number.POSITIVE_INFINITY,
      '1',
    ])('cost %s is refused with InvalidArgumentError', async (cost) => {
      const l = limiter({ policy: { rate: 10 } });
      await expect(l.tryAcquire('c', { cost: cost as number })).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(l.acquire('c', { cost: cost as number })).rejects.toBeInstanceOf(InvalidArgumentError);
    });

    test('refund gives tokens back', async () => {
      const l = limiter({ policy: { rate: 1, per: '1h', capacity: 3 } });
      expect((await l.tryAcquire('rf', { cost: 3 })).allowed).toBe(true);
      expect((await l.tryAcquire('rf')).allowed).toBe(false);
      await l.refund('rf', 2);
      const d = await l.tryAcquire('rf', { cost: 2 });
      expect(d.allowed).toBe(true);
      expect(d.remaining).toBe(0);
    });

    test('any string is a key: braces, spaces, unicode and 10 kB', async () => {
      const l = limiter({ policy: { rate: 1, per: '1h', capacity: 2 } });
      const odd = '{a}b c ü';
      const long = `${odd}${'x'.repeat(10_240)}`;
      expect((await l.tryAcquire(odd, { cost: 2 })).allowed).toBe(true);
      expect((await l.tryAcquire(odd)).allowed).toBe(false);
      expect((await l.tryAcquire(long, { cost: 2 })).allowed).toBe(true);
      expect((await l.tryAcquire(long)).allowed).toBe(false);
      expect((await l.tryAcquire('')).allowed).toBe(true);
      expect((await l.tryAcquire('{a}')).allowed).toBe(true);
    });

    test('tiers: a policy function gives each key its own quota', async () => {
      const tiers = { free: { rate: 2, per: '1h' }, pro: { rate: 5, per: '1h' } } as const;
      const l = limiter({ policy: (user) => (user.startsWith('pro:') ? tiers.pro : tiers.free) });
      let free = 0;
      let pro = 0;
      for (let i = 0; i < 8; i++) {
        if ((await l.tryAcquire('free:ann')).allowed) free++;
        if ((await l.tryAcquire('pro:bob')).allowed) pro++;
      }
      expect([free, pro]).toEqual([2, 5]);
    });
  });
}
