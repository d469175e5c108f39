/**
 * LLM-token accounting: what a request is estimated to use before it is sent, and what its
 * response says it used.
 */

/** Characters per LLM token in the prompt estimate (English text averages about 4). */
export const CHARS_PER_LLM_TOKEN = 4;

/**
 * DEFAULT_MAX_OUTPUT_LLM_TOKENS is the output estimate of a generating request that sets none of
 * `max_completion_tokens`, `max_tokens` or `max_output_tokens`. The estimate is settled to the
 * real usage once the response arrives, so a wrong guess only shifts budget in time.
 */
export const DEFAULT_MAX_OUTPUT_LLM_TOKENS = 1024;

/** The paths whose requests spend LLM tokens (other requests only spend a request token). */
const LLM_PATHS = /\/(chat\/completions|responses|embeddings|completions)$/;

/** spendsLLMTokens reports whether a request to `path` spends LLM tokens. */
export function spendsLLMTokens(method: string, path: string): boolean {
  return method.toLowerCase() === 'post' && LLM_PATHS.test(path);
}

/**
 * estimateLLMTokens estimates the LLM tokens a request will use: its prompt (the characters of
 * every string in `messages` / `input` / `prompt` / `instructions` / `tools`, divided by
 * {@link CHARS_PER_LLM_TOKEN}; inline `data:` URLs such as images are not counted) plus its
 * output (`max_completion_tokens`, `max_tokens` or `max_output_tokens`, else
 * {@link DEFAULT_MAX_OUTPUT_LLM_TOKENS}; times `n` choices; none for embeddings). At least 1.
 */
export function estimateLLMTokens(path: string, body: unknown): number {
  if (body === null || typeof body !== 'object') return 1;
  const b = body as Record<string, unknown>;
  const chars =
    textChars(b.messages) + textChars(b.input) + textChars(b.prompt) + textChars(b.instructions) + textChars(b.tools);
  const prompt = Math.ceil(chars / CHARS_PER_LLM_TOKEN);
  if (path.endsWith('/embeddings')) return Math.max(1, prompt);
  const max = firstCount(b.max_completion_tokens, b.max_tokens, b.max_output_tokens) ?? DEFAULT_MAX_OUTPUT_LLM_TOKENS;
  const n = firstCount(b.n) ?? 1;
  return Math.max(1, prompt + max * n);
}

/**
 * usageTotal reads the LLM tokens a response used from its `usage` object: Chat Completions
 * (`prompt_tokens` + `completion_tokens`), Responses (`input_tokens` + `output_tokens`) and
 * Embeddings (`prompt_tokens`) alike, preferring `total_tokens`. Undefined when there is none.
 */
export function usageTotal(usage: unknown): number | undefined {
  if (usage === null || typeof usage !== 'object') return undefined;
  const u = usage as Record<string, unknown>;
  if (typeof u.total_tokens === 'number' && Number.isFinite(u.total_tokens)) return u.total_tokens;
  const input = typeof u.prompt_tokens === 'number' ? u.prompt_tokens : u.input_tokens;
  const output = typeof u.completion_tokens === 'number' ? u.completion_tokens : u.output_tokens;
  if (typeof input !== 'number' && typeof output !== 'number') return undefined;
  return (typeof input === 'number' ? input : 0) + (typeof output === 'number' ? output : 0);
}

/** usageOf finds the usage in a response body or a stream event (chat chunk or Responses event). */
export function usageOf(data: unknown): number | undefined {
  if (data === null || typeof data !== 'object') return undefined;
  const d = data as Record<string, unknown>;
  const direct = usageTotal(d.usage);
  if (direct !== undefined) return direct;
  const response = d.response;
  if (response !== null && typeof response === 'object') return usageTotal((response as Record<string, unknown>).usage);
  return undefined;
}

function firstCount(...values: unknown[]): number | undefined {
  for (const v of values) if (typeof v === 'number' && Number.isFinite(v) && v >= 0) return v;
  return undefined;
}

function textChars(value: unknown, depth = 0): number {
  if (typeof value === 'string') return value.startsWith('data:') ? 0 : value.length;
  if (depth > 32 || value === null || typeof value !== 'object') return 0;
  // Index and for-in loops: no iterator or values array per object (this runs on every request).
  let n = 0;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) n += textChars(value[i], depth + 1);
  } else {
    const o = value as Record<string, unknown>;
    for (const k in o) if (Object.hasOwn(o, k)) n += textChars(o[k], depth + 1);
  }
  return n;
}
