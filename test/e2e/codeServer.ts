/**
 * Real-editor test infrastructure: VS Code's own workbench and extension host, served by
 * code-server (installed by scripts/setup-editor.sh into test/.tools) and driven by playwright-core
 * with Debian's /usr/bin/chromium. VS Code desktop cannot be downloaded on this machine; where a
 * VS Code executable exists ($VSCODE_EXECUTABLE), extension-host suites run through
 * @vscode/test-electron instead. See /work/shared/notes/real-vscode-testing.md.
 *
 * Every resource has one owner: startCodeServer owns the server's process group and its temp dirs
 * (stop() removes both); openWorkbench's caller owns the browser.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Browser, Frame, Page } from 'playwright-core';
import { HostSuiteReport, HostTestResult, RESULTS_ENV } from './hostSuite';

/** The repo root (this file runs from out/test/e2e/). */
export const ROOT = path.resolve(__dirname, '../../..');
export const CODE_SERVER_BIN = path.join(ROOT, 'test/.tools/code-server/node_modules/.bin/code-server');
export const ARTIFACTS = path.join(ROOT, 'test/artifacts');
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-dev-shm-usage',
];

const SETTINGS = {
  'workbench.startupEditor': 'none',
  'security.workspace.trust.enabled': false,
  'telemetry.telemetryLevel': 'off',
  'terminal.integrated.gpuAcceleration': 'off',
  'update.mode': 'none',
  'extensions.autoCheckUpdates': false,
  'extensions.autoUpdate': false,
  'workbench.tips.enabled': false,
  'workbench.enableExperiments': false,
  'chat.commandCenter.enabled': false,
  // The repo's own .git sits above test workspaces: no "open the parent repository?" toast.
  'git.openRepositoryInParentFolders': 'never',
};

export interface CodeServerOptions {
  /** Extension folder (with package.json); default the repo root. `null`: no extension installed. */
  extensionPath?: string | null;
  /** Folder that code-server opens. */
  workspace: string;
  /** Loopback port; default a free one. */
  port?: number;
  /** Extra environment for code-server and so for the extension host. */
  env?: NodeJS.ProcessEnv;
  /** Extra user settings merged over the defaults. */
  settings?: Record<string, unknown>;
  /** Keep the temp dirs (user data, logs) after stop(). */
  keepDirs?: boolean;
}

export interface CodeServer {
  url: string;
  port: number;
  userDataDir: string;
  /** code-server's stdout+stderr. */
  logFile: string;
  /** The pid of code-server, which leads its own process group. */
  pid: number;
  log(): string;
  /** Resident memory of code-server's whole process group (server + extension host + helpers), MiB. */
  rssMiB(): number;
  stop(): Promise<void>;
}

/** Reads publisher.name-version from an extension's package.json. */
export function extensionFolderName(extensionPath: string): string {
  const pkg = JSON.parse(fs.readFileSync(path.join(extensionPath, 'package.json'), 'utf8')) as { publisher?: string; name?: string; version?: string };
  if (!pkg.publisher || !pkg.name || !pkg.version) throw new Error(`${extensionPath}/package.json needs publisher, name and version to be installed as an extension`);
  return `${pkg.publisher}.${pkg.name}-${pkg.version}`;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

function httpStatus(url: string): Promise<number> {
  return new Promise((resolve) => {
    const req = http.get(url, (res) => { res.resume(); resolve(res.statusCode ?? 0); });
    req.on('error', () => resolve(0));
    req.setTimeout(2000, () => { req.destroy(); resolve(0); });
  });
}

/** Sum of VmRSS over every process whose process group is `pgid`. */
export function processGroupRssMiB(pgid: number): number {
  let kib = 0;
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) !== pgid) continue; // field 5 (pgrp), counting from after "(comm)"
      const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${entry}/status`, 'utf8'));
      if (m) kib += Number(m[1]);
    } catch { /* the process went away */ }
  }
  return Math.round(kib / 1024);
}

function groupAlive(pgid: number): boolean {
  try { process.kill(-pgid, 0); return true; } catch { return false; }
}

async function killGroup(proc: ChildProcess, graceMs = 5000): Promise<void> {
  const pgid = proc.pid;
  if (pgid === undefined) return;
  try { process.kill(-pgid, 'SIGTERM'); } catch { /* already gone */ }
  const deadline = Date.now() + graceMs;
  while (groupAlive(pgid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  if (groupAlive(pgid)) { try { process.kill(-pgid, 'SIGKILL'); } catch { /* already gone */ } }
  while (groupAlive(pgid) && Date.now() < deadline + 3000) await new Promise((r) => setTimeout(r, 50));
}

/**
 * Starts code-server on 127.0.0.1 with fresh XDG and user-data dirs, test settings and the
 * extension installed (a symlink named publisher.name-version in a fresh --extensions-dir).
 * It runs in its own session (setsid) so stop() can kill the whole group, extension host included.
 */
export async function startCodeServer(opts: CodeServerOptions): Promise<CodeServer> {
  if (!fs.existsSync(CODE_SERVER_BIN)) throw new Error(`code-server is not installed at ${CODE_SERVER_BIN}: run sudo bash scripts/setup-editor.sh`);
  const extensionPath = opts.extensionPath === undefined ? ROOT : opts.extensionPath;
  const port = opts.port ?? await freePort();
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-code-server-'));
  const dirs = {
    config: path.join(base, 'config'), data: path.join(base, 'data'), cache: path.join(base, 'cache'),
    userData: path.join(base, 'user-data'), extensions: path.join(base, 'extensions'),
  };
  for (const d of Object.values(dirs)) fs.mkdirSync(d, { recursive: true });
  fs.mkdirSync(path.join(dirs.userData, 'User'), { recursive: true });
  fs.writeFileSync(path.join(dirs.userData, 'User', 'settings.json'), JSON.stringify({ ...SETTINGS, ...opts.settings }, null, 2));
  if (extensionPath) {
    const abs = path.resolve(extensionPath);
    fs.symlinkSync(abs, path.join(dirs.extensions, extensionFolderName(abs)), 'dir');
  }

  const logFile = path.join(base, 'code-server.log');
  const fd = fs.openSync(logFile, 'a');
  const args = [
    '--auth', 'none', '--bind-addr', `127.0.0.1:${port}`, '--disable-telemetry', '--disable-update-check',
    '--disable-workspace-trust', '--disable-getting-started-override', '--ignore-last-opened',
    '--user-data-dir', dirs.userData, '--extensions-dir', dirs.extensions, opts.workspace,
  ];
  const env: NodeJS.ProcessEnv = {
    ...process.env, XDG_CONFIG_HOME: dirs.config, XDG_DATA_HOME: dirs.data, XDG_CACHE_HOME: dirs.cache, ...opts.env,
  };
  // detached: setsid(), so code-server leads a new process group that stop() kills as a whole.
  const proc = spawn(CODE_SERVER_BIN, args, { env, detached: true, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  let exited: string | undefined;
  proc.on('exit', (code, signal) => { exited = `code ${code} signal ${signal}`; });

  const url = `http://127.0.0.1:${port}`;
  const log = () => { try { return fs.readFileSync(logFile, 'utf8'); } catch { return ''; } };
  let stopped = false;
  const server: CodeServer = {
    url, port, userDataDir: dirs.userData, logFile, pid: proc.pid!, log,
    rssMiB: () => processGroupRssMiB(proc.pid!),
    async stop() {
      if (stopped) return;
      stopped = true;
      await killGroup(proc);
      if (!opts.keepDirs) fs.rmSync(base, { recursive: true, force: true });
    },
  };

  const deadline = Date.now() + 30_000;
  while ((await httpStatus(`${url}/healthz`)) !== 200) {
    if (exited || Date.now() > deadline) {
      const why = exited ? `exited (${exited})` : 'did not answer /healthz within 30 s';
      const text = log();
      await server.stop();
      throw new Error(`code-server ${why}; its log:\n${text}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return server;
}

/** The workbench URL for a folder, with an optional `payload` (extension development / tests). */
export function workbenchUrl(url: string, folder: string, payload?: Array<[string, string]>): string {
  let u = `${url}/?folder=${encodeURIComponent(folder)}`;
  if (payload) u += `&payload=${encodeURIComponent(JSON.stringify(payload))}`;
  return u;
}

export interface Workbench { browser: Browser; page: Page }

/** Launches headless chromium and opens the workbench on `folder`, waiting until it is usable. */
export async function openWorkbench(url: string, opts: { folder: string; payload?: Array<[string, string]>; headless?: boolean; timeoutMs?: number }): Promise<Workbench> {
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: opts.headless ?? true, args: CHROMIUM_ARGS });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const timeout = opts.timeoutMs ?? 30_000;
    await page.goto(workbenchUrl(url, opts.folder, opts.payload), { timeout });
    await waitForWorkbench(page, timeout);
    return { browser, page };
  } catch (err) {
    await browser.close();
    throw err;
  }
}

/** Ready: the workbench is laid out and the status bar and explorer have rendered. */
export async function waitForWorkbench(page: Page, timeoutMs = 30_000): Promise<void> {
  await page.waitForSelector('.monaco-workbench', { timeout: timeoutMs });
  await page.waitForSelector('.monaco-workbench .part.statusbar .statusbar-item', { timeout: timeoutMs });
  await page.waitForSelector('.monaco-workbench .part.activitybar', { timeout: timeoutMs });
}

/**
 * Opens the command palette and runs the command titled `title`. Retried with Escape + F1 until
 * `timeoutMs`: the first F1 is sometimes swallowed, and a palette opened before the extension host
 * has registered the extension's contributions shows "No matching commands" and never refreshes.
 */
export async function runCommand(page: Page, title: string, timeoutMs = 30_000, opts: { opensPicker?: boolean } = {}): Promise<void> {
  const input = page.locator('.quick-input-widget input');
  const row = page.locator('.quick-input-list .monaco-list-row', { has: page.locator('.label-name', { hasText: title }) }).first();
  const deadline = Date.now() + timeoutMs;
  let attempts = 0;
  let lastError: unknown;
  while (Date.now() < deadline) {
    attempts++;
    try {
      await page.keyboard.press('Escape');
      await page.keyboard.press('F1');
      await input.waitFor({ state: 'visible', timeout: 2000 });
      await input.fill(`>${title}`);
      await row.waitFor({ state: 'visible', timeout: 1500 });
      await row.click();
      if (opts.opensPicker) {
        // the command asks something in the same quick input: wait until the palette's text is gone
        await page.waitForFunction(`(() => { const i = document.querySelector('.quick-input-widget input'); return !i || !i.value.startsWith('>'); })()`, undefined, { timeout: 3000 });
        return;
      }
      await input.waitFor({ state: 'hidden', timeout: 3000 });
      return;
    } catch (err) {
      lastError = err;
    }
  }
  await page.keyboard.press('Escape');
  throw new Error(`could not run command "${title}" from the palette (${attempts} attempts in ${timeoutMs} ms): ${String(lastError)}`);
}

/** Waits for a notification toast containing `text`; returns its message text. */
export async function waitForNotification(page: Page, text: string, timeoutMs = 10_000): Promise<string> {
  const msg = page.locator('.notifications-toasts .notification-list-item-message', { hasText: text }).first();
  await msg.waitFor({ state: 'visible', timeout: timeoutMs });
  return (await msg.textContent()) ?? '';
}

/**
 * The inner frame (the extension's HTML) of the webview editor whose tab title contains
 * `titleSubstring`: brings the tab to the front, then takes the visible `iframe.webview.ready`
 * and its `#active-frame`. Re-acquire it after the webview's html is replaced.
 */
// A string so this file needs no DOM typings (tsconfig has lib ES2022 only).
const WEBVIEW_LOADED = 'document.readyState === "complete" && !!document.body && document.body.childElementCount > 0';

export async function webviewFrame(page: Page, titleSubstring: string, timeoutMs = 15_000): Promise<Frame> {
  const tab = page.locator('.tabs-container .tab', { hasText: titleSubstring }).first();
  await tab.waitFor({ state: 'visible', timeout: timeoutMs });
  await tab.click();
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    for (const el of await page.locator('iframe.webview.ready').elementHandles()) {
      if (!(await el.isVisible())) continue;
      const outer = await el.contentFrame();
      const innerEl = outer && await outer.$('#active-frame');
      const inner = innerEl && await innerEl.contentFrame();
      if (inner && await inner.evaluate(WEBVIEW_LOADED).catch(() => false)) return inner;
    }
    await page.waitForTimeout(100);
  }
  throw new Error(`no ready webview for a tab titled "${titleSubstring}" within ${timeoutMs} ms`);
}

/** Saves a PNG of the page into test/artifacts/<name>.png and returns its path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, `${name.replace(/[^\w.-]+/g, '_')}.png`);
  await page.screenshot({ path: file });
  return file;
}

export interface SuiteOptions {
  /** Extension under development; default the repo root. */
  extensionPath?: string;
  /** Module exporting run() (see hostSuite.ts). */
  testsPath: string;
  /** Folder to open. */
  workspace: string;
  /** Extra environment for the extension host. */
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
}

export interface SuiteResult {
  passed: number;
  failed: number;
  results: HostTestResult[];
  /** Which editor ran it. */
  runner: 'code-server' | 'test-electron';
}

function readReport(file: string): HostSuiteReport | undefined {
  try { return JSON.parse(fs.readFileSync(file, 'utf8')) as HostSuiteReport; } catch { return undefined; }
}

function summarize(report: HostSuiteReport, runner: SuiteResult['runner']): SuiteResult {
  const results = report.results;
  const failed = results.filter((r) => !r.ok).length + (report.done ? 0 : 1);
  if (!report.done) results.push({ name: '(suite did not finish)', ok: false, durationMs: 0, error: 'the suite stopped before writing its last result' });
  return { passed: results.filter((r) => r.ok).length, failed, results, runner };
}

/**
 * Runs an extension-host suite (a module whose run() calls hostSuite.runSuite) inside the real
 * extension host, with the real `vscode` API. With $VSCODE_EXECUTABLE set it uses
 * @vscode/test-electron's runTests; otherwise code-server, opened through the payload URL
 * (extensionDevelopmentPath + extensionTestsPath). Either way results come from the suite's results
 * file, never from an exit code; a suite that writes nothing counts as failed.
 */
export async function runExtensionHostSuite(opts: SuiteOptions): Promise<SuiteResult> {
  const extensionPath = path.resolve(opts.extensionPath ?? ROOT);
  const testsPath = path.resolve(opts.testsPath);
  const timeoutMs = opts.timeoutMs ?? 90_000;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-host-suite-'));
  const resultsFile = path.join(tmp, 'results.json');
  const env = { ...opts.env, [RESULTS_ENV]: resultsFile };
  try {
    if (process.env.VSCODE_EXECUTABLE) {
      const { runTests } = await import('@vscode/test-electron');
      let exitError: unknown;
      try {
        await runTests({
          vscodeExecutablePath: process.env.VSCODE_EXECUTABLE,
          extensionDevelopmentPath: extensionPath,
          extensionTestsPath: testsPath,
          extensionTestsEnv: env as Record<string, string | undefined>,
          launchArgs: [opts.workspace, '--disable-extensions', '--user-data-dir', path.join(tmp, 'user-data'), '--skip-welcome', '--skip-release-notes'],
        });
      } catch (err) { exitError = err; }
      const report = readReport(resultsFile);
      if (!report) throw new Error(`the suite ${testsPath} wrote no results under VS Code (${process.env.VSCODE_EXECUTABLE}): ${String(exitError)}`);
      return summarize(report, 'test-electron');
    }

    const server = await startCodeServer({ extensionPath: null, workspace: opts.workspace, env });
    let browser: Browser | undefined;
    try {
      const remote = (p: string) => `vscode-remote://127.0.0.1:${server.port}${p}`;
      const wb = await openWorkbench(server.url, {
        folder: opts.workspace,
        payload: [['extensionDevelopmentPath', remote(extensionPath)], ['extensionTestsPath', remote(testsPath)]],
      });
      browser = wb.browser;
      // The suite writes an empty report as soon as run() starts; if that never comes (the module
      // failed to load, the extension failed to activate) fail well before the full timeout.
      const started = Date.now();
      const startDeadline = started + Math.min(timeoutMs, 45_000);
      const deadline = started + timeoutMs;
      let report = readReport(resultsFile);
      while (!report?.done && Date.now() < (report ? deadline : startDeadline)) {
        await new Promise((r) => setTimeout(r, 200));
        report = readReport(resultsFile);
      }
      if (!report) {
        if (browser) await screenshot(wb.page, `host-suite-no-results-${path.basename(testsPath)}`).catch(() => undefined);
        throw new Error(`the suite ${testsPath} wrote no results within ${Date.now() - started} ms (did run() load? is out/ compiled?); code-server log:\n${server.log()}`);
      }
      return summarize(report, 'code-server');
    } finally {
      await browser?.close();
      await server.stop();
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
