/**
 * One process of the fairness test: once connected it prints READY and, on GO (every process
 * ready: test/workers/barrier.ts), queues `calls` acquire() on one key at once and prints, as
 * JSON, the order they were admitted in and when (epoch ms).
 * argv: JSON { port, prefix, key, policy, calls }
 */
import { RateLimiter, RedisBackend } from '@tollgate/core';
import { Redis } from '../support/ioredis.ts';
import { ready } from './barrier.ts';

const cfg = JSON.parse(process.argv[2] as string) as {
  port: number;
  prefix: string;
  key: string;
  policy: { rate: number; per: string | number; capacity?: number };
  calls: number;
};
const client = new Redis(cfg.port, '127.0.0.1');
const limiter = new RateLimiter({ backend: new RedisBackend({ client, prefix: cfg.prefix }), policy: cfg.policy });
await limiter.tryAcquire(`${cfg.key}:warm`);
await ready();
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
