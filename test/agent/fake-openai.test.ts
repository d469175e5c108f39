import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type AttemptRecord, type FakeOpenAI, startFakeOpenAI } from '../../examples/support/fake-openai.ts';
import { readOpenAIRateLimits } from '../../packages/agent/src/rate-limit-headers.ts';
import { finalText, OPENAI_MAJOR, type OpenAI, newClient } from './openai-client.ts';

let fake: FakeOpenAI;
beforeAll(async () => {
  fake = await startFakeOpenAI();
});
afterAll(() => fake.close());

describe(`the fake OpenAI server speaks the real client's protocol (openai ${OPENAI_MAJOR})`, () => {
  test('a chat completion answers text with usage', async () => {
    const client = newClient(fake.baseURL);
    const r = await client.chat.completions.create({
      model: 'm',
      messages: [{ role: 'user', content: 'abcdefgh' }],
    });
    expect(r.choices[0]?.message.content).toBe('Hello from the fake OpenAI server.');
    // The client under test is the major this run asked for (TOLLGATE_OPENAI).
    expect(fake.requests.at(-1)?.headers['user-agent']).toMatch(new RegExp(`^OpenAI/JS ${OPENAI_MAJOR}\\.`));
    expect(r.usage).toMatchObject({
      prompt_tokens: 2,
      completion_tokens: 9,
      total_tokens: 11,
    });
  });

  test('a stream with include_usage ends with a choices: [] usage chunk', async () => {
    const client = newClient(fake.baseURL);
    const stream = await client.chat.completions.create({
      model: 'm',
      messages: [{ role: 'user', content: 'abcd' }],
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    const last = chunks.at(-1);
    expect(last?.choices).toEqual([]);
    expect(last?.usage?.total_tokens).toBe(10);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe('Hello from the fake OpenAI server.');
  });

  test('runTools calls the tool, then gets the final answer', async () => {
    const client = newClient(fake.baseURL);
    const runner = client.chat.completions.runTools({
      model: 'm',
      messages: [{ role: 'user', content: 'weather?' }],
      tools: [
        {
          type: 'function',
          function: {
            name: 'weather',
            description: 'the weather in a city',
            parameters: {
              type: 'object',
              properties: { city: { type: 'string' } },
              required: ['city'],
            },
            function: (args: { city: string }) => `sunny in ${args.city}`,
            parse: JSON.parse,
          },
        },
      ],
    });
    expect(await runner.finalContent()).toBe('Done: sunny in Paris');
  });

  test('responses (plain and streamed) and embeddings carry usage', async () => {
    const client = newClient(fake.baseURL);
    const r = await client.responses.create({ model: 'm', input: 'abcd' });
    expect(r.output_text).toBe('Hello from the fake OpenAI server.');
    expect(r.usage?.total_tokens).toBe(10);
    const s = client.responses.stream({ model: 'm', input: 'abcd' });
    const final = await s.finalResponse();
    expect(finalText(final)).toBe('Hello from the fake OpenAI server.');
    const e = await client.embeddings.create({
      model: 'e',
      input: ['abcd', 'efgh'],
    });
    expect(e.data).toHaveLength(2);
    expect(e.data[0]?.embedding).toHaveLength(8);
    expect(e.usage.total_tokens).toBe(2);
  });

  test('failNext answers 429 with retry-after-ms, and the client retries', async () => {
    const client = newClient(fake.baseURL);
    const before = fake.requests.length;
    fake.failNext(2, 429, { 'retry-after-ms': '10' });
    await client.chat.completions.create({
      model: 'm',
      messages: [{ role: 'user', content: 'x' }],
    });
    expect(fake.requests.slice(before).map((r) => r.status)).toEqual([429, 429, 200]);
  });
});

const MODEL = 'gpt-4o-mini';
const ask = (client: OpenAI, extra: Record<string, unknown> = {}) =>
  client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'abcdefgh' }], ...extra });

/** admittedBound is b + r·T over the server-clock span of `attempts`: the most a bucket can admit. */
function admittedBound(attempts: readonly AttemptRecord[], burst: number, perSecond: number): number {
  const span = (attempts.at(-1)?.date ?? 0) - (attempts[0]?.date ?? 0);
  return burst + Math.floor((perSecond * span) / 1000);
}

describe(`the fake OpenAI server enforces a provider's limits (openai ${OPENAI_MAJOR})`, () => {
  test('every answer carries the x-ratelimit headers, with the numbers of the buckets (fixed clock)', async () => {
    let now = Date.parse('2026-01-02T03:04:05Z');
    const limited = await startFakeOpenAI({
      limits: { [MODEL]: { requests: 10, llmTokens: 1000 } },
      clock: () => now,
    });
    try {
      const client = newClient(limited.baseURL);
      const first = await ask(client, { max_tokens: 100 }).withResponse();
      // 1 request of 10 per minute: 6 s to refill; 2 prompt + 100 output LLM tokens: 6.12 s.
      expect(Object.fromEntries([...first.response.headers].filter(([k]) => k.startsWith('x-ratelimit')))).toEqual({
        'x-ratelimit-limit-requests': '10',
        'x-ratelimit-limit-tokens': '1000',
        'x-ratelimit-remaining-requests': '9',
        'x-ratelimit-remaining-tokens': '898',
        'x-ratelimit-reset-requests': '6s',
        'x-ratelimit-reset-tokens': '6.12s',
      });
      expect(readOpenAIRateLimits(first.response.headers, now)).toEqual({
        requests: { limit: 10, remaining: 9, resetAfterMs: 6000 },
        llmTokens: { limit: 1000, remaining: 898, resetAfterMs: 6120 },
      });
      now += 3000; // half a request and 50 LLM tokens come back
      const second = await ask(client, { max_tokens: 100 }).withResponse();
      expect(readOpenAIRateLimits(second.response.headers, now)).toEqual({
        requests: { limit: 10, remaining: 8, resetAfterMs: 9000 },
        llmTokens: { limit: 1000, remaining: 846, resetAfterMs: 9240 },
      });
      // A stream says the same before its first chunk, and its usage chunk is still right.
      const streamed = await client.chat.completions
        .create({
          model: MODEL,
          messages: [{ role: 'user', content: 'abcdefgh' }],
          stream: true,
          stream_options: { include_usage: true },
        })
        .withResponse();
      expect(readOpenAIRateLimits(streamed.response.headers, now).requests).toEqual({
        limit: 10,
        remaining: 7,
        resetAfterMs: 15_000,
      });
      let usage: unknown;
      for await (const c of streamed.data) usage = c.usage ?? usage;
      expect(usage).toEqual({ prompt_tokens: 2, completion_tokens: 9, total_tokens: 11 });
      // An unlimited model gets no headers.
      const other = await client.chat.completions
        .create({ model: 'other', messages: [{ role: 'user', content: 'x' }] })
        .withResponse();
      expect(readOpenAIRateLimits(other.response.headers)).toEqual({});
    } finally {
      await limited.close();
    }
  });

  test('a burst above 10 requests/s gets 429s with OpenAI body and headers; admissions stay within b + r·T', async () => {
    const limited = await startFakeOpenAI({ limits: { [MODEL]: { requests: 10, windowMs: 1000 } } });
    try {
      const client = newClient(limited.baseURL, { maxRetries: 0 });
      const results = await Promise.allSettled(Array.from({ length: 30 }, () => ask(client)));
      const attempts = limited.attempts;
      const s = limited.stats({ model: MODEL });
      expect(s.attempts).toBe(30);
      expect(s.ok + s.rateLimited).toBe(30);
      expect(s.ok).toBeGreaterThanOrEqual(10); // the full bucket: at least the burst
      expect(s.ok).toBeLessThanOrEqual(admittedBound(attempts, 10, 10));
      expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(s.ok);
      const refused = results.find((r) => r.status === 'rejected');
      const err = (refused as PromiseRejectedResult).reason as InstanceType<typeof OpenAI.APIError>;
      expect(err.status).toBe(429);
      expect(err.error).toMatchObject({ type: 'requests', param: null, code: 'rate_limit_exceeded' });
      expect((err.error as { message: string }).message).toMatch(
        /^Rate limit reached for gpt-4o-mini in organization org-fake on requests per 1s \(RP1s\): Limit 10, Used 10, Requested 1\. Please try again in \d+ms\./,
      );
      const seen = readOpenAIRateLimits(err.headers as Headers);
      expect(seen.requests).toMatchObject({ limit: 10, remaining: 0 });
      // One request comes back every 100 ms: no refusal asks for more.
      expect(seen.retryAfterMs).toBeGreaterThan(0);
      expect(seen.retryAfterMs).toBeLessThanOrEqual(100);
      expect((err.headers as Headers).get('retry-after')).toBe('1');
    } finally {
      await limited.close();
    }
  });

  test('hammered for a second and more, 10 requests/s admits about b + r·T and never more', async () => {
    const limited = await startFakeOpenAI({ limits: { [MODEL]: { requests: 10, windowMs: 1000 } } });
    try {
      const client = newClient(limited.baseURL, { maxRetries: 0 });
      const until = performance.now() + 1200;
      const loop = async () => {
        while (performance.now() < until) await ask(client).catch(() => undefined);
      };
      await Promise.all([loop(), loop(), loop(), loop()]);
      const s = limited.stats();
      const bound = admittedBound(limited.attempts, 10, 10);
      expect(s.ok).toBeLessThanOrEqual(bound);
      // Four loops keep the bucket drained; even on a slow machine most of the bound is admitted.
      expect(s.ok).toBeGreaterThanOrEqual(Math.floor(bound * 0.5));
      expect(bound).toBeGreaterThanOrEqual(10 + 10); // the loops ran a second and more
      expect(s.rateLimited).toBeGreaterThan(0);
    } finally {
      await limited.close();
    }
  });

  test('LLM tokens are charged prompt + max_tokens at admission; too large a request is refused outright', async () => {
    const limited = await startFakeOpenAI({
      limits: { [MODEL]: { llmTokens: 100 } },
      clock: () => 0,
    });
    try {
      const client = newClient(limited.baseURL, { maxRetries: 0 });
      await ask(client, { max_tokens: 40 }); // 2 + 40
      await ask(client, { max_tokens: 40 }); // 2 + 40: 16 left
      const err = (await ask(client, { max_tokens: 40 }).catch((e: unknown) => e)) as InstanceType<
        typeof OpenAI.APIError
      >;
      expect(err.status).toBe(429);
      expect(err.error).toMatchObject({ type: 'tokens', code: 'rate_limit_exceeded' });
      expect((err.error as { message: string }).message).toContain(
        'on tokens per min (TPM): Limit 100, Used 84, Requested 42. Please try again in 15.6s.',
      );
      expect(readOpenAIRateLimits(err.headers as Headers, 0)).toEqual({
        llmTokens: { limit: 100, remaining: 16, resetAfterMs: 50_400 },
        retryAfterMs: 15_600,
      });
      const tooLarge = (await ask(client, { max_tokens: 200 }).catch((e: unknown) => e)) as InstanceType<
        typeof OpenAI.APIError
      >;
      expect(tooLarge.status).toBe(429);
      expect((tooLarge.error as { message: string }).message).toMatch(
        /^Request too large for gpt-4o-mini .* Limit 100, Requested 202\./,
      );
      expect(readOpenAIRateLimits(tooLarge.headers as Headers, 0).retryAfterMs).toBeUndefined();
      expect(limited.attempts.map((a) => a.llmTokens)).toEqual([42, 42, 0, 0]);
    } finally {
      await limited.close();
    }
  });

  test("a forced 429 with retry-after-ms: 1500 is honoured by the client's retry", async () => {
    const limited = await startFakeOpenAI({ limits: { [MODEL]: { requests: 100, windowMs: 1000 } } });
    try {
      const client = newClient(limited.baseURL, { maxRetries: 2 });
      limited.rateLimitNext(MODEL, 1, { retryAfterMs: 1500 });
      const r = await ask(client).withResponse();
      expect(r.data.choices[0]?.message.content).toBe('Hello from the fake OpenAI server.');
      const [first, second] = limited.attempts;
      expect(limited.attempts.map((a) => a.status)).toEqual([429, 200]);
      // The client slept what the server asked, not its own 0.5 s backoff.
      expect((second?.date ?? 0) - (first?.date ?? 0)).toBeGreaterThanOrEqual(1490);
      expect((second?.date ?? 0) - (first?.date ?? 0)).toBeLessThan(8000);
    } finally {
      await limited.close();
    }
  });

  test("Azure's -1 headers and 429s without retry headers read as nothing", async () => {
    const azure = await startFakeOpenAI({
      limits: { [MODEL]: { requests: 1 } },
      rateLimitHeaders: 'minus-one',
      retryHeaders: false,
    });
    try {
      const client = newClient(azure.baseURL, { maxRetries: 0 });
      const ok = await ask(client).withResponse();
      expect(ok.response.headers.get('x-ratelimit-remaining-requests')).toBe('-1');
      expect(readOpenAIRateLimits(ok.response.headers)).toEqual({});
      const err = (await ask(client).catch((e: unknown) => e)) as InstanceType<typeof OpenAI.APIError>;
      expect(err.status).toBe(429);
      expect((err.headers as Headers).get('retry-after-ms')).toBeNull();
      expect(readOpenAIRateLimits(err.headers as Headers)).toEqual({});
    } finally {
      await azure.close();
    }
  });

  test("stats count attempts, 2xx and 429s per tenant (the x-tenant header, else the body's user)", async () => {
    const limited = await startFakeOpenAI({ limits: { [MODEL]: { requests: 3 } } });
    try {
      const client = newClient(limited.baseURL, { maxRetries: 0 });
      const acme = newClient(limited.baseURL, { maxRetries: 0, defaultHeaders: { 'x-tenant': 'acme' } });
      await ask(acme);
      await ask(acme);
      await ask(client, { user: 'bob' });
      await ask(client, { user: 'bob' }).catch(() => undefined);
      await ask(client).catch(() => undefined);
      expect(limited.stats({ model: MODEL })).toEqual({
        attempts: 5,
        ok: 3,
        rateLimited: 2,
        tenants: {
          acme: { attempts: 2, ok: 2, rateLimited: 0 },
          bob: { attempts: 2, ok: 1, rateLimited: 1 },
          '': { attempts: 1, ok: 0, rateLimited: 1 },
        },
      });
      expect(limited.stats({ model: MODEL, since: limited.attempts[4]?.time ?? 0 }).attempts).toBe(1);
      expect(limited.limitState(MODEL, 'requests')?.remaining).toBe(0);
    } finally {
      await limited.close();
    }
  });
});

test('a bad limit is refused at start, naming the option and the value', async () => {
  await expect(startFakeOpenAI({ limits: { [MODEL]: { requests: 0 } } })).rejects.toThrow(
    'limits["gpt-4o-mini"].requests must be a positive finite number (received 0)',
  );
  await expect(startFakeOpenAI({ limits: { [MODEL]: { llmTokens: 5, windowMs: -1 } } })).rejects.toThrow(
    `limits["gpt-4o-mini"].llmTokens's windowMs must be a positive finite number of ms (received -1)`,
  );
});
