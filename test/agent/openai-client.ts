/**
 * The OpenAI client class the agent tests run against: openai 6 by default, openai 7 when
 * TOLLGATE_OPENAI=7 (the Node 24 leg of .ci/run). Both are real clients talking HTTP.
 */
import OpenAI6 from 'openai';
import OpenAI7 from 'openai7';

export const OPENAI_MAJOR = process.env.TOLLGATE_OPENAI === '7' ? 7 : 6;

/** OpenAI is the client class under test, typed as openai 6 (their public surfaces match). */
export const OpenAI: typeof OpenAI6 = OPENAI_MAJOR === 7 ? (OpenAI7 as unknown as typeof OpenAI6) : OpenAI6;
export type OpenAI = OpenAI6;

/** newClient makes a client for the fake server: fast retries, short timeout. */
export function newClient(baseURL: string, options: Partial<ConstructorParameters<typeof OpenAI6>[0]> = {}): OpenAI6 {
  return new OpenAI({
    baseURL,
    apiKey: 'test-key',
    maxRetries: 2,
    timeout: 10_000,
    ...options,
  });
}
