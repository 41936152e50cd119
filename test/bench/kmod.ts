/**
 * kmod part: Node agent instances from one template through the mm_template kernel module, inside a
 * QEMU guest (TCG; the host cannot load modules), side by side in one boot:
 *   cold         - a fresh `node` per instance (load the shim and the agent, run the handler)
 *   criu         - CRIU 4.1 restore of the initialised instance into fresh pid/uts/mount namespaces:
 *                  every page is a private copy (the "CRIU private restore" baseline)
 *   module       - CRIU restore of a checkpoint taken after the initialised process's resident private
 *                  anonymous runs (V8 heap, malloc heap, ...) were remapped onto the template's file
 *                  /run/mm_template/<id>: CRIU records them as private file mappings and maps the
 *                  file again on restore (prefaulted by the module), copying no template page;
 *                  reads share the template's pages, writes copy
 *   module_fault - the same with one page fault per page instead of prefaulted page tables
 * For the example agent as it is (state "small", ~6-8 MiB template) and for the same agent holding a
 * large initialised state ("large", ~150 MB; N = 8 and 16 for criu/module, 8 for cold); module_fault
 * only for the small state at N = 16 (the whole bench's time budget).
 * Each restored instance's sandbox (cgroup, pid/uts/mount namespaces) is made before its clock
 * starts, as trenv's pool keeps sandboxes ready; the clock covers criu restore -> SIGCONT -> handler.
 * BENCH lines also split a restore's start: CRIU's own restore time (--display-stats), the way to the
 * resumed process, and the instance's work after it resumed.
 * N = 8 and 16 instances started one after the other and kept alive. Time to handler start =
 * wall clock from starting the restore (or spawning node) to the handler's first line; memory = memory.current
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
  state: 'small' | 'large';
  mode: string;
  n: number;
  medianStartMs: number;
  usedKb: number;
  cgKb: number;
  pssKb: number;
  instances: number;
  starts: number[];
  /** restores: medians of CRIU's own restore time, the way to the resumed process, the instance's work after it (reading its request, re-seeding) */
  parts?: { criuRestoreMs?: number; toResumedMs?: number; afterResumeMs?: number; readMs?: number; reseedMs?: number };
}

export async function benchKmod(): Promise<MetricRow[]> {
  const t0 = Date.now();
  const r = spawnSync('bash', [path.join(ROOT, 'kernel-modules/test/run-guest-tests.sh'), '--bench'], { encoding: 'utf8', timeout: 900_000 });
  const out = r.stdout ?? '';
  const lines = [...out.matchAll(/^BENCH (\{.*\})$/gm)].map((m) => JSON.parse(m[1]) as BenchLine);
  const metrics: Record<string, number> = Object.fromEntries([...out.matchAll(/^METRIC (\S+) (\S+)$/gm)].map((m) => [m[1], Number(m[2])]));
  const get = (state: string, mode: string, n: number): BenchLine => {
    const l = lines.find((x) => x.state === state && x.mode === mode && x.n === n);
    if (!l) throw new Error(`kmod bench: no result for ${state} ${mode} N=${n} (guest run exit ${r.status}):\n${out.slice(-3000)}\n${(r.stderr ?? '').slice(-2000)}`);
    return l;
  };
  const failed = [...out.matchAll(/^FAIL .*$/gm)].map((m) => m[0]);
  if (failed.length) throw new Error(`kmod bench: the guest reported failures:\n${failed.join('\n')}`);
  const rows: MetricRow[] = [];
  // every batch that ran: memory and start per state, mode and N
  for (const l of lines) {
    rows.push(row(`kmod.${l.state}.mem${l.n}_mb.${l.mode}`, l.cgKb / 1024, 'MiB', 'lower'), row(`kmod.${l.state}.start${l.n}_p50_ms.${l.mode}`, l.medianStartMs, 'ms', 'lower'));
  }
  // the rows: N = 16 of the agent with a large initialised state (what templates are for);
  // the same ratios for the example agent as it is (small state) under kmod.small.*
  const ratios = (state: string, prefix: string): MetricRow[] => [
    row(`${prefix}mem16_ratio.module_over_criu`, get(state, 'module', 16).cgKb / get(state, 'criu', 16).cgKb, 'ratio', 'lower'),
    row(`${prefix}start_ratio.criu_over_module`, get(state, 'criu', 16).medianStartMs / get(state, 'module', 16).medianStartMs, 'ratio', 'higher'),
    row(`${prefix}mem8_ratio.module_over_cold`, get(state, 'module', 8).cgKb / get(state, 'cold', 8).cgKb, 'ratio', 'lower'),
    row(`${prefix}start8_ratio.cold_over_module`, get(state, 'cold', 8).medianStartMs / get(state, 'module', 8).medianStartMs, 'ratio', 'higher'),
  ];
  rows.push(...ratios('large', 'kmod.'), ...ratios('small', 'kmod.small.'));
  if (metrics['map64m_read.fault_ms'] && metrics['map64m_read.prefault_ms']) {
    rows.push(row('kmod.map64m_ratio.fault_over_prefault', metrics['map64m_read.fault_ms'] / metrics['map64m_read.prefault_ms'], 'ratio', 'higher'));
  }
  const table = mdTable(
    ['state', 'mode', 'N', 'start P50 ms', 'of which CRIU restore / to resumed / after resume (read request + re-seed) ms', 'memory MiB (cgroup memory.current + template)', 'MemFree drop (+ template) MiB', 'PSS sum MiB'],
    lines.map((l) => [
      l.state,
      l.mode,
      l.n,
      l.medianStartMs,
      l.parts ? `${l.parts.criuRestoreMs} / ${l.parts.toResumedMs} / ${l.parts.afterResumeMs} (${l.parts.readMs} + ${l.parts.reseedMs})` : '-',
      l.cgKb / 1024,
      l.usedKb / 1024,
      l.pssKb / 1024,
    ]),
  );
  const md = [
    '# kmod: Node instances through the mm_template kernel module (QEMU TCG guest, 2 vCPUs, 3 GiB)',
    '',
    'States: `small` = examples/node-json-transform as it is; `large` = the same agent holding a large initialised state',
    '(150,000 document records + a 32 MiB Float32 embedding table, ~150 MB), standing in for an agent that loads an index at init.',
    'The issue rows (kmod.mem16_ratio.module_over_criu, kmod.start_ratio.criu_over_module) are the large state; kmod.small.* the small one.',
    `Module checkpoint pages ${metrics['node.module_image_pages_kb'] ?? '?'} KiB vs CRIU's ${metrics['node.criu_image_pages_kb'] ?? '?'} KiB (last template built).`,
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
