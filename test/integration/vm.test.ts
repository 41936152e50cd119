/**
 * microVM sandboxes with real QEMU (TCG on this machine), small guests (160 MiB): an agent end to
 * end cold and from a template, clone identity, isolation between clones and from the template
 * file, limits, a panicking guest, a daemon killed with VMs running, corrupt and stale templates.
 */
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { copyAgent, EXAMPLES, pidAlive, qemusOf, ROOT, startDaemon, TestDaemon, waitFor } from './harness';
import { InvocationDetail, Methods, TraceSpan } from '../../runtime-daemon/protocol/messages';
import { findImage, probeAccel } from '../../runtime-daemon/sandbox/vm';

const VMPROBE = path.join(ROOT, 'test/fixtures/agents/vmprobe');
let d: TestDaemon;

function sha256(p: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex');
}

function templateDirOf(stateDir: string, name: string): string {
  return path.join(stateDir, 'vm-templates', name);
}

async function trace(id: string): Promise<TraceSpan[]> {
  return (await d.client.rpc.sendRequest(Methods.getInvocation, { id })).trace;
}

/** Waits until the newest invocation of the daemon is running and has printed `text`; its detail. */
async function runningWith(daemon: TestDaemon, text: string): Promise<InvocationDetail> {
  for (let i = 0; i < 1200; i++) {
    const [rec] = await daemon.client.rpc.sendRequest(Methods.listInvocations, { limit: 1 });
    const det = rec?.state === 'running' ? await daemon.client.rpc.sendRequest(Methods.getInvocation, { id: rec.id }) : undefined;
    if (det?.logs.some((l) => l.text === text)) return det;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no running invocation printed "${text}" within 60 s`);
}

before(async () => {
  // small pools and TCG for the test daemons (the probe itself is tested below)
  process.env.TRENV_VM_POOL = '1';
  process.env.TRENV_VM_ACCEL = 'tcg';
  d = await startDaemon();
});

after(async () => {
  await d?.stop();
  assert.deepEqual(qemusOf(d.stateDir), [], 'no QEMU left after the daemon stopped');
});

test('the accelerator probe falls back to TCG when KVM does not boot the guest, and caches its answer', async () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-accel-'));
  const cache = path.join(work, 'accel.json');
  const saved = process.env.TRENV_VM_ACCEL;
  delete process.env.TRENV_VM_ACCEL;
  try {
    const a = await probeAccel(findImage(), work, cache);
    assert.ok(a === 'kvm' || a === 'tcg');
    assert.equal(JSON.parse(fs.readFileSync(cache, 'utf8')).accel, a);
    const t0 = Date.now();
    assert.equal(await probeAccel(findImage(), work, cache), a);
    assert.ok(Date.now() - t0 < 100, 'the second probe answers from the cache');
  } finally {
    if (saved !== undefined) process.env.TRENV_VM_ACCEL = saved;
    fs.rmSync(work, { recursive: true, force: true });
  }
});

test('an example agent in a microVM: a cold boot and a template clone give the same result; the clone trace has every restore step', async () => {
  const event = { text: 'The quick brown fox. The lazy dog!' };
  // the example's 5 s limit is for a container; a cold Python start under TCG on a busy machine may need more
  const stats = copyAgent(path.join(EXAMPLES, 'py-text-stats'), (m) => ((m.limits as Record<string, number>).timeoutMs = 60_000));
  const cold = await d.invoke({ agentDir: stats, event, sandbox: 'vm', template: false });
  assert.equal(cold.state, 'succeeded', JSON.stringify(cold.error));
  assert.equal(cold.sandboxKind, 'vm');
  assert.equal(cold.start, 'vm-boot');
  const coldNames = (await trace(cold.id)).map((s) => s.name);
  for (const n of ['vm.spawn', 'vm.boot', 'vm.files', 'process.start', 'runtime.load', 'handler.start', 'handler.run']) assert.ok(coldNames.includes(n), `cold trace has ${n}: ${coldNames}`);

  const warm = await d.invoke({ agentDir: stats, event, sandbox: 'vm' });
  assert.equal(warm.state, 'succeeded', JSON.stringify(warm.error));
  assert.equal(warm.start, 'vm-clone');
  assert.ok(warm.template?.startsWith('py-text-stats-pmem-'));
  assert.deepEqual(warm.result, cold.result);
  const spans = await trace(warm.id);
  const names = spans.map((s) => s.name);
  for (const n of ['template.pick', 'vm.spawn', 'vm.load-state', 'vm.resume', 'guest.ready', 'guest.identity', 'handler.start', 'handler.run']) {
    assert.ok(names.includes(n), `clone trace has ${n}: ${names}`);
  }
  const load = spans.find((s) => s.name === 'vm.load-state')!;
  assert.ok(load.state?.memory && load.state.memory.pssKb > 0, 'restore spans carry the QEMU process memory');
  const restore = ['vm.spawn', 'vm.load-state', 'vm.resume', 'guest.ready'].reduce((a, n) => a + spans.find((s) => s.name === n)!.durationMs, 0);
  const boot = (await trace(cold.id)).find((s) => s.name === 'vm.boot')!.durationMs;
  console.log(`# cold boot ${boot.toFixed(0)} ms; clone restore ${restore.toFixed(1)} ms (${names.filter((n) => n.startsWith('vm.') || n.startsWith('guest.')).join(', ')})`);
  const det = await d.client.rpc.sendRequest(Methods.getInvocation, { id: warm.id });
  assert.ok(det.logs.some((l) => l.stream === 'log' && l.text === 'tokenized'), 'handler logs are streamed from the guest');
  assert.ok(det.memory.length > 0, 'memory samples of the VM are recorded');
});

test('clones differ in RNG state (kernel and runtime), get the host clock and their own hostname', async () => {
  // "sandbox": "vm" in the manifest selects a microVM without --vm
  const a = await d.invoke({ agentDir: VMPROBE, event: { action: 'identity' } });
  const b = await d.invoke({ agentDir: VMPROBE, event: { action: 'identity' } });
  for (const r of [a, b]) {
    assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
    assert.equal(r.sandboxKind, 'vm');
  }
  assert.equal(b.start, 'vm-clone');
  const ra = a.result as Record<string, unknown>;
  const rb = b.result as Record<string, unknown>;
  assert.equal(a.template, b.template, 'both are clones of one template');
  assert.equal(a.start, 'vm-clone');
  // boot_id is made on first read, after the clone's kernel RNG was re-seeded
  for (const k of ['random', 'early_random', 'urandom', 'uuid', 'hostname', 'invocation', 'boot_id']) assert.notEqual(ra[k], rb[k], `${k} differs between clones`);
  for (const r of [ra, rb]) {
    assert.ok(Math.abs((r.time as number) * 1000 - Date.now()) < 15_000, `guest clock is the host's (${r.time})`);
    assert.equal(r.uid, 10001, 'the handler runs unprivileged in the guest');
  }
});

test('Node clones of one VM template draw different OpenSSL randomness (keys, ECDH, randomBytes, randomUUID)', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-vm-node-rand-'));
  fs.chmodSync(dir, 0o755);
  fs.writeFileSync(path.join(dir, 'trenv.json'), JSON.stringify({ name: 'vm-node-rand', runtime: 'node', handler: 'rand.js:handler', sandbox: 'vm', limits: { memoryMb: 192, timeoutMs: 30000 } }));
  fs.writeFileSync(
    path.join(dir, 'rand.js'),
    `'use strict';\nconst crypto = require('node:crypto');\nconst early = crypto.randomUUID();\n` +
      `exports.handler = async () => ({ early, uuid: crypto.randomUUID(), bytes: crypto.randomBytes(16).toString('hex'), random: Math.random(),\n` +
      `  ecKey: crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' }).toString('hex'),\n` +
      `  ecdh: crypto.createECDH('prime256v1').generateKeys('hex') });\n`,
  );
  try {
    const a = await d.invoke({ agentDir: dir, event: {} });
    const b = await d.invoke({ agentDir: dir, event: {} });
    for (const r of [a, b]) {
      assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
      assert.equal(r.start, 'vm-clone');
    }
    const ra = a.result as Record<string, unknown>;
    const rb = b.result as Record<string, unknown>;
    assert.equal(ra.early, rb.early, 'both are clones of one initialised template');
    for (const k of ['uuid', 'bytes', 'random', 'ecKey', 'ecdh']) assert.notEqual(ra[k], rb[k], `${k} differs between clones`);
  } finally {
    await d.client.rpc.sendRequest(Methods.deleteTemplate, { name: 'vm-node-rand' }).catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("a write in one clone shows neither in another clone nor in the template's memory file", async () => {
  const warm = await d.invoke({ agentDir: VMPROBE, event: { action: 'check_marker' } });
  assert.equal(warm.state, 'succeeded');
  const tdir = templateDirOf(d.stateDir, warm.template!);
  const before = sha256(path.join(tdir, 'ram'));
  const writer = d.invoke({ agentDir: VMPROBE, event: { action: 'write_marker', value: 'secret', hold: 2.5 } });
  await new Promise((r) => setTimeout(r, 1200)); // the writer has written and holds its VM
  const reader = await d.invoke({ agentDir: VMPROBE, event: { action: 'check_marker' } });
  const w = await writer;
  assert.equal(w.state, 'succeeded', JSON.stringify(w.error));
  assert.equal(reader.state, 'succeeded', JSON.stringify(reader.error));
  assert.notEqual(reader.sandboxId, w.sandboxId);
  assert.deepEqual(reader.result, { marker: false, tmp: [] });
  assert.equal(sha256(path.join(tdir, 'ram')), before, 'the template memory file is unchanged');
  const ro = await d.invoke({ agentDir: VMPROBE, event: { action: 'write_root' } });
  assert.deepEqual(ro.result, { wrote: false, error: 'Read-only file system' });
});

test('limits: an endless loop hits the time limit and its VM is gone; a hung guest is reported as hung; a memory hog ends as oom', async () => {
  const agent = copyAgent(VMPROBE, (m) => ((m.limits as Record<string, number>).timeoutMs = 2500));
  const t0 = Date.now();
  const r = await d.invoke({ agentDir: agent, event: { action: 'spin' } });
  assert.equal(r.state, 'timeout', JSON.stringify(r));
  assert.ok(Date.now() - t0 < 30_000);
  const sandboxes = await d.client.rpc.sendRequest(Methods.listSandboxes);
  assert.ok(!sandboxes.some((s) => s.id === r.sandboxId), 'the timed-out VM was destroyed');
  assert.ok(!fs.existsSync(path.join(d.stateDir, 'vms', r.sandboxId!)), 'its sockets and files are removed');

  // a guest that stops answering (here: QEMU stopped with SIGSTOP) is reported as hung
  const hung = d.invoke({ agentDir: agent, event: { action: 'sleep', seconds: 20 } });
  const sleeping = await runningWith(d, 'sleeping');
  const qemu = Number(fs.readFileSync(path.join(d.stateDir, 'vms', sleeping.record.sandboxId!, 'pid'), 'utf8'));
  process.kill(qemu, 'SIGSTOP');
  const h = await hung;
  assert.equal(h.state, 'timeout');
  assert.match(h.error!.message, /guest stopped answering \(hung\)/);
  await waitFor(() => !pidAlive(qemu), 5000, 'the stopped QEMU to be killed');

  const oom = await d.invoke({ agentDir: VMPROBE, event: { action: 'alloc', mb: 400 } });
  assert.equal(oom.state, 'oom', JSON.stringify(oom));
  assert.match(oom.error!.message, /out of memory/);
});

test('a guest that panics mid-handler is reported as a kernel panic', async () => {
  const p = d.invoke({ agentDir: VMPROBE, event: { action: 'sleep', seconds: 20 } });
  // once the handler runs, crash the guest from the host: an NMI, and the guest has unknown_nmi_panic
  const sbId = (await runningWith(d, 'sleeping')).record.sandboxId!;
  const qmp = net.createConnection(path.join(d.stateDir, 'vms', sbId, 'qmp-user.sock'));
  qmp.on('error', () => undefined); // QEMU exits when its guest panics: the socket resets
  await new Promise((r) => qmp.once('connect', r));
  qmp.write('{"execute":"qmp_capabilities"}\n{"execute":"inject-nmi"}\n');
  const r = await p;
  qmp.destroy();
  assert.equal(r.state, 'failed');
  assert.match(r.error!.message, /guest kernel panicked/, r.error!.message);
});

test('kill -9 of the daemon with VMs running: nothing is left after the restart', async () => {
  const d2 = await startDaemon();
  try {
    const running = d2.invoke({ agentDir: VMPROBE, event: { action: 'sleep', seconds: 60 } }).catch(() => undefined);
    await runningWith(d2, 'sleeping'); // its template is built, its warm clone restored
    const pids = qemusOf(d2.stateDir);
    assert.ok(pids.length >= 1);
    await d2.kill9();
    void running;
    // QEMU runs under --pdeathsig KILL: it dies with the daemon
    await waitFor(() => pids.every((p) => !pidAlive(p)), 10_000, 'QEMU processes to die with the daemon');
    const d3 = await startDaemon(d2.stateDir);
    try {
      assert.deepEqual(qemusOf(d2.stateDir), []);
      assert.deepEqual(fs.readdirSync(path.join(d2.stateDir, 'vms')).filter((x) => x !== 'kvm-probe'), [], 'VM dirs reclaimed');
      const list = await d3.client.rpc.sendRequest(Methods.listInvocations, { limit: 5 });
      assert.ok(list.some((x) => x.state === 'daemon-lost' && x.sandboxKind === 'vm'), 'the running VM invocation is recorded as daemon-lost');
      // the VM template is files: the restarted daemon clones from it without rebuilding
      const again = await d3.invoke({ agentDir: VMPROBE, event: { action: 'identity' } });
      assert.equal(again.state, 'succeeded', JSON.stringify(again.error));
      assert.equal(again.start, 'vm-clone');
      const det = await d3.client.rpc.sendRequest(Methods.getInvocation, { id: again.id });
      assert.ok(!det.logs.some((l) => /was built/.test(l.text)), 'no rebuild after the restart');
    } finally {
      await d3.stop();
    }
  } finally {
    await d2.stop().catch(() => undefined);
  }
});

test('a corrupt template is rejected with a clear error and rebuilt; a changed agent makes it stale', async () => {
  const agent = copyAgent(VMPROBE, (m) => (m.name = 'vmprobe-tpl'));
  const first = await d.invoke({ agentDir: agent, event: { action: 'identity' } });
  assert.equal(first.state, 'succeeded', JSON.stringify(first.error));
  const tdir = templateDirOf(d.stateDir, first.template!);
  const state = path.join(tdir, 'state');
  fs.chmodSync(state, 0o644);
  const fd = fs.openSync(state, 'r+');
  fs.writeSync(fd, Buffer.from('garbage!'), 0, 8, 4096);
  fs.closeSync(fd);
  const again = await d.invoke({ agentDir: agent, event: { action: 'identity' } });
  assert.equal(again.state, 'succeeded', JSON.stringify(again.error));
  const det = await d.client.rpc.sendRequest(Methods.getInvocation, { id: again.id });
  assert.ok(det.logs.some((l) => /is corrupt: its device-state file does not match/.test(l.text)), det.logs.map((l) => l.text).join('\n'));
  assert.equal(again.template, first.template, 'rebuilt under the same version');
  assert.equal(again.start, 'vm-clone');

  fs.appendFileSync(path.join(agent, 'vmprobe.py'), '\n# changed\n');
  const changed = await d.invoke({ agentDir: agent, event: { action: 'identity' } });
  assert.equal(changed.state, 'succeeded');
  assert.notEqual(changed.template, first.template);
  const det2 = await d.client.rpc.sendRequest(Methods.getInvocation, { id: changed.id });
  assert.ok(det2.logs.some((l) => /changed since .* was built/.test(l.text)));
  assert.ok(!fs.existsSync(tdir), 'the stale template is removed');
  const names = (await d.client.rpc.sendRequest(Methods.listTemplates)).map((t) => t.name);
  assert.ok(names.includes(changed.template!) && !names.includes(first.template!));
});

test('microVM requests that cannot work get clear errors', async () => {
  await assert.rejects(d.invoke({ agentDir: VMPROBE, sandbox: 'vm', debug: true }), /debugging in a microVM is not supported/);
  const egress = copyAgent(VMPROBE, (m) => (m.network = 'egress'));
  await assert.rejects(d.invoke({ agentDir: egress }), /microVMs have no network/);
  await assert.rejects(d.invoke({ agentDir: VMPROBE, vmRoot: 'nfs' as 'blk' }), /"vmRoot" must be/);
  // out of disk: checked before a guest boots (a full RAM file would kill QEMU with SIGBUS)
  const d2 = await startDaemon();
  const tdir = path.join(d2.stateDir, 'vm-templates');
  fs.mkdirSync(tdir, { recursive: true, mode: 0o700 });
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64m,mode=0700', 'trenv-test-full', tdir]);
  try {
    await assert.rejects(
      d2.client.rpc.sendRequest(Methods.buildTemplate, { agentDir: VMPROBE, vm: true }),
      /not enough disk space for the VM template vmprobe[\w-]*: about \d+ MiB needed \(guest RAM \+ device state\), \d+ MiB free/,
    );
    assert.deepEqual(fs.readdirSync(tdir), [], 'nothing left behind');
    assert.deepEqual(qemusOf(d2.stateDir), [], 'no guest was started');
  } finally {
    await d2.stop();
    execFileSync('umount', [tdir]);
  }
});

test('page-cache bypass: with the root on virtio-pmem (DAX) the guest caches none of it; on virtio-blk it does', async () => {
  const cached: Record<string, number> = {};
  // this test is about the page cache, not time: a cold Python start under TCG on a busy machine
  // can take longer than the example's 5 s limit
  const agent = copyAgent(path.join(EXAMPLES, 'py-text-stats'), (m) => ((m.limits as Record<string, number>).timeoutMs = 60_000));
  for (const vmRoot of ['pmem', 'blk'] as const) {
    const r = await d.invoke({ agentDir: agent, event: { text: 'a b' }, sandbox: 'vm', template: false, vmRoot });
    assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
    const det = await d.client.rpc.sendRequest(Methods.getInvocation, { id: r.id });
    const last = [...det.memory].reverse().find((s) => s.guest);
    assert.ok(last?.guest, `a guest memory sample (${vmRoot})`);
    cached[vmRoot] = last.guest.cachedKb;
  }
  console.log(`# guest page cache after a cold Python start: pmem+DAX ${cached.pmem} kB, virtio-blk ${cached.blk} kB`);
  assert.ok(cached.blk - cached.pmem > 4096, `the blk guest cached the files it read (${cached.blk} vs ${cached.pmem} kB)`);
});
