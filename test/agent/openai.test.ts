/**
 * throttleOpenAI with a real openai client (6, or 7 with TOLLGATE_OPENAI=7) talking HTTP to the
 * loopback fake server. Nothing here mocks the client.
 *
 * Timing bounds are loose on the slow side (a noisy 2-core CI machine) and tight on the fast side
 * (a throttle that lets calls through early is a bug).
 */
import {
  type AdmitEvent,
  ANONYMOUS_USER,
  QueueFullError,
  isQueueFullError,
  perUserStats,
  throttleOpenAI,
  withUser,
} from '@tollgate/agent';
import { MemoryBackend, RateLimiter, isMaxWaitExceededError, isTollgateError } from '@tollgate/core';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { type FakeOpenAI, type RecordedRequest, startFakeOpenAI } from '../../examples/support/fake-openai.ts';
import { OPENAI_MAJOR, OpenAI, newClient } from './openai-client.ts';

let fake: FakeOpenAI;
beforeAll(async () => {
  fake = await startFakeOpenAI({ usage: { prompt_tokens: 20, completion_tokens: 30 } });
});
afterAll(() => fake.close());
afterEach(() => {
  fake.requests.length = 0;
});

const limiter = (rate: number, per: string, capacity?: number, name = 'requests') =>
  new RateLimiter({
    backend: new MemoryBackend(),
    name,
    policy: capacity === undefined ? { rate, per: per as '1s' } : { rate, per: per as '1s', capacity },
  });

const ask = (content: string) => ({ model: 'gpt-test', messages: [{ role: 'user' as const, content }] });

/** The text of the first message of a recorded chat request. */
const tagOf = (r: RecordedRequest): string => r.body?.messages?.[0]?.content ?? '';

describe(`throttleOpenAI (openai ${OPENAI_MAJOR})`, () => {
  test("one user's burst waits its turn at the bucket's rate, while another user's call is not delayed", async () => {
    // 10 requests/s, burst 2: user A's 8 calls take (8 - 2) / 10 s = 600 ms.
    const client = throttleOpenAI(newClient(fake.baseURL), { requests: limiter(10, '1s', 2) });
    const t0 = performance.now();
    const burst = withUser('user-a', () =>
      Promise.all(Array.from({ length: 8 }, (_, i) => client.chat.completions.create(ask(`a-${i}`)))),
    );
    await new Promise((r) => setTimeout(r, 100));
    // B's call goes out alongside a call of an unthrottled client, the yardstick of "not delayed"
    // (both suffer the same scheduling delays on a busy machine).
    const control = newClient(fake.baseURL);
    const [b] = await Promise.all([
      withUser('user-b', () => client.chat.completions.create(ask('b-0'))),
      control.chat.completions.create(ask('control')),
    ]);
    await burst;
    const total = performance.now() - t0;

    expect(b.choices[0]?.message.content).toBe('Hello from the fake OpenAI server.');
    const a = fake.requests.filter((r) => tagOf(r).startsWith('a-'));
    const bReq = fake.requests.find((r) => tagOf(r) === 'b-0') as RecordedRequest;
    const controlReq = fake.requests.find((r) => tagOf(r) === 'control') as RecordedRequest;
    expect(a).toHaveLength(8);
    // A: 600 ms in all (never less than the bucket allows: 590 ms with timer slack).
    expect(total).toBeGreaterThanOrEqual(590);
    expect(total).toBeLessThan(1100);
    // Never early: after the burst of 2, A's k-th request arrives >= (k - 1) * 100 ms in (a late
    // delivery on a busy machine may shorten one gap, never move a request before its time).
    a.forEach((r, k) => {
      if (k >= 2) expect(r.time - t0).toBeGreaterThanOrEqual((k - 1) * 100 - 10);
    });
    // B, sent while A has 5 calls queued, reaches the server within 50 ms of the unthrottled call.
    expect(bReq.time - controlReq.time).toBeLessThan(50);
  });

  test('every SDK retry after a 429 waits for its own token', async () => {
    // 5/s, burst 1: each attempt waits 200 ms. The server asks for a 1 ms back-off (not 0, which
    // openai 5 ignores in favour of its default 0.5 s, 1 s back-off).
    const admitted: AdmitEvent[] = [];
    const client = throttleOpenAI(newClient(fake.baseURL, { maxRetries: 3 }), {
      requests: limiter(5, '1s', 1),
      onAdmit: (e) => admitted.push(e),
    });
    fake.failNext(2, 429, { 'retry-after-ms': '1' });
    const t0 = performance.now();
    const r = await withUser('retry-user', () => client.chat.completions.create(ask('retried')));
    const took = performance.now() - t0;
    expect(r.choices[0]?.message.content).toBe('Hello from the fake OpenAI server.');
    expect(fake.requests.map((q) => q.status)).toEqual([429, 429, 200]);
    // Attempt k (from 0) is admitted at k * 200 ms, never earlier.
    for (const [k, q] of fake.requests.entries()) expect(q.time - t0).toBeGreaterThanOrEqual(k * 200 - 10);
    expect(admitted.map((e) => [e.user, e.path, e.retry])).toEqual([
      ['retry-user', '/chat/completions', false],
      ['retry-user', '/chat/completions', true],
      ['retry-user', '/chat/completions', true],
    ]);
    // Each retry waited for its token (how long depends on how fast the 429 came back).
    expect(admitted[1]?.waitedMs).toBeGreaterThan(0);
    expect(admitted[2]?.waitedMs).toBeGreaterThan(0);
    expect(took).toBeGreaterThanOrEqual(390);
    expect(took).toBeLessThan(900);
  });

  test('a 429 attempt keeps its request token (the provider counted it)', async () => {
    // Capacity 5, no refill to speak of: one call answered 429, 429, 200 takes 3 tokens.
    const requests = limiter(1, '1h', 5);
    const client = throttleOpenAI(newClient(fake.baseURL), { requests });
    fake.failNext(2, 429, { 'retry-after-ms': '1' });
    await withUser('u429', () => client.chat.completions.create(ask('x')));
    expect(fake.requests).toHaveLength(3);
    const d = await requests.tryAcquire('u429');
    expect(d.allowed).toBe(true);
    expect(d.remaining).toBe(1); // 5 - 3 attempts - this probe
  });

  test("runTools' requests are each throttled", async () => {
    const client = throttleOpenAI(newClient(fake.baseURL), { requests: limiter(5, '1s', 1) });
    let toolRuns = 0;
    const t0 = performance.now();
    const runner = withUser('tools-user', () =>
      client.chat.completions.runTools({
        ...ask('weather in Paris?'),
        tools: [
          {
            type: 'function',
            function: {
              name: 'weather',
              description: 'the weather in a city',
              parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
              function: (args: { city: string }) => {
                toolRuns++;
                return `sunny in ${args.city}`;
              },
              parse: JSON.parse,
            },
          },
        ],
      }),
    );
    expect(await runner.finalContent()).toBe('Done: sunny in Paris');
    expect(toolRuns).toBe(1);
    expect(fake.requests).toHaveLength(2);
    // The second request (with the tool result) waited for its token: admitted at 200 ms.
    expect((fake.requests[1]?.time ?? 0) - t0).toBeGreaterThanOrEqual(190);
  });

  test("the .parse() helper's request is throttled", async () => {
    const json = await startFakeOpenAI({ chat: () => ({ content: '{"city":"Oslo"}' }) });
    try {
      const requests = limiter(1, '1h', 3);
      const client = throttleOpenAI(newClient(json.baseURL), { requests });
      const r = await withUser('parser', () =>
        client.chat.completions.parse({
          ...ask('city?'),
          response_format: {
            type: 'json_schema',
            json_schema: { name: 'city', schema: { type: 'object', properties: { city: { type: 'string' } } } },
          },
        }),
      );
      expect(r.choices[0]?.message.parsed).toEqual({ city: 'Oslo' });
      expect(json.requests).toHaveLength(1);
      expect((await requests.tryAcquire('parser')).remaining).toBe(1); // 3 - 1 call - this probe
    } finally {
      await json.close();
    }
  });

  test('.withResponse(), .asResponse() and withOptions keep working, and stay throttled', async () => {
    const requests = limiter(1, '1h', 10);
    const client = throttleOpenAI(newClient(fake.baseURL), { requests });
    expect(client).toBeInstanceOf(OpenAI);
    await withUser('wr', async () => {
      const { data, response } = await client.chat.completions.create(ask('x')).withResponse();
      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toContain('application/json');
      expect(data.usage?.total_tokens).toBe(50);
      const raw = await client.chat.completions.create(ask('y')).asResponse();
      expect(((await raw.json()) as { usage: { total_tokens: number } }).usage.total_tokens).toBe(50);
      const copy = client.withOptions({ maxRetries: 0 });
      expect(copy).toBeInstanceOf(OpenAI);
      expect(copy.maxRetries).toBe(0);
      await copy.chat.completions.create(ask('z'));
      // A copy of the copy shares the same limiter too.
      await copy.withOptions({ timeout: 5000 }).embeddings.create({ model: 'e', input: 'abc' });
    });
    expect(fake.requests).toHaveLength(4);
    expect((await requests.tryAcquire('wr')).remaining).toBe(5); // 10 - 4 calls - this probe
  });

  test('throttleOpenAI throttles the client it is given, once', async () => {
    const requests = limiter(1, '1h', 3);
    const client = newClient(fake.baseURL);
    expect(throttleOpenAI(client, { requests })).toBe(client);
    await withUser('same', () => client.chat.completions.create(ask('x')));
    expect((await requests.tryAcquire('same')).remaining).toBe(1); // 3 - the call - this probe
    // A second set of limits on the same client would silently stack: it is refused.
    expect(() => throttleOpenAI(client, { requests: limiter(1, '1h') })).toThrow(/client is throttled already/);
  });

  test('the user is withUser, then the resolver, then body.user / safety_identifier, else anonymous', async () => {
    const requests = limiter(1, '1h', 10);
    const client = throttleOpenAI(newClient(fake.baseURL), {
      requests,
      user: (body) => (body as { metadata?: { tenant?: string } }).metadata?.tenant ?? undefined,
    });
    await withUser('ctx', () =>
      client.chat.completions.create({ ...ask('1'), user: 'body-user', metadata: { tenant: 't' } }),
    );
    await client.chat.completions.create({ ...ask('2'), user: 'body-user', metadata: { tenant: 'resolved' } });
    await client.chat.completions.create({ ...ask('3'), user: 'body-user' });
    await client.chat.completions.create({ ...ask('4'), safety_identifier: 'safety' });
    await client.chat.completions.create(ask('5'));
    const used = async (k: string) => 10 - 1 - (await requests.tryAcquire(k)).remaining;
    expect(await used('ctx')).toBe(1);
    expect(await used('resolved')).toBe(1);
    expect(await used('t')).toBe(0);
    expect(await used('body-user')).toBe(1);
    expect(await used('safety')).toBe(1);
    expect(await used(ANONYMOUS_USER)).toBe(1);
  });

  test('a call over maxWaitMs fails at once with MaxWaitExceededError, sends nothing and is not retried', async () => {
    const requests = limiter(1, '1m', 1);
    const client = throttleOpenAI(newClient(fake.baseURL, { maxRetries: 3 }), { requests, maxWaitMs: 100 });
    await withUser('deadline', async () => {
      await client.chat.completions.create(ask('first'));
      const t0 = performance.now();
      const err = await client.chat.completions.create(ask('second')).catch((e: unknown) => e);
      expect(isMaxWaitExceededError(err)).toBe(true);
      expect(performance.now() - t0).toBeLessThan(50);
    });
    expect(fake.requests).toHaveLength(1);
  });

  test("an aborted wait gives its token back, sends nothing, and rejects with the client's abort error", async () => {
    const requests = limiter(1, '1s', 1);
    const client = throttleOpenAI(newClient(fake.baseURL), { requests });
    await withUser('aborter', async () => {
      await client.chat.completions.create(ask('first'));
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 100);
      const t0 = performance.now();
      const err = await client.chat.completions.create(ask('second'), { signal: ac.signal }).catch((e: unknown) => e);
      expect(performance.now() - t0).toBeLessThan(400);
      expect((err as Error).constructor.name).toBe('APIUserAbortError');
    });
    expect(fake.requests).toHaveLength(1);
  });

  test("tiers: a policy function gives each tenant its plan's rate", async () => {
    const plans = {
      free: { rate: 5, per: '1s', capacity: 1 },
      pro: { rate: 50, per: '1s', capacity: 10 },
    } as const;
    const requests = new RateLimiter({
      backend: new MemoryBackend(),
      name: 'requests',
      policy: (user) => (user.startsWith('pro-') ? plans.pro : plans.free),
    });
    const client = throttleOpenAI(newClient(fake.baseURL), { requests });
    const t0 = performance.now();
    const burst = (user: string) =>
      withUser(user, () =>
        Promise.all(Array.from({ length: 5 }, (_, i) => client.chat.completions.create(ask(`${user}-${i}`)))),
      );
    await Promise.all([burst('free-1'), burst('pro-1')]);
    const times = (prefix: string) => fake.requests.filter((r) => tagOf(r).startsWith(prefix)).map((r) => r.time - t0);
    const free = times('free-1');
    const pro = times('pro-1');
    // Free: 1 now, then 1 per 200 ms, so the 5th is admitted at 800 ms. Pro: a burst of 10 covers all 5,
    // so they all arrive before free's second request (admitted at 200 ms).
    expect(free[4]).toBeGreaterThanOrEqual(790);
    expect(Math.max(...pro)).toBeLessThan(free[1] ?? 0);
  });

  describe('per-user queue', () => {
    test('a full queue rejects the new call at once with QueueFullError; queued calls still complete', async () => {
      const slow = await startFakeOpenAI({ latencyMs: 200 });
      try {
        const client = throttleOpenAI(newClient(slow.baseURL, { maxRetries: 3 }), {
          perUser: { concurrency: 1, maxQueued: 2 },
        });
        const results = await withUser('busy', async () => {
          const first = [0, 1, 2].map((i) => client.chat.completions.create(ask(`q-${i}`)));
          await new Promise((r) => setTimeout(r, 20));
          expect(perUserStats(client, 'busy')).toEqual({ queued: 2, inFlight: 1 });
          const t0 = performance.now();
          const err = await client.chat.completions.create(ask('q-3')).catch((e: unknown) => e);
          const rejectedIn = performance.now() - t0;
          return { first: await Promise.all(first), err, rejectedIn };
        });
        expect(results.err).toBeInstanceOf(QueueFullError);
        expect(isQueueFullError(results.err)).toBe(true);
        expect(isTollgateError(results.err)).toBe(true);
        expect((results.err as QueueFullError).code).toBe('ERR_TOLLGATE_QUEUE_FULL');
        expect(results.rejectedIn).toBeLessThan(20);
        expect(results.first).toHaveLength(3);
        // Three requests reached the server, one at a time; the rejected call was never sent or retried.
        expect(slow.requests.map(tagOf)).toEqual(['q-0', 'q-1', 'q-2']);
        expect(slow.maxInFlight()).toBe(1);
        expect(perUserStats(client, 'busy')).toEqual({ queued: 0, inFlight: 0 });
      } finally {
        await slow.close();
      }
    });

    test("concurrency bounds one user's calls in flight, not another user's", async () => {
      const slow = await startFakeOpenAI({ latencyMs: 150 });
      try {
        const client = throttleOpenAI(newClient(slow.baseURL), { perUser: { concurrency: 2 } });
        const t0 = performance.now();
        const a = withUser('c-a', () =>
          Promise.all(Array.from({ length: 4 }, (_, i) => client.chat.completions.create(ask(`ca-${i}`)))),
        );
        const b = withUser('c-b', () =>
          Promise.all(Array.from({ length: 2 }, (_, i) => client.chat.completions.create(ask(`cb-${i}`)))),
        );
        await Promise.all([a, b]);
        const tA = performance.now() - t0;
        // A: two rounds of 150 ms; B: one round, alongside A's first (B's calls reach the server
        // before A's third, which needs one of A's first two to finish).
        expect(tA).toBeGreaterThanOrEqual(295);
        const at = (tag: string) => slow.requests.find((r) => tagOf(r) === tag)?.time ?? Number.NaN;
        expect(Math.max(at('cb-0'), at('cb-1'))).toBeLessThan(Math.min(at('ca-2'), at('ca-3')));
        expect(Math.min(at('ca-2'), at('ca-3')) - Math.min(at('ca-0'), at('ca-1'))).toBeGreaterThanOrEqual(145);
        expect(slow.maxInFlight()).toBe(4);
      } finally {
        await slow.close();
      }
    });

    test('a stream holds its slot until it is read to the end', async () => {
      const slow = await startFakeOpenAI({ chunkDelayMs: 30 });
      try {
        const client = throttleOpenAI(newClient(slow.baseURL), { perUser: { concurrency: 1 } });
        await withUser('streamer', async () => {
          const stream = await client.chat.completions.create({ ...ask('s'), stream: true });
          const second = client.chat.completions.create(ask('after'));
          await new Promise((r) => setTimeout(r, 50));
          expect(slow.requests).toHaveLength(1);
          for await (const _ of stream) {
            // read it all
          }
          await second;
          expect(slow.requests).toHaveLength(2);
        });
      } finally {
        await slow.close();
      }
    });

    test('a request that fails before it is sent (a body that cannot be serialized) gives back its slot and tokens', async () => {
      const requests = limiter(1, '1h', 5);
      const llmTokens = limiter(1, '1h', 10_000, 'llm-tokens');
      const client = throttleOpenAI(newClient(fake.baseURL), { requests, llmTokens, perUser: { concurrency: 1 } });
      await withUser('bigint', async () => {
        for (let i = 0; i < 3; i++) {
          // JSON.stringify throws on a BigInt while the client builds the request, after admission.
          const bad = { ...ask('x'), metadata: { n: 1n } } as unknown as ReturnType<typeof ask>;
          await expect(client.chat.completions.create(bad)).rejects.toThrow(TypeError);
          expect(perUserStats(client, 'bigint')).toEqual({ queued: 0, inFlight: 0 });
        }
        // Nothing was sent: all 5 request tokens and all LLM tokens are still there.
        expect(fake.requests).toHaveLength(0);
        expect((await requests.tryAcquire('bigint', { cost: 5 })).allowed).toBe(true);
        expect((await llmTokens.tryAcquire('bigint', { cost: 10_000 })).allowed).toBe(true);
      });
    });

    test('a stream left early gives its slot back at once', async () => {
      const slow = await startFakeOpenAI({ chunkDelayMs: 40 });
      try {
        const client = throttleOpenAI(newClient(slow.baseURL), { perUser: { concurrency: 1 } });
        await withUser('leaver', async () => {
          const stream = await client.chat.completions.create({ ...ask('s'), stream: true });
          for await (const chunk of stream) {
            expect(chunk.choices[0]).toBeDefined();
            break; // the client aborts the rest of the stream
          }
          const tLeft = performance.now();
          await client.chat.completions.create(ask('next'));
          // The stream has ~8 more chunks (320 ms); the next call does not wait for them.
          expect((slow.requests[1]?.time ?? 0) - tLeft).toBeLessThan(150);
          expect(perUserStats(client, 'leaver')).toEqual({ queued: 0, inFlight: 0 });
        });
      } finally {
        await slow.close();
      }
    });
  });
});
