/**
 * What a user sees when the backend fails: `fail-closed` errors carry the backend's own error as
 * `cause` (the Redis client's, not a Tollgate wrapper).
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
import { afterAll, describe, expect, test } from 'vitest';

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
  const c = new Redis(await closedPort(), '127.0.0.1', { lazyConnect: true, enableOfflineQueue: false, retryStrategy: () => null, maxRetriesPerRequest: 0 });
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
  test.each(['RateLimiter', 'SharedLimiter'] as const)('%s on a Redis that is not there: the Redis client error, on every call of the outage', async (which) => {
    const backend = await deadRedis();
    const options = { backend, policy: { rate: 1, per: '1s' }, onBackendError: 'fail-closed' as const, probeIntervalMs: 20, onError: () => {} };
    const l = which === 'RateLimiter' ? new RateLimiter(options) : new SharedLimiter(options);
    const first = await rejection(l.acquire('alice'));
    expect(first.cause).toBeInstanceOf(Error);
    expect(first.cause).not.toBeInstanceOf(TollgateError);
    const redisMessage = (first.cause as Error).message;
    expect(first.message).toBe(`the redis backend is unavailable: ${redisMessage}`);
    // While the breaker is open, and after the probe fails again with the backend's own "the
    // connection is end" (a Tollgate error with nothing inside), the cause stays the client's.
    expect((await rejection(l.tryAcquire('alice'))).cause).toBe(first.cause);
    await sleep(40);
    expect((await rejection(l.acquire('alice'))).cause).toBe(first.cause);
    await sleep(40);
    expect((await rejection(l.tryAcquire('alice'))).cause).toBe(first.cause);
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
    const l = new RateLimiter({ backend: flaky, policy: { rate: 100, per: '1s' }, onBackendError: 'fail-closed', probeIntervalMs: 10, onError: () => {} });
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
