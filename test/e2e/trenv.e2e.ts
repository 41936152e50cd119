/**
 * End to end in a real VS Code (code-server) with the built TrEnv extension, a real daemon (started
 * by the extension) and the example agents as the workspace:
 *  1. the extension-host suite (real `vscode` API): connection, code lenses, diagnostics, invoke,
 *     webview panels, templates, a breakpoint hit under debugpy, a terminal;
 *  2. the UI driven with playwright: click the Invoke lens and see a log line in the logs webview,
 *     the memory chart draws, step through a restore trace, a terminal runs a command inside the
 *     sandbox. Screenshots of each go to test/artifacts/ (look at them).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Page } from 'playwright-core';
import { openWorkbench, ROOT, runCommand, runExtensionHostSuite, screenshot, startCodeServer, webviewFrame, CodeServer, Workbench } from './codeServer';

const STATE = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-e2e-state-'));
const env = { TRENV_STATE_DIR: STATE };

function workspace(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-e2e-ws-'));
  fs.chmodSync(dir, 0o755);
  for (const n of ['py-text-stats', 'node-json-transform']) fs.cpSync(path.join(ROOT, 'examples', n), path.join(dir, n), { recursive: true });
  return dir;
}

function stopDaemon(): void {
  spawnSync(process.execPath, [path.join(ROOT, 'dist/trenv.js'), '--state-dir', STATE, 'daemon', 'stop'], { encoding: 'utf8' });
}

before(() => {
  assert.ok(fs.existsSync(path.join(ROOT, 'dist/extension.js')), 'build first: node scripts/build.mjs');
});
after(() => stopDaemon());

test('extension-host suite in code-server', { timeout: 240_000 }, async () => {
  const r = await runExtensionHostSuite({ extensionPath: ROOT, testsPath: path.join(ROOT, 'out/test/e2e/suite/index.js'), workspace: workspace(), env, timeoutMs: 200_000 });
  for (const x of r.results) process.stdout.write(`  ${x.ok ? 'ok  ' : 'FAIL'} ${x.name} (${x.durationMs} ms)${x.error ? `\n${x.error}` : ''}\n`);
  assert.equal(r.failed, 0, `${r.failed} extension-host test(s) failed`);
  assert.ok(r.passed >= 8);
});

let server: CodeServer | undefined;
let wb: Workbench | undefined;

async function openFile(page: Page, rel: string): Promise<void> {
  await page.keyboard.press('Escape');
  await page.keyboard.press('Control+P');
  const input = page.locator('.quick-input-widget input');
  await input.waitFor({ state: 'visible', timeout: 5000 });
  await input.fill(rel);
  await page.locator('.quick-input-list .monaco-list-row').first().waitFor({ timeout: 10_000 });
  await page.keyboard.press('Enter');
  await page.locator('.tabs-container .tab', { hasText: path.basename(rel) }).first().waitFor({ timeout: 10_000 });
}

test('UI: invoke from the code lens, logs, memory, trace, terminal', { timeout: 240_000 }, async () => {
  const ws = workspace();
  server = await startCodeServer({ extensionPath: ROOT, workspace: ws, env });
  try {
    wb = await openWorkbench(server.url, { folder: ws, timeoutMs: 60_000 });
    const page = wb.page;
    // connected: the status bar item shows the sandbox count instead of "disconnected"
    await page.locator('.statusbar-item', { hasText: 'TrEnv' }).first().waitFor({ timeout: 60_000 });
    await openFile(page, 'py-text-stats/main.py');
    // bring the handler into view: its code lens renders only when visible
    const handlerLine = fs.readFileSync(path.join(ws, 'py-text-stats/main.py'), 'utf8').split('\n').findIndex((l) => /^def handler/.test(l)) + 1;
    await page.keyboard.press('Control+G');
    await page.locator('.quick-input-widget input').waitFor({ state: 'visible', timeout: 5000 });
    await page.keyboard.type(String(handlerLine));
    await page.keyboard.press('Enter');
    const lens = page.locator('.codelens-decoration a', { hasText: 'Invoke' }).first();
    await lens.waitFor({ timeout: 60_000 });
    await screenshot(page, 'e2e-codelens');
    const t0 = Date.now();
    await lens.click();
    const logs = await webviewFrame(page, 'Logs', 30_000);
    await logs.locator('.line').first().waitFor({ timeout: 30_000 });
    const firstLogMs = Date.now() - t0;
    await logs.locator('.line', { hasText: 'invocation succeeded' }).first().waitFor({ timeout: 30_000 });
    assert.ok((await logs.locator('.line').count()) >= 2);
    await screenshot(page, 'e2e-logs');
    process.stdout.write(`  click on Invoke -> first log line in the webview: ${firstLogMs} ms (cold daemon, includes the first sandbox)\n`);

    await runCommand(page, 'TrEnv: Show Memory');
    const mem = await webviewFrame(page, 'Memory', 30_000);
    await mem.locator('.card.total canvas').first().waitFor({ timeout: 30_000 });
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a DOM canvas (no DOM typings here)
    const painted = await mem.locator('.card.total canvas').first().evaluate((c: any) => {
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
      return n;
    });
    assert.ok(Number(painted) > 100, 'the memory chart has drawn something');
    await screenshot(page, 'e2e-memory');

    await runCommand(page, 'TrEnv: Show Restore Trace', 30_000, { opensPicker: true });
    await page.locator('.quick-input-list .monaco-list-row').first().waitFor({ timeout: 10_000 });
    await page.keyboard.press('Enter');
    const trace = await webviewFrame(page, 'Trace', 30_000);
    await trace.locator('.step-name').waitFor({ timeout: 30_000 });
    const first = await trace.locator('.step-name').innerText();
    await trace.locator('button[aria-label="Next step"]').click();
    await trace.locator('button[aria-label="Next step"]').click();
    const third = await trace.locator('.step-name').innerText();
    assert.notEqual(third, first, 'stepping forward changes the step');
    await trace.locator('button[aria-label="Previous step"]').click();
    assert.notEqual(await trace.locator('.step-name').innerText(), third, 'stepping back');
    await screenshot(page, 'e2e-trace');

    await runCommand(page, 'TrEnv: Open Terminal in Sandbox', 30_000, { opensPicker: true });
    // the active editor is a webview, so the command asks which of the workspace's agents
    const pick = page.locator('.quick-input-list .monaco-list-row', { hasText: 'py-text-stats' }).first();
    await pick.waitFor({ timeout: 15_000 });
    await pick.click();
    const rows = page.locator('.terminal-wrapper.active .xterm-rows');
    await rows.waitFor({ timeout: 30_000 });
    // the prompt of the shell inside the sandbox, then focus the terminal and type
    await page.locator('.terminal-wrapper.active .xterm-rows', { hasText: /agent@trenv-/ }).waitFor({ timeout: 30_000 });
    await page.locator('.terminal-wrapper.active .xterm-screen').click({ force: true });
    await page.keyboard.type('echo "HOST=$(hostname) ID=$(id -u)"\n');
    await page.locator('.terminal-wrapper.active .xterm-rows', { hasText: /HOST=trenv-\S+ ID=10001/ }).waitFor({ timeout: 20_000 });
    const text = await rows.innerText();
    assert.ok(!text.includes(`HOST=${os.hostname()} `), 'the hostname inside differs from the host');
    await screenshot(page, 'e2e-terminal');
  } catch (e) {
    if (wb) await screenshot(wb.page, 'e2e-failure').catch(() => undefined);
    throw e;
  } finally {
    await wb?.browser.close();
    await server.stop();
  }
});
