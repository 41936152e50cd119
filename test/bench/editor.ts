/**
 * Editor part: click on "▶ Invoke" above a handler in a real VS Code (code-server) until the first
 * log line of that invocation shows in the logs webview, with a warm template and a warm pool.
 * Measured in the browser (performance.now() at the click, then polling the webview's DOM), so it
 * includes the extension, the daemon round trips, the sandbox, the runtime and the webview.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { openWorkbench, ROOT, startCodeServer, webviewFrame } from '../e2e/codeServer';
import { mdTable, mean, MetricRow, percentile, row, writeReport } from './results';

export async function benchEditor(): Promise<MetricRow[]> {
  const runs = Number(process.env.TRENV_BENCH_EDITOR_RUNS ?? 12);
  const state = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-bench-editor-'));
  const ws = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-bench-editor-ws-'));
  fs.chmodSync(ws, 0o755);
  const agent = path.join(ws, 'py-text-stats');
  fs.cpSync(path.join(ROOT, 'examples/py-text-stats'), agent, { recursive: true });
  const cli = (...a: string[]) => spawnSync(process.execPath, [path.join(ROOT, 'dist/trenv.js'), '--state-dir', state, ...a], { encoding: 'utf8' });
  cli('daemon', 'start');
  cli('template', 'build', agent);
  const server = await startCodeServer({ extensionPath: ROOT, workspace: ws, env: { TRENV_STATE_DIR: state } });
  const times: number[] = [];
  try {
    const wb = await openWorkbench(server.url, { folder: ws, timeoutMs: 60_000 });
    const page = wb.page;
    try {
      await page.locator('.statusbar-item', { hasText: 'TrEnv' }).first().waitFor({ timeout: 60_000 });
      await page.keyboard.press('Control+P');
      await page.locator('.quick-input-widget input').fill('py-text-stats/main.py');
      await page.locator('.quick-input-list .monaco-list-row').first().waitFor();
      await page.keyboard.press('Enter');
      const line = fs.readFileSync(path.join(agent, 'main.py'), 'utf8').split('\n').findIndex((l) => /^def handler/.test(l)) + 1;
      await page.keyboard.press('Control+G');
      await page.keyboard.type(String(line));
      await page.keyboard.press('Enter');
      const lens = page.locator('.codelens-decoration a', { hasText: 'Invoke' }).first();
      for (let i = 0; i < runs + 2; i++) {
        await lens.waitFor({ timeout: 60_000 });
        const before = i === 0 ? '' : await (await webviewFrame(page, 'Logs')).locator('.id').first().innerText().catch(() => '');
        // bring the editor back to the front so the lens is clickable
        await page.locator('.tabs-container .tab', { hasText: 'main.py' }).first().click();
        const t0 = await page.evaluate('performance.now()');
        await lens.click();
        const logs = await webviewFrame(page, 'Logs', 30_000);
        // a new invocation: the panel's header changes (it names the invocation) and a line shows
        const until = Date.now() + 30_000;
        for (;;) {
          const head = await logs.locator('.id').first().innerText().catch(() => '');
          const n = await logs.locator('.line').count();
          if (n > 0 && (i === 0 || head !== before)) break;
          if (Date.now() > until) throw new Error('no log line in the logs webview within 30 s');
          await page.waitForTimeout(2);
        }
        const ms = Number(await page.evaluate('performance.now()')) - Number(t0);
        if (i >= 2) times.push(ms); // the first two warm the pool and the panel
        // let the sandbox be cleaned and prepared again, as between a developer's clicks
        await page.waitForTimeout(400);
      }
    } finally {
      await wb.browser.close();
    }
  } finally {
    await server.stop();
    cli('daemon', 'stop');
    fs.rmSync(state, { recursive: true, force: true });
  }
  const p50 = percentile(times, 50);
  const md = [
    `# Editor: click on ▶ Invoke -> first log line in the logs webview (${times.length} clicks, warm template and pool)`,
    '',
    mdTable(['P50 ms', 'P99 ms', 'mean ms', 'min ms', 'max ms'], [[p50, percentile(times, 99), mean(times), Math.min(...times), Math.max(...times)]]),
    '',
    'Measured in the browser: code lens click -> the logs webview shows a line of the new invocation (extension, daemon, sandbox, runtime, webview). Target: <= 150 ms.',
  ].join('\n');
  writeReport('editor', { times }, md);
  process.stdout.write(md + '\n\n');
  return [row('editor.invoke_to_first_log_ms', p50, 'ms', 'lower')];
}
