/**
 * The batch script decides exactly as the single-decision script: the same random sequence of
 * (key, time, mode, cost, deadline) run one call at a time and run in batches gives the same
 * replies and leaves the same buckets. And the batcher keeps call order under concurrency.
 */
import {
  BATCH_SCRIPT,
  BUCKET_SCRIPT,
  type BatchStep,
  MAX_BATCH,
  MAX_IN_FLIGHT,
  ScriptBatcher,
  deadlineArg,
  decodeBucket,
  decodeReply,
  keySlot,
  runBatch,
  runScript,
} from '@tollgate/core/internal';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { decide, spec as specOf } from './support/batcher.ts';
import { rng } from './support/random.ts';
import { type RedisServer, startRedis } from './support/redis.ts';

let srv: RedisServer;
let client: Redis;
let singleSha: string;
beforeAll(async () => {
  srv = await startRedis();
  client = srv.client();
  singleSha = (await client.script('LOAD', BUCKET_SCRIPT)) as string;
  await client.script('LOAD', BATCH_SCRIPT);
});
afterAll(() => srv.stop());

// Policies whose buckets take at least ~50 ms of real time to expire after a write (the script
// sets PEXPIRE on Redis's clock while these tests run on made-up instants), so that no bucket
// vanishes between the single and the batched run of the same steps.
const POLICIES = [
  { ratePerMs: 10 / 1000, capacity: 25 },
  { ratePerMs: 7 / 1000, capacity: 7 },
  { ratePerMs: 1 / 3_600_000, capacity: 3 },
  { ratePerMs: 1 / 1000, capacity: 1_000_000 },
  { ratePerMs: 3.3 / 700, capacity: 9.5 },
];

interface Step {
  key: number;
  mode: 't' | 'r' | 'f';
  /** mode, rate, capacity, cost, max wait, as the scripts take them */
  spec: Buffer;
  /** What the step says, for a failure's message. */
  text: string;
  deadline: string;
  now: string;
}

/** A random sequence over a few keys: tries, reserves (some with a max wait), refunds, deadlines. */
function sequence(seed: number, n: number): Step[] {
  const random = rng(seed);
  let now = 1_700_000_000_000 + seed * 1000.125;
  const steps: Step[] = [];
  for (let i = 0; i < n; i++) {
    const prev = steps[i - 1];
    if (prev !== undefined && prev.mode !== 'f' && random() < 0.3) {
      // The same call again, as one limiter's concurrent calls are: the batch sends such steps
      // as one run. (A take, on the same key: a refund, or another key's policy, could leave a
      // bucket that expires within a few ms of real time, between the single and the batched
      // run of the chunk, and the buckets left behind would differ by that.)
      steps.push(prev);
      continue;
    }
    const key = Math.floor(random() * 4);
    const p = POLICIES[(seed + key) % POLICIES.length] as (typeof POLICIES)[number];
    const fill = p.capacity / p.ratePerMs;
    const r = random();
    now +=
      r < 0.3 ? 0 : r < 0.7 ? Math.floor(random() * Math.min(fill, 1e6) * 0.05) : random() * Math.min(fill, 1e6) * 0.3;
    const cost = Math.max(0.5, Math.round(random() * p.capacity * 100) / 100);
    const op = random();
    const mode = op < 0.45 ? 't' : op < 0.85 ? 'r' : 'f';
    const maxWait = mode === 'r' && random() < 0.5 ? Math.floor(random() * fill) : -1;
    const deadline = random() < 0.1 ? String(now - 1) : random() < 0.5 ? String(now + 1000) : '';
    steps.push({
      key,
      mode,
      spec: specOf(mode, p.ratePerMs, p.capacity, cost, maxWait),
      text: `${mode} ${p.ratePerMs} ${p.capacity} ${cost} ${maxWait}`,
      deadline,
      now: String(now),
    });
  }
  return steps;
}

const keyOf = (prefix: string, k: number): string => `${prefix}{user-${k}}:b`;

async function runSingle(prefix: string, steps: Step[]): Promise<string[][]> {
  const out: string[][] = [];
  for (const s of steps) {
    const dl = deadlineArg(s.deadline === '' ? '' : Number(s.deadline));
    const r = decodeReply(
      await runScript(client, BUCKET_SCRIPT, singleSha, 1, [keyOf(prefix, s.key), s.spec, dl, '', s.now]),
    );
    out.push(r.slice(0, 4).map(String));
  }
  return out;
}

/** Steps runBatch sent as part of a longer run. */
let merged = 0;
let replyKeys = 0;

async function runBatch2(prefix: string, chunk: Step[]): Promise<string[][]> {
  const steps: BatchStep[] = chunk.map((s) => ({
    key: keyOf(prefix, s.key),
    spec: s.spec,
    deadline: s.deadline,
    now: s.now,
  }));
  for (let i = 1; i < chunk.length; i++) if (chunk[i] === chunk[i - 1]) merged++;
  const reply = await runBatch(client, steps, `${keyOf(prefix, 0)}{r}${replyKeys++}`);
  expect(reply).toHaveLength(4 * chunk.length + 1);
  const out: string[][] = [];
  for (let i = 0; i < chunk.length; i++) out.push(reply.slice(4 * i, 4 * i + 4).map(String));
  return out;
}

/** Runs `steps` both ways, chunk by chunk, so both runs keep pace with each other in real time. */
async function bothWays(steps: Step[], random: () => number, single: string, batch: string) {
  const a: string[][] = [];
  const b: string[][] = [];
  for (let i = 0; i < steps.length; ) {
    const chunk = steps.slice(i, i + 1 + Math.floor(random() * 40));
    i += chunk.length;
    a.push(...(await runSingle(single, chunk)));
    b.push(...(await runBatch2(batch, chunk)));
  }
  return { single: a, batched: b };
}

/** The stored buckets, byte for byte (hex; null when absent). */
async function buckets(prefix: string): Promise<Array<string | null>> {
  return Promise.all(
    [0, 1, 2, 3].map(async (k) => (await client.getBuffer(keyOf(prefix, k)))?.toString('hex') ?? null),
  );
}

/**
 * Both runs left the same buckets, to the last bit of every double; except that a bucket may be
 * missing from one run and not the other when it was written to be full within a few ms anyway
 * (its expiry, in real time, fell between the two runs: a missing bucket is a full one).
 */
async function expectSameBuckets(got: string, want: string, seed: number): Promise<void> {
  const [a, b] = await Promise.all([buckets(got), buckets(want)]);
  for (let k = 0; k < 4; k++) {
    const x = a[k] ?? null;
    const y = b[k] ?? null;
    if ((x === null) === (y === null)) {
      expect(x, `bucket ${k}`).toBe(y);
      continue;
    }
    const p = POLICIES[(seed + k) % POLICIES.length] as (typeof POLICIES)[number];
    const left = decodeBucket(Buffer.from((x ?? y) as string, 'hex'));
    expect(left, `bucket ${k}`).toBeDefined();
    expect((p.capacity - (left?.tokens ?? 0)) / p.ratePerMs, `bucket ${k}: ms until full`).toBeLessThan(100);
  }
}

test.each([
  1, 2, 3, 4, 5, 6,
])('seed %i: the batch script decides 600 random calls as the single script does', async (seed) => {
  const steps = sequence(seed, 600);
  const { single, batched } = await bothWays(steps, rng(seed * 7919), `single${seed}:`, `batch${seed}:`);
  expect(batched).toHaveLength(single.length);
  for (let i = 0; i < single.length; i++) {
    expect(batched[i], `step ${i}: ${steps[i]?.text} ${steps[i]?.deadline} ${steps[i]?.now}`).toEqual(single[i]);
  }
  // Same decisions and the same buckets left behind, to the last bit of every double.
  await expectSameBuckets(`batch${seed}:`, `single${seed}:`, seed);
  // Each decision kind happened, including refusals past the deadline.
  const allowed = new Set(single.map((r) => r[0]));
  expect(single.some((r) => r[0] === '1' && r[1] !== '0')).toBe(true);
  expect(allowed).toEqual(new Set(['1', '0', '-1']));
  expect(merged).toBeGreaterThan(0);
});

test('the batcher groups concurrent calls into few script calls, in call order, with single-script replies', async () => {
  const c = srv.client();
  const batcher = new ScriptBatcher(c, 'testbtch');
  await c.ping();
  const scriptCalls = async (): Promise<number> => {
    const info = await client.info('commandstats');
    let n = 0;
    for (const m of info.matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+)/g)) n += Number(m[1]);
    return n;
  };
  // 1 token an hour: the bucket only drains while the test runs, so each call's reply follows
  // from how many calls on its key came before it.
  const take = specOf('t', 1 / 3_600_000, 200, 1);
  for (let round = 0; round < 4; round++) {
    const keys = Array.from({ length: 300 }, (_, i) => (i * 7 + round) % 4);
    const before = await scriptCalls();
    const replies = await Promise.all(keys.map((k) => decide(batcher, keyOf('got:', k), take, 1000)));
    const calls = (await scriptCalls()) - before;
    const seen = [0, 0, 0, 0];
    const want = keys.map((k) => {
      seen[k] = (seen[k] as number) + 1;
      const n = round * 75 + (seen[k] as number);
      return n <= 200 ? [1, 200 - n] : [0, 0];
    });
    expect(replies.map((r) => [r[0], Number(r[1])])).toEqual(want);
    expect(calls).toBeLessThanOrEqual(Math.ceil(300 / MAX_BATCH) + 1);
  }

  // A lone call goes alone, as the single script (one script call, no batch).
  const b2 = await scriptCalls();
  const lone = await decide(batcher, keyOf('lone:', 0), specOf('t', 0.01, 10, 1), 1000);
  expect(lone[0]).toBe(1);
  expect(lone[1]).toBe(9);
  expect(lone[4]).toBeGreaterThan(1.6e15);
  expect((await scriptCalls()) - b2).toBe(1);
});

test('keySlot is the Redis Cluster slot: CRC16 of the hash tag, or of the whole key', () => {
  // The CRC16-XMODEM check value of '123456789' is 0x31C3.
  expect(keySlot('123456789')).toBe(0x31c3 & 16383);
  expect(keySlot('{user1000}.following')).toBe(keySlot('{user1000}.followers'));
  expect(keySlot('tollgate:{user-1}:requests')).toBe(keySlot('user-1'));
  // An empty tag does not count: the whole key is hashed.
  expect(keySlot('{}foo')).not.toBe(keySlot(''));
  expect(keySlot('foo{}{bar}')).toBe(keySlot('foo{}{bar}'));
  expect(keySlot('foo{{bar}}zap')).toBe(keySlot('{bar'));
  // UTF-8 bytes, as Redis sees them.
  expect(keySlot('{ü}')).toBe(keySlot('ü'));
});

test('calls stuck behind a stalled server time out at their own deadline, and the batcher recovers', async () => {
  const c = srv.client();
  const batcher = new ScriptBatcher(c, 'testbtch');
  await c.ping();
  const admin = srv.client();
  const sleeping = admin.call('DEBUG', 'SLEEP', '0.6');
  await new Promise((r) => setTimeout(r, 50));
  const take = specOf('t', 0.01, 10, 1);
  const t0 = performance.now();
  // More calls than MAX_IN_FLIGHT batches hold: some wait in line behind the stalled ones.
  const calls = Array.from({ length: MAX_BATCH * (MAX_IN_FLIGHT + 4) }, (_, i) =>
    decide(batcher, keyOf('stall:', i % 4), take, 150).then(
      () => 'answered',
      (e: unknown) => ((e as { code?: string }).code === 'ERR_TOLLGATE_BACKEND_TIMEOUT' ? performance.now() - t0 : e),
    ),
  );
  const outcomes = await Promise.all(calls);
  for (const o of outcomes) {
    expect(typeof o).toBe('number');
    expect(o as number).toBeGreaterThanOrEqual(140);
    expect(o as number).toBeLessThan(450);
  }
  await sleeping;
  const after = await decide(batcher, keyOf('stall:', 9), take, 1000);
  expect(after[0]).toBe(1);
});

test('after SCRIPT FLUSH, a lone call and a batch go again as EVAL and are decided once', async () => {
  const { RedisBackend } = await import('@tollgate/core');
  const { normalizePolicy } = await import('@tollgate/core/internal');
  const c = srv.client();
  const admin = srv.client();
  const backend = new RedisBackend({ client: c, prefix: 'flushed:' });
  const policy = normalizePolicy({ rate: 1, per: '1h', capacity: 100 });
  const evals = async (): Promise<number> =>
    Number(/cmdstat_eval:calls=(\d+)/.exec(await admin.info('commandstats'))?.[1] ?? 0);
  expect((await backend.tryTake('b', 'u', policy, 1)).remaining).toBe(99);
  await admin.script('FLUSH');
  const before = await evals();
  expect((await backend.tryTake('b', 'u', policy, 1)).remaining).toBe(98);
  await admin.script('FLUSH');
  // The first goes alone; the other nine, made meanwhile, go as one batch.
  const crowd = await Promise.all(Array.from({ length: 10 }, () => backend.tryTake('b', 'u', policy, 1)));
  expect(crowd.map((d) => d.remaining)).toEqual([97, 96, 95, 94, 93, 92, 91, 90, 89, 88]);
  expect((await evals()) - before).toBe(3);
});
