/**
 * The backend contract: one suite every storage strategy runs (memory, Redis, hybrid, Redis
 * Cluster). A new backend is done when this passes on it. Tests say what a user sees, with numbers.
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
import { afterAll, beforeAll, describe, expect, test } from 'vitest';

export interface ContractTarget {
  /** A fresh backend whose buckets no other test sees (e.g. a new Redis prefix). */
  make(): Backend;
  close?(): Promise<void> | void;
}

/** Timer and round-trip slack on a noisy 2-core machine. */
export const SLACK_MS = 120;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function backendContract(name: string, setup: () => Promise<ContractTarget>): void {
  describe(`backend contract: ${name}`, () => {
    let target: ContractTarget;
    const limiter = (opts: Omit<RateLimiterOptions, 'backend'>) => new RateLimiter({ backend: target.make(), ...opts });

    beforeAll(async () => {
      target = await setup();
    });
    afterAll(async () => {
      await target?.close?.();
    });

    test('a new key admits exactly its capacity at once, then says when the next token comes', async () => {
      const l = limiter({ policy: { rate: 10, per: '1s', capacity: 5 } });
      const ds = [];
      for (let i = 0; i < 8; i++) ds.push(await l.tryAcquire('user-1'));
      expect(ds.filter((d) => d.allowed)).toHaveLength(5);
      expect(ds.slice(0, 5).map((d) => d.remaining)).toEqual([4, 3, 2, 1, 0]);
      const rejected = ds[5];
      expect(rejected?.allowed).toBe(false);
      // 10 per second: the next token is ≤ 100 ms away.
      expect(rejected?.retryAfterMs).toBeGreaterThan(0);
      expect(rejected?.retryAfterMs).toBeLessThanOrEqual(100);
      expect(rejected?.resetAfterMs).toBeGreaterThan(400);
      expect(rejected?.resetAfterMs).toBeLessThanOrEqual(500);
    });

    test('after waiting retryAfterMs, the call is allowed', async () => {
      const l = limiter({ policy: { rate: 20, per: '1s', capacity: 1 } });
      expect((await l.tryAcquire('k')).allowed).toBe(true);
      const d = await l.tryAcquire('k');
      expect(d.allowed).toBe(false);
      await sleep(d.retryAfterMs + 2);
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
      const waits = await Promise.all(
        Array.from({ length: 7 }, (_, i) =>
          l.acquire('queue-user').then((g) => {
            order.push(i);
            return { waited: g.waitedMs, at: performance.now() - t0 };
          }),
        ),
      );
      expect(order).toEqual([0, 1, 2, 3, 4, 5, 6]);
      // 2 at once, then one every 50 ms: 0, 0, 50, 100, 150, 200, 250.
      const expected = [0, 0, 50, 100, 150, 200, 250];
      waits.forEach((w, i) => {
        expect(w.at).toBeGreaterThanOrEqual((expected[i] as number) - 5);
        expect(w.at).toBeLessThanOrEqual((expected[i] as number) + SLACK_MS);
      });
    });

    test("one user's burst does not delay another user", async () => {
      const l = limiter({ policy: { rate: 10, per: '1s', capacity: 1 } });
      const burst = Promise.all(Array.from({ length: 5 }, () => l.acquire('busy')));
      const t0 = performance.now();
      const g = await l.acquire('quiet');
      expect(performance.now() - t0).toBeLessThan(SLACK_MS);
      expect(g.waitedMs).toBeLessThan(SLACK_MS);
      await burst;
    });

    test('maxWaitMs: a call that would wait longer fails at once, takes nothing, and says when to retry', async () => {
      const l = limiter({ policy: { rate: 10, per: '1s', capacity: 1 } }); // 100 ms a token
      await l.acquire('mw');
      const t0 = performance.now();
      const err = await l.acquire('mw', { maxWaitMs: 20 }).catch((e: unknown) => e);
      expect(performance.now() - t0).toBeLessThan(SLACK_MS);
      expect(err).toBeInstanceOf(MaxWaitExceededError);
      expect((err as MaxWaitExceededError).code).toBe('ERR_TOLLGATE_MAX_WAIT_EXCEEDED');
      expect((err as MaxWaitExceededError).retryAfterMs).toBeGreaterThan(20);
      expect((err as MaxWaitExceededError).retryAfterMs).toBeLessThanOrEqual(100);
      // Nothing was taken: the next token still comes on the original schedule.
      const g = await l.acquire('mw', { maxWaitMs: 200 });
      expect(g.waitedMs).toBeLessThanOrEqual(100 + SLACK_MS);
    });

    test('maxWaitMs counts the queue ahead: behind 3 waiters at 100 ms a token, 150 ms is too little', async () => {
      const l = limiter({ policy: { rate: 10, per: '1s', capacity: 1 } });
      const ahead = [l.acquire('mwq'), l.acquire('mwq'), l.acquire('mwq')];
      const t0 = performance.now();
      const err = await l.acquire('mwq', { maxWaitMs: 150 }).catch((e: unknown) => e);
      expect(performance.now() - t0).toBeLessThan(SLACK_MS);
      expect(err).toBeInstanceOf(MaxWaitExceededError);
      expect((err as MaxWaitExceededError).retryAfterMs).toBeGreaterThanOrEqual(200);
      await Promise.all(ahead);
    });

    test("an aborted waiter's turn passes to the next one at once, and its token goes back", async () => {
      const l = limiter({ policy: { rate: 5, per: '1s', capacity: 1 } }); // 200 ms a token
      await l.acquire('ab');
      const ac = new AbortController();
      const t0 = performance.now();
      const head = l.acquire('ab', { signal: ac.signal });
      const next = l.acquire('ab');
      const third = l.acquire('ab');
      setTimeout(() => ac.abort(new Error('user went away')), 50);
      const err = await head.catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AbortedError);
      expect(performance.now() - t0).toBeLessThan(50 + SLACK_MS);
      // The next caller takes the head's place: admitted ~200 ms after start, not 400.
      await next;
      const tNext = performance.now() - t0;
      expect(tNext).toBeGreaterThanOrEqual(195);
      expect(tNext).toBeLessThanOrEqual(200 + SLACK_MS);
      await third;
      const tThird = performance.now() - t0;
      expect(tThird).toBeGreaterThanOrEqual(395);
      expect(tThird).toBeLessThanOrEqual(400 + SLACK_MS);
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
      expect(performance.now() - t0).toBeLessThan(SLACK_MS);
      expect((await l.tryAcquire('big', { cost: 10 })).allowed).toBe(true);
    });

    test.each([Number.NaN, -1, 0, Number.POSITIVE_INFINITY, '1'])(
      'cost %s is refused with InvalidArgumentError',
      async (cost) => {
        const l = limiter({ policy: { rate: 10 } });
        await expect(l.tryAcquire('c', { cost: cost as number })).rejects.toBeInstanceOf(InvalidArgumentError);
        await expect(l.acquire('c', { cost: cost as number })).rejects.toBeInstanceOf(InvalidArgumentError);
      },
    );

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
