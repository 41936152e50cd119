import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TextDocument } from 'vscode-languageserver-textdocument';
import { codeLenses, manifestDiagnostics, manifestHover } from '../../runtime-daemon/server/lsp';

function agent(manifest: object, files: Record<string, string>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-lsp-'));
  fs.writeFileSync(path.join(dir, 'trenv.json'), JSON.stringify(manifest, null, 2));
  for (const [n, t] of Object.entries(files)) fs.writeFileSync(path.join(dir, n), t);
  return dir;
}

test('code lenses sit on the handler definition of an agent, nowhere else', () => {
  const py = 'import json\n\n\ndef helper():\n    pass\n\nasync def handler(event, context):\n    return 1\n';
  const dir = agent({ name: 'a', runtime: 'python', handler: 'main.py:handler' }, { 'main.py': py, 'other.py': py });
  const lenses = codeLenses(path.join(dir, 'main.py'), py);
  assert.deepEqual(lenses.map((l) => [l.command?.title, l.range.start.line, l.command?.arguments?.[0]]), [
    ['▶ Invoke', 6, dir],
    ['Debug', 6, dir],
  ]);
  assert.deepEqual(codeLenses(path.join(dir, 'other.py'), py), []);
  assert.deepEqual(
    codeLenses(path.join(dir, 'main.py'), py, true).map((l) => [l.command?.title, l.command?.command]),
    [['▶ Invoke', 'trenv.invoke'], ['▶ Invoke in microVM', 'trenv.invokeVm'], ['Debug', 'trenv.debug']],
  );
  const js = "'use strict';\nconst x = 1;\nexports.handler = async (event) => ({ x });\n";
  const jd = agent({ name: 'b', runtime: 'node', handler: 'index.js:handler' }, { 'index.js': js });
  assert.equal(codeLenses(path.join(jd, 'index.js'), js)[0].range.start.line, 2);
});

test('manifest diagnostics point at the offending field', () => {
  const text = '{\n  "name": "Bad Name",\n  "runtime": "python",\n  "handler": "main.py:handler",\n  "limits": { "memoryMb": 1 }\n}\n';
  const dir = agent({}, { 'main.py': 'def handler(e, c):\n  return 1\n' });
  const doc = TextDocument.create('file://' + path.join(dir, 'trenv.json'), 'json', 1, text);
  const d = manifestDiagnostics(doc, path.join(dir, 'trenv.json'));
  const name = d.find((x) => /lower-case/.test(String(x.message)))!;
  assert.equal(name.range.start.line, 1);
  const mem = d.find((x) => />= 16/.test(String(x.message)))!;
  assert.equal(mem.range.start.line, 4);
  const broken = TextDocument.create('file:///x/trenv.json', 'json', 1, '{ "name": ');
  assert.match(manifestDiagnostics(broken, '/x/trenv.json')[0].message as string, /not valid JSON/);
  const missingFn = TextDocument.create('file://' + path.join(dir, 'trenv.json'), 'json', 1, JSON.stringify({ name: 'a', runtime: 'python', handler: 'main.py:nope' }));
  assert.match(manifestDiagnostics(missingFn, path.join(dir, 'trenv.json'))[0].message as string, /function "nope" not found/);
});

test('hover shows the schema description of a manifest field', () => {
  const text = '{ "limits": { "memoryMb": 128 }, "network": "none" }';
  const doc = TextDocument.create('file:///x/trenv.json', 'json', 1, text);
  const h = manifestHover(doc, text.indexOf('memoryMb') + 2);
  assert.match(JSON.stringify(h?.contents), /limits\.memoryMb.*Memory limit/);
  const n = manifestHover(doc, text.indexOf('network') + 2);
  assert.match(JSON.stringify(n?.contents), /egress/);
});
