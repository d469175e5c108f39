/**
 * Multi-tenant agents with tiers — `pnpm demo`.
 *
 * Five tenants on the free, pro and enterprise tiers each run four agents at once. Every agent
 * loops over support tasks: a model call through a throttled OpenAI client, the tool calls the
 * model asked for through throttled tools, the model again with the results. Each tier's quota is
 * a policy of @tollgate/core picked by a policy function (tenant → policy), so every tenant gets
 * its own buckets on the chosen backend. While it runs, a live view shows per tenant what is
 * queued, in flight and admitted; at the end a table compares each tenant's achieved tool-call
 * rate with its quota and the token-bucket bound capacity + rate·T.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { defineTool, runToolCalls, throttleOpenAI, withUser } from '@tollgate/agent';
import { type Backend, RateLimiter } from '@tollgate/core';
import type OpenAI from 'openai';
import { z } from 'zod';
import { connectOpenAI } from '../shared/openai.ts';
import { ArgsError, type DemoArgs, USAGE, parseDemoArgs } from './args.ts';
import { SetupError, openBackend } from './backend.ts';
import { type TenantStats, newStats } from './stats.ts';
import { TENANTS, TIERS, quotaOf } from './tiers.ts';
import { boundLine, createView, summaryTable } from './view.ts';

/**
 * Agents each tenant runs at once: offline, enough to ask for more than every quota; on the real
 * API, one, so that five tenants stay within a small account's requests per minute.
 */
const AGENTS_OFFLINE = 4;
const AGENTS_REAL_API = 1;
/** Model turns per task at most (the model may keep asking for tools). */
const MAX_TURNS = 3;

/** The tool calls of one model turn, so the tools can tell whose they are and since when they wait. */
interface Turn {
  readonly stats: TenantStats;
  readonly submittedAt: number;
  started: number;
}
const currentTurn = new AsyncLocalStorage<Turn>();

/** counted wraps a tool's body: it runs once the limiter has admitted the call. */
function counted<A>(body: (args: A) => Promise<string>): (args: A) => Promise<string> {
  return async (args) => {
    const turn = currentTurn.getStore();
    if (turn !== undefined) {
      const s = turn.stats;
      const now = performance.now();
      const waited = now - turn.submittedAt;
      turn.started++;
      s.queued--;
      s.inFlight++;
      s.admitted++;
      s.waitedTotalMs += waited;
      s.maxWaitMs = Math.max(s.maxWaitMs, waited);
      s.lastAdmitAt = now;
    }
    try {
      return await body(args);
    } finally {
      if (turn !== undefined) turn.stats.inFlight--;
    }
  };
}

/**
 * supportModel is how the loopback server answers offline: asked about an order, it calls both
 * tools at once (as a real model does with parallel tool calls); after the results it answers.
 */
function supportModel(body: { messages?: { role?: string; content?: unknown }[]; tools?: unknown[] }) {
  const last = body.messages?.at(-1);
  if (!Array.isArray(body.tools) || last?.role === 'tool') return undefined;
  const [, orderId = 'A-1', sku = 'SKU-1'] = /order (A-\d+).*(SKU-\d+)/.exec(String(last?.content)) ?? [];
  return {
    toolCalls: [
      { name: 'lookup_order', arguments: { order_id: orderId } },
      { name: 'check_stock', arguments: { sku } },
    ],
  };
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

  const store = await openBackend(args);
  const endpoint = await connectOpenAI({ fake: { latencyMs: 15, chat: supportModel } }).catch(async (e: unknown) => {
    await store.close();
    throw e;
  });
  try {
    const agents = endpoint.fake !== undefined ? AGENTS_OFFLINE : AGENTS_REAL_API;
    await runDemo(args, store.label, store.backend, endpoint.openai, endpoint.model, endpoint.where, agents);
  } finally {
    await endpoint.close();
    await store.close();
  }
}

async function runDemo(
  args: DemoArgs,
  backendLabel: string,
  backend: Backend,
  openai: OpenAI,
  model: string,
  where: string,
  agentsPerTenant: number,
): Promise<void> {
  // One limiter per kind of budget; the policy function picks each tenant's tier.
  const requests = new RateLimiter({ backend, name: 'requests', policy: (tenant) => quotaOf(tenant).requests });
  const llmTokens = new RateLimiter({ backend, name: 'llm-tokens', policy: (tenant) => quotaOf(tenant).llmTokens });
  const toolCalls = new RateLimiter({ backend, name: 'tools', policy: (tenant) => quotaOf(tenant).tools });

  const client = throttleOpenAI(openai, { requests, llmTokens, perUser: { concurrency: 2, maxQueued: 64 } });

  const tools = [
    defineTool({
      name: 'lookup_order',
      description: 'Look up an order by its id: status and carrier.',
      parameters: z.object({ order_id: z.string().describe('The order id, e.g. A-1042') }),
      limiter: toolCalls,
      execute: counted(async ({ order_id }: { order_id: string }) => {
        await sleep(150);
        return JSON.stringify({ order_id, status: 'shipped', carrier: 'DHL' });
      }),
    }),
    defineTool({
      name: 'check_stock',
      description: 'How many units of a product are in stock.',
      parameters: z.object({ sku: z.string().describe('The product SKU') }),
      limiter: toolCalls,
      execute: counted(async ({ sku }: { sku: string }) => {
        await sleep(90);
        return JSON.stringify({ sku, in_stock: 7 });
      }),
    }),
  ];
  const definitions = tools.map((t) => t.definition);

  const stats = Object.keys(TENANTS).map(newStats);
  const start = performance.now();
  const deadline = start + args.seconds * 1000;
  let taskNo = 0;

  async function task(s: TenantStats): Promise<void> {
    const n = ++taskNo;
    const messages: OpenAI.ChatCompletionMessageParam[] = [
      { role: 'system', content: 'You are a support agent. Use the tools, then answer in one sentence.' },
      { role: 'user', content: `Customer asks about order A-${1000 + n}: where is it, and is SKU-${n % 50} in stock?` },
    ];
    for (let turn = 0; turn < MAX_TURNS; turn++) {
      const res = await client.chat.completions.create({
        model,
        messages,
        tools: definitions,
        max_completion_tokens: 200,
      });
      s.modelCalls++;
      s.llmTokens += res.usage?.total_tokens ?? 0;
      const message = res.choices[0]?.message;
      if (message === undefined) return;
      messages.push(message);
      const calls = message.tool_calls ?? [];
      if (calls.length === 0) return;
      const t: Turn = { stats: s, submittedAt: performance.now(), started: 0 };
      s.firstSubmitAt ??= t.submittedAt;
      s.queued += calls.length;
      const results = await currentTurn.run(t, () => runToolCalls(calls, tools));
      // Calls that never ran (bad arguments, an unknown tool) leave the queue too.
      s.queued -= calls.length - t.started;
      s.toolErrors += calls.length - t.started;
      messages.push(...results);
    }
  }

  // An agent whose task fails (the real API refusing, say) stops; the others go on.
  const failures: string[] = [];
  async function agent(s: TenantStats): Promise<void> {
    try {
      while (performance.now() < deadline) await withUser(s.tenant, () => task(s));
    } catch (e) {
      failures.push(`${s.tenant}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  const tiers = (['free', 'pro', 'enterprise'] as const)
    .map((tier, i) => `${tier} ${TIERS[tier].tools.rate}/s (${i === 0 ? 'burst ' : ''}${TIERS[tier].tools.capacity})`)
    .join(', ');
  process.stdout.write(
    `Tollgate demo: ${stats.length} tenants × ${agentsPerTenant} agents, backend ${backendLabel}\n` +
      `Model calls go to ${where}.\n` +
      `Tool-call quotas: ${tiers}.\n\n`,
  );
  const view = createView({ plain: args.plain });
  const status = () =>
    performance.now() < deadline ? `new tasks until ${args.seconds} s` : 'no new tasks, finishing the queued';
  const render = () => view.update(stats, performance.now() - start, status());
  render();
  const timer = setInterval(render, args.plain ? 250 : 100);
  try {
    await Promise.all(stats.flatMap((s) => Array.from({ length: agentsPerTenant }, () => agent(s))));
  } finally {
    clearInterval(timer);
    render();
    view.done();
  }

  const elapsedS = (performance.now() - start) / 1000;
  process.stdout.write(`\nDone in ${elapsedS.toFixed(1)} s. Tool calls per tenant against its quota:\n`);
  process.stdout.write(`${summaryTable(stats, args.plain)}\n`);
  process.stdout.write('A token bucket admits at most burst + rate × T in a window of T seconds:\n');
  for (const s of stats) process.stdout.write(`${boundLine(s)}\n`);
  if (failures.length > 0) {
    process.stderr.write(`${failures.length} agents stopped on an error:\n  ${[...new Set(failures)].join('\n  ')}\n`);
    process.exitCode = 1;
  }
}

main().catch((e: unknown) => {
  const detail = e instanceof SetupError ? e.message : e instanceof Error ? (e.stack ?? e.message) : String(e);
  process.stderr.write(`demo failed: ${detail}\n`);
  process.exitCode = 1;
});
