import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { type FakeOpenAI, startFakeOpenAI } from '../../examples/support/fake-openai.ts';
import { finalText, OPENAI_MAJOR, newClient } from './openai-client.ts';

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
