/** kill -9 of the daemon mid-invocation: records survive, nothing is left behind after a restart. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { Methods } from '../../runtime-daemon/protocol/messages';
import { cgroupDirsOfInstance, PROBE, pidAlive, processesOfInstance, startDaemon, waitFor } from './harness';

test('kill -9 mid-invocation: daemon-lost record, no leftover processes, cgroups or mounts', async () => {
  const d = await startDaemon();
  const instance = d.paths.instanceId;
  const pending = d.invoke({ agentDir: PROBE, event: { action: 'sleep', seconds: 60 } }).catch(() => undefined);
  await waitFor(() => processesOfInstance(instance).length >= 2, 5000, 'the handler to run');
  const list = await d.client.rpc.sendRequest(Methods.listInvocations, { limit: 1 });
  const id = list[0].id;
  // the handler has printed its first line (and the daemon has stored it) before the kill
  for (let i = 0; i < 100; i++) {
    const det = await d.client.rpc.sendRequest(Methods.getInvocation, { id });
    if (det.logs.some((l) => l.text === 'sleeping')) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const sandboxPids = processesOfInstance(instance);
  await d.kill9();
  await pending;
  // sandboxd dies with the daemon (PDEATHSIG) and takes every sandbox with it
  await waitFor(() => sandboxPids.every((p) => !pidAlive(p)), 5000, 'sandbox processes to die');
  assert.ok(cgroupDirsOfInstance(instance).length > 0, 'cgroups are still there before the restart');
  assert.ok(!fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(d.paths.mnt), 'no sandbox mount in the host namespace');

  const d2 = await startDaemon(d.stateDir);
  try {
    const rec = await d2.client.rpc.sendRequest(Methods.getInvocation, { id });
    assert.equal(rec.record.state, 'daemon-lost');
    assert.ok(rec.logs.some((l) => l.text === 'sleeping'), 'logs written before the crash are kept');
    assert.deepEqual(cgroupDirsOfInstance(instance), [], 'leftover cgroups removed at start');
    assert.deepEqual(processesOfInstance(instance), []);
    // and it works again
    const r = await d2.invoke({ agentDir: PROBE, event: { action: 'random_values' } });
    assert.equal(r.state, 'succeeded');
  } finally {
    await d2.stop();
  }
  assert.deepEqual(cgroupDirsOfInstance(instance), [], 'a clean stop leaves no cgroups');
  assert.ok(!fs.existsSync(d.paths.info), 'discovery file removed on stop');
});
