/**
 * The AI SDK and OpenAI Agents SDK examples, run as a user would (offline, on this Node), and the
 * numbers they print checked. Both SDKs need Node >= 22: on older Node these are skipped, and the
 * describe's name says why.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, test } from 'vitest';
import { expectWithinBucket } from '../support/bounds.ts';
import { runExample } from '../support/examples.ts';

const NODE_MAJOR = Number(process.versions.node.split('.')[0]);
const SKIP = NODE_MAJOR < 22;
const execFileAsync = promisify(execFile);

describe.skipIf(NODE_MAJOR < 22)(
  `examples/ai-sdk (skipped below Node 22: ai 7 needs it; this is Node ${NODE_MAJOR})`,
  () => {
    test("runs offline: alice's burst is spaced to 3 calls/s, bob is not delayed, the stream settles, the tool is throttled", async () => {
      const r = await runExample('ai-sdk/main.ts');
      const explain = `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
      expect(r.code, explain).toBe(0);
      const line = (prefix: string) => r.stdout.split('\n').find((l) => l.startsWith(prefix)) ?? '';
      const numbers = (text: string) => [...text.matchAll(/\d+/g)].map((m) => Number(m[0]));
      const alice = numbers(line('alice:').split('answered at')[1] ?? '')
        .slice(0, 6)
        .sort((a, b) => a - b);
      expect(alice, explain).toHaveLength(6);
      // Bursts of 3, then one every 333 ms: the 6th needs 1000 ms of refill after the start.
      expect(alice[5]).toBeGreaterThanOrEqual(995);
      expect(alice[5]).toBeLessThan(6000);
      const [bob] = numbers(line('bob:').split('answered at')[1] ?? '');
      expect(bob, explain).toBeDefined();
      expect(bob).toBeLessThan(alice[5] ?? 0);
      expect(line('stream:'), explain).toMatch(/carol reserved \d+ LLM tokens, settled to its usage of \d+/);
      expect(line('tools:'), explain).toBe("tools: 2 model calls, 1 tool call(s); dave's weather tokens left: 1 of 2");
    });
  },
);

describe.skipIf(SKIP)(`examples/openai-agents${SKIP ? ' (skipped: needs Node >= 22)' : ''}`, () => {
  test("prints alice's burst spaced to her quotas, bob's run not delayed, and answers made of each user's tool results", async () => {
    const examples = fileURLToPath(new URL('../../examples/', import.meta.url));
    const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' };
    delete env.OPENAI_API_KEY; // offline: the loopback server
    const { stdout } = await execFileAsync(
      process.execPath,
      ['--import', 'tsx', '--conditions=tollgate-source', 'openai-agents/main.ts'],
      { cwd: examples, env, timeout: 60_000 },
    );
    const line = (prefix: string) =>
      stdout.split('\n').find((l) => l.startsWith(prefix)) ?? `(no "${prefix}" line in)\n${stdout}`;
    const msAfter = (l: string, what: string) =>
      (l.split(what)[1]?.split(' ms')[0] ?? '').split(',').map((n) => Number(n.trim()));
    const requests = msAfter(line('alice: 6 model requests'), 'admitted at');
    const lookUps = msAfter(line('alice: 9 weather look-ups'), 'look-ups at');
    expect(requests).toHaveLength(6);
    expect(lookUps).toHaveLength(9);
    // Times count from just before the burst: 2 + 4/s and 3 + 10/s, so the last request comes
    // at least (6 - 2) / 4 s = 1 s in, the last look-up (9 - 3) / 10 s = 0.6 s in.
    expectWithinBucket(requests, 0, 2, 4, 2);
    expectWithinBucket(lookUps, 0, 3, 10, 2);
    expect(Math.max(...requests)).toBeGreaterThanOrEqual(1000 - 2);
    expect(Math.max(...lookUps)).toBeGreaterThanOrEqual(600 - 2);
    const bob = line('bob:');
    const [bobDone, aliceDone] = [
      Number(bob.match(/his run done at (\d+)/)?.[1]),
      Number(bob.match(/alice's at (\d+)/)?.[1]),
    ];
    expect(bobDone).toBeLessThan(aliceDone);
    expect(line('answer to alice:')).toMatch(/Done: Paris \d+°C for alice; Oslo \d+°C for alice; Lima \d+°C for alice/);
    expect(line('answer to bob:')).toMatch(/Done: Paris \d+°C for bob; Tokyo \d+°C for bob; Quito \d+°C for bob/);
  });
});
