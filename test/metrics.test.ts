/**
 * OpenTelemetry metrics, as an application sees them: a MeterProvider with an in-memory exporter
 * and a reader flushed by the test, limiters driven through every outcome, and the exported
 * numbers checked exactly (decisions by outcome, wait histogram, queue size, attributes).
 */
import { metrics } from '@opentelemetry/api';
import {
  AggregationTemporality,
  type HistogramMetricData,
  InMemoryMetricExporter,
  MeterProvider,
  PeriodicExportingMetricReader,
  type SumMetricData,
} from '@opentelemetry/sdk-metrics';
import { throttleTool, withUser } from '@tollgate/agent';
import { type Backend, MemoryBackend, RateLimiter, RedisBackend, SharedLimiter } from '@tollgate/core';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, test } from 'vitest';
import { PerUserQueues } from '../packages/agent/src/per-user-queue.ts';
import { freePort } from './support/redis.ts';

/** Every key (user id) the tests use: none may appear as an attribute value. */
const KEYS = ['alice', 'bob', 'carol', 'dave', 'tool-user'];

interface Collected {
  /** `tollgate.decisions` by limiter name, then outcome. */
  decisions: Record<string, Record<string, number>>;
  /** `tollgate.queue.size` by limiter name. */
  queue: Record<string, number>;
  /** `tollgate.wait.duration` by limiter name: count, min and max (s). */
  waits: Record<string, { count: number; min: number; max: number; sum: number }>;
  /** Every attribute set exported. */
  attributes: Record<string, unknown>[];
}

let provider: MeterProvider | undefined;

/** Registers a fresh MeterProvider as the global one; `collect` flushes it and reads what it exported. */
function register(): { collect: () => Promise<Collected> } {
  const exporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
  const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 3_600_000 });
  provider = new MeterProvider({ readers: [reader] });
  metrics.disable();
  metrics.setGlobalMeterProvider(provider);
  return {
    collect: async () => {
      exporter.reset();
      await reader.forceFlush();
      const out: Collected = { decisions: {}, queue: {}, waits: {}, attributes: [] };
      for (const rm of exporter.getMetrics()) {
        for (const sm of rm.scopeMetrics) {
          if (sm.scope.name !== 'tollgate') continue;
          for (const m of sm.metrics) {
            for (const dp of m.dataPoints) {
              const attrs = dp.attributes as Record<string, string>;
              out.attributes.push(attrs);
              const name = attrs['tollgate.limiter'] as string;
              if (m.descriptor.name === 'tollgate.decisions') {
                out.decisions[name] ??= {};
                (out.decisions[name] as Record<string, number>)[attrs['tollgate.outcome'] as string] = (
                  dp as SumMetricData['dataPoints'][number]
                ).value;
              } else if (m.descriptor.name === 'tollgate.queue.size') {
                out.queue[name] = (dp as SumMetricData['dataPoints'][number]).value;
              } else if (m.descriptor.name === 'tollgate.wait.duration') {
                const h = (dp as HistogramMetricData['dataPoints'][number]).value;
                out.waits[name] = {
                  count: h.count,
                  min: h.min ?? Number.NaN,
                  max: h.max ?? Number.NaN,
                  sum: h.sum ?? Number.NaN,
                };
              }
            }
          }
        }
      }
      return out;
    },
  };
}

afterEach(async () => {
  metrics.disable();
  await provider?.shutdown();
  provider = undefined;
});

/** A backend whose every call fails: the failure policy decides. */
const broken: Backend = {
  kind: 'broken',
  tryTake: () => {
    throw new Error('backend down');
  },
  reserve: () => {
    throw new Error('backend down');
  },
  refund: () => {
    throw new Error('backend down');
  },
};

function expectNoKeyIn(c: Collected): void {
  for (const attrs of c.attributes) {
    expect(Object.keys(attrs).sort()).toEqual(
      'tollgate.outcome' in attrs
        ? ['tollgate.backend', 'tollgate.limiter', 'tollgate.outcome']
        : ['tollgate.backend', 'tollgate.limiter'],
    );
    for (const v of Object.values(attrs)) expect(KEYS).not.toContain(v);
  }
}

describe('RateLimiter', () => {
  test('decisions by outcome, the wait of every grant, and the callers waiting', async () => {
    const { collect } = register();
    // 2 at once, then one every 50 ms.
    const l = new RateLimiter({
      backend: new MemoryBackend(),
      name: 'rl',
      policy: { rate: 20, per: '1s', capacity: 2 },
    });
    await l.acquire('alice');
    await l.acquire('alice');
    expect((await l.tryAcquire('alice')).allowed).toBe(false); // rejected 1
    await expect(l.acquire('alice', { cost: 5 })).rejects.toMatchObject({ code: 'ERR_TOLLGATE_COST_EXCEEDS_CAPACITY' }); // rejected 2
    await expect(l.acquire('alice', { maxWaitMs: 1 })).rejects.toMatchObject({
      code: 'ERR_TOLLGATE_MAX_WAIT_EXCEEDED',
    }); // timeout 1
    await expect(l.acquire('alice', { signal: AbortSignal.abort() })).rejects.toMatchObject({
      code: 'ERR_TOLLGATE_ABORTED',
    }); // aborted 1

    // Three callers wait, the third is aborted while it waits.
    const ac = new AbortController();
    const first = l.acquire('alice');
    const second = l.acquire('alice');
    const third = l.acquire('alice', { signal: ac.signal });
    expect(l.queued('alice')).toBe(3);
    const mid = await collect();
    expect(mid.queue.rl).toBe(3);
    ac.abort();
    await expect(third).rejects.toMatchObject({ code: 'ERR_TOLLGATE_ABORTED' }); // aborted 2
    const waited = await Promise.all([first, second]);

    const c = await collect();
    expect(c.decisions.rl).toEqual({ allowed: 4, rejected: 2, timeout: 1, aborted: 2 });
    expect(c.queue.rl).toBe(0);
    // Four grants: two at once, then two waiting in turn; the second of them reserves only once
    // the first is admitted, and waits a whole token (50 ms) more.
    expect(c.waits.rl?.count).toBe(4);
    expect(c.waits.rl?.min).toBe(0);
    expect(c.waits.rl?.max).toBeGreaterThanOrEqual(0.049);
    expect(c.waits.rl?.max).toBeLessThan(5);
    expect(c.waits.rl?.sum).toBeCloseTo((waited[0].waitedMs + waited[1].waitedMs) / 1000, 6);
    expectNoKeyIn(c);
  });

  test("'fallback' counts what the failure policy decided; 'fail-closed' counts as rejected", async () => {
    const { collect } = register();
    const onError = () => {};
    const fb = new RateLimiter({
      backend: broken,
      name: 'rl-fallback',
      policy: { rate: 1, per: '1h', capacity: 2 },
      onError,
    });
    await fb.acquire('bob');
    await fb.acquire('bob');
    expect((await fb.tryAcquire('bob')).allowed).toBe(false);
    const open = new RateLimiter({
      backend: broken,
      name: 'rl-open',
      policy: { rate: 1, per: '1h' },
      onBackendError: 'fail-open',
      onError,
    });
    await open.acquire('bob');
    await open.tryAcquire('bob');
    const closed = new RateLimiter({
      backend: broken,
      name: 'rl-closed',
      policy: { rate: 1, per: '1h' },
      onBackendError: 'fail-closed',
      onError,
    });
    await expect(closed.acquire('bob')).rejects.toMatchObject({ code: 'ERR_TOLLGATE_BACKEND_UNAVAILABLE' });
    await expect(closed.tryAcquire('bob')).rejects.toMatchObject({ code: 'ERR_TOLLGATE_BACKEND_UNAVAILABLE' });

    const c = await collect();
    expect(c.decisions['rl-fallback']).toEqual({ fallback: 3 });
    expect(c.decisions['rl-open']).toEqual({ fallback: 2 });
    expect(c.decisions['rl-closed']).toEqual({ rejected: 2 });
    expect(c.waits['rl-fallback']?.count).toBe(2);
    expect(c.attributes).toContainEqual({
      'tollgate.limiter': 'rl-fallback',
      'tollgate.backend': 'broken',
      'tollgate.outcome': 'fallback',
    });
    expectNoKeyIn(c);
  });

  test('limiters sharing a name and a backend add up', async () => {
    const { collect } = register();
    const a = new RateLimiter({ backend: new MemoryBackend(), name: 'twin', policy: { rate: 5, per: '1h' } });
    const b = new RateLimiter({ backend: new MemoryBackend(), name: 'twin', policy: { rate: 5, per: '1h' } });
    for (let i = 0; i < 3; i++) await a.tryAcquire('alice');
    for (let i = 0; i < 4; i++) await b.tryAcquire('alice');
    expect((await collect()).decisions.twin).toEqual({ allowed: 7 });
  });
});

describe('SharedLimiter', () => {
  test('decisions by outcome, waits and queue, on memory', async () => {
    const { collect } = register();
    const l = new SharedLimiter({
      backend: new MemoryBackend(),
      name: 'pool',
      policy: (model) => (model === 'free' ? undefined : { rate: 20, per: '1s', capacity: 2 }),
    });
    await l.acquire('alice', { pool: 'gpt' });
    await l.acquire('bob', { pool: 'gpt' });
    await l.acquire('carol', { pool: 'free' }); // no limit: allowed
    expect((await l.tryAcquire('alice', { pool: 'gpt' })).allowed).toBe(false); // rejected 1
    await expect(l.acquire('alice', { pool: 'gpt', cost: 3 })).rejects.toMatchObject({
      code: 'ERR_TOLLGATE_COST_EXCEEDS_CAPACITY',
    }); // rejected 2
    await expect(l.acquire('alice', { pool: 'gpt', maxWaitMs: 1 })).rejects.toMatchObject({
      code: 'ERR_TOLLGATE_MAX_WAIT_EXCEEDED',
    }); // timeout 1
    const ac = new AbortController();
    const first = l.acquire('alice', { pool: 'gpt' });
    const second = l.acquire('bob', { pool: 'gpt', signal: ac.signal });
    expect((await collect()).queue.pool).toBe(2);
    ac.abort();
    await expect(second).rejects.toMatchObject({ code: 'ERR_TOLLGATE_ABORTED' }); // aborted 1
    const g = await first;

    const c = await collect();
    expect(c.decisions.pool).toEqual({ allowed: 4, rejected: 2, timeout: 1, aborted: 1 });
    expect(c.queue.pool).toBe(0);
    expect(c.waits.pool?.count).toBe(4);
    expect(c.waits.pool?.max).toBeGreaterThan(0);
    expect(c.waits.pool?.max).toBeLessThan(5);
    expect(c.waits.pool?.sum).toBeCloseTo(g.waitedMs / 1000, 6);
    expect(c.attributes).toContainEqual({ 'tollgate.limiter': 'pool', 'tollgate.backend': 'memory' });
    expectNoKeyIn(c);
  });

  test("on a Redis that is not there: 'fallback' and 'fail-open' count as fallback, 'fail-closed' as rejected", async () => {
    const { collect } = register();
    const port = await freePort();
    const clients: Redis[] = [];
    const dead = () => {
      const c = new Redis(port, '127.0.0.1', {
        lazyConnect: true,
        enableOfflineQueue: false,
        retryStrategy: () => null,
        maxRetriesPerRequest: 0,
      });
      c.on('error', () => {});
      clients.push(c);
      return new RedisBackend({ client: c, prefix: 'm:', timeoutMs: 500 });
    };
    const onError = () => {};
    const policy = { rate: 1, per: '1h', capacity: 2 };
    try {
      const fb = new SharedLimiter({ backend: dead(), name: 'pool-fallback', policy, onError });
      await fb.acquire('dave');
      await fb.tryAcquire('dave');
      const open = new SharedLimiter({
        backend: dead(),
        name: 'pool-open',
        policy,
        onBackendError: 'fail-open',
        onError,
      });
      await open.acquire('dave');
      const closed = new SharedLimiter({
        backend: dead(),
        name: 'pool-closed',
        policy,
        onBackendError: 'fail-closed',
        onError,
      });
      await expect(closed.acquire('dave')).rejects.toMatchObject({ code: 'ERR_TOLLGATE_BACKEND_UNAVAILABLE' });
      await expect(closed.tryAcquire('dave')).rejects.toMatchObject({ code: 'ERR_TOLLGATE_BACKEND_UNAVAILABLE' });
      const c = await collect();
      expect(c.decisions['pool-fallback']).toEqual({ fallback: 2 });
      expect(c.decisions['pool-open']).toEqual({ fallback: 1 });
      expect(c.decisions['pool-closed']).toEqual({ rejected: 2 });
      expect(c.queue['pool-fallback']).toBe(0);
      expect(c.attributes).toContainEqual({
        'tollgate.limiter': 'pool-closed',
        'tollgate.backend': 'redis',
        'tollgate.outcome': 'rejected',
      });
      expectNoKeyIn(c);
    } finally {
      for (const c of clients) c.disconnect();
    }
  });
});

describe('@tollgate/agent', () => {
  test("throttleTool counts through its limiter; the per-user queue counts 'queue_full' and its callers waiting", async () => {
    const { collect } = register();
    const limiter = new RateLimiter({ backend: new MemoryBackend(), name: 'tools', policy: { rate: 1, per: '1h' } });
    const search = throttleTool(async (q: string) => q.length, { limiter, maxWaitMs: 0 });
    expect(await withUser('tool-user', () => search('abc'))).toBe(3);
    await expect(withUser('tool-user', () => search('abc'))).rejects.toMatchObject({
      code: 'ERR_TOLLGATE_MAX_WAIT_EXCEEDED',
    });

    const queues = new PerUserQueues({ concurrency: 1, maxQueued: 1 });
    const release = await queues.enter('alice');
    const next = queues.enter('alice'); // waits for alice's slot
    await expect(queues.enter('alice')).rejects.toMatchObject({ code: 'ERR_TOLLGATE_QUEUE_FULL' });
    await expect(queues.enter('alice')).rejects.toMatchObject({ code: 'ERR_TOLLGATE_QUEUE_FULL' });
    const during = await collect();
    expect(during.queue['per-user']).toBe(1);
    release();
    (await next)();

    const c = await collect();
    expect(c.decisions.tools).toEqual({ allowed: 1, timeout: 1 });
    expect(c.decisions['per-user']).toEqual({ queue_full: 2 });
    expect(c.queue['per-user']).toBe(0);
    expect(c.attributes).toContainEqual({
      'tollgate.limiter': 'per-user',
      'tollgate.backend': 'memory',
      'tollgate.outcome': 'queue_full',
    });
    expectNoKeyIn(c);
  });
});

describe('the MeterProvider', () => {
  test('one registered after the limiter was made is picked up within 1024 decisions', async () => {
    metrics.disable();
    const l = new RateLimiter({
      backend: new MemoryBackend(),
      name: 'late',
      policy: { rate: 1, per: '1h', capacity: 2000 },
    });
    for (let i = 0; i < 10; i++) await l.tryAcquire('alice');
    const { collect } = register();
    for (let i = 0; i < 1100; i++) await l.tryAcquire('alice');
    // Counted before the provider came too: the counter is cumulative since the process began.
    expect((await collect()).decisions.late).toEqual({ allowed: 1110 });
  });

  test('one registered after the limiter was made is picked up at its first wait', async () => {
    metrics.disable();
    const l = new RateLimiter({
      backend: new MemoryBackend(),
      name: 'late-wait',
      policy: { rate: 20, per: '1s', capacity: 1 },
    });
    const { collect } = register();
    await l.acquire('alice'); // at once: the limiter has not looked the provider up yet
    const g = await l.acquire('alice'); // waits ~50 ms: looks it up, and records its wait
    const c = await collect();
    expect(c.decisions['late-wait']).toEqual({ allowed: 2 });
    expect(c.waits['late-wait']?.count).toBe(1);
    expect(c.waits['late-wait']?.max).toBeCloseTo(g.waitedMs / 1000, 6);
    expect(g.waitedMs).toBeGreaterThanOrEqual(45);
  });
});
