/**
 * Redis Cluster under faults and load: a master killed and failed over to its replica, and four
 * processes sharing one key across a 3-master cluster (Redis alone and hybrid).
 */
import { RateLimiter, RedisBackend, isBackendUnavailableError } from '@tollgate/core';
import { describe, expect, test } from 'vitest';
import { Watched, failOnUnhandledRejections, load, percentile, sleep, timerLag, within } from './support/faults.ts';
import { startCluster } from './support/redis.ts';
import { admissionBounds, runLoad } from './support/load.ts';

failOnUnhandledRejections();

const TIMEOUT_MS = 500;
const debug = (...args: unknown[]) => {
  if (process.env.TOLLGATE_DEBUG) console.log(...args);
};

test('a master is killed and fails over to its replica under load: calls keep being decided', async () => {
  const cluster = await startCluster({ masters: 3, replicas: 1 });
  try {
    const client = cluster.client({ enableAutoPipelining: true });
    const watched = new Watched(new RedisBackend({ client, prefix: 'fo:', timeoutMs: TIMEOUT_MS }));
    const rate = 50;
    const capacity = 10;
    const limiter = new RateLimiter({ backend: watched, policy: { rate, per: '1s', capacity } });
    const users = Array.from({ length: 24 }, (_, i) => `user-${i}`);
    for (const u of users) await limiter.tryAcquire(u, { cost: 0.001 });
    const victim = await cluster.masterOf(`fo:{user-0}:default`);
    const onVictim: string[] = [];
    for (const u of users) if ((await cluster.masterOf(`fo:{${u}}:default`)) === victim) onVictim.push(u);
    // Let the replica catch up with the warm-up writes.
    await sleep(200);

    let stop = false;
    const admitted = new Map<string, number>();
    const lag = timerLag();
    const t0 = performance.now();
    const tries = load(
      async (i) => {
        const u = users[i % users.length] as string;
        const ok = (await limiter.tryAcquire(u)).allowed;
        if (ok) admitted.set(u, (admitted.get(u) ?? 0) + 1);
        return ok;
      },
      { concurrency: 48, stop: () => stop },
    );
    await sleep(500);
    const killedAt = performance.now();
    const promoted = await cluster.failover(victim, { kill: true });
    const okAt = performance.now();
    await sleep(1500);
    stop = true;
    const t = await within(tries, 10_000, 'the load');
    const lagMs = lag.maxMs();
    lag.stop();
    const elapsedS = (performance.now() - t0) / 1000;

    const ms = t.map((c) => c.ms);
    const answeredAfter = watched.answers.filter((a) => a >= okAt).length;
    const firstAfter = watched.firstAnswerAfter(okAt);
    // Longest stretch with no call settling at all, across the failover.
    const ends = t.map((c) => c.start + c.ms).sort((a, b) => a - b);
    let stall = 0;
    for (let i = 1; i < ends.length; i++) stall = Math.max(stall, (ends[i] as number) - (ends[i - 1] as number));
    // Over-admission on the failed-over master's users: admitted vs b + r·T each.
    const nominal = capacity + rate * elapsedS;
    const worst = Math.max(...onVictim.map((u) => admitted.get(u) ?? 0));
    debug('failover', {
      victim,
      promoted,
      failoverMs: okAt - killedAt,
      calls: t.length,
      p99: percentile(ms, 99),
      max: Math.max(...ms),
      stall,
      answeredAfter,
      redisBackAfterOkMs: (firstAfter ?? Number.NaN) - okAt,
      onVictim: onVictim.length,
      worstVictimAdmitted: worst,
      nominal,
      lagMs,
      others: Math.max(...users.filter((u) => !onVictim.includes(u)).map((u) => admitted.get(u) ?? 0)),
    });
    expect(t.filter((c) => c.outcome === 'error')).toEqual([]);
    // Every call settles within the timeout, and calls never stopped being decided (the breaker
    // answers from memory while the slot moves): plus however late this process's timers ran.
    expect(Math.max(...ms)).toBeLessThanOrEqual(TIMEOUT_MS * 1.2 + 150 + lagMs);
    expect(stall).toBeLessThanOrEqual(TIMEOUT_MS + 150 + lagMs);
    // Redis decides again once the cluster is ok.
    expect(answeredAfter).toBeGreaterThan(100);
    expect((firstAfter ?? Number.POSITIVE_INFINITY) - okAt).toBeLessThanOrEqual(2000);
    // Over-admission is bounded: the fallback bucket during the outage plus Redis's (replicated)
    // bucket, at most about one extra capacity and the rate over the outage.
    expect(worst).toBeLessThanOrEqual(nominal + capacity + rate * ((okAt - killedAt) / 1000) + 1);
  } finally {
    await cluster.stop();
  }
}, 40_000);

test("a master is killed: keys of the healthy masters never see the failure policy, and the dead master's keys come back after the failover", async () => {
  // cluster-require-full-coverage no: otherwise Redis itself refuses every slot while one master is down.
  const cluster = await startCluster({ masters: 3, replicas: 1, nodeTimeoutMs: 1000, requireFullCoverage: false });
  try {
    const client = cluster.client({ enableAutoPipelining: true });
    // 1 s: a deadline that only a dead master misses, not a healthy one on a busy machine.
    const backend = new RedisBackend({ client, prefix: 'shard:', timeoutMs: 1000 });
    const limiter = new RateLimiter({ backend, policy: { rate: 1e6, per: '1s' }, onBackendError: 'fail-closed' });
    const users = Array.from({ length: 30 }, (_, i) => `user-${i}`);
    for (const u of users) await limiter.tryAcquire(u); // slots known, scripts loaded
    const victim = await cluster.masterOf('shard:{user-0}:default');
    const onVictim = new Set<string>();
    for (const u of users) if ((await cluster.masterOf(`shard:{${u}}:default`)) === victim) onVictim.add(u);
    expect(onVictim.size).toBeGreaterThan(0);
    expect(onVictim.size).toBeLessThan(users.length);
    await sleep(200); // let the replicas catch up

    let stop = false;
    let killedAt = Number.POSITIVE_INFINITY;
    const healthy = { ok: 0, failed: 0, firstFailure: '' };
    const dead = { okAfterFailover: 0, failed: 0, lastFailureAt: 0, lastOkAt: 0 };
    let okAt = Number.POSITIVE_INFINITY;
    const loop = async (u: string) => {
      while (!stop) {
        try {
          await limiter.tryAcquire(u);
          if (!onVictim.has(u)) healthy.ok++;
          else {
            dead.lastOkAt = performance.now();
            if (dead.lastOkAt > okAt) dead.okAfterFailover++;
          }
        } catch (e) {
          if (!onVictim.has(u)) {
            healthy.failed++;
            healthy.firstFailure ||= `${u} at +${Math.round(performance.now() - killedAt)} ms: ${String(e)} (${String((e as Error).cause)})`;
          } else {
            expect(isBackendUnavailableError(e)).toBe(true);
            dead.failed++;
            dead.lastFailureAt = performance.now();
          }
          await sleep(5);
        }
      }
    };
    const loops = users.map(loop);
    await sleep(300);
    killedAt = performance.now();
    await cluster.failover(victim, { kill: true });
    okAt = performance.now();
    // Generous: the client learns the new slot owner, the breaker probes every 500 ms.
    await sleep(4000);
    stop = true;
    await within(Promise.all(loops), 10_000, 'the load');
    debug('per-shard breaker', {
      healthy,
      dead,
      failoverMs: okAt - killedAt,
      lastDeadFailureAfterOk: dead.lastFailureAt - okAt,
    });
    expect(healthy.failed, healthy.firstFailure).toBe(0);
    expect(healthy.ok).toBeGreaterThan(100);
    // The dead master's keys did fail while it was down, and Redis decides them again after: the
    // run ends with them decided (their last failure came before their last decision).
    expect(dead.failed).toBeGreaterThan(0);
    expect(dead.okAfterFailover).toBeGreaterThan(0);
    expect(dead.lastOkAt).toBeGreaterThan(dead.lastFailureAt);
  } finally {
    await cluster.stop();
  }
}, 60_000);

describe('4 processes × 100 concurrent tryAcquire on one key of a 3-master cluster', () => {
  test.each([
    'redis',
    'hybrid',
  ] as const)('%s admits at most b + r·T + 1, and at least 90% of r·T, T the time they called', async (backend) => {
    const cluster = await startCluster({ masters: 3 });
    try {
      const policy = { rate: 200, per: '1s', capacity: 50 };
      const durationMs = 2500;
      const ports = cluster.nodes.map((n) => n.port);
      const totals = await runLoad(4, {
        cluster: ports,
        backend,
        prefix: `cl-${backend}:`,
        key: 'shared',
        policy,
        durationMs,
        concurrency: 100,
        timeoutMs: 2000,
      });
      const { admitted, errors, first, last, errorSamples, results } = totals;
      const { upper, lower } = admissionBounds(policy, totals);
      debug('cluster load', backend, {
        admitted,
        upper,
        lower,
        spanMs: last - first,
        per: results.map((r) => [r.admitted, r.rejected, r.first - first, last - r.last]),
      });
      expect(errors, errorSamples).toBe(0);
      // Started together: each child called for durationMs, so T ≥ 2500 ms and ~550 were due.
      expect(last - first).toBeGreaterThanOrEqual(durationMs);
      expect(admitted).toBeLessThanOrEqual(upper);
      expect(admitted).toBeGreaterThanOrEqual(lower);
    } finally {
      await cluster.stop();
    }
  }, 60_000);
});
