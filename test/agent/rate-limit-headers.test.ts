import { describe, expect, test } from 'vitest';
import {
  type HeadersLike,
  parseResetDuration,
  parseResetTimestamp,
  readAnthropicRateLimits,
  readOpenAIRateLimits,
  readRetryAfterMs,
} from '../../packages/agent/src/rate-limit-headers.ts';

const NOW = Date.parse('2026-01-02T03:04:05.000Z');

describe('OpenAI reset durations read as ms', () => {
  test.each([
    ['0s', 0],
    ['6ms', 6],
    ['12ms', 12],
    ['120ms', 120],
    ['1s', 1000],
    ['1.5s', 1500],
    ['59.001s', 59_001],
    ['6m0s', 360_000],
    ['1m30.5s', 90_500],
    ['1h2m3s', 3_723_000],
    ['1h0m0s', 3_600_000],
    ['250us', 0.25],
    ['500µs', 0.5],
    ['1500ns', 0.0015],
    ['2', 2000], // a bare number: seconds
    ['0.5', 500],
  ])('%s is %d ms', (text, ms) => {
    expect(parseResetDuration(text)).toBeCloseTo(ms, 9);
  });

  test.each([
    '-1',
    '-5s',
    '',
    'soon',
    '1x',
    's',
    '1m 2s',
    'NaN',
    'Infinity',
    '1e3',
    '1s1',
    'ms',
  ])('%j is ignored', (text) => {
    expect(parseResetDuration(text === '' ? undefined : text)).toBeUndefined();
  });
});

describe('Anthropic reset timestamps read as ms after now', () => {
  test.each([
    ['2026-01-02T03:04:06Z', 1000],
    ['2026-01-02T03:04:05.250Z', 250],
    ['2026-01-02T04:04:05+01:00', 0], // the same instant in another zone
    ['2026-01-02T03:05:05z', 60_000],
    ['2026-01-02T03:04:00Z', 0], // already past: full now
  ])('%s is %d ms', (text, ms) => {
    expect(parseResetTimestamp(text, NOW)).toBe(ms);
  });

  test.each([
    '5',
    '-1',
    'tomorrow',
    '2026-01-02',
    '2026-13-45T99:99:99Z',
    'Fri, 02 Jan 2026 03:04:06 GMT',
  ])('%j is ignored', (text) => {
    expect(parseResetTimestamp(text, NOW)).toBeUndefined();
  });
});

describe('retry-after-ms, else retry-after (seconds or an HTTP date)', () => {
  test.each<[HeadersLike, number | undefined]>([
    [{ 'retry-after-ms': '1500' }, 1500],
    [{ 'retry-after-ms': '1500', 'retry-after': '9' }, 1500],
    [{ 'retry-after-ms': '12.5' }, 12.5],
    [{ 'retry-after': '2' }, 2000],
    [{ 'retry-after': '0' }, 0],
    [{ 'retry-after': 'Fri, 02 Jan 2026 03:04:08 GMT' }, 3000],
    [{ 'retry-after': 'Fri, 02 Jan 2026 03:04:00 GMT' }, 0],
    [{ 'retry-after-ms': '-1', 'retry-after': '3' }, 3000], // a nonsense ms header falls through
    [{ 'retry-after-ms': 'abc' }, undefined],
    [{ 'retry-after': '-1' }, undefined],
    [{ 'retry-after': 'later' }, undefined],
    [{ 'retry-after': '' }, undefined],
    [{ 'Retry-After': '4' }, 4000], // any case in a plain record
    [{ 'retry-after': ['5', '6'] }, 5000], // node:http arrays: the first
    [{ 'retry-after': 7 }, 7000],
    [{}, undefined],
  ])('%j → %s', (headers, ms) => {
    expect(readRetryAfterMs(headers, NOW)).toBe(ms);
  });
});

describe('OpenAI rate-limit headers read per dimension', () => {
  test('a full set from a 2xx', () => {
    const h = new Headers({
      'x-ratelimit-limit-requests': '10000',
      'x-ratelimit-limit-tokens': '200000',
      'x-ratelimit-remaining-requests': '9999',
      'x-ratelimit-remaining-tokens': '199200',
      'x-ratelimit-reset-requests': '6ms',
      'x-ratelimit-reset-tokens': '240ms',
    });
    expect(readOpenAIRateLimits(h, NOW)).toEqual({
      requests: { limit: 10_000, remaining: 9999, resetAfterMs: 6 },
      llmTokens: { limit: 200_000, remaining: 199_200, resetAfterMs: 240 },
    });
  });

  test('a 429 with retry headers', () => {
    const h = new Headers({
      'x-ratelimit-limit-requests': '10',
      'x-ratelimit-remaining-requests': '0',
      'x-ratelimit-reset-requests': '6m0s',
      'retry-after-ms': '6000',
      'retry-after': '6',
    });
    expect(readOpenAIRateLimits(h, NOW)).toEqual({
      requests: { limit: 10, remaining: 0, resetAfterMs: 360_000 },
      retryAfterMs: 6000,
    });
  });

  test.each<[string, Record<string, string>, object]>([
    [
      "Azure's -1 everywhere: nothing",
      {
        'x-ratelimit-limit-requests': '-1',
        'x-ratelimit-remaining-requests': '-1',
        'x-ratelimit-reset-requests': '-1',
        'x-ratelimit-limit-tokens': '-1',
        'x-ratelimit-remaining-tokens': '-1',
        'x-ratelimit-reset-tokens': '-1',
      },
      {},
    ],
    [
      'Azure: remaining only',
      { 'x-ratelimit-remaining-requests': '99', 'x-ratelimit-remaining-tokens': '1000' },
      { requests: { remaining: 99 }, llmTokens: { remaining: 1000 } },
    ],
    [
      'garbage values are dropped one by one',
      {
        'x-ratelimit-limit-requests': 'NaN',
        'x-ratelimit-remaining-requests': '5',
        'x-ratelimit-reset-requests': 'soon',
        'x-ratelimit-limit-tokens': '0',
        'x-ratelimit-remaining-tokens': '',
        'x-ratelimit-reset-tokens': '1.5s',
      },
      { requests: { remaining: 5 }, llmTokens: { resetAfterMs: 1500 } },
    ],
    [
      'usage-based tokens leave less: they win',
      {
        'x-ratelimit-limit-tokens': '1000',
        'x-ratelimit-remaining-tokens': '900',
        'x-ratelimit-reset-tokens': '6s',
        'x-ratelimit-limit-tokens_usage_based': '1000',
        'x-ratelimit-remaining-tokens_usage_based': '300',
        'x-ratelimit-reset-tokens_usage_based': '42s',
      },
      { llmTokens: { limit: 1000, remaining: 300, resetAfterMs: 42_000 } },
    ],
    [
      'usage-based tokens alone',
      { 'x-ratelimit-remaining-tokens_usage_based': '77' },
      { llmTokens: { remaining: 77 } },
    ],
    ['no headers at all', {}, {}],
  ])('%s', (_name, headers, expected) => {
    expect(readOpenAIRateLimits(headers, NOW)).toEqual(expected);
  });
});

describe('Anthropic rate-limit headers read per dimension', () => {
  test('a full set: requests, tokens, input and output tokens', () => {
    const h = new Headers({
      'anthropic-ratelimit-requests-limit': '50',
      'anthropic-ratelimit-requests-remaining': '49',
      'anthropic-ratelimit-requests-reset': '2026-01-02T03:04:06.200Z',
      'anthropic-ratelimit-tokens-limit': '8000',
      'anthropic-ratelimit-tokens-remaining': '7000',
      'anthropic-ratelimit-tokens-reset': '2026-01-02T03:04:12Z',
      'anthropic-ratelimit-input-tokens-limit': '40000',
      'anthropic-ratelimit-input-tokens-remaining': '39000',
      'anthropic-ratelimit-input-tokens-reset': '2026-01-02T03:04:07Z',
      'anthropic-ratelimit-output-tokens-limit': '8000',
      'anthropic-ratelimit-output-tokens-remaining': '7000',
      'anthropic-ratelimit-output-tokens-reset': '2026-01-02T03:04:12Z',
      'retry-after': '3',
    });
    expect(readAnthropicRateLimits(h, NOW)).toEqual({
      requests: { limit: 50, remaining: 49, resetAfterMs: 1200 },
      llmTokens: { limit: 8000, remaining: 7000, resetAfterMs: 7000 },
      inputLLMTokens: { limit: 40_000, remaining: 39_000, resetAfterMs: 2000 },
      outputLLMTokens: { limit: 8000, remaining: 7000, resetAfterMs: 7000 },
      retryAfterMs: 3000,
    });
  });

  test.each<[string, Record<string, string>, object]>([
    [
      'a duration where a timestamp belongs is ignored',
      { 'anthropic-ratelimit-requests-reset': '6s', 'anthropic-ratelimit-requests-remaining': '3' },
      { requests: { remaining: 3 } },
    ],
    [
      'negative and empty values are ignored',
      { 'anthropic-ratelimit-tokens-limit': '-1', 'anthropic-ratelimit-tokens-remaining': ' ' },
      {},
    ],
    ['OpenAI headers are not read as Anthropic ones', { 'x-ratelimit-remaining-requests': '5' }, {}],
  ])('%s', (_name, headers, expected) => {
    expect(readAnthropicRateLimits(headers, NOW)).toEqual(expected);
  });
});
