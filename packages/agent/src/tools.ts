import { type RateLimiter, isAbortedError, isMaxWaitExceededError } from '@tollgate/core';
import { describe, toOptionsError, z } from '@tollgate/core/internal';
import {
  InvalidToolArgumentsError,
  type ToolArgs,
  type ToolSchema,
  isToolSchema,
  parseToolArgs,
  toolJsonSchema,
} from './tool-schema.js';

export { InvalidToolArgumentsError };
import { ANONYMOUS_USER, currentUser } from './user-context.js';

/** ThrottleToolOptions configures {@link throttleTool}. */
export interface ThrottleToolOptions<A extends unknown[]> {
  /** The limiter each call waits on. */
  limiter: RateLimiter;
  /**
   * The key a call is counted under, from its arguments.
   * @default the current user ({@link withUser}), else {@link ANONYMOUS_USER}
   * @example (query) => `${currentUser()}:search`
   */
  key?: (...args: A) => string;
  /** Tokens one call takes (a number, or a function of the arguments). @default 1 */
  cost?: number | ((...args: A) => number);
  /** The longest a call may wait for its token, in ms; beyond, `MaxWaitExceededError`. @default Infinity */
  maxWaitMs?: number;
  /**
   * The call's AbortSignal, from its arguments. When it aborts while the call waits, the wait
   * ends at once with `AbortedError` from @tollgate/core, the token goes back, and `fn` does not
   * run: a framework that gave up on the call (a tool timeout, a cancelled agent run) does not
   * leave it queued to run later, delaying the user's next calls.
   * @default none: a call waits until its token comes
   * @example (_input, _context, details) => details?.signal   // OpenAI Agents SDK tool()
   */
  signal?: (...args: A) => AbortSignal | undefined;
}

/**
 * throttleTool returns `fn` behind `limiter`: each call first waits for its token (in arrival
 * order per key), then runs `fn` with the same arguments and `this`, and resolves to its result.
 * The signature is kept; the result is a Promise of what `fn` returns.
 *
 * @example
 * const search = throttleTool(async (q: string) => fetchResults(q), { limiter: searchLimiter })
 * await withUser('user-42', () => search('tollgate'))   // counted against user-42
 */
export function throttleTool<A extends unknown[], R>(
  fn: (...args: A) => R,
  options: ThrottleToolOptions<A>,
): (...args: A) => Promise<Awaited<R>> {
  if (typeof fn !== 'function') {
    throw toOptionsError('throttleTool arguments', issue(['fn'], `must be a function (received ${describe(fn)})`));
  }
  const { limiter, key, cost, maxWaitMs, signal } = parse(
    'throttleTool options',
    throttleToolSchema,
    options,
  ) as ThrottleToolOptions<A>;
  return async function throttled(this: unknown, ...args: A): Promise<Awaited<R>> {
    const k = key !== undefined ? key(...args) : (currentUser() ?? ANONYMOUS_USER);
    const c = typeof cost === 'function' ? cost(...args) : cost;
    const s = signal?.(...args);
    await limiter.acquire(k, {
      ...(c !== undefined ? { cost: c } : {}),
      ...(maxWaitMs !== undefined ? { maxWaitMs } : {}),
      ...(s !== undefined ? { signal: s } : {}),
    });
    return await fn.apply(this, args);
  };
}

/** What a tool's `execute` receives besides its arguments. */
export interface ToolContext {
  /** The user the call counts against. */
  user: string;
  /** The model's id for this tool call, when run by {@link runToolCalls}. */
  toolCallId: string | undefined;
}

/** ToolConfig configures {@link defineTool}. */
export interface ToolConfig<S extends ToolSchema, R> {
  /** The function name the model calls (letters, digits, `_` and `-`, at most 64). */
  name: string;
  /** What the tool does, for the model. */
  description: string;
  /**
   * A zod schema of the arguments, from zod 3 (3.25+) or zod 4: the model's arguments are
   * validated with it (the app's own zod) before anything else. A zod 4 schema also gives the
   * definition's JSON Schema; a zod 3 schema needs `jsonSchema`.
   */
  parameters: S;
  /**
   * The JSON Schema of the arguments for `.definition`, used as given (less `$schema`).
   * @default made from `parameters` (zod 4); required for a zod 3 schema
   * @example zodToJsonSchema(parameters)   // zod-to-json-schema, for a zod 3 schema
   */
  jsonSchema?: Record<string, unknown>;
  /** Runs the tool with validated arguments. Its result is sent to the model (strings as is, else JSON). */
  execute: (args: ToolArgs<S>, context: ToolContext) => R;
  /** When given, each call waits for a token of this limiter after validation, before running. */
  limiter?: RateLimiter;
  /**
   * The limiter key of a call. @default the current user (so a limiter per tool gives per-user,
   * per-tool buckets, and tier policies see plain user ids)
   */
  key?: (args: ToolArgs<S>, user: string) => string;
  /** Tokens one call takes. @default 1 */
  cost?: number | ((args: ToolArgs<S>) => number);
  /** The longest a call may wait for its token, in ms. @default Infinity */
  maxWaitMs?: number;
  /** Sets `strict` in the definition (the schema must then follow OpenAI's strict rules). */
  strict?: boolean;
}

/** The Chat Completions function-tool definition: what goes in the request's `tools`. */
export interface FunctionToolDefinition {
  type: 'function';
  function: {
    name: string;
    description: string;
    parameters: Record<string, unknown>;
    strict?: boolean;
  };
}

/** Tool is a tool made by {@link defineTool}. */
export interface Tool<S extends ToolSchema = ToolSchema, R = unknown> {
  readonly name: string;
  readonly description: string;
  readonly parameters: S;
  /** The OpenAI function-tool definition, parameters as JSON Schema (made by zod 4, or `jsonSchema`). */
  readonly definition: FunctionToolDefinition;
  /**
   * call validates `args` (the model's JSON text, or a value), waits for the limiter, then runs
   * the tool. Invalid arguments reject with {@link InvalidToolArgumentsError} and nothing waits
   * or runs.
   */
  call(args: unknown, context?: Partial<ToolContext>): Promise<Awaited<R>>;
  /**
   * The tool in the shape `client.chat.completions.runTools({ tools: [...] })` takes: validation
   * in `parse`, the throttled tool in `function`.
   */
  readonly runnable: {
    type: 'function';
    function: {
      name: string;
      description: string;
      parameters: Record<string, unknown>;
      parse: (args: string) => ToolArgs<S>;
      function: (args: ToolArgs<S>) => Promise<Awaited<R>>;
    };
  };
}

const TOOL_NAME = /^[a-zA-Z0-9_-]{1,64}$/;

/**
 * defineTool makes a tool for the model: `.definition` goes in the request's `tools`, and
 * {@link runToolCalls} (or `.call`) runs it for the model's tool calls, validating the
 * arguments with `parameters` first, then waiting for `limiter` when given. `parameters` is a
 * zod 4 schema, or a zod 3 one (3.25+) with the arguments' JSON Schema as `jsonSchema`.
 *
 * @example
 * const weather = defineTool({
 *   name: 'get_weather',
 *   description: 'Current weather in a city',
 *   parameters: z.object({ city: z.string() }),
 *   execute: async ({ city }) => ({ city, tempC: 21 }),
 *   limiter: weatherLimiter,
 * })
 */
export function defineTool<S extends ToolSchema, R>(config: ToolConfig<S, R>): Tool<S, R> {
  const { name, description, parameters, jsonSchema, execute, limiter, key, cost, maxWaitMs, strict } = parse(
    'defineTool options',
    defineToolSchema,
    config,
  ) as ToolConfig<S, R>;
  const schema = toolJsonSchema('defineTool options', parameters, jsonSchema);
  const definition: FunctionToolDefinition = {
    type: 'function',
    function: { name, description, parameters: schema, ...(strict !== undefined ? { strict } : {}) },
  };

  const validate = (raw: unknown): ToolArgs<S> => parseToolArgs(name, parameters, raw) as ToolArgs<S>;

  const run = async (args: ToolArgs<S>, context: Partial<ToolContext> = {}): Promise<Awaited<R>> => {
    const user = context.user ?? currentUser() ?? ANONYMOUS_USER;
    if (limiter !== undefined) {
      const c = typeof cost === 'function' ? cost(args) : cost;
      await limiter.acquire(key !== undefined ? key(args, user) : user, {
        ...(c !== undefined ? { cost: c } : {}),
        ...(maxWaitMs !== undefined ? { maxWaitMs } : {}),
      });
    }
    return await execute(args, { user, toolCallId: context.toolCallId });
  };

  return {
    name,
    description,
    parameters,
    definition,
    call: (args, context) => {
      try {
        return run(validate(args), context);
      } catch (e) {
        return Promise.reject(e);
      }
    },
    runnable: {
      type: 'function',
      function: { name, description, parameters: schema, parse: validate, function: (args) => run(args) },
    },
  };
}

/** One tool call of an assistant message (`message.tool_calls[i]`). */
export interface ToolCallLike {
  id: string;
  type?: string;
  function?: { name: string; arguments: string };
}

/** The tool message {@link runToolCalls} makes for one tool call. */
export interface ToolMessage {
  role: 'tool';
  tool_call_id: string;
  content: string;
}

/** What {@link runToolCalls} can run: any tool made by {@link defineTool}. */
export interface RunnableTool {
  readonly name: string;
  call(args: unknown, context?: Partial<ToolContext>): Promise<unknown>;
}

/** Options of {@link runToolCalls}. */
export interface RunToolCallsOptions {
  /** The user the calls count against. @default the current user */
  user?: string;
}

/**
 * The `error` field of a tool message made from a failure, so the model (and code) can tell
 * what went wrong: an unknown tool, malformed JSON, invalid arguments, a throttle deadline, or
 * the tool throwing.
 */
export type ToolErrorType = 'unknown_tool' | 'invalid_json' | 'invalid_arguments' | 'rate_limited' | 'tool_error';

/**
 * runToolCalls runs the model's tool calls, all at once (each waits only for its own tool's
 * limiter), and resolves to one tool message per call, in the calls' order, ready to append to
 * the conversation. A failure becomes that call's message, `{"error":<type>,"message":...}`
 * ({@link ToolErrorType}): an unknown tool, malformed JSON or invalid arguments (the tool does
 * not run), a deadline, or the tool throwing. It never rejects for a tool's fault; only an
 * aborted wait (`AbortedError`) rejects, since the caller asked to stop.
 *
 * @example
 * const message = completion.choices[0].message
 * messages.push(message, ...(await runToolCalls(message.tool_calls, [weather, search])))
 */
export async function runToolCalls(
  toolCalls: readonly ToolCallLike[] | null | undefined,
  tools: readonly RunnableTool[],
  options: RunToolCallsOptions = {},
): Promise<ToolMessage[]> {
  if (toolCalls === null || toolCalls === undefined) return [];
  const byName = new Map<string, RunnableTool>();
  for (const t of tools) byName.set(t.name, t);
  const user = options.user ?? currentUser() ?? ANONYMOUS_USER;
  return Promise.all(
    toolCalls.map(async (tc): Promise<ToolMessage> => {
      const reply = (content: string): ToolMessage => ({ role: 'tool', tool_call_id: tc.id, content });
      const fail = (error: ToolErrorType, message: string) => reply(JSON.stringify({ error, message }));
      const fn = tc.function;
      if (fn === undefined || (tc.type !== undefined && tc.type !== 'function')) {
        return fail('unknown_tool', `tool call type ${JSON.stringify(tc.type)} is not supported`);
      }
      const tool = byName.get(fn.name);
      if (tool === undefined) {
        const known = [...byName.keys()].map((n) => JSON.stringify(n)).join(', ');
        return fail('unknown_tool', `no tool named ${JSON.stringify(fn.name)}; tools: ${known || 'none'}`);
      }
      try {
        return reply(toContent(await tool.call(fn.arguments, { user, toolCallId: tc.id })));
      } catch (e) {
        if (e instanceof InvalidToolArgumentsError) return fail(e.reason, e.message);
        if (isAbortedError(e)) throw e;
        if (isMaxWaitExceededError(e)) return fail('rate_limited', e.message);
        return fail('tool_error', e instanceof Error ? e.message : String(e));
      }
    }),
  );
}

function toContent(result: unknown): string {
  if (typeof result === 'string') return result;
  if (result === undefined) return '';
  try {
    return JSON.stringify(result) ?? String(result);
  } catch {
    return String(result);
  }
}

const received = (i: { input: unknown }) => `(received ${describe(i.input)})`;

// Duck-typed, not instanceof: a limiter of another copy of @tollgate/core works the same.
const limiterSchema = z.custom<RateLimiter>(
  (v) => typeof v === 'object' && v !== null && typeof (v as { acquire?: unknown }).acquire === 'function',
  { error: (i) => `must be a RateLimiter ${received(i)}` },
);

const fnSchema = z.custom<(...args: never[]) => unknown>((v) => typeof v === 'function', {
  error: (i) => `must be a function ${received(i)}`,
});

/** What throttleTool and defineTool share: how a call waits. */
const waiting = {
  key: fnSchema.optional(),
  cost: z
    .union([fnSchema, z.number()], { error: (i) => `must be a finite number > 0 or a function ${received(i)}` })
    .refine((c) => typeof c === 'function' || (Number.isFinite(c) && c > 0), {
      error: (i) => `must be a finite number > 0 or a function ${received(i)}`,
    })
    .optional(),
  maxWaitMs: z
    .number({ error: (i) => `must be a number of ms >= 0 ${received(i)}` })
    .refine((m) => m >= 0, { error: (i) => `must be a number of ms >= 0 ${received(i)}` })
    .optional(),
};

const throttleToolSchema = z.strictObject(
  {
    limiter: limiterSchema,
    ...waiting,
    signal: z
      .custom<(...args: never[]) => unknown>((v) => typeof v === 'function', {
        error: (i) => `must be a function of the arguments returning an AbortSignal ${received(i)}`,
      })
      .optional(),
  },
  { error: (i) => `must be an object with a limiter ${received(i)}` },
);

const defineToolSchema = z.strictObject(
  {
    name: z
      .string({ error: (i) => `must be 1-64 letters, digits, _ or - ${received(i)}` })
      .regex(TOOL_NAME, { error: (i) => `must be 1-64 letters, digits, _ or - ${received(i)}` }),
    description: z.string({ error: (i) => `must be a string ${received(i)}` }),
    // Duck-typed and never parsed by Tollgate's zod: the app's schema may come from zod 3 or 4.
    parameters: z.custom<ToolSchema>(isToolSchema, {
      error: (i) => `must be a zod schema (zod 3.25+ or 4) ${received(i)}`,
    }),
    jsonSchema: z
      .custom<Record<string, unknown>>((v) => typeof v === 'object' && v !== null && !Array.isArray(v), {
        error: (i) => `must be a JSON Schema object like { type: 'object', properties: {...} } ${received(i)}`,
      })
      .optional(),
    execute: fnSchema,
    limiter: limiterSchema.optional(),
    ...waiting,
    strict: z.boolean({ error: (i) => `must be a boolean ${received(i)}` }).optional(),
  },
  { error: (i) => `must be an object ${received(i)}` },
);

/** parse validates `input` with `schema`, or throws InvalidOptionsError naming the option, the constraint and the value. */
function parse<T>(what: string, schema: z.ZodType<T>, input: unknown): T {
  const parsed = schema.safeParse(input);
  const known = schema instanceof z.ZodObject ? Object.keys(schema.shape) : [];
  if (!parsed.success) throw toOptionsError(what, parsed.error, '', known);
  return parsed.data;
}

/** issue makes a ZodError of one custom issue (for an argument outside any schema). */
function issue(path: string[], message: string): z.ZodError {
  return new z.ZodError([{ code: 'custom', path, message, input: undefined }]);
}
