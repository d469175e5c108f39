/**
 * The HTTP plumbing the loopback providers share (node:http only): listen on 127.0.0.1, read a
 * JSON body, answer JSON or server-sent events.
 */
import { type IncomingMessage, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/** Parsed JSON from the wire: the servers read whatever shape the client sent. */
// biome-ignore lint/suspicious/noExplicitAny: request bodies are untyped JSON
export type Json = any;

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A server listening on loopback. */
export interface Loopback {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** Stops the server and closes its connections. */
  close(): Promise<void>;
}

/**
 * listenLoopback serves `handle` on 127.0.0.1 (`port` 0: a free one). `handle` gets the raw body;
 * when it throws, `onError` answers (or the connection is cut if the answer had started).
 */
export async function listenLoopback(
  port: number,
  handle: (req: IncomingMessage, res: ServerResponse, raw: string) => Promise<void>,
  onError: (res: ServerResponse, err: unknown) => void,
): Promise<Loopback> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      void handle(req, res, Buffer.concat(chunks).toString('utf8')).catch((err: unknown) => {
        if (!res.headersSent) onError(res, err);
        else res.destroy();
      });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  const { port: bound } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${bound}`,
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

/** parseJSON parses a request body; undefined when empty or not JSON. */
export function parseJSON(raw: string): Json {
  try {
    return raw === '' ? undefined : JSON.parse(raw);
  } catch {
    return undefined;
  }
}

export function sendJSON(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

/** An SSE event: `event:` line when named, then the JSON data. */
export interface SSEvent {
  event?: string;
  data: object;
}

/**
 * sendSSE streams `events`, `delayMs` apart, then `data: [DONE]` when `done` (OpenAI's chat
 * completions end so; its Responses API and Anthropic's Messages API do not).
 */
export async function sendSSE(
  res: ServerResponse,
  events: readonly SSEvent[],
  options: { done: boolean; delayMs?: number; headers?: Record<string, string> },
): Promise<void> {
  res.writeHead(200, {
    'content-type': 'text/event-stream',
    'cache-control': 'no-cache',
    connection: 'keep-alive',
    ...options.headers,
  });
  for (const e of events) {
    if (res.destroyed) return;
    res.write(`${e.event !== undefined ? `event: ${e.event}\n` : ''}data: ${JSON.stringify(e.data)}\n\n`);
    if (options.delayMs) await sleep(options.delayMs);
  }
  if (options.done) res.write('data: [DONE]\n\n');
  res.end();
}

/** textLength counts the characters of the text inside messages, input or content blocks. */
export function textLength(value: unknown): number {
  if (typeof value === 'string') return value.length;
  if (Array.isArray(value)) return value.reduce((n: number, v) => n + textLength(v), 0);
  if (value !== null && typeof value === 'object') {
    const o = value as Record<string, unknown>;
    return textLength(o.content) + textLength(o.text) + textLength(o.input);
  }
  return 0;
}
