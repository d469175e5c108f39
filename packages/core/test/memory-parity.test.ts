/**
 * MemoryBackend keeps its buckets in a compact layout with the hot path inlined; it must still
 * decide exactly as bucket.ts does. Same random sequence of (time, op, cost), fixed instants.
 */
import { MemoryBackend } from '@tollgate/core';
import { type BucketState, giveBack, newBucket, normalizePolicy, reserve, tryTake } from '@tollgate/core/internal';
import { expect, test } from 'vitest';
import { rng } from '../../../test/support/random.ts';

test.each([
  [11, { rate: 10, per: '1s', capacity: 25 }],
  [12, { rate: 7, per: '1s' }],
  [13, { rate: 1, per: '1h', capacity: 3 }],
  [14, { rate: 1_000_000, per: '1s' }],
  [15, { rate: 3.3, per: 700, capacity: 9.5 }],
])('seed %i, policy %j: MemoryBackend and bucket.ts agree on 2,000 random decisions over 3 keys', (seed, input) => {
  const policy = normalizePolicy(input);
  let now = 5_000.25;
  const backend = new MemoryBackend({ clock: () => now });
  const keys = ['a', 'b', 'c'];
  const states = new Map<string, BucketState>();
  const random = rng(seed);
  const fill = policy.capacity / policy.ratePerMs;
  for (let i = 0; i < 2000; i++) {
    const r = random();
    now += r < 0.3 ? 0 : r < 0.6 ? Math.floor(random() * fill * 0.1) : random() * fill * 0.7;
    // Now and then jump far enough for every bucket to refill (and be swept as full).
    if (random() < 0.02) now += fill * 2;
    const key = keys[Math.floor(random() * keys.length)] as string;
    let state = states.get(key);
    if (state === undefined) {
      state = newBucket(policy, now);
      states.set(key, state);
    }
    const cost = Math.max(1e-3, Math.round(random() * policy.capacity * 100) / 100);
    const op = random();
    if (op < 0.5) {
      expect(backend.tryTake('n', key, policy, cost), `step ${i}`).toEqual(tryTake(state, policy, now, cost));
    } else if (op < 0.85) {
      const maxWait = random() < 0.3 ? -1 : Math.floor(random() * fill);
      expect(backend.reserve('n', key, policy, cost, maxWait), `step ${i}`).toEqual(
        reserve(state, policy, now, cost, maxWait),
      );
    } else {
      giveBack(state, policy, now, cost);
      backend.refund('n', key, policy, cost);
    }
    if (random() < 0.01) backend.prune();
  }
});
