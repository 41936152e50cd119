/**
 * Browser part, side by side in one run: N = 1, 4, 8 agents each loading the same local pages
 *   separate - one Chromium per agent (same flags), playwright-core connected straight to it
 *   shared   - one Chromium for all, each agent on its own endpoint of trenv's filtering CDP proxy
 *              (a browser context per agent), playwright-core connected through a TCP forward
 *              to the endpoint socket (what `trenv-enter expose` is inside a sandbox)
 * Reports total memory (PSS of every browser process, pages still open), page-ready latency (from
 * wanting a browser -- launching one, or asking for an endpoint on the shared one -- to the first
 * page's load event) and per-page load time once connected, and the proxy's cost per CDP round trip (Browser.getVersion
 * straight vs through the proxy).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { chromium as pw, Browser, Page } from 'playwright-core';
import WebSocket from 'ws';
import { BrowserBroker } from '../../runtime-daemon/browser/broker';
import { Chromium } from '../../runtime-daemon/browser/chromium';
import { forward, ROOT } from '../integration/harness';
import { mdTable, MetricRow, percentile, row, writeReport } from './results';

const NS = [1, 4, 8];
const PAGES = ['/catalog/1', '/catalog/2', '/catalog/3'];


/**
 * One agent: get a browser (`getEndpoint`: launch its own Chromium, or be given its endpoint on the
 * shared one), connect, open a page, load every page. `readyMs`: from wanting a browser to the
 * first page's load event (what an agent waits for); `loadMs`: goto to load event, per page.
 */
async function agent(getEndpoint: () => Promise<string>, base: string): Promise<{ browser: Browser; page: Page; loadMs: number[]; readyMs: number }> {
  const t0 = performance.now();
  const browser = await pw.connectOverCDP(await getEndpoint());
  const ctx = browser.contexts()[0];
  const page = await ctx.newPage();
  const loadMs: number[] = [];
  let readyMs = 0;
  for (const p of PAGES) {
    const t1 = performance.now();
    await page.goto(base + p, { waitUntil: 'load' });
    loadMs.push(performance.now() - t1);
    if (!readyMs) readyMs = performance.now() - t0;
  }
  return { browser, page, loadMs, readyMs };
}

/** Mean round trip of Browser.getVersion over a raw CDP websocket. */
async function rtt(url: string, n = 300): Promise<number> {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  await new Promise((r, j) => {
    ws.once('open', r);
    ws.once('error', j);
  });
  const times: number[] = [];
  for (let i = 1; i <= n; i++) {
    const t0 = performance.now();
    await new Promise<void>((resolve) => {
      ws.once('message', () => resolve());
      ws.send(JSON.stringify({ id: i, method: 'Browser.getVersion' }));
    });
    times.push(performance.now() - t0);
  }
  ws.close();
  return percentile(times.slice(20), 50); // after warm-up
}

interface Result {
  system: 'separate' | 'shared';
  n: number;
  pssMiB: number;
  readyP50: number;
  readyP99: number;
  loadP50: number;
  loadP99: number;
}

function summary(system: Result['system'], n: number, pssMiB: number, agents: Array<{ loadMs: number[]; readyMs: number }>): Result {
  const loads = agents.flatMap((a) => a.loadMs);
  const ready = agents.map((a) => a.readyMs);
  return { system, n, pssMiB, readyP50: percentile(ready, 50), readyP99: percentile(ready, 99), loadP50: percentile(loads, 50), loadP99: percentile(loads, 99) };
}

export async function benchBrowser(): Promise<MetricRow[]> {
  const web = (await import(path.join(ROOT, 'test/fixtures/web-server.mjs'))) as { startWebServer(o: { port: number }): Promise<{ url: string; close(): Promise<void> }> };
  const site = await web.startWebServer({ port: 0 });
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-bench-browser-'));
  const results: Result[] = [];
  let rttDirect = 0;
  let rttProxy = 0;
  try {
    for (const n of NS) {
      // separate: one browser per agent, launched by the agent (nothing runs before)
      {
        const browsers: Chromium[] = [];
        const agents = await Promise.all(Array.from({ length: n }, (_, i) => agent(async () => {
          const c = new Chromium(fs.mkdtempSync(path.join(os.tmpdir(), `trenv-bench-sep-${n}-${i}-`)));
          browsers.push(c);
          await c.start();
          return `http://127.0.0.1:${new URL(c.wsUrl).port}`;
        }, site.url)));
        await new Promise((r) => setTimeout(r, 500));
        const pss = browsers.reduce((a, c) => a + c.pssKb(), 0) / 1024;
        results.push(summary('separate', n, pss, agents));
        if (n === 1) rttDirect = await rtt(browsers[0].wsUrl);
        for (const a of agents) await a.browser.close().catch(() => undefined);
        await Promise.all(browsers.map((c) => c.stop()));
      }
      // shared: one browser (started by the first agent's request: nothing runs before), an endpoint per agent
      {
        const broker = new BrowserBroker(path.join(work, `shared-${n}`));
        const fwds: Array<{ port: number; close(): void }> = [];
        const agents = await Promise.all(Array.from({ length: n }, (_, i) => agent(async () => {
          const f = await forward(await broker.endpoint(`bench-${i}`, path.join(work, `dl-${n}-${i}`)));
          fwds.push(f);
          return `http://127.0.0.1:${f.port}`;
        }, site.url)));
        await new Promise((r) => setTimeout(r, 500));
        const pss = broker.stats().pssKb / 1024;
        results.push(summary('shared', n, pss, agents));
        if (n === 1) rttProxy = await rtt(`ws+unix://${path.join(work, `shared-${n}`, 'browser', 'ep', 'bench-0.sock')}:/devtools/browser/x`);
        for (const a of agents) await a.browser.close().catch(() => undefined);
        for (const f of fwds) f.close();
        await broker.stop();
      }
      const s = results.slice(-2);
      process.stderr.write(`browser bench N=${n}: separate ${s[0].pssMiB.toFixed(0)} MiB, ready P50 ${s[0].readyP50.toFixed(0)} ms, load P50 ${s[0].loadP50.toFixed(1)} ms; shared ${s[1].pssMiB.toFixed(0)} MiB, ready P50 ${s[1].readyP50.toFixed(0)} ms, load P50 ${s[1].loadP50.toFixed(1)} ms\n`);
    }
  } finally {
    await site.close();
    fs.rmSync(work, { recursive: true, force: true });
  }
  const at = (sys: Result['system'], n: number) => results.find((r) => r.system === sys && r.n === n)!;
  const mem8 = at('shared', 8).pssMiB / at('separate', 8).pssMiB;
  const ready8 = at('shared', 8).readyP50 / at('separate', 8).readyP50;
  const load8 = at('shared', 8).loadP50 / at('separate', 8).loadP50;
  const overhead = rttProxy - rttDirect;
  const md = [
    '# Shared browser via the filtering CDP proxy vs one browser per agent',
    '',
    `Each of N agents at once: gets a browser (separate: launches its own Chromium; shared: asks for its endpoint, the first request starts the one browser: nothing runs before either), connects with playwright-core connectOverCDP, opens a page, loads ${PAGES.length} local pages (load event).`,
    'Page ready: from wanting a browser to the first page\'s load event. Page load: goto to load event, per page, once connected. Memory: PSS of all browser processes with the pages open.',
    '',
    mdTable(['system', 'agents', 'memory MiB', 'page ready P50 ms', 'page ready P99 ms', 'page load P50 ms', 'page load P99 ms'], results.map((r) => [r.system, r.n, r.pssMiB, r.readyP50, r.readyP99, r.loadP50, r.loadP99])),
    '',
    `N=8: memory shared/separate ${mem8.toFixed(2)}, page ready P50 shared/separate ${ready8.toFixed(2)} (page load alone, once connected: ${load8.toFixed(2)}). CDP round trip (Browser.getVersion, P50): direct ${rttDirect.toFixed(3)} ms, through the proxy ${rttProxy.toFixed(3)} ms (+${overhead.toFixed(3)} ms).`,
  ].join('\n');
  writeReport('browser', { results, rttDirect, rttProxy }, md);
  process.stderr.write(md + '\n');
  return [
    row('browser.mem8_ratio.shared_over_separate', mem8, 'ratio', 'lower'),
    row('browser.ready8_ratio.shared_over_separate', ready8, 'ratio', 'lower'),
    row('browser.proxy_rtt_overhead_ms', overhead, 'ms', 'lower'),
  ];
}


