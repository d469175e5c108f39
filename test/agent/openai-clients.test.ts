/**
 * throttleOpenAI holds for every client the openai package builds: AzureOpenAI, a client with a
 * `provider` (the package's own Bedrock provider, and a custom one), and a subclass with its own
 * auth. Each talks HTTP to the loopback fake server; nothing here mocks the client.
 *
 * What such clients do that a plain one does not: AzureOpenAI keeps options of its own
 * (`deployment`, `apiVersion`) that a copy made through `withOptions` loses, and a provider's or
 * a subclass's `prepareRequest` replaces the request's headers object before it is sent.
 */
import { perUserStats, throttleOpenAI, withUser } from '@tollgate/agent';
import { MemoryBackend, RateLimiter } from '@tollgate/core';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { type FakeOpenAI, startFakeOpenAI } from '../../examples/support/fake-openai.ts';
import { AzureOpenAI, OPENAI_MAJOR, OpenAI, bedrock } from './openai-client.ts';

let fake: FakeOpenAI;
beforeAll(async () => {
  fake = await startFakeOpenAI({ usage: { prompt_tokens: 20, completion_tokens: 30 } });
});
afterAll(() => fake.close());
afterEach(() => {
  fake.requests.length = 0;
});

const CAPACITY = 10_000;
const llmLimiter = () =>
  new RateLimiter({
    backend: new MemoryBackend(),
    name: 'llm-tokens',
    policy: { rate: 1, per: '1h', capacity: CAPACITY },
  });
/** LLM tokens `user` has spent from `l` (the probe itself takes 1). */
const spent = async (l: RateLimiter, user: string) => CAPACITY - 1 - (await l.tryAcquire(user)).remaining;

// 396 + 4 characters = 100 prompt tokens, + max_tokens 500: an estimate of 600; the server's usage is 50.
const ask = { model: 'gpt-test', max_tokens: 500, messages: [{ role: 'user' as const, content: 'x'.repeat(396) }] };

/** within rejects when `work` takes longer than `ms`: a call left hanging fails the test with a reason. */
const within = <T>(ms: number, what: string, work: Promise<T>): Promise<T> =>
  Promise.race([
    work,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} still pending after ${ms} ms`)), ms)),
  ]);

/** The usage the server reported in a stream's chunks, and how many chunks had no choices. */
async function readStream(stream: AsyncIterable<{ choices: unknown[]; usage?: unknown }>) {
  let text = 0;
  let choiceless = 0;
  let usage = 0;
  for await (const chunk of stream) {
    if (chunk.choices.length === 0) choiceless++;
    else text++;
    if (chunk.usage !== undefined && chunk.usage !== null) usage++;
  }
  return { text, choiceless, usage };
}

/**
 * What every throttled client must do: five sequential calls with `perUser.concurrency` 4 all
 * resolve (each frees its slot), each JSON call settles to its usage, and a stream that did not
 * ask for usage is settled to it without seeing the usage chunk asked for on its behalf.
 */
async function throttlesEveryAttempt(client: InstanceType<typeof OpenAI>, user: string): Promise<void> {
  const llmTokens = llmLimiter();
  const throttled = throttleOpenAI(client, { llmTokens, perUser: { concurrency: 4 } });
  await withUser(user, async () => {
    for (let i = 0; i < 5; i++) {
      const r = await within(5000, `call ${i + 1} of 5`, throttled.chat.completions.create(ask));
      expect(r.usage?.total_tokens).toBe(50);
    }
  });
  expect(perUserStats(throttled, user)).toEqual({ queued: 0, inFlight: 0 });
  expect(await spent(llmTokens, user)).toBe(5 * 50); // settled to usage, not 5 × the 600 estimated

  const seen = await withUser(user, async () =>
    readStream(await within(5000, 'the stream', throttled.chat.completions.create({ ...ask, stream: true }))),
  );
  expect(seen.usage).toBe(0); // the caller did not ask for usage, and sees none
  expect(seen.choiceless).toBe(0);
  expect(seen.text).toBeGreaterThan(0);
  expect(perUserStats(throttled, user)).toEqual({ queued: 0, inFlight: 0 });
  expect(await spent(llmTokens, user)).toBe(6 * 50 + 1); // + the first probe
}

describe(`every client the openai package builds is throttled (openai ${OPENAI_MAJOR})`, () => {
  test('AzureOpenAI keeps its deployment and explicit apiVersion, with no OPENAI_API_VERSION set', async () => {
    const saved = process.env.OPENAI_API_VERSION;
    delete process.env.OPENAI_API_VERSION;
    try {
      const urls: string[] = [];
      const recording = (url: string | URL | Request, init?: RequestInit) => {
        urls.push(String(url));
        return fetch(url, init);
      };
      const azure = new AzureOpenAI({
        endpoint: fake.url,
        deployment: 'team-deployment',
        apiVersion: '2024-10-21',
        apiKey: 'azure-key',
        maxRetries: 0,
        fetch: recording,
      });
      const requests = new RateLimiter({
        backend: new MemoryBackend(),
        name: 'requests',
        policy: { rate: 1, per: '1h', capacity: 5 },
      });
      const client = throttleOpenAI(azure, { requests });
      expect(client).toBe(azure);
      expect(client.deploymentName).toBe('team-deployment');
      await withUser('azure-user', () => client.chat.completions.create(ask));
      expect(urls).toEqual([`${fake.url}/openai/deployments/team-deployment/chat/completions?api-version=2024-10-21`]);
      expect(fake.requests[0]?.headers['api-key']).toBe('azure-key');
      expect((await requests.tryAcquire('azure-user')).remaining).toBe(3); // 5 - the call - this probe
    } finally {
      if (saved !== undefined) process.env.OPENAI_API_VERSION = saved;
    }
  });

  test('AzureOpenAI: calls settle, free their slots, and streams see only what they asked for', async () => {
    const azure = new AzureOpenAI({
      endpoint: fake.url,
      deployment: 'd',
      apiVersion: '2024-10-21',
      apiKey: 'k',
      maxRetries: 0,
    });
    await throttlesEveryAttempt(azure, 'azure');
  });

  test('a subclass whose prepareRequest replaces the headers object (its own auth)', async () => {
    class SigningOpenAI extends OpenAI {
      protected override async prepareRequest(init: RequestInit): Promise<void> {
        const headers = new Headers(init.headers);
        headers.set('x-signature', `signed:${headers.get('x-stainless-retry-count')}`);
        init.headers = headers;
      }
    }
    const client = new SigningOpenAI({ baseURL: fake.baseURL, apiKey: 'k', maxRetries: 0 });
    await throttlesEveryAttempt(client, 'signed');
    expect(fake.requests.map((r) => r.headers['x-signature'])).toEqual(Array(6).fill('signed:0'));
  });

  describe.skipIf(OPENAI_MAJOR === 5)('a client with a provider (openai 6 and 7)', () => {
    test("the package's Bedrock provider (bearer auth replaces the headers object)", async () => {
      const provider = bedrock!({ apiKey: 'bedrock-key', baseURL: fake.baseURL });
      const client = new OpenAI({ provider, maxRetries: 0 } as never);
      await throttlesEveryAttempt(client, 'bedrock');
      expect(fake.requests.every((r) => r.headers.authorization === 'Bearer bedrock-key')).toBe(true);
    });

    test("a custom provider: its configure() runs once, and its prepareRequest's headers are sent", async () => {
      let configured = 0;
      const provider = customProvider(() => {
        configured++;
        return {
          name: 'signing-gateway',
          baseURL: fake.baseURL,
          prepareRequest(init: { headers: ConstructorParameters<typeof Headers>[0] }) {
            const headers = new Headers(init.headers);
            headers.set('authorization', 'Bearer from-gateway');
            init.headers = headers;
          },
        };
      });
      const client = new OpenAI({ provider, maxRetries: 0 } as never);
      expect(configured).toBe(1);
      await throttlesEveryAttempt(client, 'gateway');
      expect(configured).toBe(1); // wrapping constructed no client of its own
      expect(fake.requests.every((r) => r.headers.authorization === 'Bearer from-gateway')).toBe(true);
    });
  });

  test('wrapping constructs no client: the one the user built is the one throttled', () => {
    let constructed = 0;
    class Counted extends OpenAI {
      constructor(options: ConstructorParameters<typeof OpenAI>[0]) {
        super(options);
        constructed++;
      }
    }
    const client = new Counted({ baseURL: fake.baseURL, apiKey: 'k' });
    expect(throttleOpenAI(client, { llmTokens: llmLimiter() })).toBe(client);
    expect(constructed).toBe(1);
  });
});

describe(`a caller-supplied fetch with its own Response class (openai ${OPENAI_MAJOR})`, () => {
  // npm undici's fetch (with a ProxyAgent), node-fetch, or any fetch-compatible wrapper answers
  // with a Response that is not Node's global class. The client is happy with it; the throttled
  // client must be too, and must still settle LLM tokens to `usage`.
  class ForeignResponse {
    readonly #r: Response;
    constructor(r: Response) {
      this.#r = r;
    }
    get ok() {
      return this.#r.ok;
    }
    get status() {
      return this.#r.status;
    }
    get statusText() {
      return this.#r.statusText;
    }
    get headers() {
      return this.#r.headers;
    }
    get url() {
      return this.#r.url;
    }
    get body() {
      return this.#r.body;
    }
    get bodyUsed() {
      return this.#r.bodyUsed;
    }
    json() {
      return this.#r.json();
    }
    text() {
      return this.#r.text();
    }
    arrayBuffer() {
      return this.#r.arrayBuffer();
    }
    blob() {
      return this.#r.blob();
    }
    clone() {
      return new ForeignResponse(this.#r.clone());
    }
  }
  const foreignFetch = async (input: unknown, init?: RequestInit) =>
    new ForeignResponse(await fetch(input as string, init)) as unknown as Response;

  test('the unthrottled client works with it', async () => {
    const r = await new OpenAI({
      baseURL: fake.baseURL,
      apiKey: 'k',
      fetch: foreignFetch as never,
    }).chat.completions.create(ask);
    expect(r.usage?.total_tokens).toBe(50);
  });

  test('the throttled client answers the call and settles it to usage', async () => {
    const llmTokens = llmLimiter();
    const client = throttleOpenAI(new OpenAI({ baseURL: fake.baseURL, apiKey: 'k', fetch: foreignFetch as never }), {
      llmTokens,
    });
    const r = await withUser('foreign', () => client.chat.completions.create(ask));
    expect(r.usage?.total_tokens).toBe(50);
    expect(await spent(llmTokens, 'foreign')).toBe(50);
  });
});

/**
 * customProvider makes a provider the way the package's own do (`createProvider`, not exported):
 * an opaque frozen object registered, with its definition, in the registry the package keeps on
 * `globalThis` so that providers work across copies of the package.
 */
function customProvider(configure: () => object): unknown {
  const registry = (globalThis as Record<symbol, WeakMap<object, { configure: () => object }> | undefined>)[
    Symbol.for('openai.node.providerDefinitions.v1')
  ];
  if (registry === undefined) throw new Error('the openai package registers no providers here');
  const provider = Object.freeze({});
  registry.set(provider, { configure });
  return provider;
}
