/**
 * A million distinct users leave memory bounded: idle buckets that have refilled are reclaimed,
 * in the memory strategy and in the hybrid's local buckets. Sizes on a fake clock, no timing.
 */
import { HybridBackend, MemoryBackend, RateLimiter } from '@tollgate/core';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { failOnUnhandledRejections } from './support/faults.ts';
import { type RedisServer, startRedis } from './support/redis.ts';

failOnUnhandledRejections();

let srv: RedisServer;
beforeAll(async () => {
  srv = await startRedis();
});
afterAll(() => srv.stop());

test('memory: 1,000,000 users, one call each, 10 new users per ms: at most ~2 × the live buckets are held', async () => {
  let now = 0;
  const backend = new MemoryBackend({ clock: () => now });
  // A bucket refills 1 token in 100 ms: a user is "live" for 100 ms after its call.
  const limiter = new RateLimiter({ backend, policy: { rate: 10, per: '1s' } });
  const live = 100 * 10; // users in the last 100 ms
  let peak = 0;
  for (let i = 0; i < 1_000_000; i++) {
    now += 0.1;
    const d = await limiter.tryAcquire(`user-${i}`);
    if (!d.allowed) throw new Error(`user-${i} refused`);
    if (backend.size > peak) peak = backend.size;
  }
  expect(peak).toBeLessThanOrEqual(2 * live + 1024);
  now += 1000;
  backend.prune();
  expect(backend.size).toBe(0);
}, 60_000);

test('hybrid: 50,000 users through real Redis hold at most ~2 × the live local buckets; none once idle', async () => {
  let now = 0;
  const client = srv.client({ enableAutoPipelining: true });
  const backend = new HybridBackend({ client, prefix: 'mem:', clock: () => now });
  const limiter = new RateLimiter({ backend, policy: { rate: 10, per: '1s' } });
  let peak = 0;
  const batch = 500;
  for (let i = 0; i < 50_000; i += batch) {
    now += 50; // 500 new users every 50 ms of local time: ~1,000 live at once
    const ds = await Promise.all(Array.from({ length: batch }, (_, j) => limiter.tryAcquire(`user-${i + j}`)));
    if (ds.some((d) => !d.allowed)) throw new Error('a new user was refused');
    if (backend.size > peak) peak = backend.size;
  }
  // Local buckets and what Redis said about each, together.
  expect(peak).toBeLessThanOrEqual(2 * (2 * 1000) + 2 * 1024);
  now += 1000;
  backend.prune();
  expect(backend.size).toBe(0);
}, 60_000);
