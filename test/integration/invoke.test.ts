/** Invoking the example agents end to end in real container sandboxes: results, logs, traces, memory, repurposing. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { LogLine, Methods, Notifications, TraceSpan } from '../../runtime-daemon/protocol/messages';
import { copyAgent, EXAMPLES, PROBE, startDaemon, TestDaemon } from './harness';

let d: TestDaemon;
let llm: { port: number; requests: Array<{ path?: string; url?: string; body?: unknown }>; close(): Promise<void> | void };

function event(agent: string): unknown {
  return JSON.parse(fs.readFileSync(path.join(EXAMPLES, agent, '.trenv/events/default.json'), 'utf8'));
}

before(async () => {
  d = await startDaemon();
  const mod = await import(pathToFileURL(path.join(__dirname, '../../../test/fixtures/llm-server.mjs')).href);
  llm = await mod.startLlmServer({ port: 0 });
});
after(async () => {
  await d?.stop();
  await llm?.close();
});

test('python example: result, logs and a full restore trace', async () => {
  const logs: LogLine[] = [];
  d.client.rpc.onNotification(Notifications.log, (l: LogLine) => {
    logs.push(l);
  });
  const r = await d.invoke({ agentDir: path.join(EXAMPLES, 'py-text-stats'), event: event('py-text-stats'), stream: true });
  assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
  const res = r.result as { words?: number; word_count?: number };
  assert.ok((res.words ?? res.word_count ?? 0) > 10, JSON.stringify(res));
  assert.ok(logs.some((l) => l.invocationId === r.id && l.stream === 'log'), 'structured log streamed live');
  const detail = await d.client.rpc.sendRequest(Methods.getInvocation, { id: r.id });
  const names = detail.trace.map((s: TraceSpan) => s.name);
  for (const n of ['pool.pick', 'sandbox.ready', 'process.start', 'runtime.load', 'handler.start', 'handler.run']) assert.ok(names.includes(n), `span ${n} in ${names}`);
  for (const s of detail.trace) {
    assert.ok(BigInt(s.endNs) >= BigInt(s.startNs), `${s.name} ends after it starts`);
    assert.ok(s.state, `${s.name} carries a state summary`);
  }
  assert.ok(detail.logs.some((l: LogLine) => l.stream === 'system' && /invocation succeeded/.test(l.text)));
});

test('node example runs and a second call repurposes a sandbox', async () => {
  const a = await d.invoke({ agentDir: path.join(EXAMPLES, 'node-json-transform'), event: event('node-json-transform') });
  assert.equal(a.state, 'succeeded', JSON.stringify(a.error));
  await new Promise((r) => setTimeout(r, 200)); // cleanup runs after the record ends
  const b = await d.invoke({ agentDir: path.join(EXAMPLES, 'node-json-transform'), event: event('node-json-transform') });
  assert.equal(b.state, 'succeeded');
  assert.equal(b.start, 'repurposed');
  assert.deepEqual(b.result, a.result, 'same result in a repurposed sandbox');
  const t = await d.client.rpc.sendRequest(Methods.getInvocation, { id: b.id });
  assert.ok(t.trace.some((s: TraceSpan) => s.name === 'repurpose.app'), 'app swap span');
  const fresh = await d.invoke({ agentDir: path.join(EXAMPLES, 'node-json-transform'), event: event('node-json-transform'), fresh: true });
  assert.equal(fresh.start, 'fresh');
  const ft = await d.client.rpc.sendRequest(Methods.getInvocation, { id: fresh.id });
  assert.ok(ft.trace.some((s: TraceSpan) => s.name === 'sandbox.clone'), 'fresh sandbox spans');
});

test('LLM agents reach the local OpenAI-compatible server only because their manifest allows egress', async () => {
  const env = { OPENAI_BASE_URL: `http://10.0.2.2:${llm.port}/v1` };
  const before = llm.requests.length;
  const s = await d.invoke({ agentDir: path.join(EXAMPLES, 'py-llm-summarize'), event: event('py-llm-summarize'), env });
  assert.equal(s.state, 'succeeded', JSON.stringify(s.error));
  assert.ok((s.result as { summary: string }).summary.length > 0);
  const t = await d.invoke({ agentDir: path.join(EXAMPLES, 'node-tool-agent'), event: event('node-tool-agent'), env });
  assert.equal(t.state, 'succeeded', JSON.stringify(t.error));
  assert.ok(llm.requests.length > before + 1, 'server saw the calls');
  // the same agent with network "none" cannot reach it
  const closed = copyAgent(path.join(EXAMPLES, 'py-llm-summarize'), (m) => (m.network = 'none'));
  const c = await d.invoke({ agentDir: closed, event: event('py-llm-summarize'), env });
  assert.equal(c.state, 'failed');
  assert.match(c.error!.message, /could not reach|unreachable|refused|Network/i);
});

test('a handler that throws fails with its type, message and stack', async () => {
  const r = await d.invoke({ agentDir: PROBE, event: { action: 'boom' } });
  assert.equal(r.state, 'failed');
  assert.equal(r.error!.type, 'ValueError');
  assert.equal(r.error!.message, 'probe failed on purpose');
  assert.match(r.error!.stack ?? '', /inner/);
});

test('memory is sampled while a handler runs', async () => {
  const r = await d.invoke({ agentDir: PROBE, event: { action: 'work', mb: 24, seconds: 0.6 } });
  assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
  const detail = await d.client.rpc.sendRequest(Methods.getInvocation, { id: r.id });
  assert.ok(detail.memory.length >= 3, `samples: ${detail.memory.length}`);
  const peak = Math.max(...detail.memory.map((m) => m.pssKb));
  assert.ok(peak > 24 * 1024, `peak PSS ${peak} kB covers the 24 MiB buffer`);
  assert.ok(detail.memory.every((m) => (m.cgroupBytes ?? 0) > 0));
});

test('kill ends a running invocation as killed', async () => {
  const p = d.invoke({ agentDir: PROBE, event: { action: 'sleep', seconds: 30 } });
  await new Promise((r) => setTimeout(r, 400));
  const list = await d.client.rpc.sendRequest(Methods.listInvocations, { limit: 1 });
  const k = await d.client.rpc.sendRequest(Methods.kill, { id: list[0].id });
  assert.equal(k.killed, true);
  const r = await p;
  assert.equal(r.state, 'killed');
});

test('a streaming client that leaves right after its result does not disturb the daemon', async () => {
  const { spawnSync } = await import('node:child_process');
  for (let i = 0; i < 3; i++) {
    const r = spawnSync(process.execPath, [path.join(__dirname, '../../../dist/trenv.js'), '--state-dir', d.stateDir, 'invoke', path.join(EXAMPLES, 'py-text-stats'), '--event', '{"text": "a b c."}'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
  }
  await new Promise((ok) => setTimeout(ok, 500)); // cleanup spans are sent after the record ends
  const st = await d.client.rpc.sendRequest(Methods.status);
  assert.equal(st.pid, d.proc.pid);
  assert.doesNotMatch(d.log(), /internal error|unhandled rejection/);
});
