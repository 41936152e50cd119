import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { newInvocationId, RecordStore } from '../../runtime-daemon/records/store';
import type { InvocationRecord } from '../../runtime-daemon/protocol/messages';

function rec(id: string, state: InvocationRecord['state']): InvocationRecord {
  return { id, agent: 'a', agentDir: '/x', runtime: 'python', sandboxKind: 'container', state, createdAt: Date.now(), event: { n: 1 } };
}

test('records, logs and spans survive a reopen; unfinished ones become daemon-lost', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-rec-'));
  const s1 = new RecordStore(dir);
  s1.open();
  const done = newInvocationId();
  const running = newInvocationId(Date.now() + 1);
  s1.create(rec(done, 'queued'));
  s1.append(done, 'logs', { invocationId: done, seq: 1, t: 1, stream: 'stdout', text: 'hello' });
  s1.update({ ...rec(done, 'succeeded'), result: 42 });
  s1.create(rec(running, 'running'));
  s1.append(running, 'logs', { invocationId: running, seq: 1, t: 1, stream: 'stdout', text: 'partial' });
  await new Promise((r) => setImmediate(r)); // buffered appends reach the disk within a tick
  // a torn line, as after kill -9 mid-write
  fs.appendFileSync(path.join(dir, running, 'logs.jsonl'), '{"invocationId":');

  const s2 = new RecordStore(dir);
  const { lost } = s2.open();
  assert.deepEqual(lost, [running]);
  const d = s2.get(done)!;
  assert.equal(d.record.state, 'succeeded');
  assert.equal(d.record.result, 42);
  assert.equal(d.logs[0].text, 'hello');
  const r = s2.get(running)!;
  assert.equal(r.record.state, 'daemon-lost');
  assert.equal(r.logs[0].text, 'partial');
  assert.match(r.logs.at(-1)!.text, /daemon was lost/);
  assert.deepEqual(s2.list().map((x) => x.id), [running, done]);
  assert.equal(s2.resolve(done.slice(-8)), done);
  assert.equal(s2.get('../../etc'), undefined);
});

test('the store keeps at most maxRecords, dropping the oldest', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-rec-'));
  const s = new RecordStore(dir, 3);
  s.open();
  const ids = [0, 1, 2, 3, 4].map((i) => newInvocationId(1_700_000_000_000 + i));
  for (const id of ids) s.create(rec(id, 'succeeded'));
  const s2 = new RecordStore(dir, 3);
  s2.open();
  assert.deepEqual(s2.list().map((x) => x.id), ids.slice(2).reverse());
});
