/**
 * Checks of a call's arguments (key, pool, cost, amount, maxWaitMs, signal, weight), shared by
 * RateLimiter and SharedLimiter. Each throws {@link InvalidArgumentError} (a weight:
 * {@link InvalidOptionsError}, as it comes from an option) naming the argument, the constraint
 * and the value received.
 */
import { InvalidArgumentError, InvalidOptionsError } from './errors.js';
import { describe } from './policy.js';

/** checkKey accepts any string as a key (the empty one too); `what` names it in the message. */
export function checkKey(key: unknown, what = 'key'): asserts key is string {
  if (typeof key !== 'string') throw new InvalidArgumentError(`${what} must be a string (received ${describe(key)})`);
}

/** checkCost returns the cost of a call: 1 when undefined, else a finite number > 0. */
export function checkCost(cost: unknown): number {
  if (cost === undefined) return 1;
  if (typeof cost !== 'number' || !Number.isFinite(cost) || cost <= 0) {
    throw new InvalidArgumentError(`cost must be a finite number > 0 (received ${describe(cost)})`);
  }
  return cost;
}

/** checkAmount accepts a refund's amount: a finite number >= 0. */
export function checkAmount(amount: unknown): number {
  if (typeof amount !== 'number' || !Number.isFinite(amount) || amount < 0) {
    throw new InvalidArgumentError(`amount must be a finite number >= 0 (received ${describe(amount)})`);
  }
  return amount;
}

/** checkMaxWait returns a call's maxWaitMs: Infinity when undefined, else a number >= 0. */
export function checkMaxWait(ms: unknown): number {
  if (ms === undefined) return Number.POSITIVE_INFINITY;
  if (typeof ms !== 'number' || Number.isNaN(ms) || ms < 0) {
    throw new InvalidArgumentError(`maxWaitMs must be a number of ms >= 0 or Infinity (received ${describe(ms)})`);
  }
  return ms;
}

export function checkSignal(signal: unknown): AbortSignal | undefined {
  if (signal === undefined) return undefined;
  if (typeof signal !== 'object' || signal === null || typeof (signal as AbortSignal).addEventListener !== 'function') {
    throw new InvalidArgumentError(`signal must be an AbortSignal (received ${describe(signal)})`);
  }
  return signal as AbortSignal;
}

/** Largest weight accepted: beyond it a key's virtual counter would stop moving for small costs. */
export const MAX_WEIGHT = 1e6;

/** checkWeight validates what SharedLimiter's `weight` option returned for `key`. */
export function checkWeight(w: unknown, key: string): number {
  if (typeof w === 'number' && w > 0 && w <= MAX_WEIGHT) return w;
  const shown = JSON.stringify(key.length > 40 ? `${key.slice(0, 37)}...` : key);
  const constraint = `must be a finite number > 0 and <= ${MAX_WEIGHT} (received ${describe(w)})`;
  throw new InvalidOptionsError(`invalid weight(${shown}): ${constraint}`, [
    { path: `weight(${shown})`, message: constraint },
  ]);
}
