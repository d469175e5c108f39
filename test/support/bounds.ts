/** Bounds a token bucket puts on admissions, asserted. */
import { expect } from 'vitest';

/**
 * expectWithinBucket checks the bound a bucket promises a burst that starts at `t0` on a full
 * bucket: by any time t, at most capacity + rate × (t - t0) calls are admitted (+ `slackMs` of
 * clock granularity, a tiny fraction of a token). Windows start at t0: an admission whose timer
 * fired late on a busy machine moves later, never earlier, so this bound is exact, while the gap
 * between two admissions may look shorter than 1 / rate.
 */
export function expectWithinBucket(
  times: readonly number[],
  t0: number,
  capacity: number,
  perSecond: number,
  slackMs = 5,
): void {
  const t = [...times].sort((a, b) => a - b);
  t.forEach((at, k) => {
    const allowed = capacity + (perSecond * (at - t0 + slackMs)) / 1000;
    expect(
      k + 1,
      `${k + 1} admitted by ${(at - t0).toFixed(1)} ms (at most ${allowed.toFixed(2)})`,
    ).toBeLessThanOrEqual(allowed);
  });
}
