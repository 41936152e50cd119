/** A terminal inside a sandbox over the binary WebSocket: runs commands there, resizes, cleans up. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import WebSocket from 'ws';
import { Methods } from '../../runtime-daemon/protocol/messages';
import { PROBE, startDaemon, TestDaemon, waitFor } from './harness';

let d: TestDaemon;
before(async () => {
  d = await startDaemon();
});
after(async () => d?.stop());

function open(path: string, headers: Record<string, string> = {}): WebSocket {
  const token = fs.readFileSync(d.paths.token, 'utf8').trim();
  return new WebSocket(`ws://127.0.0.1:${d.client.port}${path}`, { headers: { authorization: `Bearer ${token}`, ...headers } });
}

test('a shell in a sandbox: its own hostname and user, resize works, closing cleans up', async () => {
  const ws = open(`/terminal?agentDir=${encodeURIComponent(PROBE)}&cols=100&rows=30`);
  let out = '';
  ws.on('message', (m) => (out += m.toString()));
  await new Promise((r, j) => {
    ws.once('open', r);
    ws.once('error', j);
  });
  const send = (s: string) => ws.send(Buffer.from(s), { binary: true });
  send('echo "H=$(hostname) U=$(id -u) P=$(ls /proc | grep -c "^[0-9]")"; stty size\n');
  await waitFor(() => /H=trenv-\S+ U=10001 P=\d+/.test(out) && /30 100/.test(out), 10000, `shell output, got: ${JSON.stringify(out)}`);
  const host = /H=(\S+)/.exec(out)![1];
  assert.notEqual(host, os.hostname());
  ws.send(JSON.stringify({ type: 'resize', cols: 120, rows: 40 }));
  send('stty size\n');
  await waitFor(() => /40 120/.test(out), 5000, 'resized');
  const busy = (await d.client.rpc.sendRequest(Methods.listSandboxes)).filter((s) => s.state === 'busy');
  assert.equal(busy.length, 1, 'the terminal holds one sandbox');
  send('sleep 1000 &\n');
  ws.close();
  await waitFor(() => true, 10);
  // the sandbox is cleaned (the background sleep killed) and back in the pool
  for (let i = 0; i < 100; i++) {
    const list = await d.client.rpc.sendRequest(Methods.listSandboxes);
    if (list.length && list.every((s) => s.state === 'idle')) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const list = await d.client.rpc.sendRequest(Methods.listSandboxes);
  assert.ok(list.every((s) => s.state === 'idle'), JSON.stringify(list.map((s) => s.state)));
  assert.ok(list.every((s) => (s.memory?.processes ?? 0) <= 1), 'only init is left in the sandbox');
});

test('terminal endpoint: auth and bad input', async () => {
  const token = fs.readFileSync(d.paths.token, 'utf8').trim();
  const noToken = new WebSocket(`ws://127.0.0.1:${d.client.port}/terminal?agentDir=${encodeURIComponent(PROBE)}`);
  const status = await new Promise((r) => noToken.once('unexpected-response', (_q, res) => r(res.statusCode)));
  assert.equal(status, 401);
  const withOrigin = new WebSocket(`ws://127.0.0.1:${d.client.port}/terminal`, { headers: { authorization: `Bearer ${token}`, origin: 'http://x' } });
  assert.equal(await new Promise((r) => withOrigin.once('unexpected-response', (_q, res) => r(res.statusCode))), 403);
  const ws = open('/terminal?agentDir=/nonexistent');
  let text = '';
  ws.on('message', (m) => (text += m.toString()));
  const code = await new Promise((r) => ws.once('close', (c) => r(c)));
  assert.equal(code, 1000);
  assert.match(text, /cannot open a terminal: no agent at \/nonexistent/);
  const other = open('/nope');
  assert.equal(await new Promise((r) => other.once('unexpected-response', (_q, res) => r(res.statusCode))), 404);
});
