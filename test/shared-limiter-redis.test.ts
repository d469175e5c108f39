/**
 * SharedLimiter on real Redis: the Lua script decides as pool-math does, one round trip when
 * uncontended, at most two per admitted call when contended, the failure policies, Cluster.
 */
import { BackendUnavailableError, RedisBackend, SharedLimiter } from '@tollgate/core';
import { normalizePolicy } from '@tollgate/core/internal';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  type PoolState,
  decide,
  giveBackPool,
  keepFor,
  newPool,
  observePool,
  pauseLeft,
} from '../packages/core/src/shared-limiter/pool-math.ts';
import { RedisPools } from '../packages/core/src/shared-limiter/redis-pools.ts';
import { rng } from './support/random.ts';
import { type RedisCluster, type RedisServer, startCluster, startRedis } from './support/redis.ts';

let srv: RedisServer;
beforeAll(async () => {
  srv = await startRedis();
});
afterAll(() => srv.stop());

async function evalshaCalls(): Promise<number> {
  const info = await srv.client().info('commandstats');
  const m = /cmdstat_evalsha:calls=(\d+)/.exec(info);
  return m ? Number(m[1]) : 0;
}

test.each([
  [1, { rate: 10, per: '1s', capacity: 25 }],
  [2, { rate: 7, per: '1s' }],
  [3, { rate: 600, per: '1m', capacity: 50 }],
  [4, { rate: 3.3, per: 700, capacity: 9.5 }],
])('seed %i, policy %j: memory and Lua decide identically on 400 random steps', async (seed, input) => {
  const policy = normalizePolicy(input);
  const pools = new RedisPools(srv.client(), `sparity${seed}:`, 1000);
  let now = 1_700_000_000_000 + seed * 1000.125;
  pools.useClockForTests(() => now);
  let state: PoolState = newPool(policy, now);
  let expiresAt = Number.POSITIVE_INFINITY;
  const random = rng(seed);
  const keys = ['a', 'b', 'c', 'd'];
  const weights = [1, 2, 4, 0.5];
  const fill = policy.capacity / policy.ratePerMs;
  for (let i = 0; i < 400; i++) {
    const r = random();
    now += r < 0.2 ? 0 : r < 0.7 ? Math.floor(random() * fill * 0.05) : random() * fill * 0.3;
    if (expiresAt <= now) state = newPool(policy, now);
    const k = Math.floor(random() * keys.length);
    const key = keys[k] as string;
    const cost = Math.max(1e-3, Math.round(random() * policy.capacity * 50) / 100);
    const op = random();
    if (op < 0.75) {
      const mode = random() < 0.25 ? 't' : 'r';
      const maxWait = random() < 0.6 ? -1 : Math.floor(random() * fill);
      const more = random() < 0.7;
      const mem = decide(state, policy, now, key, cost, weights[k] as number, mode, maxWait, more);
      const lua = await pools.decide('n', 'p', key, policy, cost, weights[k] as number, mode, maxWait, more);
      expect(lua, `step ${i}: ${mode} ${key} cost ${cost} max ${maxWait} at ${now}`).toEqual(mem);
    } else if (op < 0.85) {
      giveBackPool(state, policy, now, key, cost);
      await pools.refund('n', 'p', key, policy, cost);
    } else {
      // Pauses short and long (longer than a refill and than per), with and without a limit.
      const o = {
        limit: random() < 0.5 ? policy.rate * random() : -1,
        remaining: random() < 0.5 ? Math.floor(random() * policy.capacity) : -1,
        resetAfterMs: random() < 0.5 ? Math.floor(random() * fill) : -1,
        retryAfterMs:
          random() < 0.5 ? Math.floor(random() * Math.max(fill, policy.perMs) * (random() < 0.5 ? 0.2 : 1.5)) : -1,
      };
      observePool(state, policy, now, o);
      await pools.observe('n', 'p', policy, o);
    }
    // A held grant's confirmation: what is left of a pause, read alike, nothing changed.
    expect(await pools.confirm('n', 'p', policy), `step ${i}: confirm at ${now}`).toBe(pauseLeft(state, now));
    const keep = keepFor(state, policy, now);
    expiresAt = keep === 0 ? Number.NEGATIVE_INFINITY : now + keep;
  }
});

describe('round trips', () => {
  test('an uncontended acquire is one round trip; a contended admitted call at most two', async () => {
    const backend = new RedisBackend({ client: srv.client(), prefix: 'rt:' });
    const l = new SharedLimiter({
      backend,
      policy: { rate: 200, per: '1s', capacity: 20 },
      weight: (k) => (k === 'c' ? 4 : k === 'b' ? 2 : 1),
    });
    await l.acquire('warm');
    let before = await evalshaCalls();
    for (let i = 0; i < 10; i++) await l.acquire(`u${i}`);
    expect((await evalshaCalls()) - before).toBe(10);
    await new Promise((r) => setTimeout(r, 200));
    before = await evalshaCalls();
    const ac = new AbortController();
    let admitted = 0;
    for (const k of ['a', 'b', 'c']) {
      for (let i = 0; i < 300; i++)
        l.acquire(k, { signal: ac.signal }).then(
          () => admitted++,
          () => undefined,
        );
    }
    // Counted once 200 are admitted (~1 s at 200/s; longer on a busy machine), not after a fixed time.
    while (admitted < 200) await new Promise((r) => setTimeout(r, 10));
    const calls = (await evalshaCalls()) - before;
    ac.abort();
    expect(calls / admitted).toBeLessThanOrEqual(2);
  });
});

test('the script is sent again when Redis lost it (NOSCRIPT), and idle pools leave nothing behind', async () => {
  const client = srv.client();
  // A token every 12 s: nothing refills between the calls, however slow the machine.
  const l = new SharedLimiter({
    backend: new RedisBackend({ client, prefix: 'ns:' }),
    policy: { rate: 5, per: '1m', capacity: 5 },
  });
  await l.acquire('a', { pool: 'gpt-4o' });
  await client.script('FLUSH');
  const g = await l.acquire('b', { pool: 'gpt-4o', cost: 2 });
  expect(g.remaining).toBe(2); // the pool kept the first call's token
  expect(await client.keys('ns:*')).toEqual(['ns:pool{gpt-4o}:shared']);
  // Full again: the pool's hash goes at once.
  await l.refund('b', 3, { pool: 'gpt-4o' });
  expect(await client.keys('ns:*')).toEqual([]);
  // Left to refill (50/s: full 60 ms after taking 3), it expires when it would be full.
  const fast = new SharedLimiter({
    backend: new RedisBackend({ client, prefix: 'ns:' }),
    policy: { rate: 50, per: '1s', capacity: 5 },
  });
  await fast.acquire('c', { pool: 'o3', cost: 3 });
  await new Promise((r) => setTimeout(r, 150));
  expect(await client.keys('ns:*')).toEqual([]);
});

describe("a 429's pause reaches grants other processes hold", () => {
  const policy = { rate: 2, per: '1s', capacity: 1 };
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  /** Two processes' limiters on one pool; `a` holds a grant to start ~500 ms ahead (the bucket in debt). */
  async function held(prefix: string) {
    const clientA = srv.client();
    const a = new SharedLimiter({ backend: new RedisBackend({ client: clientA, prefix }), policy });
    const b = new SharedLimiter({ backend: new RedisBackend({ client: srv.client(), prefix }), policy });
    await a.acquire('t1', { pool: 'gpt-4o' });
    const grantedAt = performance.now();
    let startedAt = 0;
    const started = a.acquire('t1', { pool: 'gpt-4o' }).then(() => {
      startedAt = performance.now();
    });
    // Granted once the pool's bucket is in debt (its first field, a little-endian double).
    const admin = srv.client();
    for (;;) {
      const f = await admin.hgetBuffer(`${prefix}pool{gpt-4o}:shared`, '.');
      if (f !== null && f.readDoubleLE(0) < 0) break;
      await sleep(5);
    }
    return { clientA, b, grantedAt, started, startedAt: () => startedAt };
  }

  test('a grant held in one process does not start before the retry-after another process observed, then starts', async () => {
    const h = await held('pause1:');
    const observedAt = performance.now();
    await h.b.observe('gpt-4o', { retryAfterMs: 1500 });
    expect(h.startedAt()).toBe(0);
    await h.started;
    // Unconfirmed it would start ~500 ms after its grant; the pause is read from Redis's clock.
    expect(h.startedAt() - observedAt).toBeGreaterThanOrEqual(1490);
    expect(h.startedAt() - observedAt).toBeLessThan(1500 + 3000);
  });

  test('a held grant whose confirmation fails starts at its time: the grant was made', async () => {
    const h = await held('pause2:');
    const observedAt = performance.now();
    await h.b.observe('gpt-4o', { retryAfterMs: 3000 });
    h.clientA.disconnect();
    await h.started;
    expect(h.startedAt() - h.grantedAt).toBeGreaterThanOrEqual(400);
    expect(h.startedAt() - observedAt).toBeLessThan(2500);
  });
});

describe('when Redis fails', () => {
  const dead = () => {
    const c = srv.client({
      lazyConnect: true,
      enableOfflineQueue: false,
      retryStrategy: () => null,
      maxRetriesPerRequest: 0,
    });
    return new RedisBackend({ client: c, prefix: 'dead:', timeoutMs: 200 });
  };
  test("'fail-open' admits, 'fail-closed' rejects with BackendUnavailableError, 'fallback' decides on a local pool", async () => {
    const policy = { rate: 1, per: '1h', capacity: 2 };
    const open = new SharedLimiter({ backend: dead(), policy, onBackendError: 'fail-open' });
    for (let i = 0; i < 5; i++) expect((await open.acquire('a')).waitedMs).toBeLessThan(1000);
    const closed = new SharedLimiter({ backend: dead(), policy, onBackendError: 'fail-closed' });
    await expect(closed.acquire('a')).rejects.toBeInstanceOf(BackendUnavailableError);
    await expect(closed.tryAcquire('a')).rejects.toBeInstanceOf(BackendUnavailableError);
    const fb = new SharedLimiter({ backend: dead(), policy, onBackendError: 'fallback' });
    await fb.acquire('a');
    await fb.acquire('b');
    expect((await fb.tryAcquire('c')).allowed).toBe(false);
    await expect(fb.acquire('c', { maxWaitMs: 10 })).rejects.toMatchObject({ code: 'ERR_TOLLGATE_MAX_WAIT_EXCEEDED' });
  });
});

describe('Redis Cluster', () => {
  let cluster: RedisCluster;
  beforeAll(async () => {
    cluster = await startCluster({ masters: 3 });
  }, 60_000);
  afterAll(() => cluster?.stop());

  test('pools of different models live in their own slots: each starts full, and emptying one leaves the others full', async () => {
    const client = cluster.client();
    // A token every 12 s: nothing refills while the test runs, however slow the machine.
    const l = new SharedLimiter({
      backend: new RedisBackend({ client, prefix: 'c:' }),
      policy: { rate: 5, per: '1m', capacity: 5 },
    });
    const models = ['gpt-4o', 'gpt-4o-mini', 'o3', 'claude'];
    for (const m of models) {
      const grants = await Promise.all(Array.from({ length: 5 }, (_, i) => l.acquire(`u${i}`, { pool: m })));
      expect(grants.map((g) => g.remaining).sort()).toEqual([0, 1, 2, 3, 4]);
      expect((await l.tryAcquire('x', { pool: m })).allowed).toBe(false);
    }
    // They are spread over the masters (each pool is one hash, in its model's slot).
    const masters = new Set(await Promise.all(models.map((m) => cluster.masterOf(`c:pool{${m}}:shared`))));
    expect(masters.size).toBeGreaterThan(1);
    expect(await client.exists('c:pool{gpt-4o}:shared')).toBe(1);
  });

  test('a pool whose master fails sees the failure policy; pools of the other masters are still decided by Redis', async () => {
    const client = cluster.client();
    const backend = new RedisBackend({ client, prefix: 'shard:', timeoutMs: 300 });
    const l = new SharedLimiter({
      backend,
      policy: { rate: 5, per: '1h' },
      onBackendError: 'fail-closed',
      probeIntervalMs: 60_000,
    });
    // Two models whose pools live on different masters.
    const models = ['gpt-4o', 'gpt-4o-mini', 'o3', 'claude', 'gemini', 'llama', 'mistral'];
    const owners = await Promise.all(models.map((m) => cluster.masterOf(`shard:pool{${m}}:shared`)));
    const a = models[0] as string;
    const i = owners.findIndex((p) => p !== owners[0]);
    expect(i).toBeGreaterThan(0);
    const b = models[i] as string;
    await l.acquire('u', { pool: a });
    await l.acquire('u', { pool: b });
    // Pause a's master: its calls time out, and its breaker opens for a minute.
    await cluster.nodeClient(owners[0] as number).call('CLIENT', 'PAUSE', '3000', 'ALL');
    await expect(l.acquire('u', { pool: a })).rejects.toBeInstanceOf(BackendUnavailableError);
    await expect(l.tryAcquire('u', { pool: a })).rejects.toBeInstanceOf(BackendUnavailableError);
    // b's master is fine: its pool is still decided in Redis (with one breaker for the whole
    // cluster it would fail at once too): 4 left of 5, then none.
    const grants = await Promise.all(Array.from({ length: 3 }, () => l.acquire('v', { pool: b })));
    expect(grants.map((g) => g.remaining).sort()).toEqual([1, 2, 3]);
    expect((await l.tryAcquire('w', { pool: b, cost: 2 })).allowed).toBe(false);
  });
});
