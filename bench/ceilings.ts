/**
 * Ceilings: the least work a limiter can do, written inline with nothing around it. They bound
 * what any library can reach on this machine and are what Tollgate's targets are measured against.
 */
import { type Evaluator, deadlineArg, decisionArgs } from '@tollgate/core/internal';
import type { Redis } from 'ioredis';

/** -1000: no deadline yet, remember the call 1 s (as RedisBackend before it knows the clock). */
const NO_DEADLINE = deadlineArg(-1000);

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
  call(key: string, mode: 't' | 'r', ratePerMs: number, capacity: number): Promise<unknown> {
    const id = `rawcall0${(this.#seq++ % 1e8).toString(36).padStart(8, '0')}`;
    let spec = this.#specs.get(`${mode} ${ratePerMs} ${capacity}`);
    if (spec === undefined) {
      spec = decisionArgs(mode, { ratePerMs, capacity }, 1, -1);
      this.#specs.set(`${mode} ${ratePerMs} ${capacity}`, spec);
    }
    return (this.client as unknown as Evaluator).evalshaBuffer(this.#sha, 1, key, spec, NO_DEADLINE, id);
  }

  readonly #specs = new Map<string, Buffer>();
}
