/**
 * One process of the SharedLimiter multi-process tests: at `startAt` (epoch ms) it queues `calls`
 * acquire() on each of its keys at once, stops waiting at `stopAt`, and prints, as JSON, when
 * each key's calls were admitted (epoch ms).
 * argv: JSON { port, prefix, keys, weights, policy, startAt, stopAt, calls, light? }
 */
import { RedisBackend, SharedLimiter } from '@tollgate/core';
import { Redis } from 'ioredis';

const cfg = JSON.parse(process.argv[2] as string) as {
  port: number;
  prefix: string;
  keys: string[];
  weights: Record<string, number>;
  policy: { rate: number; per: string | number; capacity?: number };
  startAt: number;
  stopAt: number;
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
await new Promise((r) => setTimeout(r, Math.max(0, cfg.startAt - Date.now())));
const ac = new AbortController();
const at: Record<string, number[]> = {};
const pending: Promise<unknown>[] = [];
for (const key of cfg.keys) {
  const list: number[] = [];
  at[key] = list;
  for (let i = 0; i < cfg.calls; i++) {
    pending.push(limiter.acquire(key, { signal: ac.signal }).then(() => list.push(Date.now()), () => undefined));
  }
}
const lightWaits: number[] = [];
if (cfg.light !== undefined) {
  const { key, everyMs } = cfg.light;
  await new Promise((r) => setTimeout(r, 1000));
  while (Date.now() + everyMs < cfg.stopAt) {
    const g = await limiter.acquire(key);
    lightWaits.push(g.waitedMs);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
await new Promise((r) => setTimeout(r, Math.max(0, cfg.stopAt - Date.now())));
ac.abort();
await Promise.all(pending);
console.log(JSON.stringify({ at, lightWaits }));
client.disconnect();
