/**
 * SharedLimiter on the memory backend, on fake timers: every number here is exact time, so the
 * shares and bounds are asserted tightly without depending on the machine's speed.
 */
import {
  AbortedError,
  CostExceedsCapacityError,
  InvalidArgumentError,
  InvalidOptionsError,
  MaxWaitExceededError,
  MemoryBackend,
  SharedLimiter,
  type SharedLimiterOptions,
} from '@tollgate/core';
import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import { MemoryPools } from '../src/shared-limiter/memory-pools.ts';
import { GRANTED, decide, newPool, observePool } from '../src/shared-limiter/pool-math.ts';

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance', 'Date'] });
});
afterEach(() => {
  vi.useRealTimers();
});

const make = (o: Partial<SharedLimiterOptions> = {}) =>
  new SharedLimiter({ backend: new MemoryBackend(), policy: { rate: 100, per: '1s', capacity: 10 }, ...o });

/** Queue `n` acquires of `key` at once; their admission instants (ms) land in the returned array. */
function backlog(l: SharedLimiter, key: string, n: number, opts: { pool?: string; cost?: number } = {}): number[] {
  const at: number[] = [];
  for (let i = 0; i < n; i++) void l.acquire(key, opts).then(() => at.push(performance.now()));
  return at;
}

const countIn = (at: number[], from: number, to: number) => at.filter((t) => t >= from && t < to).length;

describe('uncontended', () => {
  test('a call is admitted at once, up to the capacity, for any key', async () => {
    const l = make();
    const grants = await Promise.all(Array.from({ length: 10 }, (_, i) => l.acquire(`user-${i}`)));
    expect(grants.map((g) => g.waitedMs)).toEqual(Array(10).fill(0));
    expect(grants.map((g) => g.remaining)).toEqual([9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
  });

  test('a pool whose policy is undefined has no limit', async () => {
    const l = make({ policy: (pool) => (pool === 'gpt-4o' ? { rate: 1, per: '1h' } : undefined) });
    for (let i = 0; i < 1000; i++) expect((await l.acquire('a', { pool: 'local-model' })).waitedMs).toBe(0);
    expect((await l.tryAcquire('a', { pool: 'local-model' })).allowed).toBe(true);
    expect((await l.tryAcquire('a', { pool: 'gpt-4o' })).allowed).toBe(true);
    expect((await l.tryAcquire('a', { pool: 'gpt-4o' })).allowed).toBe(false);
  });
});

describe('contended: the refill is shared by weight', () => {
  test('keys of weights 1 : 2 : 4, all backlogged, get 1/7, 2/7, 4/7 of the pool (±5%)', async () => {
    const weights: Record<string, number> = { a: 1, b: 2, c: 4 };
    const l = make({ weight: (k) => weights[k] ?? 1 });
    const t0 = performance.now();
    const a = backlog(l, 'a', 1500);
    const b = backlog(l, 'b', 1500);
    const c = backlog(l, 'c', 1500);
    await vi.advanceTimersByTimeAsync(12_000);
    // Measure after the first second (the initial burst of 10 is shared by arrival).
    const from = t0 + 1000;
    const to = t0 + 11_000;
    const n = { a: countIn(a, from, to), b: countIn(b, from, to), c: countIn(c, from, to) };
    const total = n.a + n.b + n.c;
    expect(total).toBeGreaterThanOrEqual(0.95 * 100 * 10);
    expect(n.a / total).toBeGreaterThan((1 / 7) * 0.95);
    expect(n.a / total).toBeLessThan((1 / 7) * 1.05);
    expect(n.b / total).toBeGreaterThan((2 / 7) * 0.95);
    expect(n.b / total).toBeLessThan((2 / 7) * 1.05);
    expect(n.c / total).toBeGreaterThan((4 / 7) * 0.95);
    expect(n.c / total).toBeLessThan((4 / 7) * 1.05);
  });

  test('the pool never admits more than capacity + rate × T in any window, whatever the mix', async () => {
    const l = make({ weight: (k) => (k === 'x' ? 3 : 1) });
    const admitted: Array<[number, number]> = [];
    for (const k of ['x', 'y', 'z']) {
      for (let i = 0; i < 300; i++) {
        const cost = 1 + (i % 3);
        void l.acquire(k, { cost }).then(() => admitted.push([performance.now(), cost]));
      }
    }
    await vi.advanceTimersByTimeAsync(20_000);
    expect(admitted.length).toBe(900);
    // Tokens admitted in any window [t, t + T): at most 10 + 100/s × T.
    for (const T of [1, 10, 100, 1000, 5000]) {
      for (const [t] of admitted) {
        const sum = admitted.filter(([u]) => u >= t && u < t + T).reduce((acc, [, c]) => acc + c, 0);
        expect(sum).toBeLessThanOrEqual(10 + (100 * T) / 1000 + 1e-9);
      }
    }
  });

  test('within a key, callers are served in arrival order', async () => {
    const l = make();
    const order: number[] = [];
    const other = backlog(l, 'noisy', 200);
    await Promise.all(
      Array.from({ length: 50 }, (_, i) => l.acquire('k', { cost: 1 + (i % 2) }).then(() => order.push(i))).concat([
        vi.advanceTimersByTimeAsync(10_000),
      ]),
    );
    expect(order).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(other.length).toBeGreaterThan(0);
  });
});

describe('work-conserving', () => {
  test('a key alone gets at least 95% of the pool', async () => {
    const l = make();
    const t0 = performance.now();
    const a = backlog(l, 'alone', 2000);
    await vi.advanceTimersByTimeAsync(10_000);
    // 10 s at 100/s plus the burst of 10.
    expect(countIn(a, t0, t0 + 10_000)).toBeGreaterThanOrEqual(0.95 * 1010);
  });

  test('a key that arrives reaches its share within half a second', async () => {
    const l = make();
    const a = backlog(l, 'a', 3000);
    await vi.advanceTimersByTimeAsync(2000);
    const t1 = performance.now();
    const b = backlog(l, 'b', 3000);
    await vi.advanceTimersByTimeAsync(3000);
    const nb = countIn(b, t1 + 500, t1 + 2500);
    const na = countIn(a, t1 + 500, t1 + 2500);
    expect(nb / (na + nb)).toBeGreaterThan(0.5 * 0.95);
    expect(nb / (na + nb)).toBeLessThan(0.5 * 1.05);
    // In its first half second it already got close to half.
    expect(countIn(b, t1, t1 + 500)).toBeGreaterThanOrEqual(20);
  });

  test('idle time earns no credit: a returning key starts level, neither starving others nor starved', async () => {
    const l = make();
    const a = backlog(l, 'a', 5000);
    const b1 = backlog(l, 'b', 100); // b is served for ~2 s, then idle
    await vi.advanceTimersByTimeAsync(8000);
    expect(b1.length).toBe(100);
    const t1 = performance.now();
    const b2 = backlog(l, 'b', 1000);
    await vi.advanceTimersByTimeAsync(2000);
    // b was idle ~6 s while a had the pool alone: b gets half from its return, not all of it.
    const nb = countIn(b2, t1, t1 + 2000);
    const na = countIn(a, t1, t1 + 2000);
    expect(nb / (na + nb)).toBeGreaterThan(0.45);
    expect(nb / (na + nb)).toBeLessThan(0.55);
  });

  test('a key whose calls come one at a time, paced above its share, gets its share, not its pace', async () => {
    // a (weight 1) sends one call at a time, each 25 ms after the last was admitted (40/s), as a
    // tenant behind its own 40/s bucket would; b and c (weight 4 each) are backlogged. The pool
    // gives a 100/s × 1/9 ≈ 11/s. Were a's counter forgotten between its calls, each call would
    // start level with the least-served key again and a would take ~40/s.
    const weights: Record<string, number> = { a: 1, b: 4, c: 4 };
    const l = make({ weight: (k) => weights[k] ?? 1 });
    const t0 = performance.now();
    const b = backlog(l, 'b', 1500);
    const c = backlog(l, 'c', 1500);
    const a: number[] = [];
    let stop = false;
    void (async () => {
      while (!stop) {
        await l.acquire('a');
        a.push(performance.now());
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    await vi.advanceTimersByTimeAsync(11_000);
    stop = true;
    const from = t0 + 1000;
    const to = t0 + 11_000;
    const n = { a: countIn(a, from, to), b: countIn(b, from, to), c: countIn(c, from, to) };
    const total = n.a + n.b + n.c;
    expect(total).toBeGreaterThanOrEqual(0.95 * 100 * 10);
    expect(n.a / total).toBeGreaterThan((1 / 9) * 0.9);
    expect(n.a / total).toBeLessThan((1 / 9) * 1.1);
    expect(n.b / n.c).toBeGreaterThan(0.9);
    expect(n.b / n.c).toBeLessThan(1.1);
  });

  test('a light key is not queued behind a heavy backlog: its call waits about its share interval', async () => {
    const l = make();
    backlog(l, 'heavy', 500); // 5 s of work
    await vi.advanceTimersByTimeAsync(1000);
    const waits: number[] = [];
    for (let i = 0; i < 5; i++) {
      const p = l.acquire('light');
      await vi.advanceTimersByTimeAsync(300);
      waits.push((await p).waitedMs);
    }
    // Two keys share 100/s: one turn each 20 ms; the heavy key's backlog is 4 s long.
    for (const w of waits) expect(w).toBeLessThanOrEqual(25);
  });

  test('pools are independent: a backlog on one does not delay another', async () => {
    const l = make();
    backlog(l, 'a', 500, { pool: 'gpt-4o' });
    await vi.advanceTimersByTimeAsync(500);
    const g = await l.acquire('a', { pool: 'gpt-4o-mini' });
    expect(g.waitedMs).toBe(0);
  });
});

describe('like RateLimiter', () => {
  test('maxWaitMs: a call that would wait longer fails at once with retryAfterMs, and takes nothing', async () => {
    const l = make();
    backlog(l, 'a', 30); // 10 admitted at once; a's head holds the 11th, 1 token into debt
    const before = performance.now();
    const err = await l.acquire('b', { maxWaitMs: 5 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MaxWaitExceededError);
    expect((err as MaxWaitExceededError).retryAfterMs).toBe(20);
    expect(performance.now()).toBe(before);
    // Nothing was taken: b's next call waits the same 20 ms (30 had the first taken a token).
    const p = l.acquire('b', { maxWaitMs: 400 });
    await vi.advanceTimersByTimeAsync(400);
    expect((await p).waitedMs).toBe(20);
  });

  test('an aborted waiter gives its tokens back and the next caller moves up', async () => {
    const l = make({ policy: { rate: 1, per: '1s', capacity: 1 } });
    await l.acquire('a');
    const ac = new AbortController();
    const p1 = l.acquire('a', { signal: ac.signal });
    const p2 = l.acquire('a');
    await vi.advanceTimersByTimeAsync(100);
    ac.abort();
    await expect(p1).rejects.toBeInstanceOf(AbortedError);
    const t = performance.now();
    await vi.advanceTimersByTimeAsync(1000);
    // p2 would have come at 2 s without the refund; it comes at 1 s.
    const g = await p2;
    expect(g.waitedMs).toBeLessThanOrEqual(1000);
    expect(t).toBeGreaterThan(0);
  });

  test('tryAcquire never jumps waiters, and refund gives tokens back', async () => {
    const l = make();
    backlog(l, 'a', 12); // 10 now, 2 in debt
    expect((await l.tryAcquire('b')).allowed).toBe(false);
    expect((await l.tryAcquire('a')).allowed).toBe(false);
    await vi.advanceTimersByTimeAsync(30);
    await l.refund('b', 5);
    const d = await l.tryAcquire('b', { cost: 5 });
    expect(d.allowed).toBe(true);
  });

  test('a cost above the capacity fails at once; bad arguments and weights fail with typed errors', async () => {
    const l = make({ weight: (k) => ({ zero: 0, neg: -1, nan: Number.NaN })[k] ?? 1 });
    await expect(l.acquire('a', { cost: 11 })).rejects.toBeInstanceOf(CostExceedsCapacityError);
    await expect(l.tryAcquire('a', { cost: 11 })).rejects.toBeInstanceOf(CostExceedsCapacityError);
    await expect(l.acquire('a', { cost: -1 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(l.acquire('a', { maxWaitMs: Number.NaN })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(l.acquire(42 as unknown as string)).rejects.toBeInstanceOf(InvalidArgumentError);
    for (const k of ['zero', 'neg', 'nan']) {
      const e = await l.acquire(k).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(InvalidOptionsError);
      expect((e as InvalidOptionsError).code).toBe('ERR_TOLLGATE_INVALID_OPTIONS');
      expect((e as Error).message).toMatch(/weight\(".+"\): must be a finite number > 0/);
    }
    // Nothing queued was lost: a good key still gets all 10.
    const g = await Promise.all(Array.from({ length: 10 }, () => l.acquire('a')));
    expect(g.every((x) => x.waitedMs === 0)).toBe(true);
  });

  test('bad options fail at construction, naming the option', () => {
    expect(() => new SharedLimiter({ backend: {} as never, policy: { rate: 1 } })).toThrow(
      /backend must be a MemoryBackend/,
    );
    expect(() => make({ policy: { rate: -1 } })).toThrow(/policy.rate/);
    expect(() => make({ weight: 3 as never })).toThrow(/weight must be a function/);
    expect(() => make({ onBackendError: 'nope' as never })).toThrow(/onBackendError/);
  });
});

describe('observe: the provider steers the pool', () => {
  test('after retryAfterMs nothing is admitted until then, not even a grant already held', async () => {
    const l = make({ policy: { rate: 100, per: '1s', capacity: 1 } });
    const t0 = performance.now();
    await l.acquire('a');
    const p = backlog(l, 'a', 3); // its head holds a grant for t0 + 10 ms
    await l.observe('default', { retryAfterMs: 2000 });
    const q = backlog(l, 'b', 3);
    await vi.advanceTimersByTimeAsync(1999);
    expect(p.length + q.length).toBe(0);
    await vi.advanceTimersByTimeAsync(500);
    expect(p.length + q.length).toBe(6);
    expect(Math.min(...p, ...q)).toBeGreaterThanOrEqual(t0 + 2000);
  });

  test('a grant another limiter holds on the pool confirms at its start and waits out the pause, to the ms', async () => {
    // Two limiters on one backend share its pools, as processes share Redis; only `b` observes.
    const backend = new MemoryBackend();
    const policy = { rate: 2, per: '1s', capacity: 1 };
    const a = new SharedLimiter({ backend, policy });
    const b = new SharedLimiter({ backend, policy });
    const t0 = performance.now();
    await a.acquire('t1');
    const held = backlog(a, 't1', 1); // granted now, to start at t0 + 500 ms
    await vi.advanceTimersByTimeAsync(100);
    await b.observe('default', { retryAfterMs: 1500 }); // the pool is paused until t0 + 1600 ms
    await vi.advanceTimersByTimeAsync(1499);
    expect(held).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(held).toEqual([t0 + 1600]);
  });

  test('grants held over a pause and those granted during it start at its end with at most the capacity between them', async () => {
    const backend = new MemoryBackend();
    const policy = { rate: 10, per: '1s', capacity: 10 };
    const a = new SharedLimiter({ backend, policy });
    const b = new SharedLimiter({ backend, policy });
    const each = [a, b].flatMap((l) => ['k1', 'k2', 'k3'].map((k) => backlog(l, k, 40)));
    await vi.advanceTimersByTimeAsync(2000); // the bucket is in debt: each of the 6 heads holds a grant
    const t = performance.now();
    await b.observe('default', { retryAfterMs: 1500 });
    await vi.advanceTimersByTimeAsync(2000);
    const at = each.flat();
    expect(countIn(at, t + 1, t + 1500)).toBe(0);
    // The grants the 6 heads held and those granted during the pause: 10 in all, not the held on top of 10.
    expect(countIn(at, t + 1500, t + 1501)).toBe(10);
    expect(countIn(at, t + 1501, t + 2000)).toBeLessThanOrEqual(5);
  });

  test('a lower remaining empties the pool down to it; a lower limit replaces the rate', async () => {
    const l = make();
    await l.observe('default', { remaining: 2 });
    expect((await l.tryAcquire('a')).remaining).toBe(1);
    expect((await l.tryAcquire('a')).allowed).toBe(true);
    expect((await l.tryAcquire('a')).allowed).toBe(false);
    await l.observe('default', { limit: 10, resetAfterMs: 10_000 }); // 10/s instead of 100/s, capacity 1
    const t0 = performance.now();
    const at = backlog(l, 'a', 30);
    await vi.advanceTimersByTimeAsync(3000);
    expect(at.length).toBe(30);
    // 30 calls at 10/s take ~3 s (at 100/s they would take 0.3 s).
    expect(Math.max(...at) - t0).toBeGreaterThan(2800);
    // Nonsense is ignored.
    await l.observe('default', { limit: -1, remaining: Number.NaN, retryAfterMs: -5 });
  });
});

describe('a pause (retryAfterMs) on fixed instants', () => {
  // 10/s, capacity 10: the pool math alone, driven at exact instants (ms).
  const policy = { rate: 10, perMs: 1000, capacity: 10, ratePerMs: 0.01 };
  const said = (o: Partial<{ limit: number; remaining: number; resetAfterMs: number; retryAfterMs: number }>) => ({
    limit: -1,
    remaining: -1,
    resetAfterMs: -1,
    retryAfterMs: -1,
    ...o,
  });

  /** The most tokens starting in any window [t, t + T) among `starts`. */
  const most = (starts: number[], T: number) =>
    Math.max(...starts.map((t) => starts.filter((u) => u >= t && u < t + T).length));

  test('heads that reserve during a pause start at its end within capacity + r·T, not on top of a full bucket', () => {
    const s = newPool(policy, 0);
    const starts: number[] = [];
    const ask = (now: number, key: string, mode: 't' | 'r') => {
      const a = decide(s, policy, now, key, 1, 1, mode, -1, false);
      if (a.status === GRANTED) starts.push(now + a.ms);
      return a;
    };
    for (let i = 0; i < 10; i++) ask(0, 'drain', 't');
    observePool(s, policy, 0, said({ retryAfterMs: 1500 }));
    // Four keys reserve during the pause: each is granted, to start at its end.
    for (const [i, k] of ['a', 'b', 'c', 'd'].entries())
      expect(ask(100 * (i + 1), k, 'r')).toMatchObject({ status: GRANTED, ms: 1500 - 100 * (i + 1) });
    // Nothing may start before the end, not even by trying.
    expect(ask(1499, 'late', 't').status).not.toBe(GRANTED);
    // From the resume, 20 callers try every 10 ms for 2 s.
    for (let t = 1500; t <= 3500; t += 10) for (let i = 0; i < 20; i++) ask(t, `late-${i}`, 't');
    // At the resume: the 4 heads and 6 more (the bucket's 10), not 4 + 10.
    expect(starts.filter((t) => t === 1500)).toHaveLength(10);
    // And in any window T after the drain: at most 10 + 10/s × T.
    const after = starts.filter((t) => t > 0);
    for (const T of [1, 100, 500, 1000, 2000]) expect(most(after, T)).toBeLessThanOrEqual(10 + (10 * T) / 1000);
    // Work-conserving still: by 2 s after the resume, the bucket and the refill, 10 + 20.
    expect(after.length).toBe(30);
  });

  test('a pause longer than per keeps an observed limit until one per after its end', () => {
    for (const together of [true, false]) {
      const s = newPool(policy, 0);
      if (together) observePool(s, policy, 0, said({ limit: 2, retryAfterMs: 3000 }));
      else {
        observePool(s, policy, 0, said({ retryAfterMs: 3000 }));
        observePool(s, policy, 500, said({ limit: 2, resetAfterMs: 200 }));
      }
      const starts: number[] = [];
      for (let t = 0; t < 6000; t += 10) {
        const a = decide(s, policy, t, 'k', 1, 1, 't', -1, false);
        if (a.status === GRANTED) starts.push(t);
      }
      // 2/s, capacity 10 × 2/10 = 2, from the end of the pause until one second after: the 2 in
      // the bucket and one each 500 ms, not the policy's 10 + 10.
      expect(starts.filter((t) => t < 4000)).toEqual([3000, 3010, 3500]);
      // Then the limit lapses and the policy's rate is back: 10/s from 4 s.
      expect(starts.filter((t) => t >= 4000 && t < 6000).length).toBeGreaterThanOrEqual(20);
    }
  });
});

describe('memory', () => {
  test('idle pools leave nothing behind', () => {
    let now = 0;
    const pools = new MemoryPools(() => now);
    const policy = { rate: 10, perMs: 1000, capacity: 10, ratePerMs: 0.01 };
    // A pool left full and idle by a call is dropped at once.
    pools.decide('n', 'p', 'k', policy, 1, 1, 'r', -1, false);
    expect(pools.size).toBe(1);
    now = 100;
    pools.refund('n', 'p', 'k', policy, 0.5);
    pools.decide('n', 'p', 'k', policy, 1e-9, 1, 't', -1, false);
    now = 1000;
    pools.refund('n', 'p', 'k', policy, 1);
    expect(pools.size).toBe(0);
    // Pools left to refill are swept once refilled, as the map grows.
    for (let i = 0; i < 300; i++) pools.decide('n', `early-${i}`, `key-${i}`, policy, 3, 1, 'r', -1, true);
    now += 2000;
    for (let i = 0; i < 300; i++) pools.decide('n', `later-${i}`, 'k', policy, 3, 1, 'r', -1, false);
    expect(pools.size).toBe(300);
  });
});
