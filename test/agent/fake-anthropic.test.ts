import Anthropic from '@anthropic-ai/sdk';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type FakeAnthropic, startFakeAnthropic } from '../../examples/support/fake-anthropic.ts';
import type { AttemptRecord } from '../../examples/support/provider-limits.ts';
import { readAnthropicRateLimits } from '../../packages/agent/src/rate-limit-headers.ts';

const MODEL = 'claude-fake-1';
const TEXT = 'Hello from the fake Anthropic server.'; // 37 characters: 10 output LLM tokens

const newClient = (baseURL: string, options: Partial<ConstructorParameters<typeof Anthropic>[0]> = {}) =>
  new Anthropic({ baseURL, apiKey: 'test-key', maxRetries: 2, timeout: 10_000, ...options });

const ask = (client: Anthropic, extra: Partial<Anthropic.MessageCreateParamsNonStreaming> = {}) =>
  client.messages.create({
    model: MODEL,
    max_tokens: 64,
    messages: [{ role: 'user', content: 'abcdefgh' }],
    ...extra,
  });

const asError = (e: unknown) => e as InstanceType<typeof Anthropic.APIError>;

function admittedBound(attempts: readonly AttemptRecord[], burst: number, perSecond: number): number {
  const span = (attempts.at(-1)?.date ?? 0) - (attempts[0]?.date ?? 0);
  return burst + Math.floor((perSecond * span) / 1000);
}

let fake: FakeAnthropic;
beforeAll(async () => {
  fake = await startFakeAnthropic();
});
afterAll(() => fake.close());

describe("the fake Anthropic server speaks the real client's protocol", () => {
  test('a message answers text with input, output and cache usage', async () => {
    const r = await ask(newClient(fake.baseURL), { system: 'abcd' });
    expect(r.type).toBe('message');
    expect(r.content).toEqual([{ type: 'text', text: TEXT }]);
    expect(r.stop_reason).toBe('end_turn');
    // system + message: 12 characters, 3 input LLM tokens.
    expect(r.usage).toMatchObject({
      input_tokens: 3,
      output_tokens: 10,
      cache_creation_input_tokens: 0,
      cache_read_input_tokens: 0,
    });
    // The real client of the current major sent it.
    expect(fake.requests.at(-1)?.headers['user-agent']).toMatch(/^Anthropic\/JS 1\./);
    expect(fake.requests.at(-1)?.headers['anthropic-version']).toMatch(/^\d{4}-\d{2}-\d{2}$/);
  });

  test('a stream accumulates to the same message, its usage from message_start and message_delta', async () => {
    const client = newClient(fake.baseURL);
    const stream = client.messages.stream({
      model: MODEL,
      max_tokens: 64,
      messages: [{ role: 'user', content: 'abcdefgh' }],
    });
    const deltas: string[] = [];
    stream.on('text', (t) => deltas.push(t));
    const final = await stream.finalMessage();
    expect(deltas.join('')).toBe(TEXT);
    expect(deltas.length).toBeGreaterThan(1);
    expect(final.content).toEqual([{ type: 'text', text: TEXT }]);
    expect(final.usage).toMatchObject({ input_tokens: 2, output_tokens: 10 });
    const raw = await client.messages.create({
      model: MODEL,
      max_tokens: 64,
      messages: [{ role: 'user', content: 'x' }],
      stream: true,
    });
    const types: string[] = [];
    for await (const ev of raw) types.push(ev.type);
    expect(types[0]).toBe('message_start');
    expect(types.slice(-3)).toEqual(['content_block_stop', 'message_delta', 'message_stop']);
  });

  test('usage reports cache tokens when told; the answer stops at max_tokens', async () => {
    const cached = await startFakeAnthropic({
      usage: { input_tokens: 5, output_tokens: 7, cache_creation_input_tokens: 100, cache_read_input_tokens: 900 },
    });
    try {
      const r = await ask(newClient(cached.baseURL));
      expect(r.usage).toMatchObject({
        input_tokens: 5,
        output_tokens: 7,
        cache_creation_input_tokens: 100,
        cache_read_input_tokens: 900,
      });
      const s = await newClient(cached.baseURL)
        .messages.stream({ model: MODEL, max_tokens: 64, messages: [{ role: 'user', content: 'x' }] })
        .finalMessage();
      expect(s.usage).toMatchObject({ output_tokens: 7, cache_read_input_tokens: 900 });
    } finally {
      await cached.close();
    }
    const cut = await ask(newClient(fake.baseURL), { max_tokens: 2 });
    expect(cut.content).toEqual([{ type: 'text', text: 'Hello fr' }]);
    expect(cut.stop_reason).toBe('max_tokens');
    expect(cut.usage.output_tokens).toBe(2);
  });

  test('count_tokens counts the input', async () => {
    const r = await newClient(fake.baseURL).messages.countTokens({
      model: MODEL,
      messages: [{ role: 'user', content: 'abcdefghijkl' }],
    });
    expect(r.input_tokens).toBe(3);
  });
});

describe("the fake Anthropic server enforces a provider's limits", () => {
  test('every answer carries the anthropic-ratelimit headers; output LLM tokens are charged max_tokens, then settled', async () => {
    const now = Date.parse('2026-01-02T03:04:05Z');
    const limited = await startFakeAnthropic({
      limits: { [MODEL]: { requests: 5, inputLLMTokens: 1000, outputLLMTokens: 500 } },
      clock: () => now,
    });
    try {
      const client = newClient(limited.baseURL);
      const first = await ask(client, { max_tokens: 100 }).withResponse();
      const h = first.response.headers;
      expect(h.get('anthropic-ratelimit-requests-remaining')).toBe('4');
      expect(h.get('anthropic-ratelimit-requests-reset')).toBe('2026-01-02T03:04:17.000Z'); // 1 of 5 per minute: 12 s
      expect(h.get('anthropic-ratelimit-output-tokens-reset')).toBe('2026-01-02T03:04:17.000Z'); // 100 of 500: 12 s
      expect(readAnthropicRateLimits(h, now)).toEqual({
        requests: { limit: 5, remaining: 4, resetAfterMs: 12_000 },
        inputLLMTokens: { limit: 1000, remaining: 998, resetAfterMs: 120 },
        outputLLMTokens: { limit: 500, remaining: 400, resetAfterMs: 12_000 },
        // tokens-*: the most restrictive token limit, output here (80% left against 99.8%).
        llmTokens: { limit: 500, remaining: 400, resetAfterMs: 12_000 },
      });
      // The answer used 10 of its 100: 90 came back before the next request took 100 again.
      const second = await ask(client, { max_tokens: 100 }).withResponse();
      expect(readAnthropicRateLimits(second.response.headers, now).outputLLMTokens).toEqual({
        limit: 500,
        remaining: 390,
        resetAfterMs: 13_200,
      });
      expect(limited.attempts.map((a) => a.llmTokens)).toEqual([102, 102]);
    } finally {
      await limited.close();
    }
  });

  test('a burst above 10 requests/s gets rate_limit_errors with retry-after; admissions stay within b + r·T', async () => {
    const limited = await startFakeAnthropic({ limits: { [MODEL]: { requests: 10, windowMs: 1000 } } });
    try {
      const client = newClient(limited.baseURL, { maxRetries: 0 });
      const results = await Promise.allSettled(Array.from({ length: 30 }, () => ask(client)));
      const s = limited.stats({ model: MODEL });
      expect(s.attempts).toBe(30);
      expect(s.ok + s.rateLimited).toBe(30);
      expect(s.ok).toBeGreaterThanOrEqual(10);
      expect(s.ok).toBeLessThanOrEqual(admittedBound(limited.attempts, 10, 10));
      const refused = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
      expect(refused.reason).toBeInstanceOf(Anthropic.RateLimitError);
      const err = asError(refused.reason);
      expect(err.error).toMatchObject({
        type: 'error',
        error: { type: 'rate_limit_error', message: expect.stringMatching(/rate limit of 10 requests per 1000 ms/) },
      });
      const headers = err.headers as Headers;
      expect(headers.get('retry-after')).toBe('1'); // ≤ 100 ms, in whole seconds
      expect(headers.get('x-should-retry')).toBe('true');
      const seen = readAnthropicRateLimits(headers);
      expect(seen.retryAfterMs).toBe(1000);
      expect(seen.requests).toMatchObject({ limit: 10, remaining: 0 });
      expect(seen.requests?.resetAfterMs).toBeLessThanOrEqual(1000 + 5);
    } finally {
      await limited.close();
    }
  });

  test('a request asking more output LLM tokens than the limit is refused, and not to be retried', async () => {
    const limited = await startFakeAnthropic({ limits: { [MODEL]: { outputLLMTokens: 100 } } });
    try {
      const err = asError(await ask(newClient(limited.baseURL), { max_tokens: 200 }).catch((e: unknown) => e));
      expect(err.status).toBe(429);
      expect((err.headers as Headers).get('x-should-retry')).toBe('false');
      expect((err.headers as Headers).get('retry-after')).toBeNull();
      expect(limited.stats().attempts).toBe(1); // the client obeyed x-should-retry
    } finally {
      await limited.close();
    }
  });

  test("a forced 429 with retry-after-ms: 1500 is honoured by the client's retry", async () => {
    const limited = await startFakeAnthropic({ limits: { [MODEL]: { requests: 100, windowMs: 1000 } } });
    try {
      limited.rateLimitNext(MODEL, 1, { retryAfterMs: 1500 });
      const r = await ask(newClient(limited.baseURL, { maxRetries: 2 }));
      expect(r.content).toEqual([{ type: 'text', text: TEXT }]);
      const [first, second] = limited.attempts;
      expect(limited.attempts.map((a) => a.status)).toEqual([429, 200]);
      expect((second?.date ?? 0) - (first?.date ?? 0)).toBeGreaterThanOrEqual(1490);
      expect((second?.date ?? 0) - (first?.date ?? 0)).toBeLessThan(8000);
    } finally {
      await limited.close();
    }
  });

  test('stats count attempts per tenant (the x-tenant header, else metadata.user_id)', async () => {
    const limited = await startFakeAnthropic({ limits: { [MODEL]: { requests: 2 } } });
    try {
      const client = newClient(limited.baseURL, { maxRetries: 0 });
      const acme = newClient(limited.baseURL, { maxRetries: 0, defaultHeaders: { 'x-tenant': 'acme' } });
      await ask(acme);
      await ask(client, { metadata: { user_id: 'bob' } });
      await ask(client, { metadata: { user_id: 'bob' } }).catch(() => undefined);
      expect(limited.stats({ model: MODEL }).tenants).toEqual({
        acme: { attempts: 1, ok: 1, rateLimited: 0 },
        bob: { attempts: 2, ok: 1, rateLimited: 1 },
      });
    } finally {
      await limited.close();
    }
  });
});
