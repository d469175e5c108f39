/**
 * SharedLimiter across processes sharing one Redis: each process queues callers on its keys;
 * the shares, the bound b + r·T and the light key's wait are measured over all of them.
 * The children start together (runTogether). Margins hold on a busy 2-core machine: shares are
 * ratios over a window every process ran through, the bound an upper bound, waits compared with
 * what a backlog would cost.
 */
import { afterAll, beforeAll, expect, test } from 'vitest';
import { type RedisServer, startRedis } from './support/redis.ts';
import { lastJson, runTogether } from './support/spawn.ts';

let srv: RedisServer;
beforeAll(async () => {
  srv = await startRedis();
});
afterAll(() => srv.stop());

interface Out {
  /** When the child got GO (epoch ms). */
  go: number;
  at: Record<string, number[]>;
  lightWaits: number[];
}

async function run(
  prefix: string,
  procs: Array<{ keys: string[]; light?: { key: string; everyMs: number } }>,
  o: { rate: number; capacity: number; weights: Record<string, number>; calls: number; ms: number },
): Promise<Out[]> {
  const children = await runTogether(
    'test/workers/shared-load.ts',
    procs.map((p) => [
      JSON.stringify({
        port: srv.port,
        prefix,
        keys: p.keys,
        light: p.light,
        weights: o.weights,
        policy: { rate: o.rate, per: '1s', capacity: o.capacity },
        ms: o.ms,
        calls: o.calls,
      }),
    ]),
  );
  return children.map((r) => lastJson<Out>(r));
}

test('keys weighted 1 : 2 : 4 share the pool 1/7, 2/7, 4/7 (±5%), however many processes each key calls from', async () => {
  // Key a calls from all three processes, c from two, b from one. Each process serves a third
  // of the admissions (1/21 of a's, 2/7 of b's or c's), so a busy machine's CPU starvation
  // hits every process, and so every key, alike. Were each process's callers of a key a share
  // of their own, the shares would be 3 : 2 : 8 (a 23%, b 15%, c 62%).
  const rate = 150;
  const outs = await run('mp1:', [{ keys: ['a', 'b'] }, { keys: ['a', 'c'] }, { keys: ['a', 'c'] }], {
    rate,
    capacity: 10,
    weights: { a: 1, b: 2, c: 4 },
    calls: 800,
    ms: 6000,
  });
  const all = (k: string) => outs.flatMap((o) => o.at[k] ?? []);
  // Every process is queueing from its GO on; skip the first second (the pool's capacity, the
  // first turns) and stop 500 ms before the first process stops waiting.
  const start = Math.min(...outs.map((o) => o.go));
  const from = Math.max(...outs.map((o) => o.go)) + 1000;
  const to = Math.min(...outs.map((o) => o.go)) + 5500;
  const n = Object.fromEntries(
    ['a', 'b', 'c'].map((k) => [k, all(k).filter((t) => t >= from && t < to).length]),
  ) as Record<string, number>;
  const total = (n.a as number) + (n.b as number) + (n.c as number);
  if (process.env.TOLLGATE_DEBUG)
    console.log({
      perProcess: outs.map(
        (o) =>
          Object.values(o.at)
            .flat()
            .filter((t) => t >= from && t < to).length,
      ),
      n,
      total,
      windowMs: to - from,
      shares: [n.a, n.b, n.c].map((x) => (x as number) / total),
    });
  // Work-conserving: the pool runs near its rate (lower bound with a wide margin).
  expect(total).toBeGreaterThan((0.5 * rate * (to - from)) / 1000);
  expect((n.a as number) / total).toBeGreaterThan((1 / 7) * 0.95);
  expect((n.a as number) / total).toBeLessThan((1 / 7) * 1.05);
  expect((n.b as number) / total).toBeGreaterThan((2 / 7) * 0.95);
  expect((n.b as number) / total).toBeLessThan((2 / 7) * 1.05);
  expect((n.c as number) / total).toBeGreaterThan((4 / 7) * 0.95);
  expect((n.c as number) / total).toBeLessThan((4 / 7) * 1.05);
  // The bound over the whole run, across processes: capacity + rate × (last admission − first GO).
  const times = outs.flatMap((o) => Object.values(o.at).flat());
  const last = Math.max(...times);
  expect(times.length).toBeLessThanOrEqual(10 + (rate * (last - start)) / 1000 + 1);
}, 60_000);

test('a light key calling now and then waits about its share interval, not behind a 2000-call backlog in another process', async () => {
  const outs = await run('mp2:', [{ keys: ['heavy'] }, { keys: [], light: { key: 'light', everyMs: 200 } }], {
    rate: 100,
    capacity: 5,
    weights: {},
    calls: 2000,
    ms: 4000,
  });
  const waits = outs[1]?.lightWaits ?? [];
  expect(waits.length).toBeGreaterThanOrEqual(5);
  // Its share interval: 2 keys at 100/s, one turn each 20 ms. Behind the heavy backlog it would
  // wait seconds (2000 calls at 100/s take 20 s). The median under 100 ms (5 turns) and every
  // wait under 2 s hold when the machine is 3× slower.
  const sorted = [...waits].sort((x, y) => x - y);
  if (process.env.TOLLGATE_DEBUG) console.log({ waits: sorted });
  expect(sorted[Math.floor(sorted.length / 2)]).toBeLessThan(100);
  expect(Math.max(...waits)).toBeLessThan(2000);
}, 60_000);
