/**
 * throttleOpenAI keeps and wraps a caller-supplied `fetch` option. Such a fetch may answer with a
 * Response that is not an instance of Node's global Response class: npm `undici`'s fetch (used
 * with a ProxyAgent), node-fetch, or any fetch-compatible wrapper. The client itself is happy with
 * it; the throttled client must be too, and must still settle LLM tokens to `usage`.
 */
import { throttleOpenAI, withUser } from '@tollgate/agent';
import { MemoryBackend, RateLimiter } from '@tollgate/core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type FakeOpenAI, startFakeOpenAI } from '../../examples/support/fake-openai.ts';
import { newClient, OPENAI_MAJOR } from './openai-client.ts';

let fake: FakeOpenAI;
beforeAll(async () => {
  fake = await startFakeOpenAI({ usage: { prompt_tokens: 20, completion_tokens: 30 } });
});
afterAll(() => fake.close());

/** A fetch-compatible Response of another implementation (as node-fetch's or npm undici's are). */
class ForeignResponse {
  readonly #r: Response;
  constructor(r: Response) {
    this.#r = r;
  }
  get ok() { return this.#r.ok; }
  get status() { return this.#r.status; }
  get statusText() { return this.#r.statusText; }
  get headers() { return this.#r.headers; }
  get url() { return this.#r.url; }
  get body() { return this.#r.body; }
  get bodyUsed() { return this.#r.bodyUsed; }
  json() { return this.#r.json(); }
  text() { return this.#r.text(); }
  arrayBuffer() { return this.#r.arrayBuffer(); }
  blob() { return this.#r.blob(); }
  clone() { return new ForeignResponse(this.#r.clone()); }
}
const foreignFetch = async (input: unknown, init?: RequestInit) =>
  new ForeignResponse(await fetch(input as string, init)) as unknown as Response;

const ask = { model: 'gpt-test', max_tokens: 500, messages: [{ role: 'user' as const, content: 'x'.repeat(396) }] };
const newLimiter = () =>
  new RateLimiter({ backend: new MemoryBackend(), name: 'llm-tokens', policy: { rate: 1, per: '1h', capacity: 10_000 } });

describe(`a caller-supplied fetch with its own Response class (openai ${OPENAI_MAJOR})`, () => {
  test('the unthrottled client works with it', async () => {
    const r = await newClient(fake.baseURL, { fetch: foreignFetch as never }).chat.completions.create(ask);
    expect(r.usage?.total_tokens).toBe(50);
  });

  test('the throttled client answers the call and settles it to usage', async () => {
    const llmTokens = newLimiter();
    const client = throttleOpenAI(newClient(fake.baseURL, { fetch: foreignFetch as never }), { llmTokens });
    const r = await withUser('foreign', () => client.chat.completions.create(ask)); // HEAD: TypeError: Illegal invocation
    expect(r.usage?.total_tokens).toBe(50);
    const d = await llmTokens.tryAcquire('foreign');
    expect(10_000 - 1 - d.remaining).toBe(50);
  });
});
