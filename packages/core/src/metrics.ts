/**
 * OpenTelemetry metrics, through `@opentelemetry/api`'s global meter named `tollgate`: a no-op
 * until the application registers a MeterProvider.
 *
 * - `tollgate.decisions` (counter): decisions by `tollgate.limiter` (the limiter's name),
 *   `tollgate.backend` ('memory', 'redis', 'hybrid') and `tollgate.outcome`.
 * - `tollgate.wait.duration` (histogram, seconds): how long a granted call waited.
 * - `tollgate.queue.size` (up-down counter): callers waiting now.
 *
 * No key (user id) is ever an attribute: unbounded cardinality, and private.
 *
 * Cost: a decision adds one integer to a per-limiter tally; the tallies are reported when the
 * application's reader collects (observable instruments), so the hot path makes no OpenTelemetry
 * call at all. Only a wait duration is recorded as it happens, and only while a real
 * MeterProvider is registered. The global provider is looked up again every
 * {@link RECHECK_EVERY} decisions and on every wait, so a provider registered after the limiters
 * were made is picked up.
 */
import {
  type Attributes,
  type Histogram,
  type Meter,
  type MeterProvider,
  type ObservableResult,
  createNoopMeter,
  metrics,
} from '@opentelemetry/api';

/** What a decision came to, the `tollgate.outcome` attribute. */
export type Outcome = 'allowed' | 'rejected' | 'timeout' | 'aborted' | 'fallback' | 'queue_full';

const OUTCOMES: readonly Outcome[] = ['allowed', 'rejected', 'timeout', 'aborted', 'fallback', 'queue_full'];
const OUTCOME_INDEX: Readonly<Record<Outcome, number>> = {
  allowed: 0,
  rejected: 1,
  timeout: 2,
  aborted: 3,
  fallback: 4,
  queue_full: 5,
};

/** Decisions between two look-ups of the global MeterProvider. */
export const RECHECK_EVERY = 1024;

const METER_NAME = 'tollgate';
const NOOP_HISTOGRAM = createNoopMeter().createHistogram('noop').constructor;

/** The instruments made on one MeterProvider, and every limiter's tallies reported through them. */
interface Binding {
  readonly provider: MeterProvider;
  readonly wait: Histogram;
  /** False while the provider is the API's no-op one: nothing is recorded then. */
  readonly live: boolean;
}

/** Every LimiterMetrics alive, reported by the observable instruments' callbacks. */
const registry = new Set<WeakRef<LimiterMetrics>>();
let binding: Binding | undefined;

/** The binding to the current global MeterProvider, made anew when the provider changed. */
function bind(): Binding {
  const provider = metrics.getMeterProvider();
  if (binding !== undefined && binding.provider === provider) return binding;
  const meter: Meter = provider.getMeter(METER_NAME);
  const wait = meter.createHistogram('tollgate.wait.duration', {
    description: 'How long a granted call waited for its tokens.',
    unit: 's',
    // Seconds, as OpenTelemetry's HTTP duration conventions: the SDK's default buckets are for ms.
    advice: { explicitBucketBoundaries: [0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60] },
  });
  const live = !(wait instanceof NOOP_HISTOGRAM);
  if (live) {
    meter
      .createObservableCounter('tollgate.decisions', { description: 'Rate-limit decisions, by outcome.' })
      .addCallback((result) => report(result, (m, r) => m.observeDecisions(r)));
    meter
      .createObservableUpDownCounter('tollgate.queue.size', { description: 'Callers waiting for tokens.' })
      .addCallback((result) => report(result, (m, r) => m.observeQueue(r)));
  }
  binding = { provider, wait, live };
  return binding;
}

function report(result: ObservableResult, each: (m: LimiterMetrics, r: ObservableResult) => void): void {
  for (const ref of registry) {
    const m = ref.deref();
    if (m === undefined) registry.delete(ref);
    else each(m, result);
  }
}

/**
 * LimiterMetrics tallies one limiter's decisions, waits and queue for OpenTelemetry. Made by each
 * limiter (and by @tollgate/agent's per-user queues); cheap enough for every decision.
 */
export class LimiterMetrics {
  readonly #attrs: readonly Attributes[];
  readonly #queueAttrs: Attributes;
  readonly #tally = new Float64Array(OUTCOMES.length);
  #queued = 0;
  #untilRecheck = RECHECK_EVERY;
  #binding: Binding;

  constructor(limiter: string, backend: string) {
    const base = { 'tollgate.limiter': limiter, 'tollgate.backend': backend };
    this.#attrs = OUTCOMES.map((outcome) => Object.freeze({ ...base, 'tollgate.outcome': outcome }));
    this.#queueAttrs = Object.freeze(base);
    registry.add(new WeakRef(this));
    this.#binding = bind();
  }

  /** Counts one decision. */
  decision(outcome: Outcome): void {
    const i = OUTCOME_INDEX[outcome];
    this.#tally[i] = (this.#tally[i] as number) + 1;
    if (--this.#untilRecheck === 0) {
      this.#untilRecheck = RECHECK_EVERY;
      this.#binding = bind();
    }
  }

  /** Records how long a granted call waited, in ms (0 for a call granted at once). */
  waited(ms: number): void {
    if (ms > 0) this.#binding = bind();
    if (this.#binding.live) this.#binding.wait.record(ms / 1000, this.#queueAttrs);
  }

  /** A caller started (+1) or stopped (-1) waiting. */
  queue(delta: number): void {
    this.#queued += delta;
    if (delta > 0) this.#binding = bind();
  }

  observeDecisions(result: ObservableResult): void {
    for (let i = 0; i < OUTCOMES.length; i++) {
      const n = this.#tally[i] as number;
      if (n > 0) result.observe(n, this.#attrs[i]);
    }
  }

  observeQueue(result: ObservableResult): void {
    result.observe(this.#queued, this.#queueAttrs);
  }
}
