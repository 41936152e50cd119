/**
 * microVM part, side by side in one run, on the same agent (py-text-stats) and the same guest image:
 *   cold  - boot a VM per invocation (kernel + initramfs + root), copy the agent in, start the runtime
 *   copy  - restore a full snapshot whose RAM is copied into every VM (Firecracker/E2B-style restore:
 *           migrate without x-ignore-shared into anonymous RAM)
 *   clone - trenv: restore from the VM template, RAM mapped private from the template file
 * each with the root on virtio-pmem + DAX and on virtio-blk. Reported: time to handler start
 * P50/P99 for single starts and for 10 at once; host memory of those 10 live VMs (PSS of the QEMU
 * processes, plus the host page cache of the root image they pulled in through virtio-blk, which no
 * process maps); the guests' own page cache.
 *
 * Driven on the sandbox layer (Vm, VmPool, VmTemplateManager), not through the daemon, so the
 * numbers are the VM's and nothing else's. TCG here: absolute times are far from KVM's; the ratios
 * compare the three systems under the same emulator.
 */
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadAgent, LoadedAgent } from '../../runtime-daemon/manifest/manifest';
import { readRollup } from '../../runtime-daemon/metrics/smaps';
import { Accel, findImage, guestMemory, probeAccel, RootKind, Vm } from '../../runtime-daemon/sandbox/vm';
import { VmPool } from '../../runtime-daemon/sandbox/vmPool';
import { vmMemoryMb, VmTemplate, VmTemplateManager } from '../../runtime-daemon/template/vmTemplates';
import { EXAMPLES } from '../integration/harness';
import { mdTable, mean, MetricRow, percentile, row, writeReport } from './results';

type System = 'cold' | 'copy' | 'clone';
const SYSTEMS: System[] = ['cold', 'copy', 'clone'];
const ROOTS: RootKind[] = ['pmem', 'blk'];
const SINGLE: Record<System, number> = { cold: 3, copy: 6, clone: 12 };
const N = 10;
const EVENT = { text: 'The quick brown fox jumps over the lazy dog. It was a good day!' };

interface Started {
  vm: Vm;
  toHandlerMs: number;
  done: Promise<void>;
}

/** Starts one VM of the system and runs the agent in it up to the handler's `start`; the VM stays up. */
async function start(system: System, agent: LoadedAgent, root: RootKind, pool: VmPool, tpl: Record<'copy' | 'clone', VmTemplate>): Promise<Started> {
  const t0 = process.hrtime.bigint();
  const vm = system === 'cold' ? await pool.boot(agent, root) : await pool.clone(tpl[system]);
  let startedAt = 0n;
  let resolveStart!: () => void;
  let resolveDone!: () => void;
  const startSeen = new Promise<void>((r) => (resolveStart = r));
  const done = new Promise<void>((r) => (resolveDone = r));
  vm.chan.on('msg', (m: { t: string; fd?: string; b64?: string }) => {
    if (m.t === 'data' && m.fd === 'chan' && m.b64 && Buffer.from(m.b64, 'base64').toString().includes('"t":"start"')) {
      startedAt ||= process.hrtime.bigint();
      resolveStart();
    }
    if (m.t === 'exit') resolveDone();
  });
  if (system === 'cold') {
    await vm.chan.request('start', pool.startArgs(agent, { TRENV_INVOCATION_ID: 'bench' }));
    await vm.chan.request('stdin', { b64: Buffer.from(JSON.stringify(EVENT)).toString('base64'), close: true });
  } else {
    await vm.chan.request('clock', { epoch_ns: (BigInt(Date.now()) * 1_000_000n).toString() });
    await vm.chan.request('seed', { hex: crypto.randomBytes(64).toString('hex') });
    const env = { TRENV_INVOCATION_ID: 'bench' };
    await vm.chan.request('stdin', { b64: Buffer.from(JSON.stringify({ trenv: { seed: crypto.randomBytes(32).toString('hex'), env }, event: EVENT })).toString('base64'), close: true });
  }
  await vm.guard(startSeen);
  return { vm, toHandlerMs: Number(startedAt - t0) / 1e6, done };
}

/** Drops the root image (and template files) from the host page cache, so each system starts alike. */
function dropCache(files: string[]): void {
  const py = 'import os,sys\nfor f in sys.argv[1:]:\n  fd=os.open(f,os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED); os.close(fd)';
  execFileSync('/usr/bin/python3', ['-c', py, ...files]);
}

/** Bytes of the file in the host page cache (fincore). */
function cachedBytes(file: string): number {
  const out = execFileSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', file], { encoding: 'utf8' });
  return Number(out.trim()) || 0;
}

interface Result {
  system: System;
  root: RootKind;
  singleMs: number[];
  concurrentMs: number[];
  /** absent: not measured for this combination (see below) */
  mem10?: { pssKb: number; rssKb: number; pageCacheKb: number; totalKb: number };
  guestCachedKb: number;
}

export async function benchVm(): Promise<MetricRow[]> {
  const image = findImage();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-bench-vm-'));
  const vmsDir = path.join(work, 'vms');
  fs.mkdirSync(vmsDir);
  const accel: Accel = await probeAccel(image, vmsDir, path.join(work, 'accel.json'));
  const pool = new VmPool(vmsDir, () => image, async () => accel, 0);
  const tm = new VmTemplateManager(path.join(work, 'templates'), vmsDir, () => image, async () => accel);
  const agent = loadAgent(path.join(EXAMPLES, 'py-text-stats'));
  const results: Result[] = [];
  try {
    for (const root of ROOTS) {
      const t0 = Date.now();
      const tpl = { clone: await tm.build(agent, root), copy: await tm.build(agent, root, undefined, 'copy') };
      process.stderr.write(`vm bench (${root}): templates built in ${((Date.now() - t0) / 1000).toFixed(1)} s (copy snapshot ${(tpl.copy.meta.stateBytes / 2 ** 20).toFixed(1)} MiB, clone state ${(tpl.clone.meta.stateBytes / 1024).toFixed(0)} KiB)\n`);
      for (const system of SYSTEMS) {
        const singleMs: number[] = [];
        const guestCached: number[] = [];
        for (let i = 0; i < SINGLE[system]; i++) {
          const s = await start(system, agent, root, pool, tpl);
          singleMs.push(s.toHandlerMs);
          await s.done;
          guestCached.push(guestMemory(await s.vm.chan.request('mem')).cachedKb);
          await pool.release(s.vm);
        }
        // ten cold boots at once take a minute under TCG: measured once, on the default (pmem) root
        if (system === 'cold' && root === 'blk') {
          results.push({ system, root, singleMs, concurrentMs: [], guestCachedKb: mean(guestCached) });
          process.stderr.write(`vm bench ${system}/${root}: single P50 ${percentile(singleMs, 50).toFixed(0)} ms; guest page cache ${(mean(guestCached) / 1024).toFixed(1)} MiB\n`);
          continue;
        }
        dropCache([image.rootfs, tpl.clone.ramPath]);
        const cacheBefore = cachedBytes(image.rootfs);
        const all = await Promise.all(Array.from({ length: N }, () => start(system, agent, root, pool, tpl)));
        await Promise.all(all.map((s) => s.done));
        await new Promise((r) => setTimeout(r, 500));
        let pssKb = 0;
        let rssKb = 0;
        for (const s of all) {
          const r = readRollup(s.vm.pid);
          pssKb += r?.pssKb ?? 0;
          rssKb += r?.rssKb ?? 0;
        }
        // virtio-blk reads go through QEMU's read() into the host page cache, which no process maps;
        // with pmem the image is mapped and its pages are already in the PSS above
        const pageCacheKb = root === 'blk' ? Math.max(0, cachedBytes(image.rootfs) - cacheBefore) / 1024 : 0;
        await Promise.all(all.map((s) => pool.release(s.vm)));
        const r: Result = {
          system,
          root,
          singleMs,
          concurrentMs: all.map((s) => s.toHandlerMs),
          mem10: { pssKb, rssKb, pageCacheKb, totalKb: pssKb + pageCacheKb },
          guestCachedKb: mean(guestCached),
        };
        results.push(r);
        process.stderr.write(
          `vm bench ${system}/${root}: single P50 ${percentile(singleMs, 50).toFixed(0)} ms, 10 at once P50 ${percentile(r.concurrentMs, 50).toFixed(0)} ms; ` +
            `10 live VMs ${(r.mem10!.totalKb / 1024).toFixed(0)} MiB; guest page cache ${(r.guestCachedKb / 1024).toFixed(1)} MiB\n`,
        );
      }
    }
  } finally {
    await pool.closeAll();
    fs.rmSync(work, { recursive: true, force: true });
  }

  const get = (s: System, r: RootKind) => results.find((x) => x.system === s && x.root === r)!;
  const p50 = (s: System, r: RootKind = 'pmem') => percentile(get(s, r).singleMs, 50);
  const mem = (s: System, r: RootKind = 'pmem') => get(s, r).mem10!.totalKb;
  const guestCache = (r: RootKind) => mean(SYSTEMS.map((s) => get(s, r).guestCachedKb));
  const ratios = {
    cold_over_clone: p50('cold') / p50('clone'),
    copy_restore_over_clone: p50('copy') / p50('clone'),
    mem10_clone_over_cold: mem('clone') / mem('cold'),
    mem10_clone_over_copy_restore: mem('clone') / mem('copy'),
    guest_pagecache_dax_over_blk: guestCache('pmem') / guestCache('blk'),
  };
  const table = mdTable(
    ['system', 'root', 'single P50 ms', 'single P99 ms', '10 at once P50 ms', '10 at once P99 ms', '10 VMs PSS MiB', '+ host page cache MiB', 'guest page cache MiB'],
    results.map((r) => [
      r.system,
      r.root,
      percentile(r.singleMs, 50),
      percentile(r.singleMs, 99),
      r.concurrentMs.length ? percentile(r.concurrentMs, 50) : '-',
      r.concurrentMs.length ? percentile(r.concurrentMs, 99) : '-',
      r.mem10 ? r.mem10.pssKb / 1024 : '-',
      r.mem10 ? r.mem10.pageCacheKb / 1024 : '-',
      r.guestCachedKb / 1024,
    ]),
  );
  const md = [
    '# microVMs: cold boot vs full-copy snapshot restore vs trenv template clone',
    '',
    `Accelerator: ${accel}; agent py-text-stats (Python); guest RAM ${vmMemoryMb(agent)} MiB; ${N} VMs for the concurrent and memory columns (ten cold boots at once take a minute under TCG: measured on the pmem root only). Time is from starting QEMU to the handler's start message; guest page cache is the guest's Cached after one invocation.`,
    '',
    table,
    '',
    `Ratios (pmem root, single-start P50): cold/clone ${ratios.cold_over_clone.toFixed(1)}x, copy-restore/clone ${ratios.copy_restore_over_clone.toFixed(2)}x; memory of 10 VMs clone/cold ${ratios.mem10_clone_over_cold.toFixed(2)}, clone/copy ${ratios.mem10_clone_over_copy_restore.toFixed(2)}; guest page cache DAX/blk ${ratios.guest_pagecache_dax_over_blk.toFixed(4)}.`,
  ].join('\n');
  writeReport('vm', { accel, results, ratios }, md);
  process.stderr.write(md + '\n');
  return [
    row('vm.start_ratio.cold_over_clone', ratios.cold_over_clone, 'x', 'higher'),
    row('vm.start_ratio.copy_restore_over_clone', ratios.copy_restore_over_clone, 'x', 'higher'),
    row('vm.mem10_ratio.clone_over_cold', ratios.mem10_clone_over_cold, 'ratio', 'lower'),
    row('vm.mem10_ratio.clone_over_copy_restore', ratios.mem10_clone_over_copy_restore, 'ratio', 'lower'),
    row('vm.guest_pagecache_ratio.dax_over_blk', ratios.guest_pagecache_dax_over_blk, 'ratio', 'lower'),
  ];
}
