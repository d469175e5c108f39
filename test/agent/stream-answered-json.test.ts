/**
 * A streaming call (`stream: true`) that the server answers 200 with a JSON body (a proxy or an
 * OpenAI-compatible server that ignores `stream`). The client reads a streaming call's body
 * through `response.body` (Stream.fromSSEResponse), never through json() / text(): the estimate
 * must still be settled to the body's usage (as it was before, when the wrapper read the body).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { throttleOpenAI, withUser } from '@tollgate/agent';
import { MemoryBackend, RateLimiter } from '@tollgate/core';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { newClient } from './openai-client.ts';

let server: Server;
let baseURL: string;
beforeAll(async () => {
  server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({ id: 'x', object: 'chat.completion', created: 0, model: 'm', choices: [], usage: { prompt_tokens: 20, completion_tokens: 30, total_tokens: 50 } }),
      );
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  baseURL = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

test('a stream call answered with a JSON body is settled to its usage', async () => {
  const llmTokens = new RateLimiter({ backend: new MemoryBackend(), name: 'llm', policy: { rate: 1, per: '1h', capacity: 10_000 } });
  const client = throttleOpenAI(newClient(baseURL, { maxRetries: 0 }), { llmTokens });
  // 396 + 4 characters = 100 prompt tokens, + max_tokens 500: estimate 600; usage 50.
  const ask = { model: 'm', max_tokens: 500, stream: true as const, messages: [{ role: 'user' as const, content: 'x'.repeat(396) }] };
  await withUser('u', async () => {
    const stream = await client.chat.completions.create(ask);
    for await (const _ of stream) {
      // read to the end
    }
  });
  const d = await llmTokens.tryAcquire('u');
  expect(10_000 - 1 - d.remaining).toBe(50); // HEAD: 600 (the estimate is never settled)
});
