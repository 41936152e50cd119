import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as sinon from 'sinon';
import { detectMmTemplate, mmTemplateStatus, type MmtProbe } from '../../runtime-daemon/template/mmTemplate';

const MOUNTED = 'none /run/mm_template mm_template rw,relatime 0 0\n';

function probe(o: Partial<{ dev: boolean; mounts: string; mountFails: string; helper: boolean }>): MmtProbe & { mount: sinon.SinonSpy } {
  return {
    isCharDevice: () => o.dev ?? true,
    mounts: () => o.mounts ?? 'proc /proc proc rw 0 0\n',
    mount: sinon.spy(() => {
      if (o.mountFails) throw new Error(o.mountFails);
    }),
    helperExists: () => o.helper ?? true,
  };
}

test('mm_template: absent device means userspace templates, said in one line', () => {
  const s = detectMmTemplate(path.join(os.tmpdir(), 'no-such-mm_template'));
  assert.equal(s.loaded, false);
  assert.equal(s.path, 'userspace');
  assert.equal(s.message, 'kernel module not loaded; using userspace templates');
});

test('mm_template: a regular file is not the device', () => {
  const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'mmt-')), 'mm_template');
  fs.writeFileSync(f, '');
  assert.equal(detectMmTemplate(f).loaded, false);
});

test('mm_template: loaded, filesystem mounted and helper built: the kernel-module path', () => {
  const p = probe({ mounts: MOUNTED });
  const s = detectMmTemplate('/dev/mm_template', '/run/mm_template', p, '/x/trenv-mmt');
  assert.equal(s.path, 'kernel-module');
  assert.equal(p.mount.called, false);
});

test('mm_template: the filesystem is mounted when it is not, and a failed mount falls back with the reason', () => {
  const ok = probe({});
  assert.equal(detectMmTemplate('/dev/mm_template', '/run/mm_template', ok, '/x/trenv-mmt').path, 'kernel-module');
  assert.deepEqual(ok.mount.firstCall.args, ['/run/mm_template']);
  const bad = detectMmTemplate('/dev/mm_template', '/run/mm_template', probe({ mountFails: 'mount: unknown filesystem type' }), '/x/trenv-mmt');
  assert.equal(bad.loaded, true);
  assert.equal(bad.path, 'userspace');
  assert.match(bad.message, /mounting its filesystem at \/run\/mm_template failed \(mount: unknown filesystem type\)/);
});

test('mm_template: TRENV_MMT=0 turns a usable module off, said so, and mounts nothing', () => {
  const p = probe({});
  const s = detectMmTemplate('/dev/mm_template', '/run/mm_template', p, '/x/trenv-mmt', { TRENV_MMT: '0' });
  assert.equal(s.path, 'userspace');
  assert.equal(s.loaded, true);
  assert.match(s.message, /turned off by TRENV_MMT=0/);
  assert.equal(p.mount.called, false);
  assert.equal(detectMmTemplate('/dev/mm_template', '/run/mm_template', probe({}), '/x/trenv-mmt', { TRENV_MMT: '1' }).path, 'kernel-module');
});

test('mm_template: a missing helper means userspace templates, said why', () => {
  const s = detectMmTemplate('/dev/mm_template', '/run/mm_template', probe({ helper: false, mounts: MOUNTED }), '/x/trenv-mmt');
  assert.equal(s.path, 'userspace');
  assert.match(s.message, /helper \/x\/trenv-mmt is missing/);
});

test('mm_template: a mount of another type at the directory does not count', () => {
  const p = probe({ mounts: 'tmpfs /run/mm_template tmpfs rw 0 0\n' });
  detectMmTemplate('/dev/mm_template', '/run/mm_template', p, '/x/trenv-mmt');
  assert.equal(p.mount.calledOnce, true);
});

test('mm_template: the status is detected and logged once per process', () => {
  const said: string[] = [];
  const a = mmTemplateStatus((m) => said.push(m));
  const b = mmTemplateStatus((m) => said.push(m));
  assert.equal(a, b);
  assert.equal(said.length, 1);
});
