import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { AgentNotFoundError, loadAgent, ManifestError, validateManifest } from '../../runtime-daemon/manifest/manifest';

function agent(manifest: unknown, files: Record<string, string> = {}): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-agent-'));
  fs.writeFileSync(path.join(dir, 'trenv.json'), typeof manifest === 'string' ? manifest : JSON.stringify(manifest));
  for (const [n, t] of Object.entries(files)) fs.writeFileSync(path.join(dir, n), t);
  return dir;
}

test('a valid manifest gets its defaults', () => {
  const d = agent({ name: 'a1', runtime: 'python', handler: 'main.py:handler' }, { 'main.py': 'def handler(event, context):\n  return 1\n' });
  const a = loadAgent(d);
  assert.equal(a.manifest.limits.memoryMb, 256);
  assert.equal(a.manifest.limits.timeoutMs, 30000);
  assert.equal(a.manifest.network, 'none');
  assert.equal(a.handlerFunction, 'handler');
});

test('errors name the field and the fix', () => {
  const d = validateManifest({ name: 'Bad Name', runtime: 'ruby', handler: 'main', limits: { memoryMb: 1, bogus: 1 }, extra: true });
  const byPath = new Map(d.map((x) => [x.path, x.message]));
  assert.match(byPath.get('/name') ?? '', /lower-case/);
  assert.match(byPath.get('/runtime') ?? '', /"python", "node"/);
  assert.match(byPath.get('/handler') ?? '', /<file>:<function>/);
  assert.match(byPath.get('/limits/memoryMb') ?? '', />= 16/);
  assert.match(byPath.get('/limits/bogus') ?? '', /unknown field/);
  assert.match(byPath.get('/extra') ?? '', /unknown field/);
  const missing = validateManifest({});
  assert.ok(missing.some((x) => x.path === '/name' && /missing required/.test(x.message)));
});

test('malformed JSON, missing folder, missing handler file are clear errors', () => {
  assert.throws(() => loadAgent(agent('{ not json')), (e: unknown) => e instanceof ManifestError && /not valid JSON/.test(e.message));
  assert.throws(() => loadAgent('/nonexistent/agent'), AgentNotFoundError);
  assert.throws(
    () => loadAgent(agent({ name: 'a2', runtime: 'node', handler: 'index.js:handler' })),
    (e: unknown) => e instanceof ManifestError && /handler file "index.js" not found/.test(e.message),
  );
});

test('env may not override TRENV_ variables', () => {
  const d = validateManifest({ name: 'a', runtime: 'node', handler: 'i.js:h', env: { TRENV_HANDLER: 'x' } });
  assert.ok(d.some((x) => x.path.startsWith('/env')), JSON.stringify(d));
});

test('every bundled example is valid', () => {
  const ex = path.join(__dirname, '../../../examples');
  const dirs = fs.readdirSync(ex).filter((n) => fs.existsSync(path.join(ex, n, 'trenv.json')));
  assert.ok(dirs.length >= 3);
  for (const n of dirs) loadAgent(path.join(ex, n));
});
