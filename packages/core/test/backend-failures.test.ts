/**
 * What a user sees when the backend fails: `fail-closed` errors carry the backend's own error as
 * `cause` (the Redis client's, not a Tollgate wrapper), and a limiter with no `onError` says so
 * once, with a process warning, instead of failing silently (a mistyped Redis URL).
 */
import net from 'node:net';
import {
  type Backend,
  BackendTimeoutError,
  BackendUnavailableError,
  MemoryBackend,
  RateLimiter,
  RedisBackend,
  SharedLimiter,
  TollgateError,
} from '@tollgate/core';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeEach, describe, expect, test } from 'vitest';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A loopback port nobody listens on. */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

const clients: Redis[] = [];
afterAll(() => {
  for (const c of clients) c.disconnect();
});

/** A RedisBackend on a port where no Redis listens; its client gives up at once. */
async function deadRedis(): Promise<RedisBackend> {
  const c = new Redis(await closedPort(), '127.0.0.1', {
    lazyConnect: true,
    enableOfflineQueue: false,
    retryStrategy: () => null,
    maxRetriesPerRequest: 0,
  });
  c.on('error', () => {});
  clients.push(c);
  return new RedisBackend({ client: c, timeoutMs: 500 });
}

async function rejection(p: Promise<unknown>): Promise<BackendUnavailableError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(BackendUnavailableError);
  return e as BackendUnavailableError;
}

describe("fail-closed: the error's cause is the backend's own error", () => {
  test.each([
    'RateLimiter',
    'SharedLimiter',
  ] as const)('%s on a Redis that is not there: the Redis client error, on every call of the outage', async (which) => {
    const backend = await deadRedis();
    const options = {
      backend,
      policy: { rate: 1, per: '1s' },
      onBackendError: 'fail-closed' as const,
      probeIntervalMs: 20,
      onError: () => {},
    };
    const l = which === 'RateLimiter' ? new RateLimiter(options) : new SharedLimiter(options);
    const first = await rejection(l.acquire('alice'));
    expect(first.cause).toBeInstanceOf(Error);
    expect(first.cause).not.toBeInstanceOf(TollgateError);
    const redisMessage = (first.cause as Error).message;
    expect(first.message).toBe(`the redis backend is unavailable: ${redisMessage}`);
    // While the breaker is open, and after the probe fails again with "the connection is end",
    // the cause is still an error of the client (the last one it emitted), never a Tollgate one.
    const clientError = (e: BackendUnavailableError) => {
      expect(e.cause).toBeInstanceOf(Error);
      expect(e.cause).not.toBeInstanceOf(TollgateError);
    };
    clientError(await rejection(l.tryAcquire('alice')));
    await sleep(40);
    clientError(await rejection(l.acquire('alice')));
    await sleep(40);
    clientError(await rejection(l.tryAcquire('alice')));
  });

  test('a Tollgate error wrapping the client error is unwrapped; a new outage after recovery has its own cause', async () => {
    const readonly = new Error("READONLY You can't write against a read only replica.");
    let fail: unknown = new BackendUnavailableError('the Redis connection failed', readonly);
    const mem = new MemoryBackend();
    const flaky: Backend = {
      kind: 'flaky',
      tryTake: (...a) => (fail !== undefined ? Promise.reject(fail) : mem.tryTake(...a)),
      reserve: (...a) => (fail !== undefined ? Promise.reject(fail) : mem.reserve(...a)),
      refund: (...a) => (fail !== undefined ? Promise.reject(fail) : mem.refund(...a)),
    };
    const l = new RateLimiter({
      backend: flaky,
      policy: { rate: 100, per: '1s' },
      onBackendError: 'fail-closed',
      probeIntervalMs: 10,
      onError: () => {},
    });
    const e = await rejection(l.acquire('bob'));
    expect(e.cause).toBe(readonly);
    expect(e.message).toBe("the flaky backend is unavailable: READONLY You can't write against a read only replica.");
    // Timeouts during the same outage do not hide what caused it.
    fail = new BackendTimeoutError(300);
    await sleep(20);
    expect((await rejection(l.acquire('bob'))).cause).toBe(readonly);
    // Redis is back: the breaker closes. The next outage is a timeout, and says so.
    fail = undefined;
    await sleep(20);
    await l.acquire('bob');
    const timeout = new BackendTimeoutError(300);
    fail = timeout;
    expect((await rejection(l.tryAcquire('bob'))).cause).toBe(timeout);
  });
});

describe('the first backend failure of a limiter with no onError prints one warning', () => {
  let warnings: Error[] = [];
  const listen = (w: Error) => {
    if ((w as { code?: string }).code === 'TOLLGATE_BACKEND_UNAVAILABLE') warnings.push(w);
  };
  beforeEach(() => {
    warnings = [];
    process.on('warning', listen);
  });
  afterEach(() => {
    process.off('warning', listen);
  });
  /** Warnings are emitted on the next tick. */
  const settle = () => new Promise<void>((r) => setImmediate(r));

  const broken = (): Backend => ({
    kind: 'broken',
    tryTake: () => Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:6390')),
    reserve: () => Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:6390')),
    refund: () => Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:6390')),
  });

  test('once per limiter, naming the limiter, the backend, the error and what onBackendError does now', async () => {
    const l = new RateLimiter({
      backend: broken(),
      name: 'llm-tokens',
      policy: { rate: 5, per: '1s' },
      probeIntervalMs: 10,
    });
    for (let i = 0; i < 3; i++) {
      await l.acquire('alice');
      await l.tryAcquire('alice');
      await sleep(15); // past the probe interval: each round fails on the backend again
    }
    await settle();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.name).toBe('TollgateWarning');
    expect(warnings[0]?.message).toBe(
      'RateLimiter "llm-tokens": the broken backend failed (connect ECONNREFUSED 127.0.0.1:6390). Until it answers again (tried every 10 ms), ' +
        "onBackendError 'fallback' decides calls on buckets in this process's memory (limits hold per process, not across processes). " +
        'Pass onError to the limiter to handle backend failures yourself; this warning is printed once per limiter.',
    );
    const closed = new RateLimiter({
      backend: broken(),
      policy: { rate: 5, per: '1s' },
      onBackendError: 'fail-closed',
    });
    await expect(closed.acquire('alice')).rejects.toBeInstanceOf(BackendUnavailableError);
    const open = new RateLimiter({ backend: broken(), policy: { rate: 5, per: '1s' }, onBackendError: 'fail-open' });
    await open.acquire('alice');
    await settle();
    expect(warnings.map((w) => w.message.split('. Until')[1]?.split('. Pass')[0])).toEqual([
      " it answers again (tried every 10 ms), onBackendError 'fallback' decides calls on buckets in this process's memory (limits hold per process, not across processes)",
      " it answers again (tried every 500 ms), onBackendError 'fail-closed' fails every call with BackendUnavailableError",
      " it answers again (tried every 500 ms), onBackendError 'fail-open' admits every call, with no limit",
    ]);
  });

  test('no warning when onError is given: onError sees every failure instead', async () => {
    const seen: unknown[] = [];
    const l = new RateLimiter({
      backend: broken(),
      policy: { rate: 5, per: '1s' },
      probeIntervalMs: 10,
      onError: (e) => seen.push(e),
    });
    for (let i = 0; i < 3; i++) {
      await l.acquire('alice');
      await sleep(15);
    }
    const s = new SharedLimiter({
      backend: await deadRedis(),
      policy: { rate: 5, per: '1s' },
      onError: (e) => seen.push(e),
    });
    await s.acquire('alice');
    await settle();
    expect(warnings).toHaveLength(0);
    expect(seen).toHaveLength(4);
  });

  test('a SharedLimiter on a Redis that is not there asks whether the Redis URL is right', async () => {
    const s = new SharedLimiter({ backend: await deadRedis(), name: 'org', policy: { rate: 5, per: '1s' } });
    await s.acquire('alice');
    await s.acquire('bob');
    await settle();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.message).toMatch(
      /^SharedLimiter "org": the redis backend failed \(.+\)\. Is the Redis URL right, and Redis reachable\? Until it answers again \(tried every 500 ms\), onBackendError 'fallback' decides/,
    );
  });

  test('a mistyped Redis URL: the first call waits timeoutMs and is decided by the fallback; one warning for six calls', async () => {
    const client = new Redis(`redis://127.0.0.1:${await closedPort()}`);
    // ioredis prints 'Unhandled error event' for every reconnect failure unless the application listens.
    client.on('error', () => {});
    const l = new RateLimiter({
      backend: new RedisBackend({ client, timeoutMs: 200 }),
      policy: { rate: 5, per: '1s' },
    });
    const g = await l.acquire('alice');
    for (let i = 0; i < 5; i++) await l.acquire('alice');
    await settle();
    expect(g.waitedMs).toBeGreaterThanOrEqual(150);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.message).toMatch(
      /^RateLimiter "default": the redis backend failed \(.+\)\. Is the Redis URL right, and Redis reachable\?/,
    );
    client.disconnect();
  });
});
