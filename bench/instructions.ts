/**
 * Redis instructions per decision: redis-server runs under valgrind's callgrind, which counts the
 * instructions it executes, so the figures repeat to the instruction whatever else the machine
 * is doing (`INFO commandstats` µs, in `pnpm bench --only redis-cpu`, swing ±20% on a shared
 * machine). Counted: everything the server does for the decisions (reading and parsing the
 * commands, the script, its Redis commands, the reply and its write), between two dumps.
 *
 * Besides the contenders of the redis-cpu row, two stand-ins show the floor of Tollgate's design:
 * a script that only runs the three commands every allowed decision needs (TIME, GET, and
 * SET … PX, which DESIGN.md's contract asks for) with a constant value, on Tollgate's arguments
 * and reply; and an empty script on the same arguments.
 *
 *   pnpm bench:instructions            (needs valgrind: apt-get install valgrind)
 */
import { RateLimiter, RedisBackend } from '@tollgate/core';
import Table from 'cli-table3';
import { RateLimiterRedis } from 'rate-limiter-flexible';
import { EMPTY_SCRIPT, FLOOR_SCRIPT, hasCallgrind, standIn, startCountedRedis } from '../test/support/callgrind.ts';
import { inFlight } from './harness.js';

const DECISIONS = Number(process.env.DECISIONS ?? 3000);
const WARMUP = 2000;

async function main(): Promise<void> {
  if (!hasCallgrind()) {
    console.error('bench:instructions needs valgrind and redis-server (apt-get install valgrind redis-server)');
    process.exit(1);
  }
  const redis = await startCountedRedis();
  const client = redis.client();
  const version = await redis.version();
  const keys = Array.from({ length: 1000 }, (_, i) => `user-${i}`);
  // One limiter per contender, on keys of its own: each measures its own path alone.
  const limiter = (prefix: string) =>
    new RateLimiter({
      backend: new RedisBackend({ client, prefix, timeoutMs: 60_000 }),
      policy: { rate: 1000, per: '1h', capacity: 1e9 },
      name: 'b',
    });
  const single = limiter('cg1:');
  const batched = limiter('cg2:');
  const rlf = new RateLimiterRedis({ storeClient: client, points: 1e9, duration: 3600, keyPrefix: 'cgrlf' });
  const floor = await standIn(client, FLOOR_SCRIPT);
  const empty = await standIn(client, EMPTY_SCRIPT);
  const seq = (op: (k: string) => Promise<unknown>) => async (n: number) => {
    for (let i = 0; i < n; i++) await op(keys[i % 1000] as string);
  };
  const par = (op: (k: string) => Promise<unknown>) => (n: number) =>
    inFlight(n, 256, (i) => op(keys[i % 1000] as string));
  const contenders = [
    { name: 'Tollgate, single script (sequential)', run: seq((k) => single.tryAcquire(k)) },
    { name: 'Tollgate, batch script (256 in flight)', run: par((k) => batched.tryAcquire(k)) },
    { name: 'rate-limiter-flexible (sequential)', run: seq((k) => rlf.consume(k)) },
    { name: 'rate-limiter-flexible (256 in flight)', run: par((k) => rlf.consume(k)) },
    { name: 'floor: TIME + GET + SET … PX alone, Tollgate arguments (sequential)', run: seq(floor) },
    { name: 'floor: empty script, Tollgate arguments (sequential)', run: seq(empty) },
  ];
  const rows: Array<[string, number]> = [];
  for (const c of contenders) {
    console.error(`  ${c.name} …`);
    await c.run(WARMUP);
    rows.push([c.name, (await redis.instructions(() => c.run(DECISIONS))) / DECISIONS]);
  }
  await redis.stop();

  const rlfSeq = rows[2]?.[1] as number;
  const t = new Table({ head: ['Redis instructions per decision (callgrind)', 'instructions', '÷ rlf sequential'] });
  for (const [name, ir] of rows) t.push([name, Math.round(ir).toLocaleString('en'), (ir / rlfSeq).toFixed(2)]);
  console.log(t.toString());
  console.log(
    `pnpm bench:instructions — Redis ${version} under valgrind (callgrind), ${DECISIONS.toLocaleString('en')} decisions on 1,000 keys after ${WARMUP.toLocaleString('en')} of warm-up`,
  );
}

await main();
