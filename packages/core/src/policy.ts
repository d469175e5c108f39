import { z } from 'zod';
import { InvalidOptionsError } from './errors.js';

/**
 * Duration: milliseconds as a number, or a string such as '250ms', '1s', '1.5m', '1h', '1d'.
 * Units in any case and the common spellings are accepted, with or without a space: '1S',
 * '2 sec', '1min', '1 minute', '1hr', '3 hours', '1 day'. Any string type-checks (durations often
 * come from config files); it is validated at runtime.
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
   * The refill period: ms as a number, or '500ms' / '1s' / '1m' / '1h' / '1d' (also '1 min',
   * '2 sec', '1hr', any case: see {@link Duration}).
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

/** Every unit spelling accepted (lower case), in ms. */
const UNIT_MS: Readonly<Record<string, number>> = {
  ms: 1,
  msec: 1,
  msecs: 1,
  millisecond: 1,
  milliseconds: 1,
  s: 1000,
  sec: 1000,
  secs: 1000,
  second: 1000,
  seconds: 1000,
  m: 60_000,
  min: 60_000,
  mins: 60_000,
  minute: 60_000,
  minutes: 60_000,
  h: 3_600_000,
  hr: 3_600_000,
  hrs: 3_600_000,
  hour: 3_600_000,
  hours: 3_600_000,
  d: 86_400_000,
  day: 86_400_000,
  days: 86_400_000,
};
const DURATION_RE = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z]+)\s*$/i;

/** DURATION_FORMS says what a duration may be, for error messages. */
export const DURATION_FORMS =
  "ms as a number, or a number and a unit: '250ms', '1s', '1.5m', '1h', '1d' (ms / s, sec, second / m, min, minute / h, hr, hour / d, day; plurals, any case, a space allowed: '2 sec', '1 Min')";

/** parseDuration turns a {@link Duration} into ms, or returns undefined when it is not one. */
export function parseDuration(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value > 0 ? value : undefined;
  if (typeof value !== 'string') return undefined;
  const m = DURATION_RE.exec(value);
  if (!m) return undefined;
  const unit = (m[2] as string).toLowerCase();
  if (!Object.hasOwn(UNIT_MS, unit)) return undefined;
  const ms = Number(m[1]) * (UNIT_MS[unit] as number);
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
        error: (i) => `must be a duration > 0: ${DURATION_FORMS} (received ${describe(i.input)})`,
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

/**
 * toOptionsError turns zod issues into one message naming each option (each path after
 * `prefix`). An unknown option is told the nearest of `known`, the options the schema accepts.
 */
export function toOptionsError(
  what: string,
  error: z.ZodError,
  prefix = '',
  known: readonly string[] = [],
): InvalidOptionsError {
  const issues = error.issues.map((issue) => {
    const path = prefix + issue.path.map(String).join('.');
    let message = issue.message;
    if (issue.code === 'invalid_type' && issue.expected === 'nonoptional') message = 'is required';
    if (issue.code === 'unrecognized_keys') {
      message = `unknown option(s) ${issue.keys.map((k) => withSuggestion(k, known)).join(', ')}`;
    }
    return { path: path.endsWith('.') ? path.slice(0, -1) : path || '(options)', message };
  });
  const text = issues.map((i) => (i.path === what ? i.message : `${i.path} ${i.message}`)).join('; ');
  return new InvalidOptionsError(`invalid ${what}: ${text}`, issues);
}

/** Names users reach for, and the option they mean. */
const ALIASES: Readonly<Record<string, string>> = {
  period: 'per',
  interval: 'per',
  window: 'per',
  duration: 'per',
  every: 'per',
  burst: 'capacity',
  max: 'capacity',
  size: 'capacity',
  limit: 'rate',
  tokens: 'rate',
  points: 'rate',
};

/** `key — did you mean x?`, x the known option nearest `key` (an alias, else by edit distance). */
function withSuggestion(key: string, known: readonly string[]): string {
  if (known.length === 0) return key;
  const lower = key.toLowerCase();
  const alias = ALIASES[lower];
  let best = alias !== undefined && Object.hasOwn(ALIASES, lower) && known.includes(alias) ? alias : undefined;
  if (best === undefined) {
    let bestD = Number.POSITIVE_INFINITY;
    for (const k of known) {
      const d = distance(lower, k.toLowerCase());
      if (d < bestD) {
        bestD = d;
        best = k;
      }
    }
  }
  return `${key} — did you mean ${best}?`;
}

/** The Levenshtein distance of `a` and `b`, a prefix of the other counting as near. */
function distance(a: string, b: string): number {
  if (a.startsWith(b) || b.startsWith(a)) return Math.abs(a.length - b.length) / 2;
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(
        (prev[j] as number) + 1,
        (cur[j - 1] as number) + 1,
        (prev[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    prev = cur;
  }
  return prev[b.length] as number;
}

/** POLICY_OPTIONS are the options of a {@link PolicyInput}. */
export const POLICY_OPTIONS: readonly string[] = ['rate', 'per', 'capacity'];

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
  if (!parsed.success) throw toOptionsError(optionPath, parsed.error, `${optionPath}.`, POLICY_OPTIONS);
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
