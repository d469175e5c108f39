import type { RateLimiter, SharedLimiter } from '@tollgate/core';
import { refundNow } from '@tollgate/core/internal';
import { PerUserQueues } from '../per-user-queue.js';
import { ANONYMOUS_USER, currentUser } from '../user-context.js';
import type { PoolReport, ProviderAdapter, ProviderLimits, ProviderRequest } from './adapter.js';
import { Attempt } from './attempt.js';
import type { AdmitEvent, ThrottleConfig } from './options.js';

/** Call is one logical call of the client: the request and all its attempts (SDK retries). */
export interface Call {
  readonly user: string;
  readonly path: string;
  readonly spendsLLM: boolean;
  /** True when the request was changed to ask for stream usage (its extra events are removed). */
  readonly askedUsage: boolean;
  /** True when the client reads the response as server-sent events. */
  readonly streams: boolean;
  /** The body the client must send: the caller's, or a copy asking for stream usage. */
  readonly body: unknown;
  /** The shared pool the call draws on (its model); undefined without `shared`, or without a model. */
  readonly pool: string | undefined;
  /** Whose share of the pool it draws on: `shareKey(user)`, or the user (meaningful with a pool). */
  readonly shareKey: string;
  /** The attempt under way (the latest), if any. */
  current: Attempt | undefined;
}

/**
 * Pipeline runs every attempt of a throttled client through the same steps: admit (the user's
 * queue slot, then the `requests` and `llmTokens` buckets, then the user's share of the `shared`
 * pools), send, settle (the LLM tokens to the response's usage, streams included, in the user's
 * bucket and in the pool), and learn from the response (its rate-limit headers steer the
 * pools). The client-specific part — where the client's attempts start, are sent and are answered, and what its requests and
 * responses mean — belongs to the adapter that calls it (see adapter.ts).
 *
 * Calls are found by an object the client keeps for the whole call (its request options), and
 * an attempt by the object the client builds for that attempt and hands to its own fetch step
 * (its request init): objects a client or its auth hooks can change but never replace.
 */
export class Pipeline {
  readonly adapter: ProviderAdapter;
  readonly requests: RateLimiter | undefined;
  readonly llmTokens: RateLimiter | undefined;
  readonly queues: PerUserQueues | undefined;
  readonly maxWaitMs: number;
  readonly sharedRequests: SharedLimiter | undefined;
  readonly sharedLLMTokens: SharedLimiter | undefined;
  readonly #config: ThrottleConfig;
  readonly #calls = new WeakMap<object, Call>();
  /** The attempt an attempt's request object belongs to, from its link until it is sent. */
  readonly #linked = new WeakMap<object, Attempt>();
  /** An AbortController never aborted, left by an attempt that no longer needs it. */
  #spare: AbortController | undefined;

  constructor(adapter: ProviderAdapter, config: ThrottleConfig) {
    this.adapter = adapter;
    this.#config = config;
    this.requests = config.requests;
    this.llmTokens = config.llmTokens;
    this.queues = config.perUser !== undefined ? new PerUserQueues(config.perUser) : undefined;
    this.maxWaitMs = config.maxWaitMs;
    this.sharedRequests = config.sharedRequests;
    this.sharedLLMTokens = config.sharedLLMTokens;
  }

  /** callOf returns the call opened under `key`, if any. */
  callOf(key: object): Call | undefined {
    return this.#calls.get(key);
  }

  /** openCall starts the call of `request` under `key` (the object the client keeps for the whole call). */
  openCall(key: object, request: ProviderRequest): Call {
    const adapter = this.adapter;
    const spendsLLM =
      (this.llmTokens !== undefined || this.sharedLLMTokens !== undefined) && adapter.spendsLLMTokens(request);
    let body = request.body;
    let askedUsage = false;
    if (spendsLLM && request.stream) {
      const asking = adapter.askStreamUsage(request);
      if (asking !== undefined) {
        body = asking;
        askedUsage = true;
      }
    }
    const user = this.#userOf(request.body);
    const shares = this.sharedRequests !== undefined || this.sharedLLMTokens !== undefined;
    const pool = shares ? adapter.modelOf(request.body) : undefined;
    const shareKey = pool !== undefined && this.#config.shareKey !== undefined ? this.#config.shareKey(user) : user;
    const call: Call = {
      user,
      path: request.path,
      spendsLLM,
      askedUsage,
      streams: request.stream,
      body,
      pool,
      shareKey,
      current: undefined,
    };
    this.#calls.set(key, call);
    return call;
  }

  /**
   * admit starts a new attempt of `call` and takes its slot and tokens: undefined when admitted
   * at once, else a promise settled once admitted. It rejects with what stops the wait (a full
   * queue, a deadline); when the caller's `signal` aborts it resolves unadmitted, and the client
   * then throws its own abort error before sending. `retry`: an SDK retry of an admitted call.
   */
  admit(call: Call, signal: AbortSignal | undefined, retry: boolean): Promise<void> | undefined {
    // An earlier attempt of this call that never reached the network (it failed before sending).
    call.current?.abandon();
    const attempt = new Attempt(this, call);
    call.current = attempt;
    return attempt.admit(signal, retry);
  }

  /** link ties the object the client builds for the current attempt of `key`'s call to that attempt. */
  link(request: object, key: object): void {
    const attempt = this.#calls.get(key)?.current;
    if (attempt?.state === 'ready') this.#linked.set(request, attempt);
  }

  /** send marks the attempt linked to `request` as sent and returns it (undefined: not ours, or abandoned). */
  send(request: object): Attempt | undefined {
    const attempt = this.#linked.get(request);
    if (attempt === undefined) return undefined;
    this.#linked.delete(request);
    return attempt.send() ? attempt : undefined;
  }

  /**
   * end closes `key`'s call when the client is done with it: an attempt still waiting to be sent
   * gives back what it took; when the call succeeded, its last attempt went out by a way the
   * pipeline did not see, and keeps its tokens.
   */
  end(key: object, ok: boolean): void {
    const attempt = this.#calls.get(key)?.current;
    if (attempt === undefined) return;
    if (ok) attempt.sentUnobserved();
    else attempt.abandon();
  }

  /**
   * learn is the step where a response's status and headers (the provider's word on its limits)
   * steer the call's shared pools, through the adapter's `readRateLimits`. A call with no pool
   * (no `shared`, or no model) reads nothing; a reader that throws is reported to `onError`.
   */
  learn(call: Call, status: number, headers: Headers): void {
    if (call.pool === undefined || this.adapter.readRateLimits === undefined) return;
    let limits: ProviderLimits | undefined;
    try {
      limits = this.adapter.readRateLimits(status, headers);
    } catch (e) {
      this.background(Promise.reject(e));
      return;
    }
    this.steer(call, limits);
  }

  /**
   * steer passes what the provider said about its limits on to the call's pools
   * (`SharedLimiter.observe`, which reaches every process sharing the pools' backend). For
   * adapters that read the provider's word themselves (a middleware that sees no `Response`).
   */
  steer(call: Call, limits: ProviderLimits | undefined): void {
    const pool = call.pool;
    if (pool === undefined || limits === undefined) return;
    if (limits.requests !== undefined) this.#observe(this.sharedRequests, pool, limits.requests);
    if (limits.llmTokens !== undefined) this.#observe(this.sharedLLMTokens, pool, limits.llmTokens);
  }

  #observe(limiter: SharedLimiter | undefined, pool: string, report: PoolReport): void {
    if (limiter === undefined) return;
    try {
      this.background(limiter.observe(pool, report));
    } catch (e) {
      this.background(Promise.reject(e));
    }
  }

  /** guess is the LLM-token estimate of `call` before any cap: the option's, else the adapter's; at least 1. */
  guess(call: Call): number {
    const guess = (this.#config.estimateLLMTokens ?? this.adapter.estimateLLMTokens)(call.path, call.body);
    return Math.max(1, Math.ceil(guess));
  }

  /** estimate is the LLM-token estimate of `call`, at least 1, at most the user's capacity. */
  estimate(call: Call, llm: RateLimiter): number {
    return Math.min(this.guess(call), llm.policyFor(call.user).capacity);
  }

  /** True when an `onAdmit` callback wants the admit events. */
  get watchesAdmits(): boolean {
    return this.#config.onAdmit !== undefined;
  }

  admitted(e: AdmitEvent): void {
    try {
      this.#config.onAdmit?.(e);
    } catch (err) {
      this.background(Promise.reject(err));
    }
  }

  /** refund gives `amount` back to `limiter` in the background (failures go to onError). */
  refund(limiter: RateLimiter, user: string, amount: number): void {
    try {
      const pending = refundNow(limiter, user, amount);
      if (pending !== undefined) this.background(pending);
    } catch (e) {
      this.background(Promise.reject(e));
    }
  }

  /** refundShare gives `amount` back to `call`'s pool in `limiter`, in the background. */
  refundShare(limiter: SharedLimiter, call: Call, amount: number): void {
    try {
      this.background(limiter.refund(call.shareKey, amount, { pool: call.pool as string }));
    } catch (e) {
      this.background(Promise.reject(e));
    }
  }

  /** background runs work after a call, whose failure must reach no one but onError. */
  background(work: Promise<unknown>): void {
    work.catch((e: unknown) => {
      try {
        this.#config.onError?.(e);
      } catch {
        // onError must not throw; nothing more to do.
      }
    });
  }

  /** takeStop returns a fresh AbortController, or a spare one never aborted. */
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

  #userOf(body: unknown): string {
    const fromContext = currentUser();
    if (fromContext !== undefined) return fromContext;
    const resolved = this.#config.user?.(body);
    if (typeof resolved === 'string' && resolved !== '') return resolved;
    return this.adapter.userOf(body) ?? ANONYMOUS_USER;
  }
}
