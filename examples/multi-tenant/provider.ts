/**
 * What the provider answered, seen from the client: a fetch for the OpenAI client that records
 * every HTTP attempt (SDK retries included) with its tenant, send time and status, and counts it
 * in the tenant's stats. The tenant comes from the `x-tenant` header the demo sets per request.
 */
import type { HttpCounts, TenantStats } from './stats.ts';

/** TENANT_HEADER names the tenant of a request (the loopback provider reads it too). */
export const TENANT_HEADER = 'x-tenant';

/** One HTTP attempt. Times are performance.now() ms. */
export interface Attempt {
  readonly tenant: string;
  readonly sentAt: number;
  /** The HTTP status, or 0 when no response came (a network error). */
  readonly status: number;
}

/** AttemptLog records the attempts of a run and whether every tenant was backlogged. */
export class AttemptLog {
  readonly attempts: Attempt[] = [];
  /** Samples taken between the warm-up and the deadline, and those in which every tenant had a model call waiting. */
  samples = 0;
  backloggedSamples = 0;
  readonly #stats: ReadonlyMap<string, TenantStats>;
  readonly #warmupEnd: number;

  /** `warmupEnd`: attempts sent from then on count in `httpAfterWarmup`. */
  constructor(stats: readonly TenantStats[], warmupEnd: number) {
    this.#stats = new Map(stats.map((s) => [s.tenant, s]));
    this.#warmupEnd = warmupEnd;
  }

  /** fetch wraps `inner` (the global fetch) to record every attempt. */
  fetch(inner: typeof fetch = fetch): typeof fetch {
    return async (input, init) => {
      const tenant = new Headers(init?.headers).get(TENANT_HEADER) ?? '';
      const sentAt = performance.now();
      let status = 0;
      try {
        const res = await inner(input, init);
        status = res.status;
        return res;
      } finally {
        this.#record({ tenant, sentAt, status });
      }
    };
  }

  #record(a: Attempt): void {
    this.attempts.push(a);
    const s = this.#stats.get(a.tenant);
    if (s === undefined) return;
    count(s.http, a.status);
    if (a.sentAt >= this.#warmupEnd) count(s.httpAfterWarmup, a.status);
  }

  /** sample notes whether every tenant has a model call waiting for its turn now. */
  sample(): void {
    this.samples++;
    if ([...this.#stats.values()].every((s) => s.modelWaiting > 0)) this.backloggedSamples++;
  }

  /** okPerTenant counts the 2xx answers to attempts sent in [from, to). */
  okPerTenant(from: number, to: number): Map<string, number> {
    const ok = new Map<string, number>([...this.#stats.keys()].map((t) => [t, 0]));
    for (const a of this.attempts) {
      if (a.sentAt >= from && a.sentAt < to && a.status >= 200 && a.status < 300 && ok.has(a.tenant)) {
        ok.set(a.tenant, (ok.get(a.tenant) as number) + 1);
      }
    }
    return ok;
  }
}

function count(c: HttpCounts, status: number): void {
  c.attempts++;
  if (status >= 200 && status < 300) c.ok++;
  else if (status === 429) c.rateLimited++;
}
