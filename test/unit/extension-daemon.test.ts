/** The extension's vscode-free client logic: discovery, token errors, transport auth, backoff, start command. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import type { AddressInfo } from 'node:net';
import sinon from 'sinon';
import { WebSocketServer } from 'ws';
import { Backoff, DaemonUnavailable, openTransport, readDiscovery, startDaemon } from '../../extension/daemon';

function stateDir(port: number, token = 'secret'): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-ext-'));
  fs.writeFileSync(path.join(d, 'token'), token + '\n', { mode: 0o600 });
  fs.writeFileSync(path.join(d, 'daemon.json'), JSON.stringify({ pid: 1, port, host: '127.0.0.1', tokenFile: path.join(d, 'token'), startedAt: 0, version: 'x' }));
  return d;
}

test('discovery: no daemon is startable; a missing token is not', () => {
  const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-ext-'));
  assert.throws(() => readDiscovery(empty), (e: unknown) => e instanceof DaemonUnavailable && e.canStart && /no trenv daemon/.test(e.message));
  const d = stateDir(1);
  fs.rmSync(path.join(d, 'token'));
  assert.throws(() => readDiscovery(d), (e: unknown) => e instanceof DaemonUnavailable && !e.canStart);
  assert.equal(readDiscovery(stateDir(5)).token, 'secret');
});

test('the transport sends the token and reports refusals clearly', async () => {
  const server = http.createServer();
  const wss = new WebSocketServer({ noServer: true });
  const seen: string[] = [];
  server.on('upgrade', (req, sock, head) => {
    seen.push(String(req.headers.authorization));
    if (req.headers.authorization !== 'Bearer secret') {
      sock.write('HTTP/1.1 401 Unauthorized\r\n\r\n');
      sock.destroy();
      return;
    }
    wss.handleUpgrade(req, sock, head, (ws) => ws.on('message', (m) => ws.send(m)));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as AddressInfo).port;
  const ok = await openTransport(stateDir(port));
  assert.equal(seen[0], 'Bearer secret');
  ok.socket.close();
  await assert.rejects(openTransport(stateDir(port, 'wrong')), (e: unknown) => e instanceof DaemonUnavailable && /HTTP 401/.test(e.message) && !e.canStart);
  server.close();
  wss.close();
  await assert.rejects(openTransport(stateDir(port)), (e: unknown) => e instanceof DaemonUnavailable && e.canStart);
});

test('backoff doubles up to its cap and resets', () => {
  const b = new Backoff(500, 4000);
  assert.deepEqual([b.next(), b.next(), b.next(), b.next(), b.next()], [500, 1000, 2000, 4000, 4000]);
  b.reset();
  assert.equal(b.next(), 500);
});

test('the start command: output is logged, failures say what to do', async () => {
  const log = sinon.fake();
  await startDaemon('echo started; echo warn >&2', os.tmpdir(), log);
  assert.deepEqual(log.args.map((a) => a[0]).sort(), ['started', 'warn']);
  await assert.rejects(startDaemon('exit 3', os.tmpdir(), () => undefined), /exited with 3/);
});
