/**
 * The OpenAI client class the agent tests run against: openai 6 by default, openai 5 when
 * TOLLGATE_OPENAI=5, openai 7 when TOLLGATE_OPENAI=7 (the Node 24 leg of .ci/run). All are real
 * clients talking HTTP.
 */
import OpenAI6, { AzureOpenAI as Azure6 } from 'openai';
import { bedrock as bedrock6 } from 'openai/providers/bedrock';
import OpenAI5, { AzureOpenAI as Azure5 } from 'openai5';
import OpenAI7, { AzureOpenAI as Azure7 } from 'openai7';
import { bedrock as bedrock7 } from 'openai7/providers/bedrock';

const CLASSES = { 5: OpenAI5, 6: OpenAI6, 7: OpenAI7 } as const;
const AZURE = { 5: Azure5, 6: Azure6, 7: Azure7 } as const;
const BEDROCK = { 5: undefined, 6: bedrock6, 7: bedrock7 } as const;
const asked = process.env.TOLLGATE_OPENAI ?? '6';
if (!Object.hasOwn(CLASSES, asked)) {
  throw new Error(`TOLLGATE_OPENAI=${asked}: the agent tests run with openai 5, 6 or 7 (unset means 6)`);
}
export const OPENAI_MAJOR = Number(asked) as keyof typeof CLASSES;

/** OpenAI is the client class under test, typed as openai 6 (their public surfaces match). */
export const OpenAI = CLASSES[OPENAI_MAJOR] as unknown as typeof OpenAI6;
export type OpenAI = OpenAI6;

/** AzureOpenAI of the same major, typed as openai 6's. */
export const AzureOpenAI = AZURE[OPENAI_MAJOR] as unknown as typeof Azure6;

/**
 * bedrock is the package's own Amazon Bedrock provider (`openai/providers/bedrock`, bearer auth)
 * of the same major; undefined on openai 5, which has no providers.
 */
export const bedrock = BEDROCK[OPENAI_MAJOR] as typeof bedrock6 | undefined;

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
