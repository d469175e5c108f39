/**
 * How cost grows with keys (--full): memory tryAcquire on 1 to 1M keys, Redis tryAcquire with
 * 256 in flight on 1,000 and 100,000 keys. Tollgate beside the ceiling on the same keys.
 */
import { MemoryBackend, RateLimiter, RedisBackend } from '@tollgate/core';
import { BUCKET_SCRIPT } from '@tollgate/core/internal';
import { InlineBucket, RawEvalsha } from './ceilings.js';
import { type Scenario, inFlight } from './harness.js';
import type { RedisCtx } from './scenarios.js';

const BIG = { rate: 1000, per: '1h', capacity: 1e9 } as const;

function memoryKeys(n: number): Scenario {
  const keys = Array.from({ length: n }, (_, i) => `user-${i}`);
  const tg = new RateLimiter({ backend: new MemoryBackend(), policy: BIG });
  const inline = new InlineBucket(1000, 3_600_000, 1e9);
  return {
    id: `keys-mem-${n}`,
    title: `memory tryAcquire, ${n.toLocaleString('en')} keys`,
    ops: 1_000_000,
    contenders: [
      {
        name: 'Tollgate',
        role: 'tollgate',
        run: async (ops) => {
          for (let i = 0, k = 0; i < ops; i++) {
            await tg.tryAcquire(keys[k] as string);
            if (++k === n) k = 0;
          }
        },
      },
      {
        name: 'inline Map bucket, awaited',
        role: 'ceiling',
        run: async (ops) => {
          for (let i = 0, k = 0; i < ops; i++) {
            await inline.take(keys[k] as string);
            if (++k === n) k = 0;
          }
        },
      },
    ],
  };
}

async function redisKeys(ctx: RedisCtx, n: number): Promise<Scenario> {
  const keys = Array.from({ length: n }, (_, i) => `user-${i}`);
  const rawKeys = keys.map((k) => `rawk:{${k}}:b`);
  const tg = new RateLimiter({
    backend: new RedisBackend({ client: ctx.client(), prefix: 'tgk:' }),
    policy: BIG,
    name: 'b',
  });
  const raw = new RawEvalsha(ctx.client(), BUCKET_SCRIPT);
  await raw.load();
  return {
    id: `keys-redis-${n}`,
    title: `Redis tryAcquire, 256 in flight, ${n.toLocaleString('en')} keys`,
    ops: 100_000,
    contenders: [
      {
        name: 'Tollgate',
        role: 'tollgate',
        run: (ops) => inFlight(ops, 256, (i) => tg.tryAcquire(keys[i % n] as string)),
      },
      {
        name: 'raw EVALSHA (same script)',
        role: 'ceiling',
        run: (ops) => inFlight(ops, 256, (i) => raw.call(rawKeys[i % n] as string, 't', 1000 / 3_600_000, 1e9)),
      },
    ],
  };
}

export async function scalingScenarios(ctx: RedisCtx): Promise<Scenario[]> {
  return [
    memoryKeys(1),
    memoryKeys(10_000),
    memoryKeys(100_000),
    memoryKeys(1_000_000),
    await redisKeys(ctx, 1000),
    await redisKeys(ctx, 100_000),
  ];
}
