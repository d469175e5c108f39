/**
 * Deciding many concurrent calls in one script call. With hundreds of calls in flight, Redis and
 * the client spend most of their time on the per-command cost (parsing, dispatch, a Lua call
 * frame, a reply), not on the bucket arithmetic; one EVALSHA that runs the decisions of every
 * call waiting to be sent pays that cost once per batch.
 */
import type { Cluster, Redis } from 'ioredis';
import { BackendTimeoutError, BackendUnavailableError } from '../../errors.js';
import { keySlot } from './keys.js';
import { BATCH_SCRIPT, BATCH_SHA, BUCKET_SCRIPT, BUCKET_SHA, DECISION_BYTES, SPEC_BYTES } from './scripts.js';

/**
 * The two ioredis methods the scripts are sent with (on a Redis or a Cluster): the scripts answer
 * binary strings, which the `…Buffer` variants hand over as they came. (ioredis makes a `…Buffer`
 * variant of every command; its typings list them for some only.)
 */
export interface Evaluator {
  evalshaBuffer(sha: string, numKeys: number, ...keysAndArgs: Array<string | Buffer>): Promise<unknown>;
  evalBuffer(lua: string, numKeys: number, ...keysAndArgs: Array<string | Buffer>): Promise<unknown>;
}

/**
 * isNoScript tells whether Redis refused an EVALSHA because its script cache lacks the script
 * (SCRIPT FLUSH, a restart, a failover to a replica that never ran it).
 */
export function isNoScript(e: unknown): boolean {
  return e instanceof Error && e.message.includes('NOSCRIPT');
}

/**
 * A decision's spec as the scripts take it (BUCKET_SCRIPT's ARGV[1]): mode, rate per ms,
 * capacity, cost, max wait ms, as binary doubles. Never changed once made: calls in flight hold it.
 */
export type DecisionSpec = Buffer;

/** specOf encodes a decision's spec (mode 0 try, 1 reserve, 2 refund; max wait < 0: no limit). */
export function specOf(
  mode: 0 | 1 | 2,
  ratePerMs: number,
  capacity: number,
  cost: number,
  maxWaitMs: number,
): DecisionSpec {
  const b = Buffer.allocUnsafe(SPEC_BYTES);
  b.writeDoubleLE(mode, 0);
  b.writeDoubleLE(ratePerMs, 8);
  b.writeDoubleLE(capacity, 16);
  b.writeDoubleLE(cost, 24);
  b.writeDoubleLE(maxWaitMs, 32);
  return b;
}

/**
 * One call handed to {@link ScriptBatcher.submit}: what to decide, and how to answer it (a
 * method, not a promise: one object per call is all the batcher allocates for it).
 */
export interface BatchCall {
  readonly key: string;
  readonly spec: DecisionSpec;
  /** The caller's deadline on the server's clock, ms as one binary double ('': none). */
  serverDeadline: Buffer | string;
  /** The call's id (16 bytes, the first 8 naming the client): how a re-sent command is recognised. */
  readonly id: string;
  /** Set by the batcher: when the caller stops waiting (performance.now ms), and its timeout. */
  expiresAt: number;
  timeoutMs: number;
  /**
   * The script answered: this call's decision is the four doubles at byte `at` of `reply`
   * (allowed, remaining, wait ms, ms until full); the server's now (µs) is the reply's last
   * double. May come after {@link fail} (a reply later than the call's timeout): the call must
   * ignore it then.
   */
  answer(reply: Buffer, at: number): void;
  /** The script call failed, or no reply came by `expiresAt` ({@link BackendTimeoutError}). */
  fail(e: unknown): void;
}

/**
 * Most decisions in one script call. A script blocks Redis while it runs (a few µs a decision),
 * so a batch stays well under a millisecond.
 */
export const MAX_BATCH = 64;
/**
 * Script calls in flight per slot before new calls wait to join the next batch. Several keep
 * Redis busy on one while the client reads another's reply and gathers the next.
 */
export const MAX_IN_FLIGHT = 4;

/** The calls of one Cluster slot (or of a whole standalone Redis). */
interface Group {
  pending: BatchCall[];
  inFlight: number;
  scheduled: boolean;
}

/**
 * One script call in flight: its calls, their earliest expiry, and how to free its place. A
 * class, not an object literal, so that V8 does not pretenure batches (allocation-site
 * pretenuring would keep each dead batch's calls alive until a full GC).
 */
class Batch {
  release: () => void = noop;
  constructor(
    readonly items: BatchCall[],
    public first: number,
  ) {}
}

const noop = (): void => {};
const RESOLVED = Promise.resolve();

/**
 * ScriptBatcher sends decisions to Redis, several in one script call when calls overlap. Its
 * replies are exactly what the single script would have answered, one per call, in call order.
 *
 * A call that finds its slot idle (nothing in flight, nothing waiting) is sent at once, alone, as
 * the single-decision script. Any other call is sent at the end of the current tick (a microtask)
 * together with every other call made in it, unless {@link MAX_IN_FLIGHT} script calls of its
 * slot are already in flight: then it waits for one of them to come back, and goes with the calls
 * that gathered meanwhile. A batch that has not come back by a call's deadline rejects that call
 * with {@link BackendTimeoutError}, and stops counting as in flight once all its calls have, so a
 * stalled connection cannot hold the calls behind it; one timer for all calls, not one per call.
 *
 * Scripts go by EVALSHA. A NOSCRIPT answer (the script cache was flushed, or a failover reached a
 * node that never ran it) sends that script call again as EVAL, which loads the script; and until
 * an EVAL has been answered, new script calls go as EVAL too, so that the calls made meanwhile do
 * not each pay a NOSCRIPT round trip first.
 *
 * A standalone client made with `autoResendUnfulfilledCommands: false` drops the commands in
 * flight when its connection closes, without settling them: their calls fail at once then, with
 * {@link BackendUnavailableError}, instead of waiting out their timeout.
 */
export class ScriptBatcher {
  readonly #client: Evaluator;
  readonly #cluster: boolean;
  /** Names this batcher's remembered batch replies (see BATCH_SCRIPT's KEYS[n+1]). */
  readonly #clientId: string;
  #batchSeq = 0;
  /** Scripts known missing from the server's cache: send as EVAL until one is answered. */
  #byEval = false;
  /** Kept once made (at most one per Cluster slot; one for a standalone Redis). */
  readonly #groups = new Map<number, Group>();
  /** Script calls sent and not yet answered (nor timed out). */
  readonly #inFlight = new Set<Batch>();
  /**
   * One timer for every call's timeout, armed for the earliest expiry in flight and left running
   * when calls are answered: when it fires it times out what is due and re-arms for the next.
   */
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt = Number.POSITIVE_INFINITY;

  constructor(client: Redis | Cluster, clientId: string) {
    this.#client = client as unknown as Evaluator;
    this.#cluster = (client as { isCluster?: boolean }).isCluster === true;
    this.#clientId = clientId;
    const o = (client as { options?: { autoResendUnfulfilledCommands?: boolean } }).options;
    if (!this.#cluster && o?.autoResendUnfulfilledCommands === false) watchDrops(client, this);
  }

  /** The connection closed: ioredis will neither answer nor re-send what is in flight. */
  connectionDropped(): void {
    if (this.#inFlight.size === 0) return;
    const e = new BackendUnavailableError(
      'the Redis connection closed before the reply came, and ioredis does not re-send (autoResendUnfulfilledCommands: false)',
    );
    for (const b of [...this.#inFlight]) {
      for (const it of b.items) it.fail(e);
      b.release();
    }
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
    c.expiresAt = performance.now() + timeoutMs;
    c.timeoutMs = timeoutMs;
    if (g.inFlight === 0 && !g.scheduled && g.pending.length === 0) {
      this.#send(g, [c]);
      return;
    }
    g.pending.push(c);
    if (!g.scheduled && g.inFlight < MAX_IN_FLIGHT) {
      g.scheduled = true;
      const group = g;
      // A resolved promise's reaction, not queueMicrotask: Node wraps each queueMicrotask
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

  /** Times out every call past its expiry, and re-arms the timer for the next. */
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
        if (it.expiresAt <= now + 0.5) it.fail(new BackendTimeoutError(it.timeoutMs));
        else if (it.expiresAt < live) live = it.expiresAt;
      }
      b.first = live;
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

  #send(g: Group, items: BatchCall[]): void {
    g.inFlight++;
    let first = Number.POSITIVE_INFINITY;
    for (const it of items) if (it.expiresAt < first) first = it.expiresAt;
    const batch = new Batch(items, first);
    batch.release = (): void => {
      if (!this.#inFlight.delete(batch)) return;
      g.inFlight--;
      // Still in a reply's callback: the calls made meanwhile are all gathered.
      if (g.pending.length > 0 && !g.scheduled) this.#flush(g);
    };
    this.#inFlight.add(batch);
    if (first < this.#timerAt) this.#arm(first);
    if (items.length === 1) {
      const it = items[0] as BatchCall;
      this.#run(BUCKET_SCRIPT, BUCKET_SHA, 1, [it.key, it.spec, it.serverDeadline, it.id], batch, items);
      return;
    }
    const n = items.length;
    const argv: Array<string | Buffer> = new Array(n + 1);
    let spec: DecisionSpec | undefined;
    let dl: Buffer | string = '';
    let count = 0;
    for (let i = 0; i < n; i++) {
      const it = items[i] as BatchCall;
      argv[i] = it.key;
      if (count > 0 && it.spec === spec && it.serverDeadline === dl) {
        count++;
        continue;
      }
      if (spec !== undefined) argv.push(spec, dl, '', String(count));
      spec = it.spec;
      dl = it.serverDeadline;
      count = 1;
    }
    argv.push(spec as DecisionSpec, dl, '', String(count));
    // Unique to this script call, in the slot of its first key: where its reply is remembered.
    argv[n] = `${(items[0] as BatchCall).key}{r}${this.#clientId}${(this.#batchSeq++).toString(36)}`;
    this.#run(BATCH_SCRIPT, BATCH_SHA, n + 1, argv, batch, items);
  }

  /** Sends one script call, by EVALSHA or EVAL, and again by EVAL if Redis lacks the script. */
  #run(
    lua: string,
    sha: string,
    numKeys: number,
    args: Array<string | Buffer>,
    batch: Batch,
    items: BatchCall[],
  ): void {
    const release = batch.release;
    const viaEval = this.#byEval;
    const sent = viaEval
      ? this.#client.evalBuffer(lua, numKeys, ...args)
      : this.#client.evalshaBuffer(sha, numKeys, ...args);
    // Anonymous functions: a named const closure costs a defineProperty per call under
    // esbuild's keepNames (tsx, the bench).
    sent.then(
      (r) => {
        if (viaEval) this.#byEval = false;
        release();
        settle(items, r);
      },
      (e: unknown) => {
        if (viaEval || !isNoScript(e)) {
          release();
          for (const it of items) it.fail(e);
          return;
        }
        this.#byEval = true;
        this.#client.evalBuffer(lua, numKeys, ...args).then(
          (r) => {
            this.#byEval = false;
            release();
            settle(items, r);
          },
          (e2: unknown) => {
            release();
            for (const it of items) it.fail(e2);
          },
        );
      },
    );
  }
}

/**
 * The batchers of each client that drops its unanswered commands on a disconnect: one 'close'
 * listener per client, whose references let a dropped backend be collected.
 */
const watched = new WeakMap<object, { refs: Set<WeakRef<ScriptBatcher>>; live: number }>();

function watchDrops(client: Redis | Cluster, batcher: ScriptBatcher): void {
  let w = watched.get(client);
  if (w === undefined) {
    const entry = { refs: new Set<WeakRef<ScriptBatcher>>(), live: 1 };
    w = entry;
    watched.set(client, entry);
    client.on('close', () => {
      for (const r of entry.refs) r.deref()?.connectionDropped();
    });
  }
  w.refs.add(new WeakRef(batcher));
  // Backends made and dropped one after another: forget the collected ones now and then.
  if (w.refs.size > 2 * w.live) {
    for (const r of w.refs) if (r.deref() === undefined) w.refs.delete(r);
    w.live = Math.max(1, w.refs.size);
  }
}

function settle(items: BatchCall[], reply: unknown): void {
  const n = items.length;
  if (!Buffer.isBuffer(reply) || reply.length !== DECISION_BYTES * n + 8) {
    const got = Buffer.isBuffer(reply) ? `${(reply.length - 8) / DECISION_BYTES} decisions` : typeof reply;
    const e = new Error(`tollgate script answered ${got} for ${n} calls`);
    for (const it of items) it.fail(e);
    return;
  }
  for (let i = 0; i < n; i++) (items[i] as BatchCall).answer(reply, DECISION_BYTES * i);
}
