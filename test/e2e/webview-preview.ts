/**
 * Renders each bundled webview (dist/webview/<view>.js|css) in headless Chromium inside a host page
 * that mimics a VS Code webview: the CSP and HTML of extension/webviews/panels.ts (same function),
 * an acquireVsCodeApi stub that records posted messages and keeps setState across reloads, and the
 * Dark+ theme variables. Feeds the data captured from a real daemon (test/fixtures/webview-sample.json)
 * and asserts on the DOM; screenshots go to test/artifacts/webview-*.png.
 *
 * The test builds the bundles itself (webview/build.mjs buildWebviews, unminified) before it starts.
 * Needs /usr/bin/chromium (Debian package `chromium`); skipped when it is missing.
 *
 *   npx tsc -p . && node --test out/test/e2e/webview-preview.js
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser, type Page } from 'playwright-core';
import { renderWebviewHtml } from '../../webview/shared/html';
import type { InvocationDetail, MemoryBaseline, MemorySample, ToWebview, ViewName } from '../../webview/shared/messages';

// Browser globals used inside page.evaluate callbacks (they run in the page; the project compiles
// without the DOM lib, so they are declared here, loosely, for this file only).
/* eslint-disable @typescript-eslint/no-explicit-any */
declare const window: any;
declare const document: any;
declare const requestAnimationFrame: (cb: (t: number) => void) => void;
declare const getComputedStyle: (el: any) => any;
type HTMLCanvasElement = any;

const ROOT = path.resolve(__dirname, '..', '..', '..');
const DIST = path.join(ROOT, 'dist', 'webview');
const ARTIFACTS = path.join(ROOT, 'test', 'artifacts');
const CHROMIUM = '/usr/bin/chromium';
const NONCE = 'dGVzdC1ub25jZS1wcmV2aWV3';

interface Fixture {
  detail: InvocationDetail;
  memory: { instances: Array<{ instanceId: string; label: string; samples: MemorySample[] }>; baseline: MemoryBaseline };
}
const fixture = JSON.parse(fs.readFileSync(path.join(ROOT, 'test', 'fixtures', 'webview-sample.json'), 'utf8')) as Fixture;

/** Dark+ (VS Code's default dark theme) values of the variables the webviews use. */
const DARK_PLUS: Record<string, string> = {
  'font-family': "-apple-system, BlinkMacSystemFont, 'Segoe WPC', 'Segoe UI', 'Ubuntu', 'Droid Sans', sans-serif",
  'font-size': '13px',
  'editor-font-family': "'Droid Sans Mono', 'monospace', monospace",
  'editor-font-size': '14px',
  foreground: '#cccccc',
  descriptionForeground: '#ccccccb3',
  errorForeground: '#f48771',
  focusBorder: '#007fd4',
  'editor-background': '#1e1e1e',
  'editor-foreground': '#d4d4d4',
  'editorWidget-background': '#252526',
  'editorWidget-border': '#454545',
  'editorWarning-foreground': '#cca700',
  'editor-findMatchBackground': '#515c6a',
  'editor-findMatchHighlightBackground': '#ea5c0055',
  'editor-rangeHighlightBackground': '#ffffff0b',
  'panel-border': '#80808059',
  'widget-shadow': '#0000005c',
  'button-background': '#0e639c',
  'button-foreground': '#ffffff',
  'button-hoverBackground': '#1177bb',
  'button-secondaryBackground': '#3a3d41',
  'button-secondaryForeground': '#ffffff',
  'button-secondaryHoverBackground': '#45494e',
  'input-background': '#3c3c3c',
  'input-foreground': '#cccccc',
  'input-placeholderForeground': '#a6a6a6',
  'list-hoverBackground': '#2a2d2e',
  'list-activeSelectionBackground': '#04395e',
  'list-activeSelectionForeground': '#ffffff',
  'badge-background': '#4d4d4d',
  'badge-foreground': '#ffffff',
  'charts-foreground': '#cccccc',
  'charts-lines': '#cccccc80',
  'charts-red': '#f14c4c',
  'charts-blue': '#3794ff',
  'charts-yellow': '#cca700',
  'charts-orange': '#d18616',
  'charts-green': '#89d185',
  'charts-purple': '#b180d7',
};

/** The VS Code side of a webview document: the API stub and the theme, both nonce'd like VS Code's own. */
function hostHead(): string {
  const vars = Object.entries(DARK_PLUS)
    .map(([k, v]) => `--vscode-${k}: ${v};`)
    .join(' ');
  return `<style nonce="${NONCE}">html { ${vars} }</style>
<script nonce="${NONCE}">
(() => {
  window.__posted = [];
  window.__csp = [];
  document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
  let acquired = false;
  let state = JSON.parse(sessionStorage.getItem('vscode-state') || 'null');
  window.acquireVsCodeApi = () => {
    if (acquired) throw new Error('An instance of the VS Code API has already been acquired');
    acquired = true;
    return Object.freeze({
      postMessage: (m) => window.__posted.push(JSON.parse(JSON.stringify(m))),
      getState: () => state,
      setState: (s) => { state = s; sessionStorage.setItem('vscode-state', JSON.stringify(s)); return s; },
    });
  };
})();
</script>`;
}

let server: http.Server;
let origin = '';
let browser: Browser | undefined;

function startServer(): Promise<void> {
  server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const page = /^\/(logs|memory|trace|browser)\.html$/.exec(url.pathname);
    if (page) {
      const view = page[1] as ViewName;
      const html = renderWebviewHtml({ view, title: view, cspSource: origin, nonce: NONCE, scriptUri: `${origin}/res/${view}.js`, styleUri: `${origin}/res/${view}.css` });
      // VS Code also puts its theme class on <body>
      const doc = html.replace(/(<meta http-equiv="Content-Security-Policy"[^>]*>)/, `$1\n${hostHead()}`).replace('<body ', '<body class="vscode-dark" data-vscode-theme-kind="vscode-dark" ');
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(doc);
      return;
    }
    const file = /^\/res\/([a-z]+\.(?:js|css|js\.map|css\.map))$/.exec(url.pathname);
    if (file && fs.existsSync(path.join(DIST, file[1]!))) {
      const type = file[1]!.endsWith('.js') ? 'text/javascript' : file[1]!.endsWith('.css') ? 'text/css' : 'application/json';
      res.writeHead(200, { 'content-type': type }).end(fs.readFileSync(path.join(DIST, file[1]!)));
      return;
    }
    res.writeHead(url.pathname === '/favicon.ico' ? 204 : 404).end();
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => {
      origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      resolve();
    }),
  );
}

interface Opened {
  page: Page;
  errors: string[];
}

async function open(view: ViewName, width = 1100, height = 680): Promise<Opened> {
  const page = await browser!.newPage({ viewport: { width, height }, deviceScaleFactor: 1 });
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  await page.goto(`${origin}/${view}.html`);
  await waitPosted(page, 'ready');
  return { page, errors };
}

async function send<V extends ViewName>(page: Page, _view: V, msg: ToWebview<V>): Promise<void> {
  await page.evaluate((m) => window.postMessage(m, '*'), msg as unknown);
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
}

type Posted = { type: string; [k: string]: unknown };
const posted = (page: Page): Promise<Posted[]> => page.evaluate(() => (window as unknown as { __posted: Posted[] }).__posted);

async function waitPosted(page: Page, type: string): Promise<Posted> {
  await page.waitForFunction((t) => (window as unknown as { __posted: Posted[] }).__posted.some((m) => m.type === t), type);
  return (await posted(page)).filter((m) => m.type === type).pop()!;
}

async function checkClean(o: Opened): Promise<void> {
  const csp = await o.page.evaluate(() => (window as unknown as { __csp: string[] }).__csp);
  assert.deepEqual(csp, [], 'no CSP violations');
  assert.deepEqual(o.errors, [], 'no page errors');
}

const shot = (page: Page, name: string) => page.screenshot({ path: path.join(ARTIFACTS, `webview-${name}.png`) });
const count = (page: Page, sel: string) => page.locator(sel).count();

const skip = fs.existsSync(CHROMIUM) ? false : `${CHROMIUM} not found (apt-get install chromium)`;

describe('webviews in a browser', { skip }, () => {
  before(async () => {
    const { buildWebviews } = (await import(pathToFileURL(path.join(ROOT, 'webview', 'build.mjs')).href)) as {
      buildWebviews(o: { watch?: boolean; minify?: boolean }): Promise<unknown>;
    };
    await buildWebviews({ watch: false, minify: false });
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    await startServer();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  after(async () => {
    await browser?.close();
    server?.close();
  });

  test('logs: lines, filters, search, tail following, state across reloads, reveal', async () => {
    const o = await open('logs');
    const { page } = o;
    const d = fixture.detail;
    assert.ok(await page.locator('.empty').isVisible(), 'empty state before init');
    await send(page, 'logs', { type: 'init', detail: d });
    assert.equal(await count(page, '.line'), d.logs.length);
    assert.match(await page.locator('.title').innerText(), new RegExp(d.record.agent));
    assert.equal(await page.locator('.line.level-error .tag').first().innerText(), 'ERROR');

    // level filter: debug off
    const debug = d.logs.filter((l) => l.level === 'debug').length;
    assert.ok(debug > 0, 'the fixture has a debug line');
    await page.click('.toggle.level-debug');
    assert.equal(await count(page, '.line'), d.logs.length - debug);
    assert.equal(await page.getAttribute('.toggle.level-debug', 'aria-pressed'), 'false');
    // stream filter: stdout off too
    const stdout = d.logs.filter((l) => l.stream === 'stdout').length;
    await page.click('.toggle.stream-stdout');
    assert.equal(await count(page, '.line'), d.logs.length - debug - stdout);
    const filterMsg = await waitPosted(page, 'filter');
    assert.deepEqual((filterMsg.filter as { streams: string[] }).streams.includes('stdout'), false);
    await page.click('.toggle.stream-stdout');

    // search highlights matches (in text and fields)
    await page.fill('.search', 'item');
    await page.waitForFunction(() => document.querySelectorAll('mark').length > 0);
    const marks = await count(page, 'mark');
    assert.ok(marks >= 6, `matches highlighted (${marks})`);
    assert.match(await page.locator('.match-count').innerText(), /\d+ match/);

    // live lines follow the tail
    const base = d.logs[d.logs.length - 1]!;
    const live = (i: number) => ({
      ...base,
      seq: 100 + i,
      t: base.t + 50 * (i + 1),
      stream: 'log' as const,
      level: (i % 7 === 3 ? 'warn' : 'info') as 'warn' | 'info',
      text: i % 7 === 3 ? 'tool call slow, retrying' : 'processed item',
      fields: { item: 10 + i, bytes: (10 + i) * 3145728 },
    });
    for (let i = 0; i < 40; i++) await page.evaluate((m) => window.postMessage(m, '*'), { type: 'log', line: live(i) });
    await page.waitForFunction(() => document.querySelectorAll('.line').length > 40);
    const atEnd = () => page.evaluate(() => {
      const l = document.querySelector('.lines')!;
      return l.scrollTop + l.clientHeight >= l.scrollHeight - 4;
    });
    assert.ok(await atEnd(), 'follows the tail');
    assert.ok(await page.locator('.jump').isHidden());
    // scrolled up: new lines do not move the view, "jump to latest" shows
    await page.locator('.lines').evaluate((el) => el.scrollTo({ top: 0 }));
    await page.locator('.lines').dispatchEvent('scroll');
    await send(page, 'logs', { type: 'log', line: live(40) });
    assert.equal(await page.locator('.lines').evaluate((el) => el.scrollTop), 0);
    assert.ok(await page.locator('.jump').isVisible(), 'jump to latest shown');
    await shot(page, 'logs');
    await page.click('.jump');
    assert.ok(await atEnd(), 'jumped to the end');

    // reload: filters, search and lines come back from getState before any init
    await page.waitForTimeout(400); // the state is saved at most every 300 ms
    await page.reload();
    await waitPosted(page, 'ready');
    assert.equal(await page.getAttribute('.toggle.level-debug', 'aria-pressed'), 'false');
    assert.equal(await page.inputValue('.search'), 'item');
    assert.equal(await count(page, '.line'), d.logs.length - debug + 41);

    // the trace view asks for a line: scrolled to and marked
    const target = d.logs[6]!;
    await send(page, 'logs', { type: 'reveal', invocationId: d.record.id, seq: target.seq });
    assert.equal(await page.getAttribute('.line.revealed', 'data-seq'), String(target.seq));
    assert.ok(await page.locator('.line.revealed').isVisible());
    assert.ok(await page.locator('.jump').isVisible(), 'not following after a reveal');
    await shot(page, 'logs-reveal');
    await checkClean(o);
    await page.close();
  });

  test('memory: charts per instance and in total, baseline, live samples, resize, empty state', async () => {
    const empty = await open('memory', 700, 300);
    await send(empty.page, 'memory', { type: 'init', snapshot: { instances: [], baselines: [] } });
    assert.ok(await empty.page.locator('.empty').isVisible());
    await shot(empty.page, 'memory-empty');
    await checkClean(empty);
    await empty.page.close();

    const o = await open('memory', 1100, 900);
    const { page } = o;
    const m = fixture.memory;
    await send(page, 'memory', { type: 'init', snapshot: { instances: m.instances, baselines: [m.baseline] } });
    await page.waitForSelector('.card.total canvas');
    assert.equal(await count(page, '.card.instance'), m.instances.length);
    assert.equal(await count(page, 'canvas'), m.instances.length + 1);
    const legend = await page.locator('.card.total .u-legend').innerText();
    for (const s of ['RSS', 'PSS', 'Shared', 'Private', m.baseline.label]) assert.ok(legend.includes(s), `legend has ${s}`);
    assert.match(await page.locator('.summary').innerText(), new RegExp(`${m.baseline.label}, per sandbox`));

    const painted = () =>
      page.evaluate(() =>
        [...document.querySelectorAll('canvas')].map((c) => {
          const px = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data;
          let n = 0;
          for (let i = 3; i < px.length; i += 4) if (px[i]! > 0) n++;
          return n;
        }),
      );
    for (const n of await painted()) assert.ok(n > 500, `chart canvas has drawn pixels (${n})`);

    // a live sample of a new instance and a second baseline
    const last = m.instances[0]!.samples[m.instances[0]!.samples.length - 1]!;
    await send(page, 'memory', { type: 'memory', instanceId: 'sb-live', label: 'wv-sample · sb-live', sample: { ...last, t: last.t + 500, pssKb: 40960, rssKb: 61440 } });
    await send(page, 'memory', { type: 'baseline', label: 'CRIU copy', sample: { ...m.baseline.sample, pssKb: 30000, rssKb: 36000, sharedKb: 6000, privateKb: 30000 } });
    await page.waitForFunction(() => document.querySelectorAll('.card.instance').length === 4);
    assert.match(await page.locator('.card.total .u-legend').innerText(), /CRIU copy/);
    assert.match(await page.locator('.card.instance').first().innerText(), /sb-live/);
    await shot(page, 'memory');

    // resizes with the panel
    const before = await page.locator('.card.total canvas').evaluate((c) => (c as HTMLCanvasElement).width);
    await page.setViewportSize({ width: 760, height: 900 });
    await page.waitForFunction((w) => (document.querySelector('.card.total canvas') as HTMLCanvasElement).width < w, before);
    for (const n of await painted()) assert.ok(n > 500, 'still drawn after the resize');
    await shot(page, 'memory-narrow');
    await checkClean(o);
    await page.close();
  });

  test('trace: timeline, stepping with keys and buttons, detail panel, openLogs', async () => {
    const o = await open('trace', 1280, 720);
    const { page } = o;
    const d = fixture.detail;
    await send(page, 'trace', { type: 'init', detail: d });
    assert.equal(await count(page, '.row'), d.trace.length);
    const sorted = [...d.trace].sort((a, b) => (BigInt(a.startNs) < BigInt(b.startNs) ? -1 : BigInt(a.startNs) > BigInt(b.startNs) ? 1 : BigInt(b.endNs) > BigInt(a.endNs) ? 1 : -1));
    const current = async () => ({
      index: Number(await page.getAttribute('.row.current', 'data-index')),
      name: await page.locator('.step-name').innerText(),
    });
    assert.deepEqual(await current(), { index: 0, name: sorted[0]!.name });
    // nested spans are indented under their parent (sandbox.ready contains pool.pick ...)
    const pads = await page.locator('.row .name').evaluateAll((els) => els.map((e) => parseFloat(getComputedStyle(e).paddingLeft)));
    assert.ok(pads[1]! > pads[0]!, 'the second span is nested in the first');

    await page.keyboard.press('ArrowRight');
    await page.keyboard.press('ArrowRight');
    assert.deepEqual(await current(), { index: 2, name: sorted[2]!.name });
    await page.keyboard.press('k');
    assert.equal((await current()).index, 1);
    await page.keyboard.press('j');
    await page.keyboard.press('j');
    assert.equal((await current()).index, 3);
    await page.keyboard.press('ArrowLeft');
    assert.equal((await current()).index, 2);
    await page.keyboard.press('End');
    assert.deepEqual(await current(), { index: d.trace.length - 1, name: sorted[d.trace.length - 1]!.name });
    assert.ok(await page.locator('button[aria-label="Next step"]').isDisabled());
    await page.keyboard.press('Home');
    assert.equal((await current()).index, 0);
    await page.click('button[aria-label="Next step"]');
    assert.equal((await current()).index, 1);
    const step = await waitPosted(page, 'step');
    assert.equal(step.index, 1);

    // a step with memory: the detail panel shows duration, offset, delta, state, attrs
    const idx = sorted.findIndex((s) => s.name === 'runtime.load');
    await page.click(`.row[data-index="${idx}"]`);
    const detail = await page.locator('.detail').innerText();
    const span = sorted[idx]!;
    for (const s of ['runtime.load', 'Duration', 'Offset', 'Memory Δ', 'PSS +', 'RSS +', 'Processes', 'App dir', span.state!.appDir!, 'Attributes', 'runtime', 'node']) {
      assert.ok(detail.toLowerCase().includes(s.toLowerCase()), `detail shows ${s}`);
    }
    await shot(page, 'trace');

    // "show logs at this step": the first log line at/after the step's end, on the log clock
    const hs = sorted.findIndex((s) => s.name === 'handler.start');
    await page.click(`.row[data-index="${hs}"]`);
    await page.click('.open-logs');
    const req = await waitPosted(page, 'openLogs');
    const offset = Math.min(...d.trace.filter((s) => s.state?.memory?.t).map((s) => s.state!.memory!.t - Number(s.endNs) / 1e6));
    const at = Number(sorted[hs]!.endNs) / 1e6 + offset;
    const expected = [...d.logs].filter((l) => l.t >= at).sort((a, b) => a.t - b.t)[0];
    assert.equal(req.invocationId, d.record.id);
    assert.equal(req.seq, expected?.seq);
    assert.deepEqual(req.mapping, { source: 'span-memory', offsetMs: offset });
    assert.ok(Math.abs((req.atEpochMs as number) - at) < 1e-6);

    // narrow panel: the detail goes below the timeline
    await page.setViewportSize({ width: 720, height: 760 });
    await shot(page, 'trace-narrow');
    await checkClean(o);
    await page.close();
  });
  test('browser: live frames of an agent page with its title and URL; the end of the view', async () => {
    // a real frame: a page rendered by this chromium, as JPEG (what Page.screencastFrame carries)
    const src = await browser!.newPage({ viewport: { width: 800, height: 500 } });
    await src.setContent('<title>Catalogue page 1</title><body style="font-family:sans-serif"><h1>Kitchen catalogue, page 1</h1><table border=1><tr><td>Kettle</td><td>€24.90</td><td>12</td></tr><tr><td>Mug</td><td>€6.25</td><td>40</td></tr></table></body>');
    const jpeg = (await src.screenshot({ type: 'jpeg', quality: 70 })).toString('base64');
    await src.close();
    const o = await open('browser', 1000, 640);
    const { page } = o;
    assert.match(await page.locator('.empty').innerText(), /Waiting for the agent/);
    await send(page, 'browser', { type: 'init', invocationId: 'inv-1', agent: 'node-web-extract' });
    await send(page, 'browser', { type: 'frame', data: jpeg, url: 'http://127.0.0.1:18089/catalog/1', title: 'Catalogue page 1', width: 800, height: 500 });
    await page.waitForFunction(() => (document.querySelector('.stage img') as unknown as { complete: boolean } | null)?.complete === true);
    assert.equal(await page.locator('.title').innerText(), 'Catalogue page 1');
    assert.equal(await page.locator('.url').innerText(), 'http://127.0.0.1:18089/catalog/1');
    assert.equal(await page.locator('.badge').innerText(), 'live');
    const natural = await page.locator('.stage img').evaluate((el) => (el as unknown as { naturalWidth: number }).naturalWidth);
    assert.equal(natural, 800, 'the frame decoded');
    await shot(page, 'browser');
    await send(page, 'browser', { type: 'ended', reason: 'the invocation ended' });
    assert.equal(await page.locator('.badge').innerText(), 'ended');
    assert.match(await page.locator('footer').innerText(), /the invocation ended/);
    await checkClean(o);
  });
});
