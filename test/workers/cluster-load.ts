/**
 * One process of the cluster load test: `concurrency` loops call tryAcquire on one key of a Redis
 * Cluster from `startAt` (epoch ms) for `durationMs`, and print
 * { admitted, rejected, errors, first, lastStart, last, errorSample } as JSON
 * (epoch ms: the first call's start, the last call's start, the last call's end).
 * A rejected loop sleeps min(retryAfterMs, 5) ms, as a real caller would (never spinning on a
 * hybrid's local rejections, which would starve this process's Redis replies); 100 loops still
 * ask every few ms, so a token is taken within ms of appearing.
 * argv: JSON { cluster: number[], backend: 'redis'|'hybrid', prefix, key, policy, startAt, durationMs, concurrency }
 */
import { HybridBackend, RateLimiter, RedisBackend } from '@tollgate/core';
import { Cluster } from 'ioredis';

const cfg = JSON.parse(process.argv[2] as string) as {
  cluster: number[];
  backend: 'redis' | 'hybrid';
  prefix: string;
  key: string;
  policy: { rate: number; per: string | number; capacity?: number };
  startAt: number;
  durationMs: number;
  concurrency: number;
};

const client = new Cluster(
  cfg.cluster.map((port) => ({ host: '127.0.0.1', port })),
  { enableAutoPipelining: true },
);
client.on('error', () => {});
const options = { client, prefix: cfg.prefix, timeoutMs: 2000 };
const backend = cfg.backend === 'hybrid' ? new HybridBackend(options) : new RedisBackend(options);
const limiter = new RateLimiter({ backend, policy: cfg.policy, onBackendError: 'fail-closed' });

// Warm the connections (and the script cache) on another key before the start.
await limiter.tryAcquire(`${cfg.key}:warm`);
let admitted = 0;
let rejected = 0;
let errors = 0;
let errorSample = '';
let first = Number.POSITIVE_INFINITY;
let last = 0;
let lastStart = 0;
const end = cfg.startAt + cfg.durationMs;
await new Promise((r) => setTimeout(r, Math.max(0, cfg.startAt - Date.now())));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function loop(): Promise<void> {
  while (Date.now() < end) {
    const t = Date.now();
    if (t < first) first = t;
    if (t > lastStart) lastStart = t;
    try {
      const d = await limiter.tryAcquire(cfg.key);
      if (d.allowed) admitted++;
      else {
        rejected++;
        await sleep(Math.min(d.retryAfterMs, 5));
      }
    } catch (e) {
      errors++;
      errorSample ||= String(e);
    }
    last = Math.max(last, Date.now());
  }
}
await Promise.all(Array.from({ length: cfg.concurrency }, loop));
console.log(JSON.stringify({ admitted, rejected, errors, first, lastStart, last, errorSample }));
client.disconnect();
