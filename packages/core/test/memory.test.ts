/**
 * MemoryBackend's slots on a fake clock: a key's bucket is never read as another's (after sweeps
 * that free and reuse slots, across names, with the last-key shortcut), and the breaker ignores
 * the failure of a call begun before it last changed.
 */
import { type Backend, type Decision, MemoryBackend, type Policy, RateLimiter } from '@tollgate/core';
import { expect, test } from 'vitest';

const policy: Policy = { rate: 1, perMs: 100, capacity: 2, ratePerMs: 0.01 };

test('a slot freed by a sweep and reused by another key is not read as the old key', () => {
  let now = 0;
  const m = new MemoryBackend({ clock: () => now });
  expect(m.tryTake('n', 'a', policy, 2).allowed).toBe(true); // a: empty, cached as the last key
  now += 1000; // a is full again
  expect(m.prune()).toBe(1);
  expect(m.tryTake('n', 'b', policy, 2).allowed).toBe(true); // b takes a's old slot, empty
  expect(m.tryTake('n', 'b', policy, 1).allowed).toBe(false);
  const a: Decision = m.tryTake('n', 'a', policy, 2); // a is full: a missing bucket
  expect(a).toEqual({ allowed: true, remaining: 0, retryAfterMs: 0, resetAfterMs: 200 });
  expect(m.tryTake('n', 'b', policy, 1).allowed).toBe(false);
  m.clear();
  expect(m.tryTake('n', 'b', policy, 2).allowed).toBe(true);
});

test('the same key under two names is two buckets', () => {
  const m = new MemoryBackend({ clock: () => 0 });
  expect(m.tryTake('x', 'k', policy, 2).allowed).toBe(true);
  expect(m.tryTake('x', 'k', policy, 1).allowed).toBe(false);
  expect(m.tryTake('y', 'k', policy, 2).allowed).toBe(true);
  expect(m.tryTake('x', 'k', policy, 1).retryAfterMs).toBe(100);
  expect(m.tryTake('y', 'k', policy, 1).retryAfterMs).toBe(100);
});

test('a repeated rejection is answered with one frozen Decision, never a stale one', async () => {
  let now = 0;
  const limiter = new RateLimiter({
    backend: new MemoryBackend({ clock: () => now }),
    policy: { rate: 1, per: '1s', capacity: 2 },
  });
  await limiter.tryAcquire('a', { cost: 2 });
  const first = await limiter.tryAcquire('a');
  expect(first).toEqual({ allowed: false, remaining: 0, retryAfterMs: 1000, resetAfterMs: 2000 });
  expect(Object.isFrozen(first)).toBe(true);
  expect(() => {
    (first as { remaining: number }).remaining = 5;
  }).toThrow(TypeError);
  expect(await limiter.tryAcquire('a')).toBe(first); // same instant, same answer: shared
  now = 400.5; // time moved: the answer moves with it
  expect(await limiter.tryAcquire('a')).toEqual({
    allowed: false,
    remaining: 0,
    retryAfterMs: 600,
    resetAfterMs: 1600,
  });
  expect(await limiter.tryAcquire('a', { cost: 2 })).toEqual({
    allowed: false,
    remaining: 0,
    retryAfterMs: 1600,
    resetAfterMs: 1600,
  });
  // Another key's rejection is its own answer.
  await limiter.tryAcquire('b', { cost: 2 });
  expect(await limiter.tryAcquire('b')).toEqual({
    allowed: false,
    remaining: 0,
    retryAfterMs: 1000,
    resetAfterMs: 2000,
  });
  now = 1000.5;
  expect(await limiter.tryAcquire('a')).toEqual({ allowed: true, remaining: 0, retryAfterMs: 0, resetAfterMs: 2000 });
  expect(await limiter.tryAcquire('a')).toEqual({
    allowed: false,
    remaining: 0,
    retryAfterMs: 1000,
    resetAfterMs: 2000,
  });
});

test('a failure of a call begun before the backend came back does not open the breaker again', async () => {
  const mem = new MemoryBackend();
  const late: Array<() => void> = [];
  // What each call to the backend does, in order.
  const script: Array<'ok' | 'fail' | 'late'> = ['late', 'fail', 'ok', 'ok'];
  let calls = 0;
  const backend: Backend = {
    kind: 'scripted',
    tryTake: (...a) => {
      const what = script[calls++] ?? 'ok';
      if (what === 'fail') return Promise.reject(new Error('down'));
      if (what === 'late') return new Promise((_, reject) => late.push(() => reject(new Error('late'))));
      return Promise.resolve(mem.tryTake(...a));
    },
    reserve: (...a) => mem.reserve(...a),
    refund: () => undefined,
  };
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const l = new RateLimiter({ backend, policy: { rate: 100 }, onBackendError: 'fail-open', probeIntervalMs: 1 });
  const a = l.tryAcquire('u'); // 1: in flight, fails late
  await l.tryAcquire('u'); // 2: fails, the breaker opens
  await sleep(5);
  await l.tryAcquire('u'); // 3: the probe succeeds, the breaker closes
  late[0]?.(); // 1 fails now: it began before the breaker changed, so it is stale
  await a;
  await l.tryAcquire('u'); // 4: goes to the backend (the breaker is closed)
  expect(calls).toBe(4);
});
