/**
 * Lua edge cases of the 16-byte bucket: values beyond 2^53 (deep debt), fractional costs, an old
 * hash bucket decided in a batch, TTL after a write; the single and batch scripts against
 * bucket.ts on fixed instants.
 */
import { RedisBackend } from '@tollgate/core';
import { type BucketState, normalizePolicy, reserve, tryTake } from '@tollgate/core/internal';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { BUCKET_SHA, ScriptBatcher } from '../packages/core/src/backends/redis-batch.ts';
import { BUCKET_SCRIPT, decisionSpec, decodeBucket } from '../packages/core/src/backends/redis-script.ts';
import { type RedisServer, startRedis } from './support/redis.ts';

let srv: RedisServer;
let client: Redis;
beforeAll(async () => {
  srv = await startRedis();
  client = srv.client();
});
afterAll(() => srv.stop());

test('deep debt beyond 2^53 ms of wait: single script equals bucket.ts', async () => {
  const backend = new RedisBackend({ client, prefix: 'deep:' });
  const policy = normalizePolicy({ rate: 100, per: 1, capacity: 1e15 });
  const now = 1_700_000_000_000.5;
  backend.useClockForTests(() => now);
  const state: BucketState = { tokens: policy.capacity, updatedAt: now };
  for (let i = 0; i < 1000; i++) {
    const got = await backend.reserve('b', 'k', policy, 1e15, Number.POSITIVE_INFINITY);
    const want = reserve(state, policy, now, 1e15, -1);
    expect(got, `step ${i}`).toEqual(want);
  }
  expect(state.tokens).toBeLessThan(-9e17);
  expect(decodeBucket(await client.getBuffer('deep:{k}:b'))).toEqual(state);
});

test('batched deep-debt and fractional decisions equal bucket.ts', async () => {
  const c = srv.client();
  const sendOne = (key: string, a: readonly (string | undefined)[], byEval: boolean) =>
    (byEval ? c.eval(BUCKET_SCRIPT, 1, key, ...(a as string[])) : c.evalsha(BUCKET_SHA, 1, key, ...(a.filter((x) => x !== undefined) as string[]))) as Promise<Array<number | string>>;
  await c.script('LOAD', BUCKET_SCRIPT);
  const batcher = new ScriptBatcher(c, sendOne as never);
  const policy = normalizePolicy({ rate: 100, per: 1, capacity: 1e15 });
  const now = 1_700_000_000_000.5;
  const state: BucketState = { tokens: policy.capacity, updatedAt: now };
  const replies = await Promise.all(
    Array.from({ length: 1000 }, () => batcher.call('bdeep:{k}:b', [decisionSpec('r', policy.ratePerMs, policy.capacity, 1e15, -1), '', String(now)], 5000)),
  );
  for (let i = 0; i < replies.length; i++) {
    const want = reserve(state, policy, now, 1e15, -1);
    const r = replies[i] as Array<number | string>;
    expect([r[0], Number(r[1]), Number(r[2]), Number(r[3])], `step ${i}`).toEqual([1, want.remaining, want.waitMs, want.resetAfterMs]);
  }
  // fractional cost, cost > remaining
  const p2 = normalizePolicy({ rate: 3.3, per: 700, capacity: 9.5 });
  const s2: BucketState = { tokens: p2.capacity, updatedAt: now };
  const costs = [0.1, 0.2, 0.30000000000000004, 7.77, 3.3, 1e-7, 2.5];
  const r2 = await Promise.all(costs.map((cost) => batcher.call('bfrac:{k}:b', [decisionSpec('t', p2.ratePerMs, p2.capacity, cost, -1), '', String(now)], 5000)));
  costs.forEach((cost, i) => {
    const want = tryTake(s2, p2, now, cost);
    const r = r2[i] as Array<number | string>;
    expect({ allowed: r[0] === 1, remaining: Number(r[1]), retryAfterMs: Number(r[2]), resetAfterMs: Number(r[3]) }, `cost ${cost}`).toEqual(want);
  });
});

test('an old hash bucket decided by the batch script, and the TTL after the write', async () => {
  const c = srv.client();
  const sendOne = (key: string, a: readonly string[]) => c.evalsha(BUCKET_SHA, 1, key, ...a) as Promise<Array<number | string>>;
  await c.script('LOAD', BUCKET_SCRIPT);
  const batcher = new ScriptBatcher(c, sendOne as never);
  const policy = normalizePolicy({ rate: 10, per: '1s', capacity: 20 });
  const now = Number((await c.time())[0]) * 1000;
  await c.hset('hb:{u}:b', 't', '3.5', 'u', String(now));
  await c.pexpire('hb:{u}:b', 60_000);
  const state: BucketState = { tokens: 3.5, updatedAt: now };
  const spec = decisionSpec('t', policy.ratePerMs, policy.capacity, 1, -1);
  const replies = await Promise.all(Array.from({ length: 6 }, () => batcher.call('hb:{u}:b', [spec, '', String(now)], 5000)));
  for (const r of replies) {
    const want = tryTake(state, policy, now, 1);
    expect({ allowed: r[0] === 1, remaining: Number(r[1]), retryAfterMs: Number(r[2]), resetAfterMs: Number(r[3]) }).toEqual(want);
  }
  expect(await c.type('hb:{u}:b')).toBe('string');
  const pttl = await c.pttl('hb:{u}:b');
  expect(pttl).toBeGreaterThan(0);
  expect(pttl).toBeLessThanOrEqual(Math.ceil((20 - state.tokens) / policy.ratePerMs));
});
