/**
 * Server-sent events: a streamed response passed through event by event, so the LLM tokens can
 * be settled from the usage event as it goes by, and an event the pipeline asked for removed.
 */

/** What {@link readUsageEvents} calls back. */
export interface UsageEventHooks {
  /** Sees the parsed data of each event that holds a `"usage": {…}` object; may drop the event. */
  onData(data: unknown): 'keep' | 'drop';
  /** Runs once when the body ends, fails or is cancelled. */
  onEnd(): void;
}

/**
 * readUsageEvents returns a copy of `response` (status, headers, url) whose body is the original
 * body passed through {@link rewriteSSE}.
 */
export function readUsageEvents(response: Response, hooks: UsageEventHooks): Response {
  const body = rewriteSSE(response.body as ReadableStream<Uint8Array>, hooks);
  const out = new Response(body, {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers,
  });
  Object.defineProperty(out, 'url', { value: response.url });
  return out;
}

const USAGE = /"usage"\s*:\s*\{/;
const BOUNDARY = /\r\n\r\n|\n\n|\r\r/g;
const LINE = /\r\n|\n|\r/;

/**
 * rewriteSSE passes a server-sent-events body through event by event: `onData` sees the parsed
 * JSON data of each event that mentions a usage object, and may drop the event; `onEnd` runs once
 * when the body ends, fails or is cancelled. Kept events go on byte for byte.
 */
export function rewriteSSE(source: ReadableStream<Uint8Array>, hooks: UsageEventHooks): ReadableStream<Uint8Array> {
  const reader = source.getReader();
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  let buffer = '';
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    hooks.onEnd();
  };
  const keep = (event: string): boolean => {
    if (!USAGE.test(event)) return true;
    const data = event
      .split(LINE)
      .filter((l) => l.startsWith('data:'))
      .map((l) => l.slice(l.startsWith('data: ') ? 6 : 5))
      .join('\n');
    const parsed = parseJSON(data);
    return parsed === undefined || hooks.onData(parsed) === 'keep';
  };
  const takeEvents = (): string => {
    let out = '';
    let from = 0;
    BOUNDARY.lastIndex = 0;
    for (let m = BOUNDARY.exec(buffer); m !== null; m = BOUNDARY.exec(buffer)) {
      const to = m.index + m[0].length;
      const event = buffer.slice(from, to);
      if (keep(event)) out += event;
      from = to;
    }
    buffer = buffer.slice(from);
    return out;
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      for (;;) {
        let chunk: Awaited<ReturnType<typeof reader.read>>;
        try {
          chunk = await reader.read();
        } catch (e) {
          end();
          controller.error(e);
          return;
        }
        if (chunk.done) {
          buffer += decoder.decode();
          const rest = takeEvents() + (buffer !== '' && keep(buffer) ? buffer : '');
          buffer = '';
          if (rest !== '') controller.enqueue(encoder.encode(rest));
          end();
          controller.close();
          return;
        }
        buffer += decoder.decode(chunk.value, { stream: true });
        const out = takeEvents();
        if (out !== '') {
          controller.enqueue(encoder.encode(out));
          return;
        }
      }
    },
    cancel(reason) {
      end();
      return reader.cancel(reason);
    },
  });
}

/** parseJSON parses `text`, or answers undefined when it is not JSON. */
export function parseJSON(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
