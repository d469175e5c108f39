/**
 * A small Anthropic Messages API server on loopback, for the examples and the tests: it lets the
 * real `@anthropic-ai/sdk` client run offline. node:http only.
 *
 * It answers:
 * - `POST /v1/messages`: a text answer with `usage` (input, output, cache creation and cache read
 *   LLM tokens); streamed as Anthropic's SSE events when `stream: true` (`message_start` with the
 *   input usage, `content_block_start`/`_delta`/`_stop`, `message_delta` with the output usage,
 *   `message_stop`). The answer is cut at `max_tokens` (stop reason `max_tokens`).
 * - `POST /v1/messages/count_tokens`: `{ input_tokens }`.
 * - anything else: 404 with an Anthropic-shaped error body.
 *
 * With `limits`, it enforces a provider's per-model limits as Anthropic does (see
 * anthropic-rate-limits.ts): request, input and output LLM-token buckets, the
 * `anthropic-ratelimit-*` headers on every answer, and 429 `rate_limit_error`s with `retry-after`.
 * `failNext` and `rateLimitNext` force errors; `stats` counts attempts per model and tenant.
 *
 * Usage numbers are deterministic: input = ceil(characters of `system`, `messages` and `tools` /
 * 4), output = ceil(characters of the answer / 4); `opts.usage` overrides them.
 *
 * @example
 * const fake = await startFakeAnthropic({ limits: { 'claude-x': { requests: 10, windowMs: 1000 } } })
 * const client = new Anthropic({ baseURL: fake.baseURL, apiKey: 'test' })
 * await client.messages.create({ model: 'claude-x', max_tokens: 64, messages: [...] })
 * await fake.close()
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import {
  type AnthropicDimension,
  AnthropicLimits,
  type AnthropicModelLimit,
  errorBody,
  inputLLMTokens,
} from './anthropic-rate-limits.ts';
import { type Json, type SSEvent, listenLoopback, parseJSON, sendJSON, sendSSE, sleep } from './http.ts';
import { type AttemptRecord, type BucketState, type Stats, headerValue, summarize } from './provider-limits.ts';

export type { AnthropicDimension, AnthropicModelLimit };

/** One request the server received. */
export interface RecordedAnthropicRequest {
  /** Arrival time: `performance.now()` of this process, in ms. */
  readonly time: number;
  /** Arrival time as epoch ms (`Date.now()`). */
  readonly date: number;
  readonly method: string;
  /** The path without the query, e.g. `/v1/messages`. */
  readonly path: string;
  /** Request headers, lower-case names. */
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** The parsed JSON body (undefined when empty or not JSON). */
  readonly body: Json;
  /** The status the server answered. */
  status: number;
}

/** LLM-token usage the server reports, as the Messages API names it. */
export interface AnthropicUsage {
  input_tokens: number;
  output_tokens: number;
  cache_creation_input_tokens?: number;
  cache_read_input_tokens?: number;
}

export interface FakeAnthropicOptions {
  /** Port to listen on. @default 0 (a free port) */
  port?: number;
  /** Ms to wait before answering each admitted request. @default 0 */
  latencyMs?: number | ((req: RecordedAnthropicRequest) => number);
  /** Ms between streamed events. @default 0 */
  chunkDelayMs?: number;
  /** The answer's text. @default "Hello from the fake Anthropic server." */
  text?: string | ((body: Json) => string);
  /** Usage to report instead of the computed one. */
  usage?: AnthropicUsage | ((req: RecordedAnthropicRequest) => AnthropicUsage);
  /** The provider's limits per model; models not named are unlimited. @default {} */
  limits?: Readonly<Record<string, AnthropicModelLimit>>;
  /** Whether `anthropic-ratelimit-*` headers are sent. @default 'real' */
  rateLimitHeaders?: 'real' | 'none';
  /** Whether a limit's 429 carries `retry-after`. @default true */
  retryHeaders?: boolean;
  /** The limits' clock, epoch ms. @default Date.now */
  clock?: () => number;
  /** Whose attempt it is, for `stats`. @default the `x-tenant` header, else `metadata.user_id` */
  tenant?: (req: RecordedAnthropicRequest) => string | undefined;
}

export interface FakeAnthropic {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** The client's `baseURL` (the SDK adds `/v1/...` itself): the same as `url`. */
  readonly baseURL: string;
  /** Every request received, in arrival order (clear it with `requests.length = 0`). */
  readonly requests: RecordedAnthropicRequest[];
  /** failNext makes the next `n` requests answer `status` with an Anthropic error body. */
  failNext(n: number, status?: number, headers?: Record<string, string>): void;
  /**
   * rateLimitNext makes the next `n` attempts for `model` answer 429 `rate_limit_error`, with
   * `retry-after` (seconds, rounded up) and `retry-after-ms` when `retryAfterMs` is set.
   */
  rateLimitNext(model: string, n: number, opts?: { retryAfterMs?: number }): void;
  /** Every attempt with its model, tenant and status, in arrival order (never cleared). */
  readonly attempts: readonly AttemptRecord[];
  /** stats counts attempts, 2xx and 429s (of one model, since a `performance.now()` instant). */
  stats(filter?: { model?: string; since?: number }): Stats;
  /** limitState is a model's bucket now (undefined when that limit is not set). */
  limitState(model: string, dimension: AnthropicDimension): BucketState | undefined;
  /** Requests currently being answered. */
  inFlight(): number;
  /** The highest `inFlight()` seen so far. */
  maxInFlight(): number;
  /** Stops the server and closes its connections. */
  close(): Promise<void>;
}

const DEFAULT_TEXT = 'Hello from the fake Anthropic server.';

const ERROR_TYPES: Readonly<Record<number, string>> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  404: 'not_found_error',
  429: 'rate_limit_error',
  529: 'overloaded_error',
};

/** startFakeAnthropic starts the server on 127.0.0.1 and resolves once it listens. */
export async function startFakeAnthropic(opts: FakeAnthropicOptions = {}): Promise<FakeAnthropic> {
  const requests: RecordedAnthropicRequest[] = [];
  const failures: { status: number; headers: Record<string, string> }[] = [];
  const limits = new AnthropicLimits(opts);
  let inFlight = 0;
  let maxInFlight = 0;
  let seq = 0;
  const nextId = (prefix: string) => `${prefix}_fake${(++seq).toString(36).padStart(8, '0')}`;
  const tenantOf =
    opts.tenant ??
    ((rec: RecordedAnthropicRequest) =>
      headerValue(rec.headers, 'x-tenant') ??
      (typeof rec.body?.metadata?.user_id === 'string' ? rec.body.metadata.user_id : undefined));

  async function handle(req: IncomingMessage, res: ServerResponse, raw: string): Promise<void> {
    const body = parseJSON(raw);
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const rec: RecordedAnthropicRequest = {
      time: performance.now(),
      date: Date.now(),
      method: req.method ?? 'GET',
      path,
      headers: { ...req.headers },
      body,
      status: 200,
    };
    requests.push(rec);
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    res.on('close', () => inFlight--);
    res.setHeader('request-id', nextId('req'));
    const model = typeof body?.model === 'string' ? body.model : undefined;
    const attempt = limits.gate.record(rec, model, tenantOf(rec));

    const failure = failures.shift();
    if (failure !== undefined) {
      rec.status = failure.status;
      const type = ERROR_TYPES[failure.status] ?? 'api_error';
      sendJSON(res, failure.status, errorBody(`fake ${failure.status} (failNext)`, type), failure.headers);
      return;
    }
    if (rec.method === 'POST' && path === '/v1/messages/count_tokens') {
      sendJSON(res, 200, { input_tokens: inputLLMTokens(body) });
      return;
    }
    if (rec.method !== 'POST' || path !== '/v1/messages') {
      rec.status = 404;
      sendJSON(res, 404, errorBody(`Not found: ${rec.method} ${path}`, 'not_found_error'));
      return;
    }
    if (model === undefined || !Array.isArray(body?.messages) || typeof body?.max_tokens !== 'number') {
      rec.status = 400;
      sendJSON(res, 400, errorBody('model, messages and max_tokens are required', 'invalid_request_error'));
      return;
    }
    // The provider decides at arrival, and answers a 429 at once.
    const verdict = limits.decide(model, body, attempt.date);
    attempt.llmTokens = verdict.llmTokens;
    if (verdict.refused !== undefined) {
      rec.status = 429;
      sendJSON(res, 429, verdict.refused.body, verdict.refused.headers);
      return;
    }
    for (const [name, value] of Object.entries(verdict.headers)) res.setHeader(name, value);
    const latency = typeof opts.latencyMs === 'function' ? opts.latencyMs(rec) : (opts.latencyMs ?? 0);
    if (latency > 0) await sleep(latency);
    await messages(rec, res, body, model, verdict.outputCharged);
  }

  async function messages(
    rec: RecordedAnthropicRequest,
    res: ServerResponse,
    body: Json,
    model: string,
    outputCharged: number,
  ): Promise<void> {
    const full = typeof opts.text === 'function' ? opts.text(body) : (opts.text ?? DEFAULT_TEXT);
    const maxChars = body.max_tokens * 4;
    const text = full.length > maxChars ? full.slice(0, maxChars) : full;
    const stop_reason = text.length < full.length ? 'max_tokens' : 'end_turn';
    const u =
      typeof opts.usage === 'function'
        ? opts.usage(rec)
        : (opts.usage ?? { input_tokens: inputLLMTokens(body), output_tokens: Math.ceil(text.length / 4) });
    const usage = {
      input_tokens: u.input_tokens,
      cache_creation_input_tokens: u.cache_creation_input_tokens ?? 0,
      cache_read_input_tokens: u.cache_read_input_tokens ?? 0,
      output_tokens: u.output_tokens,
    };
    limits.settle(model, outputCharged, usage.output_tokens);
    const message = (content: object[], stop: string | null, withUsage: typeof usage) => ({
      id: nextId('msg'),
      type: 'message',
      role: 'assistant',
      model,
      content,
      stop_reason: stop,
      stop_sequence: null,
      usage: withUsage,
    });
    if (body.stream !== true) {
      sendJSON(res, 200, message([{ type: 'text', text }], stop_reason, usage));
      return;
    }
    const ev = (type: string, fields: object = {}): SSEvent => ({ event: type, data: { type, ...fields } });
    const events: SSEvent[] = [
      ev('message_start', { message: message([], null, { ...usage, output_tokens: 1 }) }),
      ev('content_block_start', { index: 0, content_block: { type: 'text', text: '' } }),
      ev('ping'),
      ...(text.match(/\S+\s*/g) ?? []).map((piece) =>
        ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text: piece } }),
      ),
      ev('content_block_stop', { index: 0 }),
      ev('message_delta', {
        delta: { stop_reason, stop_sequence: null },
        usage: { output_tokens: usage.output_tokens },
      }),
      ev('message_stop'),
    ];
    await sendSSE(res, events, { done: false, delayMs: opts.chunkDelayMs ?? 0 });
  }

  const server = await listenLoopback(opts.port ?? 0, handle, (res, err) =>
    sendJSON(res, 500, errorBody(`fake server error: ${String(err)}`, 'api_error')),
  );
  return {
    url: server.url,
    baseURL: server.url,
    requests,
    failNext(n, status = 429, headers) {
      const h = headers ?? (status === 429 ? { 'retry-after-ms': '20' } : {});
      for (let i = 0; i < n; i++) failures.push({ status, headers: h });
    },
    rateLimitNext(model, n, o = {}) {
      limits.gate.forceNext(model, n, o.retryAfterMs);
    },
    attempts: limits.gate.log,
    stats: (filter) => summarize(limits.gate.log, filter),
    limitState: (model, dimension) => limits.state(model, dimension),
    inFlight: () => inFlight,
    maxInFlight: () => maxInFlight,
    close: () => server.close(),
  };
}
