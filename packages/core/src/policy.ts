import { z } from 'zod';
import { InvalidOptionsError } from './errors.js';

/**
 * Duration: milliseconds as a number, or a string such as '250ms', '1s', '1.5m', '1h', '1d'.
 * Any string type-checks (durations often come from config files); it is validated at runtime.
 */
export type Duration = number | `${number}${'ms' | 's' | 'm' | 'h' | 'd'}` | (string & {});

/**
 * PolicyInput describes a token bucket: `rate` tokens are added every `per`, up to `capacity`.
 * A new (or idle, expired) bucket starts full.
 *
 * @example { rate: 10, per: '1s' }                 // 10 per second, bursts of 10
 * @example { rate: 60, per: '1m', capacity: 100 }  // 1 per second on average, bursts of 100
 */
export interface PolicyInput {
  /** Tokens added every `per`. A finite number > 0 (fractions allowed). */
  rate: number;
  /**
   * The refill period: ms as a number, or '500ms' / '1s' / '1m' / '1h' / '1d'.
   * @default '1s'
   */
  per?: Duration;
  /**
   * Most tokens the bucket holds: the largest burst, and the largest cost one call may have.
   * @default rate
   */
  capacity?: number;
}

/** Policy is a validated PolicyInput in the units the bucket math uses. */
export interface Policy {
  /** Tokens added every `perMs`. */
  readonly rate: number;
  /** The refill period in ms. */
  readonly perMs: number;
  /** Most tokens the bucket holds. */
  readonly capacity: number;
  /** Tokens added per ms (`rate / perMs`), the one number the math uses. */
  readonly ratePerMs: number;
}

const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
const DURATION_RE = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)\s*$/;

/** parseDuration turns a {@link Duration} into ms, or returns undefined when it is not one. */
export function parseDuration(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value > 0 ? value : undefined;
  if (typeof value !== 'string') return undefined;
  const m = DURATION_RE.exec(value);
  if (!m) return undefined;
  const ms = Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS];
  return Number.isFinite(ms) && ms > 0 ? ms : undefined;
}

/** Largest rate, capacity and cost accepted: beyond it doubles lose whole tokens. */
export const MAX_TOKENS = 1e15;

/** Longest time, in ms, an empty bucket may take to refill (~317 years; the Redis TTL's cap). */
export const MAX_REFILL_MS = 1e13;

const policySchema = z
  .object({
    rate: z
      .number({ error: (i) => `must be a number (received ${describe(i.input)})` })
      .refine((v) => Number.isFinite(v) && v > 0 && v <= MAX_TOKENS, {
        error: (i) => `must be a finite number > 0 and <= ${MAX_TOKENS} (received ${describe(i.input)})`,
      }),
    per: z
      .union([z.number(), z.string()], {
        error: (i) => `must be ms as a number or a string like '1s' (received ${describe(i.input)})`,
      })
      .optional()
      .refine((v) => v === undefined || parseDuration(v) !== undefined, {
        error: (i) =>
          `must be a duration > 0: ms as a number, or '500ms' / '1s' / '1m' / '1h' / '1d' (received ${describe(i.input)})`,
      }),
    capacity: z
      .number({ error: (i) => `must be a number (received ${describe(i.input)})` })
      .refine((v) => Number.isFinite(v) && v > 0 && v <= MAX_TOKENS, {
        error: (i) => `must be a finite number > 0 and <= ${MAX_TOKENS} (received ${describe(i.input)})`,
      })
      .optional(),
  })
  .strict();

/** describe renders a received value for an error message. */
export function describe(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 37)}...` : value);
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return String(value);
  if (value === undefined) return 'undefined';
  if (value === null) return 'null';
  if (typeof value === 'function') return 'a function';
  if (Array.isArray(value)) return 'an array';
  return typeof value;
}

/** formatZodError turns zod issues into one message naming each option (with a prefix). */
export function toOptionsError(what: string, error: z.ZodError, prefix = ''): InvalidOptionsError {
  const issues = error.issues.map((issue) => {
    const path = prefix + issue.path.map(String).join('.');
    let message = issue.message;
    if (issue.code === 'unrecognized_keys') message = `unknown option(s) ${issue.keys.join(', ')}`;
    return { path: path || '(options)', message };
  });
  const text = issues.map((i) => `${i.path} ${i.message}`).join('; ');
  return new InvalidOptionsError(`invalid ${what}: ${text}`, issues);
}

/**
 * normalizePolicy validates a {@link PolicyInput} and returns its {@link Policy}.
 * Throws {@link InvalidOptionsError} naming the option, the constraint and the value received.
 */
export function normalizePolicy(input: unknown, optionPath = 'policy'): Policy {
  if (typeof input !== 'object' || input === null) {
    throw new InvalidOptionsError(
      `invalid ${optionPath}: must be an object like { rate: 10, per: '1s' } (received ${describe(input)})`,
      [{ path: optionPath, message: `must be an object (received ${describe(input)})` }],
    );
  }
  const parsed = policySchema.safeParse(input);
  if (!parsed.success) throw toOptionsError(optionPath, parsed.error, `${optionPath}.`);
  const { rate, per, capacity } = parsed.data;
  const perMs = per === undefined ? 1000 : (parseDuration(per) as number);
  const ratePerMs = rate / perMs;
  if (!(ratePerMs > 0) || !Number.isFinite(ratePerMs)) {
    throw new InvalidOptionsError(
      `invalid ${optionPath}: rate / per must be a finite rate > 0 tokens per ms (received ${rate} per ${perMs} ms)`,
      [{ path: `${optionPath}.rate`, message: 'rate / per is not a usable rate' }],
    );
  }
  const cap = capacity ?? rate;
  // Redis expires an idle bucket when it would be full (SET … PX, at most MAX_REFILL_MS): a bucket
  // taking longer to refill would come back full too early.
  if (cap / ratePerMs > MAX_REFILL_MS) {
    throw new InvalidOptionsError(
      `invalid ${optionPath}: an empty bucket must refill within ${MAX_REFILL_MS} ms (~317 years); capacity ${cap} at ${rate} per ${perMs} ms takes ${cap / ratePerMs} ms`,
      [{ path: `${optionPath}.rate`, message: `capacity / (rate / per) must be <= ${MAX_REFILL_MS} ms` }],
    );
  }
  return Object.freeze({ rate, perMs, capacity: cap, ratePerMs });
}
