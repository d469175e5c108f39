/**
 * The demo's command line, parsed by node's util.parseArgs.
 */
import { parseArgs } from 'node:util';

export type BackendKind = 'memory' | 'redis' | 'hybrid';

/** DemoArgs is what `pnpm demo [options]` asked for. */
export interface DemoArgs {
  /** Where the buckets live. @default 'memory' */
  backend: BackendKind;
  /** The Redis server for `redis` and `hybrid`. @default $REDIS_URL or redis://127.0.0.1:6379 */
  redisUrl: string;
  /** How long the tenants keep starting new tasks, in seconds. @default 8 */
  seconds: number;
  /** Plain periodic lines instead of the in-place view, even on a terminal. @default !stdout.isTTY */
  plain: boolean;
  /** Share the provider's limit through SharedLimiter pools (false: per-tenant quotas only). @default true */
  shared: boolean;
  /** Register an OpenTelemetry MeterProvider and print Tollgate's metrics. @default false */
  metrics: boolean;
  help: boolean;
}

export const USAGE = `Usage: pnpm demo [options]

Several tenants on the free, pro and enterprise tiers run agents at once: model calls through a
throttled OpenAI client, tool calls through throttled tools. Each tenant has its tier's quotas, and
together they want more than the provider allows the organisation for the model: shared pools
divide that limit among the tenants by their tiers' weights, steered by the provider's rate-limit
headers. A live per-tenant view shows each tenant's share of the org's requests and the provider's
429s; final tables check every tenant against its quota and the org against the provider's limit.
Offline by default (a loopback OpenAI-compatible server that enforces the org's limit); set
OPENAI_API_KEY to use the real API.

Options:
  --backend <kind>     memory | redis | hybrid                      (default: memory)
  --redis-url <url>    Redis for --backend redis|hybrid   (default: $REDIS_URL or redis://127.0.0.1:6379)
  --seconds <n>        how long tenants keep starting tasks, 1-30   (default: 8)
  --plain              periodic plain lines instead of the live view (default when stdout is not a TTY)
  --no-shared          per-tenant quotas only, no shared pools: the same load, and the 429 storm it causes
  --metrics            register an OpenTelemetry MeterProvider and print Tollgate's metrics
  -h, --help           show this help
`;

/** ArgsError is a command line the demo cannot run; its message says what to change. */
export class ArgsError extends Error {
  override name = 'ArgsError';
}

/** parseDemoArgs reads `argv` (without node and the script); throws {@link ArgsError}. */
export function parseDemoArgs(argv: string[], env: NodeJS.ProcessEnv = process.env, isTTY = false): DemoArgs {
  let values: ReturnType<typeof parse>['values'];
  try {
    // `pnpm demo -- --backend redis` hands the script a leading `--`.
    values = parse(argv[0] === '--' ? argv.slice(1) : argv).values;
  } catch (e) {
    throw new ArgsError(e instanceof Error ? e.message : String(e));
  }
  const backend = values.backend;
  if (backend !== 'memory' && backend !== 'redis' && backend !== 'hybrid') {
    throw new ArgsError(`--backend must be memory, redis or hybrid (received ${JSON.stringify(backend)})`);
  }
  const seconds = Number(values.seconds);
  if (!Number.isFinite(seconds) || seconds < 1 || seconds > 30) {
    throw new ArgsError(`--seconds must be a number from 1 to 30 (received ${JSON.stringify(values.seconds)})`);
  }
  const redisUrl = values['redis-url'] ?? env.REDIS_URL ?? 'redis://127.0.0.1:6379';
  if (!/^rediss?:\/\//.test(redisUrl)) {
    throw new ArgsError(`--redis-url must start with redis:// or rediss:// (received ${JSON.stringify(redisUrl)})`);
  }
  return {
    backend,
    redisUrl,
    seconds,
    plain: values.plain || !isTTY,
    shared: !values['no-shared'],
    metrics: values.metrics,
    help: values.help,
  };
}

function parse(argv: string[]) {
  return parseArgs({
    args: argv,
    allowPositionals: false,
    strict: true,
    options: {
      backend: { type: 'string', default: 'memory' },
      'redis-url': { type: 'string' },
      seconds: { type: 'string', default: '8' },
      plain: { type: 'boolean', default: false },
      // parseArgs's allowNegative needs Node 22.4; the demo runs on 20 too.
      'no-shared': { type: 'boolean', default: false },
      metrics: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
}
