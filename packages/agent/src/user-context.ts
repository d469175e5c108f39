import { AsyncLocalStorage } from 'node:async_hooks';
import { InvalidArgumentError } from '@tollgate/core';

/**
 * ANONYMOUS_USER is the key of calls made with no user: no `withUser` around them, no `user`
 * resolver answer, and no `user` / `safety_identifier` in the request body. All such calls share
 * one budget, so an unidentified caller cannot escape the limits.
 */
export const ANONYMOUS_USER = 'anonymous';

const storage = new AsyncLocalStorage<string>();

/**
 * withUser runs `fn` with `id` as the current user: every throttled OpenAI request and throttled
 * tool call made inside it (across awaits, timers and the SDK's retries) is counted against
 * `id`'s buckets. Nested calls replace the user for their own scope.
 *
 * @example
 * await withUser('user-42', () => client.chat.completions.create({ model, messages }))
 */
export function withUser<T>(id: string, fn: () => T): T {
  if (typeof id !== 'string' || id === '') {
    throw new InvalidArgumentError(
      `withUser: id must be a non-empty string (received ${JSON.stringify(id)}): an empty user id is a missing identity, not a user. Calls made outside withUser count against the shared '${ANONYMOUS_USER}' budget; a limiter's own keys may be any string, '' included.`,
    );
  }
  if (typeof fn !== 'function') throw new InvalidArgumentError('withUser: fn must be a function');
  return storage.run(id, fn);
}

/** currentUser returns the user set by the nearest enclosing {@link withUser}, or undefined. */
export function currentUser(): string | undefined {
  return storage.getStore();
}
