/**
 * The OpenAI Agents SDK (`@openai/agents`) throttled per user, as a user writes it: the SDK's
 * model requests go through a `throttleOpenAI` client (the SDK's default client, or an
 * `OpenAIProvider` built on it), and its `tool()`s run their `execute` through `throttleTool`.
 * The real SDK and the real openai 7 client talk HTTP to servers on loopback: the shared fake
 * for Chat Completions (tool calls), and a small Responses server below for the SDK's default API.
 *
 * The SDK needs Node >= 22 (it depends on openai 7): on older Node the suite is skipped.
 */
import { type IncomingMessage, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type * as AgentsSDK from '@openai/agents';
import { type AdmitEvent, currentUser, throttleOpenAI, throttleTool, withUser } from '@tollgate/agent';
import { type AcquireOptions, type Grant, MemoryBackend, RateLimiter } from '@tollgate/core';
import type OpenAI7 from 'openai7';
import { afterAll, beforeAll, describe, expect, onTestFinished, test } from 'vitest';
import { expectWithinBucket } from '../support/bounds.ts';
import { z } from 'zod';
import { type FakeOpenAI, startFakeOpenAI } from '../../examples/support/fake-openai.ts';

const NODE_MAJOR = Number(process.versions.node.split('.')[0]);
const SKIP = NODE_MAJOR < 22;
const TITLE = SKIP
  ? `OpenAI Agents SDK (skipped: @openai/agents depends on openai 7, which needs Node >= 22; this is Node ${process.versions.node})`
  : 'OpenAI Agents SDK';

const CITIES = ['Paris', 'Oslo', 'Lima', 'Cairo', 'Tokyo', 'Quito', 'Accra', 'Hanoi'];
const citiesIn = (text: unknown) => CITIES.filter((c) => String(text).includes(c));
const weatherArgs = z.object({ city: z.string() });

/** A tool call as the tool saw it: who `withUser` said, who the run context said, when. */
interface ToolRun {
  user: string | undefined;
  contextUser: string | undefined;
  at: number;
}

/** A RateLimiter that records the key of every acquire: which user each tool call was counted against. */
class KeyRecordingLimiter extends RateLimiter {
  readonly keys: string[] = [];
  override acquire(key: string, options?: AcquireOptions): Promise<Grant> {
    this.keys.push(key);
    return super.acquire(key, options);
  }
}

const countOf = (keys: readonly string[], key: string) => keys.filter((k) => k === key).length;

/** lastAfter is how long after `t0` the last of `times` came, in ms. */
const lastAfter = (times: readonly number[], t0: number) => Math.max(...times) - t0;

describe.skipIf(SKIP)(TITLE, () => {
  let sdk: typeof AgentsSDK;
  let OpenAI: typeof OpenAI7;
  let fake: FakeOpenAI;

  beforeAll(async () => {
    // Loaded here, not at the top, so that Node < 22 never evaluates openai 7.
    sdk = await import('@openai/agents');
    OpenAI = (await import('openai7')).default;
    sdk.setTracingDisabled(true); // no API key to export traces with
    fake = await startFakeOpenAI({
      // One get_weather call per city in the user's question; after the tool results, the
      // server's default answer "Done: <the results>".
      chat: (body) => {
        const last = body.messages?.[body.messages.length - 1];
        if (last?.role !== 'user' || !Array.isArray(body.tools)) return undefined;
        return { toolCalls: citiesIn(last.content).map((city) => ({ name: 'get_weather', arguments: { city } })) };
      },
    });
  });
  afterAll(async () => {
    await fake?.close();
  });

  test("two users' agent runs: model requests and tool calls are spaced per user, bob is not delayed by alice, the tool results reach the final output", async () => {
    const { Agent, run, setDefaultOpenAIClient, setOpenAIAPI, tool } = sdk;
    const backend = new MemoryBackend();
    // Per user: 5 model requests per second (bursts of 2), 10 tool calls per second (bursts of 3).
    const requests = new RateLimiter({ backend, name: 'requests', policy: { rate: 5, per: '1s', capacity: 2 } });
    const llmTokens = new RateLimiter({ backend, name: 'llm-tokens', policy: { rate: 100_000, per: '1m' } });
    const toolCalls = new KeyRecordingLimiter({ backend, name: 'tools', policy: { rate: 10, per: '1s', capacity: 3 } });
    const admits: (AdmitEvent & { at: number })[] = [];
    const tools: ToolRun[] = [];

    // As a user writes it: the throttled client becomes the SDK's default client.
    setDefaultOpenAIClient(
      throttleOpenAI(new OpenAI({ apiKey: 'test-key', baseURL: fake.baseURL, maxRetries: 0 }), {
        requests,
        llmTokens,
        onAdmit: (e) => admits.push({ ...e, at: performance.now() }),
      }),
    );
    setOpenAIAPI('chat_completions'); // the loopback server speaks tool calls on Chat Completions
    onTestFinished(() => setOpenAIAPI('responses')); // the SDK's default, for the tests after this one

    const getWeather = tool({
      name: 'get_weather',
      description: 'The weather in a city.',
      parameters: weatherArgs,
      execute: throttleTool(
        async ({ city }: z.infer<typeof weatherArgs>, context?: AgentsSDK.RunContext<unknown>) => {
          const user = currentUser();
          tools.push({
            user,
            contextUser: (context?.context as { user?: string } | undefined)?.user,
            at: performance.now(),
          });
          return `${city} is sunny for ${user}`;
        },
        { limiter: toolCalls },
      ),
    });
    const agent = new Agent({
      name: 'Weather',
      instructions: 'Call get_weather per city.',
      model: 'gpt-4o-mini',
      tools: [getWeather],
    });
    const ask = (user: string, question: string) => withUser(user, () => run(agent, question));

    // A first run loads the SDK's lazy modules, so the runs below are timed on a warm process.
    await ask('warm-up', 'Paris?');
    admits.length = 0;
    tools.length = 0;
    toolCalls.keys.length = 0;
    fake.requests.length = 0;

    // alice: 4 runs at once, each 2 model requests and 3 tool calls (8 requests, 12 tool calls).
    // bob: 1 run, streamed, at the same time (2 requests, 3 tool calls).
    const aliceQuestions = ['Paris, Oslo, Lima?', 'Cairo, Tokyo, Quito?', 'Accra, Hanoi, Paris?', 'Oslo, Lima, Cairo?'];
    const t0 = performance.now();
    const alice = Promise.all(aliceQuestions.map((q) => ask('alice', q)));
    const bob = withUser('bob', async () => {
      const streamed = await run(agent, 'Tokyo, Quito, Accra?', { stream: true });
      for await (const _event of streamed);
      await streamed.completed;
      return { output: String(streamed.finalOutput), doneAt: performance.now() };
    });
    const [aliceResults, bobResult] = await Promise.all([alice, bob]);

    // Every run ends with its own tool results, computed for its own user.
    aliceQuestions.forEach((q, i) => {
      const out = String(aliceResults[i]?.finalOutput);
      for (const city of citiesIn(q)) expect(out).toContain(`${city} is sunny for alice`);
    });
    for (const city of ['Tokyo', 'Quito', 'Accra']) expect(bobResult.output).toContain(`${city} is sunny for bob`);

    // Model requests: every HTTP request the SDK sent was admitted, each counted against its user.
    const aliceAdmits = admits.filter((a) => a.user === 'alice');
    const bobAdmits = admits.filter((a) => a.user === 'bob');
    expect(aliceAdmits).toHaveLength(8);
    expect(bobAdmits).toHaveLength(2);
    expect(admits).toHaveLength(10);
    expect(fake.requests.filter((r) => r.path === '/v1/chat/completions')).toHaveLength(10);
    // alice's 8 requests fit her bucket (2 + 5/s), so the last comes at least (8 - 2) / 5 s =
    // 1.2 s after the start; a wide upper margin for a busy machine.
    const aliceRequestTimes = aliceAdmits.map((a) => a.at);
    expectWithinBucket(aliceRequestTimes, t0, 2, 5);
    expect(lastAfter(aliceRequestTimes, t0)).toBeGreaterThanOrEqual(1200 - 5);
    expect(lastAfter(aliceRequestTimes, t0)).toBeLessThan(3 * 1200 + 2000);
    // bob waits for nothing: his bucket is his own, and his run ends before alice's last request.
    for (const a of bobAdmits) expect(a.waitedMs).toBeLessThan(100);
    expect(bobResult.doneAt).toBeLessThan(Math.max(...aliceRequestTimes));

    // Tool calls: run in the caller's withUser context (it survives into the SDK's tool
    // execution), so each is counted against its user: alice's 12 fit 3 + 10/s, the last at
    // least (12 - 3) / 10 s = 0.9 s after the start; bob's 3 fit his burst.
    const aliceTools = tools.filter((t) => t.user === 'alice').map((t) => t.at);
    const bobTools = tools.filter((t) => t.user === 'bob').map((t) => t.at);
    expect(tools).toHaveLength(15);
    expect(toolCalls.keys).toHaveLength(15);
    expect(countOf(toolCalls.keys, 'alice')).toBe(12);
    expect(countOf(toolCalls.keys, 'bob')).toBe(3);
    expect(aliceTools).toHaveLength(12);
    expect(bobTools).toHaveLength(3);
    expectWithinBucket(aliceTools, t0, 3, 10);
    expect(lastAfter(aliceTools, t0)).toBeGreaterThanOrEqual(900 - 5);
    expect(lastAfter(aliceTools, t0)).toBeLessThan(3 * 900 + 2000);
    expectWithinBucket(bobTools, t0, 3, 10);
  });

  test('without withUser: tools keyed by the run context, model requests by the safety_identifier each user’s agent sends (OpenAIProvider on the client)', async () => {
    const { Agent, OpenAIProvider, Runner, tool } = sdk;
    const backend = new MemoryBackend();
    const requests = new RateLimiter({ backend, name: 'requests', policy: { rate: 5, per: '1s', capacity: 2 } });
    // 10 tool calls per second per user, bursts of 2.
    const toolCalls = new KeyRecordingLimiter({ backend, name: 'tools', policy: { rate: 10, per: '1s', capacity: 2 } });
    const admits: (AdmitEvent & { at: number })[] = [];
    const tools: ToolRun[] = [];

    interface AppContext {
      user: string;
    }
    const client = throttleOpenAI(new OpenAI({ apiKey: 'test-key', baseURL: fake.baseURL, maxRetries: 0 }), {
      requests,
      onAdmit: (e) => admits.push({ ...e, at: performance.now() }),
    });
    const runner = new Runner({ modelProvider: new OpenAIProvider({ openAIClient: client, useResponses: false }) });

    const getWeather = tool({
      name: 'get_weather',
      description: 'The weather in a city.',
      parameters: weatherArgs,
      execute: throttleTool(
        async ({ city }: z.infer<typeof weatherArgs>, context?: AgentsSDK.RunContext<AppContext>) => {
          tools.push({ user: currentUser(), contextUser: context?.context.user, at: performance.now() });
          return `${city} is sunny for ${context?.context.user}`;
        },
        // The run context's user, passed by run(…, { context }), is the key.
        { limiter: toolCalls, key: (_args, context) => context?.context.user ?? 'anonymous' },
      ),
    });
    const agent = new Agent<AppContext>({
      name: 'Weather',
      instructions: 'Call get_weather per city.',
      model: 'gpt-4o-mini',
      tools: [getWeather],
    });
    // The request's safety_identifier (which OpenAI asks for per end user) is read by throttleOpenAI.
    const agentFor = (user: string) => agent.clone({ modelSettings: { providerData: { safety_identifier: user } } });
    const ask = (user: string, question: string) => runner.run(agentFor(user), question, { context: { user } });

    await ask('warm-up', 'Paris?');
    admits.length = 0;
    tools.length = 0;
    toolCalls.keys.length = 0;

    // carol and dave each ask for 6 cities in one run: 6 tool calls in one turn each.
    const t0 = performance.now();
    const [carol, dave] = await Promise.all([
      ask('carol', 'Paris, Oslo, Lima, Cairo, Tokyo, Quito?'),
      ask('dave', 'Accra, Hanoi, Paris, Oslo, Lima, Cairo?'),
    ]);
    for (const city of citiesIn('Paris, Oslo, Lima, Cairo, Tokyo, Quito'))
      expect(String(carol.finalOutput)).toContain(`${city} is sunny for carol`);
    for (const city of citiesIn('Accra, Hanoi, Paris, Oslo, Lima, Cairo'))
      expect(String(dave.finalOutput)).toContain(`${city} is sunny for dave`);

    // No withUser anywhere: the tools saw no current user, only the run context's.
    expect(tools).toHaveLength(12);
    expect(tools.every((t) => t.user === undefined)).toBe(true);
    expect(countOf(toolCalls.keys, 'carol')).toBe(6);
    expect(countOf(toolCalls.keys, 'dave')).toBe(6);
    for (const user of ['carol', 'dave']) {
      const times = tools.filter((t) => t.contextUser === user).map((t) => t.at);
      expect(times).toHaveLength(6);
      // Bursts of 2, then 10/s, in each user's own bucket: the 6th call at least (6 - 2) / 10 s = 0.4 s after the start.
      expectWithinBucket(times, t0, 2, 10);
      expect(lastAfter(times, t0)).toBeGreaterThanOrEqual(400 - 5);
      expect(lastAfter(times, t0)).toBeLessThan(3 * 400 + 2000);
      // Each user's 2 model requests were counted against that user, not the anonymous key.
      expect(admits.filter((a) => a.user === user)).toHaveLength(2);
    }
    expect(admits).toHaveLength(4);
  });

  test("a tool call the SDK gives up on (the tool's timeoutMs) stops waiting: it never runs and its token goes back", async () => {
    const { Agent, OpenAIProvider, Runner, tool } = sdk;
    const backend = new MemoryBackend();
    // 2 tool calls per second per user, bursts of 1: of 3 calls at once, 2 must wait.
    const toolCalls = new RateLimiter({ backend, name: 'tools', policy: { rate: 2, per: '1s', capacity: 1 } });
    const ran: string[] = [];
    const client = throttleOpenAI(new OpenAI({ apiKey: 'test-key', baseURL: fake.baseURL, maxRetries: 0 }));
    const runner = new Runner({ modelProvider: new OpenAIProvider({ openAIClient: client, useResponses: false }) });
    const getWeather = tool({
      name: 'get_weather',
      description: 'The weather in a city.',
      parameters: weatherArgs,
      timeoutMs: 150,
      execute: throttleTool(
        async ({ city }: z.infer<typeof weatherArgs>, _context?: unknown, _details?: { signal?: AbortSignal }) => {
          ran.push(city);
          return `${city} is sunny for ${currentUser()}`;
        },
        // The SDK's signal aborts when the tool times out or the run is cancelled.
        { limiter: toolCalls, signal: (_args, _context, details) => details?.signal },
      ),
    });
    const agent = new Agent({
      name: 'Weather',
      instructions: 'Call get_weather per city.',
      model: 'gpt-4o-mini',
      tools: [getWeather],
    });

    const result = await withUser('frank', () => runner.run(agent, 'Paris, Oslo, Lima?'));
    const output = String(result.finalOutput);
    expect(output).toContain('Paris is sunny for frank');
    expect(output).not.toContain('Oslo is sunny');
    expect(output).not.toContain('Lima is sunny');
    // The two calls that timed out waiting would have been admitted at 0.5 s and 1 s had they
    // stayed queued; past that, they still have not run.
    await new Promise((r) => setTimeout(r, 1200));
    expect(ran).toEqual(['Paris']);
    // Their reservations went back: the bucket is full again (1 token), not in debt.
    expect((await toolCalls.tryAcquire('frank')).allowed).toBe(true);
  });

  test("the SDK's default Responses API: an agent's model requests and function calls are throttled per user", async () => {
    const { Agent, OpenAIProvider, Runner, tool } = sdk;
    const responses = await startResponsesServer();
    try {
      const backend = new MemoryBackend();
      const requests = new RateLimiter({ backend, name: 'requests', policy: { rate: 5, per: '1s', capacity: 1 } });
      const toolCalls = new RateLimiter({ backend, name: 'tools', policy: { rate: 10, per: '1s', capacity: 2 } });
      const admits: (AdmitEvent & { at: number })[] = [];
      const tools: ToolRun[] = [];
      const client = throttleOpenAI(new OpenAI({ apiKey: 'test-key', baseURL: responses.baseURL, maxRetries: 0 }), {
        requests,
        onAdmit: (e) => admits.push({ ...e, at: performance.now() }),
      });
      // No useResponses: the provider takes the SDK's default, the Responses API.
      const runner = new Runner({ modelProvider: new OpenAIProvider({ openAIClient: client }) });
      const getWeather = tool({
        name: 'get_weather',
        description: 'The weather in a city.',
        parameters: weatherArgs,
        execute: throttleTool(
          async ({ city }: z.infer<typeof weatherArgs>) => {
            tools.push({ user: currentUser(), contextUser: undefined, at: performance.now() });
            return `${city} is sunny for ${currentUser()}`;
          },
          { limiter: toolCalls },
        ),
      });
      const agent = new Agent({
        name: 'Weather',
        instructions: 'Call get_weather per city.',
        model: 'gpt-4o-mini',
        tools: [getWeather],
      });

      // erin: 3 runs at once, each 2 requests and 2 function calls (6 requests, 6 tool calls).
      const questions = ['Paris, Oslo?', 'Lima, Cairo?', 'Tokyo, Quito?'];
      const t0 = performance.now();
      const results = await withUser('erin', () => Promise.all(questions.map((q) => runner.run(agent, q))));
      questions.forEach((q, i) => {
        for (const city of citiesIn(q)) expect(String(results[i]?.finalOutput)).toContain(`${city} is sunny for erin`);
      });

      expect(responses.paths).toEqual(Array(6).fill('/v1/responses'));
      const requestTimes = admits.filter((a) => a.user === 'erin' && a.path === '/responses').map((a) => a.at);
      expect(requestTimes).toHaveLength(6);
      // 1 + 5/s: the 6th request at least (6 - 1) / 5 s = 1 s after the start.
      expectWithinBucket(requestTimes, t0, 1, 5);
      expect(lastAfter(requestTimes, t0)).toBeGreaterThanOrEqual(1000 - 5);
      expect(lastAfter(requestTimes, t0)).toBeLessThan(3 * 1000 + 2000);
      const toolTimes = tools.filter((t) => t.user === 'erin').map((t) => t.at);
      expect(toolTimes).toHaveLength(6);
      expectWithinBucket(toolTimes, t0, 2, 10);
    } finally {
      await responses.close();
    }
  });
});

/**
 * startResponsesServer answers `POST /v1/responses` (not streamed) as a model with one tool
 * would: a `function_call` of get_weather per city named in the user's message, and once the
 * input holds function results, a message "Done: <the results>".
 */
async function startResponsesServer(): Promise<{ baseURL: string; paths: string[]; close(): Promise<void> }> {
  const paths: string[] = [];
  let seq = 0;
  const id = (prefix: string) => `${prefix}_${++seq}`;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let raw = '';
    req.on('data', (c: Buffer) => {
      raw += c.toString();
    });
    req.on('end', () => {
      paths.push(req.url ?? '');
      if (req.method !== 'POST' || req.url !== '/v1/responses') {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({ error: { message: `not here: ${req.method} ${req.url}`, type: 'invalid_request_error' } }),
        );
        return;
      }
      // biome-ignore lint/suspicious/noExplicitAny: the request body is untyped JSON
      const body: any = raw === '' ? {} : JSON.parse(raw);
      const input: { type?: string; role?: string; content?: unknown; output?: unknown }[] = Array.isArray(body.input)
        ? body.input
        : [{ role: 'user', content: body.input }];
      const results = input.filter((i) => i.type === 'function_call_output');
      const question = input.filter((i) => i.role === 'user').at(-1)?.content;
      const output =
        results.length > 0
          ? [
              {
                type: 'message',
                id: id('msg'),
                status: 'completed',
                role: 'assistant',
                content: [
                  {
                    type: 'output_text',
                    text: `Done: ${results.map((r) => (typeof r.output === 'string' ? r.output : JSON.stringify(r.output))).join('; ')}`,
                    annotations: [],
                  },
                ],
              },
            ]
          : citiesIn(JSON.stringify(question)).map((city) => ({
              type: 'function_call',
              id: id('fc'),
              call_id: id('call'),
              name: 'get_weather',
              arguments: JSON.stringify({ city }),
              status: 'completed',
            }));
      const text = JSON.stringify({
        id: id('resp'),
        object: 'response',
        created_at: Math.floor(Date.now() / 1000),
        status: 'completed',
        error: null,
        incomplete_details: null,
        model: body.model ?? 'gpt-fake',
        output,
        parallel_tool_calls: true,
        tool_choice: 'auto',
        tools: body.tools ?? [],
        usage: {
          input_tokens: 10,
          input_tokens_details: { cached_tokens: 0 },
          output_tokens: 5,
          output_tokens_details: { reasoning_tokens: 0 },
          total_tokens: 15,
        },
      });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    baseURL: `http://127.0.0.1:${port}/v1`,
    paths,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
