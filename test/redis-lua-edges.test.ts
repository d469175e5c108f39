/**
 * Lua edge cases of the bucket: values beyond 2^53 (deep debt), fractional costs, an old hash
 * bucket decided in a batch, TTL after a write; the single and batch scripts against bucket.ts on
 * fixed instants.
 */
import {
  type BucketState,
  type BatchStep,
  ScriptAt,
  decodeBucket,
  normalizePolicy,
  redisKey,
  reserve,
  runBatch,
  tryTake,
} from '@tollgate/core/internal';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { spec } from './support/batcher.ts';
import { type RedisServer, startRedis } from './support/redis.ts';

let srv: RedisServer;
let client: Redis;
beforeAll(async () => {
  srv = await startRedis();
  client = srv.client();
});
afterAll(() => srv.stop());

let replyKeys = 0;
/** Runs `steps` as batch script calls of at most 64 decisions; the flat decisions, in order. */
async function batched(steps: BatchStep[]): Promise<Array<Array<number | string>>> {
  const out: Array<Array<number | string>> = [];
  for (let i = 0; i < steps.length; i += 64) {
    const chunk = steps.slice(i, i + 64);
    const reply = await runBatch(client, chunk, `${chunk[0]?.key}{r}edge${replyKeys++}`);
    for (let j = 0; j < chunk.length; j++) out.push(reply.slice(4 * j, 4 * j + 4));
  }
  return out;
}

test('deep debt beyond 2^53 ms of wait: single script equals bucket.ts', async () => {
  const policy = normalizePolicy({ rate: 100, per: 1, capacity: 1e15 });
  const now = 1_700_000_000_000.5;
  const backend = new ScriptAt(
    client,
    (k, n) => redisKey('deep:', k, n),
    () => now,
  );
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
  const policy = normalizePolicy({ rate: 100, per: 1, capacity: 1e15 });
  const now = 1_700_000_000_000.5;
  const state: BucketState = { tokens: policy.capacity, updatedAt: now };
  const deep = spec('r', policy.ratePerMs, policy.capacity, 1e15);
  const replies = await batched(
    Array.from({ length: 1000 }, () => ({ key: 'bdeep:{k}:b', spec: deep, deadline: '', now: String(now) })),
  );
  for (let i = 0; i < replies.length; i++) {
    const want = reserve(state, policy, now, 1e15, -1);
    const r = replies[i] as Array<number | string>;
    expect([r[0], Number(r[1]), Number(r[2]), Number(r[3])], `step ${i}`).toEqual([
      1,
      want.remaining,
      want.waitMs,
      want.resetAfterMs,
    ]);
  }
  // Fractional costs, a cost above what remains.
  const p2 = normalizePolicy({ rate: 3.3, per: 700, capacity: 9.5 });
  const s2: BucketState = { tokens: p2.capacity, updatedAt: now };
  const costs = [0.1, 0.2, 0.30000000000000004, 7.77, 3.3, 1e-7, 2.5];
  const r2 = await batched(
    costs.map((cost) => ({
      key: 'bfrac:{k}:b',
      spec: spec('t', p2.ratePerMs, p2.capacity, cost),
      deadline: '',
      now: String(now),
    })),
  );
  costs.forEach((cost, i) => {
    const want = tryTake(s2, p2, now, cost);
    const r = r2[i] as Array<number | string>;
    expect(
      { allowed: r[0] === 1, remaining: Number(r[1]), retryAfterMs: Number(r[2]), resetAfterMs: Number(r[3]) },
      `cost ${cost}`,
    ).toEqual(want);
  });
});

test('an old hash bucket decided by the batch script, and the TTL after the write', async () => {
  const policy = normalizePolicy({ rate: 10, per: '1s', capacity: 20 });
  const now = Number((await client.time())[0]) * 1000;
  await client.hset('hb:{u}:b', 't', '3.5', 'u', String(now));
  await client.pexpire('hb:{u}:b', 60_000);
  const state: BucketState = { tokens: 3.5, updatedAt: now };
  const s = spec('t', policy.ratePerMs, policy.capacity, 1);
  const replies = await batched(
    Array.from({ length: 6 }, () => ({ key: 'hb:{u}:b', spec: s, deadline: '', now: String(now) })),
  );
  for (const r of replies) {
    const want = tryTake(state, policy, now, 1);
    expect({
      allowed: r[0] === 1,
      remaining: Number(r[1]),
      retryAfterMs: Number(r[2]),
      resetAfterMs: Number(r[3]),
    }).toEqual(want);
  }
  expect(await client.type('hb:{u}:b')).toBe('string');
  const pttl = await client.pttl('hb:{u}:b');
  expect(pttl).toBeGreaterThan(0);
  expect(pttl).toBeLessThanOrEqual(Math.ceil((20 - state.tokens) / policy.ratePerMs));
});
