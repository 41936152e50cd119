import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeFrame, FrameDecoder, parseSpans, splitFields } from '../../runtime-daemon/sandbox/frames';

test('frames round-trip through the decoder, split across chunks', () => {
  const a = encodeFrame(['run', 'sb1', 'r1', Buffer.from([1, 0, 2, 0, 3])]);
  const b = encodeFrame(['pong', '7']);
  const all = Buffer.concat([a, b]);
  const d = new FrameDecoder();
  const got: Buffer[] = [];
  for (let i = 0; i < all.length; i += 3) got.push(...d.push(all.subarray(i, i + 3)));
  assert.equal(got.length, 2);
  const f = splitFields(got[0], 4);
  assert.deepEqual(f.slice(0, 3).map(String), ['run', 'sb1', 'r1']);
  assert.deepEqual([...f[3]], [1, 0, 2, 0, 3]); // the last field keeps its NULs
  assert.deepEqual(splitFields(got[1], 8).map(String), ['pong', '7']);
});

test('a NUL inside a non-final field is refused', () => {
  assert.throws(() => encodeFrame(['a\0b', 'c']), /NUL/);
});

test('oversized frame length is an error, not a hang', () => {
  const d = new FrameDecoder();
  const head = Buffer.alloc(4);
  head.writeUInt32LE(64 * 1024 * 1024, 0);
  assert.throws(() => d.push(head), /limit/);
});

test('span lists parse and skip garbage', () => {
  const s = parseSpans('spans=clone:10:20,mounts:20:35,bad,x:1:y');
  assert.deepEqual(s.map((x) => [x.name, x.startNs, x.endNs]), [
    ['clone', 10n, 20n],
    ['mounts', 20n, 35n],
  ]);
  assert.deepEqual(parseSpans(undefined), []);
  assert.deepEqual(parseSpans('spans='), []);
});
