/**
 * The Anthropic examples' model endpoint: the real Anthropic API when ANTHROPIC_API_KEY is set,
 * otherwise the Messages API server in ../support/fake-anthropic.ts, started on loopback, so the
 * examples run offline.
 */
import Anthropic from '@anthropic-ai/sdk';
import { type FakeAnthropic, type FakeAnthropicOptions, startFakeAnthropic } from '../support/fake-anthropic.ts';

export interface AnthropicEndpoint {
  /** A plain Anthropic client (not yet throttled). */
  readonly anthropic: Anthropic;
  /** The model to ask: $ANTHROPIC_MODEL or claude-haiku-4-5. */
  readonly model: string;
  /** The loopback server when offline (for rateLimitNext and its request log), else undefined. */
  readonly fake: FakeAnthropic | undefined;
  /** Where requests go, for the examples' first line. */
  readonly where: string;
  /** Stops the loopback server, if one was started. */
  close(): Promise<void>;
}

export interface ConnectAnthropicOptions {
  /** The client's retries (each one is throttled too). @default 2 */
  maxRetries?: number;
  /** How the loopback server answers when offline. */
  fake?: FakeAnthropicOptions;
}

/** connectAnthropic picks the real API when ANTHROPIC_API_KEY is set, else starts the loopback server. */
export async function connectAnthropic(options: ConnectAnthropicOptions = {}): Promise<AnthropicEndpoint> {
  const maxRetries = options.maxRetries ?? 2;
  const model = process.env.ANTHROPIC_MODEL ?? 'claude-haiku-4-5';
  if (process.env.ANTHROPIC_API_KEY) {
    return {
      anthropic: new Anthropic({ maxRetries }),
      model,
      fake: undefined,
      where: `the Anthropic API (ANTHROPIC_API_KEY is set; model ${model})`,
      close: async () => {},
    };
  }
  const fake = await startFakeAnthropic(options.fake);
  return {
    anthropic: new Anthropic({ apiKey: 'offline', baseURL: fake.baseURL, maxRetries }),
    model,
    fake,
    where: `a fake Anthropic server on ${fake.baseURL}`,
    close: () => fake.close(),
  };
}
