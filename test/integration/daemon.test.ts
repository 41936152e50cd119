/** The daemon's front door: auth, Origin, fuzzed protocol input, the single-instance lock. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import WebSocket from 'ws';
import { Methods } from '../../runtime-daemon/protocol/messages';
import { ROOT, startDaemon, TestDaemon } from './harness';

let d: TestDaemon;
let port: number;
let token: string;

before(async () => {
  d = await startDaemon();
  port = d.client.port;
  token = fs.readFileSync(d.paths.token, 'utf8').trim();
});
after(async () => d?.stop());

function tryConnect(headers: Record<string, string>): Promise<{ status?: number; open: boolean }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers });
    ws.once('open', () => {
      ws.close();
      resolve({ open: true });
    });
    ws.once('unexpected-response', (_q, res) => resolve({ status: res.statusCode, open: false }));
    ws.once('error', () => resolve({ open: false }));
  });
}

test('token file is 0600 and the daemon listens on loopback only', () => {
  assert.equal(fs.statSync(d.paths.token).mode & 0o777, 0o600);
  const tcp = fs.readFileSync('/proc/net/tcp', 'utf8') + fs.readFileSync('/proc/net/tcp6', 'utf8');
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  const listeners = tcp.split('\n').filter((l) => l.includes(`:${hex} `) && / 0A /.test(l));
  assert.ok(listeners.length >= 1);
  for (const l of listeners) assert.match(l.trim().split(/\s+/)[1], /^0100007F:/, `listener not on 127.0.0.1: ${l}`);
});

test('no token, a wrong token and a browser Origin are all rejected', async () => {
  assert.deepEqual(await tryConnect({}), { status: 401, open: false });
  assert.deepEqual(await tryConnect({ authorization: 'Bearer nope' }), { status: 401, open: false });
  assert.deepEqual(await tryConnect({ authorization: `Bearer ${token}`, origin: 'http://localhost:3000' }), { status: 403, open: false });
  assert.deepEqual(await tryConnect({ authorization: `Bearer ${token}` }), { open: true });
});

test('fuzzed protocol input gets JSON-RPC errors and never crashes the daemon', async () => {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { headers: { authorization: `Bearer ${token}` } });
  await new Promise((r) => ws.once('open', r));
  const replies: Array<{ id: unknown; error?: { code: number; message: string }; result?: unknown }> = [];
  ws.on('message', (m) => replies.push(JSON.parse(m.toString())));
  const frames: Array<string | Buffer> = [
    '{ not json',
    '[]',
    '42',
    'null',
    JSON.stringify({ id: 1, method: 'trenv/status' }), // no jsonrpc
    JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'trenv/nope' }),
    JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'trenv/invoke', params: {} }),
    JSON.stringify({ jsonrpc: '2.0', id: 4, method: 'trenv/invoke', params: { agentDir: '/nonexistent' } }),
    JSON.stringify({ jsonrpc: '2.0', id: 5, method: 'trenv/getInvocation', params: { id: '../../../etc/passwd' } }),
    JSON.stringify({ jsonrpc: '2.0', id: 6, method: 'trenv/invoke', params: { agentDir: ROOT, env: { A: 1 } } }),
    Buffer.from([0xde, 0xad, 0xbe, 0xef]),
    'x'.repeat(9 * 1024 * 1024),
    JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'trenv/kill', params: 'str' }),
  ];
  // random garbage too (seeded, so a failure can be replayed)
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  for (let i = 0; i < 50; i++) {
    const b = Buffer.alloc(1 + Math.floor(rnd() * 300));
    for (let j = 0; j < b.length; j++) b[j] = Math.floor(rnd() * 256);
    frames.push(b.toString('latin1'));
  }
  for (const f of frames) ws.send(f, { binary: Buffer.isBuffer(f) });
  ws.send(JSON.stringify({ jsonrpc: '2.0', id: 99, method: 'trenv/status' }));
  const until = Date.now() + 5000;
  while (!replies.some((r) => r.id === 99) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  ws.close();
  const byId = new Map(replies.filter((r) => r.id !== null).map((r) => [r.id, r]));
  assert.ok(byId.get(99)?.result, 'daemon still answers after the fuzz');
  assert.equal(byId.get(1)?.error?.code, -32600);
  assert.equal(byId.get(2)?.error?.code, -32601);
  assert.equal(byId.get(3)?.error?.code, -32602);
  assert.equal(byId.get(4)?.error?.code, -32011);
  assert.match(byId.get(4)?.error?.message ?? '', /no agent at/);
  assert.equal(byId.get(5)?.error?.code, -32012);
  assert.equal(byId.get(6)?.error?.code, -32602);
  const anon = replies.filter((r) => r.id === null).map((r) => r.error?.code);
  assert.ok(anon.includes(-32700), 'parse error reported');
  assert.ok(anon.includes(-32001), 'oversized message reported');
  assert.ok(anon.includes(-32600), 'invalid request reported');
  // and a normal client still works
  const st = await d.client.rpc.sendRequest(Methods.status);
  assert.equal(st.pid, d.proc.pid);
});

test('a second daemon on the same state dir says where the running one is', () => {
  const r = spawnSync(process.execPath, [path.join(ROOT, 'dist/trenvd.js'), '--state-dir', d.stateDir], { encoding: 'utf8', timeout: 15000 });
  assert.equal(r.status, 3);
  assert.match(r.stderr, new RegExp(`already running .*pid ${d.proc.pid}.*127\\.0\\.0\\.1:${port}`));
});

test('CLI: status, invalid manifest, unknown agent, exit codes', () => {
  const cli = (...a: string[]) => spawnSync(process.execPath, [path.join(ROOT, 'dist/trenv.js'), '--state-dir', d.stateDir, ...a], { encoding: 'utf8', timeout: 30000 });
  const st = cli('daemon', 'status');
  assert.equal(st.status, 0, st.stderr);
  assert.match(st.stdout, /running: pid \d+/);
  const unknown = cli('invoke', '/nonexistent/agent');
  assert.equal(unknown.status, 1);
  assert.match(unknown.stderr, /no agent at \/nonexistent\/agent/);
  const bad = fs.mkdtempSync('/tmp/trenv-bad-');
  fs.writeFileSync(path.join(bad, 'trenv.json'), JSON.stringify({ name: 'x', runtime: 'perl', handler: 'a.pl:h' }));
  const inv = cli('invoke', bad);
  assert.equal(inv.status, 1);
  assert.match(inv.stderr, /\/runtime: must be one of "python", "node"/);
  const val = cli('validate', bad);
  assert.equal(val.status, 1);
  assert.match(val.stdout, /\/runtime: error/);
  const usage = cli('bogus');
  assert.equal(usage.status, 2);
  const noDaemon = spawnSync(process.execPath, [path.join(ROOT, 'dist/trenv.js'), '--state-dir', '/tmp/trenv-none-' + process.pid, 'ps'], { encoding: 'utf8' });
  assert.equal(noDaemon.status, 3);
  // clients that come and go leave no trace in the daemon's log (a closed LSP connection once
  // made vscode-languageserver log "Sending log message failed" in a loop)
  const before = d.log().length;
  for (let i = 0; i < 3; i++) cli('daemon', 'status');
  const t = Date.now();
  while (Date.now() - t < 300) {
    /* give a runaway loop time to show */
  }
  assert.ok(d.log().length - before < 2000, `daemon log grew by ${d.log().length - before} bytes`);
  assert.match(noDaemon.stderr, /no trenv daemon is running .* sudo trenv daemon start/);
});
