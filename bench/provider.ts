/**
 * The provider storm: several processes, several tenants, each with several concurrent loops of
 * chat calls, against the loopback OpenAI server enforcing `limit` requests/s for one model, SDK
 * retries at their default. Once through bare clients, once through throttleOpenAI with a shared
 * requests pool on Redis whose policy is 2× the provider's limit (a user who guessed wrong).
 *
 * Each phase: a warm-up (the first responses), a steady window (429 rate, goodput, tenant
 * shares), then a forced 429 with `retry-after-ms` and a probe window (the longest silence the
 * model saw after it, and whether every process and tenant resumed). Everything is counted at
 * the server, from its attempt log.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import Table from 'cli-table3';
import { type FakeOpenAI, startFakeOpenAI } from '../examples/support/fake-openai.js';
import type { PhaseDone, PhaseMessage, WorkerConfig } from './provider-worker.js';

const MODEL = 'gpt-4o-mini';

export interface StormOptions {
  /** The provider's limit for the model, requests per second (bursts of as many). @default 10 */
  limit?: number;
  /** Child processes. @default 3 */
  processes?: number;
  /** Tenants and their weights; every process runs all of them. @default { gold: 2, silver: 1, bronze: 1 } */
  tenants?: Record<string, number>;
  /** Concurrent loops per tenant per process. @default 2 */
  loops?: number;
  /**
   * Ms after the first attempt arrived not counted in the steady window: the first responses,
   * read within a few ms on loopback, and the settling they cause. @default 500
   */
  warmupMs?: number;
  /** The steady window, ms (long enough that one request is a few % of a tenant's share). @default 10000 */
  steadyMs?: number;
  /** The window after the forced 429, ms. @default 3000 */
  probeMs?: number;
  /** The forced 429's `retry-after-ms`. @default 1500 */
  retryAfterMs?: number;
}

export interface ContenderRow {
  contender: 'bare openai client' | 'Tollgate (throttleOpenAI, shared pool on Redis)';
  /** Ms from the planned start to the first attempt's arrival (the workers' lag). */
  firstArrivalMs: number;
  /** Every HTTP attempt the server saw for the model in this phase, 2xx and 429s. */
  attempts: number;
  rateLimited: number;
  /** The steady window: attempts, 429s, their % of attempts, 2xx/s and its % of the limit. */
  steady: { attempts: number; rateLimited: number; rateLimitedPct: number; okPerSecond: number; goodputPct: number };
  /** Each tenant's % of the steady 2xx, and its weighted share %. */
  shares: Record<string, { pct: number; weightedPct: number }>;
  /** The largest |share ÷ weighted share − 1| over the tenants, %. */
  worstShareDeviationPct: number;
  /** After the forced 429: the longest silence (ms), its bounds (ms after the 429), 429s, resumes. */
  pause: {
    found: boolean;
    gapMs: number;
    gapFromMs: number;
    gapToMs: number;
    /** Attempts that arrived within `retryAfterMs` after the forced 429. */
    sentWithin: number;
    /** 429s after the forced one until the phase's end. */
    rateLimitedAfter: number;
    /** Processes and tenants with a 2xx after the silence, of all. */
    processesResumed: number;
    tenantsResumed: number;
  };
  calls: number;
  /** Failed calls by what the caller saw (HTTP status or error name), over all processes. */
  callerErrors: Record<string, number>;
}

export interface ProviderStorm {
  options: Required<StormOptions>;
  rows: ContenderRow[];
  /** Wall time of the whole scenario (workers' start-up included), s. */
  seconds: number;
}

const DEFAULTS: Required<StormOptions> = {
  limit: 10,
  processes: 3,
  tenants: { gold: 2, silver: 1, bronze: 1 },
  loops: 2,
  warmupMs: 500,
  steadyMs: 10_000,
  probeMs: 3000,
  retryAfterMs: 1500,
};

/** Room for a late start of the workers before the steady window must end, ms. */
const STARTUP_SLACK_MS = 500;

const here = (f: string): string => fileURLToPath(new URL(f, import.meta.url));

interface Worker {
  cp: ChildProcess;
  /** Resolves with the next message that is not `ready`. */
  next(): Promise<PhaseDone>;
}

function startWorker(cfg: WorkerConfig): Promise<Worker> {
  return new Promise((resolve, reject) => {
    const cp = fork(here('./provider-worker.ts'), [JSON.stringify(cfg)], {
      execArgv: process.execArgv,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    let waiting: { resolve: (d: PhaseDone) => void; reject: (e: Error) => void } | undefined;
    const fail = (e: Error) => {
      reject(e);
      waiting?.reject(e);
    };
    cp.on('error', fail);
    cp.on('exit', (code) => {
      if (code !== 0) fail(new Error(`provider-worker ${cfg.proc} exited with ${code}`));
    });
    cp.on('message', (m: { ready?: true; done?: PhaseDone; failed?: string }) => {
      if (m.ready) {
        resolve({
          cp,
          next: () =>
            new Promise((res, rej) => {
              waiting = { resolve: res, reject: rej };
            }),
        });
      } else if (m.done) waiting?.resolve(m.done);
      else if (m.failed) fail(new Error(`provider-worker ${cfg.proc}: ${m.failed}`));
    });
  });
}

/** providerStorm runs the bare phase, then the Tollgate phase, and counts what each caused. */
export async function providerStorm(redisPort: number, opts: StormOptions = {}): Promise<ProviderStorm> {
  const o = { ...DEFAULTS, ...opts };
  const t0 = performance.now();
  const workers = await Promise.all(
    Array.from({ length: o.processes }, (_, proc) =>
      startWorker({ redisPort, model: MODEL, limit: o.limit, tenants: o.tenants, loops: o.loops, proc }),
    ),
  );
  try {
    const rows: ContenderRow[] = [];
    for (const phase of ['bare', 'tollgate'] as const) rows.push(await runPhase(phase, workers, o));
    return { options: o, rows, seconds: (performance.now() - t0) / 1000 };
  } finally {
    for (const w of workers) if (w.cp.connected) w.cp.send('exit');
  }
}

async function runPhase(
  phase: PhaseMessage['phase'],
  workers: Worker[],
  o: Required<StormOptions>,
): Promise<ContenderRow> {
  const fake = await startFakeOpenAI({ limits: { [MODEL]: { requests: o.limit, windowMs: 1000 } } });
  try {
    // The lead covers a phase's set-up in the workers (a new client, the pool script loaded).
    const startAt = Date.now() + 1000;
    const forceAt = startAt + STARTUP_SLACK_MS + o.warmupMs + o.steadyMs;
    const stopAt = forceAt + o.probeMs;
    const msg: PhaseMessage = { phase, baseURL: fake.baseURL, prefix: `bench-storm-${startAt}:`, startAt, stopAt };
    const done = Promise.all(workers.map((w) => w.next()));
    for (const w of workers) w.cp.send(msg);
    // The forced 429 goes to the first attempt the server receives after this instant.
    let forcedIndex = -1;
    const timer = setTimeout(() => {
      forcedIndex = fake.attempts.length;
      fake.rateLimitNext(MODEL, 1, { retryAfterMs: o.retryAfterMs });
    }, forceAt - Date.now());
    const outs = await done;
    clearTimeout(timer);
    return count(phase, fake, outs, o, { startAt, forceAt, stopAt, forcedIndex });
  } finally {
    await fake.close();
  }
}

function count(
  phase: PhaseMessage['phase'],
  fake: FakeOpenAI,
  outs: PhaseDone[],
  o: Required<StormOptions>,
  t: { startAt: number; forceAt: number; stopAt: number; forcedIndex: number },
): ContenderRow {
  const log = fake.attempts.filter((a) => a.model === MODEL);
  const tenantOf = (user: string | undefined) => (user ?? '').split('/')[0] as string;
  const procOf = (user: string | undefined) => /\/p(\d+)-/.exec(user ?? '')?.[1];

  const first = log[0]?.date ?? t.startAt;
  const steadyFrom = first + o.warmupMs;
  // A start later than the slack shortens the window: it must end before the forced 429.
  const steadyTo = Math.min(steadyFrom + o.steadyMs, t.forceAt);
  const steady = log.filter((a) => a.date >= steadyFrom && a.date < steadyTo);
  const steadyOk = steady.filter((a) => a.status === 200);
  const steadyLimited = steady.filter((a) => a.status === 429).length;
  const okPerSecond = steadyOk.length / ((steadyTo - steadyFrom) / 1000);

  const wsum = Object.values(o.tenants).reduce((x, y) => x + y, 0);
  const shares: ContenderRow['shares'] = {};
  let worst = 0;
  for (const [tenant, w] of Object.entries(o.tenants)) {
    const n = steadyOk.filter((a) => tenantOf(a.tenant) === tenant).length;
    const pct = steadyOk.length > 0 ? (100 * n) / steadyOk.length : 0;
    const weightedPct = (100 * w) / wsum;
    shares[tenant] = { pct, weightedPct };
    worst = Math.max(worst, Math.abs(pct / weightedPct - 1) * 100);
  }

  const forced = t.forcedIndex >= 0 ? fake.attempts.slice(t.forcedIndex).find((a) => a.model === MODEL) : undefined;
  const pause: ContenderRow['pause'] = {
    found: forced !== undefined && forced.status === 429,
    gapMs: 0,
    gapFromMs: 0,
    gapToMs: 0,
    sentWithin: 0,
    rateLimitedAfter: 0,
    processesResumed: 0,
    tenantsResumed: 0,
  };
  if (forced !== undefined) {
    const after = log.filter((a) => a.time >= forced.time && a !== forced);
    pause.sentWithin = after.filter((a) => a.time - forced.time < o.retryAfterMs).length;
    pause.rateLimitedAfter = after.filter((a) => a.status === 429).length;
    // The silence: the longest interval between consecutive arrivals from the forced 429 on.
    let prev = forced.time;
    for (const a of after) {
      if (a.date >= t.stopAt) break;
      if (a.time - prev > pause.gapMs) {
        pause.gapMs = a.time - prev;
        pause.gapFromMs = prev - forced.time;
        pause.gapToMs = a.time - forced.time;
      }
      prev = a.time;
    }
    const resumed = after.filter((a) => a.time - forced.time >= pause.gapToMs && a.status === 200);
    pause.processesResumed = new Set(resumed.map((a) => procOf(a.tenant))).size;
    pause.tenantsResumed = new Set(resumed.map((a) => tenantOf(a.tenant))).size;
  }

  const callerErrors: Record<string, number> = {};
  for (const out of outs) for (const [k, v] of Object.entries(out.errors)) callerErrors[k] = (callerErrors[k] ?? 0) + v;
  return {
    contender: phase === 'bare' ? 'bare openai client' : 'Tollgate (throttleOpenAI, shared pool on Redis)',
    firstArrivalMs: first - t.startAt,
    attempts: log.length,
    rateLimited: log.filter((a) => a.status === 429).length,
    steady: {
      attempts: steady.length,
      rateLimited: steadyLimited,
      rateLimitedPct: steady.length > 0 ? (100 * steadyLimited) / steady.length : 0,
      okPerSecond,
      goodputPct: (100 * okPerSecond) / o.limit,
    },
    shares,
    worstShareDeviationPct: worst,
    pause,
    calls: outs.reduce((n, x) => n + x.calls, 0),
    callerErrors,
  };
}

/** providerTargets are issue 12's targets, checked on the Tollgate row. */
export function providerTargets(r: ProviderStorm): Array<{ text: string; value: number; holds: boolean }> {
  const tg = r.rows.find((x) => x.contender.startsWith('Tollgate'));
  if (tg === undefined) return [];
  const errors = Object.values(tg.callerErrors).reduce((x, y) => x + y, 0);
  const o = r.options;
  return [
    {
      text: 'provider storm: Tollgate 429s, % of steady attempts: <= 1',
      value: tg.steady.rateLimitedPct,
      holds: tg.steady.rateLimitedPct <= 1,
    },
    {
      text: 'provider storm: Tollgate goodput, % of the limit: >= 90',
      value: tg.steady.goodputPct,
      holds: tg.steady.goodputPct >= 90,
    },
    {
      text: 'provider storm: worst tenant share off its weight, %: <= 10',
      value: tg.worstShareDeviationPct,
      holds: tg.worstShareDeviationPct <= 10,
    },
    {
      text: `provider storm: silence after a forced 429 (retry-after-ms ${o.retryAfterMs}), ms: >= ${o.retryAfterMs}`,
      value: tg.pause.gapMs,
      holds: tg.pause.found && tg.pause.gapMs >= o.retryAfterMs,
    },
    {
      text: `provider storm: processes resumed after it: ${o.processes}`,
      value: tg.pause.processesResumed,
      holds: tg.pause.processesResumed === o.processes && tg.pause.tenantsResumed === Object.keys(o.tenants).length,
    },
    { text: 'provider storm: errors Tollgate callers saw: 0', value: errors, holds: errors === 0 },
  ];
}

/** printProviderStorm prints a row per measure, a column per contender, and the target. */
export function printProviderStorm(r: ProviderStorm): void {
  const o = r.options;
  const names = Object.keys(o.tenants);
  const weights = names.map((n) =>
    ((100 * (o.tenants[n] ?? 0)) / Object.values(o.tenants).reduce((x, y) => x + y, 0)).toFixed(0),
  );
  const rows: Array<[string, (x: ContenderRow) => string, string]> = [
    ['HTTP attempts (429s), whole phase', (x) => `${x.attempts} (${x.rateLimited})`, ''],
    [
      '429s, steady window',
      (x) => `${x.steady.rateLimited} of ${x.steady.attempts} (${x.steady.rateLimitedPct.toFixed(1)}%)`,
      '<= 1%',
    ],
    [
      `goodput, steady window (of ${o.limit}/s)`,
      (x) => `${x.steady.okPerSecond.toFixed(2)}/s (${x.steady.goodputPct.toFixed(0)}%)`,
      '>= 90%',
    ],
    [
      `shares ${names.join('/')}, % (weights ${weights.join('/')})`,
      (x) => names.map((n) => x.shares[n]?.pct.toFixed(1)).join('/'),
      '±10% of each',
    ],
    [
      'caller errors (of calls)',
      (x) => {
        const errs = Object.entries(x.callerErrors);
        return `${errs.length === 0 ? '0' : errs.map(([k, v]) => `${v} × ${k}`).join(', ')} (of ${x.calls})`;
      },
      'Tollgate: 0',
    ],
    [
      `forced 429 (retry-after-ms ${o.retryAfterMs}): longest silence, ms (from → to, after it)`,
      (x) =>
        x.pause.found
          ? `${x.pause.gapMs.toFixed(0)} (${x.pause.gapFromMs.toFixed(0)} → ${x.pause.gapToMs.toFixed(0)})`
          : 'no forced 429 seen',
      `>= ${o.retryAfterMs}`,
    ],
    [`  attempts sent within ${o.retryAfterMs} ms of it`, (x) => String(x.pause.sentWithin), ''],
    ['  429s after it', (x) => String(x.pause.rateLimitedAfter), ''],
    [
      '  resumed after it',
      (x) => `${x.pause.processesResumed}/${o.processes} processes, ${x.pause.tenantsResumed}/${names.length} tenants`,
      'all',
    ],
  ];
  const t = new Table({
    head: ['provider storm', ...r.rows.map((x) => x.contender), 'target'],
    style: { head: [], border: [] },
  });
  for (const [label, cell, target] of rows) t.push([label, ...r.rows.map(cell), target]);
  console.log(
    `\nProvider storm: ${o.processes} processes × ${names.length} tenants × ${o.loops} loops, provider limit ${o.limit} requests/s, pool policy ${2 * o.limit}/s, SDK retries at default; steady window ${o.warmupMs}–${o.warmupMs + o.steadyMs} ms after the first attempt; took ${r.seconds.toFixed(1)} s`,
  );
  console.log(t.toString());
}
