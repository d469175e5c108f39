/**
 * The rate limits of the loopback providers (fake-openai.ts, fake-anthropic.ts): per model, one
 * token bucket per dimension (requests, LLM tokens, input and output LLM tokens), refilled
 * continuously like the real APIs' per-minute limits, and a log of every attempt so tests and the
 * demo can compute the 429 rate, goodput and each tenant's share.
 *
 * A bucket of limit L per window W holds at most L and refills at L/W: a burst of L, then L per
 * W. "Remaining" is what the bucket holds now (floored); "reset" is the time until it is full
 * again — what OpenAI's `x-ratelimit-reset-*` and Anthropic's `anthropic-ratelimit-*-reset`
 * describe.
 */

/** The limit of one dimension: `limit` per `windowMs`. */
export interface BucketLimit {
  /** What the bucket holds when full, and what refills per window (requests or LLM tokens). */
  readonly limit: number;
  /** The window in ms. @default 60_000 (the real APIs' "per minute") */
  readonly windowMs?: number;
}

/** The state of one bucket after a decision, for the response headers. */
export interface BucketState {
  readonly limit: number;
  /** What the bucket holds now, floored (never negative). */
  readonly remaining: number;
  /** Ms until the bucket is full again (0 when full). */
  readonly resetAfterMs: number;
}

/** Bucket is one continuously refilled token bucket on the caller's clock (ms). */
export class Bucket {
  readonly limit: number;
  readonly windowMs: number;
  #level: number;
  #at: number;

  /** `name` is the option the limit came from, for the error a bad value throws. */
  constructor(limit: BucketLimit, now: number, name = 'limit') {
    if (!(limit.limit > 0) || !Number.isFinite(limit.limit))
      throw new RangeError(`${name} must be a positive finite number (received ${limit.limit})`);
    const windowMs = limit.windowMs ?? 60_000;
    if (!(windowMs > 0) || !Number.isFinite(windowMs))
      throw new RangeError(`${name}'s windowMs must be a positive finite number of ms (received ${windowMs})`);
    this.limit = limit.limit;
    this.windowMs = windowMs;
    this.#level = limit.limit;
    this.#at = now;
  }

  #refill(now: number): void {
    if (now > this.#at) {
      this.#level = Math.min(this.limit, this.#level + ((now - this.#at) * this.limit) / this.windowMs);
      this.#at = now;
    }
  }

  /** waitFor is the ms until `cost` fits (0 if it fits now; Infinity if it never can). */
  waitFor(cost: number, now: number): number {
    this.#refill(now);
    if (cost > this.limit) return Number.POSITIVE_INFINITY;
    if (cost <= this.#level) return 0;
    return ((cost - this.#level) * this.windowMs) / this.limit;
  }

  /** take removes `cost` (the caller checked `waitFor` first). */
  take(cost: number, now: number): void {
    this.#refill(now);
    this.#level -= cost;
  }

  /** give puts back `amount` (never above the limit): a settled overestimate. */
  give(amount: number, now: number): void {
    this.#refill(now);
    this.#level = Math.min(this.limit, this.#level + amount);
  }

  /** used is what the window has consumed: limit − level, rounded up. */
  used(now: number): number {
    this.#refill(now);
    return Math.ceil(this.limit - this.#level);
  }

  state(now: number): BucketState {
    this.#refill(now);
    const level = Math.max(0, this.#level);
    return {
      limit: this.limit,
      remaining: Math.floor(level),
      resetAfterMs: ((this.limit - this.#level) * this.windowMs) / this.limit,
    };
  }
}

/** A charge against one dimension of a model's limits. */
export interface Charge<D extends string> {
  readonly dimension: D;
  readonly cost: number;
}

/** Refusal says which dimension refused an attempt, and when it would fit. */
export interface Refusal<D extends string> {
  readonly dimension: D;
  readonly limit: number;
  readonly used: number;
  readonly requested: number;
  /** Ms until the attempt would fit (Infinity: it is larger than the limit). */
  readonly retryAfterMs: number;
}

/**
 * ModelBuckets holds one model's buckets. `admit` takes every charge or none: an attempt refused
 * on LLM tokens does not spend a request, as on the real APIs.
 */
export class ModelBuckets<D extends string> {
  readonly buckets: ReadonlyMap<D, Bucket>;

  constructor(limits: Partial<Record<D, BucketLimit>>, now: number, model = 'model') {
    const m = new Map<D, Bucket>();
    for (const [dim, limit] of Object.entries(limits) as [D, BucketLimit | undefined][])
      if (limit !== undefined) m.set(dim, new Bucket(limit, now, `limits[${JSON.stringify(model)}].${dim}`));
    this.buckets = m;
  }

  /** admit takes every charge, or returns the refusal with the longest wait. */
  admit(charges: readonly Charge<D>[], now: number): Refusal<D> | undefined {
    let worst: Refusal<D> | undefined;
    for (const { dimension, cost } of charges) {
      const b = this.buckets.get(dimension);
      if (b === undefined) continue;
      const wait = b.waitFor(cost, now);
      if (wait > 0 && (worst === undefined || wait > worst.retryAfterMs))
        worst = { dimension, limit: b.limit, used: b.used(now), requested: cost, retryAfterMs: wait };
    }
    if (worst !== undefined) return worst;
    for (const { dimension, cost } of charges) this.buckets.get(dimension)?.take(cost, now);
    return undefined;
  }

  give(dimension: D, amount: number, now: number): void {
    if (amount > 0) this.buckets.get(dimension)?.give(amount, now);
  }

  state(dimension: D, now: number): BucketState | undefined {
    return this.buckets.get(dimension)?.state(now);
  }
}

/** One HTTP attempt the provider answered, as the statistics see it. */
export interface AttemptRecord {
  /** `performance.now()` at arrival, ms. */
  readonly time: number;
  /** The limits' clock at arrival, epoch ms (`Date.now()` unless the server got a `clock`). */
  readonly date: number;
  /** The body's `model` (undefined when absent). */
  readonly model: string | undefined;
  /** The caller's tenant: the tenant header, else the body's user (see the servers' `tenant`). */
  readonly tenant: string | undefined;
  /** LLM tokens charged at admission (0 when refused or when the model has no limits). */
  llmTokens: number;
  /** The status answered (200 until the server chooses another). */
  readonly status: number;
}

/** Stats sums the attempts of a model (or of all models). */
export interface Stats {
  readonly attempts: number;
  /** Answered 2xx. */
  readonly ok: number;
  /** Answered 429. */
  readonly rateLimited: number;
  /** Per tenant (attempts without one under `''`). */
  readonly tenants: Readonly<Record<string, { attempts: number; ok: number; rateLimited: number }>>;
}

/**
 * summarize sums attempt records, optionally only those of `model` that arrived at or after
 * `since` (`performance.now()` ms).
 */
export function summarize(log: readonly AttemptRecord[], filter: { model?: string; since?: number } = {}): Stats {
  let attempts = 0;
  let ok = 0;
  let rateLimited = 0;
  const tenants: Record<string, { attempts: number; ok: number; rateLimited: number }> = {};
  for (const r of log) {
    if (filter.model !== undefined && r.model !== filter.model) continue;
    if (filter.since !== undefined && r.time < filter.since) continue;
    const name = r.tenant ?? '';
    const t = tenants[name] ?? { attempts: 0, ok: 0, rateLimited: 0 };
    tenants[name] = t;
    attempts++;
    t.attempts++;
    if (r.status >= 200 && r.status < 300) {
      ok++;
      t.ok++;
    } else if (r.status === 429) {
      rateLimited++;
      t.rateLimited++;
    }
  }
  return { attempts, ok, rateLimited, tenants };
}

/** A forced 429 queued by a test: `retryAfterMs` undefined sends no retry headers. */
export interface ForcedRateLimit {
  readonly retryAfterMs: number | undefined;
}

/**
 * formatGoDuration writes ms the way OpenAI's `x-ratelimit-reset-*` headers do (Go's
 * `time.Duration` string, to the ms, rounded up): `0s`, `120ms`, `1s`, `1.5s`, `6m0s`,
 * `1m30.5s`, `1h2m3s`.
 */
export function formatGoDuration(ms: number): string {
  const total = Math.ceil(ms);
  if (!(total > 0)) return '0s';
  if (total < 1000) return `${total}ms`;
  const h = Math.floor(total / 3_600_000);
  const m = Math.floor((total % 3_600_000) / 60_000);
  const s = (total % 60_000) / 1000;
  return `${h > 0 ? `${h}h` : ''}${h > 0 || m > 0 ? `${m}m` : ''}${s}s`;
}

/** headerValue reads one request header as a string (the first, if repeated). */
export function headerValue(headers: Readonly<Record<string, string | string[] | undefined>>, name: string) {
  const v = headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * ProviderGate is what both loopback providers share: the per-model buckets (made on first use
 * from `limits`), the 429s a test forced, and the attempt log.
 */
export class ProviderGate<D extends string> {
  /** Every attempt, in arrival order (never cleared: filter with `since`). */
  readonly log: AttemptRecord[] = [];
  readonly #limits: Readonly<Record<string, Partial<Record<D, BucketLimit>>>>;
  readonly #models = new Map<string, ModelBuckets<D>>();
  readonly #forced = new Map<string, ForcedRateLimit[]>();
  /** The clock of the buckets and of the reset timestamps, epoch ms. */
  readonly now: () => number;

  constructor(limits: Readonly<Record<string, Partial<Record<D, BucketLimit>>>> = {}, clock: () => number = Date.now) {
    this.#limits = limits;
    this.now = clock;
    // Validate every limit at start, not at a model's first request.
    for (const model of Object.keys(limits)) this.buckets(model);
  }

  /** buckets is the model's buckets, or undefined when it has no limits. */
  buckets(model: string | undefined): ModelBuckets<D> | undefined {
    if (model === undefined) return undefined;
    let b = this.#models.get(model);
    const limit = Object.hasOwn(this.#limits, model) ? this.#limits[model] : undefined;
    if (b === undefined && limit !== undefined) {
      b = new ModelBuckets<D>(limit, this.now(), model);
      this.#models.set(model, b);
    }
    return b;
  }

  /**
   * record logs an attempt at the clock's now (the instant its limits are decided at); its status
   * is read live from `rec` (set as the answer is chosen).
   */
  record(
    rec: { readonly time: number; readonly status: number },
    model: string | undefined,
    tenant: string | undefined,
  ): AttemptRecord {
    const a: AttemptRecord = {
      time: rec.time,
      date: this.now(),
      model,
      tenant,
      llmTokens: 0,
      get status() {
        return rec.status;
      },
    };
    this.log.push(a);
    return a;
  }

  forceNext(model: string, n: number, retryAfterMs: number | undefined): void {
    const q = this.#forced.get(model) ?? [];
    for (let i = 0; i < n; i++) q.push({ retryAfterMs });
    this.#forced.set(model, q);
  }

  takeForced(model: string | undefined): ForcedRateLimit | undefined {
    return model === undefined ? undefined : this.#forced.get(model)?.shift();
  }
}

/** retryHeaders are the 429's `retry-after-ms` and `retry-after` (whole seconds, rounded up). */
export function retryHeaders(ms: number): Record<string, string> {
  return { 'retry-after-ms': String(Math.ceil(ms)), 'retry-after': String(Math.ceil(ms / 1000)) };
}
