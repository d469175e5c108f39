/**
 * Running the scripts on a caller-given clock instead of Redis's TIME, so that tests can compare
 * them with bucket.ts on fixed instants. Reached through `@tollgate/core/internal` only.
 */
import type { Cluster, Redis } from 'ioredis';
import type { Decision, Reservation } from '../../bucket.js';
import type { Policy } from '../../policy.js';
import { type DecisionSpec, type Evaluator, isNoScript, specOf } from './batcher.js';
import { BATCH_SCRIPT, BATCH_SHA, BUCKET_SCRIPT, BUCKET_SHA } from './scripts.js';

/**
 * runScript sends a script by EVALSHA, and again by EVAL if Redis answers NOSCRIPT; a script's
 * binary reply comes back as a Buffer (see {@link decodeReply}).
 */
export function runScript(
  client: Redis | Cluster,
  lua: string,
  sha: string,
  numKeys: number,
  keysAndArgs: Array<string | Buffer>,
): Promise<unknown> {
  const c = client as unknown as Evaluator;
  return c.evalshaBuffer(sha, numKeys, ...keysAndArgs).catch((e: unknown) => {
    if (!isNoScript(e)) throw e;
    return c.evalBuffer(lua, numKeys, ...keysAndArgs);
  });
}

const MODES = { t: 0, r: 1, f: 2 } as const;

/** A decision's spec (the scripts' binary ARGV), as RedisBackend sends it. */
export function decisionArgs(
  mode: 't' | 'r' | 'f',
  policy: Pick<Policy, 'ratePerMs' | 'capacity'>,
  cost: number,
  maxWaitMs: number,
): DecisionSpec {
  const maxw = maxWaitMs === Number.POSITIVE_INFINITY ? -1 : maxWaitMs;
  return specOf(MODES[mode], policy.ratePerMs, policy.capacity, cost, maxw);
}

/** A deadline argument: '' (none), or ms on the server's clock (negative: none, remember that long). */
export function deadlineArg(ms: number | ''): Buffer | '' {
  if (ms === '') return '';
  const b = Buffer.alloc(8);
  b.writeDoubleLE(ms, 0);
  return b;
}

/** decodeReply reads a script's reply: its doubles, in order (four a decision, then now in µs). */
export function decodeReply(reply: unknown): number[] {
  if (!Buffer.isBuffer(reply) || reply.length % 8 !== 0) throw new Error(`not a script reply: ${String(reply)}`);
  const out: number[] = [];
  for (let at = 0; at < reply.length; at += 8) out.push(reply.readDoubleLE(at));
  return out;
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

  async #reply(name: string, key: string, spec: DecisionSpec): Promise<number[]> {
    return decodeReply(
      await runScript(this.client, BUCKET_SCRIPT, BUCKET_SHA, 1, [
        this.prefixKey(key, name),
        spec,
        '',
        '',
        String(this.now()),
      ]),
    );
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

/** One decision of a batch: its bucket's key, its spec, deadline (ms, text; '': none) and fixed now. */
export interface BatchStep {
  key: string;
  spec: DecisionSpec;
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
): Promise<number[]> {
  const keys = steps.map((s) => s.key);
  const argv: Array<string | Buffer> = [];
  let last: BatchStep | undefined;
  for (const s of steps) {
    if (last !== undefined && s.spec.equals(last.spec) && s.deadline === last.deadline && s.now === last.now) {
      argv[argv.length - 1] = String(Number(argv[argv.length - 1]) + 1);
      continue;
    }
    last = s;
    argv.push(s.spec, deadlineArg(s.deadline === '' ? '' : Number(s.deadline)), s.now, '1');
  }
  return decodeReply(await runScript(client, BATCH_SCRIPT, BATCH_SHA, keys.length + 1, [...keys, replyKey, ...argv]));
}
