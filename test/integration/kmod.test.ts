/**
 * The mm_template kernel module, tested where it can be loaded: a QEMU guest (TCG) booting Debian's
 * 6.1.0-56 kernel with the module, static C tests, node and CRIU in its initramfs
 * (kernel-modules/test/run-guest-tests.sh, one boot, ~40 s here). Asserts on the guest's
 * PASS/FAIL lines: sharing (PSS = size/N, Shared_Clean), COW isolation, input validation, fuzzing
 * without a kernel BUG/WARN, no leak over a create/map/delete loop, rmmod refused while mapped or
 * mounted, the template filesystem, and Node agent instances through the module (the daemon's
 * mmTemplate.ts + trenv-mmt make the template, CRIU restores map its file): same results as cold,
 * re-seeded. A second boot runs the daemon itself end to end with the module (its root is this
 * host's / over virtio-9p, read-only): trenvd, `trenv template build`, `trenv invoke`, `template rm`,
 * for every Node example agent and a test agent (~110 s).
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT } from './harness';

const KVER = '6.1.0-56-amd64';
const SCRIPT = path.join(ROOT, 'kernel-modules/test/run-guest-tests.sh');

function missing(): string | undefined {
  if (!fs.existsSync(`/usr/src/linux-headers-${KVER}/Makefile`)) return `linux-headers-${KVER} is not installed (run scripts/setup-kmod.sh as root)`;
  if (spawnSync('sh', ['-c', 'command -v qemu-system-x86_64']).status !== 0) return 'qemu-system-x86_64 is not installed (run scripts/setup-kmod.sh as root)';
  if (!fs.existsSync('/opt/trenv/criu/criu')) return 'CRIU is not in /opt/trenv/criu (run scripts/setup-criu.sh as root)';
  return undefined;
}

const EXPECTED = [
  'insmod', 'abi_version', 'validation', 'share4_fault', 'share8_prefault', 'cow_fault', 'cow_prefault',
  'delete_while_mapped', 'map_pid_fault', 'map_pid_prefault', 'fs_template_file', 'fuzz_ioctl_mmap', 'race_delete_map', 'memcg_charged', 'leak_loop', 'timing',
  'rmmod_refused_while_mapped', 'daemon_detects_module', 'node_module_same_result_as_cold', 'node_module_same_result_after_gc', 'node_module_reseeded', 'node_module_restored_from_template_file', 'node_template_freed',
  'rmmod_refused_while_mounted', 'rmmod_after_unmap', 'dmesg_clean',
];

test('mm_template kernel module in a QEMU guest: module tests and Node instances through it', { skip: missing(), timeout: 600_000 }, () => {
  const r = spawnSync('bash', [SCRIPT, '--node'], { encoding: 'utf8', timeout: 590_000 });
  const out = r.stdout ?? '';
  const passed = new Set([...out.matchAll(/^PASS (\S+)/gm)].map((m) => m[1]));
  const failed = [...out.matchAll(/^FAIL (.*)$/gm)].map((m) => m[1]);
  const metrics = Object.fromEntries([...out.matchAll(/^METRIC (\S+) (\S+)$/gm)].map((m) => [m[1], Number(m[2])]));
  assert.deepEqual(failed, [], `guest failures:\n${out}\n${r.stderr}`);
  for (const name of EXPECTED) assert.ok(passed.has(name), `${name} did not pass:\n${out}\n${r.stderr}`);
  assert.equal(r.status, 0, `run-guest-tests.sh exited ${r.status}:\n${out}\n${r.stderr}`);
  // sharing: every process maps all 16 MiB as Shared_Clean and is charged 1/N of it
  assert.equal(metrics['share4_fault.shared_clean_kb'], 16384);
  assert.ok(Math.abs(metrics['share8_prefault.pss_kb_per_process'] - 2048) <= 110, JSON.stringify(metrics));
  // prefaulting beats one fault per page (the reason it is what Node instances use)
  assert.ok(metrics['map64m_read.prefault_ms'] < metrics['map64m_read.fault_ms'], JSON.stringify(metrics));
});

const DAEMON_EXPECTED = [
  'insmod', 'daemon_guest_start', 'daemon_guest_detects_module', 'daemon_guest_mounted_mmt_fs',
  ...['example', 'tool', 'browser', 'maps'].flatMap((a) => [
    `daemon_guest_${a}_template_in_module`, `daemon_guest_${a}_restored_0_same_as_cold`, `daemon_guest_${a}_restored_1_same_as_cold`,
    `daemon_guest_${a}_restore_0_span_says_kernel_module`, `daemon_guest_${a}_restore_1_span_says_kernel_module`, `daemon_guest_${a}_template_rm_deletes_module_template`,
  ]),
  'daemon_guest_instances_map_the_template_file', 'daemon_guest_instances_reseeded', 'daemon_guest_template_gone_rebuilt',
  'daemon_guest_stop', 'daemon_guest_no_templates_left',
  'daemon_guest_mmt_off_said', 'daemon_guest_mmt_off_private_copies', 'daemon_guest_mmt_off_stop', 'daemon_guest_no_cgroups_left', 'dmesg_clean',
];

function daemonMissing(): string | undefined {
  for (const f of ['dist/trenv.js', 'runtime-daemon/native/build/trenv-mmt', 'runtime-daemon/native/build/trenv-sandboxd']) {
    if (!fs.existsSync(path.join(ROOT, f))) return `${f} is not built (node scripts/build.mjs; make -C runtime-daemon/native)`;
  }
  return missing();
}

test('the daemon end to end with the module in a QEMU guest: Node templates in module templates, instances map them, rm deletes them', { skip: daemonMissing(), timeout: 600_000 }, () => {
  const r = spawnSync('bash', [SCRIPT, '--daemon', '--out', path.join(ROOT, 'kernel-modules/build/last-daemon-run')], { encoding: 'utf8', timeout: 590_000 });
  const out = r.stdout ?? '';
  const passed = new Set([...out.matchAll(/^PASS (\S+)/gm)].map((m) => m[1]));
  const failed = [...out.matchAll(/^FAIL (.*)$/gm)].map((m) => m[1]);
  assert.deepEqual(failed, [], `guest failures:\n${out}\n${r.stderr}`);
  for (const name of DAEMON_EXPECTED) assert.ok(passed.has(name), `${name} did not pass:\n${out}\n${r.stderr}`);
  assert.equal(r.status, 0, `run-guest-tests.sh --daemon exited ${r.status}:\n${out}\n${r.stderr}`);
});
