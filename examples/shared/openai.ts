/**
 * The examples' model endpoint: the real OpenAI API when OPENAI_API_KEY is set, otherwise the
 * OpenAI-compatible server in ../support/fake-openai.ts, started on loopback, so every example
 * runs offline.
 */
import OpenAI from 'openai';
import { type FakeOpenAI, type FakeOpenAIOptions, startFakeOpenAI } from '../support/fake-openai.ts';

export interface ModelEndpoint {
  /** A plain OpenAI client (not yet throttled). */
  readonly openai: OpenAI;
  /** The model to ask: $OPENAI_MODEL or gpt-4o-mini. */
  readonly model: string;
  /** The loopback server when offline (for failNext and its request log), else undefined. */
  readonly fake: FakeOpenAI | undefined;
  /** Where requests go, for the examples' first line. */
  readonly where: string;
  /** Stops the loopback server, if one was started. */
  close(): Promise<void>;
}

export interface ConnectOptions {
  /** The client's retries (each one is throttled too). @default 2 */
  maxRetries?: number;
  /** How the loopback server answers when offline. */
  fake?: FakeOpenAIOptions;
}

/** connectOpenAI picks the real API when OPENAI_API_KEY is set, else starts the loopback server. */
export async function connectOpenAI(options: ConnectOptions = {}): Promise<ModelEndpoint> {
  const maxRetries = options.maxRetries ?? 2;
  const model = process.env.OPENAI_MODEL ?? 'gpt-4o-mini';
  if (process.env.OPENAI_API_KEY) {
    return {
      openai: new OpenAI({ maxRetries }),
      model,
      fake: undefined,
      where: `the OpenAI API (OPENAI_API_KEY is set; model ${model})`,
      close: async () => {},
    };
  }
  const fake = await startFakeOpenAI(options.fake);
  return {
    openai: new OpenAI({ apiKey: 'offline', baseURL: fake.baseURL, maxRetries }),
    model,
    fake,
    where: `a fake OpenAI server on ${fake.baseURL}`,
    close: () => fake.close(),
  };
}
