/**
 * SharedLimiter across processes sharing one Redis: each process queues callers on its keys;
 * the shares, the bound b + r·T and the light key's wait are measured over all of them.
 * Margins hold on a busy 2-core machine: shares are ratios, the bound an upper bound.
 */
import { afterAll, beforeAll, expect, test } from 'vitest';
import { type RedisServer, startRedis } from './support/redis.ts';
import { lastJson, runTs } from './support/spawn.ts';

let srv: RedisServer;
beforeAll(async () => {
  srv = await startRedis();
});
afterAll(() => srv.stop());

interface Out {
  at: Record<string, number[]>;
  lightWaits: number[];
}

function run(prefix: string, procs: Array<{ keys: string[]; light?: { key: string; everyMs: number } }>, o: { rate: number; capacity: number; weights: Record<string, number>; calls: number; ms: number }) {
  const startAt = Date.now() + 5000; // child processes start tsx first: slow on a busy machine
  const stopAt = startAt + o.ms;
  return {
    startAt,
    results: Promise.all(
      procs.map((p) =>
        runTs('test/workers/shared-load.ts', [
          JSON.stringify({
            port: srv.port,
            prefix,
            keys: p.keys,
            light: p.light,
            weights: o.weights,
            policy: { rate: o.rate, per: '1s', capacity: o.capacity },
            startAt,
            stopAt,
            calls: o.calls,
          }),
        ]).then((r) => lastJson<Out>(r)),
      ),
    ),
  };
}

test('keys weighted 1 : 2 : 4 share the pool 1/7, 2/7, 4/7 (±5%), however many processes each key calls from', async () => {
  // Key a calls from all three processes; b and c from one each.
  const { startAt, results } = run('mp1:', [{ keys: ['a', 'b', 'c'] }, { keys: ['a'] }, { keys: ['a'] }], {
    rate: 150,
    capacity: 10,
    weights: { a: 1, b: 2, c: 4 },
    calls: 2000,
    ms: 6000,
  });
  const outs = await results;
  const all = (k: string) => outs.flatMap((o) => o.at[k] ?? []);
  const from = startAt + 1000;
  const to = startAt + 5500;
  const n = Object.fromEntries(['a', 'b', 'c'].map((k) => [k, all(k).filter((t) => t >= from && t < to).length])) as Record<string, number>;
  const total = (n.a as number) + (n.b as number) + (n.c as number);
  // Work-conserving: the pool runs near its rate (lower bound with a wide margin).
  expect(total).toBeGreaterThan(0.5 * 150 * 4.5);
  expect((n.a as number) / total).toBeGreaterThan((1 / 7) * 0.95);
  expect((n.a as number) / total).toBeLessThan((1 / 7) * 1.05);
  expect((n.b as number) / total).toBeGreaterThan((2 / 7) * 0.95);
  expect((n.b as number) / total).toBeLessThan((2 / 7) * 1.05);
  expect((n.c as number) / total).toBeGreaterThan((4 / 7) * 0.95);
  expect((n.c as number) / total).toBeLessThan((4 / 7) * 1.05);
  // The bound over the whole run, across processes: capacity + rate × (last admission − start).
  const times = outs.flatMap((o) => Object.values(o.at).flat());
  const last = Math.max(...times);
  expect(times.length).toBeLessThanOrEqual(10 + (150 * (last - startAt)) / 1000 + 1);
}, 60_000);

test('a light key calling now and then waits about its share interval, not behind a 2000-call backlog in another process', async () => {
  const { results } = run('mp2:', [{ keys: ['heavy'] }, { keys: [], light: { key: 'light', everyMs: 200 } }], {
    rate: 100,
    capacity: 5,
    weights: {},
    calls: 2000,
    ms: 4000,
  });
  const outs = await results;
  const waits = outs[1]?.lightWaits ?? [];
  expect(waits.length).toBeGreaterThanOrEqual(5);
  // Its share interval: 2 keys at 100/s, one turn each 20 ms; the heavy backlog is 20 s long.
  // Median under 100 ms, every wait under 500 ms, on a busy machine.
  const sorted = [...waits].sort((x, y) => x - y);
  expect(sorted[Math.floor(sorted.length / 2)]).toBeLessThan(100);
  expect(Math.max(...waits)).toBeLessThan(500);
}, 60_000);
