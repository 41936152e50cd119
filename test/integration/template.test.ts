/** Memory templates (Python fork zygote) in real sandboxes. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Methods, TraceSpan } from '../../runtime-daemon/protocol/messages';
import { copyAgent, EXAMPLES, PROBE, pidAlive, startDaemon, TestDaemon, waitFor } from './harness';

let d: TestDaemon;
let probe: string;

before(async () => {
  d = await startDaemon();
  probe = copyAgent(PROBE, (m) => {
    m.name = 'probe-tmpl';
    m.preload = ['json', 'decimal', 'email.parser', 'http.client', 'asyncio', 'sqlite3', 'not_a_module_xyz'];
  });
});
after(async () => d?.stop());

const event = (a: string) => JSON.parse(fs.readFileSync(path.join(EXAMPLES, a, '.trenv/events/default.json'), 'utf8'));

test('an instance from a template gives the same result as a cold start, with attach spans', async () => {
  const agentDir = path.join(EXAMPLES, 'py-text-stats');
  const t = await d.client.rpc.sendRequest(Methods.buildTemplate, { agentDir });
  assert.equal(t.live, true);
  assert.ok(t.pid && pidAlive(t.pid));
  const cold = await d.invoke({ agentDir, event: event('py-text-stats'), template: false });
  const warm = await d.invoke({ agentDir, event: event('py-text-stats') });
  assert.equal(cold.template, undefined);
  assert.equal(warm.template, 'py-text-stats');
  assert.equal(warm.state, 'succeeded', JSON.stringify(warm.error));
  assert.deepEqual(warm.result, cold.result);
  const tr = (await d.client.rpc.sendRequest(Methods.getInvocation, { id: warm.id })).trace.map((s: TraceSpan) => s.name);
  for (const n of ['template.pick', 'template.attach', 'agent.load', 'handler.start']) assert.ok(tr.includes(n), `${n} in ${tr}`);
});

test('clones are re-seeded and isolated from each other', async () => {
  await d.client.rpc.sendRequest(Methods.buildTemplate, { agentDir: probe });
  const [a, b] = await Promise.all([d.invoke({ agentDir: probe, event: { action: 'random_values' } }), d.invoke({ agentDir: probe, event: { action: 'random_values' } })]);
  assert.equal(a.template, 'probe-tmpl');
  const ra = a.result as Record<string, string | number>;
  const rb = b.result as Record<string, string | number>;
  for (const k of ['random', 'uuid', 'urandom']) assert.notEqual(ra[k], rb[k], `${k} differs between clones`);
  const iso = await d.invoke({ agentDir: probe, event: { action: 'isolation', port: 1 } });
  assert.equal(iso.state, 'succeeded', JSON.stringify(iso.error));
  const p = iso.result as { uid: number; pids: number[]; hostname: string; write_usr: { ok: boolean }; connect_gateway: { ok: boolean } };
  assert.equal(p.uid, 10001, 'the instance runs unprivileged');
  assert.ok(p.pids.length <= 4, `only sandbox processes visible: ${p.pids}`);
  assert.match(p.hostname, /^trenv-/);
  assert.equal(p.write_usr.ok, false);
  assert.equal(p.connect_gateway.ok, false);
  // a write in one instance is not seen by the next one (another function in the same sandbox)
  await d.invoke({ agentDir: probe, event: { action: 'leave_leftovers' } });
  await new Promise((r) => setTimeout(r, 200));
  const chk = await d.invoke({ agentDir: probe, event: { action: 'check_leftovers' } });
  const c = chk.result as { tmp: string[]; procs: string[] };
  assert.deepEqual(c.tmp, []);
  assert.ok(!c.procs.some((x) => x.includes('sleep')));
});

test('instances share the template pages: PSS well below RSS', async () => {
  const runs = await Promise.all([1, 2, 3, 4].map(() => d.invoke({ agentDir: probe, event: { action: 'work', mb: 1, seconds: 0.8 } })));
  for (const r of runs) assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
  const mem = await Promise.all(runs.map((r) => d.client.rpc.sendRequest(Methods.getInvocation, { id: r.id })));
  for (const m of mem) {
    const mid = m.memory[Math.floor(m.memory.length / 2)];
    assert.ok(mid.sharedKb > 4096, `shared pages: ${JSON.stringify(mid)}`);
    assert.ok(mid.pssKb < mid.rssKb * 0.8, `PSS ${mid.pssKb} kB < RSS ${mid.rssKb} kB`);
  }
});

test('a stale template is rebuilt on invoke; a dead zygote is restarted; delete leaves nothing', async () => {
  const agent = copyAgent(path.join(EXAMPLES, 'py-text-stats'), (m) => (m.name = 'stale-check'));
  const t1 = await d.client.rpc.sendRequest(Methods.buildTemplate, { agentDir: agent });
  fs.appendFileSync(path.join(agent, 'main.py'), '\n# changed\n');
  const r = await d.invoke({ agentDir: agent, event: event('py-text-stats') });
  assert.equal(r.state, 'succeeded');
  const logs = (await d.client.rpc.sendRequest(Methods.getInvocation, { id: r.id })).logs.map((l) => l.text);
  assert.ok(logs.some((l) => /was rebuilt: the agent's files changed/.test(l)), logs.join('\n'));
  const t2 = (await d.client.rpc.sendRequest(Methods.listTemplates)).find((t) => t.name === 'stale-check')!;
  assert.notEqual(t2.pid, t1.pid);
  assert.ok(!pidAlive(t1.pid!), 'the old zygote is gone');
  process.kill(t2.pid!, 'SIGKILL');
  await waitFor(() => !pidAlive(t2.pid!));
  const r2 = await d.invoke({ agentDir: agent, event: event('py-text-stats') });
  assert.equal(r2.state, 'succeeded');
  assert.equal(r2.template, 'stale-check');
  const t3 = (await d.client.rpc.sendRequest(Methods.listTemplates)).find((t) => t.name === 'stale-check')!;
  assert.ok(t3.live && t3.pid !== t2.pid);
  const del = await d.client.rpc.sendRequest(Methods.deleteTemplate, { name: 'stale-check' });
  assert.equal(del.deleted, true);
  await waitFor(() => !pidAlive(t3.pid!), 3000, 'zygote to exit');
  assert.ok(!fs.existsSync(path.join(d.stateDir, 'templates', 'stale-check')));
  const r3 = await d.invoke({ agentDir: agent, event: event('py-text-stats') });
  assert.equal(r3.template, undefined, 'without a template the runtime starts cold');
});

test('templates survive a daemon restart (the zygote is rebuilt from its recipe)', async () => {
  const agentDir = path.join(EXAMPLES, 'py-text-stats');
  const before = (await d.client.rpc.sendRequest(Methods.listTemplates)).find((t) => t.name === 'py-text-stats')!;
  await d.stop();
  await waitFor(() => !pidAlive(before.pid!), 3000, 'zygote to stop with the daemon');
  d = await startDaemon(d.stateDir);
  const list = await d.client.rpc.sendRequest(Methods.listTemplates);
  assert.ok(list.some((t) => t.name === 'py-text-stats' && !t.live), 'known, not yet running');
  const r = await d.invoke({ agentDir, event: event('py-text-stats') });
  assert.equal(r.template, 'py-text-stats');
  assert.equal(r.state, 'succeeded');
});
