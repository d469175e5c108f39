/**
 * `--metrics`: an OpenTelemetry MeterProvider registered before any limiter is made, and a
 * printout of what Tollgate recorded through it (`tollgate.decisions`, `tollgate.wait.duration`,
 * `tollgate.queue.size`). A real service would export to its collector instead: a
 * PeriodicExportingMetricReader with an OTLP exporter in place of the reader below.
 */
import { metrics } from '@opentelemetry/api';
import {
  type DataPoint,
  DataPointType,
  type Histogram,
  MeterProvider,
  type MetricData,
  MetricReader,
} from '@opentelemetry/sdk-metrics';

/** A reader that collects only when asked: the demo prints, it does not export. */
class OnDemandReader extends MetricReader {
  protected override async onShutdown(): Promise<void> {}
  protected override async onForceFlush(): Promise<void> {}
}

export interface DemoMetrics {
  /** One line for the live view: decisions by outcome, and callers waiting now. */
  summary(): Promise<string>;
  /** Every data point of the `tollgate` meter, one per line. */
  report(): Promise<string>;
  shutdown(): Promise<void>;
}

/** startMetrics registers a MeterProvider globally; call it before making the limiters. */
export function startMetrics(): DemoMetrics {
  const reader = new OnDemandReader();
  const provider = new MeterProvider({ readers: [reader] });
  metrics.setGlobalMeterProvider(provider);

  async function collect(): Promise<MetricData[]> {
    const { resourceMetrics } = await reader.collect();
    return resourceMetrics.scopeMetrics.filter((s) => s.scope.name === 'tollgate').flatMap((s) => s.metrics);
  }

  return {
    async summary() {
      const all = await collect();
      const outcomes = new Map<string, number>();
      let queued = 0;
      for (const m of all) {
        for (const p of m.dataPoints as DataPoint<unknown>[]) {
          if (m.descriptor.name === 'tollgate.decisions') {
            const o = String(p.attributes['tollgate.outcome']);
            outcomes.set(o, (outcomes.get(o) ?? 0) + (p.value as number));
          } else if (m.descriptor.name === 'tollgate.queue.size') queued += p.value as number;
        }
      }
      if (outcomes.size === 0) return 'metrics: no tollgate.decisions recorded yet';
      const d = [...outcomes].map(([o, n]) => `${o} ${n}`).join(', ');
      return `metrics: tollgate.decisions ${d} · tollgate.queue.size ${queued}`;
    },
    async report() {
      const lines: string[] = [];
      for (const m of await collect()) {
        for (const p of m.dataPoints as DataPoint<unknown>[]) {
          const attrs = Object.entries(p.attributes)
            .map(([k, v]) => `${k.replace(/^tollgate\./, '')}=${String(v)}`)
            .join(' ');
          lines.push(`  ${m.descriptor.name}{${attrs}} ${value(m.dataPointType, p.value)}`);
        }
      }
      if (lines.length === 0) lines.push('  none recorded (this build of @tollgate/core records no metrics)');
      return `OpenTelemetry metrics of the "tollgate" meter:\n${lines.join('\n')}`;
    },
    shutdown: () => provider.shutdown(),
  };
}

function value(type: DataPointType, v: unknown): string {
  if (type !== DataPointType.HISTOGRAM) return String(v);
  const h = v as Histogram;
  const mean = h.count > 0 ? (h.sum ?? 0) / h.count : 0;
  return `count ${h.count}, mean ${mean.toFixed(3)} s, max ${(h.max ?? 0).toFixed(3)} s`;
}
