/** Debugging handlers in their sandbox: debugpy (DAP) and the Node inspector (CDP) through the daemon's relay. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import WebSocket from 'ws';
import { DebugReady, Methods, Notifications } from '../../runtime-daemon/protocol/messages';
import { EXAMPLES, PROBE, startDaemon, TestDaemon } from './harness';

let d: TestDaemon;
before(async () => {
  d = await startDaemon();
});
after(async () => d?.stop());

function nextDebugReady(): Promise<DebugReady> {
  return new Promise((resolve) => {
    const sub = d.client.rpc.onNotification(Notifications.debugReady, (r: DebugReady) => {
      sub.dispose();
      resolve(r);
    });
  });
}

/** A minimal DAP client: Content-Length framed JSON over TCP. */
class Dap {
  private buf = Buffer.alloc(0);
  private seq = 0;
  private readonly waiters: Array<{ match: (m: Record<string, unknown>) => boolean; resolve: (m: Record<string, unknown>) => void }> = [];
  readonly seen: Array<Record<string, unknown>> = [];
  constructor(private readonly sock: net.Socket) {
    sock.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      for (;;) {
        const head = this.buf.indexOf('\r\n\r\n');
        if (head < 0) return;
        const len = Number(/Content-Length: (\d+)/i.exec(this.buf.subarray(0, head).toString())![1]);
        if (this.buf.length < head + 4 + len) return;
        const msg = JSON.parse(this.buf.subarray(head + 4, head + 4 + len).toString()) as Record<string, unknown>;
        this.buf = this.buf.subarray(head + 4 + len);
        this.seen.push(msg);
        const i = this.waiters.findIndex((w) => w.match(msg));
        if (i >= 0) this.waiters.splice(i, 1)[0].resolve(msg);
      }
    });
  }
  wait(match: (m: Record<string, unknown>) => boolean, ms = 15000): Promise<Record<string, unknown>> {
    const old = this.seen.find(match);
    if (old) return Promise.resolve(old);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`DAP: timed out; seen ${JSON.stringify(this.seen.map((m) => m.event ?? m.command))}`)), ms);
      this.waiters.push({ match, resolve: (m) => (clearTimeout(t), resolve(m)) });
    });
  }
  send(command: string, args: unknown = {}): number {
    const body = JSON.stringify({ seq: ++this.seq, type: 'request', command, arguments: args });
    this.sock.write(`Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    return this.seq;
  }
  async request(command: string, args: unknown = {}): Promise<Record<string, unknown>> {
    const s = this.send(command, args);
    const r = await this.wait((m) => m.type === 'response' && m.request_seq === s);
    assert.equal(r.success, true, `${command}: ${JSON.stringify(r)}`);
    return r;
  }
}

test('python: a breakpoint in the handler is hit under debugpy and its variables are visible', async () => {
  const file = path.join(PROBE, 'probe.py');
  const line = fs.readFileSync(file, 'utf8').split('\n').findIndex((l) => l.includes('return ACTIONS[')) + 1;
  const ready = nextDebugReady();
  const run = d.invoke({ agentDir: PROBE, event: { action: 'random_values' }, debug: true, stream: true });
  const r = await ready;
  assert.equal(r.runtime, 'python');
  const sock = net.connect(r.port, '127.0.0.1');
  await new Promise((ok) => sock.once('connect', ok));
  const dap = new Dap(sock);
  await dap.request('initialize', { adapterID: 'trenv-python', pathFormat: 'path', linesStartAt1: true, columnsStartAt1: true });
  dap.send('attach', { pathMappings: [{ localRoot: PROBE, remoteRoot: '/app' }], justMyCode: true });
  await dap.wait((m) => m.event === 'initialized');
  await dap.request('setBreakpoints', { source: { path: file }, breakpoints: [{ line }] });
  await dap.request('configurationDone');
  const stopped = await dap.wait((m) => m.event === 'stopped');
  assert.equal((stopped.body as { reason: string }).reason, 'breakpoint');
  const threadId = (stopped.body as { threadId: number }).threadId;
  const st = await dap.request('stackTrace', { threadId, levels: 1 });
  const frame = (st.body as { stackFrames: Array<{ id: number; line: number; source: { path: string } }> }).stackFrames[0];
  assert.equal(frame.line, line);
  assert.equal(frame.source.path, file, 'the sandbox path /app is mapped to the workspace');
  const sc = await dap.request('scopes', { frameId: frame.id });
  const locals = (sc.body as { scopes: Array<{ name: string; variablesReference: number }> }).scopes.find((s) => /local/i.test(s.name))!;
  const vars = await dap.request('variables', { variablesReference: locals.variablesReference });
  const names = (vars.body as { variables: Array<{ name: string; value: string }> }).variables;
  assert.ok(names.some((v) => v.name === 'event' && v.value.includes('random_values')), JSON.stringify(names));
  await dap.request('continue', { threadId });
  const rec = await run;
  sock.destroy();
  assert.equal(rec.state, 'succeeded', JSON.stringify(rec.error));
});

test('node: the inspector is reachable from the host and pauses in the handler', async () => {
  const agentDir = path.join(EXAMPLES, 'node-json-transform');
  // the first statement of the handler's body
  const src = fs.readFileSync(path.join(agentDir, 'index.js'), 'utf8').split('\n');
  const start = src.findIndex((l) => /function handler\s*\(|handler\s*=\s*async|async function handler/.test(l));
  const line = start + 2; // 1-based line after the signature
  const ready = nextDebugReady();
  const event = JSON.parse(fs.readFileSync(path.join(agentDir, '.trenv/events/default.json'), 'utf8'));
  const run = d.invoke({ agentDir, event, debug: true, stream: true });
  const r = await ready;
  const list = (await (await fetch(`http://127.0.0.1:${r.port}/json/list`)).json()) as Array<{ webSocketDebuggerUrl: string }>;
  const url = list[0].webSocketDebuggerUrl.replace(/127\.0\.0\.1:\d+/, `127.0.0.1:${r.port}`);
  const ws = new WebSocket(url);
  await new Promise((ok) => ws.once('open', ok));
  let id = 0;
  const events: Array<{ method: string; params: Record<string, unknown> }> = [];
  ws.on('message', (m) => {
    const msg = JSON.parse(m.toString());
    if (msg.method) events.push(msg);
  });
  const call = (method: string, params = {}) => ws.send(JSON.stringify({ id: ++id, method, params }));
  call('Runtime.enable');
  call('Debugger.enable');
  call('Debugger.setBreakpointByUrl', { urlRegex: '/app/index\\.js$', lineNumber: line - 1, columnNumber: 0 });
  call('Runtime.runIfWaitingForDebugger');
  const until = Date.now() + 15000;
  let paused: { params: Record<string, unknown> } | undefined;
  while (Date.now() < until) {
    const hit = (e: { method: string; params: Record<string, unknown> }) => e.method === 'Debugger.paused' && ((e.params.hitBreakpoints as string[] | undefined)?.length ?? 0) > 0;
    paused = events.find(hit);
    if (paused) break;
    const other = events.filter((e) => e.method === 'Debugger.paused').pop();
    if (other) {
      events.splice(events.indexOf(other), 1);
      call('Debugger.resume');
    }
    await new Promise((ok) => setTimeout(ok, 20));
  }
  const frame = (paused?.params.callFrames as Array<{ functionName: string; url: string; location: { lineNumber: number } }> | undefined)?.[0];
  assert.ok(paused && frame, `paused at the breakpoint; events: ${events.map((e) => e.method).join(',')}`);
  assert.equal(frame!.location.lineNumber, line - 1, JSON.stringify(frame));
  call('Debugger.setBreakpointsActive', { active: false });
  call('Debugger.resume');
  const rec = await run;
  ws.close();
  assert.equal(rec.state, 'succeeded', JSON.stringify(rec.error));
});
