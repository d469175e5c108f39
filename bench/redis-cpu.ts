/**
 * Redis CPU per decision: what one Redis shard spends on each decision, from `INFO commandstats`
 * (usec of EVALSHA and EVAL, which include the script's own commands, over the decisions made).
 * Redis is single-threaded, so this is what bounds one shard's decisions per second.
 */
import { RateLimiter, RedisBackend } from '@tollgate/core';
import type { Redis } from 'ioredis';
import { RateLimiterRedis } from 'rate-limiter-flexible';
import { inFlight, median } from './harness.js';
import type { RedisCtx } from './scenarios.js';

export interface CpuRow {
  name: string;
  /** Median over the rounds: Redis µs per decision. */
  usPerDecision: number;
  /** Decisions per script call (1 for a call per decision). */
  perScriptCall: number;
}

const BIG = { rate: 1000, per: '1h', capacity: 1e9 } as const;

async function scriptStats(admin: Redis): Promise<{ usec: number; calls: number }> {
  const info = await admin.info('commandstats');
  let usec = 0;
  let calls = 0;
  for (const m of info.matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+),usec=(\d+)/g)) {
    calls += Number(m[1]);
    usec += Number(m[2]);
  }
  return { usec, calls };
}

/** redisCpu measures each contender `rounds` times (interleaved) on `decisions` decisions over 1,000 keys. */
export async function redisCpu(ctx: RedisCtx, admin: Redis, decisions: number, rounds: number): Promise<CpuRow[]> {
  const keys = Array.from({ length: 1000 }, (_, i) => `user-${i}`);
  const tg = new RateLimiter({
    backend: new RedisBackend({ client: ctx.client(), prefix: 'cpu:' }),
    policy: BIG,
    name: 'b',
  });
  const rlf = new RateLimiterRedis({ storeClient: ctx.client(), points: 1e9, duration: 3600, keyPrefix: 'cpurlf' });
  const seq = (op: (k: string) => Promise<unknown>) => async (n: number) => {
    for (let i = 0; i < n; i++) await op(keys[i % 1000] as string);
  };
  const par = (op: (k: string) => Promise<unknown>) => (n: number) =>
    inFlight(n, 256, (i) => op(keys[i % 1000] as string));
  const contenders = [
    { name: 'Tollgate, single script (sequential)', run: seq((k) => tg.tryAcquire(k)) },
    { name: 'Tollgate, batch script (256 in flight)', run: par((k) => tg.tryAcquire(k)) },
    { name: 'rate-limiter-flexible (sequential)', run: seq((k) => rlf.consume(k)) },
    { name: 'rate-limiter-flexible (256 in flight)', run: par((k) => rlf.consume(k)) },
  ];
  const us = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
  const per = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
  for (const c of contenders) await c.run(Math.min(decisions, 2000)); // warm-up: keys made, scripts loaded
  for (let r = 0; r < rounds; r++) {
    for (const c of contenders) {
      const before = await scriptStats(admin);
      await c.run(decisions);
      const after = await scriptStats(admin);
      // The admin's INFO is no script call: the deltas are the contender's alone.
      us.get(c.name)?.push((after.usec - before.usec) / decisions);
      per.get(c.name)?.push(decisions / Math.max(1, after.calls - before.calls));
    }
  }
  return contenders.map((c) => ({
    name: c.name,
    usPerDecision: median(us.get(c.name) as number[]),
    perScriptCall: median(per.get(c.name) as number[]),
  }));
}
