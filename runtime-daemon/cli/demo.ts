/**
 * `trenv demo`: the main job end to end. Starts the daemon (if needed) and a local OpenAI-compatible
 * test server, invokes every bundled example agent (twice: a fresh sandbox, then a repurposed one),
 * prints results, restore traces and a memory table.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { InvocationDetail, InvocationRecord, Methods } from '../protocol/messages';
import { packageRoot } from '../daemon/state';
import { connect } from './client';
import * as f from './format';
import { daemonStart } from './main';

/** Where the demo's local web pages are served (the browser example's default event names 18089). */
let webOrigin = 'http://127.0.0.1:18089';

function eventFor(dir: string): unknown {
  const p = path.join(dir, '.trenv', 'events', 'default.json');
  return fs.existsSync(p) ? JSON.parse(fs.readFileSync(p, 'utf8').split('http://127.0.0.1:18089').join(webOrigin)) : {};
}

function brief(v: unknown): string {
  const s = JSON.stringify(v);
  return s.length > 90 ? s.slice(0, 87) + '...' : s;
}

/**
 * The agents without network in microVMs: the first call builds the agent's VM template (a boot,
 * under TCG here several seconds), the next ones are clones. Agents that need egress stay in
 * containers (VMs have no network in this version).
 */
async function demoVms(c: Awaited<ReturnType<typeof connect>>, agents: string[], memRows: string[][]): Promise<number> {
  const rows: string[][] = [];
  let failures = 0;
  let shown: InvocationDetail | undefined;
  for (const dir of agents) {
    const m = JSON.parse(fs.readFileSync(path.join(dir, 'trenv.json'), 'utf8')) as { network?: string };
    if (m.network === 'egress') {
      rows.push([path.basename(dir), f.dim('skipped'), '-', '-', '-', f.dim('needs network egress: microVMs have none in this version')]);
      continue;
    }
    let last: InvocationRecord | undefined;
    for (let i = 0; i < 3; i++) {
      let rec: InvocationRecord;
      try {
        rec = await c.rpc.sendRequest(Methods.invoke, { agentDir: dir, event: eventFor(dir), sandbox: 'vm' });
      } catch (e) {
        process.stdout.write(f.dim(`microVMs: ${(e as Error).message}`) + '\n\n');
        return 0; // not set up here: said why, the container part stands
      }
      if (rec.state !== 'succeeded') failures++;
      rows.push([
        rec.agent,
        f.stateColor(rec.state),
        rec.start ?? '-',
        rec.template ? 'VM template' : 'cold boot',
        f.ms(rec.durationMs),
        rec.state === 'succeeded' ? brief(rec.result) : f.red(`${rec.error?.type}: ${rec.error?.message}`),
      ]);
      last = rec;
    }
    if (last && !shown) shown = await c.rpc.sendRequest(Methods.getInvocation, { id: last.id });
  }
  process.stdout.write(f.bold('microVMs (QEMU)') + '\n' + f.table(rows, ['AGENT', 'STATE', 'SANDBOX', 'START', 'TIME', 'RESULT']) + '\n\n');
  if (shown) {
    process.stdout.write(f.bold(`Restore trace: ${shown.record.agent} in a microVM cloned from its template (${f.ms(shown.record.durationMs)})`) + '\n' + f.traceTable(shown.trace) + '\n\n');
    const peak = shown.memory.reduce((acc, s) => (s.pssKb > (acc?.pssKb ?? -1) ? s : acc), undefined as (typeof shown.memory)[number] | undefined);
    memRows.push(f.memoryRow(`${shown.record.agent} in a microVM (QEMU process, peak)`, peak));
  }
  return failures;
}

export async function runDemo(stateDir: string): Promise<number> {
  const root = packageRoot();
  await daemonStart(stateDir, undefined);
  const llm = (await import(pathToFileURL(path.join(root, 'test/fixtures/llm-server.mjs')).href)) as {
    startLlmServer(o: { port?: number }): Promise<{ port: number; close(): Promise<void> | void }>;
  };
  const server = await llm.startLlmServer({ port: 0 });
  process.stdout.write(`local OpenAI-compatible test server on 127.0.0.1:${server.port} (sandboxes reach it as 10.0.2.2:${server.port})\n`);
  // product pages for the browser example (the shared Chromium runs on the host and loads them)
  const webMod = (await import(pathToFileURL(path.join(root, 'test/fixtures/web-server.mjs')).href)) as {
    startWebServer(o: { port?: number }): Promise<{ url: string; close(): Promise<void> | void }>;
  };
  const web = await webMod.startWebServer({ port: 18089 }).catch(() => webMod.startWebServer({ port: 0 }));
  webOrigin = web.url;
  process.stdout.write(`local product pages for the browser example on ${web.url}\n\n`);
  const c = await connect(stateDir);
  let failures = 0;
  try {
    const examplesDir = path.join(root, 'examples');
    const agents = fs
      .readdirSync(examplesDir)
      .map((n) => path.join(examplesDir, n))
      .filter((d) => fs.existsSync(path.join(d, 'trenv.json')))
      .sort();
    // memory templates for every agent whose runtime supports them here
    for (const dir of agents) {
      try {
        const t = await c.rpc.sendRequest(Methods.buildTemplate, { agentDir: dir });
        process.stdout.write(`template ${t.name}: built in ${f.ms(t.buildMs)}, zygote RSS ${f.kb(t.memory?.rssKb)}, preloaded ${t.preload.join(', ') || '-'}\n`);
      } catch (e) {
        process.stdout.write(f.dim(`no template for ${path.basename(dir)}: ${(e as Error).message}`) + '\n');
      }
    }
    process.stdout.write('\n');
    const rows: string[][] = [];
    const details: Array<{ agent: string; fresh: InvocationDetail; repurposed: InvocationDetail }> = [];
    for (const dir of agents) {
      const env = { OPENAI_BASE_URL: `http://10.0.2.2:${server.port}/v1` };
      const runs: InvocationRecord[] = [];
      // the first call of an agent gets a fresh sandbox (the pool has none of its kind yet), the
      // second one a repurposed sandbox
      for (let i = 0; i < 2; i++) {
        const rec = await c.rpc.sendRequest(Methods.invoke, { agentDir: dir, event: eventFor(dir), env });
        runs.push(rec);
        if (rec.state !== 'succeeded') failures++;
        rows.push([
          rec.agent,
          f.stateColor(rec.state),
          rec.start ?? '-',
          rec.template ? `template` : 'cold',
          f.ms(rec.durationMs),
          rec.state === 'succeeded' ? brief(rec.result) : f.red(`${rec.error?.type}: ${rec.error?.message}`),
        ]);
      }
      const [a, b] = await Promise.all(runs.map((r) => c.rpc.sendRequest(Methods.getInvocation, { id: r.id })));
      details.push({ agent: path.basename(dir), fresh: a, repurposed: b });
    }
    process.stdout.write(f.bold('Results') + '\n' + f.table(rows, ['AGENT', 'STATE', 'SANDBOX', 'RUNTIME', 'TIME', 'RESULT']) + '\n\n');

    // the Python fork-zygote path is the one that shares memory: show it when there is one
    const show =
      details.find((d) => d.repurposed.record.template && d.repurposed.record.runtime === 'python') ?? details.find((d) => d.repurposed.record.template) ?? details[0];
    if (show) {
      // the baseline: the same agent in a fresh sandbox with a cold runtime
      const coldRec = await c.rpc.sendRequest(Methods.invoke, { agentDir: show.fresh.record.agentDir, event: eventFor(show.fresh.record.agentDir), fresh: true, template: false });
      // the cleanup spans are appended after the record ends: give them a moment
      await new Promise((r) => setTimeout(r, 100));
      const cold = await c.rpc.sendRequest(Methods.getInvocation, { id: coldRec.id });
      const rep = await c.rpc.sendRequest(Methods.getInvocation, { id: show.repurposed.record.id });
      process.stdout.write(f.bold(`Restore trace: ${show.agent}, fresh sandbox + cold runtime (${f.ms(cold.record.durationMs)})`) + '\n' + f.traceTable(cold.trace) + '\n\n');
      process.stdout.write(
        f.bold(`Restore trace: ${show.agent}, repurposed sandbox + ${rep.record.template ? 'memory template' : 'cold runtime'} (${f.ms(rep.record.durationMs)})`) +
          '\n' +
          f.traceTable(rep.trace) +
          '\n\n',
      );
    }

    const memRows = details.map((d) => {
      const peak = d.repurposed.memory.reduce((m, s) => (s.pssKb > (m?.pssKb ?? -1) ? s : m), undefined as (typeof d.repurposed.memory)[number] | undefined);
      return f.memoryRow(`${d.agent} (peak while running)`, peak);
    });
    failures += await demoVms(c, agents, memRows);
    const stats = await c.rpc.sendRequest(Methods.stats);
    for (const t of stats.templates.filter((x) => x.live && x.kind === 'zygote')) memRows.push(f.memoryRow(`template ${t.name} (zygote, shared by its instances)`, t.memory));
    for (const t of stats.templates.filter((x) => x.live && x.kind === 'vm')) memRows.push(f.memoryRow(`VM template ${t.name} (warm clones, QEMU PSS)`, t.memory));
    memRows.push(f.memoryRow(`${stats.sandboxes.length} pooled sandboxes and VMs now (idle)`, stats.total));
    process.stdout.write(f.bold('Memory') + '\n' + f.table(memRows, f.MEMORY_HEADER) + '\n');
  } finally {
    c.close();
    await server.close();
    await web.close();
  }
  if (failures) process.stdout.write(f.red(`\n${failures} invocation(s) did not succeed`) + '\n');
  return failures ? 1 : 0;
}
