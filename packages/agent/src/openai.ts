import { type AcquireOptions, type Grant, InvalidOptionsError, type RateLimiter } from '@tollgate/core';
import { estimateLLMTokens, spendsLLMTokens, usageOf } from './llm-tokens.js';
import { type PerUserOptions, PerUserQueues, type Release } from './per-user-queue.js';
import { ANONYMOUS_USER, currentUser } from './user-context.js';

/** ThrottleOpenAIOptions configures {@link throttleOpenAI}. Every field is optional. */
export interface ThrottleOpenAIOptions {
  /**
   * Requests per user: every HTTP attempt (SDK retries and helper requests included) takes one
   * token from the current user's bucket. An attempt that reached the provider keeps its token,
   * even when answered 429 (the provider counted it).
   * @example new RateLimiter({ backend, policy: { rate: 60, per: '1m' }, name: 'requests' })
   */
  requests?: RateLimiter;
  /**
   * LLM tokens per user, for chat completions, responses, embeddings and completions requests:
   * an estimate is taken before each attempt ({@link estimateLLMTokens}, capped at the bucket's
   * capacity) and settled to the response's `usage`: the difference goes back, or an excess is
   * charged (it waits in the user's queue, so the user's next calls repay it). A failed attempt
   * (no response, or a non-2xx status) gives its estimate back. A JSON response is settled when
   * the client parses its body, before the call's promise resolves; a body never read (an
   * `.asResponse()` left unread, a call never awaited) keeps its estimate. A stream that ends
   * without a usage chunk keeps its estimate.
   * @example new RateLimiter({ backend, policy: { rate: 40_000, per: '1m' }, name: 'llm-tokens' })
   */
  llmTokens?: RateLimiter;
  /**
   * Finds the user of a request from its body, when no {@link withUser} is around the call.
   * After it, the body's `user` and `safety_identifier` fields are tried; with none of these the
   * call counts against the shared {@link ANONYMOUS_USER} key.
   */
  user?: (body: unknown) => string | undefined;
  /**
   * Per user, bounds the HTTP attempts in flight (from admission until the response arrives, or,
   * for a stream, until it is finished or left) and those waiting for a slot: a p-queue per
   * user, freed when idle. A call beyond `maxQueued` rejects at once with {@link QueueFullError};
   * an SDK retry of an admitted call queues again but is never rejected as full.
   * Without `perUser`, there is no per-user queue (the limiters alone decide).
   * @example { concurrency: 4, maxQueued: 100 }
   */
  perUser?: PerUserOptions;
  /**
   * The longest one attempt may wait for its tokens, in ms. An attempt that would wait longer
   * fails at once with `MaxWaitExceededError` from @tollgate/core (not retried by the client).
   * The wait for a per-user slot is bounded by `perUser.maxQueued` instead.
   * @default Infinity
   */
  maxWaitMs?: number;
  /** Replaces {@link estimateLLMTokens} (the default) for the LLM-token estimate of a request. */
  estimateLLMTokens?: (path: string, body: unknown) => number;
  /** Called each time an attempt is admitted, after its wait (for logs, metrics and demos). */
  onAdmit?: (event: AdmitEvent) => void;
  /** Called with errors of background work (refunds and charges after a call). Must not throw. */
  onError?: (error: unknown) => void;
}

/** AdmitEvent describes one admitted HTTP attempt. */
export interface AdmitEvent {
  /** The user the attempt counted against. */
  user: string;
  /** The request path, e.g. `/chat/completions`. */
  path: string;
  /** Ms the attempt waited for its queue slot and tokens. */
  waitedMs: number;
  /** LLM tokens reserved for it (0 without `llmTokens`, or for requests that spend none). */
  llmTokens: number;
  /** True for the SDK's retries of an earlier attempt. */
  retry: boolean;
}

/** The request options object the client builds per call and hands to every attempt. */
interface RequestOptions {
  method: string;
  path: string;
  body?: unknown;
  signal?: AbortSignal | null;
  /** Set by the client's streaming methods: it parses the response as server-sent events. */
  stream?: boolean | undefined;
}

type Fetch = (input: unknown, init?: { headers?: unknown } & Record<string, unknown>) => Promise<Response>;

/** The members of the openai client (majors 5, 6 and 7) that throttleOpenAI relies on. */
interface ClientInternals {
  fetch: Fetch;
  withOptions(options: Record<string, unknown>): ClientInternals;
  prepareOptions(options: RequestOptions): Promise<void>;
  prepareRequest(init: { headers?: unknown }, context: { url: string; options: RequestOptions }): Promise<void>;
  /** The client's one request (all its attempts). */
  makeRequest(this: ClientInternals, optionsInput: unknown, retriesRemaining: unknown, retryOf: unknown): Promise<unknown>;
}

/** Any OpenAI client (or subclass such as AzureOpenAI) of openai 5, 6 or 7. */
export interface OpenAIClientLike {
  withOptions(options: never): unknown;
}

const INNER_FETCH = Symbol('tollgate.innerFetch');
const ignore = (): void => {};
const throttles = new WeakMap<object, Throttle>();

/**
 * throttleOpenAI returns a copy of `client`, of the same type, whose every HTTP attempt first
 * waits for the current user's tokens: one from `requests`, an estimate from `llmTokens`. The
 * SDK's own retries, the requests of helpers (`chat.completions.runTools`, `.stream`, `.parse`,
 * `responses.stream`), `.withResponse()`, `.asResponse()`, streaming and `withOptions` all keep
 * working and stay throttled. The original client is left untouched.
 *
 * The current user is, in order: the nearest {@link withUser}, the `user` option's answer, the
 * body's `user` or `safety_identifier`, else {@link ANONYMOUS_USER}.
 *
 * How: the client calls its `prepareOptions(options)` at the start of every attempt, retries
 * included, before its request timeout starts, and lets errors thrown there escape without
 * retrying. So the wait happens there: a long wait never eats into the request's timeout, every
 * retry waits again, and a `QueueFullError` or `MaxWaitExceededError` reaches the caller as is.
 * The client's `fetch` (also called once per attempt) observes the outcome: the status, and the
 * `usage` of the body or of the stream's final chunk. A Proxy over `client.chat…` would miss the
 * helpers, which call the client's request methods directly; these two hooks see every request.
 * The copy comes from the client's own `withOptions` (same class, same options, a wrapped
 * `fetch`); `prepareOptions`, `prepareRequest` (which ties the request's headers object to its
 * attempt, for the fetch wrapper) and `withOptions` are overridden on that instance only.
 * A caller-supplied `fetch` option is kept and wrapped. The order of waits is: the user's
 * queue slot, then the `requests` and `llmTokens` buckets together.
 *
 * Settlement happens before the caller sees the result, from the body the client reads anyway:
 * a JSON response is handed on unread, and its `json()` / `text()` (what openai 5–6 / 7 call to
 * parse it; `arrayBuffer()` and `bytes()` too) settles the estimate to the `usage` of what it
 * returns, so the body is read and parsed once, by the client. A body never read that way, or
 * whose read fails, keeps its estimate. (A Response of another fetch implementation, and a stream
 * call answered with JSON, are read in the wrapper instead and handed on as a copy.) A stream is
 * settled as its usage chunk passes.
 *
 * Streams: when the caller did not ask for `stream_options.include_usage`, it is added so the
 * LLM tokens can be settled, and the extra usage chunk (`choices: []`) is removed from the stream
 * before the client parses it, so the caller sees exactly the chunks it asked for.
 *
 * @example
 * const client = throttleOpenAI(new OpenAI(), {
 *   requests: new RateLimiter({ backend, policy: { rate: 60, per: '1m' }, name: 'requests' }),
 *   llmTokens: new RateLimiter({ backend, policy: { rate: 40_000, per: '1m' }, name: 'llm-tokens' }),
 *   perUser: { concurrency: 4, maxQueued: 100 },
 * })
 * await withUser('user-42', () => client.chat.completions.create({ model, messages }))
 */
export function throttleOpenAI<C extends OpenAIClientLike>(client: C, options: ThrottleOpenAIOptions = {}): C {
  const c = client as unknown as Partial<ClientInternals> | null;
  if (
    typeof c !== 'object' ||
    c === null ||
    typeof c.withOptions !== 'function' ||
    typeof c.prepareOptions !== 'function' ||
    typeof c.prepareRequest !== 'function' ||
    typeof c.makeRequest !== 'function' ||
    typeof c.fetch !== 'function'
  ) {
    throw new InvalidOptionsError(
      'throttleOpenAI: client must be an OpenAI client from the openai package, major 5, 6 or 7 (new OpenAI({...}))',
      [{ path: 'client', message: 'must be an OpenAI client (openai >= 5 < 8)' }],
    );
  }
  return install(c as ClientInternals, new Throttle(options), {}) as unknown as C;
}

/**
 * perUserStats returns, for a client made by {@link throttleOpenAI} with `perUser`, how many of
 * `user`'s calls wait for a slot and how many hold one. Zeros for an idle user or another client.
 */
export function perUserStats(client: object, user: string): { queued: number; inFlight: number } {
  return throttles.get(client)?.queues?.stats(user) ?? { queued: 0, inFlight: 0 };
}

/** install makes a throttled copy of `source` with `overrides` through the client's own withOptions. */
function install(source: ClientInternals, t: Throttle, overrides: Record<string, unknown>): ClientInternals {
  const proto = Object.getPrototypeOf(source) as ClientInternals;
  const given = overrides.fetch as Fetch | undefined;
  const inner: Fetch = given ?? (source as unknown as { [INNER_FETCH]?: Fetch })[INNER_FETCH] ?? source.fetch;
  const wrapped = t.wrapFetch(inner);
  const copy = proto.withOptions.call(source, { ...overrides, fetch: wrapped });
  const prepareOptions = proto.prepareOptions;
  const prepareRequest = proto.prepareRequest;
  const own = (name: PropertyKey, value: unknown) =>
    Object.defineProperty(copy, name, { value, writable: true, configurable: true, enumerable: false });
  own(INNER_FETCH, inner);
  // Plain functions chaining the client's own promise (no async function, no await): each
  // promise less is a little less work on every request.
  // An attempt that fails before fetch (in a prepare hook, while the client builds the request
  // — its body serialized — or asks a credentials provider) ends the call unsent: the watch on
  // makeRequest below gives back what it took, or its per-user slot would be held for good.
  own('prepareOptions', function (this: ClientInternals, options: RequestOptions): Promise<void> {
    let admitted: Promise<void> | undefined;
    try {
      admitted = t.beforeAttempt(options);
    } catch (e) {
      return Promise.reject(e);
    }
    return admitted === undefined ? callPrepare(prepareOptions, this, options) : admitted.then(() => prepareOptions.call(this, options));
  });
  own('prepareRequest', function (
    this: ClientInternals,
    init: { headers?: unknown },
    context: { url: string; options: RequestOptions },
  ): Promise<void> {
    return callPrepare(prepareRequest, this, init, context).then(() => {
      // A client that replaced its fetch (openai 7 with X.509 workload identity) sends past the
      // wrapper: count the attempt as sent, unobserved, so its slot is not held forever.
      if (this.fetch === wrapped) t.link(init, context.options);
      else t.unobserved(context.options);
    });
  });
  const makeRequest = proto.makeRequest;
  own('makeRequest', function (this: ClientInternals, optionsInput: unknown, a: unknown, b: unknown): Promise<unknown> {
    const request = makeRequest.call(this, optionsInput, a, b);
    // A side branch, not a link in the caller's chain: the caller awaits the client's own
    // promise, and this only watches it for a failure (abandon is a no-op once sent).
    request.then(undefined, () => {
      if (optionsInput instanceof Promise) optionsInput.then((o: RequestOptions) => t.abandon(o), ignore);
      else t.abandon(optionsInput as RequestOptions);
    });
    return request;
  });
  own('withOptions', function (this: ClientInternals, options: Record<string, unknown> = {}): ClientInternals {
    return install(this, t, options);
  });
  throttles.set(copy, t);
  return copy;
}

/** callPrepare calls one of the client's prepare hooks, as a promise even if it throws. */
function callPrepare<A extends unknown[]>(
  hook: (this: ClientInternals, ...args: A) => Promise<void>,
  client: ClientInternals,
  ...args: A
): Promise<void> {
  try {
    return Promise.resolve(hook.apply(client, args));
  } catch (e) {
    return Promise.reject(e);
  }
}

/** One logical call: the client's options object, shared by all its attempts. */
interface Call {
  readonly user: string;
  readonly path: string;
  readonly spendsLLM: boolean;
  /** True when this wrapper added `stream_options.include_usage` (its chunk is then removed). */
  readonly injectedUsage: boolean;
  /** True when the client reads the response as a stream (`stream: true` in its options or body). */
  readonly streams: boolean;
  current: Attempt | undefined;
}

/** The shared state behind a throttled client and all its withOptions copies. */
class Throttle {
  readonly requests: RateLimiter | undefined;
  readonly llmTokens: RateLimiter | undefined;
  readonly queues: PerUserQueues | undefined;
  readonly maxWaitMs: number;
  readonly #resolveUser: ((body: unknown) => string | undefined) | undefined;
  readonly #estimate: (path: string, body: unknown) => number;
  readonly #onAdmit: ((e: AdmitEvent) => void) | undefined;
  readonly #onError: ((e: unknown) => void) | undefined;
  readonly #calls = new WeakMap<object, Call>();
  /** The attempt a request's headers object belongs to, from prepareRequest until fetch. */
  readonly #linked = new WeakMap<object, Attempt>();

  constructor(o: ThrottleOpenAIOptions) {
    if (typeof o !== 'object' || o === null) throw invalid('(options)', 'must be an object', o);
    const known = ['requests', 'llmTokens', 'user', 'perUser', 'maxWaitMs', 'estimateLLMTokens', 'onAdmit', 'onError'];
    for (const k of Object.keys(o)) if (!known.includes(k)) throw invalid(k, 'is not a known option', k);
    for (const k of ['requests', 'llmTokens'] as const) {
      const l = o[k];
      if (l !== undefined && (typeof l !== 'object' || l === null || typeof l.acquire !== 'function')) {
        throw invalid(k, 'must be a RateLimiter', l);
      }
    }
    for (const k of ['user', 'estimateLLMTokens', 'onAdmit', 'onError'] as const) {
      if (o[k] !== undefined && typeof o[k] !== 'function') throw invalid(k, 'must be a function', o[k]);
    }
    if (o.maxWaitMs !== undefined && !(typeof o.maxWaitMs === 'number' && o.maxWaitMs >= 0)) {
      throw invalid('maxWaitMs', 'must be a number of ms >= 0', o.maxWaitMs);
    }
    if (o.perUser !== undefined && (typeof o.perUser !== 'object' || o.perUser === null)) {
      throw invalid('perUser', 'must be an object like { concurrency: 4, maxQueued: 100 }', o.perUser);
    }
    this.requests = o.requests;
    this.llmTokens = o.llmTokens;
    this.queues = o.perUser !== undefined ? new PerUserQueues(o.perUser) : undefined;
    this.maxWaitMs = o.maxWaitMs ?? Number.POSITIVE_INFINITY;
    this.#resolveUser = o.user;
    this.#estimate = o.estimateLLMTokens ?? estimateLLMTokens;
    this.#onAdmit = o.onAdmit;
    this.#onError = o.onError;
  }

  /**
   * beforeAttempt runs in the client's prepareOptions: it waits for a slot and the tokens.
   * Undefined when admitted at once (no per-user queue, every bucket granted synchronously).
   */
  beforeAttempt(options: RequestOptions): Promise<void> | undefined {
    let call = this.#calls.get(options);
    const retry = call !== undefined;
    if (call === undefined) {
      call = this.#newCall(options);
      this.#calls.set(options, call);
    }
    // An earlier attempt of this call that never reached fetch (it failed before sending).
    call.current?.abandon();
    const attempt = new Attempt(this, call);
    call.current = attempt;
    return attempt.admit(options, retry);
  }

  /** abandon gives back what the current attempt of `options` took, if it was never sent. */
  abandon(options: RequestOptions): void {
    this.#calls.get(options)?.current?.abandon();
  }

  /** unobserved counts the current attempt of `options` as sent, keeping its tokens, freeing its slot. */
  unobserved(options: RequestOptions): void {
    const attempt = this.#calls.get(options)?.current;
    if (attempt?.send()) attempt.finish(undefined, false);
  }

  /** link ties the request's headers object (handed on to fetch) to its admitted attempt. */
  link(init: { headers?: unknown }, options: RequestOptions): void {
    const attempt = this.#calls.get(options)?.current;
    const headers = init.headers;
    if (attempt?.state === 'ready' && typeof headers === 'object' && headers !== null) {
      this.#linked.set(headers, attempt);
    }
  }

  wrapFetch(inner: Fetch): Fetch {
    return (input, init) => {
      const headers = init?.headers;
      const attempt = typeof headers === 'object' && headers !== null ? this.#linked.get(headers) : undefined;
      if (attempt === undefined || !attempt.send()) return inner(input, init);
      this.#linked.delete(headers as object);
      let sent: Promise<Response>;
      try {
        sent = inner(input, init);
      } catch (e) {
        attempt.finish(undefined, true);
        return Promise.reject(e);
      }
      return sent.then(
        (response) => attempt.observe(response),
        (e: unknown) => {
          attempt.finish(undefined, true);
          throw e;
        },
      );
    };
  }

  /** An AbortController never aborted, left by an attempt that no longer needs it. */
  #spare: AbortController | undefined;

  /** takeStop returns a fresh AbortController (or a spare one, never aborted). */
  takeStop(): AbortController {
    const spare = this.#spare;
    if (spare === undefined) return new AbortController();
    this.#spare = undefined;
    return spare;
  }

  /** spareStop keeps `stop` for the next attempt, if it was never aborted. */
  spareStop(stop: AbortController): void {
    if (!stop.signal.aborted) this.#spare = stop;
  }

  /** True when an `onAdmit` callback wants the admit events. */
  get watchesAdmits(): boolean {
    return this.#onAdmit !== undefined;
  }

  estimate(path: string, body: unknown): number {
    return this.#estimate(path, body);
  }

  admitted(e: AdmitEvent): void {
    try {
      this.#onAdmit?.(e);
    } catch (err) {
      this.background(Promise.reject(err));
    }
  }

  /**
   * refund gives `amount` back to `limiter` in the background (failures go to onError), with no
   * promise when the backend refunds synchronously (RateLimiter's internal REFUND_NOW).
   */
  refund(limiter: RateLimiter, user: string, amount: number): void {
    const now = entriesOf(limiter).refund;
    if (now === null) {
      this.background(limiter.refund(user, amount));
      return;
    }
    try {
      const pending = now.call(limiter, user, amount);
      if (pending !== undefined) this.background(pending);
    } catch (e) {
      this.background(Promise.reject(e));
    }
  }

  /** background runs work after a call whose failure must not reach anyone but onError. */
  background(work: Promise<unknown>): void {
    work.catch((e: unknown) => {
      try {
        this.#onError?.(e);
      } catch {
        // onError must not throw; nothing more to do.
      }
    });
  }

  #newCall(options: RequestOptions): Call {
    const body = options.body;
    const path = typeof options.path === 'string' ? options.path : '';
    const spendsLLM = this.llmTokens !== undefined && spendsLLMTokens(String(options.method ?? ''), path);
    let injectedUsage = false;
    if (spendsLLM && path.endsWith('/chat/completions') && isRecord(body) && body.stream === true) {
      const so = isRecord(body.stream_options) ? body.stream_options : {};
      if (so.include_usage !== true) {
        // A new body object: the caller's params object is never changed.
        options.body = { ...body, stream_options: { ...so, include_usage: true } };
        injectedUsage = true;
      }
    }
    const streams = options.stream === true || (isRecord(body) && body.stream === true);
    return { user: this.#userOf(body), path, spendsLLM, injectedUsage, streams, current: undefined };
  }

  #userOf(body: unknown): string {
    const fromContext = currentUser();
    if (fromContext !== undefined) return fromContext;
    const resolved = this.#resolveUser?.(body);
    if (typeof resolved === 'string' && resolved !== '') return resolved;
    if (isRecord(body)) {
      if (typeof body.user === 'string' && body.user !== '') return body.user;
      if (typeof body.safety_identifier === 'string' && body.safety_identifier !== '') return body.safety_identifier;
    }
    return ANONYMOUS_USER;
  }
}

/** One HTTP attempt: admitted (slot and tokens), sent, then settled. */
class Attempt {
  state: 'admitting' | 'ready' | 'sent' | 'done' = 'admitting';
  #release: Release | undefined;
  #requestTaken = false;
  #llmReserved = 0;
  #usageSeen = false;
  #unlisten: (() => void) | undefined;
  readonly #t: Throttle;
  readonly #call: Call;

  constructor(t: Throttle, call: Call) {
    this.#t = t;
    this.#call = call;
  }

  /**
   * admit takes the attempt's slot and tokens: undefined when done at once (no per-user queue,
   * every bucket granting synchronously, as MemoryBackend does when the tokens are there), else
   * a promise settled when admitted (or resolved without admitting when the caller aborted).
   */
  admit(options: RequestOptions, retry: boolean): Promise<void> | undefined {
    const t = this.#t;
    if (t.queues !== undefined) return this.#admitQueued(options, retry);
    const start = t.watchesAdmits ? performance.now() : 0;
    let taking: Promise<void> | undefined;
    try {
      taking = this.#take(options);
    } catch (e) {
      return this.#failed(e, options);
    }
    if (taking === undefined) {
      this.#ready(options, retry, start);
      return undefined;
    }
    return taking.then(
      () => this.#ready(options, retry, start),
      (e: unknown) => this.#failed(e, options),
    );
  }

  async #admitQueued(options: RequestOptions, retry: boolean): Promise<void> {
    const start = performance.now();
    try {
      this.#release = await (this.#t.queues as PerUserQueues).enter(this.#call.user, {
        signal: options.signal ?? undefined,
        force: retry,
      });
      await this.#take(options);
    } catch (e) {
      return this.#failed(e, options);
    }
    this.#ready(options, retry, start);
  }

  /**
   * #take takes the tokens from the buckets: undefined when all were granted at once, else a
   * promise settled when all are (rejected with the first failure; what was taken is recorded
   * in #requestTaken / #llmReserved, for #giveBack).
   */
  #take(options: RequestOptions): Promise<void> | undefined {
    const t = this.#t;
    const call = this.#call;
    const user = call.user;
    const callerSignal = options.signal ?? undefined;
    const maxWaitMs = t.maxWaitMs;
    const requests = t.requests;
    const llm = call.spendsLLM ? t.llmTokens : undefined;
    let estimate = 0;
    if (llm !== undefined) {
      estimate = Math.min(Math.max(1, Math.ceil(t.estimate(call.path, options.body))), llm.policyFor(user).capacity);
    }
    if (requests !== undefined && llm !== undefined) {
      // Both buckets at once. One failing (a deadline) stops the other's wait, which then
      // gives its tokens back; the first failure in this order is the one thrown.
      const stop = t.takeStop();
      const signal = callerSignal !== undefined ? AbortSignal.any([callerSignal, stop.signal]) : stop.signal;
      const r = acquireNow(requests, user, { signal, maxWaitMs });
      const l = acquireNow(llm, user, { cost: estimate, signal, maxWaitMs });
      if (!(r instanceof Promise)) this.#requestTaken = true;
      if (!(l instanceof Promise)) this.#llmReserved = estimate;
      if (r instanceof Promise || l instanceof Promise) return this.#takeBoth(r, l, stop, estimate, callerSignal);
      // Neither waited: the controller was never aborted and nothing listens to it any more, so
      // the next attempt may use it (one controller less per attempt).
      if (callerSignal === undefined) t.spareStop(stop);
      return undefined;
    }
    if (requests !== undefined) {
      // One bucket: nothing else to stop, so the caller's signal is all it needs.
      const r = acquireNow(requests, user, callerSignal !== undefined ? { signal: callerSignal, maxWaitMs } : { maxWaitMs });
      if (!(r instanceof Promise)) {
        this.#requestTaken = true;
        return undefined;
      }
      return r.then(() => {
        this.#requestTaken = true;
      });
    }
    if (llm !== undefined) {
      const o = callerSignal !== undefined ? { cost: estimate, signal: callerSignal, maxWaitMs } : { cost: estimate, maxWaitMs };
      const l = acquireNow(llm, user, o);
      if (!(l instanceof Promise)) {
        this.#llmReserved = estimate;
        return undefined;
      }
      return l.then(() => {
        this.#llmReserved = estimate;
      });
    }
    return undefined;
  }

  /** The waiting part of #take with both buckets, one of them or both still pending. */
  async #takeBoth(
    r: Grant | Promise<Grant>,
    l: Grant | Promise<Grant>,
    stop: AbortController,
    estimate: number,
    callerSignal: AbortSignal | undefined,
  ): Promise<void> {
    const failed = (e: unknown) => {
      stop.abort();
      return { e };
    };
    const rp =
      r instanceof Promise
        ? r.then(() => {
            this.#requestTaken = true;
            return undefined;
          }, failed)
        : undefined;
    const lp =
      l instanceof Promise
        ? l.then(() => {
            this.#llmReserved = estimate;
            return undefined;
          }, failed)
        : undefined;
    const first = (await rp) ?? (await lp);
    if (first !== undefined) {
      await lp; // settled before giving back what it took
      throw first.e;
    }
    if (callerSignal === undefined) this.#t.spareStop(stop);
  }

  /** #ready marks the attempt admitted (or gives back what it took if abandoned meanwhile). */
  #ready(options: RequestOptions, retry: boolean, start: number): void {
    if (this.state !== 'admitting') {
      this.#giveBack(); // abandoned while it waited
      return;
    }
    this.state = 'ready';
    const callerSignal = options.signal ?? undefined;
    if (callerSignal !== undefined) {
      const onAbort = () => this.abandon();
      callerSignal.addEventListener('abort', onAbort, { once: true });
      this.#unlisten = () => callerSignal.removeEventListener('abort', onAbort);
    }
    const t = this.#t;
    if (t.watchesAdmits) {
      const { user, path } = this.#call;
      t.admitted({ user, path, waitedMs: performance.now() - start, llmTokens: this.#llmReserved, retry });
    }
  }

  /** #failed gives back what was taken; the caller's abort resolves (the client then throws its own error). */
  #failed(e: unknown, options: RequestOptions): Promise<void> {
    this.abandon();
    // Aborted by the caller: resolve, and the client throws its own APIUserAbortError before
    // sending, exactly as it would without Tollgate.
    if (options.signal?.aborted) return Promise.resolve();
    return Promise.reject(e);
  }

  /** send marks the attempt as handed to fetch; false when it was abandoned meanwhile. */
  send(): boolean {
    if (this.state !== 'ready') return false;
    this.state = 'sent';
    this.#unlisten?.();
    return true;
  }

  /** abandon gives everything back: the attempt never reached the network. */
  abandon(): void {
    if (this.state === 'sent' || this.state === 'done') return;
    this.state = 'done';
    this.#unlisten?.();
    this.#giveBack();
  }

  #giveBack(): void {
    const { user } = this.#call;
    const t = this.#t;
    if (this.#requestTaken && t.requests !== undefined) t.refund(t.requests, user, 1);
    if (this.#llmReserved > 0 && t.llmTokens !== undefined) t.refund(t.llmTokens, user, this.#llmReserved);
    this.#requestTaken = false;
    this.#llmReserved = 0;
    this.#release?.();
  }

  /** observe settles the attempt from its response, and returns the response the client sees. */
  observe(response: Response): Response | Promise<Response> {
    if (!response.ok) {
      // The provider saw the attempt (429 included): the request token stays; the LLM tokens,
      // never used, go back.
      this.finish(undefined, true);
      return response;
    }
    // Only a call the client reads as a stream (`stream: true`) can need the SSE rewrite: any
    // other is read with json() or text(), so its content type need not be looked up.
    const call = this.#call;
    const type = call.streams ? (response.headers.get('content-type') ?? '') : '';
    if (type.includes('text/event-stream') && response.body !== null) {
      const body = rewriteSSE(response.body, {
        onData: (data) => this.#onStreamData(data),
        onEnd: () => this.finish(undefined, false),
      });
      const out = new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
      Object.defineProperty(out, 'url', { value: response.url });
      return out;
    }
    if (this.#llmReserved > 0 && (!call.streams || type.includes('json'))) {
      // Settled when the client parses the body (see settleOnParse), not read here: the slot is
      // free now, the estimate stays reserved until then.
      const reserved = this.#llmReserved;
      this.#llmReserved = 0;
      this.state = 'done';
      this.#release?.();
      const pending: PendingSettlement = { t: this.#t, user: call.user, reserved, done: false };
      // The client reads a stream call's body through `body` (a server that answered JSON
      // anyway), and a Response of another fetch implementation has its own methods: both are
      // read here, once, and handed on as a copy.
      if (call.streams || Object.getPrototypeOf(response) !== Response.prototype) return settleEagerly(response, pending);
      settleOnParse(response, pending);
      return response;
    }
    this.finish(undefined, false);
    return response;
  }

  /** finish settles the LLM tokens (to `usage`, or back when `failed`) and frees the slot. */
  finish(usage: number | undefined, failed: boolean): void {
    if (this.state === 'done') return;
    this.state = 'done';
    const t = this.#t;
    const llm = t.llmTokens;
    const reserved = this.#llmReserved;
    this.#llmReserved = 0;
    if (llm !== undefined && reserved > 0) {
      const user = this.#call.user;
      if (failed) t.refund(llm, user, reserved);
      else if (usage !== undefined) settle(t, llm, user, reserved, usage);
    }
    this.#release?.();
  }

  /** For each stream event: settle from the first usage seen; drop the injected usage chunk. */
  #onStreamData(data: unknown): 'keep' | 'drop' {
    const usage = usageOf(data);
    if (usage === undefined) return 'keep';
    if (!this.#usageSeen) {
      this.#usageSeen = true;
      const reserved = this.#llmReserved;
      this.#llmReserved = 0;
      const llm = this.#t.llmTokens;
      if (llm !== undefined && reserved > 0) settle(this.#t, llm, this.#call.user, reserved, usage);
    }
    const injectedChunk =
      this.#call.injectedUsage && isRecord(data) && Array.isArray(data.choices) && data.choices.length === 0;
    return injectedChunk ? 'drop' : 'keep';
  }
}

/**
 * settle turns a reservation of `reserved` LLM tokens into the `actual` use: the difference goes
 * back, or the excess is charged. The charge is an `acquire` left to run in the background: it
 * waits its turn in the user's queue, so the user's next calls pay for it, never this one.
 */
/**
 * The key of RateLimiter's internal `acquire` that answers a grant made at once without a
 * promise (@tollgate/core's limiter.ts; a registered symbol, not exported).
 */
const ACQUIRE_NOW = Symbol.for('tollgate.acquireNow');

/** The key of RateLimiter's internal synchronous `refund` (undefined when done at once). */
const REFUND_NOW = Symbol.for('tollgate.refundNow');

type RefundNow = (this: RateLimiter, key: string, amount: number) => Promise<void> | undefined;

type AcquireNow = (this: RateLimiter, key: string, options: AcquireOptions) => Grant | Promise<Grant>;

/**
 * The limiter's internal synchronous entry (`ACQUIRE_NOW` / `REFUND_NOW`), or undefined when the
 * wrapper must call the public method: a limiter of an older @tollgate/core (or a look-alike)
 * has none, and a subclass (or instance) that overrides `acquire` / `refund` — metrics, key
 * namespacing — must see every call, so its override is used, not the entry behind it.
 */
function internalEntry<F>(limiter: RateLimiter, entry: symbol, method: 'acquire' | 'refund'): F | undefined {
  const bag = limiter as unknown as Record<PropertyKey, unknown>;
  if (typeof bag[entry] !== 'function') return undefined;
  let owner = Object.getPrototypeOf(limiter) as Record<PropertyKey, unknown> | null;
  while (owner !== null && !Object.hasOwn(owner, entry)) owner = Object.getPrototypeOf(owner);
  return owner !== null && bag[method] === owner[method] ? (bag[entry] as F) : undefined;
}

/** Per limiter: its internal entries, or null where the public method must be used. */
const entries = new WeakMap<RateLimiter, { acquire: AcquireNow | null; refund: RefundNow | null }>();

function entriesOf(limiter: RateLimiter): { acquire: AcquireNow | null; refund: RefundNow | null } {
  let e = entries.get(limiter);
  if (e === undefined) {
    e = {
      acquire: internalEntry<AcquireNow>(limiter, ACQUIRE_NOW, 'acquire') ?? null,
      refund: internalEntry<RefundNow>(limiter, REFUND_NOW, 'refund') ?? null,
    };
    entries.set(limiter, e);
  }
  return e;
}

/** acquireNow is the limiter's acquire, answering a grant made at once without a promise. */
function acquireNow(limiter: RateLimiter, key: string, options: AcquireOptions): Grant | Promise<Grant> {
  const now = entriesOf(limiter).acquire;
  return now !== null ? now.call(limiter, key, options) : limiter.acquire(key, options);
}

function settle(t: Throttle, llm: RateLimiter, user: string, reserved: number, actual: number): void {
  const diff = actual - reserved;
  if (diff < 0) {
    t.refund(llm, user, -diff);
    return;
  }
  const capacity = llm.policyFor(user).capacity;
  for (let left = diff; left > 0; left -= capacity) {
    t.background(llm.acquire(user, { cost: Math.min(left, capacity) }));
  }
}

/**
 * rewriteSSE passes a server-sent-events body through event by event: `onData` sees each event's
 * parsed JSON data and may drop the event; `onEnd` runs once when the body ends, fails or is
 * cancelled. Kept events go on byte for byte.
 */
function rewriteSSE(
  source: ReadableStream<Uint8Array>,
  hooks: { onData: (data: unknown) => 'keep' | 'drop'; onEnd: () => void },
): ReadableStream<Uint8Array> {
  const reader = source.getReader();
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  let buffer = '';
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    hooks.onEnd();
  };
  const BOUNDARY = /\r\n\r\n|\n\n|\r\r/g;
  const takeEvents = (): string => {
    let out = '';
    let from = 0;
    BOUNDARY.lastIndex = 0;
    for (let m = BOUNDARY.exec(buffer); m !== null; m = BOUNDARY.exec(buffer)) {
      const to = m.index + m[0].length;
      const event = buffer.slice(from, to);
      if (keep(event)) out += event;
      from = to;
    }
    buffer = buffer.slice(from);
    return out;
  };
  const keep = (event: string): boolean => {
    if (!/"usage"\s*:\s*\{/.test(event)) return true;
    const data = event
      .split(/\r\n|\n|\r/)
      .filter((l) => l.startsWith('data:'))
      .map((l) => l.slice(l.startsWith('data: ') ? 6 : 5))
      .join('\n');
    const parsed = safeJSON(data);
    return parsed === undefined || hooks.onData(parsed) === 'keep';
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      for (;;) {
        let chunk: Awaited<ReturnType<typeof reader.read>>;
        try {
          chunk = await reader.read();
        } catch (e) {
          end();
          controller.error(e);
          return;
        }
        if (chunk.done) {
          buffer += decoder.decode();
          const rest = takeEvents() + (buffer !== '' && keep(buffer) ? buffer : '');
          buffer = '';
          if (rest !== '') controller.enqueue(encoder.encode(rest));
          end();
          controller.close();
          return;
        }
        buffer += decoder.decode(chunk.value, { stream: true });
        const out = takeEvents();
        if (out !== '') {
          controller.enqueue(encoder.encode(out));
          return;
        }
      }
    },
    cancel(reason) {
      end();
      return reader.cancel(reason);
    },
  });
}

const utf8 = new TextDecoder();

/** The LLM-token reservation of a JSON response, settled once its body is parsed or read. */
interface PendingSettlement {
  readonly t: Throttle;
  readonly user: string;
  readonly reserved: number;
  done: boolean;
}

const SETTLEMENT = Symbol('tollgate.settlement');

type Settling = Response & { [SETTLEMENT]: PendingSettlement };

/**
 * settleOnParse makes `response` settle its LLM-token reservation from the body the client reads
 * anyway, instead of reading it a second time: its own `json()` (openai 5 and 6), `text()`
 * (openai 7), `arrayBuffer()` and `bytes()` settle to the `usage` of what they return. The body
 * is read once, by the client, and only then; the response is otherwise untouched. A body read
 * in another way (`body`, `blob()`, `formData()`, a `clone()`), never read, without `usage`, or
 * whose read fails, keeps the estimate.
 */
function settleOnParse(response: Response, pending: PendingSettlement): void {
  // Own members set the same way on every such response (one shared shape, shared functions).
  const r = response as unknown as Record<PropertyKey, unknown>;
  r[SETTLEMENT] = pending;
  for (const [name, fn] of SETTLING_METHODS) r[name] = fn;
}

/**
 * settleEagerly reads a JSON response's body now, with the response's own `arrayBuffer()`,
 * settles `pending` to its usage, and hands on a copy with the same bytes, status and headers.
 */
function settleEagerly(response: Response, pending: PendingSettlement): Promise<Response> {
  return response.arrayBuffer().then(
    (bytes) => {
      settleOnce(pending, usageOf(safeJSON(utf8.decode(bytes))), false);
      const out = new Response(bytes, { status: response.status, statusText: response.statusText, headers: response.headers });
      Object.defineProperty(out, 'url', { value: response.url });
      return out;
    },
    (e: unknown) => readFailed(pending, e),
  );
}

/** Settles `pending` once: to `usage` when known (else the estimate stays), or back when `failed`. */
function settleOnce(pending: PendingSettlement, usage: number | undefined, failed: boolean): void {
  if (pending.done) return;
  pending.done = true;
  const { t, user, reserved } = pending;
  const llm = t.llmTokens;
  if (llm === undefined) return;
  if (failed) t.refund(llm, user, reserved);
  else if (usage !== undefined) settle(t, llm, user, reserved, usage);
}

/**
 * A read that failed (the connection dropped, the caller aborted after the response arrived, a
 * body that is not JSON) keeps the estimate: a 2xx JSON response is generated whole before its
 * headers are sent, so the provider has counted its LLM tokens whatever became of the download.
 */
function readFailed(pending: PendingSettlement, e: unknown): never {
  settleOnce(pending, undefined, false);
  throw e;
}

const proto = Response.prototype as unknown as Record<string, (this: Response) => Promise<unknown>>;
const protoJSON = proto.json as (this: Response) => Promise<unknown>;
const protoText = proto.text as (this: Response) => Promise<string>;
const protoArrayBuffer = proto.arrayBuffer as (this: Response) => Promise<ArrayBuffer>;
const protoBytes = proto.bytes as ((this: Response) => Promise<Uint8Array>) | undefined;

/** The body readers of a settling response (see {@link settleOnParse}). */
const SETTLING_METHODS: [string, (this: Settling) => Promise<unknown>][] = [
  [
    'json',
    function json(this: Settling) {
      const pending = this[SETTLEMENT];
      return protoJSON.call(this).then(
        (parsed) => {
          settleOnce(pending, usageOf(parsed), false);
          return parsed;
        },
        (e: unknown) => readFailed(pending, e),
      );
    },
  ],
  [
    'text',
    function text(this: Settling) {
      const pending = this[SETTLEMENT];
      return protoText.call(this).then(
        (body) => {
          if (!pending.done) settleOnce(pending, usageOf(safeJSON(body)), false);
          return body;
        },
        (e: unknown) => readFailed(pending, e),
      );
    },
  ],
  ['arrayBuffer', settlesFromBytes(protoArrayBuffer)],
];
if (protoBytes !== undefined) SETTLING_METHODS.push(['bytes', settlesFromBytes(protoBytes)]);

/** A settling body reader for a Response method that answers with the body's bytes. */
function settlesFromBytes<B extends ArrayBuffer | Uint8Array>(read: (this: Response) => Promise<B>) {
  return function (this: Settling): Promise<B> {
    const pending = this[SETTLEMENT];
    return read.call(this).then(
      (bytes) => {
        if (!pending.done) settleOnce(pending, usageOf(safeJSON(utf8.decode(bytes))), false);
        return bytes;
      },
      (e: unknown) => readFailed(pending, e),
    );
  };
}

function safeJSON(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function invalid(path: string, constraint: string, received: unknown): InvalidOptionsError {
  const shown =
    typeof received === 'string'
      ? JSON.stringify(received)
      : typeof received === 'object'
        ? received === null
          ? 'null'
          : Array.isArray(received)
            ? 'an array'
            : 'object'
        : String(received);
  const message = `${constraint} (received ${shown})`;
  return new InvalidOptionsError(`invalid throttleOpenAI options: ${path} ${message}`, [{ path, message }]);
}
