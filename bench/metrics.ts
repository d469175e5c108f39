/**
 * The cost of OpenTelemetry metrics on the memory path: RateLimiter.acquire and tryAcquire with no
 * MeterProvider registered, and with one registered (an SDK MeterProvider whose reader is never
 * collected during the run). The registered contender sets the global provider for its own run
 * and removes it after; a limiter looks the provider up again within 1024 decisions, so at most
 * that many of a run's calls see the other setting.
 */
import { metrics } from '@opentelemetry/api';
import {
  AggregationTemporality,
  InMemoryMetricExporter,
  MeterProvider,
  PeriodicExportingMetricReader,
} from '@opentelemetry/sdk-metrics';
import { MemoryBackend, RateLimiter } from '@tollgate/core';
import type { Contender, Scenario } from './harness.js';
import type { Sizes } from './scenarios.js';

const NONE = 'no MeterProvider';
const REGISTERED = 'MeterProvider registered';

function provider(): MeterProvider {
  const exporter = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE);
  return new MeterProvider({
    readers: [new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 3_600_000 })],
  });
}

function contenders(op: 'acquire' | 'tryAcquire'): Contender[] {
  const policy = { rate: 1000, per: '1h', capacity: 1e9 } as const;
  const none = new RateLimiter({ backend: new MemoryBackend(), policy, name: 'bench-none' });
  const reg = new RateLimiter({ backend: new MemoryBackend(), policy, name: 'bench-registered' });
  const p = provider();
  return [
    {
      name: `${op}, ${NONE}`,
      role: 'tollgate',
      run:
        op === 'acquire'
          ? async (n) => {
              for (let i = 0; i < n; i++) await none.acquire('user-1');
            }
          : async (n) => {
              for (let i = 0; i < n; i++) await none.tryAcquire('user-1');
            },
    },
    {
      name: `${op}, ${REGISTERED}`,
      role: 'peer',
      run: async (n) => {
        metrics.setGlobalMeterProvider(p);
        try {
          if (op === 'acquire') for (let i = 0; i < n; i++) await reg.acquire('user-1');
          else for (let i = 0; i < n; i++) await reg.tryAcquire('user-1');
        } finally {
          metrics.disable();
        }
      },
    },
  ];
}

/** Memory acquire and tryAcquire, one key, allowed, with and without a MeterProvider. */
export function metricsScenarios(sizes: Sizes): Scenario[] {
  return [
    {
      id: 'metrics-acquire',
      title: 'memory acquire, 1 key, OpenTelemetry',
      ops: sizes.memOps,
      contenders: contenders('acquire'),
    },
    {
      id: 'metrics-try',
      title: 'memory tryAcquire, 1 key, OpenTelemetry',
      ops: sizes.memOps,
      contenders: contenders('tryAcquire'),
    },
  ];
}
