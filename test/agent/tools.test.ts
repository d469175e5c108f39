/**
 * Agent tools: throttleTool, defineTool and runToolCalls. The model's arguments are validated
 * before anything waits or runs; failures become tool messages for the model.
 */
import {
  InvalidToolArgumentsError,
  defineTool,
  runToolCalls,
  throttleOpenAI,
  throttleTool,
  withUser,
} from '@tollgate/agent';
import { MemoryBackend, RateLimiter, isAbortedError, isInvalidOptionsError } from '@tollgate/core';
import { describe, expect, test } from 'vitest';
import { z } from 'zod';
import { startFakeOpenAI } from '../../examples/support/fake-openai.ts';
import { OPENAI_MAJOR, newClient } from './openai-client.ts';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const limiter = (rate: number, capacity: number, per: '1s' | '1h' = '1s') =>
  new RateLimiter({ backend: new MemoryBackend(), name: 'tools', policy: { rate, per, capacity } });
const call = (id: string, name: string, args: string) => ({
  id,
  type: 'function' as const,
  function: { name, arguments: args },
});

describe('throttleTool', () => {
  test("keeps the function's arguments, this and result, keyed on the current user", async () => {
    const l = limiter(1, 5, '1h');
    const add = throttleTool(async (a: number, b: number) => a + b, { limiter: l });
    const sum: number = await withUser('tool-user', () => add(2, 3));
    expect(sum).toBe(5);
    expect((await l.tryAcquire('tool-user')).remaining).toBe(3); // 5 - 1 call - this probe
    const obj = {
      base: 10,
      plus: throttleTool(
        function (this: { base: number }, n: number) {
          return this.base + n;
        },
        { limiter: l },
      ),
    };
    expect(await withUser('tool-user', () => obj.plus(1))).toBe(11);
  });

  test("one user's burst waits its turn while another user's call runs at once", async () => {
    // 10 per second, burst 1: user A's 4 calls take 300 ms.
    const l = limiter(10, 1);
    const ran: { user: string; at: number }[] = [];
    const t0 = performance.now();
    const tool = throttleTool((user: string) => ran.push({ user, at: performance.now() - t0 }), {
      limiter: l,
      key: (user) => user,
      cost: 1,
    });
    const a = Promise.all(Array.from({ length: 4 }, () => tool('a')));
    await sleep(20);
    await tool('b');
    await a;
    const aTimes = ran.filter((r) => r.user === 'a').map((r) => r.at);
    const bTime = ran.find((r) => r.user === 'b')?.at ?? Number.NaN;
    // A's 4th call cannot run before 3 refills (300 ms); B does not queue behind A: it runs
    // before A's 2nd call, due at 100 ms (an order, not a duration, so a busy machine cannot fail it).
    expect(aTimes[3]).toBeGreaterThanOrEqual(290);
    expect(aTimes[3]).toBeLessThan(1500);
    expect(bTime).toBeLessThan(aTimes[1] ?? Number.NaN);
  });

  test('a call whose signal aborts while it waits rejects with AbortedError, gives its token back, and never runs', async () => {
    const l = limiter(1, 1, '1h');
    let runs = 0;
    const lookUp = throttleTool(
      async (city: string, _options?: { signal?: AbortSignal }) => {
        runs++;
        return city;
      },
      { limiter: l, signal: (_city, options) => options?.signal },
    );
    expect(await withUser('waiter', () => lookUp('Paris', {}))).toBe('Paris'); // the hour's only token
    const stop = new AbortController();
    const waiting = withUser('waiter', () => lookUp('Oslo', { signal: stop.signal }));
    await sleep(20);
    stop.abort();
    await expect(waiting).rejects.toSatisfy(isAbortedError);
    expect(runs).toBe(1);
    // The aborted call's reservation went back: the next token is an hour away, not two.
    const next = await l.tryAcquire('waiter');
    expect(next.allowed).toBe(false);
    expect(next.retryAfterMs).toBeLessThanOrEqual(3_600_000);
    expect(next.retryAfterMs).toBeGreaterThan(3_500_000);
    expect(() => throttleTool(async () => 1, { limiter: l, signal: 'no' as never })).toThrow(
      /throttleTool options: signal must be a function/,
    );
  });
});

describe('defineTool', () => {
  const weatherSchema = z.object({
    city: z.string().describe('the city'),
    unit: z.enum(['c', 'f']).default('c'),
  });

  test('.definition is an OpenAI function tool with JSON Schema from zod', () => {
    const weather = defineTool({
      name: 'get_weather',
      description: 'Current weather in a city',
      parameters: weatherSchema,
      execute: ({ city, unit }) => ({ city, unit, temp: 21 }),
    });
    expect(weather.definition).toEqual({
      type: 'function',
      function: {
        name: 'get_weather',
        description: 'Current weather in a city',
        parameters: {
          type: 'object',
          properties: {
            city: { type: 'string', description: 'the city' },
            unit: { type: 'string', enum: ['c', 'f'], default: 'c' },
          },
          required: ['city'],
        },
      },
    });
  });

  test('bad options fail at once with InvalidOptionsError, naming the option, the constraint and the value', () => {
    const fails = (make: () => unknown, message: RegExp) => {
      let err: unknown;
      try {
        make();
      } catch (e) {
        err = e;
      }
      expect(isInvalidOptionsError(err)).toBe(true);
      expect((err as Error).message).toMatch(message);
    };
    const tool = { name: 'ok', description: '', parameters: weatherSchema, execute: () => 1 };
    fails(
      () => defineTool({ ...tool, name: 'has space' }),
      /defineTool options: name must be 1-64 letters, digits, _ or - \(received "has space"\)/,
    );
    fails(
      () => defineTool({ ...tool, parameters: {} as never }),
      /parameters must be a zod schema \(zod 3.25\+ or 4\) \(received object\)/,
    );
    fails(() => defineTool({ ...tool, cost: 0 }), /cost must be a finite number > 0 or a function \(received 0\)/);
    fails(() => defineTool({ ...tool, limitter: limiter(1, 1) } as never), /unknown option\(s\) limitter/);
    fails(
      () => throttleTool(() => 1, { limiter: 5 } as never),
      /throttleTool options: limiter must be a RateLimiter \(received 5\)/,
    );
    fails(
      () => throttleTool(() => 1, { limiter: limiter(1, 1), maxWaitMs: -1 }),
      /maxWaitMs must be a number of ms >= 0 \(received -1\)/,
    );
    fails(() => throttleTool('f' as never, { limiter: limiter(1, 1) }), /fn must be a function \(received "f"\)/);
  });

  test('invalid arguments reject before the tool waits or runs', async () => {
    const l = limiter(1, 3, '1h');
    let runs = 0;
    const weather = defineTool({
      name: 'get_weather',
      description: 'weather',
      parameters: weatherSchema,
      execute: () => ++runs,
      limiter: l,
    });
    const err = await weather.call('{"city": 42}').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidToolArgumentsError);
    expect((err as InvalidToolArgumentsError).issues[0]?.path).toBe('city');
    expect((err as InvalidToolArgumentsError).reason).toBe('invalid_arguments');
    const malformed = await weather.call('{not json').catch((e: unknown) => e);
    expect((malformed as InvalidToolArgumentsError).reason).toBe('invalid_json');
    expect((malformed as Error).message).toMatch(/malformed JSON arguments/);
    expect(runs).toBe(0);
    expect((await l.tryAcquire('anonymous')).remaining).toBe(2); // nothing taken
    expect(await weather.call('{"city":"Oslo"}')).toBe(1);
  });
});

describe('runToolCalls', () => {
  test('returns one tool message per call, in order; failures become messages and the tool does not run', async () => {
    const runs: string[] = [];
    const weather = defineTool({
      name: 'get_weather',
      description: 'weather',
      parameters: z.object({ city: z.string() }),
      execute: ({ city }) => {
        runs.push(city);
        return { city, temp: 21 };
      },
    });
    const broken = defineTool({
      name: 'broken',
      description: 'always fails',
      parameters: z.object({}),
      execute: () => {
        throw new Error('disk on fire');
      },
    });
    const messages = await runToolCalls(
      [
        call('c1', 'get_weather', '{"city":"Oslo"}'),
        call('c2', 'get_weather', '{"city":'),
        call('c3', 'get_weather', '{"town":"Oslo"}'),
        call('c4', 'nope', '{}'),
        call('c5', 'broken', '{}'),
        call('c6', 'get_weather', '{"city":"Rome"}'),
      ],
      [weather, broken],
    );
    expect(messages.map((m) => m.tool_call_id)).toEqual(['c1', 'c2', 'c3', 'c4', 'c5', 'c6']);
    expect(messages.every((m) => m.role === 'tool')).toBe(true);
    expect(JSON.parse(messages[0]?.content ?? '')).toEqual({ city: 'Oslo', temp: 21 });
    const errorOf = (i: number) => JSON.parse(messages[i]?.content ?? '').error;
    expect([errorOf(1), errorOf(2), errorOf(3), errorOf(4)]).toEqual([
      'invalid_json',
      'invalid_arguments',
      'unknown_tool',
      'tool_error',
    ]);
    expect(JSON.parse(messages[4]?.content ?? '').message).toBe('disk on fire');
    expect(runs).toEqual(['Oslo', 'Rome']);
    expect(await runToolCalls(undefined, [weather])).toEqual([]);
  });

  test('independent calls run concurrently, each within its own limit', async () => {
    // `slow` takes 100 ms and is unlimited; `limited` allows 1 call then 1 per 100 ms.
    const started: { name: string; at: number }[] = [];
    const t0 = performance.now();
    const slow = defineTool({
      name: 'slow',
      description: 'takes 100 ms',
      parameters: z.object({ n: z.number() }),
      execute: async ({ n }) => {
        started.push({ name: 'slow', at: performance.now() - t0 });
        await sleep(100);
        return n;
      },
    });
    const limited = defineTool({
      name: 'limited',
      description: '10 per second',
      parameters: z.object({ n: z.number() }),
      execute: ({ n }) => {
        started.push({ name: 'limited', at: performance.now() - t0 });
        return n;
      },
      limiter: limiter(10, 1),
    });
    const messages = await withUser('runner', () =>
      runToolCalls(
        [
          call('s1', 'slow', '{"n":1}'),
          call('s2', 'slow', '{"n":2}'),
          call('s3', 'slow', '{"n":3}'),
          call('l1', 'limited', '{"n":4}'),
          call('l2', 'limited', '{"n":5}'),
          call('l3', 'limited', '{"n":6}'),
        ],
        [slow, limited],
      ),
    );
    const took = performance.now() - t0;
    expect(messages.map((m) => m.content)).toEqual(['1', '2', '3', '4', '5', '6']);
    // The three slow calls overlap: 100 ms in all, not 300.
    const slowStarts = started.filter((s) => s.name === 'slow').map((s) => s.at);
    expect(Math.max(...slowStarts)).toBeLessThan(50);
    // The limited calls are spaced by the bucket: the k-th starts >= k * 100 ms in, never earlier.
    const limitedStarts = started.filter((s) => s.name === 'limited').map((s) => s.at);
    for (const [k, at] of limitedStarts.entries()) expect(at).toBeGreaterThanOrEqual(k * 100 - 10);
    expect(took).toBeGreaterThanOrEqual(195);
    expect(took).toBeLessThan(600);
  });

  test(`a tool-call loop with a throttled client and tools (openai ${OPENAI_MAJOR})`, async () => {
    const fake = await startFakeOpenAI();
    try {
      const client = throttleOpenAI(newClient(fake.baseURL), {
        requests: new RateLimiter({ backend: new MemoryBackend(), name: 'requests', policy: { rate: 10, per: '1s' } }),
      });
      let runs = 0;
      const weather = defineTool({
        name: 'get_weather',
        description: 'weather',
        parameters: z.object({ city: z.string() }),
        execute: ({ city }) => {
          runs++;
          return `sunny in ${city}`;
        },
      });
      const answer = await withUser('loop-user', async () => {
        const messages: Parameters<typeof client.chat.completions.create>[0]['messages'] = [
          { role: 'user', content: 'weather?' },
        ];
        for (;;) {
          const r = await client.chat.completions.create({ model: 'm', messages, tools: [weather.definition] });
          const message = r.choices[0]?.message;
          if (message === undefined) throw new Error('no choice');
          messages.push(message);
          if (!message.tool_calls?.length) return message.content;
          messages.push(...(await runToolCalls(message.tool_calls, [weather])));
        }
      });
      expect(answer).toBe('Done: sunny in Paris');
      expect(runs).toBe(1);
      expect(fake.requests).toHaveLength(2);
      // `.runnable` plugs the same tool into the SDK's runTools helper.
      const final = await withUser('loop-user', () =>
        client.chat.completions
          .runTools({ model: 'm', messages: [{ role: 'user', content: 'weather?' }], tools: [weather.runnable] })
          .finalContent(),
      );
      expect(final).toBe('Done: sunny in Paris');
      expect(runs).toBe(2);
    } finally {
      await fake.close();
    }
  });
});
