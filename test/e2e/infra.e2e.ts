/**
 * Proves the real-editor infrastructure against a throwaway fixture extension (fixture-ext/):
 * the workbench UI path (palette, notification, webview frame, screenshots) and the extension-host
 * suite path, including that a failing in-host test is reported as failed.
 * Run: sudo bash scripts/setup-editor.sh && npx tsc -p . && node --test --test-concurrency=1 out/test/e2e/infra.e2e.js
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import {
  ROOT, openWorkbench, runCommand, runExtensionHostSuite, screenshot, startCodeServer, waitForNotification, webviewFrame,
} from './codeServer';

const FIXTURE = path.join(ROOT, 'test/e2e/fixture-ext');
const SUITE = path.join(FIXTURE, 'suite/index.js');

function tempWorkspace(): string {
  const ws = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-e2e-ws-'));
  fs.writeFileSync(path.join(ws, 'hello.txt'), 'hello from the e2e workspace\n');
  return ws;
}

test('workbench: palette command shows a message and a webview we can read', async (t) => {
  const started = Date.now();
  const workspace = tempWorkspace();
  t.after(() => fs.rmSync(workspace, { recursive: true, force: true }));
  const server = await startCodeServer({ extensionPath: FIXTURE, workspace });
  t.after(() => server.stop());
  const { browser, page } = await openWorkbench(server.url, { folder: workspace });
  t.after(() => browser.close());
  try {
    await page.locator('.explorer-folders-view .monaco-list-row', { hasText: 'hello.txt' }).waitFor({ timeout: 15_000 });
    await screenshot(page, 'infra-workbench');

    await runCommand(page, 'TrEnv Fixture: Hello');
    assert.match(await waitForNotification(page, 'Hello from the trenv fixture'), /Hello from the trenv fixture/);

    const frame = await webviewFrame(page, 'Fixture Webview');
    assert.equal(await frame.locator('#greeting').textContent(), 'Fixture webview says hi');
    assert.equal(await frame.locator('#count').textContent(), '1 workspace folder(s)');
    await screenshot(page, 'infra-webview');
    t.diagnostic(`round ${Date.now() - started} ms; code-server group RSS ${server.rssMiB()} MiB`);
  } catch (err) {
    await screenshot(page, 'infra-workbench-failure').catch(() => undefined);
    throw err;
  }
});

test('extension host: a passing suite passes', async (t) => {
  const started = Date.now();
  const workspace = tempWorkspace();
  t.after(() => fs.rmSync(workspace, { recursive: true, force: true }));
  const r = await runExtensionHostSuite({ extensionPath: FIXTURE, testsPath: SUITE, workspace });
  t.diagnostic(`${r.runner}: ${r.passed} passed, ${r.failed} failed in ${Date.now() - started} ms`);
  assert.equal(r.failed, 0, JSON.stringify(r.results, null, 2));
  assert.equal(r.passed, 3);
});

test('extension host: a failing test is reported as failed', async (t) => {
  const workspace = tempWorkspace();
  t.after(() => fs.rmSync(workspace, { recursive: true, force: true }));
  const r = await runExtensionHostSuite({ extensionPath: FIXTURE, testsPath: SUITE, workspace, env: { FIXTURE_SUITE_FAIL: '1' } });
  assert.equal(r.passed, 3, JSON.stringify(r.results, null, 2));
  assert.equal(r.failed, 1);
  const bad = r.results.find((x) => !x.ok);
  assert.equal(bad?.name, 'a deliberately failing test');
  assert.match(bad?.error ?? '', /deliberate failure/);
});

test('extension host: a suite that never reports is a failure, not a pass', async (t) => {
  const workspace = tempWorkspace();
  t.after(() => fs.rmSync(workspace, { recursive: true, force: true }));
  const broken = path.join(workspace, 'broken-suite.js');
  fs.writeFileSync(broken, "throw new Error('this suite fails to load');\n");
  await assert.rejects(
    runExtensionHostSuite({ extensionPath: FIXTURE, testsPath: broken, workspace, timeoutMs: 15_000 }),
    /wrote no results/,
  );
});
