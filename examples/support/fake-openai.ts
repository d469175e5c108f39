/**
 * A small OpenAI-compatible HTTP server on loopback, for the examples and the tests: it lets the
 * real `openai` client run offline. node:http only, no dependency.
 *
 * It answers:
 * - `POST /v1/chat/completions`: a text answer, or tool calls when the request offers tools and
 *   the conversation does not end with tool results; streamed as SSE when `stream: true`, with a
 *   final usage chunk (`choices: []`) when `stream_options.include_usage` is set.
 * - `POST /v1/responses`: a text answer with `usage` (streamed as Responses events when
 *   `stream: true`, the usage in `response.completed`).
 * - `POST /v1/embeddings`: one vector per input, float or base64, with `usage`.
 * - anything else: 404 with an OpenAI-shaped error body.
 *
 * `failNext(n, status, headers)` makes the next `n` requests answer `status` (429 by default,
 * with `retry-after-ms: 20`), and every request is recorded (`requests`) with its arrival time,
 * so tests can assert how calls were spaced.
 *
 * With `limits`, it enforces a provider's per-model limits as OpenAI does (see
 * openai-rate-limits.ts): request and LLM-token buckets, the `x-ratelimit-*` headers on every
 * answer, and 429s with OpenAI's body, `retry-after-ms` and `retry-after`. `rateLimitNext` forces
 * 429s for a model; `stats` counts attempts, 2xx and 429s per model and tenant. The limits
 * decide at arrival, before `latencyMs` and `failNext`: a request `failNext` fails was charged.
 *
 * Usage numbers are deterministic: prompt tokens = ceil(characters of the request's messages or
 * input / 4), completion tokens = ceil(characters of the answer / 4); `opts.usage` overrides them.
 *
 * @example
 * const fake = await startFakeOpenAI()
 * const client = new OpenAI({ baseURL: fake.baseURL, apiKey: 'test' })
 * fake.failNext(2, 429, { 'retry-after-ms': '50' })
 * await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [...] })  // 3 requests
 * await fake.close()
 *
 * @example
 * // 10 requests per second (bursts of 10) for gpt-4o-mini, as OpenAI would enforce them
 * const fake = await startFakeOpenAI({ limits: { 'gpt-4o-mini': { requests: 10, windowMs: 1000 } } })
 * fake.stats({ model: 'gpt-4o-mini' })  // { attempts, ok, rateLimited, tenants }
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { responsesAnswer } from './openai-responses.ts';
import { DEFAULT_TEXT, type FakeChatReply, defaultChatReply } from './chat-reply.ts';
import { type Json, type SSEvent, listenLoopback, parseJSON, sendJSON, sendSSE, sleep, textLength } from './http.ts';
import {
  type OpenAIDimension,
  OpenAILimits,
  type OpenAIModelLimit,
  type RateLimitHeaderStyle,
} from './openai-rate-limits.ts';
import { type AttemptRecord, type BucketState, type Stats, headerValue, summarize } from './provider-limits.ts';

export type { AttemptRecord, BucketState, FakeChatReply, OpenAIModelLimit, RateLimitHeaderStyle, Stats };

/** One request the server received. */
export interface RecordedRequest {
  /** Arrival time: `performance.now()` of this process, in ms (compare to your own clock). */
  readonly time: number;
  /** Arrival time as epoch ms (`Date.now()`). */
  readonly date: number;
  readonly method: string;
  /** The path without the query, e.g. `/v1/chat/completions`. */
  readonly path: string;
  /** Request headers, lower-case names (as node:http gives them). */
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  /** The parsed JSON body (undefined when empty or not JSON). */
  readonly body: Json;
  /** The status the server answered. */
  status: number;
}

/** LLM-token usage the server reports. */
export interface FakeUsage {
  prompt_tokens: number;
  completion_tokens: number;
}

export interface FakeOpenAIOptions {
  /** Port to listen on. @default 0 (a free port) */
  port?: number;
  /**
   * Ms to wait before answering each request (a number, or a function of the request).
   * @default 0
   */
  latencyMs?: number | ((req: RecordedRequest) => number);
  /** Ms between streamed chunks. @default 0 */
  chunkDelayMs?: number;
  /**
   * Usage to report instead of the computed one (a fixed value or a function of the request).
   */
  usage?: FakeUsage | ((req: RecordedRequest) => FakeUsage);
  /**
   * What a chat completion answers. Return undefined to use the default: when the request offers
   * tools and its last message is not a tool result, one call of the first tool with arguments
   * made from its JSON schema (a string property gets "Paris", a number 1, a boolean true, an enum
   * its first value); else the text "Hello from the fake OpenAI server." (or, after tool results,
   * "Done: " followed by the tool results).
   */
  chat?: (body: Json, req: RecordedRequest) => FakeChatReply | undefined;
  /** The text of a `/v1/responses` answer. @default "Hello from the fake OpenAI server." */
  responseText?: string | ((body: Json) => string);
  /**
   * The provider's limits per model (the body's `model`); models not named are unlimited.
   * @default {} (no limits, no `x-ratelimit-*` headers)
   */
  limits?: Readonly<Record<string, OpenAIModelLimit>>;
  /** How `x-ratelimit-*` headers are sent: `'real'`, `'minus-one'` (Azure), `'none'`. @default 'real' */
  rateLimitHeaders?: RateLimitHeaderStyle;
  /** Whether a limit's 429 carries `retry-after-ms` and `retry-after`. @default true */
  retryHeaders?: boolean;
  /** LLM tokens charged for the output when a request sets no maximum. @default 0 */
  defaultMaxTokens?: number;
  /** The organization named in 429 messages. @default 'org-fake' */
  organization?: string;
  /** The limits' clock, epoch ms. @default Date.now */
  clock?: () => number;
  /**
   * Whose attempt it is, for `stats`. @default the `x-tenant` header, else the body's `user`
   */
  tenant?: (req: RecordedRequest) => string | undefined;
}

export interface FakeOpenAI {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** `http://127.0.0.1:<port>/v1`: pass as the client's `baseURL`. */
  readonly baseURL: string;
  /** Every request received, in arrival order (clear it with `requests.length = 0`). */
  readonly requests: RecordedRequest[];
  /**
   * failNext makes the next `n` requests answer `status` with an OpenAI-shaped error body and
   * `headers`. @default status 429, headers `{ 'retry-after-ms': '20' }` when status is 429
   */
  failNext(n: number, status?: number, headers?: Record<string, string>): void;
  /** Requests currently being answered (for concurrency assertions). */
  inFlight(): number;
  /** The highest `inFlight()` seen so far. */
  maxInFlight(): number;
  /**
   * rateLimitNext makes the next `n` attempts for `model` answer 429 with OpenAI's body, the
   * model's `x-ratelimit-*` headers, and `retry-after-ms` / `retry-after` when `retryAfterMs` is
   * set (none when it is undefined). They spend nothing from the model's buckets.
   */
  rateLimitNext(model: string, n: number, opts?: { retryAfterMs?: number }): void;
  /** Every attempt with its model, tenant and status, in arrival order (never cleared). */
  readonly attempts: readonly AttemptRecord[];
  /** stats counts attempts, 2xx and 429s (of one model, since a `performance.now()` instant). */
  stats(filter?: { model?: string; since?: number }): Stats;
  /** limitState is a model's bucket now (undefined when that limit is not set). */
  limitState(model: string, dimension: OpenAIDimension): BucketState | undefined;
  /** Stops the server and closes its connections. */
  close(): Promise<void>;
}

/** startFakeOpenAI starts the server on 127.0.0.1 and resolves once it listens. */
export async function startFakeOpenAI(opts: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  const requests: RecordedRequest[] = [];
  const failures: { status: number; headers: Record<string, string> }[] = [];
  const limits = new OpenAILimits(opts);
  let inFlight = 0;
  let maxInFlight = 0;
  let seq = 0;
  const nextId = (prefix: string) => `${prefix}_${(++seq).toString(36).padStart(6, '0')}`;
  const tenantOf =
    opts.tenant ??
    ((rec: RecordedRequest) =>
      headerValue(rec.headers, 'x-tenant') ?? (typeof rec.body?.user === 'string' ? rec.body.user : undefined));

  async function handle(req: IncomingMessage, res: ServerResponse, raw: string): Promise<void> {
    const body = parseJSON(raw);
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const rec: RecordedRequest = {
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

    // The provider decides at arrival, and answers a 429 at once.
    const model = typeof body?.model === 'string' ? body.model : undefined;
    const attempt = limits.gate.record(rec, model, tenantOf(rec));
    if (rec.method === 'POST' && model !== undefined) {
      const verdict = limits.decide(path, model, body, attempt.date);
      attempt.llmTokens = verdict.llmTokens;
      if (verdict.refused !== undefined) {
        rec.status = 429;
        sendJSON(res, 429, verdict.refused.body, verdict.refused.headers);
        return;
      }
      for (const [name, value] of Object.entries(verdict.headers)) res.setHeader(name, value);
    }

    const latency = typeof opts.latencyMs === 'function' ? opts.latencyMs(rec) : (opts.latencyMs ?? 0);
    if (latency > 0) await sleep(latency);

    const failure = failures.shift();
    if (failure !== undefined) {
      rec.status = failure.status;
      const type = failure.status === 429 ? 'rate_limit_exceeded' : 'server_error';
      sendError(res, failure.status, `fake ${failure.status} (failNext)`, type, failure.headers);
      return;
    }
    // Azure OpenAI's paths (`/openai/deployments/<name>/chat/completions`) route as OpenAI's.
    const route = path.replace(/^\/openai\/deployments\/[^/]+\//, '/v1/');
    if (rec.method === 'POST' && route === '/v1/chat/completions') return chat(rec, res, body ?? {});
    if (rec.method === 'POST' && route === '/v1/responses') return responses(rec, res, body ?? {});
    if (rec.method === 'POST' && route === '/v1/embeddings') return embeddings(rec, res, body ?? {});
    rec.status = 404;
    sendError(res, 404, `Unknown request URL: ${rec.method} ${path}`, 'invalid_request_error');
  }

  function usageFor(rec: RecordedRequest, promptChars: number, completionChars: number): FakeUsage {
    if (typeof opts.usage === 'function') return opts.usage(rec);
    if (opts.usage !== undefined) return opts.usage;
    return {
      prompt_tokens: Math.ceil(promptChars / 4),
      completion_tokens: Math.ceil(completionChars / 4),
    };
  }

  async function chat(rec: RecordedRequest, res: ServerResponse, body: Json): Promise<void> {
    const messages: Json[] = Array.isArray(body.messages) ? body.messages : [];
    const reply = opts.chat?.(body, rec) ?? defaultChatReply(body, messages);
    const toolCalls = (reply.toolCalls ?? []).map((c) => ({
      id: nextId('call'),
      type: 'function' as const,
      function: {
        name: c.name,
        arguments: typeof c.arguments === 'string' ? c.arguments : JSON.stringify(c.arguments ?? {}),
      },
    }));
    const content = toolCalls.length > 0 ? null : (reply.content ?? DEFAULT_TEXT);
    const completionChars =
      content?.length ?? toolCalls.reduce((n, c) => n + c.function.name.length + c.function.arguments.length, 0);
    const u = usageFor(rec, textLength(messages), completionChars);
    const usage = { ...u, total_tokens: u.prompt_tokens + u.completion_tokens };
    const id = nextId('chatcmpl');
    const created = Math.floor(Date.now() / 1000);
    const model = typeof body.model === 'string' ? body.model : 'gpt-fake';
    const finish_reason = toolCalls.length > 0 ? 'tool_calls' : 'stop';

    if (body.stream !== true) {
      sendJSON(res, 200, {
        id,
        object: 'chat.completion',
        created,
        model,
        choices: [
          {
            index: 0,
            message: {
              role: 'assistant',
              content,
              refusal: null,
              ...(toolCalls.length > 0 ? { tool_calls: toolCalls } : {}),
            },
            logprobs: null,
            finish_reason,
          },
        ],
        usage,
      });
      return;
    }

    const includeUsage = body.stream_options?.include_usage === true;
    const base = { id, object: 'chat.completion.chunk', created, model };
    const chunk = (delta: object, finish: string | null) => ({
      ...base,
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
      ...(includeUsage ? { usage: null } : {}),
    });
    const events: object[] = [chunk({ role: 'assistant', content: toolCalls.length > 0 ? null : '' }, null)];
    if (toolCalls.length > 0) {
      toolCalls.forEach((c, index) => {
        events.push(
          chunk(
            {
              tool_calls: [
                {
                  index,
                  id: c.id,
                  type: 'function',
                  function: { name: c.function.name, arguments: '' },
                },
              ],
            },
            null,
          ),
        );
        events.push(
          chunk(
            {
              tool_calls: [{ index, function: { arguments: c.function.arguments } }],
            },
            null,
          ),
        );
      });
    } else {
      for (const piece of (content ?? '').match(/\S+\s*/g) ?? []) events.push(chunk({ content: piece }, null));
    }
    events.push(chunk({}, finish_reason));
    if (includeUsage) events.push({ ...base, choices: [], usage });
    await sendSSE(
      res,
      events.map((e): SSEvent => ({ data: e })),
      { done: true, delayMs: opts.chunkDelayMs ?? 0 },
    );
  }

  async function responses(rec: RecordedRequest, res: ServerResponse, body: Json): Promise<void> {
    const text =
      typeof opts.responseText === 'function' ? opts.responseText(body) : (opts.responseText ?? DEFAULT_TEXT);
    const u = usageFor(rec, textLength(body.input) + textLength(body.instructions), text.length);
    const { json, events } = responsesAnswer(body, text, u, nextId);
    if (body.stream !== true) sendJSON(res, 200, json);
    else await sendSSE(res, events, { done: false, delayMs: opts.chunkDelayMs ?? 0 });
  }

  function embeddings(rec: RecordedRequest, res: ServerResponse, body: Json): void {
    const inputs: unknown[] = Array.isArray(body.input) ? body.input : [body.input];
    const dims = typeof body.dimensions === 'number' ? body.dimensions : 8;
    const u = usageFor(rec, textLength(body.input), 0);
    const data = inputs.map((input, index) => {
      const vector = Array.from({ length: dims }, (_, i) => Math.sin(textLength(input) + i + 1));
      const embedding =
        body.encoding_format === 'base64' ? Buffer.from(new Float32Array(vector).buffer).toString('base64') : vector;
      return { object: 'embedding', index, embedding };
    });
    sendJSON(res, 200, {
      object: 'list',
      data,
      model: typeof body.model === 'string' ? body.model : 'text-embedding-fake',
      usage: { prompt_tokens: u.prompt_tokens, total_tokens: u.prompt_tokens },
    });
  }

  const server = await listenLoopback(opts.port ?? 0, handle, (res, err) =>
    sendError(res, 500, `fake server error: ${String(err)}`, 'server_error'),
  );
  return {
    url: server.url,
    baseURL: `${server.url}/v1`,
    requests,
    failNext(n, status = 429, headers) {
      const h = headers ?? (status === 429 ? { 'retry-after-ms': '20' } : {});
      for (let i = 0; i < n; i++) failures.push({ status, headers: h });
    },
    inFlight: () => inFlight,
    maxInFlight: () => maxInFlight,
    rateLimitNext(model, n, o = {}) {
      limits.gate.forceNext(model, n, o.retryAfterMs);
    },
    attempts: limits.gate.log,
    stats: (filter) => summarize(limits.gate.log, filter),
    limitState: (model, dimension) => limits.state(model, dimension),
    close: () => server.close(),
  };
}

function sendError(
  res: ServerResponse,
  status: number,
  message: string,
  type: string,
  headers: Record<string, string> = {},
): void {
  sendJSON(res, status, { error: { message, type, param: null, code: type } }, headers);
}
