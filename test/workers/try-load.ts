/**
 * One process of the load tests: once connected it prints READY and, on GO (every process ready:
 * test/workers/barrier.ts), `concurrency` loops call tryAcquire on one key (of a standalone Redis,
 * or of a Redis Cluster when `cluster` lists its ports) for `durationMs`, then it prints
 * { admitted, rejected, errors, first, lastStart, last, errorSample } as JSON (epoch ms: the first
 * call's start, the last call's start, the last call's end).
 * A rejected loop sleeps min(retryAfterMs, 5) ms, as a real caller would (never spinning on a
 * hybrid's local rejections, which would starve this process's Redis replies); 100 loops still
 * ask every few ms, so a token is taken within ms of appearing.
 * argv: JSON { port?, cluster?: number[], backend: 'redis'|'hybrid', prefix, key, policy,
 * durationMs, concurrency, timeoutMs? }
 */
import { HybridBackend, type PolicyInput, RateLimiter, RedisBackend } from '@tollgate/core';
import { Cluster, Redis } from '../support/ioredis.ts';
import { ready } from './barrier.ts';

const cfg = JSON.parse(process.argv[2] as string) as {
  port?: number;
  cluster?: number[];
  backend: 'redis' | 'hybrid';
  prefix: string;
  key: string;
  policy: PolicyInput;
  durationMs: number;
  concurrency: number;
  timeoutMs?: number;
};

const client = cfg.cluster
  ? new Cluster(
      cfg.cluster.map((port) => ({ host: '127.0.0.1', port })),
      { enableAutoPipelining: true },
    )
  : new Redis(cfg.port as number, '127.0.0.1');
client.on('error', () => {});
const options = { client, prefix: cfg.prefix, ...(cfg.timeoutMs === undefined ? {} : { timeoutMs: cfg.timeoutMs }) };
const backend = cfg.backend === 'hybrid' ? new HybridBackend(options) : new RedisBackend(options);
const limiter = new RateLimiter({ backend, policy: cfg.policy, onBackendError: 'fail-closed' });

// Warm the connections (and the script cache) on another key before the start.
await limiter.tryAcquire(`${cfg.key}:warm`);
let admitted = 0;
let rejected = 0;
let errors = 0;
let errorSample = '';
let first = Number.POSITIVE_INFINITY;
let lastStart = 0;
let last = 0;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const end = (await ready()) + cfg.durationMs;

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
