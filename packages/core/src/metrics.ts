/**
 * OpenTelemetry metrics, through `@opentelemetry/api`'s global meter named `tollgate`: a no-op
 * until the application registers a MeterProvider.
 *
 * - `tollgate.decisions` (counter): decisions by `tollgate.limiter` (the limiter's name),
 *   `tollgate.backend` ('memory', 'redis', 'hybrid') and `tollgate.outcome`, one per call:
 *   - `allowed`: granted by the backend (an `acquire`, after its wait; a `tryAcquire` that took);
 *   - `rejected`: a `tryAcquire` answered not allowed, a cost above the capacity, or a call
 *     refused by `fail-closed`;
 *   - `timeout`: an `acquire` that would wait (or waited) more than its `maxWaitMs`;
 *   - `aborted`: an `acquire` whose signal fired;
 *   - `fallback`: decided by `onBackendError` while the backend failed (`fail-open`, or the
 *     fallback bucket, whatever it answered);
 *   - `queue_full`: @tollgate/agent's per-user queue refused a call.
 *   Invalid arguments are the caller's bug, not a decision: not counted.
 * - `tollgate.wait.duration` (histogram, seconds): how long a granted call waited (0 when at once).
 * - `tollgate.queue.size` (up-down counter): callers waiting now.
 *
 * No key (user id) is ever an attribute: unbounded cardinality, and private. Limiters sharing a
 * name and a backend add up into one series.
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

/** Decisions between two look-ups of the global MeterProvider. */
export const RECHECK_EVERY = 1024;

const METER_NAME = 'tollgate';
const NOOP_HISTOGRAM = createNoopMeter().createHistogram('noop').constructor;

/** The instruments made on one MeterProvider. */
interface Binding {
  readonly provider: MeterProvider;
  readonly wait: Histogram;
  /** False while the provider is the API's no-op one: nothing is recorded then. */
  readonly live: boolean;
}

/**
 * One time series set: the tallies of every limiter with one (name, backend). Limiters that share
 * a name add up (an observable reports one value per attribute set, the last one observed), and a
 * limiter that is garbage-collected takes nothing away from a counter.
 */
interface Series {
  readonly attrs: Readonly<Record<Outcome, Attributes>>;
  readonly queueAttrs: Attributes;
  /** Decisions so far, by outcome: plain number fields, the cheapest thing to add one to. */
  readonly counts: Record<Outcome, number>;
  queued: number;
}

/** Every series, by limiter name and backend: as many as the application has limiter names. */
const series = new Map<string, Series>();
let binding: Binding | undefined;

function seriesOf(limiter: string, backend: string): Series {
  const id = `${limiter}\u0000${backend}`;
  let s = series.get(id);
  if (s === undefined) {
    const base = { 'tollgate.limiter': limiter, 'tollgate.backend': backend };
    const attrs = {} as Record<Outcome, Attributes>;
    for (const outcome of OUTCOMES) attrs[outcome] = Object.freeze({ ...base, 'tollgate.outcome': outcome });
    s = {
      attrs,
      queueAttrs: Object.freeze(base),
      counts: { allowed: 0, rejected: 0, timeout: 0, aborted: 0, fallback: 0, queue_full: 0 },
      queued: 0,
    };
    series.set(id, s);
  }
  return s;
}

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
      .addCallback(observeDecisions);
    meter
      .createObservableUpDownCounter('tollgate.queue.size', { description: 'Callers waiting for tokens.' })
      .addCallback(observeQueues);
  }
  binding = { provider, wait, live };
  return binding;
}

function observeDecisions(result: ObservableResult): void {
  for (const s of series.values()) {
    for (const outcome of OUTCOMES) {
      const n = s.counts[outcome];
      if (n > 0) result.observe(n, s.attrs[outcome]);
    }
  }
}

function observeQueues(result: ObservableResult): void {
  for (const s of series.values()) result.observe(s.queued, s.queueAttrs);
}

/**
 * LimiterMetrics tallies one limiter's decisions, waits and queue for OpenTelemetry. Made by each
 * limiter (and by @tollgate/agent's per-user queues); cheap enough for every decision. Limiters
 * with the same name and backend report as one.
 */
export class LimiterMetrics {
  readonly #series: Series;
  readonly #counts: Record<Outcome, number>;
  #untilRecheck = RECHECK_EVERY;
  #binding: Binding;
  /** `#binding.live`, kept here: read on every grant. */
  #live: boolean;

  /** `limiter` is the limiter's name, `backend` its kind ('memory', 'redis', 'hybrid'). Never a user id. */
  constructor(limiter: string, backend: string) {
    this.#series = seriesOf(limiter, backend);
    this.#counts = this.#series.counts;
    this.#binding = bind();
    this.#live = this.#binding.live;
  }

  /** Counts one decision. */
  decision(outcome: Outcome): void {
    this.#counts[outcome]++;
    if (--this.#untilRecheck === 0) this.#rebind();
  }

  /** Counts one `allowed` decision with no wait to record (a tryAcquire that took). */
  allowed(): void {
    this.#counts.allowed++;
    if (--this.#untilRecheck === 0) this.#rebind();
  }

  /** Counts one `rejected` decision. */
  rejected(): void {
    this.#counts.rejected++;
    if (--this.#untilRecheck === 0) this.#rebind();
  }

  /** Counts a call granted by the backend at once (waited 0 ms). */
  grantedAtOnce(): void {
    this.#counts.allowed++;
    if (this.#live) this.#binding.wait.record(0, this.#series.queueAttrs);
    if (--this.#untilRecheck === 0) this.#rebind();
  }

  /** Records how long a granted call waited, in ms (0 for a call granted at once). */
  waited(ms: number): void {
    if (ms > 0) this.#rebind();
    if (this.#live) this.#binding.wait.record(ms / 1000, this.#series.queueAttrs);
  }

  /** Counts a granted call (`allowed`, or `fallback`: granted by the failure policy) and records its wait in ms. */
  granted(outcome: 'allowed' | 'fallback', ms: number): void {
    this.decision(outcome);
    this.waited(ms);
  }

  /** A caller started (+1) or stopped (-1) waiting. */
  queue(delta: number): void {
    this.#series.queued += delta;
    if (delta > 0) this.#rebind();
  }

  /** Looks the global MeterProvider up again (one registered since is picked up). */
  #rebind(): void {
    this.#untilRecheck = RECHECK_EVERY;
    this.#binding = bind();
    this.#live = this.#binding.live;
  }
}
