/**
 * Multi-tenant agents with tiers, sharing one org budget — `pnpm demo`.
 *
 * Five tenants on the free, pro and enterprise tiers each run four agents at once. Every agent
 * loops over support tasks: model calls through a throttled OpenAI client and the tools the model
 * asks for through throttled tools (agents.ts). Each tier's quotas are policies of @tollgate/core
 * picked by a policy function (tenant → policy), so every tenant has buckets of its own. Together
 * the tenants want more requests than the provider allows the organisation for the model: a
 * SharedLimiter pool divides that limit among them by their tiers' weights, and the provider's
 * rate-limit headers correct the pool's policy, set 2× too high (org.ts). `--no-shared` runs the
 * same load on the per-tenant quotas alone, and shows the provider's 429s that causes.
 *
 * While it runs, a live view shows per tenant its share of the org's requests against its
 * weight's, waits and 429s; at the end, tables check each tenant's tool calls against its quota
 * (b + r·T) and the org against the provider's limit (b + r·T, 429 rate, shares).
 */
import { type AdmitEvent, throttleOpenAI } from '@tollgate/agent';
import { type Backend, RateLimiter } from '@tollgate/core';
import type OpenAI from 'openai';
import { connectOpenAI } from '../shared/openai.ts';
import type { AttemptRecord } from '../support/fake-openai.ts';
import { type AgentRun, agent, supportModel, supportTools } from './agents.ts';
import { ArgsError, type DemoArgs, USAGE, parseDemoArgs } from './args.ts';
import { SetupError, openBackend } from './backend.ts';
import { type DemoMetrics, startMetrics } from './metrics.ts';
import { orgChecks, orgTable } from './org-view.ts';
import { GUESSED_POLICY, PROVIDER_LIMIT, WARMUP_MS, orgRequests } from './org.ts';
import { AttemptLog } from './provider.ts';
import { newStats } from './stats.ts';
import { TENANTS, TIERS, WEIGHTS, quotaOf } from './tiers.ts';
import { boundLine, createView, summaryTable } from './view.ts';

/**
 * Agents each tenant runs at once: offline, enough to ask for more than the org's limit; on the
 * real API, one, so that five tenants stay within a small account's requests per minute.
 */
const AGENTS_OFFLINE = 6;
const AGENTS_REAL_API = 1;

/** What runDemo needs besides the command line. */
interface Setup {
  readonly backendLabel: string;
  readonly backend: Backend;
  readonly openai: OpenAI;
  readonly model: string;
  readonly where: string;
  readonly offline: { readonly attempts: readonly AttemptRecord[] } | undefined;
  readonly metrics: DemoMetrics | undefined;
}

async function main(): Promise<void> {
  let args: DemoArgs;
  try {
    args = parseDemoArgs(process.argv.slice(2), process.env, process.stdout.isTTY === true);
  } catch (e) {
    if (!(e instanceof ArgsError)) throw e;
    process.stderr.write(`${e.message}\n\n${USAGE}`);
    process.exitCode = 2;
    return;
  }
  if (args.help) {
    process.stdout.write(USAGE);
    return;
  }

  // Registered before any limiter is made, as an application would at startup.
  const metrics = args.metrics ? startMetrics() : undefined;
  const store = await openBackend(args);
  const model = process.env.OPENAI_MODEL ?? 'gpt-4o-mini';
  const endpoint = await connectOpenAI({
    fake: { latencyMs: 15, chat: supportModel, limits: { [model]: PROVIDER_LIMIT } },
  }).catch(async (e: unknown) => {
    await store.close();
    throw e;
  });
  try {
    await runDemo(args, {
      backendLabel: store.label,
      backend: store.backend,
      openai: endpoint.openai,
      model: endpoint.model,
      where: endpoint.where,
      offline: endpoint.fake,
      metrics,
    });
  } finally {
    await endpoint.close();
    await store.close();
    await metrics?.shutdown();
  }
}

async function runDemo(args: DemoArgs, setup: Setup): Promise<void> {
  const { backend, model } = setup;
  const stats = Object.keys(TENANTS).map(newStats);
  const byTenant = new Map(stats.map((s) => [s.tenant, s]));
  const start = performance.now();
  const deadline = start + args.seconds * 1000;
  const warmupEnd = start + WARMUP_MS;
  const log = new AttemptLog(stats, warmupEnd);

  // One limiter per kind of budget; the policy function picks each tenant's tier.
  const requests = new RateLimiter({ backend, name: 'requests', policy: (tenant) => quotaOf(tenant).requests });
  const llmTokens = new RateLimiter({ backend, name: 'llm-tokens', policy: (tenant) => quotaOf(tenant).llmTokens });
  const toolCalls = new RateLimiter({ backend, name: 'tools', policy: (tenant) => quotaOf(tenant).tools });

  const onAdmit = (e: AdmitEvent) => {
    const s = byTenant.get(e.user);
    if (s === undefined) return;
    if (!e.retry) s.modelWaiting--;
    s.attemptsAdmitted++;
    s.attemptWaitTotalMs += e.waitedMs;
    s.attemptMaxWaitMs = Math.max(s.attemptMaxWaitMs, e.waitedMs);
  };
  // Each call waits for its tenant's own quota first, then for the tenant's share of the org's
  // pool (per model, its key the tenant, weighted by tier).
  const perTenant = args.shared
    ? { requests, llmTokens, shared: { requests: orgRequests(backend) } }
    : { requests, llmTokens };
  const openai = setup.openai.withOptions({ fetch: log.fetch() });
  // A slot for each agent: callers wait for their share in the pool, where it can see them.
  const perUser = { concurrency: AGENTS_OFFLINE, maxQueued: 64 };
  const client = throttleOpenAI(openai, { ...perTenant, perUser, onAdmit });

  const agentsPerTenant = setup.offline !== undefined ? AGENTS_OFFLINE : AGENTS_REAL_API;
  const run: AgentRun = { client, model, tools: supportTools(toolCalls), deadline, failures: [] };

  const tiers = (['free', 'pro', 'enterprise'] as const)
    .map((tier, i) => `${tier} ${TIERS[tier].tools.rate}/s (${i === 0 ? 'burst ' : ''}${TIERS[tier].tools.capacity})`)
    .join(', ');
  const demand = stats.reduce((n, s) => n + (quotaOf(s.tenant).requests as { rate: number }).rate, 0);
  process.stdout.write(
    `Tollgate demo: ${stats.length} tenants × ${agentsPerTenant} agents, backend ${setup.backendLabel}\n` +
      `Model calls go to ${setup.where}.\n` +
      `Tool-call quotas: ${tiers}.\n` +
      (setup.offline !== undefined
        ? `The provider allows the org ${PROVIDER_LIMIT.requests} requests/s for ${model} (bursts of ${PROVIDER_LIMIT.requests}); the tenants' ${stats.length * agentsPerTenant} agents want more${args.shared ? '' : `, and their own request quotas add up to ${demand}/s`}.\n`
        : '') +
      (args.shared
        ? `Shared pool: ${model}'s requests divided by weight (enterprise ${WEIGHTS.enterprise}, pro ${WEIGHTS.pro}, free ${WEIGHTS.free}), set to ${GUESSED_POLICY.rate}/s — 2× too high, as a user who guessed wrong: the provider's x-ratelimit headers correct it.\n\n`
        : `No shared pool (--no-shared): each tenant has its own quotas only (requests, LLM tokens, tools), and the SDK retries 429s (2 retries).\n\n`),
  );

  const view = createView({ plain: args.plain });
  let footer: string[] = [];
  const refreshMetrics = () =>
    setup.metrics?.summary().then(
      (line) => {
        footer = [line];
      },
      () => {},
    );
  const status = () =>
    performance.now() < deadline ? `new tasks until ${args.seconds} s` : 'time is up, finishing the calls already made';
  const render = () => {
    const now = performance.now();
    view.update({ stats, elapsedMs: now - start, status: status(), warm: now >= warmupEnd, footer });
  };
  render();
  let ticks = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    if (now >= warmupEnd && now < deadline) log.sample();
    if (++ticks % 5 === 0) void refreshMetrics();
    if (ticks % (args.plain ? 2 : 1) === 0) render();
  }, 100);
  try {
    await Promise.all(stats.flatMap((s) => Array.from({ length: agentsPerTenant }, () => agent(run, s))));
  } finally {
    clearInterval(timer);
    await refreshMetrics();
    render();
    view.done();
  }

  const elapsedS = (performance.now() - start) / 1000;
  process.stdout.write(`\nDone in ${elapsedS.toFixed(1)} s. Tool calls per tenant against its quota:\n`);
  process.stdout.write(`${summaryTable(stats, args.plain)}\n`);
  process.stdout.write('A token bucket admits at most burst + rate × T in a window of T seconds:\n');
  for (const s of stats) process.stdout.write(`${boundLine(s)}\n`);

  const report = {
    stats,
    log,
    provider: setup.offline?.attempts.filter((a) => a.model === model),
    warmupEnd,
    deadline,
    start,
    plain: args.plain,
  };
  process.stdout.write(
    `\nThe org's requests to ${model}, ${args.shared ? 'shared by weight' : 'not shared (--no-shared)'}:\n${orgTable(report)}\n`,
  );
  for (const line of orgChecks(report)) process.stdout.write(`${line}\n`);
  if (setup.metrics !== undefined) process.stdout.write(`\n${await setup.metrics.report()}\n`);
  if (run.failures.length > 0) {
    process.stderr.write(
      `${run.failures.length} agents stopped on an error:\n  ${[...new Set(run.failures)].join('\n  ')}\n`,
    );
    process.exitCode = 1;
  }
}

main().catch((e: unknown) => {
  const detail = e instanceof SetupError ? e.message : e instanceof Error ? (e.stack ?? e.message) : String(e);
  process.stderr.write(`demo failed: ${detail}\n`);
  process.exitCode = 1;
});
