/**
 * Hooks into a Stainless-generated client (the `openai` package, majors 5 to 7, and
 * `@anthropic-ai/sdk` 1.x): where each of its HTTP attempts starts, is sent and is answered. The
 * hooks are installed on the client the user built, as its own members: nothing is copied and no
 * client is constructed.
 */
import { InvalidOptionsError } from '@tollgate/core';
import type { Pipeline } from '../pipeline/pipeline.js';

/** The request options object the client builds per call and hands to every attempt. */
export interface RequestOptions {
  method: string;
  path: string;
  body?: unknown;
  signal?: AbortSignal | null;
  /** Set by the client's streaming methods: it parses the response as server-sent events. */
  stream?: boolean | undefined;
}

/** `requestOptions` and `logCtx`: passed by @anthropic-ai/sdk only (openai's takes four arguments). */
type FetchWithTimeout = (
  url: unknown,
  init: object | undefined,
  ms: number,
  controller: AbortController,
  requestOptions?: unknown,
  logCtx?: unknown,
) => Promise<Response>;

/** The members of a Stainless client that the hooks rely on. */
export interface StainlessClient {
  /** The client's one request (all its attempts; retries call it again with the same options). */
  makeRequest(optionsInput: unknown, retriesRemaining: unknown, retryOf: unknown): Promise<unknown>;
  /** Called at the start of every attempt, before its timeout starts; errors thrown escape unretried. */
  prepareOptions(options: RequestOptions): Promise<void>;
  /** Called with the attempt's request init (the object later handed to fetchWithTimeout). */
  prepareRequest(init: object, context: { url: string; options: RequestOptions }): Promise<void>;
  /** Sends one attempt (calls the client's fetch) and answers its response. */
  fetchWithTimeout: FetchWithTimeout;
  /** A new client of the same class with some options replaced. */
  withOptions(options: Record<string, unknown>): StainlessClient;
}

const HOOKED = ['makeRequest', 'prepareOptions', 'prepareRequest', 'fetchWithTimeout', 'withOptions'] as const;

const pipelines = new WeakMap<object, Pipeline>();

/** pipelineOf returns the pipeline installed on `client`, if any. */
export function pipelineOf(client: object): Pipeline | undefined {
  return pipelines.get(client);
}

/**
 * checkClient throws InvalidOptionsError unless `client` has every member the hooks need and is
 * not throttled already. `what` names the wrapping function, `expected` the client it takes.
 */
export function checkClient(client: unknown, what: string, expected: string): asserts client is StainlessClient {
  const c = client as Record<string, unknown> | null;
  if (typeof c !== 'object' || c === null || HOOKED.some((name) => typeof c[name] !== 'function')) {
    throw new InvalidOptionsError(`${what}: client must be ${expected}`, [
      { path: 'client', message: `must be ${expected}` },
    ]);
  }
  if (pipelines.has(c)) {
    const message = `is throttled already (${what} throttles the client it is given); for other limits, throttle another client`;
    throw new InvalidOptionsError(`${what}: client ${message}`, [{ path: 'client', message }]);
  }
}

/**
 * hookStainlessClient makes every HTTP attempt of `client` go through `p`, and returns `client`:
 * - `prepareOptions` (each attempt's start, retries included, before its timeout starts) admits
 *   the attempt: the wait never eats into the request's timeout, every retry waits again, and a
 *   `QueueFullError` or `MaxWaitExceededError` reaches the caller as is (the client does not
 *   retry what this hook throws);
 * - `prepareRequest` links the attempt's request init to it. The init is the one object that
 *   goes from there to the send: auth hooks (a `provider`'s, a subclass's) may replace its
 *   headers or body, never the init itself (@anthropic-ai/sdk prepares its request inside
 *   `fetchWithTimeout` and hands it the call's options: there the link is made at the send);
 * - `fetchWithTimeout` sends it: the response (or the failure) settles the attempt;
 * - `makeRequest` watches the whole call: an attempt that failed before it was sent (in a hook,
 *   while its body was built) gives back what it took, and one sent past `fetchWithTimeout` (a
 *   client whose transport bypasses it) keeps its tokens and frees its slot;
 * - `withOptions` hooks the new client into the same pipeline.
 * Plain functions chaining the client's own promises (no async function): one promise less per
 * hook on every request.
 */
export function hookStainlessClient(client: StainlessClient, p: Pipeline): StainlessClient {
  const { makeRequest, prepareOptions, prepareRequest, fetchWithTimeout, withOptions } = client;
  const own = (name: (typeof HOOKED)[number], value: unknown) =>
    Object.defineProperty(client, name, { value, writable: true, configurable: true, enumerable: false });
  own('prepareOptions', function (this: StainlessClient, options: RequestOptions): Promise<void> {
    let admitted: Promise<void> | undefined;
    try {
      admitted = begin(p, options);
    } catch (e) {
      return Promise.reject(e);
    }
    return admitted === undefined
      ? call(prepareOptions, this, options)
      : admitted.then(() => prepareOptions.call(this, options));
  });
  own(
    'prepareRequest',
    function (this: StainlessClient, init: object, context: { url: string; options: RequestOptions }): Promise<void> {
      p.link(init, context.options);
      return call(prepareRequest, this, init, context);
    },
  );
  own(
    'fetchWithTimeout',
    function (
      this: StainlessClient,
      url: unknown,
      init: object | undefined,
      ms: number,
      controller: AbortController,
      requestOptions?: unknown,
      logCtx?: unknown,
    ): Promise<Response> {
      // @anthropic-ai/sdk hands the call's options here and runs prepareRequest later, inside
      // fetchWithTimeout, on another init object: the attempt is linked to this init here.
      if (init !== undefined && typeof requestOptions === 'object' && requestOptions !== null)
        p.link(init, requestOptions);
      const attempt = init !== undefined ? p.send(init) : undefined;
      if (attempt === undefined) return fetchWithTimeout.call(this, url, init, ms, controller, requestOptions, logCtx);
      let sent: Promise<Response>;
      try {
        sent = fetchWithTimeout.call(this, url, init, ms, controller, requestOptions, logCtx);
      } catch (e) {
        attempt.fail();
        return Promise.reject(e);
      }
      return sent.then(
        (response) => attempt.respond(response),
        (e: unknown) => {
          attempt.fail();
          throw e;
        },
      );
    },
  );
  own('makeRequest', function (this: StainlessClient, optionsInput: unknown, a: unknown, b: unknown): Promise<unknown> {
    const request = makeRequest.call(this, optionsInput, a, b);
    // A side branch, not a link in the caller's chain: the caller awaits the client's own promise.
    request.then(
      () => end(p, optionsInput, true),
      () => end(p, optionsInput, false),
    );
    return request;
  });
  own('withOptions', function (this: StainlessClient, options: Record<string, unknown> = {}): StainlessClient {
    return hookStainlessClient(withOptions.call(this, options), p);
  });
  pipelines.set(client, p);
  return client;
}

/** begin opens the call of `options` (first attempt) and admits its next attempt. */
function begin(p: Pipeline, options: RequestOptions): Promise<void> | undefined {
  let c = p.callOf(options);
  const retry = c !== undefined;
  if (c === undefined) {
    const body = options.body;
    c = p.openCall(options, {
      method: String(options.method ?? ''),
      path: typeof options.path === 'string' ? options.path : '',
      body,
      stream: options.stream === true || isStreamBody(body),
    });
    // A new body object when the pipeline asks for more: the caller's params are never changed.
    if (c.body !== body) options.body = c.body;
  }
  return p.admit(c, options.signal ?? undefined, retry);
}

function end(p: Pipeline, optionsInput: unknown, ok: boolean): void {
  if (optionsInput instanceof Promise) optionsInput.then((o: object) => p.end(o, ok), ignore);
  else if (typeof optionsInput === 'object' && optionsInput !== null) p.end(optionsInput, ok);
}

const ignore = (): void => {};

const isStreamBody = (body: unknown): boolean =>
  typeof body === 'object' && body !== null && (body as { stream?: unknown }).stream === true;

/** call calls one of the client's hooks, as a promise even if it throws. */
function call<A extends unknown[]>(
  hook: (this: StainlessClient, ...args: A) => Promise<void>,
  client: StainlessClient,
  ...args: A
): Promise<void> {
  try {
    return Promise.resolve(hook.apply(client, args));
  } catch (e) {
    return Promise.reject(e);
  }
}
