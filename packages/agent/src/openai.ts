import { InvalidOptionsError, type RateLimiter } from '@tollgate/core';
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
   * (no response, or a non-2xx status) gives its estimate back. A stream that ends without a
   * usage chunk keeps its estimate.
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
   * Per user, bounds the HTTP attempts in flight (from admission until the response body is read
   * to the end, or a stream is finished or left) and those waiting for a slot: a p-queue per
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
}

type Fetch = (input: unknown, init?: { headers?: unknown } & Record<string, unknown>) => Promise<Response>;

/** The members of the openai client (majors 5, 6 and 7) that throttleOpenAI relies on. */
interface ClientInternals {
  fetch: Fetch;
  withOptions(options: Record<string, unknown>): ClientInternals;
  prepareOptions(options: RequestOptions): Promise<void>;
  prepareRequest(init: { headers?: unknown }, context: { url: string; options: RequestOptions }): Promise<void>;
}

/** Any OpenAI client (or subclass such as AzureOpenAI) of openai 5, 6 or 7. */
export interface OpenAIClientLike {
  withOptions(options: never): unknown;
}

const INNER_FETCH = Symbol('tollgate.innerFetch');
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
 * Settlement happens before the caller sees the result: a JSON body is read inside the wrapped
 * fetch (once; the response is handed on with its body replayed from the bytes read), so its
 * download counts against the client's timeout; a stream is settled as its usage chunk passes.
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
  own('prepareOptions', async function (this: ClientInternals, options: RequestOptions): Promise<void> {
    await t.beforeAttempt(options);
    try {
      await prepareOptions.call(this, options);
    } catch (e) {
      t.abandon(options);
      throw e;
    }
  });
  own('prepareRequest', async function (
    this: ClientInternals,
    init: { headers?: unknown },
    context: { url: string; options: RequestOptions },
  ): Promise<void> {
    await prepareRequest.call(this, init, context);
    // A client that replaced its fetch (openai 7 with X.509 workload identity) sends past the
    // wrapper: count the attempt as sent, unobserved, so its slot is not held forever.
    if (this.fetch === wrapped) t.link(init, context.options);
    else t.unobserved(context.options);
  });
  own('withOptions', function (this: ClientInternals, options: Record<string, unknown> = {}): ClientInternals {
    return install(this, t, options);
  });
  throttles.set(copy, t);
  return copy;
}

/** One logical call: the client's options object, shared by all its attempts. */
interface Call {
  readonly user: string;
  readonly path: string;
  readonly spendsLLM: boolean;
  /** True when this wrapper added `stream_options.include_usage` (its chunk is then removed). */
  readonly injectedUsage: boolean;
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

  /** beforeAttempt runs in the client's prepareOptions: it waits for a slot and the tokens. */
  beforeAttempt(options: RequestOptions): Promise<void> {
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
    return { user: this.#userOf(body), path, spendsLLM, injectedUsage, current: undefined };
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

  async admit(options: RequestOptions, retry: boolean): Promise<void> {
    const t = this.#t;
    const call = this.#call;
    const { user, path } = call;
    const start = performance.now();
    const callerSignal = options.signal ?? undefined;
    try {
      if (t.queues !== undefined) this.#release = await t.queues.enter(user, { signal: callerSignal, force: retry });
      const maxWaitMs = t.maxWaitMs;
      const requests = t.requests;
      const llm = call.spendsLLM ? t.llmTokens : undefined;
      let estimate = 0;
      if (llm !== undefined) {
        estimate = Math.min(Math.max(1, Math.ceil(t.estimate(path, options.body))), llm.policyFor(user).capacity);
      }
      if (requests !== undefined && llm !== undefined) {
        // Both buckets at once. One failing (a deadline) stops the other's wait, which then
        // gives its tokens back; the first failure in this order is the one thrown.
        const stop = t.takeStop();
        const signal = callerSignal !== undefined ? AbortSignal.any([callerSignal, stop.signal]) : stop.signal;
        const failed = (e: unknown) => {
          stop.abort();
          return { e };
        };
        const r = requests.acquire(user, { signal, maxWaitMs }).then(() => {
          this.#requestTaken = true;
          return undefined;
        }, failed);
        const l = llm.acquire(user, { cost: estimate, signal, maxWaitMs }).then(() => {
          this.#llmReserved = estimate;
          return undefined;
        }, failed);
        const first = (await r) ?? (await l);
        if (first !== undefined) {
          await l; // settled before giving back what it took
          throw first.e;
        }
        // Both settled, neither failed: the controller was never aborted and nothing listens to
        // it any more, so the next attempt may use it (one controller less per attempt).
        if (callerSignal === undefined) t.spareStop(stop);
      } else if (requests !== undefined) {
        // One bucket: nothing else to stop, so the caller's signal is all it needs.
        await requests.acquire(user, callerSignal !== undefined ? { signal: callerSignal, maxWaitMs } : { maxWaitMs });
        this.#requestTaken = true;
      } else if (llm !== undefined) {
        const o = callerSignal !== undefined ? { cost: estimate, signal: callerSignal, maxWaitMs } : { cost: estimate, maxWaitMs };
        await llm.acquire(user, o);
        this.#llmReserved = estimate;
      }
      if (this.state !== 'admitting') {
        this.#giveBack(); // abandoned while it waited
        return;
      }
      this.state = 'ready';
      if (callerSignal !== undefined) {
        const onAbort = () => this.abandon();
        callerSignal.addEventListener('abort', onAbort, { once: true });
        this.#unlisten = () => callerSignal.removeEventListener('abort', onAbort);
      }
      if (t.watchesAdmits) t.admitted({ user, path, waitedMs: performance.now() - start, llmTokens: estimate, retry });
    } catch (e) {
      this.abandon();
      // Aborted by the caller: return, and the client throws its own APIUserAbortError before
      // sending, exactly as it would without Tollgate.
      if (callerSignal?.aborted) return;
      throw e;
    }
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
    if (this.#requestTaken && t.requests !== undefined) t.background(t.requests.refund(user, 1));
    if (this.#llmReserved > 0 && t.llmTokens !== undefined) t.background(t.llmTokens.refund(user, this.#llmReserved));
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
    const type = response.headers.get('content-type') ?? '';
    if (type.includes('text/event-stream') && response.body !== null) {
      const body = rewriteSSE(response.body, {
        onData: (data) => this.#onStreamData(data),
        onEnd: () => this.finish(undefined, false),
      });
      const out = new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
      Object.defineProperty(out, 'url', { value: response.url });
      return out;
    }
    if (type.includes('json') && this.#llmReserved > 0) {
      // Read the body to the end before handing the response on, so the bucket is settled by the
      // time the caller has its result. Read once (no clone, whose tee costs more than the read):
      // the response is handed on with its body replayed from those bytes (`.asResponse()` too).
      return response.arrayBuffer().then(
        (bytes) => {
          const text = utf8.decode(bytes);
          const parsed = safeJSON(text);
          this.finish(usageOf(parsed), false);
          return replayBody(response, bytes, text, parsed);
        },
        (e: unknown) => {
          this.finish(undefined, true);
          return failedBody(response, e);
        },
      );
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
      if (failed) t.background(llm.refund(user, reserved));
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
function settle(t: Throttle, llm: RateLimiter, user: string, reserved: number, actual: number): void {
  const diff = actual - reserved;
  if (diff < 0) {
    t.background(llm.refund(user, -diff));
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

/**
 * replayBody makes `response`, whose body was read to `bytes`, readable again as if untouched:
 * its own `json()`, `text()` and `arrayBuffer()` answer from what was read (the parse the
 * settlement made included), and `body`, `bodyUsed`, `blob()`, `formData()`, `bytes()` and
 * `clone()` go to a Response built from the bytes on first use. Cheaper than handing on a new
 * Response (whose body is a new stream) or reading a clone (a tee): the client's usual
 * `json()` / `text()` costs nothing more. The body can still be read only once.
 */
function replayBody(response: Response, bytes: ArrayBuffer, text: string, parsed: unknown): Response {
  // Own members set the same way on every such response (one shared shape, shared functions):
  // cheaper for the client's code that reads the response than a swapped prototype.
  const r = response as unknown as Record<PropertyKey, unknown>;
  r[REPLAY] = { bytes, text, parsed, used: false, full: undefined } satisfies Replay;
  for (const [name, fn] of REPLAY_METHODS) r[name] = fn;
  Object.defineProperties(response, REPLAY_ACCESSORS);
  return response;
}

const REPLAY = Symbol('tollgate.replay');

interface Replay {
  readonly bytes: ArrayBuffer;
  readonly text: string;
  /** The settlement's parse (undefined when the text is not JSON). */
  readonly parsed: unknown;
  /** Read through json(), text() or arrayBuffer(). */
  used: boolean;
  /** The Response built from the bytes for every other use of the body. */
  full: Response | undefined;
}

type Replayed = Response & { [REPLAY]: Replay };

/** The body's methods of a replayed response (see {@link replayBody}). */
const REPLAY_METHODS: [string, (this: Replayed) => unknown][] = [
  // The settlement's parse when it succeeded (nothing else holds it); else JSON.parse's error.
  [
    'json',
    function json(this: Replayed) {
      return take(this, readJSON, replayedJSON);
    },
  ],
  [
    'text',
    function text(this: Replayed) {
      return take(this, readText, replayedText);
    },
  ],
  [
    'arrayBuffer',
    function arrayBuffer(this: Replayed) {
      return take(this, readArrayBuffer, replayedArrayBuffer);
    },
  ],
  [
    'blob',
    function blob(this: Replayed) {
      return fullOf(this).blob();
    },
  ],
  [
    'formData',
    function formData(this: Replayed) {
      return fullOf(this).formData();
    },
  ],
  [
    'clone',
    function clone(this: Replayed) {
      const copy = fullOf(this).clone();
      Object.defineProperty(copy, 'url', { value: this.url });
      return copy;
    },
  ],
];
if (typeof (Response.prototype as unknown as { bytes?: unknown }).bytes === 'function') {
  REPLAY_METHODS.push([
    'bytes',
    function bytes(this: Replayed) {
      return (fullOf(this) as unknown as { bytes(): Promise<Uint8Array> }).bytes();
    },
  ]);
}

/** The body's accessors of a replayed response. */
const REPLAY_ACCESSORS: PropertyDescriptorMap = {
  body: {
    get(this: Replayed) {
      return fullOf(this).body;
    },
    configurable: true,
  },
  bodyUsed: {
    get(this: Replayed) {
      const r = this[REPLAY];
      return r.full !== undefined ? r.full.bodyUsed : r.used;
    },
    configurable: true,
  },
};

const readJSON = (f: Response): Promise<unknown> => f.json();
const readText = (f: Response): Promise<string> => f.text();
const readArrayBuffer = (f: Response): Promise<ArrayBuffer> => f.arrayBuffer();
const replayedJSON = (r: Replay): unknown => (r.parsed !== undefined ? r.parsed : JSON.parse(r.text));
const replayedText = (r: Replay): string => r.text;
const replayedArrayBuffer = (r: Replay): ArrayBuffer => r.bytes.slice(0);

/** take reads a replayed body once: from what was read, or from the full Response once built. */
function take<T>(res: Replayed, read: (full: Response) => Promise<T>, value: (r: Replay) => T): Promise<T> {
  const r = res[REPLAY];
  if (r.full !== undefined) return read(r.full);
  if (r.used) return Promise.reject(new TypeError('Body is unusable: Body has already been read'));
  r.used = true;
  try {
    return Promise.resolve(value(r));
  } catch (e) {
    return Promise.reject(e);
  }
}

function fullOf(res: Replayed): Response {
  const r = res[REPLAY];
  if (r.full === undefined) {
    r.full = new Response(r.bytes, { status: res.status, statusText: res.statusText, headers: res.headers });
    // Already read through json(), text() or arrayBuffer(): the built body is used too.
    if (r.used) void r.full.arrayBuffer().catch(() => undefined);
  }
  return r.full;
}

/** failedBody hands on `response`, whose body failed to read with `error`, failing the same way. */
function failedBody(response: Response, error: unknown): Response {
  const body = new ReadableStream<Uint8Array>({ start: (c) => c.error(error) });
  const out = new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
  Object.defineProperty(out, 'url', { value: response.url });
  return out;
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
