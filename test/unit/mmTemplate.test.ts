import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { detectMmTemplate, mmTemplateStatus } from '../../runtime-daemon/template/mmTemplate';

test('mm_template: absent device means userspace templates, said in one line', () => {
  const s = detectMmTemplate(path.join(os.tmpdir(), 'no-such-mm_template'));
  assert.equal(s.loaded, false);
  assert.equal(s.path, 'userspace');
  assert.equal(s.message, 'kernel module not loaded; using userspace templates');
});

test('mm_template: a regular file is not the device; a character device is', () => {
  const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mmt-')), 'mm_template');
  fs.writeFileSync(f, '');
  assert.equal(detectMmTemplate(f).loaded, false);
  assert.equal(detectMmTemplate('/dev/null').loaded, true);
});

test('mm_template: the status is detected and logged once per process', () => {
  const said: string[] = [];
  const a = mmTemplateStatus((m) => said.push(m));
  const b = mmTemplateStatus((m) => said.push(m));
  assert.equal(a, b);
  assert.equal(said.length, 1);
});
