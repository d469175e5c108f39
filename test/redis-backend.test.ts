/**
 * RedisBackend against real servers: every call is answered after the script cache is flushed
 * under load, and a decision whose reply was lost and which ioredis re-sent is charged once.
 */
import { type PolicyInput, RateLimiter, RedisBackend } from '@tollgate/core';
import { decodeBucket, normalizePolicy } from '@tollgate/core/internal';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { startDropProxy } from './support/drop-proxy.ts';
import { type RedisCluster, type RedisServer, startCluster, startRedis } from './support/redis.ts';

let srv: RedisServer;
let cluster: RedisCluster;
beforeAll(async () => {
  [srv, cluster] = await Promise.all([startRedis(), startCluster({ masters: 3 })]);
});
afterAll(() => Promise.all([srv?.stop(), cluster?.stop()]));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const evalCalls = async (admins: Redis[]): Promise<number> => {
  let n = 0;
  for (const a of admins) n += Number(/cmdstat_eval:calls=(\d+)/.exec(await a.info('commandstats'))?.[1] ?? 0);
  return n;
};

/**
 * `loops` loops on 5 keys (a quarter `acquire`, the rest `tryAcquire`) on a fail-closed limiter
 * while the script cache is flushed five times, 400 ms apart; what the callers saw.
 */
async function underFlushes(backend: RedisBackend, loops: number, admins: Redis[], policy: PolicyInput) {
  const limiter = new RateLimiter({ backend, policy, onBackendError: 'fail-closed', name: 'flush' });
  await limiter.tryAcquire('warm-up');
  let stop = false;
  let calls = 0;
  let slowest = 0;
  const errors: unknown[] = [];
  const loop = async (i: number) => {
    for (let n = 0; !stop; n++) {
      const key = `user-${(i + n) % 5}`;
      const t0 = performance.now();
      try {
        if (i % 4 === 0) await limiter.acquire(key);
        else await limiter.tryAcquire(key);
      } catch (e) {
        errors.push(e);
      }
      slowest = Math.max(slowest, performance.now() - t0);
      calls++;
      await new Promise((r) => setImmediate(r));
    }
  };
  const running = Array.from({ length: loops }, (_, i) => loop(i));
  const evalsBefore = await evalCalls(admins);
  for (let f = 0; f < 5; f++) {
    await sleep(400);
    await Promise.all(admins.map((a) => a.script('FLUSH')));
  }
  await sleep(400);
  stop = true;
  await Promise.all(running);
  return { calls, slowest, errors, evals: (await evalCalls(admins)) - evalsBefore };
}

describe('after SCRIPT FLUSH under load, every call is answered within a few round trips', () => {
  const timeoutMs = 1000;
  const generous = { rate: 1e6, per: '1s' } as const;
  // 50/s, 5 at once per key: `acquire` callers wait, holding reservations across the flushes.
  const tight = { rate: 50, per: '1s', capacity: 5 } as const;
  test.each([
    ['standalone, 20 concurrent loops (batched)', 'standalone', 20, generous],
    ['standalone, 20 concurrent loops, 50/s per key (acquire callers wait)', 'standalone', 20, tight],
    ['standalone, one loop (every call alone)', 'standalone', 1, generous],
    ['Cluster, 20 concurrent loops (batched)', 'cluster', 20, generous],
    ['Cluster, 20 concurrent loops, 50/s per key (acquire callers wait)', 'cluster', 20, tight],
    ['Cluster, one loop (every call alone)', 'cluster', 1, generous],
  ] as const)('%s', async (_, kind, loops, policy) => {
    const client = kind === 'standalone' ? srv.client() : cluster.client();
    const admins =
      kind === 'standalone'
        ? [srv.client()]
        : cluster.nodes.filter((n) => n.role === 'master').map((n) => cluster.nodeClient(n.port));
    const prefix = `flush-${kind}-${loops}-${policy.rate}:`;
    const r = await underFlushes(new RedisBackend({ client, prefix, timeoutMs }), loops, admins, policy);
    expect(r.errors.map(String)).toEqual([]);
    expect(r.slowest).toBeLessThan(timeoutMs / 2);
    // The flushes hit calls in flight: scripts went again as EVAL.
    expect(r.evals).toBeGreaterThanOrEqual(5);
    expect(r.calls).toBeGreaterThan(50);
  });
});

describe('Redis killed and restarted under load, with autoResendUnfulfilledCommands: false', () => {
  test('the calls in flight at the kill fail at once by the policy, none waits its timeout, and Redis decides again after the restart', async () => {
    const own = await startRedis();
    try {
      const timeoutMs = 2000;
      // The README's recommended options: ioredis drops, unanswered, what was in flight at a disconnect.
      const client = own.client({ autoResendUnfulfilledCommands: false, retryStrategy: () => 20 });
      const limiter = new RateLimiter({
        backend: new RedisBackend({ client, prefix: 'restart:', timeoutMs }),
        // Generous: nearly every call goes to Redis, so calls are in flight when it dies.
        policy: { rate: 1e6, per: '1s' },
        onBackendError: 'fail-closed',
        probeIntervalMs: 50,
      });
      await limiter.tryAcquire('warm-up');
      let stop = false;
      let slowest = 0;
      const seen: { at: number; outcome: string }[] = [];
      const loop = async (i: number) => {
        for (let n = 0; !stop; n++) {
          const key = `user-${(i + n) % 5}`;
          const t0 = performance.now();
          let outcome = 'decided';
          try {
            if (i % 4 === 0) await limiter.acquire(key, { maxWaitMs: 500 });
            else await limiter.tryAcquire(key);
          } catch (e) {
            outcome = (e as Error).name === 'MaxWaitExceededError' ? 'decided' : String(e);
          }
          const t1 = performance.now();
          slowest = Math.max(slowest, t1 - t0);
          seen.push({ at: t1, outcome });
          await new Promise((r) => setTimeout(r, outcome === 'decided' ? 0 : 5));
        }
      };
      const running = Array.from({ length: 20 }, (_, i) => loop(i));
      await sleep(300);
      await own.kill9();
      await sleep(200);
      await own.restart();
      const restartedAt = performance.now();
      await sleep(600);
      stop = true;
      await Promise.all(running);
      const failures = seen.filter((c) => c.outcome !== 'decided').map((c) => c.outcome);
      // Redis was down: fail-closed answered some calls with BackendUnavailableError, none with a timeout …
      expect(failures.length).toBeGreaterThan(0);
      expect(failures.filter((f) => !f.startsWith('BackendUnavailableError'))).toEqual([]);
      // … and no call waited for a reply that ioredis had dropped: each was answered well within
      // its 2 s timeout (it fails when the connection closes, not 2 s later).
      expect(slowest).toBeLessThan(timeoutMs / 2);
      // After the restart Redis decides again.
      expect(seen.filter((c) => c.at > restartedAt + 300 && c.outcome === 'decided').length).toBeGreaterThan(20);
    } finally {
      await own.stop();
    }
  });
});

describe('a decision whose reply was lost and that ioredis re-sent is charged once', () => {
  const policy = normalizePolicy({ rate: 1, per: '1h', capacity: 10 });

  async function setup(prefix: string) {
    const proxy = await startDropProxy(srv.port);
    const client = new Redis(proxy.port, '127.0.0.1', { retryStrategy: () => 10 });
    client.on('error', () => {});
    const admin = srv.client();
    const backend = new RedisBackend({ client, prefix, timeoutMs: 2000 });
    // One call first, so that the backend knows the server's clock and sends deadlines.
    await backend.tryTake('b', 'warm-up', policy, 1);
    const scriptCalls = async () => {
      let n = 0;
      for (const m of (await admin.info('commandstats')).matchAll(/cmdstat_eval(?:sha)?:calls=(\d+)/g))
        n += Number(m[1]);
      return n;
    };
    const tokens = async (key: string) => decodeBucket(await admin.getBuffer(`${prefix}{${key}}:b`))?.tokens;
    const done = async () => {
      client.disconnect();
      await proxy.close();
    };
    return { proxy, client, backend, scriptCalls, tokens, done };
  }

  test('a lone call: the re-sent command gets its first reply, and the bucket lost 1 token, not 2', async () => {
    const s = await setup('lost1:');
    const before = await s.scriptCalls();
    s.proxy.dropNextReply();
    const d = await s.backend.tryTake('b', 'u', policy, 1);
    expect(s.proxy.dropped).toBe(1);
    // It ran twice in Redis (sent, then re-sent after the reconnect) …
    expect((await s.scriptCalls()) - before).toBe(2);
    // … and was charged once: the reply is the first run's, and 9 of 10 tokens are left.
    expect(d).toMatchObject({ allowed: true, remaining: 9 });
    expect(await s.tokens('u')).toBeCloseTo(9, 3);
    await s.done();
  });

  test('a batch: each of its calls gets its first reply, and each is charged once', async () => {
    const s = await setup('lost2:');
    const before = await s.scriptCalls();
    s.proxy.dropNextReply();
    // The first goes alone, the other nine as one batch, both in flight when the reply is lost.
    const ds = await Promise.all(Array.from({ length: 10 }, () => s.backend.tryTake('b', 'u', policy, 1)));
    expect(s.proxy.dropped).toBe(1);
    expect((await s.scriptCalls()) - before).toBeGreaterThanOrEqual(3);
    expect(ds.map((d) => [d.allowed, d.remaining])).toEqual(Array.from({ length: 10 }, (_, i) => [true, 9 - i]));
    expect(await s.tokens('u')).toBeCloseTo(0, 3);
    // Charged exactly 10: an eleventh is refused.
    expect((await s.backend.tryTake('b', 'u', policy, 1)).allowed).toBe(false);
    await s.done();
  });

  test('a reserve and a refund re-sent after a lost reply change the bucket once each', async () => {
    const s = await setup('lost3:');
    s.proxy.dropNextReply();
    const r = await s.backend.reserve('b', 'u', policy, 4, Number.POSITIVE_INFINITY);
    expect(r).toMatchObject({ ok: true, remaining: 6, waitMs: 0 });
    expect(await s.tokens('u')).toBeCloseTo(6, 3);
    s.proxy.dropNextReply();
    await s.backend.refund('b', 'u', policy, 2);
    expect(s.proxy.dropped).toBe(2);
    expect(await s.tokens('u')).toBeCloseTo(8, 3);
    await s.done();
  });
});
