/**
 * throttleAnthropic with the real @anthropic-ai/sdk client talking HTTP to the loopback Messages
 * API server (examples/support/fake-anthropic.ts). Nothing here mocks the client.
 *
 * LLM-token numbers are exact: their buckets live on a MemoryBackend whose clock stands still, so
 * what a call took is what `remaining` lost. Timing bounds are exact on the fast side (a throttle
 * that lets calls through early is a bug) and wide on the slow side (a busy 2-core machine).
 */
import Anthropic from '@anthropic-ai/sdk';
import {
  type AdmitEvent,
  ANONYMOUS_USER,
  QueueFullError,
  isQueueFullError,
  perUserStats,
  throttleAnthropic,
  withUser,
} from '@tollgate/agent';
import { MemoryBackend, RateLimiter, isInvalidOptionsError, isMaxWaitExceededError } from '@tollgate/core';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import {
  type FakeAnthropic,
  type RecordedAnthropicRequest,
  startFakeAnthropic,
} from '../../examples/support/fake-anthropic.ts';
import { ANTHROPIC } from '../../packages/agent/src/adapters/anthropic.ts';
import {
  MessageStreamUsage,
  estimateLLMTokens,
  spendsLLMTokens,
} from '../../packages/agent/src/adapters/anthropic-llm-tokens.ts';

const MODEL = 'claude-fake-1';
const TEXT = 'Hello from the fake Anthropic server.';
// What the server reports for every message: 30 + 5 cache creation + 12 output LLM tokens are
// charged (47); the 1000 cache reads are not.
const USAGE = { input_tokens: 30, output_tokens: 12, cache_creation_input_tokens: 5, cache_read_input_tokens: 1000 };
const CHARGED = 47;
// system 'abcd' + role 'user' + message 'abcdefgh': 16 characters, 4 LLM tokens; + max_tokens 64.
const ESTIMATE = 68;

let fake: FakeAnthropic;
beforeAll(async () => {
  fake = await startFakeAnthropic({ usage: USAGE });
});
afterAll(() => fake.close());
afterEach(() => {
  fake.requests.length = 0;
});

const newClient = (baseURL: string, options: Partial<ConstructorParameters<typeof Anthropic>[0]> = {}) =>
  new Anthropic({ baseURL, apiKey: 'test-key', maxRetries: 2, timeout: 10_000, ...options });

const params = (tag = 'abcdefgh') => ({
  model: MODEL,
  max_tokens: 64,
  system: 'abcd',
  messages: [{ role: 'user' as const, content: tag }],
});

/** A limiter on the real clock. */
const limiter = (rate: number, per: string, capacity: number, name = 'requests') =>
  new RateLimiter({ backend: new MemoryBackend(), name, policy: { rate, per: per as '1s', capacity } });

const CAPACITY = 10_000;
/** Buckets on a clock that stands still: nothing refills, so `remaining` shows every token taken. */
const frozen = (name: string, capacity = CAPACITY) =>
  new RateLimiter({ backend: new MemoryBackend({ clock: () => 0 }), name, policy: { rate: 1, per: '1h', capacity } });

/** Tokens `user` has spent from `limiter`: what a 1-token probe leaves, probe given back. */
async function spent(limiter: RateLimiter, user: string, capacity = CAPACITY): Promise<number> {
  const d = await limiter.tryAcquire(user);
  if (!d.allowed) return capacity - d.remaining;
  await limiter.refund(user, 1);
  return capacity - 1 - d.remaining;
}

const tagOf = (r: RecordedAnthropicRequest): string => r.body?.messages?.[0]?.content ?? '';

describe('throttleAnthropic', () => {
  test("one user's burst is spaced at the bucket's rate, while another user's call is not delayed", async () => {
    // 10 requests/s, burst 2: user A's 8 calls take (8 - 2) / 10 s = 600 ms.
    const client = throttleAnthropic(newClient(fake.baseURL), { requests: limiter(10, '1s', 2) });
    const t0 = performance.now();
    const burst = withUser('user-a', () =>
      Promise.all(Array.from({ length: 8 }, (_, i) => client.messages.create(params(`a-${i}`)))),
    );
    await new Promise((r) => setTimeout(r, 100));
    // B's call goes out alongside a call of an unthrottled client, the yardstick of "not delayed".
    const control = newClient(fake.baseURL);
    const [b] = await Promise.all([
      withUser('user-b', () => client.messages.create(params('b-0'))),
      control.messages.create(params('control')),
    ]);
    await burst;
    const total = performance.now() - t0;

    expect(b.content).toEqual([{ type: 'text', text: TEXT }]);
    const a = fake.requests.filter((r) => tagOf(r).startsWith('a-')).map((r) => r.time - t0);
    expect(a).toHaveLength(8);
    // A token bucket admits at most b + r·T in T: by each arrival, at most 2 + 10/s × elapsed
    // (10 ms of timer slack). The lower bound is wide: 3× slower than a quiet machine still passes.
    for (const [k, at] of a.entries()) expect(k + 1).toBeLessThanOrEqual(2 + Math.floor(((at + 10) * 10) / 1000));
    expect(total).toBeGreaterThanOrEqual(590);
    expect(total).toBeLessThan(2000);
    // B, sent while A had 5 calls queued (the last admitted at 600 ms), reaches the server with
    // the unthrottled call, well before A's queue drains.
    const bAt = fake.requests.find((r) => tagOf(r) === 'b-0') as RecordedAnthropicRequest;
    const controlAt = fake.requests.find((r) => tagOf(r) === 'control') as RecordedAnthropicRequest;
    expect(bAt.time - controlAt.time).toBeLessThan(100);
    expect(bAt.time - t0).toBeLessThan(a[7] as number);
  });

  describe('LLM tokens settle to the usage the server reports (input + cache creation + output)', () => {
    test('messages.create: the estimate is reserved, then settled when the message is read', async () => {
      const slow = await startFakeAnthropic({ usage: USAGE, latencyMs: 150 });
      try {
        const llmTokens = frozen('llm-tokens');
        const client = throttleAnthropic(newClient(slow.baseURL), { llmTokens });
        await withUser('json', async () => {
          const call = client.messages.create(params());
          await new Promise((r) => setTimeout(r, 50)); // the server holds the request 150 ms
          expect(await spent(llmTokens, 'json')).toBe(ESTIMATE);
          const m = await call;
          expect(m.usage).toMatchObject(USAGE);
        });
        expect(await spent(llmTokens, 'json')).toBe(CHARGED);
      } finally {
        await slow.close();
      }
    });

    test('messages.create with stream: true settles at message_delta, every event reaching the caller', async () => {
      const llmTokens = frozen('llm-tokens');
      const client = throttleAnthropic(newClient(fake.baseURL), { llmTokens });
      const stream = await withUser('raw-stream', () => client.messages.create({ ...params(), stream: true }));
      const types: string[] = [];
      let text = '';
      for await (const ev of stream) {
        types.push(ev.type);
        if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta') text += ev.delta.text;
      }
      expect(text).toBe(TEXT);
      expect(types[0]).toBe('message_start');
      expect(types.slice(-2)).toEqual(['message_delta', 'message_stop']);
      expect(await spent(llmTokens, 'raw-stream')).toBe(CHARGED);
    });

    test('messages.stream(...) and its finalMessage() settle the same way', async () => {
      const llmTokens = frozen('llm-tokens');
      const requests = frozen('requests');
      const client = throttleAnthropic(newClient(fake.baseURL), { requests, llmTokens });
      // The request starts when stream() is called: that is where the user must be set.
      const stream = withUser('helper', () => client.messages.stream(params()));
      const deltas: string[] = [];
      stream.on('text', (t) => deltas.push(t));
      const final = await stream.finalMessage();
      expect(deltas.join('')).toBe(TEXT);
      expect(final.usage).toMatchObject({ ...USAGE, output_tokens: 12 });
      expect(await spent(llmTokens, 'helper')).toBe(CHARGED);
      expect(await spent(requests, 'helper')).toBe(1);
    });

    test('beta.messages.create and beta.messages.stream are throttled and settled alike', async () => {
      const llmTokens = frozen('llm-tokens');
      const admitted: AdmitEvent[] = [];
      const client = throttleAnthropic(newClient(fake.baseURL), { llmTokens, onAdmit: (e) => admitted.push(e) });
      await withUser('beta', async () => {
        await client.beta.messages.create(params());
        await client.beta.messages.stream(params()).finalMessage();
      });
      expect(admitted.map((e) => [e.user, e.path, e.llmTokens])).toEqual([
        ['beta', '/v1/messages', ESTIMATE],
        ['beta', '/v1/messages', ESTIMATE],
      ]);
      expect(fake.requests.map((r) => r.path)).toEqual(['/v1/messages', '/v1/messages']);
      expect(await spent(llmTokens, 'beta')).toBe(2 * CHARGED);
    });

    test('a stream left before its message_delta keeps its estimate (the provider may have counted it all)', async () => {
      const slow = await startFakeAnthropic({ usage: USAGE, chunkDelayMs: 30, text: 'one two three four five six' });
      try {
        const llmTokens = frozen('llm-tokens');
        const client = throttleAnthropic(newClient(slow.baseURL), { llmTokens });
        const stream = await withUser('quitter', () => client.messages.create({ ...params(), stream: true }));
        let events = 0;
        for await (const ev of stream) {
          events++;
          if (ev.type === 'content_block_delta') break; // the client aborts the rest of the stream
        }
        expect(events).toBeLessThan(5);
        await new Promise((r) => setTimeout(r, 50));
        expect(await spent(llmTokens, 'quitter')).toBe(ESTIMATE);
      } finally {
        await slow.close();
      }
    });

    test('usage above the estimate is charged after the call; an estimate above the capacity is capped', async () => {
      const llmTokens = frozen('llm-tokens', 40);
      const admitted: AdmitEvent[] = [];
      const client = throttleAnthropic(newClient(fake.baseURL), { llmTokens, onAdmit: (e) => admitted.push(e) });
      // Estimate 68, capped at the capacity 40; usage 47 is charged: the bucket owes 7.
      await withUser('big', () => client.messages.create(params()));
      expect(admitted[0]?.llmTokens).toBe(40);
      // The excess is an acquire that waits in the background (the clock stands still), so the
      // bucket is empty: nothing more is granted.
      expect((await llmTokens.tryAcquire('big')).allowed).toBe(false);
    });

    test('the estimate is system + messages + tools characters / 4 + max_tokens; base64 sources are not text', () => {
      expect(estimateLLMTokens('/v1/messages', params())).toBe(ESTIMATE);
      const image = { type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'A'.repeat(40_000) } };
      const withImage = {
        ...params(),
        messages: [{ role: 'user', content: [image, { type: 'text', text: 'abcdefgh' }] }],
      };
      // 'abcd' + 'image' + 'image/png'... : only the short strings count, never the 40 000 base64 characters.
      expect(estimateLLMTokens('/v1/messages', withImage)).toBeLessThan(ESTIMATE + 10);
      const tools = [{ name: 'get_weather', description: 'x'.repeat(37), input_schema: { type: 'object' } }];
      // + 11 + 37 + 6 characters of tools: 70 characters, 18 LLM tokens.
      expect(estimateLLMTokens('/v1/messages', { ...params(), tools })).toBe(18 + 64);
      expect(estimateLLMTokens('/v1/messages', { model: MODEL, messages: [] })).toBe(1024);
    });
  });

  test('only POST /v1/messages spends LLM tokens; a stream settles on cumulative message_delta counts', () => {
    expect(spendsLLMTokens('POST', '/v1/messages')).toBe(true);
    expect(spendsLLMTokens('post', '/v1/messages?beta=true')).toBe(true);
    expect(spendsLLMTokens('post', '/v1/messages/count_tokens')).toBe(false);
    expect(spendsLLMTokens('post', '/v1/messages/batches')).toBe(false);
    expect(spendsLLMTokens('get', '/v1/messages')).toBe(false);
    // Newer API versions repeat the input counts in message_delta, cumulative: they replace
    // message_start's; a null keeps the earlier count. 40 + 5 + 12 = 57; cache reads not charged.
    const reader = new MessageStreamUsage();
    const start = { input_tokens: 30, cache_creation_input_tokens: 5, cache_read_input_tokens: 900, output_tokens: 1 };
    expect(reader.read({ type: 'message_start', message: { usage: start } })).toBeUndefined();
    expect(reader.read({ type: 'content_block_delta', delta: { type: 'text_delta', text: 'x' } })).toBeUndefined();
    const delta = {
      input_tokens: 40,
      cache_creation_input_tokens: null,
      cache_read_input_tokens: 900,
      output_tokens: 12,
    };
    expect(reader.read({ type: 'message_delta', usage: delta })).toBe(57);
    expect(reader.end()).toBeUndefined();
    expect(reader.drop()).toBe(false);
  });

  test('countTokens takes a request token and no LLM tokens', async () => {
    const requests = frozen('requests');
    const llmTokens = frozen('llm-tokens');
    const admitted: AdmitEvent[] = [];
    const client = throttleAnthropic(newClient(fake.baseURL), {
      requests,
      llmTokens,
      onAdmit: (e) => admitted.push(e),
    });
    const counted = await withUser('counter', async () => [
      await client.messages.countTokens({ model: MODEL, system: 'abcd', messages: params().messages }),
      await client.beta.messages.countTokens({ model: MODEL, messages: params().messages }),
    ]);
    expect(counted.map((c) => c.input_tokens)).toEqual([3, 2]);
    expect(admitted.map((e) => [e.path, e.llmTokens])).toEqual([
      ['/v1/messages/count_tokens', 0],
      ['/v1/messages/count_tokens', 0],
    ]);
    expect(await spent(requests, 'counter')).toBe(2);
    expect(await spent(llmTokens, 'counter')).toBe(0);
  });

  describe('the SDK retries', () => {
    test('every retry after a 429 waits for its own request token, and only the answered attempt spends LLM tokens', async () => {
      // 5/s, burst 1: each attempt waits 200 ms. The server asks for a 1 ms back-off.
      const requests = limiter(5, '1s', 1);
      const llmTokens = frozen('llm-tokens');
      const admitted: AdmitEvent[] = [];
      const client = throttleAnthropic(newClient(fake.baseURL, { maxRetries: 3 }), {
        requests,
        llmTokens,
        onAdmit: (e) => admitted.push(e),
      });
      fake.failNext(2, 429, { 'retry-after-ms': '1' });
      const t0 = performance.now();
      const m = await withUser('retry-user', () => client.messages.create(params()));
      expect(m.content).toEqual([{ type: 'text', text: TEXT }]);
      expect(fake.requests.map((r) => r.status)).toEqual([429, 429, 200]);
      // Attempt k (from 0) reaches the server at k × 200 ms at the earliest.
      for (const [k, r] of fake.requests.entries()) expect(r.time - t0).toBeGreaterThanOrEqual(k * 200 - 10);
      expect(admitted.map((e) => [e.user, e.retry, e.llmTokens])).toEqual([
        ['retry-user', false, ESTIMATE],
        ['retry-user', true, ESTIMATE],
        ['retry-user', true, ESTIMATE],
      ]);
      // The 429s gave their estimates back: only the answered message's usage is spent.
      expect(await spent(llmTokens, 'retry-user')).toBe(CHARGED);
    });

    test("a model's 429 (rate_limit_error with retry-after) keeps each attempt's request token", async () => {
      const requests = frozen('requests', 5);
      const client = throttleAnthropic(newClient(fake.baseURL, { maxRetries: 3 }), { requests });
      fake.rateLimitNext(MODEL, 2, { retryAfterMs: 5 });
      await withUser('u429', () => client.messages.create(params()));
      expect(fake.requests.map((r) => r.status)).toEqual([429, 429, 200]);
      expect(await spent(requests, 'u429', 5)).toBe(3);
    });
  });

  describe('per-user queue and deadlines', () => {
    test('perUser bounds a user’s calls in flight; beyond maxQueued a call fails at once with QueueFullError', async () => {
      const slow = await startFakeAnthropic({ latencyMs: 150 });
      try {
        const client = throttleAnthropic(newClient(slow.baseURL), { perUser: { concurrency: 1, maxQueued: 1 } });
        await withUser('busy', async () => {
          const first = [0, 1].map((i) => client.messages.create(params(`q-${i}`)));
          await new Promise((r) => setTimeout(r, 20));
          expect(perUserStats(client, 'busy')).toEqual({ queued: 1, inFlight: 1 });
          const t0 = performance.now();
          const err = await client.messages.create(params('q-2')).catch((e: unknown) => e);
          expect(performance.now() - t0).toBeLessThan(250); // queued, it would be answered after q-1, ~430 ms from now
          expect(err).toBeInstanceOf(QueueFullError);
          expect(isQueueFullError(err)).toBe(true);
          // Another user is not held by busy's queue: answered while busy's second call waits.
          const other = withUser('other', () => client.messages.create(params('other')));
          await Promise.all([...first, other]);
        });
        const times = (tag: string) => (slow.requests.find((r) => tagOf(r) === tag) as RecordedAnthropicRequest).time;
        expect(slow.requests.map(tagOf).sort()).toEqual(['other', 'q-0', 'q-1']);
        // One at a time: q-1 is sent after q-0 is answered (150 ms).
        expect(times('q-1') - times('q-0')).toBeGreaterThanOrEqual(140);
        expect(times('other')).toBeLessThan(times('q-1'));
      } finally {
        await slow.close();
      }
    });

    test('maxWaitMs: a call that would wait longer fails at once with MaxWaitExceededError and sends nothing', async () => {
      const client = throttleAnthropic(newClient(fake.baseURL), { requests: limiter(1, '1h', 1), maxWaitMs: 100 });
      await withUser('hurried', async () => {
        await client.messages.create(params('first'));
        const t0 = performance.now();
        const err = await client.messages.create(params('second')).catch((e: unknown) => e);
        expect(isMaxWaitExceededError(err)).toBe(true);
        expect(performance.now() - t0).toBeLessThan(1000); // waiting, it would take an hour
      });
      expect(fake.requests.map(tagOf)).toEqual(['first']);
    });

    test("an aborted wait gives its tokens back, sends nothing, and rejects with the client's abort error", async () => {
      const requests = frozen('requests', 1);
      const llmTokens = frozen('llm-tokens');
      const client = throttleAnthropic(newClient(fake.baseURL), { requests, llmTokens });
      await withUser('aborter', async () => {
        await client.messages.create(params('first'));
        // The request bucket is empty (and never refills): the LLM tokens are taken, the request waits.
        const ac = new AbortController();
        setTimeout(() => ac.abort(), 100);
        const err = await client.messages.create(params('second'), { signal: ac.signal }).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(Anthropic.APIUserAbortError);
      });
      expect(fake.requests.map(tagOf)).toEqual(['first']);
      expect(await spent(llmTokens, 'aborter')).toBe(CHARGED);
      expect(await spent(requests, 'aborter', 1)).toBe(1);
    });
  });

  test('the user is withUser, else the `user` option, else metadata.user_id, else ANONYMOUS_USER', async () => {
    const admitted: AdmitEvent[] = [];
    const onAdmit = (e: AdmitEvent) => admitted.push(e);
    const client = throttleAnthropic(newClient(fake.baseURL), { onAdmit });
    const withMeta = { ...params(), metadata: { user_id: 'meta-user' } };
    await client.messages.create(withMeta);
    await client.messages.create(params());
    await withUser('context-user', () => client.messages.create(withMeta));
    const byOption = throttleAnthropic(newClient(fake.baseURL), { onAdmit, user: () => 'option-user' });
    await byOption.messages.create(withMeta);
    expect(admitted.map((e) => e.user)).toEqual(['meta-user', ANONYMOUS_USER, 'context-user', 'option-user']);
  });

  test("a client's middleware sees every attempt, and the client stays throttled and settled", async () => {
    const llmTokens = frozen('llm-tokens');
    const requests = frozen('requests');
    const seen: string[] = [];
    const client = throttleAnthropic(
      newClient(fake.baseURL, {
        middleware: [
          async (request, next) => {
            seen.push(new URL(request.url).pathname);
            return next(request);
          },
        ],
      }),
      { requests, llmTokens },
    );
    fake.failNext(1, 429, { 'retry-after-ms': '1' });
    await withUser('mw', async () => {
      await client.messages.create(params());
      await client.messages.stream(params()).finalMessage();
    });
    expect(seen).toEqual(['/v1/messages', '/v1/messages', '/v1/messages']);
    expect(fake.requests.map((r) => r.status)).toEqual([429, 200, 200]);
    expect(await spent(requests, 'mw')).toBe(3);
    expect(await spent(llmTokens, 'mw')).toBe(2 * CHARGED);
  });

  test('withOptions keeps the client throttled; a client is throttled once; a non-client is refused by name', async () => {
    const requests = frozen('requests');
    const client = throttleAnthropic(newClient(fake.baseURL), { requests });
    await withUser('copy', () => client.withOptions({ timeout: 5000 }).messages.create(params()));
    expect(await spent(requests, 'copy')).toBe(1);
    expect(() => throttleAnthropic(client)).toThrow(/throttleAnthropic: client is throttled already/);
    const err = (() => {
      try {
        throttleAnthropic({} as Anthropic);
      } catch (e) {
        return e;
      }
    })();
    expect(isInvalidOptionsError(err)).toBe(true);
    expect(String(err)).toMatch(/throttleAnthropic: client must be an Anthropic client from @anthropic-ai\/sdk/);
    expect(() => throttleAnthropic(newClient(fake.baseURL), { maxWaitMs: -1 })).toThrow(
      /throttleAnthropic options.*maxWaitMs/s,
    );
  });

  test("the provider's rate-limit headers are read for the shared pools: requests, tokens, and a 429's retry time", async () => {
    const limited = await startFakeAnthropic({
      limits: { [MODEL]: { requests: 3, inputLLMTokens: 1000, outputLLMTokens: 500, windowMs: 60_000 } },
    });
    try {
      const client = newClient(limited.baseURL, { maxRetries: 0 });
      const { response } = await client.messages.create(params()).withResponse();
      const ok = ANTHROPIC.readRateLimits?.(response.status, response.headers);
      // 1 request of 3 used; output charged max_tokens 64 of 500 at admission: 436 / 500 is the
      // smaller share left, so the tokens-* headers report the output limit.
      expect(ok?.requests).toMatchObject({ limit: 3, remaining: 2 });
      expect(ok?.llmTokens).toMatchObject({ limit: 500, remaining: 436 });
      expect(ok?.requests?.resetAfterMs).toBeGreaterThan(0);
      expect(ok?.requests?.retryAfterMs).toBeUndefined();
      limited.rateLimitNext(MODEL, 1, { retryAfterMs: 1500 });
      const err = (await client.messages.create(params()).catch((e: unknown) => e)) as InstanceType<
        typeof Anthropic.APIError
      >;
      expect(err.status).toBe(429);
      const refused = ANTHROPIC.readRateLimits?.(429, err.headers as Headers);
      expect(refused?.requests?.retryAfterMs).toBe(1500);
      expect(refused?.llmTokens?.retryAfterMs).toBe(1500);
      expect(
        ANTHROPIC.readRateLimits?.(200, new Headers({ 'anthropic-ratelimit-requests-limit': '-1' })),
      ).toBeUndefined();
    } finally {
      await limited.close();
    }
  });
});
