/**
 * KSM part (optional sharing for CRIU-restored Node instances, TRENV_KSM=1): 16 live instances of
 * the node-hold template, restored by CRIU into repurposed sandboxes with their memory marked
 * mergeable. Side by side in one run: their total PSS right after all 16 run (private copies: what
 * CRIU gives; ksmd is held back until then) and after ksmd has merged their equal pages; the delay
 * from ksmd's start until it has (90% of the final saving) and ksmd's CPU time for it. ksmd scans TRENV_KSM_PAGES_TO_SCAN pages per 20 ms
 * (the bench sets 1000; the kernel's default is 100).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Methods } from '../../runtime-daemon/protocol/messages';
import { ksmCounters, ksmdCpuMs } from '../../runtime-daemon/template/ksm';
import { startDaemon } from '../integration/harness';
import { mdTable, MetricRow, row, writeReport } from './results';

const N = 16;
const HOLD_MS = 55_000;
const AGENT = path.join(__dirname, '../../../test/bench/functions/node-hold');

export async function benchKsm(): Promise<MetricRow[]> {
  process.env.TRENV_KSM = '1';
  process.env.TRENV_KSM_PAGES_TO_SCAN ??= '1000';
  const d = await startDaemon();
  delete process.env.TRENV_KSM;
  try {
    await d.client.rpc.sendRequest(Methods.configurePool, { maxIdle: N + 4 });
    // the daemon switched ksmd on; pause it while the instances start so the first sample shows
    // their private copies (they are marked mergeable either way; the daemon puts ksmd back)
    fs.writeFileSync('/sys/kernel/mm/ksm/run', '0');
    const t = await d.client.rpc.sendRequest(Methods.buildTemplate, { agentDir: AGENT });
    if (t.kind !== 'criu') throw new Error(`node-hold has a ${t.kind} template, not a CRIU one`);
    const memory = async () => {
      const st = await d.client.rpc.sendRequest(Methods.stats);
      const busy = st.sandboxes.filter((s) => s.state === 'busy' && s.agent === 'node-hold' && (s.memory?.processes ?? 0) >= 2);
      return { pssKb: busy.reduce((a, s) => a + (s.memory?.pssKb ?? 0), 0), instances: busy.length };
    };
    const runs = Array.from({ length: N }, () => d.invoke({ agentDir: AGENT, event: { hold_ms: HOLD_MS } }).catch(() => undefined));
    let m = await memory();
    for (let i = 0; i < 300 && m.instances < N; i++) {
      await new Promise((r) => setTimeout(r, 100));
      m = await memory();
    }
    if (m.instances < N) throw new Error(`only ${m.instances} of ${N} instances ran`);
    await new Promise((r) => setTimeout(r, 500)); // every handler past its first work
    const before = await memory();
    // ksmd was paused until now (see below), so `before` is the private-copy state
    fs.writeFileSync('/sys/kernel/mm/ksm/run', '1');
    const t0 = Date.now();
    const k0 = ksmCounters();
    const cpu0 = ksmdCpuMs();
    const series: Array<{ s: number; pssKb: number; sharing: number }> = [];
    let stable = 0;
    while (Date.now() - t0 < HOLD_MS - 8000 && stable < 4) {
      await new Promise((r) => setTimeout(r, 1000));
      const k = ksmCounters();
      const now = await memory();
      const last = series[series.length - 1];
      series.push({ s: (Date.now() - t0) / 1000, pssKb: now.pssKb, sharing: k.pagesSharing - k0.pagesSharing });
      stable = last && k.pagesSharing - k0.pagesSharing > 0 && Math.abs(k.pagesSharing - k0.pagesSharing - last.sharing) <= last.sharing * 0.01 ? stable + 1 : 0;
    }
    const cpuMs = ksmdCpuMs() - cpu0;
    const after = series[series.length - 1];
    const saved = before.pssKb - after.pssKb;
    const at90 = series.find((x) => before.pssKb - x.pssKb >= saved * 0.9) ?? after;
    for (const l of await d.client.rpc.sendRequest(Methods.listInvocations, { limit: N * 2 })) {
      if (l.state === 'running') await d.client.rpc.sendRequest(Methods.kill, { id: l.id }).catch(() => undefined);
    }
    await Promise.all(runs);
    const ratio = after.pssKb / before.pssKb;
    const md = [
      `# KSM for CRIU-restored Node instances (${N} live node-hold instances, ksmd pages_to_scan ${process.env.TRENV_KSM_PAGES_TO_SCAN})`,
      '',
      mdTable(['when', 'total PSS MiB', 'pages merged away'], [
        ['all running (private copies, as CRIU restores them)', before.pssKb / 1024, 0],
        [`after merging (${after.s.toFixed(0)} s)`, after.pssKb / 1024, after.sharing],
      ]),
      '',
      `PSS after/before ${ratio.toFixed(2)}; 90% of the saving reached after ${at90.s.toFixed(0)} s; ksmd CPU ${(cpuMs / 1000).toFixed(1)} s over that time.`,
      '',
      mdTable(['s', 'PSS MiB', 'pages merged away'], series.map((x) => [x.s, x.pssKb / 1024, x.sharing])),
    ].join('\n');
    writeReport('ksm', { n: N, before, series, cpuMs, pagesToScan: Number(process.env.TRENV_KSM_PAGES_TO_SCAN) }, md);
    process.stderr.write(md + '\n');
    return [
      row('container.ksm.mem16_ratio.merged_over_private.node', ratio, 'ratio', 'lower'),
      row('container.ksm.merge_delay_s.node', at90.s, 's', 'lower'),
      row('container.ksm.ksmd_cpu_s.node', cpuMs / 1000, 's', 'lower'),
    ];
  } finally {
    await d.stop();
  }
}
