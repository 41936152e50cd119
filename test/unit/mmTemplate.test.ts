import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as sinon from 'sinon';
import { detectMmTemplate, mmtTemplateGone, mmTemplateStatus, type MmtProbe } from '../../runtime-daemon/template/mmTemplate';

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

test('mm_template: a checkpoint\'s template is used only while its id still names the same template', () => {
  const info = { id: 7, bytes: 8192, runs: 1, mapFile: '/t/mmt-1.map', buildMs: 1, createdNs: '1700000000123456789' };
  const files: Record<string, { size: bigint; mtimeNs: bigint }> = {};
  const stat = (p: string) => {
    const f = files[p];
    if (!f) throw Object.assign(new Error(`ENOENT ${p}`), { code: 'ENOENT' });
    return f;
  };
  // gone (module unloaded or reloaded, reboot)
  assert.match(mmtTemplateGone(info, '/run/mm_template', stat) ?? '', /template 7 is gone/);
  // the same template
  files['/run/mm_template/7'] = { size: 8192n, mtimeNs: 1700000000123456789n };
  assert.equal(mmtTemplateGone(info, '/run/mm_template', stat), undefined);
  // another template with that id: other creation time, or other size
  files['/run/mm_template/7'] = { size: 8192n, mtimeNs: 1700000999000000000n };
  assert.match(mmtTemplateGone(info, '/run/mm_template', stat) ?? '', /another template now/);
  files['/run/mm_template/7'] = { size: 4096n, mtimeNs: 1700000000123456789n };
  assert.match(mmtTemplateGone(info, '/run/mm_template', stat) ?? '', /another template now/);
  // an older meta without createdNs: created within a minute of its map file, or not
  const old = { ...info, createdNs: undefined };
  files['/run/mm_template/7'] = { size: 8192n, mtimeNs: 1700000000000000000n };
  files['/t/mmt-1.map'] = { size: 100n, mtimeNs: 1700000001000000000n };
  assert.equal(mmtTemplateGone(old, '/run/mm_template', stat), undefined);
  files['/t/mmt-1.map'] = { size: 100n, mtimeNs: 1600000000000000000n };
  assert.match(mmtTemplateGone(old, '/run/mm_template', stat) ?? '', /another template now/);
});
