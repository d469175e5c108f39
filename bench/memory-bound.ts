/**
 * Memory held per user, and that it stays bounded with a million distinct users.
 *
 *   node --expose-gc --import tsx --conditions=tollgate-source bench/memory-bound.ts [users]
 *
 * 1. Bytes per live key: `users` buckets all still refilling (a frozen clock), heap held ÷ users,
 *    for the memory strategy and the hybrid's local state (Redis runs on its own server).
 * 2. Bounded: `users` distinct users, one call each, 10 new users per ms of a fake clock
 *    (a bucket is live for 100 ms): the most buckets held at once, and the heap at the end.
 */
import { HybridBackend, MemoryBackend, RateLimiter } from '@tollgate/core';
import { startRedis } from '../test/support/redis.ts';

const users = Number(process.argv[2] ?? 1_000_000);

function heap(): number {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('run with node --expose-gc');
  for (let i = 0; i < 4; i++) gc();
  return process.memoryUsage().heapUsed;
}
const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MB`;

const srv = await startRedis();
try {
  // 1. Bytes per live key (key strings included: the map holds them).
  {
    const before = heap();
    const now = 0;
    const backend = new MemoryBackend({ clock: () => now });
    const limiter = new RateLimiter({ backend, policy: { rate: 10, per: '1h' } });
    for (let i = 0; i < users; i++) await limiter.tryAcquire(`user-${i}`);
    const held = heap() - before;
    console.log(`memory: ${users} live keys hold ${mb(held)}: ${(held / users).toFixed(0)} bytes per key`);
  }
  const hybridLive = Math.min(users, 200_000);
  {
    const client = srv.client({ enableAutoPipelining: true });
    await client.ping();
    const before = heap();
    const backend = new HybridBackend({ client, prefix: 'live:', clock: () => 0 });
    const limiter = new RateLimiter({ backend, policy: { rate: 10, per: '1h' } });
    for (let i = 0; i < hybridLive; i += 1000) {
      await Promise.all(Array.from({ length: 1000 }, (_, j) => limiter.tryAcquire(`user-${i + j}`)));
    }
    const held = heap() - before;
    console.log(
      `hybrid: ${hybridLive} live keys hold ${mb(held)} in this process: ${(held / hybridLive).toFixed(0)} bytes per key`,
    );
    await client.flushall();
  }
  // 2. Bounded with `users` distinct users.
  {
    let now = 0;
    const backend = new MemoryBackend({ clock: () => now });
    const limiter = new RateLimiter({ backend, policy: { rate: 10, per: '1s' } });
    let peak = 0;
    const t0 = performance.now();
    for (let i = 0; i < users; i++) {
      now += 0.1;
      await limiter.tryAcquire(`user-${i}`);
      if (backend.size > peak) peak = backend.size;
    }
    console.log(
      `memory: ${users} distinct users in ${((performance.now() - t0) / 1000).toFixed(1)} s: at most ${peak} buckets held (1,000 live), heap ${mb(heap())} at the end`,
    );
  }
  {
    let now = 0;
    const client = srv.client({ enableAutoPipelining: true });
    const backend = new HybridBackend({ client, prefix: 'many:', clock: () => now });
    const limiter = new RateLimiter({ backend, policy: { rate: 10, per: '1s' } });
    let peak = 0;
    const t0 = performance.now();
    for (let i = 0; i < users; i += 100) {
      now += 10;
      await Promise.all(Array.from({ length: 100 }, (_, j) => limiter.tryAcquire(`user-${i + j}`)));
      if (backend.size > peak) peak = backend.size;
    }
    const dbsize = await client.dbsize();
    console.log(
      `hybrid: ${users} distinct users in ${((performance.now() - t0) / 1000).toFixed(1)} s: at most ${peak} local entries held (~2,000 live), heap ${mb(heap())} at the end; ${dbsize} keys left in Redis (expire within 100 ms)`,
    );
  }
} finally {
  await srv.stop();
}
