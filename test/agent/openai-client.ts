/**
 * The OpenAI client class the agent tests run against: openai 6 by default, openai 5 when
 * TOLLGATE_OPENAI=5, openai 7 when TOLLGATE_OPENAI=7 (the Node 24 leg of .ci/run). All are real
 * clients talking HTTP.
 */
import OpenAI6 from 'openai';
import OpenAI5 from 'openai5';
import OpenAI7 from 'openai7';

const CLASSES = { 5: OpenAI5, 6: OpenAI6, 7: OpenAI7 } as const;
const asked = process.env.TOLLGATE_OPENAI ?? '6';
if (!Object.hasOwn(CLASSES, asked)) {
  throw new Error(`TOLLGATE_OPENAI=${asked}: the agent tests run with openai 5, 6 or 7 (unset means 6)`);
}
export const OPENAI_MAJOR = Number(asked) as keyof typeof CLASSES;

/** OpenAI is the client class under test, typed as openai 6 (their public surfaces match). */
export const OpenAI = CLASSES[OPENAI_MAJOR] as unknown as typeof OpenAI6;
export type OpenAI = OpenAI6;

/**
 * finalText is the text of a streamed response's final response (`responses.stream(…)
 * .finalResponse()`): its `output_text`, except on openai 5, which leaves that field off streamed
 * final responses (fixed in openai 6, openai-node #1681): there it is joined from the output items.
 */
export function finalText(r: OpenAI6.Responses.Response): string {
  if (OPENAI_MAJOR !== 5) return r.output_text;
  return r.output
    .flatMap((item) => (item.type === 'message' ? item.content : []))
    .map((c) => (c.type === 'output_text' ? c.text : ''))
    .join('');
}

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
