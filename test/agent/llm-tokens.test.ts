/**
 * LLM-token limits: an estimate is taken before each attempt and settled to the response's usage
 * after it (plain, streamed, Responses, embeddings), a failure gives it back. The fake server
 * reports a fixed usage of 20 + 30 = 50 LLM tokens. The buckets hold 10 000 and refill 1 per hour,
 * so what a call took can be read from `remaining`.
 */
import { estimateLLMTokens, throttleOpenAI, withUser } from '@tollgate/agent';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type AcquireOptions, type Grant, MemoryBackend, RateLimiter } from '@tollgate/core';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { type FakeOpenAI, startFakeOpenAI } from '../../examples/support/fake-openai.ts';
import { finalText, OPENAI_MAJOR, newClient } from './openai-client.ts';

let fake: FakeOpenAI;
beforeAll(async () => {
  fake = await startFakeOpenAI({ usage: { prompt_tokens: 20, completion_tokens: 30 }, latencyMs: 100 });
});
afterAll(() => fake.close());
afterEach(() => {
  fake.requests.length = 0;
});

const CAPACITY = 10_000;
const newLimiter = (capacity = CAPACITY) =>
  new RateLimiter({ backend: new MemoryBackend(), name: 'llm-tokens', policy: { rate: 1, per: '1h', capacity } });

/** LLM tokens `user` has spent: capacity minus what a 1-token probe leaves, minus the probe. */
async function spent(limiter: RateLimiter, user: string, capacity = CAPACITY): Promise<number> {
  const d = await limiter.tryAcquire(user);
  await limiter.refund(user, 1);
  return capacity - 1 - d.remaining;
}

// 396 + 4 ('user') characters = 100 prompt tokens; with max_tokens 500 the estimate is 600.
const PROMPT = 'x'.repeat(396);
const ask = { model: 'gpt-test', max_tokens: 500, messages: [{ role: 'user' as const, content: PROMPT }] };

describe(`LLM tokens (openai ${OPENAI_MAJOR})`, () => {
  test('the estimate counts prompt characters / 4 plus max tokens', () => {
    expect(estimateLLMTokens('/chat/completions', ask)).toBe(600);
    expect(estimateLLMTokens('/chat/completions', { ...ask, max_tokens: undefined })).toBe(100 + 1024);
    expect(estimateLLMTokens('/chat/completions', { ...ask, max_completion_tokens: 10, n: 3 })).toBe(130);
    expect(estimateLLMTokens('/responses', { input: 'abcd', max_output_tokens: 7 })).toBe(8);
    expect(estimateLLMTokens('/embeddings', { input: ['abcd', 'efgh'] })).toBe(2);
  });

  test('a chat completion reserves the estimate, then settles to its usage', async () => {
    const llmTokens = newLimiter();
    const client = throttleOpenAI(newClient(fake.baseURL), { llmTokens });
    await withUser('plain', async () => {
      const call = client.chat.completions.create(ask);
      await new Promise((r) => setTimeout(r, 50)); // the server holds the request 100 ms
      expect(await spent(llmTokens, 'plain')).toBe(600);
      const r = await call;
      expect(r.usage?.total_tokens).toBe(50);
    });
    expect(await spent(llmTokens, 'plain')).toBe(50);
  });

  test('usage above the estimate is charged after the call', async () => {
    const llmTokens = newLimiter();
    const client = throttleOpenAI(newClient(fake.baseURL), { llmTokens });
    // 36 + 4 characters = 10 prompt tokens + max_tokens 10: estimate 20, usage 50.
    await withUser('over', () =>
      client.chat.completions.create({ ...ask, max_tokens: 10, messages: [{ role: 'user', content: 'y'.repeat(36) }] }),
    );
    expect(await spent(llmTokens, 'over')).toBe(50);
  });

  test('an estimate above the capacity is capped at it, so the call can be served', async () => {
    const llmTokens = newLimiter(300);
    const client = throttleOpenAI(newClient(fake.baseURL), { llmTokens });
    const r = await withUser('capped', () => client.chat.completions.create(ask)); // estimate 600 > 300
    expect(r.usage?.total_tokens).toBe(50);
    expect(await spent(llmTokens, 'capped', 300)).toBe(50);
  });

  test('a stream is settled from the usage chunk it adds, which the caller never sees', async () => {
    const llmTokens = newLimiter();
    const client = throttleOpenAI(newClient(fake.baseURL), { llmTokens });
    const params = { ...ask, stream: true as const };
    const chunks = await withUser('streamed', async () => {
      const out = [];
      for await (const chunk of await client.chat.completions.create(params)) out.push(chunk);
      return out;
    });
    // Code reading chunk.choices[0] works on every chunk; no chunk carries usage.
    expect(chunks.length).toBeGreaterThan(2);
    expect(chunks.every((c) => c.choices[0] !== undefined)).toBe(true);
    expect(chunks.some((c) => c.usage != null)).toBe(false);
    expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe('Hello from the fake OpenAI server.');
    // The server was asked for usage; the caller's params object was not changed.
    expect(fake.requests[0]?.body.stream_options).toEqual({ include_usage: true });
    expect('stream_options' in params).toBe(false);
    expect(await spent(llmTokens, 'streamed')).toBe(50);
  });

  test('a stream cut into 5-byte pieces (split events, split UTF-8) is passed on intact', async () => {
    const text = 'Grüße aus Köln ✓ — ok';
    const server = await startFakeOpenAI({
      chat: () => ({ content: text }),
      usage: { prompt_tokens: 7, completion_tokens: 3 },
    });
    try {
      // The caller's own fetch re-chunks the body; throttleOpenAI wraps it and keeps it.
      const tinyChunks = async (url: string | URL | Request, init?: RequestInit): Promise<Response> => {
        const res = await fetch(url, init);
        const bytes = new Uint8Array(await res.arrayBuffer());
        const body = new ReadableStream<Uint8Array>({
          start(controller) {
            for (let i = 0; i < bytes.length; i += 5) controller.enqueue(bytes.slice(i, i + 5));
            controller.close();
          },
        });
        return new Response(body, { status: res.status, headers: res.headers });
      };
      const llmTokens = newLimiter();
      const client = throttleOpenAI(newClient(server.baseURL, { fetch: tinyChunks }), { llmTokens });
      const chunks = await withUser('tiny', async () => {
        const out = [];
        for await (const chunk of await client.chat.completions.create({ ...ask, stream: true })) out.push(chunk);
        return out;
      });
      expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(text);
      expect(chunks.every((c) => c.choices.length === 1)).toBe(true);
      expect(await spent(llmTokens, 'tiny')).toBe(10);
    } finally {
      await server.close();
    }
  });

  test('a caller who asked for the usage chunk still gets it', async () => {
    const llmTokens = newLimiter();
    const client = throttleOpenAI(newClient(fake.baseURL), { llmTokens });
    const chunks = await withUser('asked', async () => {
      const out = [];
      const stream = await client.chat.completions.create({
        ...ask,
        stream: true,
        stream_options: { include_usage: true },
      });
      for await (const chunk of stream) out.push(chunk);
      return out;
    });
    expect(chunks.at(-1)?.choices).toEqual([]);
    expect(chunks.at(-1)?.usage?.total_tokens).toBe(50);
    expect(await spent(llmTokens, 'asked')).toBe(50);
  });

  test('the .stream() helper works and is settled', async () => {
    const llmTokens = newLimiter();
    const client = throttleOpenAI(newClient(fake.baseURL), { llmTokens });
    const final = await withUser('helper', () => client.chat.completions.stream(ask).finalChatCompletion());
    expect(final.choices[0]?.message.content).toBe('Hello from the fake OpenAI server.');
    expect(await spent(llmTokens, 'helper')).toBe(50);
  });

  test('responses (plain and streamed) and embeddings are settled from their usage', async () => {
    const llmTokens = newLimiter();
    const client = throttleOpenAI(newClient(fake.baseURL), { llmTokens });
    await withUser('resp', () => client.responses.create({ model: 'm', input: PROMPT, max_output_tokens: 500 }));
    expect(await spent(llmTokens, 'resp')).toBe(50);
    const final = await withUser('resp-stream', () =>
      client.responses.stream({ model: 'm', input: PROMPT, max_output_tokens: 500 }).finalResponse(),
    );
    expect(finalText(final)).toBe('Hello from the fake OpenAI server.');
    expect(await spent(llmTokens, 'resp-stream')).toBe(50);
    await withUser('emb', () => client.embeddings.create({ model: 'e', input: PROMPT }));
    expect(await spent(llmTokens, 'emb')).toBe(20); // embeddings usage: 20 prompt tokens
  });

  test('a failed request gives its estimate back; a retried 429 is charged once', async () => {
    const llmTokens = newLimiter();
    const client = throttleOpenAI(newClient(fake.baseURL), { llmTokens });
    fake.failNext(1, 400);
    const err = await withUser('failed', () => client.chat.completions.create(ask)).catch((e: unknown) => e);
    expect((err as { status?: number }).status).toBe(400);
    expect(await spent(llmTokens, 'failed')).toBe(0);
    fake.failNext(1, 429, { 'retry-after-ms': '1' }); // not 0: openai 5 reads 0 as no hint and backs off 0.5 s
    await withUser('retried', () => client.chat.completions.create(ask));
    expect(fake.requests.map((r) => r.status)).toEqual([400, 429, 200]);
    expect(await spent(llmTokens, 'retried')).toBe(50);
  });

  test('a JSON body is settled when the client parses it; one never read keeps its estimate', async () => {
    const llmTokens = newLimiter();
    const client = throttleOpenAI(newClient(fake.baseURL), { llmTokens, perUser: { concurrency: 1 } });
    await withUser('unread', async () => {
      // .asResponse() hands the raw response over unread: the estimate (600) is held.
      const raw = await client.chat.completions.create(ask).asResponse();
      expect(await spent(llmTokens, 'unread')).toBe(600);
      // Its slot is free all the same: the next call is not held behind the unread body.
      const next = await client.chat.completions.create(ask);
      expect(next.usage?.total_tokens).toBe(50);
      expect(await spent(llmTokens, 'unread')).toBe(600 + 50);
      // Reading it (json(), text(), arrayBuffer() or bytes()) settles it: 600 -> 50.
      const body = (await raw.json()) as { usage: { total_tokens: number } };
      expect(body.usage.total_tokens).toBe(50);
      expect(await spent(llmTokens, 'unread')).toBe(50 + 50);
      // A body left unread for good keeps its estimate.
      await client.chat.completions.create(ask).asResponse();
      expect(await spent(llmTokens, 'unread')).toBe(50 + 50 + 600);
    });
  });

  test('a raw response read with text() is settled too', async () => {
    const llmTokens = newLimiter();
    const client = throttleOpenAI(newClient(fake.baseURL), { llmTokens });
    await withUser('text', async () => {
      const raw = await client.chat.completions.create(ask).asResponse();
      expect(await spent(llmTokens, 'text')).toBe(600);
      expect(JSON.parse(await raw.text()).usage.total_tokens).toBe(50);
      expect(await spent(llmTokens, 'text')).toBe(50);
      await expect(raw.text()).rejects.toThrow(TypeError); // a body is still read once
    });
  });

  // bytes() is recent (not in every Node 20 release): tested where the runtime has it.
  const byteReaders = [
    'arrayBuffer',
    ...(typeof (Response.prototype as { bytes?: unknown }).bytes === 'function' ? ['bytes'] : []),
  ] as const;
  test.each(byteReaders)('a raw response read with %s() is settled too', async (reader) => {
    const llmTokens = newLimiter();
    const client = throttleOpenAI(newClient(fake.baseURL), { llmTokens });
    await withUser(reader, async () => {
      const raw = await client.chat.completions.create(ask).asResponse();
      expect(await spent(llmTokens, reader)).toBe(600);
      const bytes = await (raw as unknown as Record<string, () => Promise<ArrayBuffer | Uint8Array>>)[reader]?.call(
        raw,
      );
      expect(JSON.parse(new TextDecoder().decode(bytes)).usage.total_tokens).toBe(50);
      expect(await spent(llmTokens, reader)).toBe(50);
    });
  });

  test('a user over the LLM-token budget waits until the bucket refills', async () => {
    // 1000 LLM tokens per second, capacity 1000; every call estimates and uses 800.
    const server = await startFakeOpenAI({ usage: { prompt_tokens: 100, completion_tokens: 700 } });
    try {
      const llmTokens = new RateLimiter({
        backend: new MemoryBackend(),
        name: 'llm-tokens',
        policy: { rate: 1000, per: '1s' },
      });
      const client = throttleOpenAI(newClient(server.baseURL), { llmTokens });
      const t0 = performance.now();
      await withUser('heavy', () =>
        Promise.all([
          client.chat.completions.create({ ...ask, max_tokens: 700 }),
          client.chat.completions.create({ ...ask, max_tokens: 700 }),
        ]),
      );
      const [, b] = server.requests;
      // The second call needs 800 with 200 left: admitted 600 ms in, at 1 per ms.
      expect((b?.time ?? 0) - t0).toBeGreaterThanOrEqual(590);
      expect((b?.time ?? 0) - t0).toBeLessThan(1100);
    } finally {
      await server.close();
    }
  });

  test('an abort after a 200 arrived keeps the LLM tokens the provider counted', async () => {
    // A non-streaming 200 is generated whole before its headers are sent: a caller who aborts
    // after it arrived (a proxy whose own client went away, a UI cancel) gets nothing back.
    const llmTokens = newLimiter();
    const client = throttleOpenAI(newClient(fake.baseURL, { maxRetries: 0 }), { llmTokens });
    await withUser('aborts-late', async () => {
      const ac = new AbortController();
      const raw = await client.chat.completions.create(ask, { signal: ac.signal }).asResponse();
      expect(raw.status).toBe(200);
      ac.abort();
      await raw.json().catch(() => undefined); // the body may never be read
    });
    // Either settled to the usage (50) or the estimate kept (600): never given back.
    expect(await spent(llmTokens, 'aborts-late')).toBeGreaterThanOrEqual(50);
  });

  test('a stream call answered with a JSON body (a server that ignores `stream`) is settled to its usage', async () => {
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json' });
        const usage = { prompt_tokens: 20, completion_tokens: 30, total_tokens: 50 };
        res.end(JSON.stringify({ id: 'x', object: 'chat.completion', created: 0, model: 'm', choices: [], usage }));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const baseURL = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
      const llmTokens = newLimiter();
      const client = throttleOpenAI(newClient(baseURL, { maxRetries: 0 }), { llmTokens });
      await withUser('json-stream', async () => {
        // The client reads a stream call's body through `body`, never json() / text().
        for await (const _ of await client.chat.completions.create({ ...ask, stream: true })) {
          // read to the end
        }
      });
      expect(await spent(llmTokens, 'json-stream')).toBe(50); // not the 600 estimated
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  test('a RateLimiter subclass sees every reservation and refund, and one bucket holds the call', async () => {
    // A subclass overriding acquire / refund (metrics, key namespacing) must see every call, and
    // the reservation, the refund and any excess charge must land in the same bucket.
    class Namespaced extends RateLimiter {
      acquires: string[] = [];
      refunds: string[] = [];
      override acquire(key: string, o?: AcquireOptions): Promise<Grant> {
        this.acquires.push(key);
        return super.acquire(`tenant-a:${key}`, o);
      }
      override refund(key: string, amount: number): Promise<void> {
        this.refunds.push(key);
        return super.refund(`tenant-a:${key}`, amount);
      }
    }
    const llmTokens = new Namespaced({
      backend: new MemoryBackend(),
      name: 'llm',
      policy: { rate: 1, per: '1h', capacity: CAPACITY },
    });
    const spentIn = async (bucket: string) =>
      CAPACITY - 1 - (await RateLimiter.prototype.tryAcquire.call(llmTokens, bucket)).remaining;
    const client = throttleOpenAI(newClient(fake.baseURL, { maxRetries: 0 }), { llmTokens });
    await withUser('u', () => client.chat.completions.create(ask)); // estimate 600, usage 50: 550 back
    expect(llmTokens.acquires).toEqual(['u']);
    expect(llmTokens.refunds).toEqual(['u']);
    expect(await spentIn('tenant-a:u')).toBe(50);
    expect(await spentIn('u')).toBe(0);

    // Usage above the estimate: the reservation (20) and the excess charge (30) hit one bucket.
    const small = { ...ask, max_tokens: 10, messages: [{ role: 'user' as const, content: 'y'.repeat(36) }] };
    await withUser('v', () => client.chat.completions.create(small));
    await new Promise((r) => setTimeout(r, 20));
    expect(await spentIn('tenant-a:v')).toBe(50);
    expect(await spentIn('v')).toBe(0);
  });
});
