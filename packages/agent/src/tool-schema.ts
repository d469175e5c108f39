/**
 * The arguments of an agent tool: the app's zod schema (zod 3 or 4), its JSON Schema for the
 * model, and the validation of the model's arguments.
 */
import { InvalidArgumentError, InvalidOptionsError } from '@tollgate/core';
import { describe, z } from '@tollgate/core/internal';

/**
 * ToolSchema is what {@link defineTool} takes as `parameters`: a zod schema from zod 3 (3.25 or
 * later) or zod 4, whichever the app installed. It is read only through what both majors share:
 * the Standard Schema `~standard` property (for the argument types) and `safeParse` (to validate
 * the model's arguments), so the app's own zod always does the validating.
 */
export interface ToolSchema<Output = unknown> {
  readonly '~standard': {
    readonly vendor: string;
    readonly types?: { readonly input: unknown; readonly output: Output } | undefined;
  };
  safeParse(value: unknown): ToolSchemaResult;
}

/** What {@link ToolSchema}'s `safeParse` returns, as zod 3 and zod 4 both do. */
export type ToolSchemaResult =
  | { readonly success: true; readonly data: unknown }
  | {
      readonly success: false;
      readonly error: {
        readonly issues: readonly { readonly path: readonly PropertyKey[]; readonly message: string }[];
      };
    };

/** ToolArgs is the type a tool's `execute` receives: the output type of its schema. */
export type ToolArgs<S extends ToolSchema> = NonNullable<S['~standard']['types']>['output'];

/** isToolSchema tells whether `value` can validate a tool's arguments (it has `safeParse`). */
export function isToolSchema(value: unknown): value is ToolSchema {
  return (
    typeof value === 'object' && value !== null && typeof (value as { safeParse?: unknown }).safeParse === 'function'
  );
}

/**
 * InvalidToolArgumentsError: the model's arguments are not JSON (`reason` `'invalid_json'`), or
 * do not match the tool's schema (`'invalid_arguments'`).
 */
export class InvalidToolArgumentsError extends InvalidArgumentError {
  /** The tool's name. */
  readonly tool: string;
  /** What is wrong with the arguments: not JSON at all, or JSON the schema refuses. */
  readonly reason: 'invalid_json' | 'invalid_arguments';
  /** What is wrong, one entry per problem (`path` is '' for the whole value). */
  readonly issues: readonly { path: string; message: string }[];

  constructor(
    tool: string,
    issues: readonly { path: string; message: string }[],
    reason: 'invalid_json' | 'invalid_arguments' = 'invalid_arguments',
  ) {
    const text = issues.map((i) => (i.path === '' ? i.message : `${i.path}: ${i.message}`)).join('; ');
    const what = reason === 'invalid_json' ? 'malformed JSON arguments' : 'invalid arguments';
    super(`${what} for tool ${JSON.stringify(tool)}: ${text}`);
    this.tool = tool;
    this.reason = reason;
    this.issues = issues;
  }
}

/**
 * parseToolArgs validates a tool call's arguments (the model's JSON text, or a value; empty text
 * is `{}`) with the tool's schema and returns the schema's output. Throws
 * {@link InvalidToolArgumentsError} naming each field the schema refuses.
 */
export function parseToolArgs(tool: string, schema: ToolSchema, raw: unknown): unknown {
  let value = raw;
  if (typeof raw === 'string') {
    try {
      value = raw.trim() === '' ? {} : JSON.parse(raw);
    } catch (e) {
      throw new InvalidToolArgumentsError(
        tool,
        [{ path: '', message: `not valid JSON (${(e as Error).message})` }],
        'invalid_json',
      );
    }
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    throw new InvalidToolArgumentsError(
      tool,
      parsed.error.issues.map((i) => ({ path: i.path.map(String).join('.'), message: i.message })),
    );
  }
  return parsed.data;
}

/** The Standard JSON Schema converter zod 4.2+ puts on `~standard` (absent from older zod). */
interface JsonSchemaConverter {
  input(options: { target: string }): Record<string, unknown>;
}

/**
 * toolJsonSchema returns the JSON Schema of a tool's arguments (the schema's input type, without
 * `$schema`), for the definition sent to the model: `jsonSchema` when the app gives one, else the
 * schema's own converter (zod 4.2+, Standard JSON Schema), else zod 4's `toJSONSchema` for an
 * older zod 4 schema (zod 4.0, 4.1, or `zod/v4` of zod 3.25). zod 3 schemas (`import { z } from
 * 'zod'` on zod 3) carry no converter: they need `jsonSchema`.
 *
 * Throws InvalidOptionsError naming `parameters` for a zod 3 schema without `jsonSchema`, or a
 * schema JSON Schema cannot describe (a `z.date()`, a transform's output...).
 */
export function toolJsonSchema(
  what: string,
  parameters: ToolSchema,
  jsonSchema: Record<string, unknown> | undefined,
): Record<string, unknown> {
  const refuse = (message: string) =>
    new InvalidOptionsError(`invalid ${what}: parameters ${message}`, [{ path: 'parameters', message }]);
  let schema: Record<string, unknown>;
  if (jsonSchema !== undefined) {
    schema = jsonSchema;
  } else {
    const converter = (parameters['~standard'] as { jsonSchema?: JsonSchemaConverter } | undefined)?.jsonSchema;
    const isZod4 = '_zod' in parameters;
    if (typeof converter?.input !== 'function' && !isZod4) {
      throw refuse(
        `has no JSON Schema converter (zod 3 schemas have none): pass the JSON Schema of the arguments as jsonSchema (zodToJsonSchema(parameters) from zod-to-json-schema, say), or write the schema with zod 4 (import { z } from 'zod/v4', which zod 3.25 includes) (received ${vendorOf(parameters)})`,
      );
    }
    try {
      schema =
        typeof converter?.input === 'function'
          ? converter.input({ target: 'draft-2020-12' })
          : (z.toJSONSchema(parameters as unknown as z.ZodType, { io: 'input', metadata: ownMetadata }) as Record<
              string,
              unknown
            >);
    } catch (e) {
      throw refuse(
        `cannot be written as JSON Schema (${(e as Error).message}): pass jsonSchema, or describe the arguments with types JSON can carry`,
      );
    }
  }
  // The definition is a fragment of a request, not a standalone document.
  const { $schema: _drop, ...rest } = schema;
  return rest;
}

/**
 * The metadata (`.describe()`, `.meta()`) of an app's schema, for Tollgate's zod's toJSONSchema.
 * zod from 4.1.13 shares one registry across copies; older zod 4 (and zod/v4 of zod 3.25) keeps it
 * in its own copy's registry, which only the schema's own `.meta()` reads: without this, the
 * descriptions the model reads would silently vanish.
 */
const ownMetadata = {
  get(schema: unknown): Record<string, unknown> | undefined {
    const shared = z.globalRegistry.get(schema as z.ZodType);
    if (shared !== undefined) return shared;
    const meta = (schema as { meta?: unknown }).meta;
    const own: unknown = typeof meta === 'function' ? meta.call(schema) : undefined;
    return typeof own === 'object' && own !== null ? (own as Record<string, unknown>) : undefined;
  },
} as unknown as typeof z.globalRegistry;

function vendorOf(schema: ToolSchema): string {
  const vendor = (schema['~standard'] as { vendor?: unknown } | undefined)?.vendor;
  if (vendor === 'zod') return '_def' in schema ? 'a zod 3 schema' : 'a zod schema';
  return typeof vendor === 'string' ? `a ${vendor} schema` : describe(schema);
}
