import { test } from 'node:test';
import assert from 'node:assert/strict';
import { addSamples, parseSmapsRollup, readRollup, sampleProcesses } from '../../runtime-daemon/metrics/smaps';

const ROLLUP = `55d0c0a00000-7ffd3a9ff000 ---p 00000000 00:00 0                          [rollup]
Rss:               10240 kB
Pss:                4096 kB
Pss_Anon:           2048 kB
Shared_Clean:       6000 kB
Shared_Dirty:        144 kB
Private_Clean:      1000 kB
Private_Dirty:      3096 kB
Referenced:        10240 kB
`;

test('smaps_rollup parsing', () => {
  assert.deepEqual(parseSmapsRollup(ROLLUP), { rssKb: 10240, pssKb: 4096, sharedKb: 6144, privateKb: 4096 });
});

test('reading this process and summing samples', () => {
  const me = readRollup(process.pid);
  assert.ok(me && me.rssKb > 1000 && me.pssKb > 0);
  assert.equal(readRollup(2 ** 22 + 7), undefined);
  const s = sampleProcesses([process.pid, 2 ** 22 + 7], 5);
  assert.equal(s.processes, 1);
  const two = addSamples(s, s);
  assert.equal(two.rssKb, s.rssKb * 2);
  assert.equal(two.cgroupBytes, 10);
});
