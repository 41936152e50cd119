/**
 * kmod part: Node agent instances from one template through the mm_template kernel module, inside a
 * QEMU guest (TCG; the host cannot load modules), side by side in one boot, on examples/node-json-transform:
 *   cold         - a fresh `node` per instance (load the shim and the agent, run the handler)
 *   criu         - CRIU 4.1 restore of the initialised instance into fresh pid/uts/mount namespaces:
 *                  every page is a private copy (the "CRIU private restore" baseline)
 *   module       - the same CRIU restore, then every resident private anonymous run of the
 *                  instance (V8 heap, malloc heap, thread stacks ...) is remapped onto the template
 *                  (MAP_PRIVATE|MAP_FIXED through MMT_IOC_MAP_PID, prefaulted), which frees the
 *                  private copies; reads share the template's pages, writes copy
 *   module_fault - the same with one page fault per page instead of prefaulted page tables
 * N = 8 and 16 instances started one after the other and kept alive. Time to handler start =
 * wall clock from starting the restore (or node) to the handler's first line; memory = memory.current
 * of the batch's cgroup v2 group while the N instances live (every instance and, for restores, the
 * unshare/CRIU/remap processes run in it: user pages, page tables, kernel memory), plus the
 * template itself for the module paths (charged to the builder, outside the group). The guest's
 * MemFree drop and the instances' PSS sum are reported next to it. Driven by kernel-modules/test/run-guest-tests.sh --bench (kmod-guest.mjs in the guest).
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { mdTable, MetricRow, row, writeReport } from './results';

const ROOT = path.resolve(__dirname, '../../..');

interface BenchLine {
  mode: string;
  n: number;
  medianStartMs: number;
  usedKb: number;
  cgKb: number;
  pssKb: number;
  instances: number;
  starts: number[];
}

export async function benchKmod(): Promise<MetricRow[]> {
  const t0 = Date.now();
  const r = spawnSync('bash', [path.join(ROOT, 'kernel-modules/test/run-guest-tests.sh'), '--bench'], { encoding: 'utf8', timeout: 900_000 });
  const out = r.stdout ?? '';
  const lines = [...out.matchAll(/^BENCH (\{.*\})$/gm)].map((m) => JSON.parse(m[1]) as BenchLine);
  const metrics: Record<string, number> = Object.fromEntries([...out.matchAll(/^METRIC (\S+) (\S+)$/gm)].map((m) => [m[1], Number(m[2])]));
  const get = (mode: string, n: number): BenchLine => {
    const l = lines.find((x) => x.mode === mode && x.n === n);
    if (!l) throw new Error(`kmod bench: no result for ${mode} N=${n} (guest run exit ${r.status}):\n${out.slice(-3000)}\n${(r.stderr ?? '').slice(-2000)}`);
    return l;
  };
  const rows: MetricRow[] = [];
  for (const n of [8, 16]) {
    const [cold, criu, mod, modFault] = [get('cold', n), get('criu', n), get('module', n), get('module_fault', n)];
    rows.push(
      row(`kmod.mem${n}_ratio.module_over_criu`, mod.cgKb / criu.cgKb, 'ratio', 'lower'),
      row(`kmod.mem${n}_ratio.module_over_cold`, mod.cgKb / cold.cgKb, 'ratio', 'lower'),
      row(`kmod.mem${n}_mb.module`, mod.cgKb / 1024, 'MiB', 'lower'),
      row(`kmod.mem${n}_mb.module_fault`, modFault.cgKb / 1024, 'MiB', 'lower'),
      row(`kmod.mem${n}_mb.criu`, criu.cgKb / 1024, 'MiB', 'lower'),
      row(`kmod.mem${n}_mb.cold`, cold.cgKb / 1024, 'MiB', 'lower'),
      row(`kmod.start${n}_p50_ms.module`, mod.medianStartMs, 'ms', 'lower'),
      row(`kmod.start${n}_p50_ms.module_fault`, modFault.medianStartMs, 'ms', 'lower'),
      row(`kmod.start${n}_p50_ms.criu`, criu.medianStartMs, 'ms', 'lower'),
      row(`kmod.start${n}_p50_ms.cold`, cold.medianStartMs, 'ms', 'lower'),
    );
  }
  rows.push(
    row('kmod.start_ratio.criu_over_module', get('criu', 16).medianStartMs / get('module', 16).medianStartMs, 'ratio', 'higher'),
    row('kmod.start_ratio.cold_over_module', get('cold', 16).medianStartMs / get('module', 16).medianStartMs, 'ratio', 'higher'),
  );
  if (metrics['map64m_read.fault_ms'] && metrics['map64m_read.prefault_ms']) {
    rows.push(row('kmod.map64m_ratio.fault_over_prefault', metrics['map64m_read.fault_ms'] / metrics['map64m_read.prefault_ms'], 'ratio', 'higher'));
  }
  const table = mdTable(
    ['mode', 'N', 'start P50 ms', 'memory MiB (cgroup memory.current + template)', 'MemFree drop (+ template) MiB', 'PSS sum MiB'],
    lines.map((l) => [l.mode, l.n, l.medianStartMs, l.cgKb / 1024, l.usedKb / 1024, l.pssKb / 1024]),
  );
  const md = [
    '# kmod: Node instances through the mm_template kernel module (QEMU TCG guest, 2 vCPUs, 1 GiB)',
    '',
    `Template: ${metrics['node.template_kb'] ?? '?'} KiB of resident private anonymous memory of an initialised node-json-transform instance.`,
    `Map + read 64 MiB of a template: one fault per page ${metrics['map64m_read.fault_ms']} ms, prefaulted ${metrics['map64m_read.prefault_ms']} ms, ` +
      `copy into anonymous memory ${metrics['map64m_read.private_copy_ms']} ms.`,
    '',
    table,
    '',
    `Guest run took ${((Date.now() - t0) / 1000).toFixed(0)} s.`,
  ].join('\n');
  writeReport('kmod', { lines, metrics }, md);
  return rows;
}
