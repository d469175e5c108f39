/**
 * What a decision costs Redis's one core, counted in instructions (redis-server under valgrind's
 * callgrind: the count repeats within ~1% however busy the machine is). The yardstick is the
 * least any decision of this design costs: a script that runs only the three commands an allowed
 * decision needs (TIME, GET, SET … PX) on Tollgate's arguments and reply. rate-limiter-flexible's
 * whole decision costs ~0.9× that floor (`pnpm bench:instructions` sets them side by side).
 *
 * Skipped where valgrind is not installed (.ci/run installs it).
 */
import { RateLimiter, RedisBackend } from '@tollgate/core';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { type CountedRedis, FLOOR_SCRIPT, hasCallgrind, standIn, startCountedRedis } from './support/callgrind.ts';

const KEYS = Array.from({ length: 500 }, (_, i) => `user-${i}`);
const DECISIONS = 1500;

let redis: CountedRedis;
beforeAll(async () => {
  if (hasCallgrind()) redis = await startCountedRedis();
}, 120_000);
afterAll(() => redis?.stop());

test.skipIf(!hasCallgrind())(
  'a lone decision costs Redis at most 1.6× the floor of the design, a batched one at most 0.72×',
  async () => {
    const client = redis.client();
    const limiter = (prefix: string) =>
      new RateLimiter({
        backend: new RedisBackend({ client, prefix, timeoutMs: 60_000 }),
        policy: { rate: 1000, per: '1h', capacity: 1e9 },
        name: 'b',
      });
    const single = limiter('one:');
    const batched = limiter('many:');
    const floorCall = await standIn(client, FLOOR_SCRIPT);
    const sequential = (op: (k: string) => Promise<unknown>) => async () => {
      for (let i = 0; i < DECISIONS; i++) await op(KEYS[i % KEYS.length] as string);
    };
    const concurrent = (op: (k: string) => Promise<unknown>) => async () => {
      let next = 0;
      await Promise.all(
        Array.from({ length: 256 }, async () => {
          while (next < DECISIONS) await op(KEYS[next++ % KEYS.length] as string);
        }),
      );
    };
    const perDecision = async (run: () => Promise<void>) => {
      await run(); // every key made, the script loaded
      return (await redis.instructions(run)) / DECISIONS;
    };
    let allowed = 0;
    const take = (l: RateLimiter) => async (k: string) => {
      if ((await l.tryAcquire(k)).allowed) allowed++;
    };
    const scriptCalls = async () =>
      Number(/cmdstat_evalsha:calls=(\d+)/.exec(await client.info('commandstats'))?.[1] ?? 0);
    const floor = await perDecision(sequential(floorCall));
    const lone = await perDecision(sequential(take(single)));
    const before = await scriptCalls();
    const batch = await perDecision(concurrent(take(batched)));
    // Every decision was allowed, and the concurrent ones went many to a script call.
    expect(allowed).toBe(4 * DECISIONS);
    expect((await scriptCalls()) - before).toBeLessThan((2 * DECISIONS) / 10);
    const ratios = { lone: lone / floor, batch: batch / floor };
    // Measured: lone 1.50×, batch 0.67× (floor ~46k instructions on Redis 7.0). Before the
    // scripts took binary arguments: 1.98× and 0.75×.
    expect(ratios.lone, `instructions: floor ${floor}, lone ${lone}`).toBeLessThan(1.6);
    expect(ratios.batch, `instructions: floor ${floor}, batch ${batch}`).toBeLessThan(0.72);
  },
  180_000,
);
