/**
 * The scenarios: Tollgate, its peers and the ceilings on the same work. Each contender has its own
 * loop (see harness.ts for why).
 */
import { HybridBackend, MemoryBackend, RateLimiter, RedisBackend } from '@tollgate/core';
import { BUCKET_SCRIPT } from '@tollgate/core/internal';
import Bottleneck from 'bottleneck';
import { Redis } from 'ioredis';
import { RateLimiter as JhLimiter } from 'limiter';
import { RateLimiterMemory, RateLimiterRedis } from 'rate-limiter-flexible';
import { InlineBucket, RawEvalsha, clockAndAwait } from './ceilings.js';
import { type Contender, type Scenario, inFlight } from './harness.js';

/** A target: Tollgate ÷ `against` must be ≥ `min` (from the same run). */
export interface Target {
  scenario: string;
  against: string;
  min: number;
  text: string;
}

export interface Sizes {
  /** ops per round of the in-memory scenarios */
  memOps: number;
  /** ops per round of the sequential Redis scenarios */
  redisOps: number;
  /** ops per round with 256 in flight */
  flightOps: number;
  /** ops per round of the seed's acquire table (10,000 in --full) */
  seedMemOps: number;
  seedRedisOps: number;
}

const TOLLGATE = 'Tollgate';
const RLF = 'rate-limiter-flexible';
const JH = 'limiter';
const BN = 'bottleneck';
const INLINE_AWAITED = 'inline Map bucket, awaited';
const INLINE_SYNC = 'inline Map bucket, sync';
const FLOOR = 'clock read + await, nothing else';
const RAW = 'raw EVALSHA (same script)';
const PING = 'PING';

export const TARGETS: Target[] = [
  { scenario: 'mem-1key', against: RLF, min: 2, text: 'memory tryAcquire, 1 key: >= 2x rlf' },
  { scenario: 'mem-1key', against: INLINE_AWAITED, min: 0.6, text: 'memory tryAcquire, 1 key: >= 60% inline awaited' },
  { scenario: 'mem-10k', against: RLF, min: 2, text: 'memory tryAcquire, 10k keys: >= 2x rlf' },
  {
    scenario: 'mem-10k',
    against: INLINE_AWAITED,
    min: 0.6,
    text: 'memory tryAcquire, 10k keys: >= 60% inline awaited',
  },
  { scenario: 'mem-rejected', against: RLF, min: 10, text: 'memory rejected: >= 10x rlf' },
  { scenario: 'redis-seq', against: RAW, min: 0.9, text: 'Redis sequential tryAcquire: >= 90% raw EVALSHA' },
  { scenario: 'redis-seq', against: RLF, min: 1, text: 'Redis sequential tryAcquire: >= 1x rlf' },
  { scenario: 'redis-256', against: RLF, min: 2, text: 'Redis 256 in flight: >= 2x rlf' },
  { scenario: 'seed-redis', against: RLF, min: 1, text: 'acquire x10,000 Redis: >= 1x rlf' },
  {
    scenario: 'hybrid-over',
    against: `${RLF} (inMemoryBlock)`,
    min: 8,
    text: 'hybrid over limit: >= 8x rlf in-memory block',
  },
  { scenario: 'seed-memory', against: INLINE_AWAITED, min: 0.5, text: 'acquire x10,000 memory: >= 50% inline awaited' },
  { scenario: 'seed-redis', against: RAW, min: 0.9, text: 'acquire x10,000 Redis: >= 90% raw EVALSHA' },
  {
    scenario: 'openai-overhead',
    against: 'bare openai client',
    min: 0.95,
    text: 'throttleOpenAI: overhead <= 5% of a loopback round trip',
  },
];

/**
 * A bucket no scenario empties (1e9 tokens) that refills slowly (1,000 tokens an hour), so buckets
 * stay held: with a fast refill every bucket is full again microseconds after a call, and each
 * call would measure dropping and re-creating a bucket instead of deciding on one.
 */
const BIG = { rate: 1000, per: '1h', capacity: 1e9 } as const;
const keysOf = (n: number, prefix = 'user-'): string[] => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

const swallow = (): void => {};

// ---- memory -----------------------------------------------------------------------------------

function memoryContenders(keys: string[]): Contender[] {
  const nk = keys.length;
  const tg = new RateLimiter({ backend: new MemoryBackend(), policy: BIG });
  const rlf = new RateLimiterMemory({ points: 1e9, duration: 3600 });
  const jh = new Map<string, JhLimiter>();
  const jhOf = (k: string): JhLimiter => {
    let l = jh.get(k);
    if (l === undefined) {
      l = new JhLimiter({ tokensPerInterval: 1e9, interval: 'hour' });
      jh.set(k, l);
    }
    return l;
  };
  const inlineA = new InlineBucket(1000, 3_600_000, 1e9);
  const inlineS = new InlineBucket(1000, 3_600_000, 1e9);
  return [
    {
      name: TOLLGATE,
      role: 'tollgate',
      run: async (n) => {
        for (let i = 0, k = 0; i < n; i++) {
          await tg.tryAcquire(keys[k] as string);
          if (++k === nk) k = 0;
        }
      },
    },
    {
      name: RLF,
      role: 'peer',
      run: async (n) => {
        for (let i = 0, k = 0; i < n; i++) {
          await rlf.consume(keys[k] as string);
          if (++k === nk) k = 0;
        }
      },
    },
    {
      name: JH,
      role: 'peer',
      run: async (n) => {
        // `limiter` has no keys and a synchronous try: a Map of limiters, each call awaited.
        for (let i = 0, k = 0; i < n; i++) {
          await jhOf(keys[k] as string).tryRemoveTokens(1);
          if (++k === nk) k = 0;
        }
      },
    },
    {
      name: INLINE_AWAITED,
      role: 'ceiling',
      run: async (n) => {
        for (let i = 0, k = 0; i < n; i++) {
          await inlineA.take(keys[k] as string);
          if (++k === nk) k = 0;
        }
      },
    },
    {
      name: FLOOR,
      role: 'ceiling',
      run: async (n) => {
        for (let i = 0; i < n; i++) await clockAndAwait();
      },
    },
    {
      name: INLINE_SYNC,
      role: 'ceiling',
      run: (n) => {
        let ok = 0;
        for (let i = 0, k = 0; i < n; i++) {
          if (inlineS.take(keys[k] as string)) ok++;
          if (++k === nk) k = 0;
        }
        if (ok < 0) throw new Error('unreachable');
      },
    },
  ];
}

function memoryRejected(): Contender[] {
  const key = 'hot';
  const policy = { rate: 1, per: '1h', capacity: 1 } as const;
  const tg = new RateLimiter({ backend: new MemoryBackend(), policy });
  const rlf = new RateLimiterMemory({ points: 1, duration: 3600 });
  const jh = new JhLimiter({ tokensPerInterval: 1, interval: 'hour' });
  const inlineA = new InlineBucket(1, 3_600_000, 1);
  const inlineS = new InlineBucket(1, 3_600_000, 1);
  return [
    {
      name: TOLLGATE,
      role: 'tollgate',
      run: async (n) => {
        for (let i = 0; i < n; i++) await tg.tryAcquire(key);
      },
    },
    {
      name: RLF,
      role: 'peer',
      run: async (n) => {
        for (let i = 0; i < n; i++) await rlf.consume(key).catch(swallow);
      },
    },
    {
      name: JH,
      role: 'peer',
      run: async (n) => {
        for (let i = 0; i < n; i++) await jh.tryRemoveTokens(1);
      },
    },
    {
      name: INLINE_AWAITED,
      role: 'ceiling',
      run: async (n) => {
        for (let i = 0; i < n; i++) await inlineA.take(key);
      },
    },
    {
      name: FLOOR,
      role: 'ceiling',
      run: async (n) => {
        for (let i = 0; i < n; i++) await clockAndAwait();
      },
    },
    {
      name: INLINE_SYNC,
      role: 'ceiling',
      run: (n) => {
        let ok = 0;
        for (let i = 0; i < n; i++) if (inlineS.take(key)) ok++;
        if (ok > 1) throw new Error('the rejected scenario admitted more than one call');
      },
    },
  ];
}

// ---- Redis ------------------------------------------------------------------------------------

export interface RedisCtx {
  port: number;
  /** A new client; closed by closeAll(). */
  client(): Redis;
}

function redisContenders(ctx: RedisCtx, keys: string[], concurrency: number, raw: RawEvalsha): Contender[] {
  const nk = keys.length;
  const tg = new RateLimiter({
    backend: new RedisBackend({ client: ctx.client(), prefix: 'tg:' }),
    policy: BIG,
    name: 'b',
  });
  const rlf = new RateLimiterRedis({ storeClient: ctx.client(), points: 1e9, duration: 3600, keyPrefix: 'rlf' });
  const ping = ctx.client();
  const rate = 1000 / 3_600_000;
  const cap = 1e9;
  const rawKeys = keys.map((k) => `raw:{${k}}:b`);
  const seq = (op: (k: number) => Promise<unknown>) => async (n: number) => {
    for (let i = 0, k = 0; i < n; i++) {
      await op(k);
      if (++k === nk) k = 0;
    }
  };
  const par = (op: (k: number) => Promise<unknown>) => (n: number) => inFlight(n, concurrency, (i) => op(i % nk));
  const drive = concurrency === 1 ? seq : par;
  return [
    { name: TOLLGATE, role: 'tollgate', run: drive((k) => tg.tryAcquire(keys[k] as string)) },
    { name: RLF, role: 'peer', run: drive((k) => rlf.consume(keys[k] as string)) },
    { name: RAW, role: 'ceiling', run: drive((k) => raw.call(rawKeys[k] as string, 't', rate, cap)) },
    { name: PING, role: 'ceiling', run: drive(() => ping.ping()) },
  ];
}

function hybridOverLimit(ctx: RedisCtx, inline: InlineBucket): { contenders: Contender[]; setup: () => Promise<void> } {
  const key = 'hot';
  const policy = { rate: 100, per: '1m', capacity: 100 } as const;
  const tg = new RateLimiter({
    backend: new HybridBackend({ client: ctx.client(), prefix: 'hy:' }),
    policy,
    name: 'b',
  });
  const rlf = new RateLimiterRedis({
    storeClient: ctx.client(),
    points: 100,
    duration: 60,
    keyPrefix: 'rlfblock',
    inMemoryBlockOnConsumed: 100,
    inMemoryBlockDuration: 600,
  });
  return {
    setup: async () => {
      for (let i = 0; i < 200; i++) await tg.tryAcquire(key);
      for (let i = 0; i < 200; i++) await rlf.consume(key).catch(swallow);
      for (let i = 0; i < 200; i++) inline.take(key);
    },
    contenders: [
      {
        name: TOLLGATE,
        role: 'tollgate',
        run: async (n) => {
          for (let i = 0; i < n; i++) await tg.tryAcquire(key);
        },
      },
      {
        name: `${RLF} (inMemoryBlock)`,
        role: 'peer',
        run: async (n) => {
          for (let i = 0; i < n; i++) await rlf.consume(key).catch(swallow);
        },
      },
      {
        name: INLINE_AWAITED,
        role: 'ceiling',
        run: async (n) => {
          for (let i = 0; i < n; i++) await inline.take(key);
        },
      },
    ],
  };
}

// ---- the seed's table: N sequential acquires on one key ---------------------------------------

function seedMemory(): Contender[] {
  const key = 'seed';
  const tg = new RateLimiter({ backend: new MemoryBackend(), policy: BIG });
  const rlf = new RateLimiterMemory({ points: 1e9, duration: 3600 });
  const jh = new JhLimiter({ tokensPerInterval: 1e9, interval: 'hour' });
  const inline = new InlineBucket(1000, 3_600_000, 1e9);
  return [
    {
      name: TOLLGATE,
      role: 'tollgate',
      run: async (n) => {
        for (let i = 0; i < n; i++) await tg.acquire(key);
      },
    },
    {
      name: RLF,
      role: 'peer',
      run: async (n) => {
        for (let i = 0; i < n; i++) await rlf.consume(key);
      },
    },
    {
      name: JH,
      role: 'peer',
      run: async (n) => {
        for (let i = 0; i < n; i++) await jh.removeTokens(1);
      },
    },
    {
      name: INLINE_AWAITED,
      role: 'ceiling',
      run: async (n) => {
        for (let i = 0; i < n; i++) await inline.take(key);
      },
    },
  ];
}

function seedRedis(ctx: RedisCtx, raw: RawEvalsha, bottleneck: Bottleneck): Contender[] {
  const key = 'seed';
  const tg = new RateLimiter({
    backend: new RedisBackend({ client: ctx.client(), prefix: 'seed:' }),
    policy: BIG,
    name: 'b',
  });
  const rlf = new RateLimiterRedis({ storeClient: ctx.client(), points: 1e9, duration: 3600, keyPrefix: 'seedrlf' });
  const rate = 1000 / 3_600_000;
  const cap = 1e9;
  const noop = (): Promise<void> => Promise.resolve();
  return [
    {
      name: TOLLGATE,
      role: 'tollgate',
      run: async (n) => {
        for (let i = 0; i < n; i++) await tg.acquire(key);
      },
    },
    {
      name: RLF,
      role: 'peer',
      run: async (n) => {
        for (let i = 0; i < n; i++) await rlf.consume(key);
      },
    },
    {
      name: BN,
      role: 'peer',
      share: 0.1,
      run: async (n) => {
        // bottleneck is a job scheduler: its "acquire" is scheduling a job, here one that does nothing.
        for (let i = 0; i < n; i++) await bottleneck.schedule(noop);
      },
    },
    {
      name: RAW,
      role: 'ceiling',
      run: async (n) => {
        for (let i = 0; i < n; i++) await raw.call('raw:{seed}:b', 'r', rate, cap);
      },
    },
  ];
}

function seedHybrid(ctx: RedisCtx): Contender[] {
  const key = 'seed';
  const tg = new RateLimiter({
    backend: new HybridBackend({ client: ctx.client(), prefix: 'seedh:' }),
    policy: BIG,
    name: 'b',
  });
  return [
    {
      name: TOLLGATE,
      role: 'tollgate',
      run: async (n) => {
        for (let i = 0; i < n; i++) await tg.acquire(key);
      },
    },
  ];
}

/** The scenarios that measure contenders side by side. */
export async function scenarios(ctx: RedisCtx, sizes: Sizes): Promise<Scenario[]> {
  const raw = new RawEvalsha(ctx.client(), BUCKET_SCRIPT);
  await raw.load();
  const bottleneck = new Bottleneck({
    id: `bench-${process.pid}`,
    datastore: 'ioredis',
    clearDatastore: true,
    connection: new Bottleneck.IORedisConnection({ client: ctx.client(), Redis } as never),
  });
  bottleneck.on('error', swallow);
  await bottleneck.ready();
  const keys1k = keysOf(1000);
  return [
    {
      id: 'mem-1key',
      title: 'memory tryAcquire, 1 key (allowed)',
      ops: sizes.memOps,
      contenders: memoryContenders(['user-0']),
    },
    {
      id: 'mem-10k',
      title: 'memory tryAcquire, 10,000 keys (allowed)',
      ops: sizes.memOps,
      contenders: memoryContenders(keysOf(10_000)),
    },
    {
      id: 'mem-rejected',
      title: 'memory tryAcquire, 1 key (rejected)',
      ops: sizes.memOps,
      contenders: memoryRejected(),
    },
    {
      id: 'redis-seq',
      title: 'Redis tryAcquire, sequential, 1,000 keys',
      ops: sizes.redisOps,
      contenders: redisContenders(ctx, keys1k, 1, raw),
    },
    {
      id: 'redis-256',
      title: 'Redis tryAcquire, 256 in flight, 1,000 keys',
      ops: sizes.flightOps,
      contenders: redisContenders(ctx, keys1k, 256, raw),
    },
    (() => {
      const h = hybridOverLimit(ctx, new InlineBucket(100, 60_000, 100));
      return { id: 'hybrid-over', title: 'hybrid tryAcquire over limit, 1 key (rejected)', ops: sizes.memOps, ...h };
    })(),
    { id: 'seed-memory', title: 'acquire, memory (seed table)', ops: sizes.seedMemOps, contenders: seedMemory() },
    {
      id: 'seed-redis',
      title: 'acquire, Redis (seed table)',
      ops: sizes.seedRedisOps,
      contenders: seedRedis(ctx, raw, bottleneck),
    },
    { id: 'seed-hybrid', title: 'acquire, hybrid (seed table)', ops: sizes.seedRedisOps, contenders: seedHybrid(ctx) },
  ];
}
