import type { PerUserQueues } from '../per-user-queue.js';
import { type Holdings, giveBack, takeTokens } from './admission.js';
import type { Call, Pipeline } from './pipeline.js';
import { settleBody, settleLLM } from './settlement.js';
import { readUsageEvents } from './sse.js';

/**
 * Attempt is one HTTP attempt of a call, through its states:
 * - `admitting`: waiting for its per-user slot and its tokens;
 * - `ready`: admitted, not yet handed to the network (a caller's abort gives everything back);
 * - `sent`: handed to the network; what it took stays taken until the response says otherwise;
 * - `done`: settled (LLM tokens to usage, or back on failure) and its slot freed.
 * Its shares of the shared pools follow the user's tokens through the same states.
 */
export class Attempt implements Holdings {
  state: 'admitting' | 'ready' | 'sent' | 'done' = 'admitting';
  release: Holdings['release'] = undefined;
  requestTaken = false;
  llmReserved = 0;
  sharedRequestTaken = false;
  sharedLLMReserved = 0;
  #usageSeen = false;
  #unlisten: (() => void) | undefined;
  readonly #p: Pipeline;
  readonly call: Call;

  constructor(p: Pipeline, call: Call) {
    this.#p = p;
    this.call = call;
  }

  /**
   * admit takes the attempt's slot, then its tokens: undefined when done at once (no per-user
   * queue, every bucket granting synchronously), else a promise settled when admitted (or
   * resolved unadmitted when the caller aborted).
   */
  admit(signal: AbortSignal | undefined, retry: boolean): Promise<void> | undefined {
    const p = this.#p;
    if (p.queues !== undefined) return this.#admitQueued(p.queues, signal, retry);
    const start = p.watchesAdmits ? performance.now() : 0;
    let taking: Promise<void> | undefined;
    try {
      taking = takeTokens(p, this.call, this, signal);
    } catch (e) {
      return this.#failed(e, signal);
    }
    if (taking === undefined) {
      this.#ready(signal, retry, start);
      return undefined;
    }
    return taking.then(
      () => this.#ready(signal, retry, start),
      (e: unknown) => this.#failed(e, signal),
    );
  }

  async #admitQueued(queues: PerUserQueues, signal: AbortSignal | undefined, retry: boolean): Promise<void> {
    const start = performance.now();
    try {
      this.release = await queues.enter(this.call.user, { signal, force: retry });
      await takeTokens(this.#p, this.call, this, signal);
    } catch (e) {
      return this.#failed(e, signal);
    }
    this.#ready(signal, retry, start);
  }

  /** #ready marks the attempt admitted (or gives back what it took if abandoned meanwhile). */
  #ready(signal: AbortSignal | undefined, retry: boolean, start: number): void {
    const p = this.#p;
    if (this.state !== 'admitting') {
      giveBack(p, this.call, this); // abandoned while it waited
      return;
    }
    this.state = 'ready';
    if (signal !== undefined) {
      const onAbort = () => this.abandon();
      signal.addEventListener('abort', onAbort, { once: true });
      this.#unlisten = () => signal.removeEventListener('abort', onAbort);
    }
    if (p.watchesAdmits) {
      const { user, path } = this.call;
      p.admitted({ user, path, waitedMs: performance.now() - start, llmTokens: this.llmReserved, retry });
    }
  }

  /** #failed gives back what was taken; the caller's abort resolves (the client then throws its own error). */
  #failed(e: unknown, signal: AbortSignal | undefined): Promise<void> {
    this.abandon();
    // Aborted by the caller: resolve, and the client throws its own abort error before sending,
    // exactly as it would without Tollgate.
    if (signal?.aborted) return Promise.resolve();
    return Promise.reject(e);
  }

  /** send marks the attempt as handed to the network; false when it was abandoned meanwhile. */
  send(): boolean {
    if (this.state !== 'ready') return false;
    this.state = 'sent';
    this.#unlisten?.();
    return true;
  }

  /** abandon gives everything back: the attempt never reached the network. */
  abandon(): void {
    if (this.state === 'sent' || this.state === 'done') return;
    this.state = 'done';
    this.#unlisten?.();
    giveBack(this.#p, this.call, this);
  }

  /** sentUnobserved: a ready attempt went out by a way the pipeline does not see; it keeps its tokens. */
  sentUnobserved(): void {
    if (this.send()) this.settle(undefined);
  }

  /**
   * respond takes the attempt's response: it learns from it, settles the attempt (now, or as the
   * client reads the body) and returns the response the client must see.
   */
  respond(response: Response): Response | Promise<Response> {
    const p = this.#p;
    const call = this.call;
    p.learn(call, response.status, response.headers);
    if (!response.ok) {
      // The provider saw the attempt (429 included): the request token stays; the LLM tokens,
      // never used, go back.
      this.fail();
      return response;
    }
    // Only a call the client reads as a stream can need the SSE reader: any other is read with
    // json() or text(), so its content type need not be looked up.
    const type = call.streams ? (response.headers.get('content-type') ?? '') : '';
    if (type.includes('text/event-stream') && response.body !== null) {
      const reader = p.adapter.streamUsage(call.askedUsage);
      return readUsageEvents(response, {
        onData: (data) => {
          if (!this.#usageSeen) {
            const usage = reader.read(data);
            if (usage !== undefined) this.#settleStream(usage);
          }
          return call.askedUsage && reader.drop(data) ? 'drop' : 'keep';
        },
        onEnd: () => {
          if (!this.#usageSeen) this.#settleStream(reader.end());
          this.settle(undefined);
        },
      });
    }
    const reserved = this.llmReserved;
    const shared = this.sharedLLMReserved;
    if ((reserved > 0 || shared > 0) && (!call.streams || type.includes('json'))) {
      // Settled as the client reads the body (settlement.ts); the slot is free now.
      this.llmReserved = 0;
      this.sharedLLMReserved = 0;
      this.state = 'done';
      this.release?.();
      return settleBody(p, call, reserved, shared, response);
    }
    this.settle(undefined);
    return response;
  }

  /** #settleStream settles the reservation to a stream's `usage` (undefined: the estimate stays). */
  #settleStream(usage: number | undefined): void {
    this.#usageSeen = true;
    const reserved = this.llmReserved;
    const shared = this.sharedLLMReserved;
    this.llmReserved = 0;
    this.sharedLLMReserved = 0;
    settleLLM(this.#p, this.call, reserved, shared, usage);
  }

  /** settle ends the attempt with the LLM tokens it used (undefined: the estimate stays) and frees its slot. */
  settle(usage: number | undefined): void {
    this.#finish(usage, false);
  }

  /** fail ends an attempt that got no usable response: its LLM tokens go back, its request token stays. */
  fail(): void {
    this.#finish(undefined, true);
  }

  #finish(usage: number | undefined, failed: boolean): void {
    if (this.state === 'done') return;
    this.state = 'done';
    const p = this.#p;
    const reserved = this.llmReserved;
    const shared = this.sharedLLMReserved;
    this.llmReserved = 0;
    this.sharedLLMReserved = 0;
    if (failed) {
      if (reserved > 0 && p.llmTokens !== undefined) p.refund(p.llmTokens, this.call.user, reserved);
      if (shared > 0 && p.sharedLLMTokens !== undefined) p.refundShare(p.sharedLLMTokens, this.call, shared);
    } else settleLLM(p, this.call, reserved, shared, usage);
    this.release?.();
  }
}
