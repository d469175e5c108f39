/**
 * Redis fails under load — killed and restarted, asleep, paused, its script cache flushed — and
 * every call still settles in time, each failure policy does what it says, no rejection goes
 * unhandled, and Redis is authoritative again soon after it answers.
 */
import {
  type BackendErrorPolicy,
  BackendUnavailableError,
  HybridBackend,
  RateLimiter,
  RedisBackend,
  isTollgateError,
} from '@tollgate/core';
import { redisKey } from '@tollgate/core/internal';
import type { Redis } from 'ioredis';
import { describe, expect, test } from 'vitest';
import {
  type Call,
  Watched,
  failOnUnhandledRejections,
  load,
  percentile,
  sleep,
  timerLag,
  within,
} from './support/faults.ts';
import { decodeBucket } from '@tollgate/core/internal';
import { startRedis } from './support/redis.ts';

failOnUnhandledRejections();

/** The ioredis options the README recommends (no re-sends; reconnect within 0.5 s). */
const RECOMMENDED = {
  autoResendUnfulfilledCommands: false,
  retryStrategy: (times: number) => Math.min(times * 50, 500),
};
const TIMEOUT_MS = 500;
const debug = (...args: unknown[]) => {
  if (process.env.TOLLGATE_DEBUG) console.log(...args);
};

const inWindow = (calls: Call[], from: number, to: number) => calls.filter((c) => c.start >= from && c.start < to);

describe.each([
  'fail-open',
  'fail-closed',
  'fallback',
] as BackendErrorPolicy[])('kill -9 of Redis under load, %s', (policy) => {
  test('every call settles in time, the policy decides while Redis is down, Redis decides again ≤ 2 s after restart', async () => {
    const srv = await startRedis();
    try {
      const client = srv.client(RECOMMENDED);
      const watched = new Watched(new RedisBackend({ client, prefix: 'k9:', timeoutMs: TIMEOUT_MS }));
      const rate = 100;
      const capacity = 20;
      const limiter = new RateLimiter({
        backend: watched,
        policy: { rate, per: '1s', capacity },
        onBackendError: policy,
      });
      await limiter.tryAcquire('warm-up');
      let stop = false;
      const lag = timerLag();
      // 40 loops of tryAcquire over 8 users, and 10 loops queueing in acquire on 2 users.
      const tries = load(async (i) => (await limiter.tryAcquire(`user-${i % 8}`)).allowed, {
        concurrency: 40,
        stop: () => stop,
      });
      const acquires = load(
        async (i) => {
          await limiter.acquire(`queue-${i % 2}`, { maxWaitMs: 2000 });
          return true;
        },
        { concurrency: 10, stop: () => stop },
      );
      await sleep(300);
      const killedAt = performance.now();
      await srv.kill9();
      await sleep(1200);
      await srv.restart(); // resolves once the new process answers PING
      const restartedAt = performance.now();
      await sleep(2500);
      stop = true;
      const [t, a] = await within(Promise.all([tries, acquires]), 10_000, 'the load');
      const lagMs = lag.maxMs();
      lag.stop();

      const recoveredAt = watched.firstAnswerAfter(restartedAt);
      const recoveryMs = recoveredAt === undefined ? Number.POSITIVE_INFINITY : recoveredAt - restartedAt;
      const maxTry = Math.max(...t.map((c) => c.ms));
      const maxAcquire = Math.max(...a.map((c) => c.ms));
      // Calls that began once the failure was known and before Redis came back.
      const down = inWindow(t, killedAt + TIMEOUT_MS + 100, restartedAt);
      const after = inWindow([...t, ...a], (recoveredAt ?? restartedAt) + 100, Number.POSITIVE_INFINITY);
      debug(policy, {
        calls: t.length + a.length,
        recoveryMs,
        maxTry,
        maxAcquire,
        p99Try: percentile(
          t.map((c) => c.ms),
          99,
        ),
        down: down.length,
        downAllowed: down.filter((c) => c.outcome === 'allowed').length,
        downErrors: down.filter((c) => c.outcome === 'error').length,
        after: after.length,
        lagMs,
      });

      expect(recoveryMs).toBeLessThanOrEqual(2000);
      // tryAcquire settles within the Redis timeout, acquire within its maxWaitMs: plus scheduling
      // slack and however late this process's timers ran (a busy machine starves it).
      expect(maxTry).toBeLessThanOrEqual(TIMEOUT_MS * 1.2 + 100 + lagMs);
      expect(maxAcquire).toBeLessThanOrEqual(2000 + TIMEOUT_MS + 200 + lagMs);
      // Every error is a typed Tollgate error; none comes from ioredis.
      for (const c of [...t, ...a])
        if (c.outcome === 'error') expect(isTollgateError(c.error), String(c.error)).toBe(true);
      expect(down.length).toBeGreaterThan(100);
      if (policy === 'fail-open') {
        expect(down.every((c) => c.outcome === 'allowed')).toBe(true);
      } else if (policy === 'fail-closed') {
        expect(down.every((c) => c.outcome === 'error' && c.error instanceof BackendUnavailableError)).toBe(true);
      } else {
        expect(down.filter((c) => c.outcome === 'error')).toEqual([]);
        // Decided on local buckets: at most capacity + rate × the outage per user (8 users).
        const outageS = (restartedAt - killedAt) / 1000;
        expect(down.filter((c) => c.outcome === 'allowed').length).toBeLessThanOrEqual(8 * (capacity + rate * outageS));
        expect(down.filter((c) => c.outcome === 'rejected').length).toBeGreaterThan(0);
      }
      // Once Redis is back, no call fails, whatever the policy.
      expect(after.length).toBeGreaterThan(100);
      expect(after.filter((c) => c.outcome === 'error')).toEqual([]);
    } finally {
      await srv.stop();
    }
  }, 20_000);
});

/** Redis's view of a bucket: its tokens, or undefined when the key does not exist (full). */
async function tokensInRedis(admin: Redis, prefix: string, key: string): Promise<number | undefined> {
  return decodeBucket(await admin.getBuffer(redisKey(prefix, key, 'default')))?.tokens;
}

describe.each([
  ['DEBUG SLEEP 2', (admin: Redis) => admin.call('DEBUG', 'SLEEP', '2')],
  ['CLIENT PAUSE 2000', (admin: Redis) => admin.call('CLIENT', 'PAUSE', '2000', 'ALL')],
] as const)('%s under load', (what, freeze) => {
  test('calls settle within the timeout + 20% at p99, and the commands Redis ran late charged nothing', async () => {
    const srv = await startRedis();
    try {
      // ioredis defaults on purpose: the deadline must hold without the recommended options.
      const client = srv.client();
      const admin = srv.client();
      const prefix = 'freeze:';
      const watched = new Watched(new RedisBackend({ client, prefix, timeoutMs: TIMEOUT_MS }));
      const limiter = new RateLimiter({ backend: watched, policy: { rate: 100, per: '1s', capacity: 1000 } });
      await limiter.tryAcquire('warm-up');
      let stop = false;
      const lag = timerLag();
      const tries = load(async (i) => (await limiter.tryAcquire(`user-${i % 8}`)).allowed, {
        concurrency: 40,
        stop: () => stop,
      });
      await sleep(300);
      const frozenAt = performance.now();
      void freeze(admin).catch(() => {});
      await sleep(20);
      // Sent while Redis is frozen: it will run after the caller has given up.
      const late = await limiter.tryAcquire('late-user', { cost: 10 });
      await sleep(3500);
      stop = true;
      const t = await within(tries, 10_000, 'the load');
      const lagMs = lag.maxMs();
      lag.stop();
      const ms = t.map((c) => c.ms);
      const p99 = percentile(ms, 99);
      // Redis wakes ~2 s after the freeze began (it began at most 20 ms after frozenAt).
      const recoveredAt = watched.firstAnswerAfter(frozenAt + 2000);
      const frozen = inWindow(t, frozenAt, frozenAt + 2000).map((c) => c.ms);
      debug(what, {
        calls: t.length,
        p50: percentile(ms, 50),
        p99,
        max: Math.max(...ms),
        duringFreeze: { calls: frozen.length, p99: percentile(frozen, 99), max: Math.max(...frozen) },
        recoveredAfterWakeMs: (recoveredAt ?? Number.NaN) - (frozenAt + 2020),
        lagMs,
      });
      expect(late.allowed).toBe(true); // decided by the fallback bucket after the timeout
      // Within the timeout + 20%, plus however late this process's timers ran (Redis sleeps 2 s:
      // without the deadline, calls would wait that long).
      expect(p99).toBeLessThanOrEqual(TIMEOUT_MS * 1.2 + lagMs);
      expect(percentile(frozen, 99)).toBeLessThanOrEqual(TIMEOUT_MS * 1.2 + lagMs);
      expect(Math.max(...ms)).toBeLessThanOrEqual(TIMEOUT_MS * 1.2 + 150 + lagMs);
      expect(t.filter((c) => c.outcome === 'error')).toEqual([]);
      // The frozen command ran after its deadline: the bucket of 'late-user' was never charged.
      expect(await tokensInRedis(admin, prefix, 'late-user')).toBeUndefined();
      // And Redis decides again within 2 s of waking.
      expect((recoveredAt ?? Number.POSITIVE_INFINITY) - (frozenAt + 2020)).toBeLessThanOrEqual(2000);
    } finally {
      await srv.stop();
    }
  }, 20_000);
});

describe.each([
  ['redis', false],
  ['redis', true],
  ['hybrid', false],
] as const)('SCRIPT FLUSH five times under load (%s, auto-pipelining %s)', (kind, enableAutoPipelining) => {
  test('no error reaches a caller, and the backend never fails', async () => {
    const srv = await startRedis();
    try {
      const client = srv.client({ enableAutoPipelining });
      const admin = srv.client();
      // A flush is no failure: a deadline that only a busy machine could miss would test the scheduler.
      const options = { client, prefix: 'flush:', timeoutMs: 5000 };
      const backend = kind === 'hybrid' ? new HybridBackend(options) : new RedisBackend(options);
      const failures: unknown[] = [];
      const limiter = new RateLimiter({
        backend,
        policy: { rate: 1000, per: '1s' },
        onBackendError: 'fail-closed', // any backend failure would reach the caller
        onError: (e) => failures.push(e),
      });
      let stop = false;
      const tries = load(async (i) => (await limiter.tryAcquire(`user-${i % 16}`)).allowed, {
        concurrency: 40,
        stop: () => stop,
        gapMs: 1,
      });
      for (let i = 0; i < 5; i++) {
        await sleep(150);
        await admin.script('FLUSH');
      }
      await sleep(150);
      stop = true;
      const t = await within(tries, 10_000, 'the load');
      debug('flush', kind, enableAutoPipelining, { calls: t.length, failures: failures.map(String) });
      expect(t.length).toBeGreaterThan(500);
      expect(t.filter((c) => c.outcome === 'error').map((c) => String(c.error))).toEqual([]);
      expect(failures.map(String)).toEqual([]);
    } finally {
      await srv.stop();
    }
  }, 20_000);
});

/** How many times Redis ran the bucket script (EVALSHA + EVAL) so far. */
async function scriptRuns(admin: Redis): Promise<number> {
  const info = await admin.info('commandstats');
  let n = 0;
  for (const m of info.matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+)/g)) n += Number(m[1]);
  return n;
}

describe.each([
  ['ioredis defaults (re-sends after reconnect)', {}, 1],
  ['autoResendUnfulfilledCommands: false', { autoResendUnfulfilledCommands: false }, 0],
] as const)('a connection dropped while its command waits in Redis: %s', (_what, options, resent) => {
  test('the command, re-sent or not, never charges the bucket after its caller gave up', async () => {
    const srv = await startRedis();
    try {
      const client = srv.client(options);
      const admin = srv.client();
      const prefix = 'resend:';
      const limiter = new RateLimiter({
        backend: new RedisBackend({ client, prefix, timeoutMs: 300 }),
        policy: { rate: 1, per: '1h', capacity: 10 },
      });
      await limiter.tryAcquire('warm-up');
      const id = await client.client('ID');
      const runsBefore = await scriptRuns(admin);
      // Redis holds writes (scripts included) for 1 s; the command waits inside Redis.
      await admin.call('CLIENT', 'PAUSE', '1000', 'WRITE');
      const lag = timerLag();
      const t0 = performance.now();
      const call = limiter.tryAcquire('victim', { cost: 4 });
      await sleep(50);
      // The connection drops with the command unanswered; ioredis reconnects at once.
      await admin.call('CLIENT', 'KILL', 'ID', String(id));
      const d = await call;
      const settledMs = performance.now() - t0;
      const lagMs = lag.maxMs();
      lag.stop();
      await sleep(1300); // the pause is over: anything re-sent has run by now
      const runs = (await scriptRuns(admin)) - runsBefore;
      debug('resend', _what, { settledMs, runs, lagMs });
      expect(d.allowed).toBe(true); // decided by the fallback after the 300 ms timeout
      // Redis holds it 1 s: settled by the timeout, plus however late this process's timers ran.
      expect(settledMs).toBeLessThanOrEqual(300 * 1.2 + 100 + lagMs);
      expect(runs).toBe(resent);
      expect(await tokensInRedis(admin, prefix, 'victim')).toBeUndefined();
      // The connection is usable again and the bucket is whole: all 10 tokens are there.
      expect(await limiter.tryAcquire('victim', { cost: 10 })).toMatchObject({ allowed: true, remaining: 0 });
    } finally {
      await srv.stop();
    }
  }, 15_000);
});
