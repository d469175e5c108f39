import type { Cluster, Redis } from 'ioredis';
import { encodeKey, masterOf } from '../backends/redis/keys.js';
import { BackendTimeoutError, BackendUnavailableError } from '../errors.js';
import type { Policy } from '../policy.js';
import { type Observation, type PoolAnswer, type PoolStatus, SHARE_GRACE_MS } from './pool-math.js';
import { POOL_SCRIPT, POOL_SHA } from './pool-script.js';
import type { Pools } from './pools.js';

type Reply = [number, number, number, number, string];

interface Evaluator {
  evalsha(sha: string, numKeys: number, ...args: string[]): Promise<Reply>;
  eval(lua: string, numKeys: number, ...args: string[]): Promise<Reply>;
}

/** poolKey is where pool `pool` of limiter `name` lives: one hash, its Cluster slot the pool's. */
export function poolKey(prefix: string, pool: string, name: string): string {
  return `${prefix}pool{${encodeKey(pool)}}:${encodeKey(name)}`;
}

/** Replies slower than this (ms, round trip) do not update the estimate of the server's clock. */
const CLOCK_SAMPLE_MAX_RTT_MS = 20;

/**
 * RedisPools keeps pools in Redis, shared by every process: one script call (EVALSHA; EVAL when
 * Redis answers NOSCRIPT) per step, timed by the server's clock, each bounded by `timeoutMs`
 * and carrying its deadline so that Redis ignores it once its caller has stopped waiting.
 */
/** A policy's four numbers as the pool script reads them (ARGV[2..5]), formatted once per policy. */
const policyText = new WeakMap<Policy, readonly string[]>();
function policyArgs(policy: Policy): readonly string[] {
  let t = policyText.get(policy);
  if (t === undefined) {
    t = [String(policy.ratePerMs), String(policy.capacity), String(policy.rate), String(policy.perMs)];
    policyText.set(policy, t);
  }
  return t;
}

export class RedisPools implements Pools {
  readonly kind = 'redis';
  readonly client: Redis | Cluster;
  readonly prefix: string;
  readonly timeoutMs: number;
  #now: (() => number) | undefined;
  /** Estimated (Redis's clock − Date.now()) in ms, from replies; undefined until one. */
  #offset: number | undefined;
  #offsetRtt = Number.POSITIVE_INFINITY;
  readonly #keys = new Map<string, string>();

  constructor(client: Redis | Cluster, prefix: string, timeoutMs: number) {
    this.client = client;
    this.prefix = prefix;
    this.timeoutMs = timeoutMs;
  }

  /** Run the script on a fixed clock instead of TIME: for the parity tests only. @internal */
  useClockForTests(clock: (() => number) | undefined): void {
    this.#now = clock;
  }

  #key(name: string, pool: string): string {
    const id = `${name}\u0000${pool}`;
    let k = this.#keys.get(id);
    if (k === undefined) {
      k = poolKey(this.prefix, pool, name);
      if (this.#keys.size > 10_000) this.#keys.clear();
      this.#keys.set(id, k);
    }
    return k;
  }

  /**
   * shardOf is the 'host:port' of the Cluster master that owns the pool's slot, as the client
   * knows it now; undefined for a standalone client (one shard) or a slot not yet known.
   */
  shardOf(name: string, pool: string): string | undefined {
    return masterOf(this.client, this.#key(name, pool));
  }

  decide(
    name: string,
    pool: string,
    key: string,
    policy: Policy,
    cost: number,
    weight: number,
    mode: 't' | 'r',
    maxWaitMs: number,
    more: boolean,
  ): Promise<PoolAnswer> {
    return this.#run(this.#key(name, pool), [
      mode,
      ...policyArgs(policy),
      key,
      String(cost),
      String(weight),
      String(maxWaitMs),
      more ? '1' : '0',
    ]).then(toAnswer);
  }

  refund(name: string, pool: string, key: string, policy: Policy, amount: number): Promise<void> {
    return this.#run(this.#key(name, pool), ['f', ...policyArgs(policy), key, String(amount), '1', '-1', '0']).then(
      () => undefined,
    );
  }

  observe(name: string, pool: string, policy: Policy, o: Observation): Promise<void> {
    return this.#run(
      this.#key(name, pool),
      ['o', ...policyArgs(policy), '', '0', '1', '-1', '0'],
      [String(o.limit), String(o.remaining), String(o.resetAfterMs), String(o.retryAfterMs)],
    ).then(() => undefined);
  }

  confirm(name: string, pool: string, policy: Policy): Promise<number> {
    return this.#run(this.#key(name, pool), ['c', ...policyArgs(policy), '', '0', '1', '-1', '0']).then((r) =>
      Number(r[1]),
    );
  }

  #run(redisKey: string, args: string[], observed?: string[]): Promise<Reply> {
    const status = (this.client as { status?: string }).status;
    if (status === 'reconnecting' || status === 'close' || status === 'end') {
      return Promise.reject(new BackendUnavailableError(`the Redis connection is ${status}`));
    }
    const sentAt = Date.now();
    const deadline =
      this.#offset === undefined || this.#now !== undefined ? '' : String(sentAt + this.timeoutMs + this.#offset);
    const all = [
      redisKey,
      ...args,
      String(SHARE_GRACE_MS),
      deadline,
      this.#now !== undefined ? String(this.#now()) : '',
    ];
    if (observed !== undefined) all.push(...observed);
    const c = this.client as unknown as Evaluator;
    const call = c.evalsha(POOL_SHA, 1, ...all).catch((e: unknown) => {
      if (!(e instanceof Error) || !e.message.startsWith('NOSCRIPT')) throw e;
      return c.eval(POOL_SCRIPT, 1, ...all);
    });
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => reject(new BackendTimeoutError(this.timeoutMs)), this.timeoutMs);
      call.then(
        (r) => {
          clearTimeout(timer);
          const receivedAt = Date.now();
          this.#sample(r[4], sentAt, receivedAt);
          if (r[0] === -1) reject(new BackendTimeoutError(this.timeoutMs));
          else resolve(r);
        },
        (e: unknown) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    });
  }

  #sample(serverNow: string, sentAt: number, receivedAt: number): void {
    const rtt = receivedAt - sentAt;
    if (rtt > CLOCK_SAMPLE_MAX_RTT_MS && rtt >= this.#offsetRtt) return;
    const now = Number(serverNow);
    if (!Number.isFinite(now)) return;
    this.#offset = now - (sentAt + receivedAt) / 2;
    this.#offsetRtt = rtt;
  }
}

function toAnswer(r: Reply): PoolAnswer {
  return { status: r[0] as PoolStatus, ms: Number(r[1]), remaining: Number(r[2]), resetAfterMs: Number(r[3]) };
}
