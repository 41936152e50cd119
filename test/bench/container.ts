/**
 * Container part: the same bursty trace of example invocations, run twice side by side in one run:
 * "fresh" (new namespaces, cgroup and mounts for every invocation, destroyed after) and "repurposed"
 * (TrEnv: a cleaned sandbox from the pool, only the app dir swapped).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { InvocationRecord, Methods, TraceSpan } from '../../runtime-daemon/protocol/messages';
import { startDaemon, EXAMPLES, TestDaemon } from '../integration/harness';
import { burstyArrivals, mdTable, mean, MetricRow, percentile, row, writeReport } from './results';

interface Sample {
  agent: string;
  setupMs: number;
  toHandlerMs: number;
  e2eMs: number;
  state: string;
  start: string;
}

function spanOf(trace: TraceSpan[], name: string): TraceSpan | undefined {
  return trace.find((s) => s.name === name);
}

async function runPass(d: TestDaemon, agents: string[], arrivals: number[], fresh: boolean, env: Record<string, string>, maxConcurrency: number): Promise<Sample[]> {
  const events = new Map(agents.map((a) => [a, JSON.parse(fs.readFileSync(path.join(a, '.trenv/events/default.json'), 'utf8'))]));
  const samples: Sample[] = [];
  const t0 = Date.now();
  let inFlight = 0;
  const waiters: Array<() => void> = [];
  const tasks = arrivals.map(async (at, i) => {
    const wait = t0 + at - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    while (inFlight >= maxConcurrency) await new Promise<void>((r) => waiters.push(r));
    inFlight++;
    const agent = agents[i % agents.length];
    const s = process.hrtime.bigint();
    let rec: InvocationRecord;
    try {
      rec = await d.client.rpc.sendRequest(Methods.invoke, { agentDir: agent, event: events.get(agent), env, fresh });
    } finally {
      inFlight--;
      waiters.shift()?.();
    }
    const e2eMs = Number(process.hrtime.bigint() - s) / 1e6;
    const detail = await d.client.rpc.sendRequest(Methods.getInvocation, { id: rec.id });
    const ready = spanOf(detail.trace, 'sandbox.ready');
    const first = detail.trace[0];
    const hs = spanOf(detail.trace, 'handler.start');
    samples.push({
      agent: path.basename(agent),
      setupMs: ready?.durationMs ?? NaN,
      toHandlerMs: hs && first ? Number(BigInt(hs.endNs) - BigInt(first.startNs)) / 1e6 : NaN,
      e2eMs,
      state: rec.state,
      start: rec.start ?? '-',
    });
  });
  await Promise.all(tasks);
  return samples;
}

export async function benchContainer(opts: { n?: number } = {}): Promise<MetricRow[]> {
  const n = opts.n ?? Number(process.env.TRENV_BENCH_N ?? 500);
  const d = await startDaemon();
  const llmMod = await import(pathToFileURL(path.resolve(__dirname, '../../../test/fixtures/llm-server.mjs')).href);
  const llm = await llmMod.startLlmServer({ port: 0 });
  try {
    // the example agents, without those that drive the shared browser (Chromium's page loads are
    // not what this part measures; the browser part does)
    const agents = fs
      .readdirSync(EXAMPLES)
      .map((x) => path.join(EXAMPLES, x))
      .filter((x) => fs.existsSync(path.join(x, 'trenv.json')) && !JSON.parse(fs.readFileSync(path.join(x, 'trenv.json'), 'utf8')).browser)
      .sort();
    const env = { OPENAI_BASE_URL: `http://10.0.2.2:${llm.port}/v1` };
    const arrivals = burstyArrivals(n, 2019);
    const conc = 4;
    // warm-up (page cache, first compile of the shims) so neither pass pays it
    await runPass(d, agents, burstyArrivals(agents.length * 2, 1), false, env, conc);
    process.stderr.write(`container bench: ${n} invocations per pass, ${agents.length} agents, concurrency <= ${conc}\n`);
    const fresh = await runPass(d, agents, arrivals, true, env, conc);
    process.stderr.write('  fresh pass done\n');
    const repurposed = await runPass(d, agents, arrivals, false, env, conc);
    process.stderr.write('  repurposed pass done\n');

    const stat = (s: Sample[], k: keyof Sample) => {
      const v = s.map((x) => x[k] as number).filter((x) => Number.isFinite(x));
      return { p50: percentile(v, 50), p99: percentile(v, 99), mean: mean(v) };
    };
    const systems = { fresh, repurposed };
    const table: Array<Array<string | number>> = [];
    const summary: Record<string, unknown> = {};
    for (const [name, s] of Object.entries(systems)) {
      const st = {
        setup: stat(s, 'setupMs'),
        toHandler: stat(s, 'toHandlerMs'),
        e2e: stat(s, 'e2eMs'),
        failed: s.filter((x) => x.state !== 'succeeded').length,
        repurposed: s.filter((x) => x.start === 'repurposed').length,
      };
      summary[name] = st;
      table.push([name, st.setup.p50, st.setup.p99, st.toHandler.p50, st.toHandler.p99, st.e2e.p50, st.e2e.p99, `${st.repurposed}/${s.length}`, st.failed]);
    }
    const f = summary.fresh as { setup: { p99: number; p50: number }; toHandler: { p99: number }; e2e: { p99: number } };
    const r = summary.repurposed as typeof f;
    const ratios = {
      setupP99: f.setup.p99 / r.setup.p99,
      setupP50: f.setup.p50 / r.setup.p50,
      toHandlerP99: f.toHandler.p99 / r.toHandler.p99,
      e2eP99: f.e2e.p99 / r.e2e.p99,
    };
    const md = [
      `# Container sandboxes: fresh vs repurposed (${n} invocations each, bursty trace, seed 2019)`,
      '',
      mdTable(['system', 'setup P50 ms', 'setup P99 ms', 'to handler P50 ms', 'to handler P99 ms', 'e2e P50 ms', 'e2e P99 ms', 'repurposed', 'not succeeded'], table),
      '',
      `Ratios fresh/repurposed: setup P99 ${ratios.setupP99.toFixed(2)}x, setup P50 ${ratios.setupP50.toFixed(2)}x, to handler P99 ${ratios.toHandlerP99.toFixed(2)}x, e2e P99 ${ratios.e2eP99.toFixed(2)}x`,
      '',
      'In the repurposed pass a burst that needs more sandboxes of a kind than the pool holds still creates fresh ones (the pool grows); the "repurposed" column counts the calls that got a pooled sandbox.',
      '',
      'setup = daemon-side time from taking the request to a ready sandbox (fresh: cgroup + clone + mounts (+ slirp4netns for egress agents) + pivot; repurposed: pool pick + app-dir swap; its cleanup runs after the previous invocation, off the critical path). Runtime start is excluded.',
    ].join('\n');
    writeReport('container', { n, agents: agents.map((a) => path.basename(a)), summary, ratios, samples: systems }, md);
    process.stdout.write(md + '\n\n');
    return [row('container.p99_setup_ratio.fresh_over_repurposed', ratios.setupP99, 'x', 'higher')];
  } finally {
    await d.stop();
    await llm.close();
  }
}
