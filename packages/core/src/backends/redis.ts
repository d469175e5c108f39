import type { Cluster, Redis } from 'ioredis';
import { z } from 'zod';
import type { Backend } from '../backend.js';
import type { Decision, Reservation } from '../bucket.js';
import { BackendTimeoutError, InvalidOptionsError } from '../errors.js';
import type { Policy } from '../policy.js';
import { describe, toOptionsError } from '../policy.js';
import { BUCKET_SCRIPT } from './redis-script.js';

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
   * alone would hold a command for over a minute while it reconnects.
   * @default 1000
   */
  timeoutMs?: number;
}

/** DEFAULT_REDIS_OPTIONS holds the defaults of {@link RedisBackendOptions}. */
export const DEFAULT_REDIS_OPTIONS = { prefix: 'tollgate:', timeoutMs: 1000 } as const;

/** The script's name on the ioredis client (versioned: a changed script gets a new name). */
const COMMAND = 'tollgateBucketV1';

type ScriptReply = [number, string, string, string];
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
    .refine((p) => !p.includes('{') && !p.includes('}'), {
      error: (i) => `must not contain '{' or '}' (received ${describe(i.input)})`,
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

/**
 * encodeKey makes a tenant's key safe inside a Redis Cluster hash tag: `%`, `{` and `}` are
 * percent-encoded, so the encoded key holds no brace and decoding is unambiguous.
 */
export function encodeKey(key: string): string {
  // Fast path: most keys (user ids) hold none of the three characters.
  if (!/[%{}]/.test(key)) return key;
  return key.replace(/[%{}]/g, (c) => (c === '%' ? '%25' : c === '{' ? '%7B' : '%7D'));
}

/**
 * redisKey is where the bucket (`key`, `name`) lives: `<prefix>{<encodeKey(key)>}:<name>`.
 *
 * The hash tag holds the whole key, so every bucket of one user shares a Cluster slot; and since
 * the encoded key contains no `}`, the first `}` after the prefix ends it, so the Redis key
 * decodes to exactly one (key, name) pair: no tenant's id can reach another tenant's bucket.
 */
export function redisKey(prefix: string, key: string, name: string): string {
  return `${prefix}{${encodeKey(key)}}:${name}`;
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
  readonly #script: ScriptClient;

  constructor(options: RedisBackendOptions) {
    const o = parseRedisOptions('RedisBackend', options);
    this.client = o.client;
    this.prefix = o.prefix;
    this.timeoutMs = o.timeoutMs;
    defineScript(o.client);
    this.#script = o.client as unknown as ScriptClient;
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
    const r = await this.#run(redisKey(this.prefix, key, name), 't', policy, cost, -1);
    const tokens = Number(r[1]);
    const allowed = r[0] === 1;
    return {
      allowed,
      remaining: tokens > 0 ? Math.floor(tokens + 1e-9) : 0,
      retryAfterMs: Number(r[2]),
      resetAfterMs: Number(r[3]),
    };
  }

  async reserve(name: string, key: string, policy: Policy, cost: number, maxWaitMs: number): Promise<Reservation> {
    const maxw = maxWaitMs === Number.POSITIVE_INFINITY ? -1 : maxWaitMs;
    const r = await this.#run(redisKey(this.prefix, key, name), 'r', policy, cost, maxw);
    const tokens = Number(r[1]);
    return {
      ok: r[0] === 1,
      waitMs: Number(r[2]),
      remaining: tokens > 0 ? Math.floor(tokens + 1e-9) : 0,
      resetAfterMs: Number(r[3]),
    };
  }

  async refund(name: string, key: string, policy: Policy, amount: number): Promise<void> {
    await this.#run(redisKey(this.prefix, key, name), 'f', policy, amount, -1);
  }

  /** One script call, bounded by timeoutMs. */
  #run(redisKey: string, mode: string, policy: Policy, cost: number, maxWaitMs: number): Promise<ScriptReply> {
    const now = this.#nowForTests ? String(this.#nowForTests()) : '';
    const call = this.#script[COMMAND](
      redisKey,
      mode,
      String(policy.ratePerMs),
      String(policy.capacity),
      String(cost),
      String(maxWaitMs),
      now,
    );
    return withTimeout(call, this.timeoutMs);
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
