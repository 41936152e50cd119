/**
 * The shared browser with real Chromium: the example agent end to end, the isolation suite run
 * against two agents' endpoints (raw CDP), playwright-core and puppeteer-core through the proxy,
 * recovery after Chromium is killed, and no contexts or targets left after 100 sandboxes.
 */
import { after, before, test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import WebSocket from 'ws';
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';
import { EXAMPLES, forward, ROOT, startDaemon, TestDaemon, waitFor } from './harness';
import { BrowserFrame, InvocationDetail, InvocationRecord, Methods, Notifications } from '../../runtime-daemon/protocol/messages';

const HOLDER = path.join(ROOT, 'test/fixtures/agents/browser-holder');
let d: TestDaemon;
let web: { url: string; close(): Promise<void> };

before(async () => {
  d = await startDaemon();
  const mod = (await import(path.join(ROOT, 'test/fixtures/web-server.mjs'))) as { startWebServer(o: { port: number }): Promise<typeof web> };
  web = await mod.startWebServer({ port: 0 });
});

after(async () => {
  await d?.stop();
  await web?.close();
});

/** Raw CDP over a sandbox's endpoint socket. */
class Cdp {
  private seq = 0;
  private readonly pending = new Map<number, (m: { result?: Record<string, unknown>; error?: { message: string } }) => void>();
  readonly events: Array<{ method: string; params: Record<string, unknown>; sessionId?: string }> = [];
  closed: { code: number; reason: string } | undefined;
  constructor(readonly ws: WebSocket) {
    ws.on('message', (data) => {
      const m = JSON.parse(data.toString());
      if (typeof m.id === 'number') this.pending.get(m.id)?.(m);
      else this.events.push(m);
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      // a closed connection answers nothing: fail what waits instead of hanging the suite
      for (const r of this.pending.values()) r({ error: { message: `connection closed (${code} ${reason.toString()})` } });
      this.pending.clear();
    });
  }
  static open(socketPath: string): Promise<Cdp> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws+unix://${socketPath}:/devtools/browser/x`);
      ws.once('open', () => resolve(new Cdp(ws)));
      ws.once('error', reject);
    });
  }
  send(method: string, params: Record<string, unknown> = {}, sessionId?: string) {
    const id = ++this.seq;
    return new Promise<{ result?: Record<string, unknown>; error?: { message: string } }>((resolve) => {
      if (this.closed) return resolve({ error: { message: 'connection closed' } });
      this.pending.set(id, resolve);
      this.ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });
  }
  async ok(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<Record<string, unknown>> {
    const r = await this.send(method, params, sessionId);
    if (r.error) throw new Error(`${method}: ${r.error.message}`);
    return r.result!;
  }
}

/** Starts a holder agent and waits until it runs; its sandbox's endpoint socket and the pending record. */
async function hold(seconds: number): Promise<{ socket: string; done: Promise<InvocationRecord>; sandboxId: string; id: string }> {
  const done = d.invoke({ agentDir: HOLDER, event: { seconds, fetch: true } });
  for (let i = 0; i < 600; i++) {
    const list = await d.client.rpc.sendRequest(Methods.listInvocations, { limit: 5 });
    for (const r of list.filter((x) => x.state === 'running' && x.agent === 'browser-holder' && !taken.has(x.id))) {
      const det: InvocationDetail = await d.client.rpc.sendRequest(Methods.getInvocation, { id: r.id });
      if (det.logs.some((g) => g.text === 'holding')) {
        taken.add(r.id);
        return { socket: path.join(d.stateDir, 'browser', 'ep', `${det.record.sandboxId}.sock`), done, sandboxId: det.record.sandboxId!, id: r.id };
      }
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('no holder agent ran within 30 s');
}
const taken = new Set<string>();

/** The browser's own view (straight to Chromium, as root): contexts and targets besides the default ones. */
async function census(): Promise<{ contexts: number; targets: number }> {
  const st = await d.client.rpc.sendRequest(Methods.stats);
  if (!st.browser?.running) return { contexts: 0, targets: 0 };
  const prof = (JSON.parse(fs.readFileSync(path.join(d.stateDir, 'browser', 'pid'), 'utf8')) as { profile: string }).profile;
  const [port, wsPath] = fs.readFileSync(path.join(prof, 'DevToolsActivePort'), 'utf8').trim().split('\n');
  const ws = new WebSocket(`ws://127.0.0.1:${port}${wsPath}`);
  await new Promise((r) => ws.once('open', r));
  const c = new Cdp(ws);
  const ctxs = (await c.ok('Target.getBrowserContexts')).browserContextIds as string[];
  const targets = ((await c.ok('Target.getTargets')).targetInfos as Array<{ browserContextId?: string }>).filter((t) => t.browserContextId && ctxs.includes(t.browserContextId));
  ws.close();
  return { contexts: ctxs.length, targets: targets.length };
}

test('the example agent reads local pages through the shared browser and returns structured data', async () => {
  const r = await d.invoke({ agentDir: path.join(EXAMPLES, 'node-web-extract'), event: { urls: [`${web.url}/catalog/1`, `${web.url}/catalog/2`] } });
  assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
  const res = r.result as { pages: Array<{ title: string; products: unknown[]; next: string | null }>; totals: { products: number; inStock: number; value: number } };
  assert.deepEqual(res.pages.map((p) => p.title), ['Catalogue page 1', 'Catalogue page 2']);
  assert.deepEqual(res.totals, { products: 5, inStock: 4, value: 24.9 * 12 + 6.25 * 40 + 59 * 3 + 18.75 * 9 });
  assert.equal(res.pages[0].next, `${web.url}/catalog/2`);
  const det = await d.client.rpc.sendRequest(Methods.getInvocation, { id: r.id });
  assert.ok(det.trace.some((s) => s.name === 'browser.endpoint'));
  const st = await d.client.rpc.sendRequest(Methods.stats);
  assert.ok(st.browser?.running && st.browser.pssKb > 10_000, 'the browser runs and its memory is in the stats');
});

test('isolation: an agent sees and touches only its own targets, cookies and storage, and nothing browser-wide', async () => {
  const A = await hold(20);
  const B = await hold(20);
  const a = await Cdp.open(A.socket);
  const b = await Cdp.open(B.socket);
  // B opens a page that stores a secret (cookie + localStorage)
  const bt = (await b.ok('Target.createTarget', { url: `${web.url}/secret?v=bee` })).targetId as string;
  const bs = (await b.ok('Target.attachToTarget', { targetId: bt, flatten: true })).sessionId as string;
  await new Promise((r) => setTimeout(r, 800));
  const bCookies = (await b.ok('Storage.getCookies')).cookies as Array<{ name: string; value: string }>;
  assert.deepEqual(bCookies.map((c) => `${c.name}=${c.value}`), ['secret=bee']);
  const bCtx = (await b.ok('Target.getTargetInfo', { targetId: bt })).targetInfo as { browserContextId: string };

  const at = (await a.ok('Target.createTarget', { url: `${web.url}/catalog/1` })).targetId as string;
  const as = (await a.ok('Target.attachToTarget', { targetId: at, flatten: true })).sessionId as string;
  // listing
  const listed = ((await a.ok('Target.getTargets')).targetInfos as Array<{ targetId: string }>).map((t) => t.targetId);
  assert.deepEqual(listed, [at], 'A lists only its own target');
  assert.deepEqual((await a.ok('Target.getBrowserContexts')).browserContextIds, []);
  // attaching to B's target, by its id and by guessing
  assert.match((await a.send('Target.attachToTarget', { targetId: bt, flatten: true })).error!.message, /No target/);
  assert.match((await a.send('Target.attachToTarget', { targetId: 'F00DF00DF00DF00DF00DF00DF00DF00D', flatten: true })).error!.message, /No target/);
  assert.match((await a.send('Target.closeTarget', { targetId: bt })).error!.message, /No target/);
  // B's session id does not work on A's connection
  assert.match((await a.send('Runtime.evaluate', { expression: '1' }, bs)).error!.message, /Session/);
  // cookies: A's own are empty; B's context is refused
  assert.deepEqual((await a.ok('Storage.getCookies')).cookies, []);
  assert.match((await a.send('Storage.getCookies', { browserContextId: bCtx.browserContextId })).error!.message, /Failed to find browser context/);
  assert.match((await a.send('Target.disposeBrowserContext', { browserContextId: bCtx.browserContextId })).error!.message, /Failed to find/);
  // localStorage of the same origin in A's page: B's value is not there
  await new Promise((r) => setTimeout(r, 300));
  const ls = await a.ok('Runtime.evaluate', { expression: "localStorage.getItem('secret')", returnByValue: true }, as);
  assert.equal((ls.result as { value: unknown }).value, null);
  // browser-wide commands
  for (const m of ['Browser.close', 'Browser.crash', 'Browser.crashGpuProcess', 'Target.attachToBrowserTarget']) {
    assert.match((await a.send(m)).error!.message, /not allowed/, m);
  }
  // local schemes
  assert.match((await a.send('Target.createTarget', { url: 'file:///etc/passwd' })).error!.message, /blocked/);
  assert.match((await a.send('Target.createTarget', { url: 'chrome://settings' })).error!.message, /blocked/);
  assert.match((await a.send('Page.navigate', { url: 'file:///etc/passwd' }, as)).error!.message, /blocked/);
  assert.match((await a.send('Page.navigate', { url: 'devtools://devtools/bundled/inspector.html' }, as)).error!.message, /blocked/);
  // downloads land in the sandbox's own dir, whatever path the agent asks for
  const stray = fs.mkdtempSync('/tmp/trenv-dl-');
  await a.ok('Browser.setDownloadBehavior', { behavior: 'allow', downloadPath: stray });
  await a.ok('Page.navigate', { url: `${web.url}/download` }, as);
  const mine = path.join((await d.client.rpc.sendRequest(Methods.stats)).browser!.downloadsRoot, A.sandboxId);
  await waitFor(() => fs.existsSync(mine) && fs.readdirSync(mine).some((f) => !f.endsWith('.crdownload')), 10_000, 'the download in the sandbox dir');
  assert.deepEqual(fs.readdirSync(stray), [], 'nothing written where the agent asked');
  fs.rmSync(stray, { recursive: true, force: true });
  // nothing of B's reached A as events either
  assert.ok(!a.events.some((e) => JSON.stringify(e).includes(bt)), "no event about B's target on A's connection");
  // B is unharmed and the browser alive
  const still = await b.ok('Runtime.evaluate', { expression: 'document.title', returnByValue: true }, bs);
  assert.equal((still.result as { value: unknown }).value, 'secret');
  a.ws.close();
  b.ws.close();
  for (const h of [A, B]) {
    const r = await h.done;
    assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
    // from inside the sandbox (no network) the endpoint answered at 127.0.0.1:9222
    const res = r.result as { endpoint: string; version: { Browser: string; webSocketDebuggerUrl: string } };
    assert.equal(res.endpoint, 'http://127.0.0.1:9222');
    assert.match(res.version.Browser, /Chrome/);
    assert.match(res.version.webSocketDebuggerUrl, /^ws:\/\/127\.0\.0\.1:9222\/devtools\/browser\//);
  }
});

test('playwright-core connectOverCDP and puppeteer-core work through the proxy unchanged', async () => {
  const H = await hold(20);
  const fwd = await forward(H.socket);
  try {
    const browser = await chromium.connectOverCDP(`http://127.0.0.1:${fwd.port}`);
    const ctx = browser.contexts()[0];
    const page = await ctx.newPage();
    await page.goto(`${web.url}/secret?v=pw`);
    assert.equal(await page.title(), 'secret');
    assert.deepEqual((await ctx.cookies()).map((c) => `${c.name}=${c.value}`), ['secret=pw']);
    const other = await browser.newContext();
    const p2 = await other.newPage();
    await p2.goto(`${web.url}/catalog/3`);
    assert.equal(await p2.textContent('h1'), 'Kitchen catalogue, page 3');
    await other.close();
    await browser.close();

    const pb = await puppeteer.connect({ browserURL: `http://127.0.0.1:${fwd.port}` });
    const pp = await pb.newPage();
    await pp.goto(`${web.url}/catalog/2`);
    assert.equal(await pp.title(), 'Catalogue page 2');
    const pages = await pb.pages();
    assert.ok(pages.length >= 1);
    await pb.disconnect();
  } finally {
    fwd.close();
  }
  assert.equal((await H.done).state, 'succeeded');
});

test("live view: the daemon streams screencast frames of an agent's page, with its URL and title", async () => {
  const H = await hold(15);
  const s = await Cdp.open(H.socket);
  await s.ok('Target.createTarget', { url: `${web.url}/catalog/1` });
  const frames: BrowserFrame[] = [];
  const sub = d.client.rpc.onNotification(Notifications.browserFrame, (f: BrowserFrame) => {
    if (f.invocationId === H.id) frames.push(f);
  });
  await d.client.rpc.sendRequest(Methods.browserView, { invocationId: H.id });
  await waitFor(() => frames.some((f) => f.data && /catalog\/1/.test(f.url ?? '') && f.title === 'Catalogue page 1'), 15_000, 'a screencast frame with the page title');
  const f = frames.find((x) => x.data && x.title === 'Catalogue page 1')!;
  assert.ok(Buffer.from(f.data!, 'base64').subarray(0, 2).equals(Buffer.from([0xff, 0xd8])), 'a JPEG');
  assert.equal(f.title, 'Catalogue page 1');
  assert.ok(f.width! > 0 && f.height! > 0);
  assert.deepEqual(await d.client.rpc.sendRequest(Methods.browserViewStop, { invocationId: H.id }), { stopped: true });
  sub.dispose();
  s.ws.close();
  assert.equal((await H.done).state, 'succeeded');
  await assert.rejects(d.client.rpc.sendRequest(Methods.browserView, { invocationId: H.id }), /not running/);
});

test('recovery: Chromium killed mid-session; open sessions get a clear error, the next one gets a new browser', async () => {
  const H = await hold(25);
  const s = await Cdp.open(H.socket);
  await s.ok('Target.createTarget', { url: 'about:blank' });
  const st = await d.client.rpc.sendRequest(Methods.stats);
  process.kill(st.browser!.pid!, 'SIGKILL');
  await waitFor(() => !!s.closed, 10_000, 'the session to be closed');
  assert.equal(s.closed!.code, 1011);
  assert.match(s.closed!.reason, /shared browser/);
  const again = await Cdp.open(H.socket);
  const v = await again.ok('Browser.getVersion');
  assert.match(String(v.product), /Chrome/);
  const st2 = await d.client.rpc.sendRequest(Methods.stats);
  assert.notEqual(st2.browser!.pid, st.browser!.pid, 'a new browser');
  again.ws.close();
  assert.equal((await H.done).state, 'succeeded');
  const r = await d.invoke({ agentDir: path.join(EXAMPLES, 'node-web-extract'), event: { urls: [`${web.url}/catalog/3`] } });
  assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
});

test('cleanup: 100 sandboxes in a row leave no browser contexts or targets behind', async () => {
  for (let i = 0; i < 100; i++) {
    const r = await d.invoke({ agentDir: path.join(EXAMPLES, 'node-web-extract'), event: { urls: [`${web.url}/catalog/${(i % 3) + 1}`] } });
    assert.equal(r.state, 'succeeded', `call ${i}: ${JSON.stringify(r.error)}`);
  }
  let c = await census();
  for (let i = 0; i < 50 && (c.contexts > 0 || c.targets > 0); i++) {
    await new Promise((r) => setTimeout(r, 100));
    c = await census();
  }
  assert.deepEqual(c, { contexts: 0, targets: 0 });
  const st = await d.client.rpc.sendRequest(Methods.stats);
  assert.equal(st.browser!.endpoints, 0);
});

test('microVMs reach the shared browser over their host channel: the example agent in a VM gives the container result, and its context goes with it', async () => {
  const event = { urls: [`${web.url}/catalog/1`, `${web.url}/catalog/2`] };
  const agentDir = path.join(EXAMPLES, 'node-web-extract');
  const inVm = await d.invoke({ agentDir, event, sandbox: 'vm' });
  assert.equal(inVm.state, 'succeeded', JSON.stringify(inVm.error));
  assert.equal(inVm.sandboxKind, 'vm');
  const inContainer = await d.invoke({ agentDir, event });
  assert.equal(inContainer.state, 'succeeded', JSON.stringify(inContainer.error));
  assert.deepEqual(inVm.result, inContainer.result);
  const det = await d.client.rpc.sendRequest(Methods.getInvocation, { id: inVm.id });
  const ep = det.trace.find((s) => s.name === 'browser.endpoint');
  assert.match(String(ep?.attrs?.how), /virtio-serial/);
  let c = await census();
  for (let i = 0; i < 50 && (c.contexts > 0 || c.targets > 0); i++) {
    await new Promise((r) => setTimeout(r, 100));
    c = await census();
  }
  assert.deepEqual(c, { contexts: 0, targets: 0 }, 'the VM agent\'s context was disposed');
  // a VM agent without "browser": true finds nothing behind the guest's 127.0.0.1:9222
  const probe = await d.invoke({ agentDir: path.join(ROOT, 'test/fixtures/agents/vmprobe'), event: { action: 'connect', port: 9222 } });
  assert.equal(probe.state, 'succeeded', JSON.stringify(probe.error));
  assert.equal((probe.result as { answered: boolean }).answered, false, JSON.stringify(probe.result));
});
