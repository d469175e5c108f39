/**
 * RateLimiter on the memory backend with fake timers: queue order, waits to the millisecond,
 * deadlines and aborts in every state, with no sleeping.
 */
import {
  AbortedError,
  type Backend,
  BackendUnavailableError,
  InvalidOptionsError,
  MaxWaitExceededError,
  MemoryBackend,
  RateLimiter,
} from '@tollgate/core';
import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance', 'Date'] });
});
afterEach(() => {
  vi.useRealTimers();
});

const limiter = (policy: object, extra: object = {}) =>
  new RateLimiter({ backend: new MemoryBackend(), policy: policy as never, ...extra });

/** Record when (fake ms) each promise settles, and how. */
function track<T>(p: Promise<T>): { at?: number; value?: T; error?: unknown } {
  const r: { at?: number; value?: T; error?: unknown } = {};
  const t0 = performance.now();
  p.then(
    (v) => {
      r.at = performance.now() - t0;
      r.value = v;
    },
    (e: unknown) => {
      r.at = performance.now() - t0;
      r.error = e;
    },
  );
  return r;
}

describe('acquire: a user over quota waits, and is served in order', () => {
  test('10 callers at 4 per second with a burst of 2 are admitted at 0, 0, 250, 500, … ms', async () => {
    const l = limiter({ rate: 4, per: '1s', capacity: 2 });
    const calls = Array.from({ length: 10 }, () => track(l.acquire('u')));
    await vi.advanceTimersByTimeAsync(2001);
    expect(calls.map((c) => c.at)).toEqual([0, 0, 250, 500, 750, 1000, 1250, 1500, 1750, 2000]);
    expect(calls.map((c) => Math.round(c.value?.waitedMs ?? -1))).toEqual([
      0, 0, 250, 500, 750, 1000, 1250, 1500, 1750, 2000,
    ]);
    expect(l.queued('u')).toBe(0);
  });

  test('costs are honoured in order: a big cost is not overtaken by small ones behind it', async () => {
    const l = limiter({ rate: 10, per: '1s', capacity: 10 });
    await l.acquire('u', { cost: 10 });
    const big = track(l.acquire('u', { cost: 5 }));
    const small = track(l.acquire('u', { cost: 1 }));
    await vi.advanceTimersByTimeAsync(700);
    expect(big.at).toBe(500);
    expect(small.at).toBe(600);
  });

  test('10,000 callers whose tokens are all there are admitted at once, without deep recursion', async () => {
    const l = limiter({ rate: 1e6, per: '1s', capacity: 1e6 });
    // Hold the head so the rest queue behind it, then release.
    await l.acquire('u', { cost: 1e6 });
    const all = Array.from({ length: 10_000 }, () => l.acquire('u', { cost: 1 }));
    await vi.advanceTimersByTimeAsync(1000);
    const grants = await Promise.all(all);
    expect(grants).toHaveLength(10_000);
    expect(l.queued('u')).toBe(0);
  });

  test('tryAcquire does not jump the queue while callers wait on the key', async () => {
    const l = limiter({ rate: 10, per: '1s', capacity: 1 });
    await l.acquire('u');
    const waiting = track(l.acquire('u'));
    const d = await l.tryAcquire('u');
    expect(d.allowed).toBe(false);
    expect(d.retryAfterMs).toBeGreaterThanOrEqual(100);
    await vi.advanceTimersByTimeAsync(100);
    expect(waiting.at).toBe(100);
    // Another key is not affected.
    expect((await l.tryAcquire('v')).allowed).toBe(true);
  });
});

describe('the head of the queue and the bucket stay in step', () => {
  test('a refund while the head waits serves it at once; the next caller waits its full 50 ms', async () => {
    const l = limiter({ rate: 100, per: '1s', capacity: 5 }); // 5 tokens in 50 ms
    await l.acquire('u', { cost: 5 });
    const first = track(l.acquire('u', { cost: 5 })); // reserves into debt: 50 ms
    await l.refund('u', 5);
    const second = track(l.acquire('u', { cost: 5 }));
    await vi.advanceTimersByTimeAsync(100);
    // A token bucket would have served the first from the refund, and the second 50 ms later:
    // never 10 tokens in one instant from a bucket of 5.
    expect(first.at).toBe(0);
    expect(second.at).toBe(50);
  });

  test('a wait rounded up to a whole ms lets no extra tokens through beside the grant', async () => {
    const l = limiter({ rate: 500, per: '1s', capacity: 10 }); // 0.5 tokens per ms
    await l.acquire('u', { cost: 9.7 }); // 0.3 left
    const big = track(l.acquire('u', { cost: 10 })); // debt 9.7: repaid in 19.4 ms, admitted at 20
    await vi.advanceTimersByTimeAsync(20);
    expect(big.at).toBe(20);
    // 10 tokens went out at 20 ms from a bucket of 10: nothing more at that instant (the 0.3
    // tokens refilled between 19.4 and 20 ms would make it 10.3).
    const d = await l.tryAcquire('u', { cost: 0.3 });
    expect(d.allowed).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect((await l.tryAcquire('u', { cost: 0.3 })).allowed).toBe(true);
  });
});

describe('maxWaitMs', () => {
  test('a queued caller whose turn has not come by its deadline is rejected then, taking nothing', async () => {
    const l = limiter({ rate: 1, per: '1s', capacity: 1 });
    await l.acquire('u');
    const head = track(l.acquire('u')); // admitted at 1000
    const second = track(l.acquire('u')); // would be admitted at 2000
    // Estimated wait 2000 ms ≥ 1500: refused at once.
    const third = track(l.acquire('u', { maxWaitMs: 1500 }));
    await vi.advanceTimersByTimeAsync(0);
    expect(third.at).toBe(0);
    expect(third.error).toBeInstanceOf(MaxWaitExceededError);
    expect((third.error as MaxWaitExceededError).retryAfterMs).toBe(3000);
    await vi.advanceTimersByTimeAsync(2000);
    expect([head.at, second.at]).toEqual([1000, 2000]);
  });

  test('maxWaitMs 0 admits only what is there now', async () => {
    const l = limiter({ rate: 1, per: '1s', capacity: 2 });
    await expect(l.acquire('u', { maxWaitMs: 0 })).resolves.toMatchObject({ waitedMs: 0 });
    await expect(l.acquire('u', { maxWaitMs: 0 })).resolves.toMatchObject({ waitedMs: 0 });
    await expect(l.acquire('u', { maxWaitMs: 0 })).rejects.toMatchObject({
      code: 'ERR_TOLLGATE_MAX_WAIT_EXCEEDED',
      retryAfterMs: 1000,
    });
  });

  test.each([-1, Number.NaN, '5'])('maxWaitMs %s is refused with a typed error', async (v) => {
    const l = limiter({ rate: 1 });
    await expect(l.acquire('u', { maxWaitMs: v as number })).rejects.toMatchObject({
      code: 'ERR_TOLLGATE_INVALID_ARGUMENT',
    });
  });
});

describe('abort', () => {
  test('a queued (not head) waiter leaves the line and the others keep their times', async () => {
    const l = limiter({ rate: 10, per: '1s', capacity: 1 });
    await l.acquire('u');
    const ac = new AbortController();
    const a = track(l.acquire('u')); // 100
    const b = track(l.acquire('u', { signal: ac.signal })); // would be 200
    const c = track(l.acquire('u')); // 200 once b leaves
    await vi.advanceTimersByTimeAsync(50);
    ac.abort();
    await vi.advanceTimersByTimeAsync(200);
    expect(b.error).toBeInstanceOf(AbortedError);
    expect(b.at).toBe(50);
    expect([a.at, c.at]).toEqual([100, 200]);
  });

  test('an aborted head refunds, and the next caller is admitted when the refund allows', async () => {
    const l = limiter({ rate: 10, per: '1s', capacity: 1 });
    await l.acquire('u');
    const ac = new AbortController();
    const head = track(l.acquire('u', { signal: ac.signal })); // holds: admitted at 100
    const next = track(l.acquire('u')); // would be 200
    await vi.advanceTimersByTimeAsync(30);
    ac.abort(new Error('gone'));
    await vi.advanceTimersByTimeAsync(0);
    expect(head.error).toBeInstanceOf(AbortedError);
    expect((head.error as AbortedError).cause).toEqual(new Error('gone'));
    await vi.advanceTimersByTimeAsync(200);
    expect(next.at).toBe(100);
  });

  test('two queued calls sharing one signal both fail with AbortedError, and take nothing', async () => {
    const l = limiter({ rate: 10, per: '1s', capacity: 2 }); // 100 ms a token
    await l.acquire('u', { cost: 2 });
    const ac = new AbortController(); // e.g. one request's tool calls
    const head = track(l.acquire('u', { cost: 2, signal: ac.signal })); // holds: admitted at 200
    const next = track(l.acquire('u', { cost: 1, signal: ac.signal }));
    await vi.advanceTimersByTimeAsync(150);
    // The head's refund leaves 1.5 tokens: enough for the next call, whose own listener has not
    // run yet when the head's does. It must not be granted.
    ac.abort();
    await vi.advanceTimersByTimeAsync(0);
    expect(head.error).toBeInstanceOf(AbortedError);
    expect(next.error).toBeInstanceOf(AbortedError);
    expect((await l.tryAcquire('u', { cost: 1.5 })).allowed).toBe(true);
  });

  test('no listener is left on a signal after the call settles', async () => {
    const l = limiter({ rate: 10, per: '1s', capacity: 1 });
    const ac = new AbortController();
    const add = vi.spyOn(ac.signal, 'addEventListener');
    const remove = vi.spyOn(ac.signal, 'removeEventListener');
    await l.acquire('u');
    const p = l.acquire('u', { signal: ac.signal });
    await vi.advanceTimersByTimeAsync(100);
    await p;
    expect(add).toHaveBeenCalledTimes(1);
    expect(remove).toHaveBeenCalledTimes(1);
  });
});

describe('options are checked at construction', () => {
  test.each([
    [{ policy: { rate: 1 } }, /backend must be a MemoryBackend, RedisBackend or HybridBackend \(received undefined\)/],
    [{ backend: new MemoryBackend(), policy: { rate: 0 } }, /policy\.rate must be a finite number > 0/],
    [
      { backend: new MemoryBackend(), policy: { rate: 1 }, onBackendError: 'ignore' },
      /onBackendError must be 'fail-open', 'fail-closed' or 'fallback' \(received "ignore"\)/,
    ],
    [{ backend: new MemoryBackend(), policy: { rate: 1 }, name: 3 }, /name must be a string \(received 3\)/],
    [{ backend: new MemoryBackend(), policy: { rate: 1 }, colour: 'red' }, /unknown option\(s\) colour/],
  ])('%#: %s', (opts, message) => {
    expect(() => new RateLimiter(opts as never)).toThrow(message);
    expect(() => new RateLimiter(opts as never)).toThrow(InvalidOptionsError);
  });

  test('a policy function returning a bad policy fails that call with InvalidOptionsError', async () => {
    const l = limiter(() => ({ rate: -5 }));
    await expect(l.tryAcquire('u')).rejects.toThrow(/policy\("u"\)\.rate must be a finite number > 0 .*received -5/);
  });
});

describe('when the backend fails', () => {
  const broken = (): Backend => ({
    kind: 'broken',
    tryTake: () => Promise.reject(new Error('connection refused')),
    reserve: () => Promise.reject(new Error('connection refused')),
    refund: () => Promise.reject(new Error('connection refused')),
  });

  test('fail-open admits, fail-closed rejects with BackendUnavailableError, fallback limits locally', async () => {
    const open = new RateLimiter({ backend: broken(), policy: { rate: 1, per: '1h' }, onBackendError: 'fail-open' });
    const closed = new RateLimiter({
      backend: broken(),
      policy: { rate: 1, per: '1h' },
      onBackendError: 'fail-closed',
    });
    const fallback = new RateLimiter({ backend: broken(), policy: { rate: 1, per: '1h' }, onBackendError: 'fallback' });
    for (let i = 0; i < 3; i++) expect((await open.tryAcquire('u')).allowed).toBe(true);
    await expect(open.acquire('u')).resolves.toMatchObject({ waitedMs: 0 });
    await expect(closed.tryAcquire('u')).rejects.toBeInstanceOf(BackendUnavailableError);
    const err = await closed.acquire('u').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackendUnavailableError);
    expect((err as BackendUnavailableError).cause).toBeDefined();
    const fb = [];
    for (let i = 0; i < 3; i++) fb.push((await fallback.tryAcquire('u')).allowed);
    expect(fb).toEqual([true, false, false]);
    // acquire on the fallback waits on the local bucket (1 per hour): bounded by maxWaitMs.
    await expect(fallback.acquire('u', { maxWaitMs: 10 })).rejects.toBeInstanceOf(MaxWaitExceededError);
  });

  test('after a failure, calls skip the backend until the probe interval; a success restores it', async () => {
    let fail = true;
    let calls = 0;
    const mem = new MemoryBackend();
    const flaky: Backend = {
      kind: 'flaky',
      tryTake: (...a) => {
        calls++;
        return fail ? Promise.reject(new Error('down')) : Promise.resolve(mem.tryTake(...a));
      },
      reserve: (...a) => (fail ? Promise.reject(new Error('down')) : Promise.resolve(mem.reserve(...a))),
      refund: () => Promise.resolve(),
    };
    const errors: unknown[] = [];
    const l = new RateLimiter({
      backend: flaky,
      policy: { rate: 100 },
      onBackendError: 'fail-open',
      probeIntervalMs: 500,
      onError: (e) => errors.push(e),
    });
    await l.tryAcquire('u');
    for (let i = 0; i < 10; i++) await l.tryAcquire('u');
    expect(calls).toBe(1); // the breaker is open: no further call reached the backend
    fail = false;
    await vi.advanceTimersByTimeAsync(500);
    await l.tryAcquire('u'); // the probe
    await l.tryAcquire('u');
    expect(calls).toBe(3);
    expect(errors).toHaveLength(1);
  });

  test('a failing shard sends only its own keys to the failure policy; the others are decided by the backend', async () => {
    const mem = new MemoryBackend();
    const down = new Set(['shard-1']);
    const calls = new Map<string, number>();
    const shardOf = (_name: string, key: string) => `shard-${key.length % 3}`; // 'u1' → shard-2, 'v' → shard-1
    const call = <T>(key: string, f: () => T): Promise<T> => {
      const shard = shardOf('', key);
      calls.set(shard, (calls.get(shard) ?? 0) + 1);
      return down.has(shard) ? Promise.reject(new Error(`${shard} is down`)) : Promise.resolve(f());
    };
    const sharded: Backend = {
      kind: 'sharded',
      shardOf,
      tryTake: (n, k, p, c) => call(k, () => mem.tryTake(n, k, p, c)),
      reserve: (n, k, p, c, m) => call(k, () => mem.reserve(n, k, p, c, m)),
      refund: (n, k, p, a) => call(k, () => mem.refund(n, k, p, a)),
    };
    const errors: unknown[] = [];
    const l = new RateLimiter({
      backend: sharded,
      policy: { rate: 100, per: '1s' },
      onBackendError: 'fail-closed',
      onError: (e) => errors.push(e),
    });
    // Open shard-1's breaker, then call keys of all three shards 20 times each.
    await expect(l.tryAcquire('v')).rejects.toBeInstanceOf(BackendUnavailableError);
    const healthy = ['u1', 'abc', 'w2', 'xyz'];
    for (let i = 0; i < 20; i++) {
      for (const k of healthy) {
        expect((await l.tryAcquire(k)).allowed).toBe(true);
        await expect(l.acquire(k)).resolves.toMatchObject({ waitedMs: 0 });
      }
      await expect(l.tryAcquire('v')).rejects.toBeInstanceOf(BackendUnavailableError);
      await expect(l.acquire('v')).rejects.toBeInstanceOf(BackendUnavailableError);
    }
    // shard-1 was asked once: its breaker stayed open. The healthy shards answered every call.
    expect(calls.get('shard-1')).toBe(1);
    expect((calls.get('shard-0') ?? 0) + (calls.get('shard-2') ?? 0)).toBe(20 * healthy.length * 2);
    expect(errors).toHaveLength(1);
    // shard-1 comes back: after the probe interval, its keys go to the backend again.
    down.clear();
    await vi.advanceTimersByTimeAsync(500);
    expect((await l.tryAcquire('v')).allowed).toBe(true);
  });

  test('queued callers are never lost: every one settles under each policy', async () => {
    for (const policy of ['fail-open', 'fail-closed', 'fallback'] as const) {
      const l = new RateLimiter({
        backend: broken(),
        policy: { rate: 10, per: '1s', capacity: 1 },
        onBackendError: policy,
      });
      const calls = Array.from({ length: 20 }, () => track(l.acquire('u')));
      await vi.advanceTimersByTimeAsync(3000);
      expect(calls.every((c) => c.at !== undefined)).toBe(true);
      const admitted = calls.filter((c) => c.value !== undefined).length;
      expect(admitted).toBe(policy === 'fail-closed' ? 0 : 20);
      if (policy === 'fallback') expect(calls[19]?.at).toBe(1900); // 10 per second, locally
    }
  });
});
