/**
 * Hostile input from tenants and careless callers: odd keys never share a bucket, bad costs and
 * policies get a typed error naming the problem, and none of it corrupts a bucket or hangs.
 */
import {
  AbortedError,
  CostExceedsCapacityError,
  InvalidArgumentError,
  InvalidOptionsError,
  MemoryBackend,
  RateLimiter,
  RedisBackend,
} from '@tollgate/core';
import { encodeKey, redisKey } from '@tollgate/core/internal';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { failOnUnhandledRejections, sleep } from './support/faults.ts';
import { type RedisServer, startRedis } from './support/redis.ts';

failOnUnhandledRejections();

let srv: RedisServer;
beforeAll(async () => {
  srv = await startRedis();
});
afterAll(() => srv.stop());

/** Pairs of (key, bucket name) crafted to collide under a naive key scheme. */
const CRAFTED: [[string, string], [string, string]][] = [
  [
    ['a}:x', 'y'],
    ['a', 'x}:y'],
  ],
  [
    ['a:b', 'c'],
    ['a', 'b:c'],
  ],
  [
    ['%7B', 'n'],
    ['{', 'n'],
  ],
  [
    ['%7D', 'n'],
    ['}', 'n'],
  ],
  [
    ['%25', 'n'],
    ['%', 'n'],
  ],
  [
    ['a%7Db', 'n'],
    ['a}b', 'n'],
  ],
  [
    ['{a}', 'n'],
    ['a', 'n'],
  ],
  [
    ['', '}:x'],
    ['}', 'x'],
  ],
  [
    ['\uD800', 'n'],
    ['\uFFFD', 'n'],
  ], // a lone surrogate: UTF-8 would make it U+FFFD
  [
    ['\uD800', 'n'],
    ['\uDC00', 'n'],
  ],
  [
    ['%uD800', 'n'],
    ['\uD800', 'n'],
  ],
  [
    ['u', 'n\uDFFF'],
    ['u', 'n\uFFFD'],
  ],
  [
    ['x'.repeat(10_240), 'n'],
    [`${'x'.repeat(10_239)}y`, 'n'],
  ],
  [
    ['user 1', 'n'],
    ['user\u00a01', 'n'],
  ],
  [
    ['é', 'n'],
    ['e\u0301', 'n'],
  ], // the same text, two normal forms: two tenants' ids
];

let pairs = 0;

describe('no two different (key, bucket name) pairs share a Redis key', () => {
  test.each(
    CRAFTED.map(([a, b]) => [JSON.stringify(a), JSON.stringify(b), a, b] as const),
  )('%s and %s: tokens taken from one never move the other (real Redis)', async (_x, _y, [keyA, nameA], [
    keyB,
    nameB,
  ]) => {
    const client = srv.client();
    const prefix = `crafted${++pairs}:`;
    const backend = new RedisBackend({ client, prefix });
    const policy = { rate: 1, per: '1h', capacity: 3 };
    const a = new RateLimiter({ backend, policy, name: nameA });
    const b = new RateLimiter({ backend, policy, name: nameB });
    expect(Buffer.from(redisKey(prefix, keyA, nameA))).not.toEqual(Buffer.from(redisKey(prefix, keyB, nameB)));
    // Empty A; B still holds all 3 tokens; empty B; A is still empty (not refilled by B).
    expect((await a.tryAcquire(keyA, { cost: 3 })).allowed).toBe(true);
    expect((await a.tryAcquire(keyA)).allowed).toBe(false);
    const db = await b.tryAcquire(keyB, { cost: 3 });
    expect(db).toMatchObject({ allowed: true, remaining: 0 });
    expect((await a.tryAcquire(keyA)).allowed).toBe(false);
    await a.refund(keyA, 3);
    expect((await b.tryAcquire(keyB)).allowed).toBe(false);
    expect((await a.tryAcquire(keyA, { cost: 3 })).allowed).toBe(true);
    client.disconnect();
  });

  test('20,000 random (key, name) pairs over a hostile alphabet: distinct pairs, distinct UTF-8 Redis keys', () => {
    const alphabet = [
      '{',
      '}',
      '%',
      '7',
      'B',
      'D',
      'u',
      ':',
      'a',
      ' ',
      '\uD800',
      '\uDC00',
      '\uFFFD',
      '\uD83D\uDE00',
      '2',
      '5',
    ];
    let seed = 42;
    const rand = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x80000000;
    };
    const word = () =>
      Array.from({ length: Math.floor(rand() * 6) }, () => alphabet[Math.floor(rand() * alphabet.length)]).join('');
    const seen = new Map<string, string>();
    for (let i = 0; i < 20_000; i++) {
      const key = word();
      const name = word();
      const pair = JSON.stringify([key, name]);
      const bytes = Buffer.from(redisKey('p:', key, name), 'utf8').toString('hex');
      const before = seen.get(bytes);
      if (before !== undefined) expect(before).toBe(pair);
      seen.set(bytes, pair);
    }
    expect(seen.size).toBeGreaterThan(1500);
  });

  test('the encoded key never holds a brace, so every bucket of one user shares a Cluster slot', () => {
    for (const k of ['{', '}', '{a}', 'a}{b', '%7B{', '\uD800}']) expect(encodeKey(k)).not.toMatch(/[{}]/);
    expect(redisKey('tollgate:', 'a}b', 'requests')).toBe('tollgate:{a%7Db}:requests');
    expect(redisKey('tollgate:', 'user-42', 'requests')).toBe('tollgate:{user-42}:requests');
  });

  test('a prefix with a brace or a lone surrogate is refused at construction', () => {
    const client = srv.client();
    expect(() => new RedisBackend({ client, prefix: 'a{' })).toThrow(InvalidOptionsError);
    expect(() => new RedisBackend({ client, prefix: 'a\uD800' })).toThrow(/prefix must not contain/);
    client.disconnect();
  });
});

describe('bad costs, amounts and waits: a typed error, the bucket untouched', () => {
  test.each([
    Number.NaN,
    -1,
    0,
    -0,
    Number.POSITIVE_INFINITY,
    Number.NEGATIVE_INFINITY,
    '2',
    null,
    10n,
  ])('cost %s', async (cost) => {
    const client = srv.client();
    const l = new RateLimiter({
      backend: new RedisBackend({ client, prefix: 'badcost:' }),
      policy: { rate: 1, per: '1h', capacity: 5 },
    });
    await expect(l.tryAcquire('k', { cost: cost as number })).rejects.toThrow(InvalidArgumentError);
    await expect(l.acquire('k', { cost: cost as number })).rejects.toThrow(/cost must be a finite number > 0/);
    // Nothing was taken: all 5 tokens are there.
    expect(await l.tryAcquire('k', { cost: 5 })).toMatchObject({ allowed: true, remaining: 0 });
    await l.refund('k', 5);
    client.disconnect();
  });

  test('a cost above capacity fails at once with CostExceedsCapacityError carrying the numbers', async () => {
    const l = new RateLimiter({ backend: new MemoryBackend(), policy: { rate: 1, per: '1h', capacity: 5 } });
    const err = (await l.acquire('k', { cost: 5.5 }).catch((e: unknown) => e)) as CostExceedsCapacityError;
    expect(err).toBeInstanceOf(CostExceedsCapacityError);
    expect(err).toMatchObject({ code: 'ERR_TOLLGATE_COST_EXCEEDS_CAPACITY', cost: 5.5, capacity: 5 });
  });

  test.each([Number.NaN, -1, Number.POSITIVE_INFINITY])('refund amount %s', async (amount) => {
    const l = new RateLimiter({ backend: new MemoryBackend(), policy: { rate: 1, per: '1h' } });
    await expect(l.refund('k', amount)).rejects.toThrow(InvalidArgumentError);
  });

  test.each([Number.NaN, -1, '5'])('maxWaitMs %s', async (maxWaitMs) => {
    const l = new RateLimiter({ backend: new MemoryBackend(), policy: { rate: 1, per: '1h' } });
    await expect(l.acquire('k', { maxWaitMs: maxWaitMs as number })).rejects.toThrow(/maxWaitMs must be/);
  });

  test.each([undefined, null, 42, {}])('key %s', async (key) => {
    const l = new RateLimiter({ backend: new MemoryBackend(), policy: { rate: 1, per: '1h' } });
    await expect(l.tryAcquire(key as unknown as string)).rejects.toThrow(/key must be a string/);
  });
});

describe('absurd policies', () => {
  test.each([
    [{ rate: 0 }, /policy\.rate must be a finite number > 0/],
    [{ rate: -5 }, /policy\.rate/],
    [{ rate: Number.NaN }, /policy\.rate/],
    [{ rate: Number.POSITIVE_INFINITY }, /policy\.rate/],
    [{ rate: 1e16 }, /policy\.rate .*<= 1000000000000000/],
    [{ rate: 1, per: 0 }, /policy\.per/],
    [{ rate: 1, per: '0s' }, /policy\.per/],
    [{ rate: 1, per: 'soon' }, /policy\.per/],
    [{ rate: 1, capacity: 0 }, /policy\.capacity/],
    [{ rate: 1, capacity: Number.POSITIVE_INFINITY }, /policy\.capacity/],
    [{ rate: 1, per: '1d', capacity: 1e12 }, /must refill within 10000000000000 ms/],
    [{ rate: 1, burst: 5 }, /unknown option\(s\) burst/],
  ])('%j is refused with InvalidOptionsError', (policy, message) => {
    const make = () => new RateLimiter({ backend: new MemoryBackend(), policy: policy as never });
    expect(make).toThrow(InvalidOptionsError);
    expect(make).toThrow(message);
  });

  test('a huge rate works: 1e15 per ms admits a cost of 1e15 again 1 ms later', async () => {
    const client = srv.client();
    const l = new RateLimiter({
      backend: new RedisBackend({ client, prefix: 'huge:' }),
      policy: { rate: 1e15, per: 1 },
    });
    expect((await l.tryAcquire('k', { cost: 1e15 })).allowed).toBe(true);
    await sleep(2);
    expect((await l.tryAcquire('k', { cost: 1e15 })).allowed).toBe(true);
    client.disconnect();
  });

  test('waits and deadlines beyond 24.8 days (setTimeout’s limit) are kept, not cut to 1 ms', async () => {
    // 1 token a day, 100 of capacity: taking 100 more after emptying it is a 100-day wait.
    const l = new RateLimiter({ backend: new MemoryBackend(), policy: { rate: 1, per: '1d', capacity: 100 } });
    await l.acquire('slow', { cost: 100 });
    const ac = new AbortController();
    const head = l.acquire('slow', { cost: 100, signal: ac.signal }).catch((e: unknown) => e);
    // Another key: its head waits a day, and the caller behind it has a 30-day deadline.
    await l.acquire('slow2', { cost: 100 });
    const ac2 = new AbortController();
    const head2 = l.acquire('slow2', { signal: ac2.signal }).catch((e: unknown) => e);
    const behind = l.acquire('slow2', { maxWaitMs: 30 * 86_400_000, signal: ac2.signal }).catch((e: unknown) => e);
    await sleep(50);
    expect(l.queued('slow')).toBe(1);
    expect(l.queued('slow2')).toBe(2);
    ac.abort();
    ac2.abort();
    expect(await head).toBeInstanceOf(AbortedError);
    expect(await head2).toBeInstanceOf(AbortedError);
    expect(await behind).toBeInstanceOf(AbortedError);
  });
});
