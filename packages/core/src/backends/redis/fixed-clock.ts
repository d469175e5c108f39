/**
 * Running the scripts on a caller-given clock instead of Redis's TIME, so that tests can compare
 * them with bucket.ts on fixed instants. Reached through `@tollgate/core/internal` only.
 */
import type { Cluster, Redis } from 'ioredis';
import type { Decision, Reservation } from '../../bucket.js';
import type { Policy } from '../../policy.js';
import { isNoScript } from './batcher.js';
import { BATCH_SCRIPT, BATCH_SHA, BUCKET_SCRIPT, BUCKET_SHA } from './scripts.js';

interface Evaluator {
  evalsha(sha: string, numKeys: number, ...keysAndArgs: string[]): Promise<unknown>;
  eval(lua: string, numKeys: number, ...keysAndArgs: string[]): Promise<unknown>;
}

/** runScript sends a script by EVALSHA, and again by EVAL if Redis answers NOSCRIPT. */
export function runScript(
  client: Redis | Cluster,
  lua: string,
  sha: string,
  numKeys: number,
  keysAndArgs: string[],
): Promise<unknown> {
  const c = client as unknown as Evaluator;
  return c.evalsha(sha, numKeys, ...keysAndArgs).catch((e: unknown) => {
    if (!isNoScript(e)) throw e;
    return c.eval(lua, numKeys, ...keysAndArgs);
  });
}

/** The single script's arguments for one decision, as RedisBackend sends them. */
export function decisionArgs(
  mode: 't' | 'r' | 'f',
  policy: Pick<Policy, 'ratePerMs' | 'capacity'>,
  cost: number,
  maxWaitMs: number,
): string[] {
  const maxw = maxWaitMs === Number.POSITIVE_INFINITY ? -1 : maxWaitMs;
  return [mode, String(policy.ratePerMs), String(policy.capacity), String(cost), String(maxw)];
}

/**
 * ScriptAt decides on `client` as RedisBackend does, at the instant `now()` (ms) instead of
 * Redis's TIME; no deadline, no call id. For tests.
 */
export class ScriptAt {
  constructor(
    readonly client: Redis | Cluster,
    readonly prefixKey: (key: string, name: string) => string,
    readonly now: () => number,
  ) {}

  async #reply(name: string, key: string, args: string[]): Promise<Array<number | string>> {
    return (await runScript(this.client, BUCKET_SCRIPT, BUCKET_SHA, 1, [
      this.prefixKey(key, name),
      ...args,
      '',
      '',
      String(this.now()),
    ])) as Array<number | string>;
  }

  async tryTake(name: string, key: string, policy: Policy, cost: number): Promise<Decision> {
    const r = await this.#reply(name, key, decisionArgs('t', policy, cost, -1));
    return { allowed: r[0] === 1, remaining: Number(r[1]), retryAfterMs: Number(r[2]), resetAfterMs: Number(r[3]) };
  }

  async reserve(name: string, key: string, policy: Policy, cost: number, maxWaitMs: number): Promise<Reservation> {
    const r = await this.#reply(name, key, decisionArgs('r', policy, cost, maxWaitMs));
    return { ok: r[0] === 1, waitMs: Number(r[2]), remaining: Number(r[1]), resetAfterMs: Number(r[3]) };
  }

  async refund(name: string, key: string, policy: Policy, amount: number): Promise<void> {
    await this.#reply(name, key, decisionArgs('f', policy, amount, -1));
  }
}

/** One decision of a batch: its bucket's key, its five spec arguments, deadline and fixed now. */
export interface BatchStep {
  key: string;
  spec: readonly string[];
  deadline: string;
  now: string;
}

/**
 * runBatch sends `steps` as one batch script call (consecutive steps with equal arguments as one
 * run, as the batcher does), remembering the reply under `replyKey`; resolves with the flat reply.
 */
export async function runBatch(
  client: Redis | Cluster,
  steps: readonly BatchStep[],
  replyKey: string,
): Promise<Array<number | string>> {
  const keys = steps.map((s) => s.key);
  const argv: string[] = [];
  let last = -1;
  for (const s of steps) {
    if (
      last >= 0 &&
      s.spec.every((x, i) => argv[last + i] === x) &&
      argv[last + 5] === s.deadline &&
      argv[last + 6] === s.now
    ) {
      argv[last + 7] = String(Number(argv[last + 7]) + 1);
      continue;
    }
    last = argv.length;
    argv.push(...s.spec, s.deadline, s.now, '1');
  }
  return (await runScript(client, BATCH_SCRIPT, BATCH_SHA, keys.length + 1, [...keys, replyKey, ...argv])) as Array<
    number | string
  >;
}
