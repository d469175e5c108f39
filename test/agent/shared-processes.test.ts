/**
 * Shared pools across processes: two child processes, each a throttleOpenAI client whose
 * `shared` requests pool lives in one real Redis (policy 2× the provider's limit), call the
 * loopback OpenAI server of this process, which enforces 10 requests/s. The provider's headers
 * steer the pool for both processes, and a forced 429's retry time pauses both.
 */
import { afterAll, beforeAll, expect, test } from 'vitest';
import { type FakeOpenAI, startFakeOpenAI } from '../../examples/support/fake-openai.ts';
import { type RedisServer, startRedis } from '../support/redis.ts';
import { lastJson, runTs } from '../support/spawn.ts';

const MODEL = 'gpt-4o-mini';
const LIMIT = 10;

let srv: RedisServer;
let fake: FakeOpenAI;
beforeAll(async () => {
  srv = await startRedis();
  fake = await startFakeOpenAI({ limits: { [MODEL]: { requests: LIMIT, windowMs: 1000 } } });
});
afterAll(async () => {
  await fake.close();
  await srv.stop();
});

interface Out {
  calls: number;
  errors: string[];
  heardAt: number[];
}

test("two processes stay under the provider's limit from its headers, and a 429's retry-after-ms pauses both for 1.5 s", async () => {
  const startAt = Date.now() + 5000; // the children start tsx first: slow on a busy machine
  const stopAt = startAt + 5000;
  const procs = [
    ['acme', 'globex'],
    ['acme', 'initech'],
  ];
  const runs = Promise.all(
    procs.map((tenants) =>
      runTs('test/workers/agent-shared-load.ts', [
        JSON.stringify({
          redisPort: srv.port,
          prefix: 'agent-mp:',
          baseURL: fake.baseURL,
          model: MODEL,
          limit: LIMIT,
          tenants,
          loops: 3,
          startAt,
          stopAt,
        }),
      ]).then((r) => lastJson<Out>(r)),
    ),
  );
  setTimeout(() => fake.rateLimitNext(MODEL, 1, { retryAfterMs: 1500 }), startAt + 2000 - Date.now());
  const outs = await runs;

  // No caller in either process saw an error (the SDK's retries absorb the few 429s).
  expect(outs.map((o) => o.errors)).toEqual([[], []]);
  const all = fake.requests.filter((r) => r.body?.model === MODEL);
  const forced = all.find((r) => r.date >= startAt + 1900 && r.status === 429);
  expect(forced).toBeDefined();
  const T = (forced as (typeof all)[number]).date;

  // The pause: from 100 ms after the 429 was read (in the process that got it) until 1.5 s after
  // it was sent, neither process sends this model anything: heads the other process was granted
  // before, to start later, confirm with the pool at their start and wait. (The margin: the
  // observation's round trip to Redis, and a confirmation already in flight, on a busy machine.)
  const heard = Math.min(...outs.flatMap((o) => o.heardAt.filter((t) => t >= T)));
  expect(heard - T).toBeGreaterThanOrEqual(0);
  expect(heard - T).toBeLessThan(800);
  expect(all.filter((r) => r.date > heard + 100 && r.date < T + 1480).map((r) => r.date - T)).toEqual([]);
  // Then both resume.
  const after = all.filter((r) => r.date >= T + 1480 && r.date < stopAt);
  expect(after.filter((r) => String(r.body?.user).startsWith('globex')).length).toBeGreaterThan(0);
  expect(after.filter((r) => String(r.body?.user).startsWith('initech')).length).toBeGreaterThan(0);

  // After the first responses, the pool (set to 20/s) runs at the provider's 10/s across both
  // processes: attempts within b + r·T of the provider's numbers (+3 for a loaded machine), and
  // 429s (the forced one aside) at most a few % of them (+3), the resume included: the heads
  // that reserved during the pause start on the bucket's level at its end, not on a full one.
  const steady = all.filter((r) => r.date >= startAt + 1000 && r.date < stopAt && r !== forced);
  const seconds = (stopAt - startAt - 1000) / 1000;
  expect(steady.length).toBeLessThanOrEqual(LIMIT + LIMIT * seconds + 3);
  expect(steady.filter((r) => r.status === 429).length).toBeLessThanOrEqual(0.05 * steady.length + 3);
  // Goodput: the 3.5 s outside the pause near the provider's rate (wide margin).
  expect(steady.filter((r) => r.status === 200).length).toBeGreaterThan(0.6 * LIMIT * (seconds - 1.5));
}, 60_000);
