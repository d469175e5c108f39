/**
 * One process of the SharedLimiter multi-process tests: once connected it prints READY and, on GO
 * (every process ready: test/workers/barrier.ts), queues `calls` acquire() on each of its keys at
 * once, stops waiting `ms` later, and prints, as JSON, when it got GO and when each key's calls
 * were admitted (epoch ms).
 * argv: JSON { port, prefix, keys, weights, policy, ms, calls, light? }
 */
import { RedisBackend, SharedLimiter } from '@tollgate/core';
import { Redis } from 'ioredis';
import { ready } from './barrier.ts';

const cfg = JSON.parse(process.argv[2] as string) as {
  port: number;
  prefix: string;
  keys: string[];
  weights: Record<string, number>;
  policy: { rate: number; per: string | number; capacity?: number };
  ms: number;
  calls: number;
  /** A key calling once every `everyMs` (not backlogged): its waits are printed. */
  light?: { key: string; everyMs: number };
};
const client = new Redis(cfg.port, '127.0.0.1');
const limiter = new SharedLimiter({
  backend: new RedisBackend({ client, prefix: cfg.prefix }),
  policy: cfg.policy,
  weight: (k) => cfg.weights[k] ?? 1,
});
await limiter.tryAcquire('warm', { pool: 'warm' });
const go = await ready();
const stopAt = go + cfg.ms;
const ac = new AbortController();
const at: Record<string, number[]> = {};
const pending: Promise<unknown>[] = [];
for (const key of cfg.keys) {
  const list: number[] = [];
  at[key] = list;
  for (let i = 0; i < cfg.calls; i++) {
    pending.push(
      limiter.acquire(key, { signal: ac.signal }).then(
        () => list.push(Date.now()),
        () => undefined,
      ),
    );
  }
}
const lightWaits: number[] = [];
if (cfg.light !== undefined) {
  const { key, everyMs } = cfg.light;
  await new Promise((r) => setTimeout(r, 1000));
  while (Date.now() + everyMs < stopAt) {
    const g = await limiter.acquire(key);
    lightWaits.push(g.waitedMs);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
await new Promise((r) => setTimeout(r, Math.max(0, stopAt - Date.now())));
ac.abort();
await Promise.all(pending);
console.log(JSON.stringify({ go, at, lightWaits }));
client.disconnect();
