/**
 * LLM-token accounting for Anthropic's Messages API: which requests spend LLM tokens, what one is
 * estimated to use before it is sent, and what its response (JSON or stream) says it used.
 *
 * What counts: input + cache creation + output LLM tokens. Cache reads (`cache_read_input_tokens`)
 * do not: Anthropic's own input-tokens-per-minute limit leaves them out for current models, so the
 * budget counts what the provider counts, and a user whose prompt is cached is not charged again
 * for reading it.
 */
import type { StreamUsageReader } from '../pipeline/adapter.js';
import { CHARS_PER_LLM_TOKEN, DEFAULT_MAX_OUTPUT_LLM_TOKENS } from './openai-llm-tokens.js';

/** spendsLLMTokens reports whether a request spends LLM tokens: `POST /v1/messages` only (not count_tokens, not batches). */
export function spendsLLMTokens(method: string, path: string): boolean {
  if (method.toLowerCase() !== 'post') return false;
  const q = path.indexOf('?');
  return (q < 0 ? path : path.slice(0, q)).endsWith('/messages');
}

/**
 * estimateLLMTokens estimates the LLM tokens a Messages request will use: its prompt (the
 * characters of every string in `system`, `messages` and `tools`, divided by
 * {@link CHARS_PER_LLM_TOKEN}; base64 images and documents and `data:` URLs are not counted) plus
 * its `max_tokens` (else {@link DEFAULT_MAX_OUTPUT_LLM_TOKENS}). At least 1.
 */
export function estimateLLMTokens(_path: string, body: unknown): number {
  if (body === null || typeof body !== 'object') return 1;
  const b = body as Record<string, unknown>;
  const prompt = Math.ceil((textChars(b.system) + textChars(b.messages) + textChars(b.tools)) / CHARS_PER_LLM_TOKEN);
  const max =
    typeof b.max_tokens === 'number' && Number.isFinite(b.max_tokens) && b.max_tokens >= 0
      ? b.max_tokens
      : DEFAULT_MAX_OUTPUT_LLM_TOKENS;
  return Math.max(1, prompt + max);
}

/**
 * anthropicUsageTotal reads the LLM tokens of an Anthropic `usage` object: `input_tokens` +
 * `cache_creation_input_tokens` + `output_tokens` (cache reads are left out, see the module
 * comment). Undefined when it holds neither an input nor an output count.
 */
export function anthropicUsageTotal(usage: unknown): number | undefined {
  if (usage === null || typeof usage !== 'object') return undefined;
  const u = usage as Record<string, unknown>;
  const input = count(u.input_tokens);
  const output = count(u.output_tokens);
  if (input === undefined && output === undefined) return undefined;
  return (input ?? 0) + (count(u.cache_creation_input_tokens) ?? 0) + (output ?? 0);
}

/** usageOf reads the LLM tokens a Messages response body (a `message`) reports. */
export function usageOf(body: unknown): number | undefined {
  return body !== null && typeof body === 'object'
    ? anthropicUsageTotal((body as { usage?: unknown }).usage)
    : undefined;
}

/**
 * MessageStreamUsage reads one streamed message's usage: `message_start` carries the input side
 * (input and cache tokens, and a first output count), `message_delta` the final cumulative
 * `output_tokens` (and, on newer API versions, cumulative input counts that replace the first
 * ones). The total is final at `message_delta`; a stream cut before it keeps the estimate.
 */
export class MessageStreamUsage implements StreamUsageReader {
  #input = 0;
  #cacheCreation = 0;

  read(data: unknown): number | undefined {
    if (data === null || typeof data !== 'object') return undefined;
    const event = data as { type?: unknown; message?: { usage?: unknown }; usage?: unknown };
    if (event.type === 'message_start') {
      this.#take(event.message?.usage);
      return undefined;
    }
    if (event.type !== 'message_delta') return undefined;
    const output = this.#take(event.usage);
    return output === undefined ? undefined : this.#input + this.#cacheCreation + output;
  }

  /** Anthropic always reports stream usage: nothing is asked for, nothing is dropped. */
  drop(): boolean {
    return false;
  }

  end(): number | undefined {
    return undefined;
  }

  /** #take keeps the input counts `usage` holds and answers its output count. */
  #take(usage: unknown): number | undefined {
    if (usage === null || typeof usage !== 'object') return undefined;
    const u = usage as Record<string, unknown>;
    this.#input = count(u.input_tokens) ?? this.#input;
    this.#cacheCreation = count(u.cache_creation_input_tokens) ?? this.#cacheCreation;
    return count(u.output_tokens);
  }
}

const count = (v: unknown): number | undefined =>
  typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : undefined;

function textChars(value: unknown, depth = 0): number {
  if (typeof value === 'string') return value.startsWith('data:') ? 0 : value.length;
  if (depth > 32 || value === null || typeof value !== 'object') return 0;
  let n = 0;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) n += textChars(value[i], depth + 1);
    return n;
  }
  const o = value as Record<string, unknown>;
  // An image's or a document's base64 source: billed by its pixels or pages, not its characters.
  if (o.type === 'base64') return 0;
  for (const k in o) if (Object.hasOwn(o, k)) n += textChars(o[k], depth + 1);
  return n;
}
