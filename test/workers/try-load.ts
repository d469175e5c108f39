/**
 * One process of the load test: `concurrency` loops call tryAcquire on one key from `startAt`
 * (epoch ms) for `durationMs`, and print { admitted, rejected, errors, first, last, lastStart } as JSON.
 * argv: JSON { port, backend: 'redis'|'hybrid', cluster?: number[], prefix, key, policy, startAt, durationMs, concurrency }
 */
import { HybridBackend, RateLimiter, RedisBackend } from '@tollgate/core';
import { Cluster, Redis } from 'ioredis';

const cfg = JSON.parse(process.argv[2] as string) as {
  port: number;
  cluster?: number[];
  backend: 'redis' | 'hybrid';
  prefix: string;
  key: string;
  policy: { rate: number; per: string | number; capacity?: number };
  startAt: number;
  durationMs: number;
  concurrency: number;
};

const client = cfg.cluster
  ? new Cluster(cfg.cluster.map((port) => ({ host: '127.0.0.1', port })))
  : new Redis(cfg.port, '127.0.0.1');
const backend =
  cfg.backend === 'hybrid'
    ? new HybridBackend({ client, prefix: cfg.prefix })
    : new RedisBackend({ client, prefix: cfg.prefix });
const limiter = new RateLimiter({ backend, policy: cfg.policy, onBackendError: 'fail-closed' });

// Warm the connection (and the script cache) on another key before the start.
await limiter.tryAcquire(`${cfg.key}:warm`);
let admitted = 0;
let rejected = 0;
let errors = 0;
let first = Number.POSITIVE_INFINITY;
let last = 0;
const end = cfg.startAt + cfg.durationMs;
await new Promise((r) => setTimeout(r, Math.max(0, cfg.startAt - Date.now())));

let lastStart = 0;
async function loop(): Promise<void> {
  while (Date.now() < end) {
    const t = Date.now();
    if (t < first) first = t;
    lastStart = Math.max(lastStart, t);
    try {
      const d = await limiter.tryAcquire(cfg.key);
      if (d.allowed) admitted++;
      else {
        rejected++;
        // A client that honours retryAfterMs, capped so demand stays continuous. (Looping on
        // hybrid's synchronous local rejections would starve this process's Redis replies.)
        await new Promise((r) => setTimeout(r, Math.min(d.retryAfterMs, 5)));
      }
    } catch {
      errors++;
    }
    last = Math.max(last, Date.now());
  }
}
await Promise.all(Array.from({ length: cfg.concurrency }, loop));
console.log(JSON.stringify({ admitted, rejected, errors, first, last, lastStart }));
client.disconnect();
