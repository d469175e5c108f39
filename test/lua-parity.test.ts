/**
 * The Lua script and bucket.ts must decide identically: the same random sequence of (time, op,
 * cost) on fixed instants gives the same decision, tokens and waits from both.
 */
import { RedisBackend } from '@tollgate/core';
import {
  BUCKET_SCRIPT,
  BUCKET_SHA,
  type BucketState,
  ScriptAt,
  decisionArgs,
  decodeBucket,
  decodeReply,
  giveBack,
  newBucket,
  normalizePolicy,
  redisKey,
  reserve,
  runScript,
  tokensAt,
  tryTake,
} from '@tollgate/core/internal';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { rng } from './support/random.ts';
import { type RedisServer, startRedis } from './support/redis.ts';

let srv: RedisServer;
beforeAll(async () => {
  srv = await startRedis();
});
afterAll(() => srv.stop());

test.each([
  [1, { rate: 10, per: '1s', capacity: 25 }],
  [2, { rate: 7, per: '1s' }],
  [3, { rate: 1, per: '1h', capacity: 3 }],
  [4, { rate: 1_000_000, per: '1s' }],
  [5, { rate: 3.3, per: 700, capacity: 9.5 }],
])('seed %i, policy %j: memory and Lua agree on 400 random decisions', async (seed, input) => {
  const policy = normalizePolicy(input);
  const client = srv.client();
  let now = 1_700_000_000_000 + seed * 1000.125; // an absolute instant, with a fraction
  const backend = new ScriptAt(
    client,
    (k, n) => redisKey(`parity${seed}:`, k, n),
    () => now,
  );
  const state: BucketState = newBucket(policy, now);
  const random = rng(seed);
  const fill = policy.capacity / policy.ratePerMs;
  for (let i = 0; i < 400; i++) {
    // Steps from 0 to ~half a fill time, sometimes zero, sometimes fractional ms.
    const r = random();
    now += r < 0.2 ? 0 : r < 0.6 ? Math.floor(random() * fill * 0.1) : random() * fill * 0.5;
    const cost = Math.max(1e-3, Math.round(random() * policy.capacity * 100) / 100);
    const op = random();
    if (op < 0.5) {
      const mem = tryTake(state, policy, now, cost);
      const lua = await backend.tryTake('b', 'k', policy, cost);
      expect(lua, `step ${i} try cost ${cost} at ${now}`).toEqual(mem);
    } else if (op < 0.85) {
      const maxWait = random() < 0.3 ? -1 : Math.floor(random() * fill);
      const mem = reserve(state, policy, now, cost, maxWait);
      const lua = await backend.reserve('b', 'k', policy, cost, maxWait);
      expect(lua, `step ${i} reserve cost ${cost} max ${maxWait} at ${now}`).toEqual(mem);
    } else {
      giveBack(state, policy, now, cost);
      await backend.refund('b', 'k', policy, cost);
    }
  }
  // The stored bucket holds what the memory bucket holds (a rejection refills in memory but
  // writes nothing to Redis, so compare the tokens at `now`, not the raw fields).
  const stored = decodeBucket(await client.getBuffer(`parity${seed}:{k}:b`));
  if (stored !== undefined) {
    expect(tokensAt(stored, policy, now)).toBeCloseTo(tokensAt(state, policy, now), 6);
  }
});

test('every write sets PX to ceil(ms until full), an integer ≥ 1, and keeps a call remembered until its deadline', async () => {
  const client = srv.client();
  const backend = new RedisBackend({ client, prefix: 'ttl:', timeoutMs: 50 });
  // 1 token an hour: 5 missing make the bucket full in 5 h, however late PTTL is read.
  const slow = normalizePolicy({ rate: 1, per: '1h', capacity: 20 });
  await backend.tryTake('b', 'u', slow, 5);
  const ttl = await client.pttl('ttl:{u}:b');
  expect(ttl).toBeGreaterThan(5 * 3_600_000 - 60_000);
  expect(ttl).toBeLessThanOrEqual(5 * 3_600_000);
  // Full again within 1 ns, but the call is remembered until its deadline (timeoutMs 50 after it
  // was sent). The key may be gone before PTTL reads it, so only the upper bound is asserted.
  const tiny = await backend.tryTake('b', 'tiny', normalizePolicy({ rate: 1e6, per: '1s' }), 1e-6);
  expect(tiny.allowed).toBe(true);
  expect(await client.pttl('ttl:{tiny}:b')).toBeLessThanOrEqual(50 + 20); // + the clock estimate's error
  // Without a call id (the script alone), PX 1: PX 0 would be an error and fail the call.
  const bare = await runScript(client, BUCKET_SCRIPT, BUCKET_SHA, 1, [
    'ttl:{bare}:b',
    decisionArgs('t', { ratePerMs: 1000, capacity: 1 }, 1e-6, -1),
    '',
    '',
  ]);
  expect(decodeReply(bare)[0]).toBe(1);
  expect(await client.pttl('ttl:{bare}:b')).toBeLessThanOrEqual(1);
});

test('an idle bucket vanishes when it would be full, and a missing bucket is a full one', async () => {
  const client = srv.client();
  const backend = new RedisBackend({ client, prefix: 'idle:', timeoutMs: 100 });
  const policy = normalizePolicy({ rate: 10, per: '1s', capacity: 20 }); // 100 ms a token
  await backend.tryTake('b', 'u', policy, 5); // full again in 500 ms
  await new Promise((r) => setTimeout(r, 600));
  expect(await client.exists('idle:{u}:b')).toBe(0);
  expect((await backend.tryTake('b', 'u', policy, 20)).allowed).toBe(true);
});

test('the script ioredis sends is the one Redis loads: its SHA1 matches SCRIPT LOAD', async () => {
  const { createHash } = await import('node:crypto');
  const { BUCKET_SCRIPT } = await import('@tollgate/core/internal');
  const client = srv.client();
  const sha = await client.script('LOAD', BUCKET_SCRIPT);
  expect(sha).toBe(createHash('sha1').update(BUCKET_SCRIPT).digest('hex'));
});

test('a bucket an older version left as a hash {t, u} is read as that bucket, then replaced by the string', async () => {
  const client = srv.client();
  const policy = normalizePolicy({ rate: 10, per: '1s', capacity: 20 });
  let now = 1_700_000_000_000.25;
  const backend = new ScriptAt(
    client,
    (k, n) => redisKey('old:', k, n),
    () => now,
  );
  const state: BucketState = { tokens: 3.5, updatedAt: now - 100 };
  await client.hset('old:{u}:b', 't', '3.5', 'u', String(now - 100));
  await client.pexpire('old:{u}:b', 60_000);
  // A rejection writes nothing: the hash stays, and is read again next time.
  expect(await backend.tryTake('b', 'u', policy, 6)).toEqual(tryTake(state, policy, now, 6));
  expect(await client.type('old:{u}:b')).toBe('hash');
  now += 10;
  expect(await backend.tryTake('b', 'u', policy, 2)).toEqual(tryTake(state, policy, now, 2));
  expect(await client.type('old:{u}:b')).toBe('string');
  expect(decodeBucket(await client.getBuffer('old:{u}:b'))).toEqual(state);
  expect(await client.pttl('old:{u}:b')).toBeLessThanOrEqual(Math.ceil((20 - state.tokens) / policy.ratePerMs));
});
