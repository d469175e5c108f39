/**
 * One process of the fairness test: at `startAt` (epoch ms) it queues `calls` acquire() on one key
 * at once and prints, as JSON, the order they were admitted in and when (epoch ms).
 * argv: JSON { port, prefix, key, policy, startAt, calls }
 */
import { RateLimiter, RedisBackend } from '@tollgate/core';
import { Redis } from '../support/ioredis.ts';

const cfg = JSON.parse(process.argv[2] as string) as {
  port: number;
  prefix: string;
  key: string;
  policy: { rate: number; per: string | number; capacity?: number };
  startAt: number;
  calls: number;
};
const client = new Redis(cfg.port, '127.0.0.1');
const limiter = new RateLimiter({ backend: new RedisBackend({ client, prefix: cfg.prefix }), policy: cfg.policy });
await limiter.tryAcquire(`${cfg.key}:warm`);
await new Promise((r) => setTimeout(r, Math.max(0, cfg.startAt - Date.now())));
const order: number[] = [];
const at: number[] = [];
await Promise.all(
  Array.from({ length: cfg.calls }, (_, i) =>
    limiter.acquire(cfg.key).then(() => {
      order.push(i);
      at.push(Date.now());
    }),
  ),
);
console.log(JSON.stringify({ order, at }));
client.disconnect();
