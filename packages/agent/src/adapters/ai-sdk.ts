import { InvalidOptionsError, type RateLimiter } from '@tollgate/core';
import { type PerUserOptions, PerUserQueues } from '../per-user-queue.js';
import { type Admission, type Limits, type ProviderWord, type SharedPoolLimiter, admit, learn } from './ai-sdk-admission.js';
import {
  type ModelCallParams,
  type ModelLike,
  type ModelUsage,
  estimateCallLLMTokens,
  usageOfCall,
  userOfCall,
} from './ai-sdk-call.js';

export type { ModelCallParams, ModelLike, ModelUsage } from './ai-sdk-call.js';
export type { SharedPoolLimiter } from './ai-sdk-admission.js';

/**
 * TollgateMiddlewareOptions configures {@link tollgateMiddleware}: the options of
 * `throttleOpenAI`, applied to each model call (`doGenerate` / `doStream`) instead of each HTTP
 * attempt. Every field is optional.
 */
export interface TollgateMiddlewareOptions {
  /**
   * Requests per user: every model call (each step of a tool loop, each retry the AI SDK makes)
   * takes one token. A call that failed after admission keeps it (the provider may have counted
   * it); a call stopped before it went out gives it back.
   */
  requests?: RateLimiter;
  /**
   * LLM tokens per user: an estimate is reserved before each call
   * ({@link estimateCallLLMTokens}, capped at the bucket's capacity) and settled to the call's
   * reported usage (`inputTokens.total + outputTokens.total`): the difference goes back, or the
   * excess is charged to the user's next calls. A stream settles when its `finish` part passes;
   * a stream that ends, errors or is cancelled before it keeps the estimate. A call that fails
   * (the provider answered an error, or no response) gives its estimate back.
   */
  llmTokens?: RateLimiter;
  /**
   * Finds the user of a call from its parameters when no `withUser` is around it. After it, the
   * first `safetyIdentifier` or `user` string in the call's `providerOptions` is tried; with none
   * the call counts against `ANONYMOUS_USER`.
   * @example (params) => params.providerOptions?.tollgate?.user as string | undefined
   */
  user?: (params: ModelCallParams) => string | undefined;
  /**
   * Per user, bounds the model calls in flight (from admission until a generate call answers,
   * or a stream ends or is cancelled) and those waiting for a slot. A call beyond `maxQueued`
   * rejects at once with `QueueFullError` (which the AI SDK does not retry).
   */
  perUser?: PerUserOptions;
  /**
   * The provider's limits, shared fairly by all users (`SharedLimiter` from @tollgate/core);
   * the pool is the model id (`model.modelId`). A call waits for the user's own buckets first,
   * then for its share of the pool; the provider's rate-limit headers steer the pools.
   */
  shared?: { requests?: SharedPoolLimiter; llmTokens?: SharedPoolLimiter };
  /** Whose share of the `shared` pools a user draws on, e.g. the user's tenant. @default the user */
  shareKey?: (user: string) => string;
  /**
   * The longest one call may wait for its tokens, in ms; longer fails at once with
   * `MaxWaitExceededError` (not retried by the AI SDK). @default Infinity
   */
  maxWaitMs?: number;
  /** Replaces {@link estimateCallLLMTokens} (the default) for the LLM-token estimate of a call. */
  estimateLLMTokens?: (params: ModelCallParams) => number;
  /** Called each time a model call is admitted, after its wait. */
  onAdmit?: (event: ModelCallAdmitEvent) => void;
  /** Called with errors of background work (refunds, charges, observations). Must not throw. */
  onError?: (error: unknown) => void;
}

/** ModelCallAdmitEvent describes one admitted model call. */
export interface ModelCallAdmitEvent {
  /** The user the call counted against. */
  user: string;
  /** The provider and model, e.g. `openai.chat` and `gpt-4o-mini`. */
  provider: string;
  model: string;
  /** `generate` (generateText, generateObject) or `stream` (streamText, streamObject). */
  operation: 'generate' | 'stream';
  /** Ms the call waited for its slot and tokens. */
  waitedMs: number;
  /** LLM tokens reserved from the user's bucket (0 without `llmTokens`). */
  llmTokens: number;
}

/** The generate result of a V4 model, as far as the middleware reads it. */
interface GenerateResultLike {
  usage: ModelUsage;
  response?: { headers?: Record<string, string | undefined> | undefined } | undefined;
}

/** The stream result of a V4 model, as far as the middleware reads it. */
interface StreamResultLike {
  stream: ReadableStream<unknown>;
  response?: { headers?: Record<string, string | undefined> | undefined } | undefined;
}

/**
 * TollgateMiddleware is a `LanguageModelV4Middleware` (AI SDK 7): pass it to `wrapLanguageModel`.
 * Its members are written as generic methods so that it type-checks against the AI SDK's own
 * types without @tollgate/agent depending on them.
 */
export interface TollgateMiddleware {
  readonly specificationVersion: 'v4';
  wrapGenerate<R extends GenerateResultLike>(options: WrapOptions<'doGenerate', R>): Promise<R>;
  wrapStream<R extends StreamResultLike>(options: WrapOptions<'doStream', R>): Promise<R>;
}

/** What `wrapGenerate` (`doGenerate`) and `wrapStream` (`doStream`) receive, as far as read. */
export type WrapOptions<Do extends 'doGenerate' | 'doStream', R> = { [K in Do]: () => PromiseLike<R> } & {
  params: ModelCallParams;
  model: ModelLike;
};

const KNOWN = [
  'requests',
  'llmTokens',
  'user',
  'perUser',
  'shared',
  'shareKey',
  'maxWaitMs',
  'estimateLLMTokens',
  'onAdmit',
  'onError',
];

/**
 * tollgateMiddleware returns an AI SDK language-model middleware whose every model call first
 * waits for the current user's tokens: `generateText`, `streamText`, `generateObject`, each step
 * of a tool loop and each retry the AI SDK makes. LLM tokens are reserved from an estimate and
 * settled to the usage the model reports, streams included (at their `finish` part).
 *
 * The current user is, in order: the nearest `withUser`, the `user` option's answer, a
 * `safetyIdentifier` / `user` in the call's `providerOptions`, else `ANONYMOUS_USER`.
 *
 * @example
 * const model = wrapLanguageModel({
 *   model: openai('gpt-4o-mini'),
 *   middleware: tollgateMiddleware({ requests, llmTokens, perUser: { concurrency: 2 } }),
 * })
 * await withUser('user-42', () => generateText({ model, prompt: 'Hello' }))
 */
export function tollgateMiddleware(options: TollgateMiddlewareOptions = {}): TollgateMiddleware {
  const o = checkOptions(options);
  const onError = o.onError;
  const limits: Limits = {
    requests: o.requests,
    llmTokens: o.llmTokens,
    queues: o.perUser !== undefined ? new PerUserQueues(o.perUser) : undefined,
    sharedRequests: o.shared?.requests,
    sharedLLMTokens: o.shared?.llmTokens,
    shareKey: o.shareKey ?? ((user) => user),
    maxWaitMs: o.maxWaitMs ?? Number.POSITIVE_INFINITY,
    background(work) {
      work.catch((e: unknown) => {
        try {
          onError?.(e);
        } catch {
          // onError must not throw; nothing more to do.
        }
      });
    },
  };
  const estimate = o.estimateLLMTokens ?? estimateCallLLMTokens;
  const learnsFromHeaders = limits.sharedRequests !== undefined || limits.sharedLLMTokens !== undefined;

  const enter = async (params: ModelCallParams, model: ModelLike, operation: 'generate' | 'stream'): Promise<Admission> => {
    const user = userOfCall(params, o.user);
    const signal = params.abortSignal;
    const needsEstimate = limits.llmTokens !== undefined || limits.sharedLLMTokens !== undefined;
    const llm = needsEstimate ? Math.max(1, Math.ceil(estimate(params))) : 0;
    const start = performance.now();
    let admission: Admission;
    try {
      admission = await admit(limits, user, model.modelId, llm, signal);
    } catch (e) {
      // The caller's abort surfaces as the AI SDK's own abort would: the signal's reason.
      if (signal?.aborted) throw signal.reason;
      throw e;
    }
    if (o.onAdmit !== undefined) {
      const event = { user, provider: model.provider, model: model.modelId, operation, waitedMs: performance.now() - start, llmTokens: admission.llmTokens };
      try {
        o.onAdmit(event);
      } catch (e) {
        limits.background(Promise.reject(e));
      }
    }
    return admission;
  };

  const failed = (admission: Admission, model: ModelLike, error: unknown): never => {
    admission.fail();
    if (learnsFromHeaders) learn(limits, model.modelId, wordOf(responseHeadersOf(error)));
    throw error;
  };

  return {
    specificationVersion: 'v4',
    async wrapGenerate<R extends GenerateResultLike>({ doGenerate, params, model }: WrapOptions<'doGenerate', R>): Promise<R> {
      const admission = await enter(params, model, 'generate');
      let result: R;
      try {
        result = await doGenerate();
      } catch (e) {
        return failed(admission, model, e);
      }
      admission.settle(usageOfCall(result.usage));
      if (learnsFromHeaders) learn(limits, model.modelId, wordOf(result.response?.headers));
      return result;
    },
    async wrapStream<R extends StreamResultLike>({ doStream, params, model }: WrapOptions<'doStream', R>): Promise<R> {
      const admission = await enter(params, model, 'stream');
      let result: R;
      try {
        result = await doStream();
      } catch (e) {
        return failed(admission, model, e);
      }
      if (learnsFromHeaders) learn(limits, model.modelId, wordOf(result.response?.headers));
      return { ...result, stream: watchStream(result.stream, admission) };
    },
  };
}

/**
 * watchStream passes the model's stream parts on unchanged, settles `admission` to the usage of
 * the `finish` part, and frees its slot when the stream ends, errors or is cancelled (settling
 * with unknown usage, so the estimate stays, when no `finish` part came).
 */
function watchStream(source: ReadableStream<unknown>, admission: Admission): ReadableStream<unknown> {
  const reader = source.getReader();
  return new ReadableStream<unknown>({
    async pull(controller) {
      let chunk: Awaited<ReturnType<typeof reader.read>>;
      try {
        chunk = await reader.read();
      } catch (e) {
        admission.settle(undefined);
        controller.error(e);
        return;
      }
      if (chunk.done) {
        admission.settle(undefined);
        controller.close();
        return;
      }
      const part = chunk.value as { type?: unknown; usage?: ModelUsage } | null;
      if (part !== null && typeof part === 'object' && part.type === 'finish') admission.settle(usageOfCall(part.usage));
      controller.enqueue(chunk.value);
    },
    cancel(reason) {
      admission.settle(undefined);
      return reader.cancel(reason);
    },
  });
}

/** The response headers of a failed call: the AI SDK's `APICallError.responseHeaders`. */
function responseHeadersOf(error: unknown): Record<string, string | undefined> | undefined {
  if (error === null || typeof error !== 'object') return undefined;
  const h = (error as { responseHeaders?: unknown }).responseHeaders;
  return h !== null && typeof h === 'object' ? (h as Record<string, string | undefined>) : undefined;
}

/**
 * wordOf reads what the provider said in its headers: OpenAI's `x-ratelimit-{limit,remaining}-
 * {requests,tokens}` and `retry-after-ms` / `retry-after` (seconds). Numbers that are missing,
 * negative or not numbers (Azure's `-1`) are left out.
 */
function wordOf(headers: Record<string, string | undefined> | undefined): ProviderWord {
  if (headers === undefined) return {};
  const count = (name: string): number | undefined => {
    const v = headers[name];
    if (v === undefined || !/^\d+(\.\d+)?$/.test(v.trim())) return undefined;
    return Number(v);
  };
  const window = (suffix: string) => {
    const limit = count(`x-ratelimit-limit-${suffix}`);
    const remaining = count(`x-ratelimit-remaining-${suffix}`);
    if (limit === undefined && remaining === undefined) return undefined;
    return { ...(limit !== undefined && limit > 0 ? { limit } : {}), ...(remaining !== undefined ? { remaining } : {}) };
  };
  const word: ProviderWord = {};
  const requests = window('requests');
  const llmTokens = window('tokens');
  if (requests !== undefined) word.requests = requests;
  if (llmTokens !== undefined) word.llmTokens = llmTokens;
  const ms = count('retry-after-ms');
  const seconds = count('retry-after');
  if (ms !== undefined) word.retryAfterMs = ms;
  else if (seconds !== undefined) word.retryAfterMs = seconds * 1000;
  return word;
}

function checkOptions(o: TollgateMiddlewareOptions): TollgateMiddlewareOptions {
  if (typeof o !== 'object' || o === null) throw invalid('(options)', 'must be an object', o);
  for (const k of Object.keys(o)) if (!KNOWN.includes(k)) throw invalid(k, 'is not a known option', k);
  for (const k of ['requests', 'llmTokens'] as const) {
    const l = o[k];
    if (l !== undefined && (typeof l !== 'object' || l === null || typeof l.acquire !== 'function')) {
      throw invalid(k, 'must be a RateLimiter', l);
    }
  }
  for (const k of ['user', 'shareKey', 'estimateLLMTokens', 'onAdmit', 'onError'] as const) {
    if (o[k] !== undefined && typeof o[k] !== 'function') throw invalid(k, 'must be a function', o[k]);
  }
  if (o.shared !== undefined) {
    if (typeof o.shared !== 'object' || o.shared === null) throw invalid('shared', 'must be an object', o.shared);
    for (const k of ['requests', 'llmTokens'] as const) {
      const l = o.shared[k];
      if (l !== undefined && (typeof l !== 'object' || l === null || typeof l.acquire !== 'function' || typeof l.observe !== 'function')) {
        throw invalid(`shared.${k}`, 'must be a SharedLimiter', l);
      }
    }
  }
  const w = o.maxWaitMs;
  if (w !== undefined && (typeof w !== 'number' || Number.isNaN(w) || w < 0)) throw invalid('maxWaitMs', 'must be a number >= 0', w);
  return o;
}

function invalid(path: string, constraint: string, received: unknown): InvalidOptionsError {
  const shown =
    typeof received === 'string'
      ? JSON.stringify(received)
      : received === null
        ? 'null'
        : Array.isArray(received)
          ? 'an array'
          : typeof received === 'object'
            ? 'object'
            : String(received);
  const message = `${constraint} (received ${shown})`;
  return new InvalidOptionsError(`invalid tollgateMiddleware options: ${path} ${message}`, [{ path, message }]);
}
