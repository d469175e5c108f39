/**
 * Ceilings: the least work a limiter can do, written inline with nothing around it. They bound
 * what any library can reach on this machine and are what Tollgate's targets are measured against.
 */
import type { Redis } from 'ioredis';

interface Slot {
  t: number;
  u: number;
}

/**
 * InlineBucket is a token bucket in a Map: refill by elapsed time, take if there is enough.
 * No validation, no result object, no queue: the ceiling for a memory limiter.
 */
export class InlineBucket {
  readonly #map = new Map<string, Slot>();
  readonly #ratePerMs: number;
  readonly #cap: number;

  constructor(rate: number, perMs: number, capacity: number) {
    this.#ratePerMs = rate / perMs;
    this.#cap = capacity;
  }

  take(key: string): boolean {
    const now = performance.now();
    let s = this.#map.get(key);
    if (s === undefined) {
      s = { t: this.#cap, u: now };
      this.#map.set(key, s);
    }
    s.t = Math.min(this.#cap, s.t + (now - s.u) * this.#ratePerMs);
    s.u = now;
    if (s.t >= 1) {
      s.t -= 1;
      return true;
    }
    return false;
  }
}

const SETTLED: Promise<number> = Promise.resolve(0);

/**
 * The least an awaited, clock-based decision can cost: one monotonic clock read and one `await`
 * of a promise already settled (no allocation at all). No limiter that reads the time and answers
 * with a promise can go faster; a figure above it is impossible on this machine.
 */
export function clockAndAwait(): Promise<number> {
  performance.now();
  return SETTLED;
}

/**
 * A plain token-bucket script, the one Tollgate runs (same arithmetic), called by EVALSHA with
 * ready-made arguments: the ceiling for one decision per round trip.
 */
export class RawEvalsha {
  #sha = '';
  constructor(
    readonly client: Redis,
    readonly script: string,
  ) {}

  async load(): Promise<void> {
    this.#sha = (await this.client.script('LOAD', this.script)) as string;
  }

  #seq = 0;

  /**
   * One decision of cost 1, no max wait, remembered 1 s under a fresh call id, as RedisBackend
   * sends it before it knows the server's clock.
   */
  call(key: string, mode: string, ratePerMs: string, capacity: string): Promise<unknown> {
    const id = `rawcall0${(this.#seq++ % 1e8).toString(36).padStart(8, '0')}`;
    return this.client.evalsha(this.#sha, 1, key, mode, ratePerMs, capacity, '1', '-1', '-1000', id);
  }
}
