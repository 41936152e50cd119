/** The CDP proxy's isolation rules, decided without a browser (the integration suite runs them against Chromium). */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { decide, filterResponse, keepEvent, Ownership, urlAllowed } from '../../runtime-daemon/browser/cdpFilter';

function own(): Ownership {
  return { defaultContext: 'CTX-A', contexts: new Set(['CTX-A']), targets: new Map([['T-A', 'CTX-A'], ['T-B', 'CTX-B']]), sessions: new Set(['S-A']), downloadsDir: '/state/dl/a' };
}

test('context-scoped commands get the agent context when none is named, and are refused for others', () => {
  const d = decide({ id: 1, method: 'Target.createTarget', params: { url: 'about:blank' } }, own());
  assert.equal(d.action, 'forward');
  assert.equal((d as { msg: { params?: Record<string, unknown> } }).msg.params?.browserContextId, 'CTX-A');
  assert.deepEqual(decide({ id: 2, method: 'Storage.getCookies', params: { browserContextId: 'CTX-B' } }, own()).action, 'refuse');
  assert.equal(decide({ id: 3, method: 'Storage.clearDataForOrigin', params: { origin: 'x' } }, own()).action, 'refuse');
  assert.equal(decide({ id: 4, method: 'Storage.clearDataForOrigin', params: { origin: 'x' }, sessionId: 'S-A' }, own()).action, 'forward');
});

test('targets and sessions of others, browser-wide commands and local URLs are refused', () => {
  const o = own();
  assert.equal(decide({ id: 1, method: 'Target.attachToTarget', params: { targetId: 'T-B' } }, o).action, 'refuse');
  assert.equal(decide({ id: 1, method: 'Target.attachToTarget', params: { targetId: 'T-A' } }, o).action, 'forward');
  assert.deepEqual(decide({ id: 1, method: 'Target.closeTarget', params: { targetId: 'unknown' } }, o), { action: 'lookup', targetId: 'unknown' });
  assert.equal(decide({ id: 1, method: 'Runtime.evaluate', params: {}, sessionId: 'S-B' }, o).action, 'refuse');
  for (const m of ['Browser.close', 'Browser.crash', 'Target.attachToBrowserTarget', 'Target.exposeDevToolsProtocol']) assert.equal(decide({ id: 1, method: m }, o).action, 'refuse', m);
  assert.equal(decide({ id: 1, method: 'Page.navigate', params: { url: 'file:///etc/passwd' }, sessionId: 'S-A' }, o).action, 'refuse');
  for (const u of ['file:///x', 'chrome://settings', 'devtools://devtools', 'view-source:http://x', 'chrome-extension://abc/', 'javascript:1']) assert.equal(urlAllowed(u), false, u);
  for (const u of ['http://x', 'https://x/y', 'about:blank', 'data:text/html,hi', undefined, '']) assert.equal(urlAllowed(u), true, String(u));
  assert.deepEqual(decide({ id: 1, method: 'Target.getBrowserContexts' }, o), { action: 'answer', result: { browserContextIds: [] } });
  assert.equal(decide({ id: 1, method: 'Target.disposeBrowserContext', params: { browserContextId: 'CTX-A' } }, o).action, 'refuse');
});

test('downloads only into the sandbox dir', () => {
  const o = own();
  const to = (p: string) => (decide({ id: 1, method: 'Browser.setDownloadBehavior', params: { behavior: 'allow', downloadPath: p } }, o) as { msg: { params?: Record<string, unknown> } }).msg.params?.downloadPath;
  assert.equal(to('/tmp'), '/state/dl/a', 'a path elsewhere is confined to the sandbox dir');
  assert.equal(to('/state/dl/a/../b'), '/state/dl/a');
  assert.equal(to('/state/dl/a/sub'), '/state/dl/a/sub');
  const ok = decide({ id: 1, method: 'Browser.setDownloadBehavior', params: { behavior: 'allow' } }, o) as { msg: { params?: Record<string, unknown> } };
  assert.equal(ok.msg.params?.downloadPath, '/state/dl/a');
  assert.equal(ok.msg.params?.browserContextId, 'CTX-A');
});

test('events about others are dropped; foreign auto-attached targets are released; responses filtered', () => {
  const o = own();
  assert.equal(keepEvent({ method: 'Target.targetCreated', params: { targetInfo: { targetId: 'T-X', browserContextId: 'CTX-B' } } }, o), 'drop');
  assert.equal(keepEvent({ method: 'Target.targetCreated', params: { targetInfo: { targetId: 'T-Y', browserContextId: 'CTX-A' } } }, o), 'keep');
  assert.deepEqual(keepEvent({ method: 'Target.attachedToTarget', params: { sessionId: 'S-X', waitingForDebugger: true, targetInfo: { targetId: 'T-X', browserContextId: 'CTX-B' } } }, o), {
    release: { sessionId: 'S-X', waiting: true },
  });
  assert.equal(keepEvent({ method: 'Target.attachedToTarget', params: { sessionId: 'S-N', targetInfo: { targetId: 'T-N', browserContextId: 'CTX-A', type: 'page' } } }, o), 'keep');
  assert.ok(o.sessions.has('S-N'));
  assert.equal(keepEvent({ method: 'Page.loadEventFired', sessionId: 'S-Z', params: {} }, o), 'drop');
  const d = decide({ id: 9, method: 'Target.getTargets' }, o) as Parameters<typeof filterResponse>[0];
  const r = filterResponse(d, { id: 9, result: { targetInfos: [{ targetId: 'T-A', browserContextId: 'CTX-A' }, { targetId: 'T-B', browserContextId: 'CTX-B' }, { targetId: 'B', type: 'browser' }] } }, o);
  assert.deepEqual((r.result!.targetInfos as Array<{ targetId: string }>).map((t) => t.targetId), ['T-A']);
  const c = decide({ id: 10, method: 'Target.createBrowserContext' }, o) as Parameters<typeof filterResponse>[0];
  filterResponse(c, { id: 10, result: { browserContextId: 'CTX-NEW' } }, o);
  assert.ok(o.contexts.has('CTX-NEW'), 'a context the agent creates is its own');
});

test("Chromium's own WebUI targets in an agent's context stay hidden", () => {
  const o = own();
  assert.equal(keepEvent({ method: 'Target.targetCreated', params: { targetInfo: { targetId: 'T-UI', browserContextId: 'CTX-A', type: 'browser_ui', url: 'chrome://omnibox-popup.top-chrome/' } } }, o), 'drop');
  const d = decide({ id: 9, method: 'Target.getTargets' }, o) as Parameters<typeof filterResponse>[0];
  const r = filterResponse(d, { id: 9, result: { targetInfos: [{ targetId: 'T-UI', browserContextId: 'CTX-A', type: 'browser_ui', url: 'chrome://omnibox-popup.top-chrome/' }, { targetId: 'T-A', browserContextId: 'CTX-A', type: 'page', url: 'about:blank' }] } }, o);
  assert.deepEqual((r.result!.targetInfos as Array<{ targetId: string }>).map((t) => t.targetId), ['T-A']);
});
