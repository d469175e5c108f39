import type { Cluster, Redis } from 'ioredis';
import { z } from 'zod';
import type { Backend } from '../backend.js';
import type { Decision, Reservation } from '../bucket.js';
import { BackendTimeoutError, BackendUnavailableError, InvalidOptionsError } from '../errors.js';
import type { Policy } from '../policy.js';
import { describe, toOptionsError } from '../policy.js';
import { type DecisionReply, ScriptBatcher } from './redis-batch.js';
import { BUCKET_SCRIPT, decisionSpec } from './redis-script.js';

/** RedisBackendOptions configures a {@link RedisBackend}. */
export interface RedisBackendOptions {
  /** An ioredis client: a `Redis` (standalone or Sentinel) or a `Cluster`. */
  client: Redis | Cluster;
  /**
   * Prepended to every Redis key. May not contain `{` or `}` (they would change the Cluster
   * hash slot).
   * @default 'tollgate:'
   */
  prefix?: string;
  /**
   * How long one call to Redis may take before it fails with {@link BackendTimeoutError}. ioredis
   * alone would hold a command for over a minute while it reconnects. The deadline also travels
   * with the command: if Redis runs it later (after a reconnect, a pause, a failover), the script
   * changes nothing, so a call whose caller gave up never takes a token.
   * @default 1000
   */
  timeoutMs?: number;
}

/** DEFAULT_REDIS_OPTIONS holds the defaults of {@link RedisBackendOptions}. */
export const DEFAULT_REDIS_OPTIONS = { prefix: 'tollgate:', timeoutMs: 1000 } as const;

/** The script's name on the ioredis client (versioned: a changed script gets a new name). */
const COMMAND = 'tollgateBucketV3';

/**
 * allowed (1, 0; -1: ran after the deadline), remaining, wait ms, ms until full (numbers; strings
 * beyond 2^53), server now ms.
 */
type ScriptReply = DecisionReply;

/**
 * Replies slower than this (ms, round trip) do not update the estimate of the server's clock:
 * the estimate is off by at most half the round trip.
 */
const CLOCK_SAMPLE_MAX_RTT_MS = 20;
type ScriptClient = {
  [COMMAND](key: string, ...args: string[]): Promise<ScriptReply>;
};

const optionsSchema = z.object({
  client: z.custom<Redis | Cluster>(
    (v) => typeof v === 'object' && v !== null && typeof (v as { defineCommand?: unknown }).defineCommand === 'function',
    { error: (i) => `must be an ioredis Redis or Cluster client (received ${describe(i.input)})` },
  ),
  prefix: z
    .string({ error: (i) => `must be a string (received ${describe(i.input)})` })
    .refine((p) => !p.includes('{') && !p.includes('}') && !LONE_SURROGATE.test(p), {
      error: (i) => `must not contain '{', '}' or a lone UTF-16 surrogate (received ${describe(i.input)})`,
    })
    .optional(),
  timeoutMs: z
    .number({ error: (i) => `must be a number of ms (received ${describe(i.input)})` })
    .refine((v) => Number.isFinite(v) && v > 0 && v <= 2 ** 31 - 1, {
      error: (i) => `must be a finite number of ms > 0 (received ${describe(i.input)})`,
    })
    .optional(),
});

/** parseRedisOptions validates the options shared by the Redis and hybrid backends. */
export function parseRedisOptions(what: string, options: unknown): Required<RedisBackendOptions> {
  if (typeof options !== 'object' || options === null) {
    throw new InvalidOptionsError(`invalid ${what} options: must be an object with a client (received ${describe(options)})`);
  }
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success) throw toOptionsError(`${what} options`, parsed.error);
  return {
    client: parsed.data.client,
    prefix: parsed.data.prefix ?? DEFAULT_REDIS_OPTIONS.prefix,
    timeoutMs: parsed.data.timeoutMs ?? DEFAULT_REDIS_OPTIONS.timeoutMs,
  };
}

/** A UTF-16 surrogate not part of a pair: UTF-8 cannot hold it (it would become U+FFFD). */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const NEEDS_ESCAPE = /[%{}\uD800-\uDFFF]/;
const ESCAPES = /[%{}]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/**
 * encodeKey makes a tenant's key safe inside a Redis Cluster hash tag, one-to-one: `%`, `{` and
 * `}` are percent-encoded (`%25`, `%7B`, `%7D`), so the encoded key holds no brace; a lone UTF-16
 * surrogate becomes `%uD800`-style, since UTF-8 (what ioredis sends) would turn every one of them
 * into the same U+FFFD and two tenants' keys into one.
 */
export function encodeKey(key: string): string {
  // Fast path: most keys (user ids) hold none of these characters.
  if (!NEEDS_ESCAPE.test(key)) return key;
  return key.replace(ESCAPES, (c) =>
    c === '%' ? '%25' : c === '{' ? '%7B' : c === '}' ? '%7D' : `%u${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/**
 * redisKey is where the bucket (`key`, `name`) lives: `<prefix>{<encodeKey(key)>}:<encodeKey(name)>`.
 *
 * The hash tag holds the whole key, so every bucket of one user shares a Cluster slot; and since
 * the encoded key contains no `}`, the first `}` after the prefix ends it, so the Redis key
 * decodes to exactly one (key, name) pair: no tenant's id can reach another tenant's bucket.
 */
export function redisKey(prefix: string, key: string, name: string): string {
  return `${prefix}{${encodeKey(key)}}:${encodeKey(name)}`;
}

/**
 * RedisBackend keeps buckets in Redis, shared by every process: one Lua script per decision
 * (EVALSHA through ioredis `defineCommand`, which falls back to EVAL after a script cache flush),
 * timed by the Redis server's clock, never the caller's. Idle buckets expire when they would be
 * full. Works with an ioredis `Redis` or `Cluster`.
 *
 * Every call fails with {@link BackendTimeoutError} after `timeoutMs`; the {@link RateLimiter}'s
 * `onBackendError` policy decides what the caller sees then.
 *
 * @example new RedisBackend({ client: new Redis(process.env.REDIS_URL), prefix: 'myapp:' })
 */
export class RedisBackend implements Backend {
  readonly kind: string = 'redis';
  readonly client: Redis | Cluster;
  readonly prefix: string;
  readonly timeoutMs: number;
  /** For tests of the script only: a fixed clock passed to the script instead of TIME. */
  #nowForTests: (() => number) | undefined;
  /** Estimated (Redis's clock − Date.now()) in ms; undefined until a reply teaches it. */
  #clockOffset: number | undefined;
  /** Round trip of the reply #clockOffset came from. */
  #clockRtt = Number.POSITIVE_INFINITY;
  readonly #script: ScriptClient;
  /** Sends concurrent calls as one script call (see redis-batch.ts); a lone call goes alone. */
  readonly #batcher: ScriptBatcher;

  constructor(options: RedisBackendOptions) {
    const o = parseRedisOptions('RedisBackend', options);
    this.client = o.client;
    this.prefix = o.prefix;
    this.timeoutMs = o.timeoutMs;
    defineScript(o.client);
    this.#script = o.client as unknown as ScriptClient;
    const script = this.#script;
    this.#batcher = new ScriptBatcher(o.client, (key, a) =>
      a[2] === undefined ? script[COMMAND](key, a[0], a[1]) : script[COMMAND](key, a[0], a[1], a[2]),
    );
  }

  /**
   * Run the script on a caller-given clock instead of Redis's TIME. For tests that compare the
   * script with the in-memory math on fixed instants; never use it in production.
   * @internal
   */
  useClockForTests(clock: (() => number) | undefined): void {
    this.#nowForTests = clock;
  }

  async tryTake(name: string, key: string, policy: Policy, cost: number): Promise<Decision> {
    const r = await this.#run(redisKey(this.prefix, key, name), this.#spec('t', policy, cost, -1));
    return { allowed: r[0] === 1, remaining: Number(r[1]), retryAfterMs: Number(r[2]), resetAfterMs: Number(r[3]) };
  }

  async reserve(name: string, key: string, policy: Policy, cost: number, maxWaitMs: number): Promise<Reservation> {
    const maxw = maxWaitMs === Number.POSITIVE_INFINITY ? -1 : maxWaitMs;
    const r = await this.#run(redisKey(this.prefix, key, name), this.#spec('r', policy, cost, maxw));
    return { ok: r[0] === 1, waitMs: Number(r[2]), remaining: Number(r[1]), resetAfterMs: Number(r[3]) };
  }

  async refund(name: string, key: string, policy: Policy, amount: number): Promise<void> {
    await this.#run(redisKey(this.prefix, key, name), this.#spec('f', policy, amount, -1));
  }

  // The last spec built: one limiter sends the same one call after call, and formatting its
  // numbers costs more than the rest of building the command.
  #specPolicy: Policy | undefined;
  #specMode = '';
  #specCost = 0;
  #specMaxWait = 0;
  #specText = '';

  #spec(mode: 't' | 'r' | 'f', policy: Policy, cost: number, maxWaitMs: number): string {
    if (policy !== this.#specPolicy || mode !== this.#specMode || cost !== this.#specCost || maxWaitMs !== this.#specMaxWait) {
      this.#specText = decisionSpec(mode, policy.ratePerMs, policy.capacity, cost, maxWaitMs);
      this.#specPolicy = policy;
      this.#specMode = mode;
      this.#specCost = cost;
      this.#specMaxWait = maxWaitMs;
    }
    return this.#specText;
  }

  /**
   * One script call, bounded by timeoutMs, carrying its deadline on Redis's clock so that Redis
   * ignores it once its caller has stopped waiting.
   */
  async #run(redisKey: string, spec: string): Promise<ScriptReply> {
    if (this.#nowForTests) {
      return withTimeout(this.#script[COMMAND](redisKey, spec, '', String(this.#nowForTests())), this.timeoutMs);
    }
    // A connection known to be down fails at once instead of filling ioredis's offline queue.
    const status = (this.client as { status?: string }).status;
    if (status === 'reconnecting' || status === 'close' || status === 'end') {
      throw new BackendUnavailableError(`the Redis connection is ${status}`);
    }
    const sentAt = Date.now();
    let r = await this.#call(redisKey, spec, sentAt, this.timeoutMs);
    if (r[0] === -1) {
      // Redis judged us past the deadline while we still wait: the clock estimate was off. It
      // is corrected now (from this reply); try once more in the time left.
      const left = this.timeoutMs - (Date.now() - sentAt);
      if (left > 0) r = await this.#call(redisKey, spec, Date.now(), left);
      if (r[0] === -1) throw new BackendTimeoutError(this.timeoutMs);
    }
    return r;
  }

  async #call(redisKey: string, spec: string, sentAt: number, timeoutMs: number): Promise<ScriptReply> {
    const deadline = this.#clockOffset === undefined ? '' : String(sentAt + timeoutMs + this.#clockOffset);
    // The batcher bounds the call by timeoutMs (one timer per script call, not per call).
    const r = await this.#batcher.call(redisKey, [spec, deadline], timeoutMs);
    const receivedAt = Date.now();
    const rtt = receivedAt - sentAt;
    if (rtt <= CLOCK_SAMPLE_MAX_RTT_MS || rtt < this.#clockRtt) {
      const serverNow = Number(r[4]);
      if (Number.isFinite(serverNow)) {
        this.#clockOffset = serverNow - (sentAt + receivedAt) / 2;
        this.#clockRtt = rtt;
      }
    }
    return r;
  }
}

const defined = new WeakSet<object>();

function defineScript(client: Redis | Cluster): void {
  if (defined.has(client)) return;
  client.defineCommand(COMMAND, { numberOfKeys: 1, lua: BUCKET_SCRIPT });
  defined.add(client);
}

/** withTimeout settles with `p`, or rejects with BackendTimeoutError after `ms`. */
export function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new BackendTimeoutError(ms)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}
