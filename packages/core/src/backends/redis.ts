import type { Cluster, Redis } from 'ioredis';
import { z } from 'zod';
import type { Backend } from '../backend.js';
import type { Decision, Reservation } from '../bucket.js';
import { BackendTimeoutError, BackendUnavailableError, InvalidOptionsError } from '../errors.js';
import type { Policy } from '../policy.js';
import { describe, toOptionsError } from '../policy.js';
import { BUCKET_SHA, type BatchCall, type DecisionArgs, type DecisionReply, ScriptBatcher, keySlot, runScript } from './redis-batch.js';
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
 * (EVALSHA, sent again as EVAL when Redis answers NOSCRIPT after a script cache flush),
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
  /** Redis's clock as seen from here, learned from replies. */
  readonly #clock = new ServerClock();
  /** Sends concurrent calls as one script call (see redis-batch.ts); a lone call goes alone. */
  readonly #batcher: ScriptBatcher;

  constructor(options: RedisBackendOptions) {
    const o = parseRedisOptions('RedisBackend', options);
    this.client = o.client;
    this.prefix = o.prefix;
    this.timeoutMs = o.timeoutMs;
    const c = o.client as unknown as {
      evalsha(sha: string, numKeys: 1, ...keyAndArgs: string[]): Promise<ScriptReply>;
      eval(lua: string, numKeys: 1, ...keyAndArgs: string[]): Promise<ScriptReply>;
    };
    // EVALSHA with the arguments as they are (no copies); EVAL when Redis lost the script.
    this.#batcher = new ScriptBatcher(o.client, (key, a, byEval) => {
      if (byEval) return a[2] === undefined ? c.eval(BUCKET_SCRIPT, 1, key, a[0], a[1]) : c.eval(BUCKET_SCRIPT, 1, key, a[0], a[1], a[2]);
      return a[2] === undefined ? c.evalsha(BUCKET_SHA, 1, key, a[0], a[1]) : c.evalsha(BUCKET_SHA, 1, key, a[0], a[1], a[2]);
    });
  }

  /**
   * Run the script on a caller-given clock instead of Redis's TIME. For tests that compare the
   * script with the in-memory math on fixed instants; never use it in production.
   * @internal
   */
  useClockForTests(clock: (() => number) | undefined): void {
    this.#nowForTests = clock;
  }

  tryTake(name: string, key: string, policy: Policy, cost: number): Promise<Decision> {
    return this.#run(TRY, redisKey(this.prefix, key, name), this.#spec('t', policy, cost, -1)) as Promise<Decision>;
  }

  reserve(name: string, key: string, policy: Policy, cost: number, maxWaitMs: number): Promise<Reservation> {
    const maxw = maxWaitMs === Number.POSITIVE_INFINITY ? -1 : maxWaitMs;
    return this.#run(RESERVE, redisKey(this.prefix, key, name), this.#spec('r', policy, cost, maxw)) as Promise<Reservation>;
  }

  refund(name: string, key: string, policy: Policy, amount: number): Promise<void> {
    return this.#run(REFUND, redisKey(this.prefix, key, name), this.#spec('f', policy, amount, -1)) as Promise<void>;
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
   * One decision, bounded by timeoutMs, carrying its deadline on Redis's clock so that Redis
   * ignores it once its caller has stopped waiting.
   */
  #run(kind: Kind, redisKey: string, spec: string): Promise<Decision | Reservation | undefined> {
    if (this.#nowForTests) {
      const reply = runScript(this.client, BUCKET_SCRIPT, BUCKET_SHA, 1, [redisKey, spec, '', String(this.#nowForTests())]);
      return withTimeout(reply, this.timeoutMs).then((r) => result(kind, r as ScriptReply, 0));
    }
    // A connection known to be down fails at once instead of filling ioredis's offline queue.
    const status = (this.client as { status?: string }).status;
    if (status === 'reconnecting' || status === 'close' || status === 'end') {
      return Promise.reject(new BackendUnavailableError(`the Redis connection is ${status}`));
    }
    return new Promise((resolve, reject) => {
      const sentAt = Date.now();
      const call = new Call(kind, redisKey, spec, this.#clock.deadline(sentAt, this.timeoutMs), sentAt, this.timeoutMs, this.#clock, this.#batcher, resolve, reject);
      // The batcher bounds the call by timeoutMs (one timer per script call, not per call).
      this.#batcher.submit(call, this.timeoutMs);
    });
  }

  /**
   * shardOf is the 'host:port' of the Cluster master that owns the bucket's slot, as the client
   * knows it now; undefined for a standalone client (one shard) or a slot not yet known. The
   * limiter keeps a circuit breaker per shard, so one failing master fails only its own keys.
   */
  shardOf(name: string, key: string): string | undefined {
    const slots = (this.client as { isCluster?: boolean; slots?: string[][] }).slots;
    if (slots === undefined || (this.client as { isCluster?: boolean }).isCluster !== true) return undefined;
    return slots[keySlot(redisKey(this.prefix, key, name))]?.[0];
  }
}

/** What a call asks, and so what its promise resolves with. */
const TRY = 0;
const RESERVE = 1;
const REFUND = 2;
type Kind = typeof TRY | typeof RESERVE | typeof REFUND;

/** The answer to a call of `kind` from the decision at `reply[at]`. */
function result(kind: Kind, reply: ReadonlyArray<number | string>, at: number): Decision | Reservation | undefined {
  if (kind === TRY) {
    return {
      allowed: reply[at] === 1,
      remaining: Number(reply[at + 1]),
      retryAfterMs: Number(reply[at + 2]),
      resetAfterMs: Number(reply[at + 3]),
    };
  }
  if (kind === RESERVE) {
    return {
      ok: reply[at] === 1,
      waitMs: Number(reply[at + 2]),
      remaining: Number(reply[at + 1]),
      resetAfterMs: Number(reply[at + 3]),
    };
  }
  return undefined;
}

/**
 * The offset between Redis's clock and this process's, learned from replies, and the deadlines
 * it gives commands (on Redis's clock).
 */
class ServerClock {
  /** Estimated (Redis's clock − Date.now()) in ms; undefined until a reply teaches it. */
  offset: number | undefined;
  /** Round trip of the reply `offset` came from. */
  rtt = Number.POSITIVE_INFINITY;
  // The last deadline made: the calls made in one ms with one estimate share it (turning a
  // fractional double into text costs more than the rest of a call).
  #at = Number.NaN;
  #text = '';
  // The last sample taken: the calls of one reply mostly share it.
  #sampleNow = '';
  #sampleSent = 0;
  #sampleReceived = 0;

  /** The deadline, on Redis's clock, of a call sent at `sentAt` (Date.now) for `timeoutMs`. */
  deadline(sentAt: number, timeoutMs: number): string {
    if (this.offset === undefined) return '';
    const at = sentAt + timeoutMs + this.offset;
    if (at !== this.#at) {
      this.#at = at;
      this.#text = String(at);
    }
    return this.#text;
  }

  /** Learns from a reply that says Redis's clock read `serverNow` between `sentAt` and `receivedAt`. */
  sample(serverNow: string, sentAt: number, receivedAt: number): void {
    if (serverNow === this.#sampleNow && sentAt === this.#sampleSent && receivedAt === this.#sampleReceived) return;
    this.#sampleNow = serverNow;
    this.#sampleSent = sentAt;
    this.#sampleReceived = receivedAt;
    const rtt = receivedAt - sentAt;
    if (rtt <= CLOCK_SAMPLE_MAX_RTT_MS || rtt < this.rtt) {
      const now = Number(serverNow);
      if (Number.isFinite(now)) {
        this.offset = now - (sentAt + receivedAt) / 2;
        this.rtt = rtt;
      }
    }
  }
}

/** One decision in the batcher's hands: answers its caller's promise, or tries once more. */
class Call implements BatchCall {
  readonly key: string;
  args: DecisionArgs;
  deadline = 0;
  timeoutMs = 0;
  readonly #kind: Kind;
  #sentAt: number;
  /** The backend's timeoutMs: what a call Redis keeps judging late reports. */
  readonly #total: number;
  #retried = false;
  #settled = false;
  readonly #clock: ServerClock;
  readonly #batcher: ScriptBatcher;
  readonly #resolve: (v: Decision | Reservation | undefined) => void;
  readonly #reject: (e: unknown) => void;

  constructor(
    kind: Kind,
    key: string,
    spec: string,
    deadline: string,
    sentAt: number,
    total: number,
    clock: ServerClock,
    batcher: ScriptBatcher,
    resolve: (v: Decision | Reservation | undefined) => void,
    reject: (e: unknown) => void,
  ) {
    this.#kind = kind;
    this.key = key;
    this.args = [spec, deadline];
    this.#sentAt = sentAt;
    this.#total = total;
    this.#clock = clock;
    this.#batcher = batcher;
    this.#resolve = resolve;
    this.#reject = reject;
  }

  answer(reply: ReadonlyArray<number | string>, at: number): void {
    // A reply that comes after the caller's timeout changes nothing (and teaches nothing).
    if (this.#settled) return;
    const receivedAt = Date.now();
    this.#clock.sample(reply[reply.length - 1] as string, this.#sentAt, receivedAt);
    if (reply[at] === -1) {
      // Redis judged us past the deadline while we still wait: the clock estimate was off. It
      // is corrected now (from this reply); try once more in the time left.
      const left = this.timeoutMs - (receivedAt - this.#sentAt);
      if (!this.#retried && left > 0) {
        this.#retried = true;
        this.#sentAt = receivedAt;
        this.args = [this.args[0], this.#clock.deadline(receivedAt, left)];
        this.#batcher.submit(this, left);
        return;
      }
      this.fail(new BackendTimeoutError(this.#total));
      return;
    }
    this.#settled = true;
    this.#resolve(result(this.#kind, reply, at));
  }

  fail(e: unknown): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#reject(e);
  }
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
