/**
 * SharedLimiter's rows: its acquire beside RateLimiter's on the same backend (uncontended), and a
 * probe of Redis round trips per admitted call (uncontended and contended) and Redis CPU per
 * decision (INFO commandstats, usec per EVALSHA).
 */
import { setMaxListeners } from 'node:events';
import { MemoryBackend, RateLimiter, RedisBackend, SharedLimiter } from '@tollgate/core';
import type { Redis } from 'ioredis';
import type { Scenario } from './harness.js';
import type { RedisCtx, Sizes, Target } from './scenarios.js';

const RL = 'RateLimiter.acquire';

/** Targets: SharedLimiter.acquire ÷ RateLimiter.acquire, same backend, same run. */
export const SHARED_TARGETS: Target[] = [
  {
    scenario: 'shared-memory',
    against: RL,
    min: 0.7,
    text: 'memory SharedLimiter.acquire: >= 0.7x RateLimiter.acquire',
  },
];

/** Uncontended sequential acquires: one key, a pool that never runs dry. */
export function sharedScenarios(ctx: RedisCtx, sizes: Sizes): Scenario[] {
  const policy = { rate: 1e12, per: '1s' };
  const mem = new MemoryBackend();
  const rl = new RateLimiter({ backend: mem, policy, name: 'rl' });
  const shared = new SharedLimiter({ backend: mem, policy, name: 'sh' });
  const redis = new RedisBackend({ client: ctx.client(), prefix: 'bench-shared:' });
  const rlR = new RateLimiter({ backend: redis, policy, name: 'rl' });
  const sharedR = new SharedLimiter({ backend: redis, policy, name: 'sh' });
  return [
    {
      id: 'shared-memory',
      title: 'memory acquire, uncontended, awaited',
      ops: sizes.memOps,
      contenders: [
        {
          name: 'Tollgate SharedLimiter.acquire',
          role: 'tollgate',
          run: async (n) => {
            for (let i = 0; i < n; i++) await shared.acquire('user-1', { pool: 'gpt-4o' });
          },
        },
        {
          name: RL,
          role: 'peer',
          run: async (n) => {
            for (let i = 0; i < n; i++) await rl.acquire('user-1');
          },
        },
      ],
    },
    {
      id: 'shared-redis',
      title: 'Redis acquire, uncontended, sequential',
      ops: sizes.redisOps,
      contenders: [
        {
          name: 'Tollgate SharedLimiter.acquire',
          role: 'tollgate',
          run: async (n) => {
            for (let i = 0; i < n; i++) await sharedR.acquire('user-1', { pool: 'gpt-4o' });
          },
        },
        {
          name: RL,
          role: 'peer',
          run: async (n) => {
            for (let i = 0; i < n; i++) await rlR.acquire('user-1');
          },
        },
      ],
    },
  ];
}

export interface SharedProbe {
  /** EVALSHA calls per admitted call, one caller, a pool that never runs dry. */
  uncontendedTrips: number;
  /** EVALSHA calls per admitted call, keys weighted 1:2:4 backlogged on a pool of `rate`/s. */
  contendedTrips: number;
  /** Each key's share of the contended admissions. */
  shares: Record<string, number>;
  /** Redis CPU µs per EVALSHA (INFO commandstats), uncontended and contended. */
  usecUncontended: number;
  usecContended: number;
}

async function evalsha(admin: Redis): Promise<{ calls: number; usec: number }> {
  const m = /cmdstat_evalsha:calls=(\d+),usec=(\d+)/.exec(await admin.info('commandstats'));
  return { calls: Number(m?.[1] ?? 0), usec: Number(m?.[2] ?? 0) };
}

/** sharedProbe counts round trips and Redis CPU per decision. */
export async function sharedProbe(ctx: RedisCtx, admin: Redis, ms: number): Promise<SharedProbe> {
  const backend = new RedisBackend({ client: ctx.client(), prefix: 'probe-shared:' });
  const free = new SharedLimiter({ backend, name: 'free', policy: { rate: 1e12, per: '1s' } });
  await admin.config('RESETSTAT');
  for (let i = 0; i < 2000; i++) await free.acquire('u', { pool: 'gpt-4o' });
  const u = await evalsha(admin);

  const weights: Record<string, number> = { a: 1, b: 2, c: 4 };
  const rate = 2000;
  const busy = new SharedLimiter({
    backend,
    name: 'busy',
    policy: { rate, per: '1s', capacity: 20 },
    weight: (k) => weights[k] ?? 1,
  });
  const ac = new AbortController();
  // Thousands of waiters share this one signal, as they may in an app: no MaxListeners warning.
  setMaxListeners(0, ac.signal);
  const admitted: Record<string, number> = { a: 0, b: 0, c: 0 };
  for (const k of Object.keys(weights)) {
    for (let i = 0; i < (rate * ms) / 1000; i++) {
      busy.acquire(k, { pool: 'gpt-4o', signal: ac.signal }).then(
        () => {
          admitted[k] = (admitted[k] ?? 0) + 1;
        },
        () => undefined,
      );
    }
  }
  await admin.config('RESETSTAT');
  const before = { ...admitted };
  await new Promise((r) => setTimeout(r, ms));
  const c = await evalsha(admin);
  const got = Object.fromEntries(Object.keys(weights).map((k) => [k, (admitted[k] ?? 0) - (before[k] ?? 0)]));
  ac.abort();
  const total = Object.values(got).reduce((x, y) => x + y, 0);
  return {
    uncontendedTrips: u.calls / 2000,
    contendedTrips: c.calls / total,
    shares: Object.fromEntries(Object.entries(got).map(([k, v]) => [k, v / total])),
    usecUncontended: u.usec / u.calls,
    usecContended: c.usec / c.calls,
  };
}
