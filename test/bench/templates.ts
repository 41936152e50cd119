/**
 * Templates part: the paper's comparison, side by side in one run, on the same agents and the same
 * bursty trace (concurrency up to 16):
 *   cold  - new sandbox + new runtime process per invocation (faasd-style), through the daemon
 *   runc  - `runc run` of an OCI bundle per invocation (a real container runtime)
 *   criu  - a fresh sandbox per invocation with a full CRIU checkpoint restored into it (private memory)
 *   trenv - repurposed sandbox + memory template (Python: fork zygote; Node: no template yet, so a
 *           repurposed sandbox with a cold runtime; reported as it is)
 * Reports P50/P99/mean of time to handler start and end to end, memory of N = 8, 16, 32 live
 * instances (sum of PSS, and of cgroup usage), CPU time; Python and Node separately and together.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { InvocationRecord, Methods, TraceSpan } from '../../runtime-daemon/protocol/messages';
import { readRollup } from '../../runtime-daemon/metrics/smaps';
import { EXAMPLES, startDaemon, TestDaemon } from '../integration/harness';
import { burstyArrivals, mdTable, mean, MetricRow, percentile, row, writeReport } from './results';
import * as runc from './runc';
import { criuSystem, CriuSystem } from './criuSystem';

const FUNCTIONS = path.resolve(__dirname, '../../../test/bench/functions');
const RUNTIMES_DIR = path.resolve(__dirname, '../../../runtime-daemon/runtimes');

type Runtime = 'python' | 'node';
type System = 'cold' | 'runc' | 'criu' | 'trenv';
const SYSTEMS: System[] = ['cold', 'runc', 'criu', 'trenv'];

interface Sample {
  system: System;
  runtime: Runtime;
  agent: string;
  toHandlerMs: number;
  e2eMs: number;
  ok: boolean;
}

interface Agent {
  dir: string;
  name: string;
  runtime: Runtime;
  event: unknown;
}

function agents(): Agent[] {
  const dirs = [
    path.join(EXAMPLES, 'py-text-stats'),
    path.join(EXAMPLES, 'node-json-transform'),
    ...fs.readdirSync(FUNCTIONS).filter((n) => !n.endsWith('-hold')).map((n) => path.join(FUNCTIONS, n)),
  ].filter((d) => fs.existsSync(path.join(d, 'trenv.json')));
  return dirs.map((dir) => {
    const m = JSON.parse(fs.readFileSync(path.join(dir, 'trenv.json'), 'utf8'));
    return { dir, name: m.name, runtime: m.runtime, event: JSON.parse(fs.readFileSync(path.join(dir, '.trenv/events/default.json'), 'utf8')) };
  });
}

function cpuJiffies(): number {
  const [, ...f] = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/);
  // user nice system irq softirq steal (not idle/iowait)
  return [0, 1, 2, 5, 6, 7].reduce((a, i) => a + Number(f[i] ?? 0), 0);
}

const HZ = 100;

/** Runs `fn` for every arrival, at most `conc` at once. */
async function replay<T>(arrivals: number[], conc: number, fn: (i: number) => Promise<T>): Promise<T[]> {
  const t0 = Date.now();
  let inFlight = 0;
  const waiters: Array<() => void> = [];
  return Promise.all(
    arrivals.map(async (at, i) => {
      const wait = t0 + at - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      while (inFlight >= conc) await new Promise<void>((r) => waiters.push(r));
      inFlight++;
      try {
        return await fn(i);
      } finally {
        inFlight--;
        waiters.shift()?.();
      }
    }),
  );
}

function handlerStartFromTrace(trace: TraceSpan[]): number {
  const hs = trace.find((s) => s.name === 'handler.start');
  if (!hs || !trace.length) return NaN;
  const first = trace.reduce((m, s) => (BigInt(s.startNs) < m ? BigInt(s.startNs) : m), BigInt(trace[0].startNs));
  return Number(BigInt(hs.endNs) - first) / 1e6;
}

class Runner {
  private runcSkeleton = '';
  private tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-bench-'));
  private seq = 0;
  constructor(readonly d: TestDaemon, readonly criu: CriuSystem | undefined) {}

  setupRunc(): void {
    runc.ensureRunc();
    this.runcSkeleton = runc.buildRootfsSkeleton(path.join(this.tmp, 'runc-rootfs'));
  }

  async invoke(system: System, a: Agent, event: unknown): Promise<{ toHandlerMs: number; e2eMs: number; ok: boolean }> {
    const t0 = process.hrtime.bigint();
    if (system === 'cold' || system === 'trenv') {
      const rec: InvocationRecord = await this.d.client.rpc.sendRequest(Methods.invoke, {
        agentDir: a.dir,
        event,
        fresh: system === 'cold',
        template: system === 'trenv' ? undefined : false,
      });
      const e2eMs = Number(process.hrtime.bigint() - t0) / 1e6;
      const det = await this.d.client.rpc.sendRequest(Methods.getInvocation, { id: rec.id });
      return { toHandlerMs: handlerStartFromTrace(det.trace), e2eMs, ok: rec.state === 'succeeded' };
    }
    if (system === 'runc') {
      const id = `b${process.pid}-${++this.seq}`;
      const bundleDir = path.join(this.tmp, id);
      runc.makeAgentBundle({ bundleDir, rootfsSkeleton: this.runcSkeleton, appDir: a.dir, runtimesDir: RUNTIMES_DIR });
      try {
        const r = await runc.runInvocation(bundleDir, id, event, { timeoutMs: 30_000 });
        return { toHandlerMs: r.handlerStartMs, e2eMs: r.e2eMs, ok: r.ok };
      } finally {
        fs.rmSync(bundleDir, { recursive: true, force: true });
      }
    }
    if (!this.criu) return { toHandlerMs: NaN, e2eMs: NaN, ok: false };
    return this.criu.invoke(a, event);
  }

  /** Starts n instances that stay alive, measures their memory at once, then lets them end. */
  async liveMemory(system: System, a: Agent, n: number): Promise<{ pssKb: number; cgroupKb: number; instances: number }> {
    // long enough for the slowest system to have all n handlers running at once
    const holdMs = 4000 + n * 300;
    const event = { hold_ms: holdMs };
    if (system === 'criu') {
      if (!this.criu) return { pssKb: NaN, cgroupKb: NaN, instances: 0 };
      return this.criu.liveMemory(a, n, holdMs);
    }
    const running = Array.from({ length: n }, () => this.invoke(system, a, event).catch(() => ({ ok: false })));
    // wait until all n have their handler running
    const until = Date.now() + holdMs - 500;
    let m = { pssKb: NaN, cgroupKb: NaN, instances: 0 };
    while (Date.now() < until) {
      await new Promise((r) => setTimeout(r, 200));
      m = system === 'runc' ? runcMemory() : await this.daemonMemory(system, a);
      if (m.instances >= n) break;
    }
    await new Promise((r) => setTimeout(r, 300)); // settle: every handler past its imports
    m = system === 'runc' ? runcMemory() : await this.daemonMemory(system, a);
    if (system !== 'runc') {
      // measured: end the holds now instead of waiting them out
      for (const r of await this.d.client.rpc.sendRequest(Methods.listInvocations, { limit: n * 2 })) {
        if (r.state === 'running' && r.agent === a.name) await this.d.client.rpc.sendRequest(Methods.kill, { id: r.id }).catch(() => undefined);
      }
    }
    await Promise.all(running);
    return m;
  }

  private async daemonMemory(system: System, a: Agent): Promise<{ pssKb: number; cgroupKb: number; instances: number }> {
    const st = await this.d.client.rpc.sendRequest(Methods.stats);
    // the sandboxes running this agent's handler (init + at least the instance)
    const busy = st.sandboxes.filter((s) => s.state === 'busy' && s.agent === path.basename(a.dir) && (s.memory?.processes ?? 0) >= 2);
    let pss = busy.reduce((acc, s) => acc + (s.memory?.pssKb ?? 0), 0);
    const cg = busy.reduce((acc, s) => acc + (s.memory?.cgroupBytes ?? 0), 0) / 1024;
    // the agent's own template process, counted once (a zygote; CRIU templates have none)
    if (system === 'trenv') pss += st.templates.filter((t) => t.live && t.name === a.name).reduce((acc, t) => acc + (t.memory?.pssKb ?? 0), 0);
    return { pssKb: pss, cgroupKb: cg, instances: busy.length };
  }

  cleanup(): void {
    runc.cleanupAll();
    fs.rmSync(this.tmp, { recursive: true, force: true });
  }
}

function runcMemory(): { pssKb: number; cgroupKb: number; instances: number } {
  let pss = 0;
  let cg = 0;
  let instances = 0;
  const base = '/sys/fs/cgroup/memory/trenv-bench';
  for (const d of fs.existsSync(base) ? fs.readdirSync(base) : []) {
    const dir = path.join(base, d);
    if (!fs.statSync(dir).isDirectory()) continue;
    const pids = fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
    if (!pids.length) continue;
    instances++;
    for (const p of pids) pss += readRollup(p)?.pssKb ?? 0;
    cg += Number(fs.readFileSync(path.join(dir, 'memory.usage_in_bytes'), 'utf8')) / 1024;
  }
  return { pssKb: pss, cgroupKb: cg, instances };
}

function svgChart(title: string, groups: string[], series: Record<string, number[]>, unit: string): string {
  const W = 760;
  const H = 320;
  const pad = { l: 60, r: 20, t: 40, b: 60 };
  const names = Object.keys(series);
  const max = Math.max(1, ...Object.values(series).flat().filter(Number.isFinite));
  const gw = (W - pad.l - pad.r) / groups.length;
  const bw = (gw * 0.8) / names.length;
  const colors = ['#8a8a8a', '#d08c3c', '#b5475c', '#2f8fce'];
  const y = (v: number) => pad.t + (H - pad.t - pad.b) * (1 - v / max);
  let s = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`;
  s += `<rect width="${W}" height="${H}" fill="white"/><text x="${W / 2}" y="22" text-anchor="middle" font-size="14">${title}</text>`;
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    s += `<line x1="${pad.l}" x2="${W - pad.r}" y1="${y(v)}" y2="${y(v)}" stroke="#eee"/><text x="${pad.l - 6}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(v < 10 ? 1 : 0)}</text>`;
  }
  groups.forEach((g, gi) => {
    names.forEach((n, ni) => {
      const v = series[n][gi];
      if (!Number.isFinite(v)) return;
      const x = pad.l + gi * gw + gw * 0.1 + ni * bw;
      s += `<rect x="${x}" y="${y(v)}" width="${bw - 2}" height="${H - pad.b - y(v)}" fill="${colors[ni % colors.length]}"><title>${n} ${g}: ${v.toFixed(1)} ${unit}</title></rect>`;
    });
    s += `<text x="${pad.l + gi * gw + gw / 2}" y="${H - pad.b + 16}" text-anchor="middle">${g}</text>`;
  });
  names.forEach((n, ni) => {
    s += `<rect x="${pad.l + ni * 110}" y="${H - 24}" width="12" height="12" fill="${colors[ni % colors.length]}"/><text x="${pad.l + ni * 110 + 16}" y="${H - 14}">${n}</text>`;
  });
  s += `<text x="14" y="${H / 2}" transform="rotate(-90 14 ${H / 2})" text-anchor="middle">${unit}</text></svg>`;
  return s;
}

export async function benchTemplates(): Promise<MetricRow[]> {
  const n = Number(process.env.TRENV_BENCH_TEMPLATES_N ?? 96);
  const liveN = (process.env.TRENV_BENCH_LIVE ?? '8,16,32').split(',').map(Number);
  const d = await startDaemon();
  await d.client.rpc.sendRequest(Methods.configurePool, { maxIdle: 48 });
  const all = agents();
  const holds: Record<Runtime, Agent> = Object.fromEntries(
    (['python', 'node'] as Runtime[]).map((rt) => {
      const dir = path.join(FUNCTIONS, rt === 'python' ? 'py-hold' : 'node-hold');
      return [rt, { dir, name: path.basename(dir), runtime: rt, event: {} }];
    }),
  ) as Record<Runtime, Agent>;
  let criu: CriuSystem | undefined;
  const notes: string[] = [];
  try {
    criu = await criuSystem([...all, ...Object.values(holds)], RUNTIMES_DIR);
  } catch (e) {
    notes.push(`CRIU baseline unavailable: ${(e as Error).message}`);
  }
  const r = new Runner(d, criu);
  r.setupRunc();
  try {
    // templates for every agent that supports them (Python); Node has none yet
    for (const a of [...all, ...Object.values(holds)]) {
      try {
        await d.client.rpc.sendRequest(Methods.buildTemplate, { agentDir: a.dir });
      } catch (e) {
        if (a.runtime === 'python') throw e;
      }
    }
    const samples: Sample[] = [];
    const cpu: Record<string, number> = {};
    for (const rt of ['python', 'node'] as Runtime[]) {
      const ag = all.filter((a) => a.runtime === rt);
      // about 3-4 calls/s on average, in bursts of up to ~16 at once: the 2 cores here are not
      // saturated by any system on average, so the tails come from the bursts, not from a queue
      const arrivals = burstyArrivals(n, rt === 'python' ? 2019 : 2020, { burstGapMs: 1200, meanBurst: 4, innerGapMs: 2 });
      for (const sys of SYSTEMS) {
        if (sys === 'criu' && !criu) continue;
        // warm-up: page cache, pools, compile caches — so no system pays first-use costs
        await replay(
          ag.map((_, i) => i * 5),
          4,
          (i) => r.invoke(sys, ag[i], ag[i].event),
        );
        const j0 = cpuJiffies();
        const res = await replay(arrivals, 16, async (i) => {
          const a = ag[i % ag.length];
          const x = await r.invoke(sys, a, a.event).catch(() => ({ toHandlerMs: NaN, e2eMs: NaN, ok: false }));
          return { system: sys, runtime: rt, agent: a.name, ...x };
        });
        cpu[`${sys}.${rt}`] = (cpuJiffies() - j0) / HZ / n;
        samples.push(...res);
        process.stderr.write(`  templates bench: ${rt} ${sys} done (${res.filter((x) => x.ok).length}/${n} ok)\n`);
      }
    }
    const mem: Record<string, { pssKb: number; cgroupKb: number; instances: number }> = {};
    for (const rt of ['python', 'node'] as Runtime[]) {
      for (const sys of SYSTEMS) {
        if (sys === 'criu' && !criu) continue;
        for (const k of liveN) {
          mem[`${sys}.${rt}.${k}`] = await r.liveMemory(sys, holds[rt], k);
          process.stderr.write(`  templates bench: memory ${rt} ${sys} N=${k}: ${(mem[`${sys}.${rt}.${k}`].pssKb / 1024).toFixed(1)} MiB PSS\n`);
        }
      }
    }

    // ---- report
    const stat = (xs: number[]) => {
      const v = xs.filter(Number.isFinite);
      return { p50: percentile(v, 50), p99: percentile(v, 99), mean: mean(v), n: v.length };
    };
    const table: Array<Array<string | number>> = [];
    const lat: Record<string, ReturnType<typeof stat> & { e2eP50: number; e2eP99: number; failed: number }> = {};
    for (const rt of ['python', 'node', 'all'] as const) {
      for (const sys of SYSTEMS) {
        const s = samples.filter((x) => x.system === sys && (rt === 'all' || x.runtime === rt));
        if (!s.length) continue;
        const h = stat(s.map((x) => x.toHandlerMs));
        const e = stat(s.map((x) => x.e2eMs));
        lat[`${sys}.${rt}`] = { ...h, e2eP50: e.p50, e2eP99: e.p99, failed: s.filter((x) => !x.ok).length };
        table.push([rt, sys, h.p50, h.p99, h.mean, e.p50, e.p99, rt === 'all' ? '-' : (cpu[`${sys}.${rt}`] ?? NaN) * 1000, s.filter((x) => !x.ok).length]);
      }
    }
    const memTable: Array<Array<string | number>> = [];
    for (const rt of ['python', 'node'] as Runtime[]) {
      for (const sys of SYSTEMS) {
        const cells = liveN.map((k) => mem[`${sys}.${rt}.${k}`]);
        if (!cells[0]) continue;
        memTable.push([rt, sys, ...cells.flatMap((c, i) => [c.pssKb / 1024, c.cgroupKb / 1024, `${c.instances}/${liveN[i]}`])]);
      }
    }
    const ratio = (a: number, b: number) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? a / b : NaN);
    const rows: MetricRow[] = [];
    const lines: string[] = [];
    for (const rt of ['python', 'node'] as Runtime[]) {
      const t = lat[`trenv.${rt}`];
      const m32 = mem[`trenv.${rt}.32`];
      const add = (name: string, v: number, better: 'lower' | 'higher') => {
        if (!Number.isFinite(v)) return;
        rows.push(row(name, v, 'x', better));
        lines.push(`${name} = ${v.toFixed(2)}x`);
      };
      add(`container.p99_start_ratio.criu_over_trenv.${rt}`, ratio(lat[`criu.${rt}`]?.p99, t?.p99), 'higher');
      add(`container.p99_start_ratio.cold_over_trenv.${rt}`, ratio(lat[`cold.${rt}`]?.p99, t?.p99), 'higher');
      add(`container.p99_start_ratio.runc_over_trenv.${rt}`, ratio(lat[`runc.${rt}`]?.p99, t?.p99), 'higher');
      add(`container.mem32_ratio.trenv_over_cold.${rt}`, ratio(m32?.pssKb, mem[`cold.${rt}.32`]?.pssKb), 'lower');
      add(`container.mem32_ratio.trenv_over_criu.${rt}`, ratio(m32?.pssKb, mem[`criu.${rt}.32`]?.pssKb), 'lower');
    }
    const md = [
      `# Templates: cold vs runc vs CRIU vs trenv (${n} invocations per system and runtime, bursty trace, concurrency <= 16)`,
      '',
      '## Time to handler start and end to end (ms); CPU ms per invocation',
      '',
      mdTable(['runtime', 'system', 'to handler P50', 'to handler P99', 'to handler mean', 'e2e P50', 'e2e P99', 'CPU ms/inv', 'failed'], table),
      '',
      `## Memory of N live instances (MiB): sum of PSS / sum of cgroup usage`,
      '',
      mdTable(['runtime', 'system', ...liveN.flatMap((k) => [`PSS N=${k}`, `cgroup N=${k}`, `live at N=${k}`])], memTable),
      '',
      '## Ratios',
      '',
      ...lines.map((l) => `- ${l}`),
      '',
      ...notes.map((x) => `Note: ${x}`),
      'trenv: Python instances fork from a zygote and join a repurposed sandbox; Node instances are CRIU restores into a repurposed sandbox when CRIU is available (private memory, like the CRIU baseline) and a cold runtime otherwise.',
      "trenv PSS includes the agent's template zygote (counted once) and the per-instance waiter process that joins the sandbox.",
    ].join('\n');
    const groups = ['python', 'node'];
    const chart = svgChart(
      'Time to handler start, P99 (ms)',
      groups,
      Object.fromEntries(SYSTEMS.map((s) => [s, groups.map((g) => lat[`${s}.${g}`]?.p99 ?? NaN)])),
      'ms',
    );
    const memChart = svgChart(
      'Memory of 32 live instances, sum of PSS (MiB)',
      groups,
      Object.fromEntries(SYSTEMS.map((s) => [s, groups.map((g) => (mem[`${s}.${g}.32`]?.pssKb ?? NaN) / 1024)])),
      'MiB',
    );
    writeReport('templates', { n, liveN, latency: lat, memory: mem, cpuSecondsPerInvocation: cpu, samples, notes }, md);
    fs.writeFileSync(path.resolve(__dirname, '../../../bench/results/templates-latency.svg'), chart);
    fs.writeFileSync(path.resolve(__dirname, '../../../bench/results/templates-memory.svg'), memChart);
    process.stdout.write(md + '\n\n');
    return rows;
  } finally {
    r.cleanup();
    await criu?.close();
    await d.stop();
  }
}
