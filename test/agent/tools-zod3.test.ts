/**
 * defineTool with the zod an app has: zod 3 (3.25+, `zod3` here, an alias of npm:zod@^3.25) and
 * zod 4. The app's own zod validates the model's arguments; the definition's JSON Schema comes
 * from zod 4, or from `jsonSchema`, which a zod 3 schema needs. This file is type-checked too:
 * it is the proof that a zod 3 app compiles (no TS2740) and gets typed `execute` arguments.
 */
import { type Tool, type ToolSchema, defineTool, runToolCalls, throttleOpenAI, withUser } from '@tollgate/agent';
import { InvalidOptionsError, MemoryBackend, RateLimiter } from '@tollgate/core';
import { describe, expect, expectTypeOf, test } from 'vitest';
import { z } from 'zod';
import { z as z3 } from 'zod3';
import { z as z3v4 } from 'zod3/v4';
import { startFakeOpenAI } from '../../examples/support/fake-openai.ts';
import { newClient } from './openai-client.ts';

const call = (id: string, name: string, args: string) => ({
  id,
  type: 'function' as const,
  function: { name, arguments: args },
});
const contentOf = (m: { content: string } | undefined) => JSON.parse(m?.content ?? '') as unknown;

/** The JSON Schema an app on zod 3 writes (or gets from its own converter) for `weather3`. */
const weatherJsonSchema = {
  $schema: 'http://json-schema.org/draft-07/schema#',
  type: 'object',
  properties: {
    city: { type: 'string', minLength: 1, description: 'the city' },
    days: { type: 'integer', minimum: 1, maximum: 7 },
  },
  required: ['city'],
  additionalProperties: false,
};

const weather3 = z3
  .object({
    city: z3.string().min(1).describe('the city'),
    days: z3.number().int().min(1).max(7).default(1),
  })
  .strict();

describe('defineTool with a zod 3 schema', () => {
  test('runs valid arguments, turns invalid ones into a message naming the field, and sends the given JSON Schema', async () => {
    const seen: { city: string; days: number }[] = [];
    const weather = defineTool({
      name: 'get_weather',
      description: 'Weather for the next days',
      parameters: weather3,
      jsonSchema: weatherJsonSchema,
      execute: (args, { user }) => {
        expectTypeOf(args).toEqualTypeOf<{ city: string; days: number }>();
        seen.push(args);
        return `${args.days} sunny day(s) in ${args.city} for ${user}`;
      },
    });
    const { $schema: _dropped, ...sent } = weatherJsonSchema;
    expect(weather.definition).toEqual({
      type: 'function',
      function: { name: 'get_weather', description: 'Weather for the next days', parameters: sent },
    });

    const messages = await runToolCalls(
      [
        call('ok', 'get_weather', '{"city":"Oslo"}'),
        call('type', 'get_weather', '{"city":42}'),
        call('range', 'get_weather', '{"city":"Rome","days":9}'),
        call('extra', 'get_weather', '{"city":"Rome","town":"Rome"}'),
      ],
      [weather],
      { user: 'u3' },
    );
    expect(messages.map((m) => m.tool_call_id)).toEqual(['ok', 'type', 'range', 'extra']);
    // zod 3's default applied: execute got the parsed value, not the raw JSON.
    expect(messages[0]?.content).toBe('1 sunny day(s) in Oslo for u3');
    expect(seen).toEqual([{ city: 'Oslo', days: 1 }]);
    expect(contentOf(messages[1])).toEqual({
      error: 'invalid_arguments',
      message: 'invalid arguments for tool "get_weather": city: Expected string, received number',
    });
    expect(contentOf(messages[2])).toEqual({
      error: 'invalid_arguments',
      message: 'invalid arguments for tool "get_weather": days: Number must be less than or equal to 7',
    });
    expect(contentOf(messages[3])).toMatchObject({ error: 'invalid_arguments' });
    expect((contentOf(messages[3]) as { message: string }).message).toMatch(/Unrecognized key\(s\) in object: 'town'/);
  });

  test('a tool-call loop: the model sees the JSON Schema, the zod 3 tool runs per user behind its limiter', async () => {
    const fake = await startFakeOpenAI();
    try {
      const client = throttleOpenAI(newClient(fake.baseURL), {});
      const toolLimiter = new RateLimiter({
        backend: new MemoryBackend(),
        name: 'weather-tool',
        policy: { rate: 2, per: '1h' },
      });
      const weather = defineTool({
        name: 'get_weather',
        description: 'weather',
        parameters: weather3,
        jsonSchema: weatherJsonSchema,
        execute: ({ city, days }) => `${days} day(s) of sun in ${city}`,
        limiter: toolLimiter,
        maxWaitMs: 0,
      });
      const ask = () =>
        withUser('loop-user-3', async () => {
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
      // The fake model samples its arguments from the schema it was sent: "Paris", minimum 1.
      expect(await ask()).toBe('Done: 1 day(s) of sun in Paris');
      const tools = fake.requests[0]?.body.tools as { function: { parameters: unknown } }[];
      expect(tools[0]?.function.parameters).toEqual(weather.definition.function.parameters);
      expect(await ask()).toBe('Done: 1 day(s) of sun in Paris');
      // 2 per hour for this user: the third call is refused at once (maxWaitMs 0) and the model is told.
      expect(await ask()).toMatch(/^Done: \{"error":"rate_limited"/);
      expect((await toolLimiter.tryAcquire('loop-user-3')).allowed).toBe(false);
      expect((await toolLimiter.tryAcquire('someone-else')).allowed).toBe(true);
    } finally {
      await fake.close();
    }
  });

  test('without jsonSchema it is refused at once with InvalidOptionsError naming parameters and the ways out', () => {
    let err: unknown;
    try {
      defineTool({ name: 'get_weather', description: 'weather', parameters: weather3, execute: () => 1 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidOptionsError);
    const e = err as InvalidOptionsError;
    expect(e.code).toBe('ERR_TOLLGATE_INVALID_OPTIONS');
    expect(e.message).toMatch(
      /^invalid defineTool options: parameters has no JSON Schema converter \(zod 3 schemas have none\)/,
    );
    expect(e.message).toContain('as jsonSchema');
    expect(e.message).toContain("import { z } from 'zod/v4'");
    expect(e.message).toMatch(/\(received a zod 3 schema\)$/);
    expect(e.issues.map((i) => i.path)).toEqual(['parameters']);
  });

  test('a Tool of a zod 3 schema is typed by it', () => {
    const tool: Tool<typeof weather3, string> = defineTool({
      name: 'typed',
      description: 'typed',
      parameters: weather3,
      jsonSchema: weatherJsonSchema,
      execute: ({ city }) => city,
      key: (args, user) => `${user}:${args.city}`,
      cost: ({ days }) => days,
    });
    expectTypeOf(tool.runnable.function.parse).returns.toEqualTypeOf<{ city: string; days: number }>();
    expectTypeOf(tool.call).returns.resolves.toEqualTypeOf<string>();
    // @ts-expect-error execute's arguments are the schema's output: there is no `town`.
    defineTool({ name: 'x', description: '', parameters: weather3, jsonSchema: {}, execute: (a) => a.town });
    expectTypeOf(weather3).toExtend<ToolSchema<{ city: string; days: number }>>();
    expect(tool.definition.function.parameters).toHaveProperty('required', ['city']);
  });
});

describe('defineTool with a zod 4 schema', () => {
  const weather4 = z.object({
    city: z.string().min(1).describe('the city'),
    days: z.number().int().min(1).max(7).default(1),
  });
  const weather3v4 = z3v4.object({
    city: z3v4.string().min(1).describe('the city'),
    days: z3v4.number().int().min(1).max(7).default(1),
  });
  const expectedJsonSchema = {
    type: 'object',
    properties: {
      city: { type: 'string', minLength: 1, description: 'the city' },
      days: { type: 'integer', minimum: 1, maximum: 7, default: 1 },
    },
    required: ['city'],
  };

  test("zod 4 and zod 3.25's zod/v4 (no Standard JSON Schema converter) give the same definition and the same checks", async () => {
    for (const [label, schema] of [
      ['zod 4', weather4],
      ['zod 3.25 zod/v4', weather3v4],
    ] as const) {
      const weather = defineTool({
        name: 'get_weather',
        description: label,
        parameters: schema,
        execute: ({ city, days }) => `${days} in ${city}`,
      });
      expect(weather.definition.function.parameters, label).toEqual(expectedJsonSchema);
      const messages = await runToolCalls(
        [call('ok', 'get_weather', '{"city":"Oslo"}'), call('bad', 'get_weather', '{"city":""}')],
        [weather],
      );
      expect(messages[0]?.content, label).toBe('1 in Oslo');
      expect(contentOf(messages[1]), label).toEqual({
        error: 'invalid_arguments',
        message: 'invalid arguments for tool "get_weather": city: Too small: expected string to have >=1 characters',
      });
    }
  });

  test('jsonSchema replaces the generated schema; a schema JSON cannot describe is refused unless it is given', () => {
    const when = z.object({ at: z.date() });
    expect(() => defineTool({ name: 'when', description: '', parameters: when, execute: () => 1 })).toThrow(
      /^invalid defineTool options: parameters cannot be written as JSON Schema \(.*Date.*\): pass jsonSchema/,
    );
    const given = { type: 'object', properties: { at: { type: 'string', format: 'date-time' } }, required: ['at'] };
    const tool = defineTool({ name: 'when', description: '', parameters: when, jsonSchema: given, execute: () => 1 });
    expect(tool.definition.function.parameters).toEqual(given);
    expect(() =>
      defineTool({ name: 'when', description: '', parameters: when, jsonSchema: [] as never, execute: () => 1 }),
    ).toThrow(
      /jsonSchema must be a JSON Schema object like \{ type: 'object', properties: \{\.\.\.\} \} \(received an array\)/,
    );
  });
});
