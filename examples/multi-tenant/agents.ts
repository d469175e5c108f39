/**
 * The tenants' agents: each loops over support tasks as its tenant (`withUser`). A task is a
 * conversation with the model through the throttled client, and the tools it asks for, one per
 * turn, through throttled tools: model → lookup_order → model → check_stock → model's answer.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { defineTool, runToolCalls, withUser } from '@tollgate/agent';
import type { RateLimiter } from '@tollgate/core';
import type OpenAI from 'openai';
import { z } from 'zod';
import { TENANT_HEADER } from './provider.ts';
import type { TenantStats } from './stats.ts';

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
 * supportModel is how the loopback server answers offline: asked about an order, it looks the
 * order up; with the order, it checks the stock; with both, it answers.
 */
export function supportModel(body: { messages?: { role?: string; content?: unknown }[]; tools?: unknown[] }) {
  const messages = body.messages ?? [];
  const results = messages.filter((m) => m.role === 'tool').length;
  if (!Array.isArray(body.tools) || results >= 2) return undefined;
  const question = String(messages.find((m) => m.role === 'user')?.content ?? '');
  const [, orderId = 'A-1', sku = 'SKU-1'] = /order (A-\d+).*(SKU-\d+)/.exec(question) ?? [];
  return {
    toolCalls: [
      results === 0
        ? { name: 'lookup_order', arguments: { order_id: orderId } }
        : { name: 'check_stock', arguments: { sku } },
    ],
  };
}

/** supportTools are the agents' tools, each call taking a token of the tenant's `limiter` bucket. */
export function supportTools(limiter: RateLimiter) {
  return [
    defineTool({
      name: 'lookup_order',
      description: 'Look up an order by its id: status and carrier.',
      parameters: z.object({ order_id: z.string().describe('The order id, e.g. A-1042') }),
      limiter,
      execute: counted(async ({ order_id }: { order_id: string }) => {
        await sleep(150);
        return JSON.stringify({ order_id, status: 'shipped', carrier: 'DHL' });
      }),
    }),
    defineTool({
      name: 'check_stock',
      description: 'How many units of a product are in stock.',
      parameters: z.object({ sku: z.string().describe('The product SKU') }),
      limiter,
      execute: counted(async ({ sku }: { sku: string }) => {
        await sleep(90);
        return JSON.stringify({ sku, in_stock: 7 });
      }),
    }),
  ];
}

export interface AgentRun {
  client: OpenAI;
  model: string;
  tools: ReturnType<typeof supportTools>;
  /** performance.now() after which agents start no new task. */
  deadline: number;
  /** Why agents stopped early (an error a retry would not fix), `tenant: message`. */
  failures: string[];
}

let taskNo = 0;

async function task(run: AgentRun, s: TenantStats): Promise<void> {
  const n = ++taskNo;
  const messages: OpenAI.ChatCompletionMessageParam[] = [
    { role: 'system', content: 'You are a support agent. Use the tools, then answer in one sentence.' },
    { role: 'user', content: `Customer asks about order A-${1000 + n}: where is it, and is SKU-${n % 50} in stock?` },
  ];
  const definitions = run.tools.map((t) => t.definition);
  for (let turn = 0; turn < MAX_TURNS; turn++) {
    // Past the deadline, a task makes no more model calls: the run ends with what is in flight.
    if (turn > 0 && performance.now() >= run.deadline) return;
    s.modelWaiting++;
    const res = await run.client.chat.completions.create(
      { model: run.model, messages, tools: definitions, max_completion_tokens: 200 },
      { headers: { [TENANT_HEADER]: s.tenant } },
    );
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
    const results = await currentTurn.run(t, () => runToolCalls(calls, run.tools));
    // Calls that never ran (bad arguments, an unknown tool) leave the queue too.
    s.queued -= calls.length - t.started;
    s.toolErrors += calls.length - t.started;
    messages.push(...results);
  }
}

/**
 * agent runs tasks as tenant `s` until the deadline. A model call the provider refused (429 after
 * the SDK's retries) or failed (5xx) ends its task and is counted; any other error stops the agent
 * (the real API refusing the key, say) and the others go on.
 */
export async function agent(run: AgentRun, s: TenantStats): Promise<void> {
  while (performance.now() < run.deadline) {
    try {
      await withUser(s.tenant, () => task(run, s));
    } catch (e) {
      const status = (e as { status?: unknown }).status;
      const seen = typeof status === 'number' ? String(status) : e instanceof Error ? e.name : String(e);
      s.callerErrors[seen] = (s.callerErrors[seen] ?? 0) + 1;
      if (typeof status !== 'number' || (status !== 429 && status < 500)) {
        run.failures.push(`${s.tenant}: ${e instanceof Error ? e.message : String(e)}`);
        return;
      }
    }
  }
}
