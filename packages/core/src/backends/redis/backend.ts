import { randomBytes } from 'node:crypto';
import type { Cluster, Redis } from 'ioredis';
import { z } from 'zod';
import type { Backend } from '../../backend.js';
import type { Decision, Reservation } from '../../bucket.js';
import { BackendTimeoutError, BackendUnavailableError, InvalidOptionsError } from '../../errors.js';
import type { Policy } from '../../policy.js';
import { describe, toOptionsError } from '../../policy.js';
import { type BatchCall, type DecisionSpec, ScriptBatcher, specOf } from './batcher.js';
import { ServerClock } from './clock.js';
import { LONE_SURROGATE, masterOf, redisKey } from './keys.js';

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

const optionsSchema = z.object({
  client: z.custom<Redis | Cluster>(
    (v) =>
      typeof v === 'object' && v !== null && typeof (v as { defineCommand?: unknown }).defineCommand === 'function',
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
    throw new InvalidOptionsError(
      `invalid ${what} options: must be an object with a client (received ${describe(options)})`,
    );
  }
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success) throw toOptionsError(`${what} options`, parsed.error);
  return {
    client: parsed.data.client,
    prefix: parsed.data.prefix ?? DEFAULT_REDIS_OPTIONS.prefix,
    timeoutMs: parsed.data.timeoutMs ?? DEFAULT_REDIS_OPTIONS.timeoutMs,
  };
}

/**
 * RedisBackend keeps buckets in Redis, shared by every process: one Lua script per decision
 * (EVALSHA, sent again as EVAL when Redis answers NOSCRIPT after a script cache flush),
 * timed by the Redis server's clock, never the caller's. Idle buckets expire when they would be
 * full. Works with an ioredis `Redis` or `Cluster`.
 *
 * Every call fails with {@link BackendTimeoutError} after `timeoutMs`; the {@link RateLimiter}'s
 * `onBackendError` policy decides what the caller sees then. Each decision is charged once: a
 * command that runs after its deadline changes nothing, and one that ioredis re-sends after a
 * lost reply is recognised by its id and answered with its first reply.
 *
 * @example new RedisBackend({ client: new Redis(process.env.REDIS_URL), prefix: 'myapp:' })
 */
export class RedisBackend implements Backend {
  readonly kind: string = 'redis';
  readonly client: Redis | Cluster;
  readonly prefix: string;
  readonly timeoutMs: number;
  /** Redis's clock as seen from here, learned from replies. */
  readonly #clock = new ServerClock();
  /** Sends concurrent calls as one script call; a lone call goes alone. */
  readonly #batcher: ScriptBatcher;
  /** The first 8 bytes of every call id: names this backend among Redis's clients. */
  readonly #clientId = randomBytes(6).toString('base64url');
  #seq = 0;
  readonly #cluster: boolean;

  constructor(options: RedisBackendOptions) {
    const o = parseRedisOptions('RedisBackend', options);
    this.client = o.client;
    this.prefix = o.prefix;
    this.timeoutMs = o.timeoutMs;
    this.#batcher = new ScriptBatcher(o.client, this.#clientId);
    this.#cluster = (o.client as { isCluster?: boolean }).isCluster === true;
    watchErrors(o.client);
  }

  tryTake(name: string, key: string, policy: Policy, cost: number): Promise<Decision> {
    return this.#run(TRY, redisKey(this.prefix, key, name), this.#spec(0, policy, cost, -1)) as Promise<Decision>;
  }

  reserve(name: string, key: string, policy: Policy, cost: number, maxWaitMs: number): Promise<Reservation> {
    const maxw = maxWaitMs === Number.POSITIVE_INFINITY ? -1 : maxWaitMs;
    return this.#run(
      RESERVE,
      redisKey(this.prefix, key, name),
      this.#spec(1, policy, cost, maxw),
    ) as Promise<Reservation>;
  }

  refund(name: string, key: string, policy: Policy, amount: number): Promise<void> {
    return this.#run(REFUND, redisKey(this.prefix, key, name), this.#spec(2, policy, amount, -1)) as Promise<void>;
  }

  // The last spec built: one limiter sends the same one call after call. The batcher also merges
  // consecutive calls that share the very same spec into one run.
  #specPolicy: Policy | undefined;
  #specMode = -1;
  #specCost = 0;
  #specMaxWait = 0;
  #specArgs: DecisionSpec = specOf(0, 1, 1, 1, -1);

  #spec(mode: 0 | 1 | 2, policy: Policy, cost: number, maxWaitMs: number): DecisionSpec {
    if (
      policy !== this.#specPolicy ||
      mode !== this.#specMode ||
      cost !== this.#specCost ||
      maxWaitMs !== this.#specMaxWait
    ) {
      this.#specArgs = specOf(mode, policy.ratePerMs, policy.capacity, cost, maxWaitMs);
      this.#specPolicy = policy;
      this.#specMode = mode;
      this.#specCost = cost;
      this.#specMaxWait = maxWaitMs;
    }
    return this.#specArgs;
  }

  /** A fresh call id: this backend's 8 bytes, then a counter as 8 base-36 digits. */
  #nextId(): string {
    const n = this.#seq;
    this.#seq = n === MAX_SEQ ? 0 : n + 1;
    return this.#clientId + (SEQ_PAD + n.toString(36)).slice(-8);
  }

  /**
   * One decision, bounded by timeoutMs, carrying its deadline on Redis's clock so that Redis
   * ignores it once its caller has stopped waiting.
   */
  #run(kind: Kind, redisKey: string, spec: DecisionSpec): Promise<Decision | Reservation | undefined> {
    // A connection known to be down fails at once instead of filling ioredis's offline queue.
    const status = (this.client as { status?: string }).status;
    if (status === 'reconnecting' || status === 'close' || status === 'end') {
      return Promise.reject(
        new BackendUnavailableError(`the Redis connection is ${status}`, lastErrors.get(this.client)),
      );
    }
    return new Promise((resolve, reject) => {
      const sentAt = Date.now();
      const deadline = this.#clock.deadline(sentAt, this.timeoutMs);
      const call = new Call(
        kind,
        redisKey,
        spec,
        deadline,
        this.#nextId(),
        sentAt,
        this.timeoutMs,
        this.#clock,
        this.#batcher,
        resolve,
        reject,
      );
      this.#batcher.submit(call, this.timeoutMs);
    });
  }

  /**
   * shardOf is the 'host:port' of the Cluster master that owns the bucket's slot, as the client
   * knows it now; undefined for a standalone client (one shard) or a slot not yet known. The
   * limiter keeps a circuit breaker per shard, so one failing master fails only its own keys.
   */
  shardOf(name: string, key: string): string | undefined {
    // Asked on every call (the hybrid's local rejections included): a standalone client has one
    // shard, and encoding the key for it would be wasted.
    if (!this.#cluster) return undefined;
    return masterOf(this.client, redisKey(this.prefix, key, name));
  }
}

const SEQ_PAD = '00000000';
const MAX_SEQ = 36 ** 8 - 1;

/** What a call asks, and so what its promise resolves with. */
const TRY = 0;
const RESERVE = 1;
const REFUND = 2;
type Kind = typeof TRY | typeof RESERVE | typeof REFUND;

/** The answer to a call of `kind` from the decision at byte `at` of `reply`. */
function result(kind: Kind, reply: Buffer, at: number): Decision | Reservation | undefined {
  if (kind === TRY) {
    return {
      allowed: reply.readDoubleLE(at) === 1,
      remaining: reply.readDoubleLE(at + 8),
      retryAfterMs: reply.readDoubleLE(at + 16),
      resetAfterMs: reply.readDoubleLE(at + 24),
    };
  }
  if (kind === RESERVE) {
    return {
      ok: reply.readDoubleLE(at) === 1,
      waitMs: reply.readDoubleLE(at + 16),
      remaining: reply.readDoubleLE(at + 8),
      resetAfterMs: reply.readDoubleLE(at + 24),
    };
  }
  return undefined;
}

/** One decision in the batcher's hands: answers its caller's promise, or tries once more. */
class Call implements BatchCall {
  readonly key: string;
  readonly spec: DecisionSpec;
  serverDeadline: Buffer | string;
  id: string;
  expiresAt = 0;
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
    spec: DecisionSpec,
    deadline: Buffer,
    id: string,
    sentAt: number,
    total: number,
    clock: ServerClock,
    batcher: ScriptBatcher,
    resolve: (v: Decision | Reservation | undefined) => void,
    reject: (e: unknown) => void,
  ) {
    this.#kind = kind;
    this.key = key;
    this.spec = spec;
    this.serverDeadline = deadline;
    this.id = id;
    this.#sentAt = sentAt;
    this.#total = total;
    this.#clock = clock;
    this.#batcher = batcher;
    this.#resolve = resolve;
    this.#reject = reject;
  }

  answer(reply: Buffer, at: number): void {
    // A reply that comes after the caller's timeout changes nothing (and teaches nothing).
    if (this.#settled) return;
    const receivedAt = Date.now();
    this.#clock.sample(reply.readDoubleLE(reply.length - 8), this.#sentAt, receivedAt);
    if (reply.readDoubleLE(at) === -1) {
      // Redis judged us past the deadline while we still wait: the clock estimate was off. It
      // is corrected now (from this reply); try once more, as a new call, in the time left.
      const left = this.timeoutMs - (receivedAt - this.#sentAt);
      if (!this.#retried && left > 0) {
        this.#retried = true;
        this.#sentAt = receivedAt;
        this.serverDeadline = this.#clock.deadline(receivedAt, left);
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

/** The last error each client emitted: the `cause` of calls failed while it reconnects. */
const lastErrors = new WeakMap<object, Error>();
const watched = new WeakSet<object>();

/**
 * watchErrors records a client's `error` events (one listener per client, however many backends
 * share it). It also means ioredis no longer prints "Unhandled error event" on every failed
 * reconnection: the limiter reports a backend failure once, through `onError` or one warning.
 */
function watchErrors(client: Redis | Cluster): void {
  if (watched.has(client)) return;
  watched.add(client);
  client.on('error', (e: unknown) => {
    if (e instanceof Error) lastErrors.set(client, e);
  });
}
