/**
 * Deciding many concurrent calls in one script call. With hundreds of calls in flight, Redis and
 * the client spend most of their time on the per-command cost (parsing, dispatch, a Lua call
 * frame, a reply), not on the bucket arithmetic; one EVALSHA that runs the decisions of every
 * call waiting to be sent pays that cost once per batch.
 *
 * {@link ScriptBatcher} groups the calls made while earlier ones are still in flight (per Redis
 * Cluster slot, as a script may only touch keys of one slot) and sends them as one
 * {@link BATCH_SCRIPT} call; a call that finds nothing else waiting goes alone, as the ordinary
 * single-decision script, with no added delay. Decisions run in the order the calls were made.
 */
import type { Cluster, Redis } from 'ioredis';
import { BackendTimeoutError } from '../errors.js';
import { createHash } from 'node:crypto';
import { BUCKET_SCRIPT, DECIDE_LUA } from './redis-script.js';

/**
 * BATCH_SCRIPT runs a list of decisions, in order, each exactly as `BUCKET_SCRIPT` would (same
 * operations in the same order on the same doubles; `test/redis-batch.test.ts` checks that the
 * decisions are identical on random sequences). All decisions of one call share one instant of
 * the server's clock: TIME is read once.
 *
 * KEYS[i]  the bucket of decision i (all in one Cluster slot)
 * ARGV     runs of consecutive decisions that share their arguments, four entries a run:
 *          `<spec> <deadline> <now> <count>`: the spec as BUCKET_SCRIPT's ARGV[1] (`<mode>
 *          <rate> <cap> <cost> <max wait>`), the deadline in ms on the server's clock ('': none),
 *          now ('': the server's TIME; a fixed ms in tests only), and how many decisions (KEYS,
 *          in order) the run covers. Calls of one limiter made in the same ms form one run, so
 *          a batch carries one argument per decision (its key) plus a few per run, and the
 *          script parses a spec once per run.
 *
 * Returns a flat array: for each decision, in order, allowed (1|0, or -1: past its deadline,
 * nothing changed), remaining, wait ms, ms until full, as BUCKET_SCRIPT returns them; then the
 * server's now in ms (a %.17g string).
 */
export const BATCH_SCRIPT = `${DECIDE_LUA}
local out = {}
local i = 0
local j = 0
local servernow, now
for r = 1, #ARGV, 4 do
  local m, ra, c, k, w = string.match(ARGV[r], '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
  local mode, rate, cap, cost, maxw = m, tonumber(ra), tonumber(c), tonumber(k), tonumber(w)
  local deadline = tonumber(ARGV[r + 1])
  if ARGV[r + 2] ~= '' then
    now = tonumber(ARGV[r + 2])
  else
    if servernow == nil then
      local t = redis.call('TIME')
      servernow = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
    end
    now = servernow
  end
  local late = deadline ~= nil and now > deadline
  for _ = 1, tonumber(ARGV[r + 3]) do
    i = i + 1
    if late then
      out[j + 1] = -1
      out[j + 2] = 0
      out[j + 3] = 0
      out[j + 4] = 0
    else
      local allowed, remaining, wait, reset = decide(KEYS[i], mode, rate, cap, cost, maxw, now)
      out[j + 1] = allowed
      out[j + 2] = remaining
      out[j + 3] = wait
      out[j + 4] = reset
    end
    j = j + 4
  end
end
out[j + 1] = string.format('%.17g', now or 0)
return out
`;

const sha1 = (text: string): string => createHash('sha1').update(text).digest('hex');
/** What EVALSHA calls the scripts by. */
export const BUCKET_SHA = sha1(BUCKET_SCRIPT);
const BATCH_SHA = sha1(BATCH_SCRIPT);

/** The two ioredis methods the scripts are sent with (on a Redis or a Cluster). */
interface Evaluator {
  evalsha(sha: string, numKeys: number, ...keysAndArgs: string[]): Promise<unknown>;
  eval(lua: string, numKeys: number, ...keysAndArgs: string[]): Promise<unknown>;
}

/**
 * isNoScript tells whether Redis refused an EVALSHA because its script cache lacks the script
 * (SCRIPT FLUSH, a restart, a failover to a replica that never ran it): then the call goes again
 * as EVAL, which also loads it for the next EVALSHA. (ioredis's defineCommand does the same, but
 * costs every call an extra promise and the copies of its arguments.)
 */
export function isNoScript(e: unknown): boolean {
  return e instanceof Error && e.message.includes('NOSCRIPT');
}

/** runScript sends a script by EVALSHA, and again by EVAL if Redis answers NOSCRIPT. */
export function runScript(client: Redis | Cluster, lua: string, sha: string, numKeys: number, keysAndArgs: string[]): Promise<unknown> {
  const c = client as unknown as Evaluator;
  return c.evalsha(sha, numKeys, ...keysAndArgs).catch((e: unknown) => {
    if (!isNoScript(e)) throw e;
    return c.eval(lua, numKeys, ...keysAndArgs);
  });
}

/**
 * One decision's reply, as the single script returns it: allowed (1, 0; -1: past its deadline),
 * remaining, wait ms, ms until full (numbers; a string beyond 2^53), the server's now in ms.
 */
export type DecisionReply = [number, number | string, number | string, number | string, string];

/**
 * The single script's arguments after the key: the decision's spec (see `decisionSpec`), the
 * deadline ('' = none) and, in tests only, a fixed now ('' or absent = TIME).
 */
export type DecisionArgs = readonly [spec: string, deadline: string, now?: string];

/**
 * Sends one decision as the single-decision script, by EVALSHA, or by EVAL when `byEval` (Redis
 * answered NOSCRIPT); resolves with its reply (allowed, remaining, wait, ms until full, now: the
 * shape of a batch reply of one decision).
 */
export type SendOne = (key: string, args: DecisionArgs, byEval: boolean) => Promise<ReadonlyArray<number | string>>;

/**
 * One call handed to {@link ScriptBatcher.submit}: what to decide, and how to answer it (a
 * method, not a promise: one object per call is all the batcher allocates for it).
 */
export interface BatchCall {
  readonly key: string;
  args: DecisionArgs;
  /** Set by the batcher: when the caller stops waiting (performance.now ms), and its timeout. */
  deadline: number;
  timeoutMs: number;
  /**
   * The script answered: this call's decision is `reply[at]` (allowed) to `reply[at + 3]`
   * (ms until full); the server's now is the reply's last element. May come after {@link fail}
   * (a reply later than the call's timeout): the call must ignore it then.
   */
  answer(reply: ReadonlyArray<number | string>, at: number): void;
  /** The script call failed, or no reply came by `deadline` ({@link BackendTimeoutError}). */
  fail(e: unknown): void;
}

/**
 * Most decisions in one script call. A script blocks Redis while it runs (about 2 µs a
 * decision): 64 keep each call near 0.15 ms. Measured with 256 calls in flight on 2 vCPUs, Redis
 * on its own core: 64 × 4 in flight took ~5% less Redis CPU per decision than 32 × 8, at the same
 * or better throughput. (When a decision cost Redis twice as much, 32 × 8 had beaten 16 × 16,
 * 64 × 4, 128 × 2 and 256 × 1.)
 */
export const MAX_BATCH = 64;
/**
 * Script calls in flight per slot before new calls wait to join the next batch. Several keep
 * Redis busy on one while the client reads another's reply and gathers the next.
 */
export const MAX_IN_FLIGHT = 4;

type Item = BatchCall;

/** The calls of one Cluster slot (or of a whole standalone Redis). */
interface Group {
  pending: Item[];
  inFlight: number;
  scheduled: boolean;
}

/**
 * One script call in flight: its calls, their earliest deadline, and how to free its place.
 *
 * A class, not an object literal: V8 tracks the objects a literal allocates and, finding batches
 * alive at minor GCs, went on to allocate them in the old generation (allocation-site
 * pretenuring; `node --trace-pretenuring-statistics` shows it); each dead batch there kept its
 * young calls and replies alive through minor GCs until a full GC. At 256 calls in flight that
 * made minor GCs take 3-5 ms instead of 0.5, ~20% of the client's CPU.
 */
class Batch {
  release: () => void = noop;
  constructor(
    readonly items: Item[],
    public first: number,
  ) {}
}

const noop = (): void => {};
const RESOLVED = Promise.resolve();

/**
 * ScriptBatcher sends decisions to Redis, several in one script call when calls overlap. Its
 * replies are exactly what the single script would have answered, one per call, in call order.
 *
 * A call that finds its slot idle (nothing in flight, nothing waiting) is sent at once, alone. Any
 * other call is sent at the end of the current tick (a microtask) together with every other call
 * made in it, unless {@link MAX_IN_FLIGHT} script calls of its slot are already in flight: then
 * it waits for one of them to come back, and goes with the calls that gathered meanwhile. So a
 * lone caller pays no delay, and a crowd pays one script call per batch. A batch that has not come
 * back by a call's deadline rejects that call with {@link BackendTimeoutError}, and stops
 * counting as in flight once all its calls have, so a stalled connection cannot hold the calls
 * behind it; one timer per script call, not per call.
 */
export class ScriptBatcher {
  readonly #client: Evaluator;
  readonly #sendOne: SendOne;
  readonly #cluster: boolean;
  /**
   * Kept once made (at most one per Cluster slot, 16,384; one for a standalone Redis): dropping an
   * idle group and making it again cost every sequential call a Map delete, a Map set and two
   * allocations.
   */
  readonly #groups = new Map<number, Group>();
  /** Script calls sent and not yet answered (nor timed out). */
  readonly #inFlight = new Set<Batch>();
  /**
   * One timer for every call's timeout, armed for the earliest deadline in flight and left
   * running when calls are answered (arming and clearing a timer per call would cost more than
   * the rest of the call): when it fires it times out what is due and re-arms for the next.
   */
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt = Number.POSITIVE_INFINITY;

  constructor(client: Redis | Cluster, sendOne: SendOne) {
    this.#client = client as unknown as Evaluator;
    this.#sendOne = sendOne;
    this.#cluster = (client as { isCluster?: boolean }).isCluster === true;
  }

  /**
   * call decides one call, alone or in a batch; resolves with the single script's reply, or
   * rejects with {@link BackendTimeoutError} when no reply came within `timeoutMs`.
   */
  call(key: string, args: DecisionArgs, timeoutMs: number): Promise<DecisionReply> {
    return new Promise<DecisionReply>((resolve, reject) => {
      let done = false;
      this.submit(
        {
          key,
          args,
          deadline: 0,
          timeoutMs: 0,
          answer: (reply, at) => {
            if (done) return;
            done = true;
            const now = reply[reply.length - 1] as string;
            resolve([reply[at] as number, reply[at + 1] as number, reply[at + 2] as number, reply[at + 3] as number, now]);
          },
          fail: (e) => {
            done = true;
            reject(e);
          },
        },
        timeoutMs,
      );
    });
  }

  /**
   * submit decides `c`, alone or in a batch, and answers it through `c.answer` or `c.fail` (with
   * {@link BackendTimeoutError} when no reply came within `timeoutMs`).
   */
  submit(c: BatchCall, timeoutMs: number): void {
    const slot = this.#cluster ? keySlot(c.key) : 0;
    let g = this.#groups.get(slot);
    if (g === undefined) {
      g = { pending: [], inFlight: 0, scheduled: false };
      this.#groups.set(slot, g);
    }
    c.deadline = performance.now() + timeoutMs;
    c.timeoutMs = timeoutMs;
    if (g.inFlight === 0 && !g.scheduled && g.pending.length === 0) {
      // Nothing in flight, nothing waiting: a lone call goes at once.
      this.#send(g, [c]);
      return;
    }
    g.pending.push(c);
    if (!g.scheduled && g.inFlight < MAX_IN_FLIGHT) {
      g.scheduled = true;
      const group = g;
      // A microtask, as a resolved promise's reaction: Node's queueMicrotask wraps each
      // callback in an AsyncResource, which costs more than the rest of the call.
      RESOLVED.then(() => this.#flush(group));
    }
  }

  #arm(at: number): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(() => this.#expire(), Math.max(1, at - performance.now()));
    // The calls in flight keep the process alive through their connection, not this timer.
    this.#timer.unref?.();
  }

  /** Times out every call past its deadline, and re-arms the timer for the next deadline. */
  #expire(): void {
    this.#timer = undefined;
    this.#timerAt = Number.POSITIVE_INFINITY;
    const now = performance.now();
    let next = Number.POSITIVE_INFINITY;
    for (const b of this.#inFlight) {
      if (b.first > now + 0.5) {
        if (b.first < next) next = b.first;
        continue;
      }
      let live = Number.POSITIVE_INFINITY;
      for (const it of b.items) {
        if (it.deadline <= now + 0.5) it.fail(new BackendTimeoutError(it.timeoutMs));
        else if (it.deadline < live) live = it.deadline;
      }
      b.first = live;
      // A batch all of whose calls timed out stops counting as in flight.
      if (live === Number.POSITIVE_INFINITY) b.release();
      else if (live < next) next = live;
    }
    if (next !== Number.POSITIVE_INFINITY) this.#arm(next);
  }

  #flush(g: Group): void {
    g.scheduled = false;
    while (g.pending.length > 0 && g.inFlight < MAX_IN_FLIGHT) {
      const items = g.pending.length <= MAX_BATCH ? g.pending : g.pending.slice(0, MAX_BATCH);
      g.pending = g.pending.length <= MAX_BATCH ? [] : g.pending.slice(MAX_BATCH);
      this.#send(g, items);
    }
  }

  #send(g: Group, items: Item[]): void {
    g.inFlight++;
    let first = Number.POSITIVE_INFINITY;
    for (const it of items) if (it.deadline < first) first = it.deadline;
    const batch = new Batch(items, first);
    batch.release = (): void => {
      if (!this.#inFlight.delete(batch)) return;
      g.inFlight--;
      if (g.pending.length > 0 && !g.scheduled) {
        // Still in a reply's callback: flush now, the calls made meanwhile are all gathered.
        this.#flush(g);
      }
    };
    this.#inFlight.add(batch);
    if (first < this.#timerAt) this.#arm(first);
    const release = batch.release;
    if (items.length === 1) {
      const it = items[0] as Item;
      // Anonymous functions: a named one (`const answer = …`) costs a defineProperty per call
      // where the source runs through esbuild's keepNames (tsx, the bench).
      this.#sendOne(it.key, it.args, false).then(
        (r) => {
          release();
          it.answer(r, 0);
        },
        (e: unknown) => {
          if (!isNoScript(e)) {
            release();
            it.fail(e);
            return;
          }
          this.#sendOne(it.key, it.args, true).then(
            (r) => {
              release();
              it.answer(r, 0);
            },
            (e: unknown) => {
              release();
              it.fail(e);
            },
          );
        },
      );
      return;
    }
    const n = items.length;
    const argv: string[] = new Array(n);
    let spec = '';
    let dl = '';
    let now: string | undefined = '';
    let count = 0;
    for (let i = 0; i < n; i++) {
      const it = items[i] as Item;
      const a = it.args;
      argv[i] = it.key;
      if (count > 0 && a[0] === spec && a[1] === dl && a[2] === now) {
        count++;
        continue;
      }
      if (count > 0) argv.push(spec, dl, now ?? '', String(count));
      spec = a[0];
      dl = a[1];
      now = a[2];
      count = 1;
    }
    argv.push(spec, dl, now ?? '', String(count));
    this.#client.evalsha(BATCH_SHA, n, ...argv).then(
      (reply) => {
        release();
        settle(items, reply as Array<number | string>);
      },
      (e: unknown) => {
        if (!isNoScript(e)) {
          release();
          for (const it of items) it.fail(e);
          return;
        }
        this.#client.eval(BATCH_SCRIPT, n, ...argv).then(
          (reply) => {
            release();
            settle(items, reply as Array<number | string>);
          },
          (e: unknown) => {
            release();
            for (const it of items) it.fail(e);
          },
        );
      },
    );
  }
}

function settle(items: Item[], reply: Array<number | string>): void {
  const n = items.length;
  if (reply.length !== 4 * n + 1) {
    const e = new Error(`tollgate batch script answered ${(reply.length - 1) / 4} decisions for ${n} calls`);
    for (const it of items) it.fail(e);
    return;
  }
  for (let i = 0; i < n; i++) (items[i] as Item).answer(reply, 4 * i);
}

/**
 * keySlot is the Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag — the text between
 * the first `{` and the next `}`, when not empty — or of the whole key, modulo 16384. Computed on
 * the key's UTF-8 bytes, as Redis does.
 */
export function keySlot(key: string): number {
  const bytes = Buffer.from(key, 'utf8');
  let start = 0;
  let end = bytes.length;
  const open = bytes.indexOf(0x7b);
  if (open !== -1) {
    const close = bytes.indexOf(0x7d, open + 1);
    if (close !== -1 && close !== open + 1) {
      start = open + 1;
      end = close;
    }
  }
  let crc = 0;
  for (let i = start; i < end; i++) {
    crc = ((crc << 8) & 0xffff) ^ (CRC16_TABLE[((crc >> 8) ^ (bytes[i] as number)) & 0xff] as number);
  }
  return crc & 16383;
}

const CRC16_TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let j = 0; j < 8; j++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    t[i] = c;
  }
  return t;
})();
