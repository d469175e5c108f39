/**
 * tollgateMiddleware with the real AI SDK (`ai` 7, `@ai-sdk/openai` 4) against the loopback
 * OpenAI-compatible server: nothing mocked but the network's far end. `ai` 7 needs Node >= 22,
 * so on older Node every test here is skipped (the describe's name says why).
 */
import { createOpenAI } from '@ai-sdk/openai';
import { QueueFullError, throttleTool, tollgateMiddleware, withUser } from '@tollgate/agent';
import type { TollgateMiddlewareOptions } from '@tollgate/agent';
import {
  InvalidOptionsError,
  MaxWaitExceededError,
  MemoryBackend,
  type PoolObservation,
  RateLimiter,
  SharedLimiter,
  type SharedAcquireOptions,
  type SharedGrant,
} from '@tollgate/core';
import { generateObject, generateText, isStepCount, streamText, tool, wrapLanguageModel } from 'ai';
import { afterAll, afterEach, beforeAll, describe, expect, expectTypeOf, test } from 'vitest';
import { z } from 'zod';
import { type FakeOpenAI, startFakeOpenAI } from '../../examples/support/fake-openai.ts';

const NODE_MAJOR = Number(process.versions.node.split('.')[0]);

// generateObject is deprecated in ai 7 (in favour of generateText's `output`) but still what
// many apps call; its warning would only clutter the test output.
(globalThis as { AI_SDK_LOG_WARNINGS?: boolean }).AI_SDK_LOG_WARNINGS = false;

/** A frozen clock: buckets never refill, so what is left is exactly what the calls took. */
const frozen = () => new MemoryBackend({ clock: () => 1_000_000 });

/** left reads the whole tokens in `key`'s bucket without changing it (a frozen clock keeps it exact). */
async function left(limiter: RateLimiter, key: string): Promise<number> {
  const d = await limiter.tryAcquire(key, { cost: 1 });
  if (!d.allowed) return d.remaining;
  await limiter.refund(key, 1);
  return d.remaining + 1;
}

describe.skipIf(NODE_MAJOR < 22)(
  `AI SDK middleware (skipped below Node 22: ai 7 needs it; this is Node ${NODE_MAJOR})`,
  () => {
    let fake: FakeOpenAI;
    const USAGE = { prompt_tokens: 30, completion_tokens: 12 };

    beforeAll(async () => {
      fake = await startFakeOpenAI({
        usage: USAGE,
        chat: (body) =>
          body.response_format?.type === 'json_schema'
            ? { content: JSON.stringify({ city: 'Paris', degrees: 21 }) }
            : undefined,
      });
    });
    afterAll(() => fake.close());
    afterEach(() => {
      fake.requests.length = 0;
    });

    const modelWith = (options: TollgateMiddlewareOptions, modelId = 'gpt-4o-mini') => {
      const provider = createOpenAI({ baseURL: fake.baseURL, apiKey: 'test' });
      return wrapLanguageModel({ model: provider.chat(modelId), middleware: tollgateMiddleware(options) });
    };

    test("a user's burst is spaced at the bucket's rate, and another user is not delayed", async () => {
      const rate = 4; // per second
      const burst = 2;
      const requests = new RateLimiter({
        backend: new MemoryBackend(),
        name: 'requests',
        policy: { rate, per: '1s', capacity: burst },
      });
      const admits: { user: string; at: number; waitedMs: number }[] = [];
      const start = performance.now();
      const model = modelWith({
        requests,
        onAdmit: (e) => admits.push({ user: e.user, at: performance.now() - start, waitedMs: e.waitedMs }),
      });
      const ask = () => generateText({ model, prompt: 'Hi', maxRetries: 0 });
      const [alice, bob] = await Promise.all([
        withUser('alice', () => Promise.all([1, 2, 3, 4, 5, 6].map(() => ask()))),
        withUser('bob', () => ask()),
      ]);
      expect(alice.map((r) => r.text)).toEqual(Array(6).fill('Hello from the fake OpenAI server.'));
      expect(bob.text).toBe('Hello from the fake OpenAI server.');
      expect(fake.requests).toHaveLength(7);

      const aliceAdmits = admits.filter((a) => a.user === 'alice');
      expect(aliceAdmits).toHaveLength(6);
      // Never more than b + r·T admitted by time T (exact: the bucket cannot grant more).
      for (const [i, a] of aliceAdmits.entries())
        expect(i + 1).toBeLessThanOrEqual(burst + (rate * a.at) / 1000 + 1e-6);
      // The 6th needed (6 - 2) / 4 s = 1000 ms of refill; at most 5× that on a busy machine.
      const last = aliceAdmits[5]?.at ?? 0;
      expect(last).toBeGreaterThanOrEqual(990);
      expect(last).toBeLessThan(5000);
      // bob had a full bucket of his own: admitted at once, long before alice's last.
      const bobAdmit = admits.find((a) => a.user === 'bob');
      expect(bobAdmit?.waitedMs).toBeLessThan(100);
      expect(bobAdmit?.at ?? Number.POSITIVE_INFINITY).toBeLessThan(last - 500);
    });

    test('LLM tokens are reserved from the estimate and settled to the usage the server reports', async () => {
      const llmTokens = new RateLimiter({ backend: frozen(), name: 'llm-tokens', policy: { rate: 10_000, per: '1h' } });
      const reserved: number[] = [];
      const model = modelWith({ llmTokens, onAdmit: (e) => reserved.push(e.llmTokens) });
      // 400 characters of prompt = 100 LLM tokens, plus 100 of output.
      const r = await withUser('alice', () => generateText({ model, prompt: 'x'.repeat(400), maxOutputTokens: 100 }));
      expect(reserved).toEqual([200]);
      expect(r.usage.inputTokens).toBe(30);
      expect(r.usage.outputTokens).toBe(12);
      expect(await left(llmTokens, 'alice')).toBe(10_000 - 42);
      expect(await left(llmTokens, 'bob')).toBe(10_000);
    });

    test('an estimate larger than the bucket is capped at its capacity, and an excess over it is charged', async () => {
      const llmTokens = new RateLimiter({ backend: frozen(), name: 'llm-tokens', policy: { rate: 1000, per: '1h' } });
      const reserved: number[] = [];
      const model = modelWith({ llmTokens, onAdmit: (e) => reserved.push(e.llmTokens), estimateLLMTokens: () => 5000 });
      await withUser('alice', () => generateText({ model, prompt: 'Hi' }));
      expect(reserved).toEqual([1000]);
      expect(await left(llmTokens, 'alice')).toBe(1000 - 42);

      const low = modelWith({ llmTokens, estimateLLMTokens: () => 2 });
      await withUser('carol', () => generateText({ model: low, prompt: 'Hi' }));
      await new Promise((r) => setTimeout(r, 10)); // the excess (40) is charged in the background
      expect(await left(llmTokens, 'carol')).toBe(1000 - 42);
    });

    test('a stream settles to the usage of its finish part, and a stream cancelled before it keeps the estimate', async () => {
      const llmTokens = new RateLimiter({ backend: frozen(), name: 'llm-tokens', policy: { rate: 10_000, per: '1h' } });
      const model = modelWith({ llmTokens, perUser: { concurrency: 1 } });
      const text = await withUser('alice', async () => {
        const s = streamText({ model, prompt: 'x'.repeat(400), maxOutputTokens: 100 });
        let out = '';
        for await (const t of s.textStream) out += t;
        return out;
      });
      expect(text).toBe('Hello from the fake OpenAI server.');
      expect(fake.requests[0]?.body?.stream_options?.include_usage).toBe(true);
      expect(await left(llmTokens, 'alice')).toBe(10_000 - 42);

      // A slow stream, aborted after its first text: no finish part, so the estimate (200) stays,
      // and the user's one slot is free again (the next call does not hang).
      const slow = await startFakeOpenAI({ usage: USAGE, chunkDelayMs: 50 });
      try {
        const provider = createOpenAI({ baseURL: slow.baseURL, apiKey: 'test' });
        const slowModel = wrapLanguageModel({
          model: provider.chat('gpt-4o-mini'),
          middleware: tollgateMiddleware({ llmTokens, perUser: { concurrency: 1 } }),
        });
        const abort = new AbortController();
        await withUser('bob', async () => {
          const s = streamText({
            model: slowModel,
            prompt: 'x'.repeat(400),
            maxOutputTokens: 100,
            abortSignal: abort.signal,
            onError: () => {},
          });
          for await (const _ of s.textStream) abort.abort();
        });
        expect(await left(llmTokens, 'bob')).toBe(10_000 - 200);
        const next = await withUser('bob', () => generateText({ model: slowModel, prompt: 'Hi' }));
        expect(next.text).toBe('Hello from the fake OpenAI server.');
      } finally {
        await slow.close();
      }
    });

    test('generateObject waits for a token and settles its usage', async () => {
      const backend = frozen();
      const requests = new RateLimiter({ backend, name: 'requests', policy: { rate: 10, per: '1h' } });
      const llmTokens = new RateLimiter({ backend, name: 'llm-tokens', policy: { rate: 10_000, per: '1h' } });
      const model = modelWith({ requests, llmTokens });
      const { object } = await withUser('alice', () =>
        generateObject({
          model,
          schema: z.object({ city: z.string(), degrees: z.number() }),
          prompt: 'Weather in Paris?',
        }),
      );
      expect(object).toEqual({ city: 'Paris', degrees: 21 });
      expect(await left(requests, 'alice')).toBe(9);
      expect(await left(llmTokens, 'alice')).toBe(10_000 - 42);
    });

    test("a tool loop's model calls and tool calls each take the user's tokens", async () => {
      const backend = frozen();
      const requests = new RateLimiter({ backend, name: 'requests', policy: { rate: 10, per: '1h' } });
      const llmTokens = new RateLimiter({ backend, name: 'llm-tokens', policy: { rate: 10_000, per: '1h' } });
      const weatherCalls = new RateLimiter({ backend, name: 'tool:weather', policy: { rate: 5, per: '1h' } });
      const model = modelWith({ requests, llmTokens });
      const weather = tool({
        description: 'The weather in a city',
        inputSchema: z.object({ city: z.string() }),
        execute: throttleTool(async ({ city }: { city: string }) => ({ city, degrees: 21 }), { limiter: weatherCalls }),
      });
      const r = await withUser('alice', () =>
        generateText({ model, tools: { weather }, stopWhen: isStepCount(3), prompt: 'Weather in Paris?' }),
      );
      // Step 1 calls the tool, step 2 answers with its result.
      expect(r.steps).toHaveLength(2);
      expect(r.text).toBe('Done: {"city":"Paris","degrees":21}');
      expect(fake.requests).toHaveLength(2);
      expect(await left(requests, 'alice')).toBe(10 - 2);
      expect(await left(llmTokens, 'alice')).toBe(10_000 - 2 * 42);
      expect(await left(weatherCalls, 'alice')).toBe(5 - 1);
      expect(await left(weatherCalls, 'bob')).toBe(5);
    });

    test('a throttled AI SDK tool keeps its types, and waits for the current user', async () => {
      const limiter = new RateLimiter({ backend: frozen(), name: 'tool:search', policy: { rate: 1, per: '1h' } });
      const search = tool({
        description: 'Search the web',
        inputSchema: z.object({ query: z.string(), limit: z.number().optional() }),
        execute: throttleTool(
          async ({ query }: { query: string; limit?: number | undefined }) => [`result for ${query}`],
          {
            limiter,
            maxWaitMs: 0,
          },
        ),
      });
      expectTypeOf(search.execute).toBeFunction();
      expectTypeOf(search.execute).parameter(0).toEqualTypeOf<{ query: string; limit?: number | undefined }>();
      expectTypeOf(search.execute).returns.resolves.toEqualTypeOf<string[]>();
      // A throttled execute whose input does not match the schema does not compile.
      const wantsNumber = throttleTool(async ({ query }: { query: number }) => query + 1, { limiter });
      // @ts-expect-error: the schema gives a string query; the throttled function wants a number
      tool({ description: 'Search the web', inputSchema: z.object({ query: z.string() }), execute: wantsNumber });
      const execute = search.execute as NonNullable<typeof search.execute>;
      const options = { toolCallId: 'call_1', messages: [], context: {} };
      expect(await withUser('alice', () => execute({ query: 'tollgate' }, options))).toEqual(['result for tollgate']);
      // alice's one token is spent; bob has his own.
      await expect(withUser('alice', () => execute({ query: 'again' }, options))).rejects.toBeInstanceOf(
        MaxWaitExceededError,
      );
      expect(await withUser('bob', () => execute({ query: 'bob' }, options))).toEqual(['result for bob']);
    });

    test('perUser holds one slot per call; a full queue rejects at once; a failed call refunds its LLM tokens', async () => {
      const slow = await startFakeOpenAI({ usage: USAGE, latencyMs: 50 });
      try {
        const backend = frozen();
        const requests = new RateLimiter({ backend, name: 'requests', policy: { rate: 100, per: '1h' } });
        const llmTokens = new RateLimiter({ backend, name: 'llm-tokens', policy: { rate: 10_000, per: '1h' } });
        const provider = createOpenAI({ baseURL: slow.baseURL, apiKey: 'test' });
        const model = wrapLanguageModel({
          model: provider.chat('gpt-4o-mini'),
          middleware: tollgateMiddleware({ requests, llmTokens, perUser: { concurrency: 1, maxQueued: 2 } }),
        });
        const ask = () => generateText({ model, prompt: 'Hi', maxRetries: 0 });
        const results = await withUser('alice', () => Promise.allSettled([ask(), ask(), ask(), ask()]));
        expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled', 'rejected']);
        expect((results[3] as PromiseRejectedResult).reason).toBeInstanceOf(QueueFullError);
        expect(slow.maxInFlight()).toBe(1);
        expect(slow.requests).toHaveLength(3);
        expect(await left(requests, 'alice')).toBe(100 - 3);

        // The server fails the call: its request token stays (the provider saw it), its LLM tokens go back.
        slow.failNext(1, 500);
        await expect(withUser('dave', () => ask())).rejects.toThrow();
        expect(await left(requests, 'dave')).toBe(99);
        expect(await left(llmTokens, 'dave')).toBe(10_000);
      } finally {
        await slow.close();
      }
    });

    test('a call over maxWaitMs fails at once, takes nothing and never reaches the server', async () => {
      const backend = frozen();
      const requests = new RateLimiter({ backend, name: 'requests', policy: { rate: 1, per: '1h' } });
      const llmTokens = new RateLimiter({ backend, name: 'llm-tokens', policy: { rate: 10_000, per: '1h' } });
      const model = modelWith({ requests, llmTokens, maxWaitMs: 1000 });
      await withUser('alice', () => generateText({ model, prompt: 'Hi' }));
      await expect(
        withUser('alice', () => generateText({ model, prompt: 'Hi', maxRetries: 0 })),
      ).rejects.toBeInstanceOf(MaxWaitExceededError);
      expect(fake.requests).toHaveLength(1);
      expect(await left(llmTokens, 'alice')).toBe(10_000 - 42);
    });

    test("shared pools (pool = the model id) are drawn on after the user's own buckets, settled, and steered by a 429's headers", async () => {
      const backend = frozen();
      const requests = new RateLimiter({ backend, name: 'requests', policy: { rate: 100, per: '1h' } });
      // Refills too slow to matter here: what is left is what the calls took.
      const sharedRequests = new Seen({
        backend: new MemoryBackend(),
        name: 'org-requests',
        policy: { rate: 1000, per: '1000d' },
      });
      const sharedLLM = new Seen({
        backend: new MemoryBackend(),
        name: 'org-llm',
        policy: { rate: 100_000, per: '1000d' },
      });
      const options = {
        requests,
        shared: { requests: sharedRequests, llmTokens: sharedLLM },
        shareKey: (user: string) => `tenant-of-${user}`,
        estimateLLMTokens: () => 500,
      };
      const mini = modelWith(options, 'gpt-4o-mini');
      await withUser('alice', () => generateText({ model: mini, prompt: 'Hi' }));
      await withUser('bob', () => generateText({ model: mini, prompt: 'Hi' }));
      expect(sharedRequests.keys).toEqual(['tenant-of-alice', 'tenant-of-bob']);
      expect(await poolLeft(sharedRequests, 'gpt-4o-mini')).toBe(1000 - 2);
      expect(await poolLeft(sharedLLM, 'gpt-4o-mini')).toBe(100_000 - 2 * 42); // 500 each, settled to 42
      expect(await poolLeft(sharedLLM, 'gpt-4o')).toBe(100_000);

      // A 429 with the provider's headers: the pools hear it; the AI SDK's retry waits for tokens again.
      fake.failNext(1, 429, {
        'retry-after-ms': '20',
        'x-ratelimit-limit-requests': '2000',
        'x-ratelimit-remaining-requests': '900',
      });
      const r = await withUser('carol', () => generateText({ model: mini, prompt: 'Hi', maxRetries: 1 }));
      expect(r.text).toBe('Hello from the fake OpenAI server.');
      expect(fake.requests.map((q) => q.status)).toEqual([200, 200, 429, 200]);
      expect(sharedRequests.observed).toContainEqual([
        'gpt-4o-mini',
        expect.objectContaining({ limit: 2000, remaining: 900, retryAfterMs: 20 }),
      ]);
      expect(sharedLLM.observed).toContainEqual(['gpt-4o-mini', { retryAfterMs: 20 }]);
      expect(await left(requests, 'carol')).toBe(100 - 2); // both attempts reached the provider
      expect(await poolLeft(sharedRequests, 'gpt-4o-mini')).toBe(900 - 1); // emptied to what the provider said, then the retry
      expect(await poolLeft(sharedLLM, 'gpt-4o-mini')).toBe(100_000 - 3 * 42); // the 429'd estimate went back
    });

    test('a caller that aborts while waiting gets an AbortError, and what its call took goes back', async () => {
      const requests = new RateLimiter({
        backend: new MemoryBackend(),
        name: 'requests',
        policy: { rate: 1, per: '1h' },
      });
      const llmTokens = new RateLimiter({ backend: frozen(), name: 'llm-tokens', policy: { rate: 10_000, per: '1h' } });
      const model = modelWith({ requests, llmTokens, perUser: { concurrency: 1 } });
      await withUser('alice', () => generateText({ model, prompt: 'Hi' }));
      const abort = new AbortController();
      setTimeout(() => abort.abort(), 50);
      const waiting = withUser('alice', () =>
        generateText({ model, prompt: 'Hi', abortSignal: abort.signal, maxRetries: 0 }),
      );
      await expect(waiting).rejects.toMatchObject({ name: 'AbortError' });
      expect(fake.requests).toHaveLength(1);
      expect(await left(llmTokens, 'alice')).toBe(10_000 - 42); // the second call's estimate went back
      expect(requests.queued('alice')).toBe(0);
    });

    test('bad options fail at once with a typed error naming the option', () => {
      expect(() => tollgateMiddleware({ requestz: 1 } as never)).toThrow(InvalidOptionsError);
      expect(() => tollgateMiddleware({ requestz: 1 } as never)).toThrow(/unknown option\(s\) requestz/);
      expect(() => tollgateMiddleware({ maxWaitMs: -1 })).toThrow(
        /maxWaitMs must be a number of ms >= 0 \(received -1\)/,
      );
      expect(() =>
        tollgateMiddleware({
          shared: { requests: new RateLimiter({ backend: frozen(), policy: { rate: 1 } }) },
        } as never),
      ).toThrow(/shared.requests must be a SharedLimiter/);
    });
  },
);

/** Seen is a SharedLimiter that records the keys drawn on and what the provider said. */
class Seen extends SharedLimiter {
  readonly keys: string[] = [];
  readonly observed: [string, PoolObservation][] = [];
  override acquire(key: string, options?: SharedAcquireOptions): Promise<SharedGrant> {
    this.keys.push(key);
    return super.acquire(key, options);
  }
  override observe(pool: string, said: PoolObservation): Promise<void> {
    this.observed.push([pool, said]);
    return super.observe(pool, said);
  }
}

/** poolLeft reads the whole tokens in `pool` without changing it (on a refill too slow to matter). */
async function poolLeft(limiter: SharedLimiter, pool: string): Promise<number> {
  const d = await limiter.tryAcquire('probe', { pool });
  if (!d.allowed) return d.remaining;
  await limiter.refund('probe', 1, { pool });
  return d.remaining + 1;
}
