/**
 * Settlement: an attempt's LLM-token reservations (the user's, and its share of the pool) turned
 * into what the response says it used.
 */
import type { RateLimiter, SharedLimiter } from '@tollgate/core';
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

/**
 * settleShare does for `call`'s share of the shared `llm` pool what {@link settle} does for the
 * user's bucket: the difference goes back to the pool, or the excess is charged to the call's
 * key in the background (in pieces of at most the pool's capacity), where it waits its turn.
 */
export function settleShare(p: Pipeline, llm: SharedLimiter, call: Call, reserved: number, actual: number): void {
  const diff = actual - reserved;
  const pool = call.pool as string;
  if (diff < 0) {
    p.refundShare(llm, call, -diff);
    return;
  }
  if (diff === 0) return;
  try {
    const capacity = llm.policyFor(pool)?.capacity;
    if (capacity === undefined) return; // a pool with no limit counts nothing
    for (let left = diff; left > 0; left -= capacity) {
      p.background(llm.acquire(call.shareKey, { cost: Math.min(left, capacity), pool }));
    }
  } catch (e) {
    p.background(Promise.reject(e));
  }
}

/**
 * settleLLM settles both reservations of `call` (`reserved` in the user's bucket, `shared` in the
 * pool) to `usage`; undefined usage keeps the estimates.
 */
export function settleLLM(p: Pipeline, call: Call, reserved: number, shared: number, usage: number | undefined): void {
  if (usage === undefined) return;
  const llm = p.llmTokens;
  if (llm !== undefined && reserved > 0) settle(p, llm, call.user, reserved, usage);
  const pooled = p.sharedLLMTokens;
  if (pooled !== undefined && shared > 0) settleShare(p, pooled, call, shared, usage);
}

/** The LLM-token reservations of a JSON response, settled once its body is read. */
interface PendingSettlement {
  readonly p: Pipeline;
  readonly call: Call;
  /** In the user's bucket. */
  readonly reserved: number;
  /** In the shared pool. */
  readonly shared: number;
  done: boolean;
}

/**
 * settleBody settles `reserved` LLM tokens (and `shared` in the pool) from the JSON body of
 * `response`, read once, by the client: its own `json()` (openai 5 and 6), `text()` (openai 7), `arrayBuffer()` and `bytes()`
 * settle to the usage of what they return, and the response is otherwise untouched. A stream
 * call answered with JSON (the client reads it through `body`) and a Response of another fetch
 * implementation (its own methods) are read here instead, and handed on as a copy. A body read
 * in another way, never read, without usage, or whose read fails, keeps the estimate: a 2xx JSON
 * response is generated whole before its headers are sent, so the provider has counted it.
 */
export function settleBody(
  p: Pipeline,
  call: Call,
  reserved: number,
  shared: number,
  response: Response,
): Response | Promise<Response> {
  const pending: PendingSettlement = { p, call, reserved, shared, done: false };
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
      const out = new Response(bytes, {
        status: response.status,
        statusText: response.statusText,
        headers: response.headers,
      });
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
  settleLLM(pending.p, pending.call, pending.reserved, pending.shared, usage);
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
