/**
 * Settlement: an attempt's LLM-token reservation turned into what the response says it used.
 */
import type { RateLimiter } from '@tollgate/core';
import type { Call, Pipeline } from './pipeline.js';
import { parseJSON } from './sse.js';

/**
 * settle turns a reservation of `reserved` LLM tokens into the `actual` use: the difference goes
 * back, or the excess is charged. The charge is an `acquire` left to run in the background: it
 * waits its turn in the user's queue, so the user's next calls pay for it, never this one. An
 * excess above the bucket's capacity is charged in pieces of at most the capacity.
 */
export function settle(p: Pipeline, llm: RateLimiter, user: string, reserved: number, actual: number): void {
  const diff = actual - reserved;
  if (diff < 0) {
    p.refund(llm, user, -diff);
    return;
  }
  const capacity = llm.policyFor(user).capacity;
  for (let left = diff; left > 0; left -= capacity) {
    p.background(llm.acquire(user, { cost: Math.min(left, capacity) }));
  }
}

/** The LLM-token reservation of a JSON response, settled once its body is read. */
interface PendingSettlement {
  readonly p: Pipeline;
  readonly user: string;
  readonly reserved: number;
  done: boolean;
}

/**
 * settleBody settles `reserved` LLM tokens from the JSON body of `response`, read once, by the
 * client: its own `json()` (openai 5 and 6), `text()` (openai 7), `arrayBuffer()` and `bytes()`
 * settle to the usage of what they return, and the response is otherwise untouched. A stream
 * call answered with JSON (the client reads it through `body`) and a Response of another fetch
 * implementation (its own methods) are read here instead, and handed on as a copy. A body read
 * in another way, never read, without usage, or whose read fails, keeps the estimate: a 2xx JSON
 * response is generated whole before its headers are sent, so the provider has counted it.
 */
export function settleBody(p: Pipeline, call: Call, reserved: number, response: Response): Response | Promise<Response> {
  const pending: PendingSettlement = { p, user: call.user, reserved, done: false };
  if (call.streams || Object.getPrototypeOf(response) !== Response.prototype) return settleEagerly(response, pending);
  // Own members set the same way on every such response (one shape, shared functions).
  const r = response as unknown as Record<PropertyKey, unknown>;
  r[SETTLEMENT] = pending;
  for (const [name, fn] of SETTLING_METHODS) r[name] = fn;
  return response;
}

/** settleEagerly reads the body now, settles `pending`, and hands on a copy with the same bytes, status and headers. */
function settleEagerly(response: Response, pending: PendingSettlement): Promise<Response> {
  return response.arrayBuffer().then(
    (bytes) => {
      settleOnce(pending, usageOfText(pending, utf8.decode(bytes)));
      const out = new Response(bytes, { status: response.status, statusText: response.statusText, headers: response.headers });
      Object.defineProperty(out, 'url', { value: response.url });
      return out;
    },
    (e: unknown) => readFailed(pending, e),
  );
}

/** settleOnce settles `pending` once, to `usage` when known (else the estimate stays). */
function settleOnce(pending: PendingSettlement, usage: number | undefined): void {
  if (pending.done) return;
  pending.done = true;
  const { p, user, reserved } = pending;
  const llm = p.llmTokens;
  if (llm !== undefined && usage !== undefined) settle(p, llm, user, reserved, usage);
}

/** readFailed: a read that failed keeps the estimate (the provider counted the response). */
function readFailed(pending: PendingSettlement, e: unknown): never {
  settleOnce(pending, undefined);
  throw e;
}

const utf8 = new TextDecoder();

const usageOfText = (pending: PendingSettlement, text: string) => pending.p.adapter.usageOf(parseJSON(text));

const SETTLEMENT = Symbol('tollgate.settlement');

type Settling = Response & { [SETTLEMENT]: PendingSettlement };

const proto = Response.prototype as unknown as Record<string, (this: Response) => Promise<unknown>>;
const protoJSON = proto.json as (this: Response) => Promise<unknown>;
const protoText = proto.text as (this: Response) => Promise<string>;
const protoArrayBuffer = proto.arrayBuffer as (this: Response) => Promise<ArrayBuffer>;
const protoBytes = proto.bytes as ((this: Response) => Promise<Uint8Array>) | undefined;

/** The body readers of a settling response (see {@link settleBody}). */
const SETTLING_METHODS: [string, (this: Settling) => Promise<unknown>][] = [
  [
    'json',
    function json(this: Settling) {
      const pending = this[SETTLEMENT];
      return protoJSON.call(this).then(
        (parsed) => {
          settleOnce(pending, pending.p.adapter.usageOf(parsed));
          return parsed;
        },
        (e: unknown) => readFailed(pending, e),
      );
    },
  ],
  [
    'text',
    function text(this: Settling) {
      const pending = this[SETTLEMENT];
      return protoText.call(this).then(
        (body) => {
          if (!pending.done) settleOnce(pending, usageOfText(pending, body));
          return body;
        },
        (e: unknown) => readFailed(pending, e),
      );
    },
  ],
  ['arrayBuffer', settlesFromBytes(protoArrayBuffer)],
];
if (protoBytes !== undefined) SETTLING_METHODS.push(['bytes', settlesFromBytes(protoBytes)]);

/** A settling body reader for a Response method that answers with the body's bytes. */
function settlesFromBytes<B extends ArrayBuffer | Uint8Array>(read: (this: Response) => Promise<B>) {
  return function (this: Settling): Promise<B> {
    const pending = this[SETTLEMENT];
    return read.call(this).then(
      (bytes) => {
        if (!pending.done) settleOnce(pending, usageOfText(pending, utf8.decode(bytes)));
        return bytes;
      },
      (e: unknown) => readFailed(pending, e),
    );
  };
}
