/**
 * The read-only base root of container sandboxes: a small skeleton (directories, /etc files with
 * one unprivileged user) used as the overlay's lower layer, with the host's /usr (runtimes and
 * libraries) and the trenv runtime shims bind-mounted read-only on top. No host /etc, /home, /root,
 * /var or /proc content is visible inside.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MMT_FS_DIR, mmtFsMounted } from '../template/mmTemplate';

export const SANDBOX_UID = 10001;
export const SANDBOX_GID = 10001;
export const SANDBOX_HOME = '/home/agent';
const VERSION = '3';

const DIRS: Array<[string, number]> = [
  ['app', 0o755],
  ['dev', 0o755],
  ['proc', 0o555],
  ['usr', 0o755],
  ['opt/trenv/runtimes', 0o755],
  ['etc/ssl', 0o755],
  ['etc/alternatives', 0o755],
  ['tmp', 0o1777],
  ['var/tmp', 0o1777],
  ['run', 0o755],
  ['root', 0o700],
  ['home/agent', 0o755],
  ['.old', 0o700],
];

const LINKS: Array<[string, string]> = [
  ['bin', 'usr/bin'],
  ['sbin', 'usr/sbin'],
  ['lib', 'usr/lib'],
  ['lib64', 'usr/lib64'],
];

const FILES: Array<[string, string]> = [
  ['etc/passwd', `root:x:0:0:root:/root:/bin/sh\nagent:x:${SANDBOX_UID}:${SANDBOX_GID}:trenv agent:${SANDBOX_HOME}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n`],
  ['etc/group', `root:x:0:\nagent:x:${SANDBOX_GID}:\nnogroup:x:65534:\n`],
  ['etc/hosts', '127.0.0.1 localhost\n::1 localhost\n'],
  // slirp4netns' DNS forwarder; only reachable when the manifest allows egress
  ['etc/resolv.conf', 'nameserver 10.0.2.3\n'],
  ['etc/nsswitch.conf', 'passwd: files\ngroup: files\nhosts: files dns\n'],
  ['etc/os-release', 'NAME="trenv sandbox"\nID=trenv\n'],
];

/** Host paths bound read-only into every container sandbox: [host, inside]. */
export function baseBinds(runtimesDir: string): Array<[string, string]> {
  const binds: Array<[string, string]> = [
    ['/usr', '/usr'],
    [runtimesDir, '/opt/trenv/runtimes'],
  ];
  for (const p of ['/etc/ssl', '/etc/alternatives']) if (fs.existsSync(p)) binds.push([p, p]);
  // the mm_template kernel module's template files: CRIU restores of Node templates built through
  // it map /run/mm_template/<id> by path from inside the sandbox (files are root-only, 0400)
  if (mmtFsMounted()) binds.push([MMT_FS_DIR, MMT_FS_DIR]);
  return binds;
}

/** Builds (or refreshes) the skeleton; idempotent and cheap when it is current. */
export function ensureBaseRootfs(dir: string): void {
  const stamp = path.join(dir, '.trenv-rootfs-version');
  try {
    if (fs.readFileSync(stamp, 'utf8') === VERSION) return;
  } catch {
    /* build it */
  }
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  for (const [d, mode] of DIRS) {
    const p = path.join(dir, d);
    fs.mkdirSync(p, { recursive: true });
    fs.chmodSync(p, mode);
  }
  fs.chownSync(path.join(dir, 'home/agent'), SANDBOX_UID, SANDBOX_GID);
  for (const [l, target] of LINKS) {
    const p = path.join(dir, l);
    fs.rmSync(p, { force: true, recursive: false });
    fs.symlinkSync(target, p);
  }
  for (const [f, text] of FILES) fs.writeFileSync(path.join(dir, f), text, { mode: 0o644 });
  fs.writeFileSync(stamp, VERSION);
}
