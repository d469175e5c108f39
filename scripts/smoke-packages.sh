#!/usr/bin/env bash
# What an outside project sees: installs the packed tarballs (.tmp/pack, from
# scripts/check-packages.sh) into a fresh npm project, then loads them as ES modules, with
# require() from CommonJS, and type-checks a program against them (nodenext and bundler).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cd "$dir"
npm init -y >/dev/null
npm pkg set type=module >/dev/null
npm i --no-audit --no-fund --loglevel=error "$root"/.tmp/pack/tollgate-core-*.tgz "$root"/.tmp/pack/tollgate-agent-*.tgz \
  openai zod ioredis typescript@~5.9 @types/node@22 >/dev/null

cat > esm.mjs <<'JS'
import { MemoryBackend, RateLimiter } from '@tollgate/core';
import { throttleTool, withUser } from '@tollgate/agent';
const limiter = new RateLimiter({ backend: new MemoryBackend(), policy: { rate: 2, per: '1s' } });
const tool = throttleTool(async (q) => `found ${q}`, { limiter });
const out = await withUser('u1', () => tool('x'));
const d = await limiter.tryAcquire('u1');
if (out !== 'found x' || d.remaining !== 0) throw new Error(`esm: ${out} ${JSON.stringify(d)}`);
console.log('smoke: ESM ok');
JS
node esm.mjs

cat > cjs.cjs <<'JS'
const { MemoryBackend, RateLimiter, isMaxWaitExceededError } = require('@tollgate/core');
const { withUser } = require('@tollgate/agent');
const limiter = new RateLimiter({ backend: new MemoryBackend(), policy: { rate: 1, per: '1m' } });
withUser('u', async () => {
  await limiter.acquire('u');
  await limiter.acquire('u', { maxWaitMs: 10 }).then(
    () => { throw new Error('cjs: second acquire should have failed'); },
    (e) => { if (!isMaxWaitExceededError(e)) throw e; },
  );
  console.log('smoke: CommonJS require() ok');
});
JS
node cjs.cjs

cat > types.ts <<'TS'
import { type Grant, MemoryBackend, RateLimiter } from '@tollgate/core';
import { throttleOpenAI } from '@tollgate/agent';
import OpenAI from 'openai';
const limiter = new RateLimiter({ backend: new MemoryBackend(), policy: { rate: 2, per: '1s' } });
const grant: Promise<Grant> = limiter.acquire('k', { cost: 1 });
const client: OpenAI = throttleOpenAI(new OpenAI({ apiKey: 'x' }), { requests: limiter });
void grant;
void client;
TS
for res in nodenext bundler; do
  mod=$([ "$res" = nodenext ] && echo nodenext || echo esnext)
  npx tsc --noEmit --strict --skipLibCheck false --module "$mod" --moduleResolution "$res" --target es2022 --types node types.ts
  echo "smoke: types ok ($res)"
done

# A memory-only app that never installs the optional peer ioredis still type-checks with
# skipLibCheck false (core's declarations mark the ioredis imports; see optional-peer-types.mjs).
# The Redis types are any there, and with ioredis installed (above) they are the real ones.
# Its own directory, not below the project above, whose node_modules holds ioredis.
bare=$(mktemp -d)
trap 'rm -rf "$dir" "$bare"' EXIT
cd "$bare"
npm init -y >/dev/null
npm pkg set type=module >/dev/null
npm i --no-audit --no-fund --loglevel=error "$root"/.tmp/pack/tollgate-core-*.tgz typescript@~5.9 @types/node@22 >/dev/null
if [ -e node_modules/ioredis ]; then
  echo "smoke: ioredis was installed without being asked for" >&2
  exit 1
fi
cat > types.ts <<'TS'
import { MemoryBackend, RateLimiter } from '@tollgate/core';
const limiter = new RateLimiter({ backend: new MemoryBackend(), policy: { rate: 2, per: '1s' } });
const left: Promise<number> = limiter.tryAcquire('k').then((d) => d.remaining);
void left;
TS
npx tsc --noEmit --strict --skipLibCheck false --module nodenext --moduleResolution nodenext --target es2022 --types node types.ts
echo "smoke: types ok without ioredis (skipLibCheck false)"
