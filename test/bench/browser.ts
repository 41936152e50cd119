/**
 * Browser part, side by side in one run: N = 1, 4, 8 agents each loading the same local pages
 *   separate - one Chromium per agent (same flags), playwright-core connected straight to it
 *   shared   - one Chromium for all, each agent on its own endpoint of trenv's filtering CDP proxy
 *              (a browser context per agent), playwright-core connected through a TCP forward
 *              to the endpoint socket (what `trenv-enter expose` is inside a sandbox)
 * Reports total memory (PSS of every browser process, pages still open) and page-ready latency
 * (goto to the load event, per page), and the proxy's cost per CDP round trip (Browser.getVersion
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


/** One agent: connect, open a page, load every page; returns the per-page load times. */
async function agent(endpoint: string, base: string): Promise<{ browser: Browser; page: Page; loadMs: number[] }> {
  const browser = await pw.connectOverCDP(endpoint);
  const ctx = browser.contexts()[0];
  const page = await ctx.newPage();
  const loadMs: number[] = [];
  for (const p of PAGES) {
    const t0 = performance.now();
    await page.goto(base + p, { waitUntil: 'load' });
    loadMs.push(performance.now() - t0);
  }
  return { browser, page, loadMs };
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
  loadP50: number;
  loadP99: number;
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
      // separate: one browser per agent
      {
        const browsers = await Promise.all(Array.from({ length: n }, async (_, i) => {
          const c = new Chromium(fs.mkdtempSync(path.join(os.tmpdir(), `trenv-bench-sep-${n}-${i}-`)));
          await c.start();
          return c;
        }));
        const agents = await Promise.all(browsers.map((c) => agent(`http://127.0.0.1:${new URL(c.wsUrl).port}`, site.url)));
        await new Promise((r) => setTimeout(r, 500));
        const pss = browsers.reduce((a, c) => a + c.pssKb(), 0) / 1024;
        const loads = agents.flatMap((a) => a.loadMs);
        results.push({ system: 'separate', n, pssMiB: pss, loadP50: percentile(loads, 50), loadP99: percentile(loads, 99) });
        if (n === 1) rttDirect = await rtt(browsers[0].wsUrl);
        for (const a of agents) await a.browser.close().catch(() => undefined);
        await Promise.all(browsers.map((c) => c.stop()));
      }
      // shared: one browser, an endpoint per agent
      {
        const broker = new BrowserBroker(path.join(work, `shared-${n}`));
        const fwds = await Promise.all(Array.from({ length: n }, async (_, i) => forward(await broker.endpoint(`bench-${i}`, path.join(work, `dl-${n}-${i}`)))));
        const agents = await Promise.all(fwds.map((f) => agent(`http://127.0.0.1:${f.port}`, site.url)));
        await new Promise((r) => setTimeout(r, 500));
        const pss = broker.stats().pssKb / 1024;
        const loads = agents.flatMap((a) => a.loadMs);
        results.push({ system: 'shared', n, pssMiB: pss, loadP50: percentile(loads, 50), loadP99: percentile(loads, 99) });
        if (n === 1) rttProxy = await rtt(`ws+unix://${path.join(work, `shared-${n}`, 'browser', 'ep', 'bench-0.sock')}:/devtools/browser/x`);
        for (const a of agents) await a.browser.close().catch(() => undefined);
        for (const f of fwds) f.close();
        await broker.stop();
      }
      const s = results.slice(-2);
      process.stderr.write(`browser bench N=${n}: separate ${s[0].pssMiB.toFixed(0)} MiB, load P50 ${s[0].loadP50.toFixed(1)} ms; shared ${s[1].pssMiB.toFixed(0)} MiB, load P50 ${s[1].loadP50.toFixed(1)} ms\n`);
    }
  } finally {
    await site.close();
    fs.rmSync(work, { recursive: true, force: true });
  }
  const at = (sys: Result['system'], n: number) => results.find((r) => r.system === sys && r.n === n)!;
  const mem8 = at('shared', 8).pssMiB / at('separate', 8).pssMiB;
  const ready8 = at('shared', 8).loadP50 / at('separate', 8).loadP50;
  const overhead = rttProxy - rttDirect;
  const md = [
    '# Shared browser via the filtering CDP proxy vs one browser per agent',
    '',
    `Each agent: playwright-core connectOverCDP, one page, loads ${PAGES.length} local pages (load event). Memory: PSS of all browser processes with the pages open.`,
    '',
    mdTable(['system', 'agents', 'memory MiB', 'page load P50 ms', 'page load P99 ms'], results.map((r) => [r.system, r.n, r.pssMiB, r.loadP50, r.loadP99])),
    '',
    `N=8: memory shared/separate ${mem8.toFixed(2)}, page load P50 shared/separate ${ready8.toFixed(2)}. CDP round trip (Browser.getVersion, P50): direct ${rttDirect.toFixed(3)} ms, through the proxy ${rttProxy.toFixed(3)} ms (+${overhead.toFixed(3)} ms).`,
  ].join('\n');
  writeReport('browser', { results, rttDirect, rttProxy }, md);
  process.stderr.write(md + '\n');
  return [
    row('browser.mem8_ratio.shared_over_separate', mem8, 'ratio', 'lower'),
    row('browser.ready8_ratio.shared_over_separate', ready8, 'ratio', 'lower'),
    row('browser.proxy_rtt_overhead_ms', overhead, 'ms', 'lower'),
  ];
}


