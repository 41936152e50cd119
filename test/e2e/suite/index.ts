/**
 * Extension-host suite of the TrEnv extension: runs inside the real extension host (code-server here,
 * VS Code via @vscode/test-electron elsewhere) with the real `vscode` API, against a real daemon
 * (the extension starts it; TRENV_STATE_DIR points at a temporary state dir).
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import type { Ctx } from '../../../extension/ctx';
import type { InvocationRecord } from '../../../runtime-daemon/protocol/messages';
import { runSuite, HostTest } from '../hostSuite';

/* eslint-disable @typescript-eslint/no-explicit-any -- tree nodes are the extension's private shapes */

const ws = () => vscode.workspace.workspaceFolders![0].uri.fsPath;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

let ctx: Ctx;
let sandboxesTree: { getChildren(n?: unknown): Promise<Array<Record<string, any>>> };

const tests: HostTest[] = [
  [
    'activates, starts the daemon and connects',
    async () => {
      const ext = vscode.extensions.getExtension('trenv.trenv');
      assert.ok(ext, 'the trenv extension is not loaded');
      const api = (await ext.activate()) as { ctx: Ctx; sandboxes: typeof sandboxesTree };
      ctx = api.ctx;
      sandboxesTree = api.sandboxes;
      await until('the connection', () => ctx.state === 'connected', 25_000);
      assert.ok(ctx.status?.pid, 'daemon status known');
    },
  ],
  [
    'every command is registered under the TrEnv category',
    async () => {
      const all = await vscode.commands.getCommands(true);
      for (const c of ['trenv.invoke', 'trenv.debug', 'trenv.rebuildTemplate', 'trenv.showLogs', 'trenv.showMemory', 'trenv.showTrace', 'trenv.openTerminal', 'trenv.stopSandbox', 'trenv.restartDaemon']) {
        assert.ok(all.includes(c), `${c} missing`);
      }
    },
  ],
  [
    'code lenses above the handler come from the daemon',
    async () => {
      const file = path.join(ws(), 'py-text-stats', 'main.py');
      const doc = await vscode.workspace.openTextDocument(file);
      await vscode.window.showTextDocument(doc);
      const lenses = await until('code lenses', async () => {
        const l = await vscode.commands.executeCommand<vscode.CodeLens[]>('vscode.executeCodeLensProvider', doc.uri);
        return l?.some((x) => x.command?.command === 'trenv.invoke') ? l : undefined;
      });
      const invoke = lenses.find((x) => x.command?.command === 'trenv.invoke')!;
      assert.match(doc.lineAt(invoke.range.start.line).text, /def handler/);
      assert.ok(lenses.some((x) => x.command?.title === 'Debug'));
    },
  ],
  [
    'manifest diagnostics and hovers',
    async () => {
      const dir = path.join(ws(), 'broken-agent');
      fs.mkdirSync(dir, { recursive: true });
      const file = path.join(dir, 'trenv.json');
      fs.writeFileSync(file, '{\n  "name": "Bad Name",\n  "runtime": "python",\n  "handler": "main.py:handler"\n}\n');
      const doc = await vscode.workspace.openTextDocument(file);
      await vscode.window.showTextDocument(doc);
      const diags = await until('diagnostics', () => {
        const d = vscode.languages.getDiagnostics(doc.uri).filter((x) => x.source === 'trenv');
        return d.length ? d : undefined;
      });
      assert.ok(diags.some((d) => /lower-case/.test(String(d.message)) && d.range.start.line === 1), JSON.stringify(diags.map((d) => d.message)));
      assert.ok(diags.some((d) => /handler file "main.py" not found/.test(String(d.message))));
      const hoverText = await until('the hover on "runtime"', async () => {
        const hovers = await vscode.commands.executeCommand<vscode.Hover[]>('vscode.executeHoverProvider', doc.uri, new vscode.Position(2, 5));
        const text = hovers.flatMap((h) => h.contents.map((c) => (typeof c === 'string' ? c : c.value))).join('\n');
        // the daemon's hover (VS Code's JSON support shows the schema text too, without this heading)
        return /\*\*runtime\*\* —/.test(text) ? text : undefined;
      }, 10_000);
      assert.match(hoverText, /runtime/);
      await vscode.commands.executeCommand('workbench.action.closeActiveEditor');
      fs.rmSync(dir, { recursive: true, force: true });
    },
  ],
  [
    'invoke runs the agent and the logs panel follows it',
    async () => {
      const dir = path.join(ws(), 'py-text-stats');
      const event = JSON.parse(fs.readFileSync(path.join(dir, '.trenv/events/default.json'), 'utf8'));
      const rec = (await vscode.commands.executeCommand('trenv.invoke', dir, event)) as InvocationRecord;
      assert.equal(rec.state, 'succeeded', JSON.stringify(rec.error));
      const tabs = () => vscode.window.tabGroups.all.flatMap((g) => g.tabs).map((t) => t.label);
      await until('the logs tab', () => tabs().some((t) => t.startsWith('Logs')));
      await vscode.commands.executeCommand('trenv.showTrace', rec.id);
      await until('the trace tab', () => tabs().some((t) => t.startsWith('Trace')));
      await vscode.commands.executeCommand('trenv.showMemory');
      await until('the memory tab', () => tabs().some((t) => t.includes('Memory')));
    },
  ],
  [
    'a template is built from the editor and used by the next invoke',
    async () => {
      const dir = path.join(ws(), 'py-text-stats');
      const t = (await vscode.commands.executeCommand('trenv.rebuildTemplate', dir)) as { name: string };
      assert.equal(t.name, 'py-text-stats');
      const event = JSON.parse(fs.readFileSync(path.join(dir, '.trenv/events/default.json'), 'utf8'));
      const rec = (await vscode.commands.executeCommand('trenv.invoke', dir, event)) as InvocationRecord;
      assert.equal(rec.template, 'py-text-stats');
      // the Sandboxes view: the template with the sandbox its instance ran in
      const node = await until('the template node with its sandbox', async () => {
        const roots = await sandboxesTree.getChildren();
        const t = roots.find((n) => n.kind === 'template' && n.t.name === 'py-text-stats');
        return t && t.children.some((c: Record<string, any>) => c.s.id === rec.sandboxId) ? t : undefined;
      });
      assert.equal(node.t.live, true);
    },
  ],
  [
    'a breakpoint in a Python handler is hit in the sandbox and its variables are visible',
    async () => {
      const dir = path.join(ws(), 'py-text-stats');
      const file = path.join(dir, 'main.py');
      const lines = fs.readFileSync(file, 'utf8').split('\n');
      const def = lines.findIndex((l) => /^def handler/.test(l));
      const bpLine = def + 1 + lines.slice(def + 1).findIndex((l) => l.trim() && !l.trim().startsWith('"""') && !l.trim().startsWith('#'));
      vscode.debug.addBreakpoints([new vscode.SourceBreakpoint(new vscode.Location(vscode.Uri.file(file), new vscode.Position(bpLine, 0)))]);
      const done = vscode.commands.executeCommand('trenv.debug', dir);
      const frame = await until(
        'the breakpoint',
        () => {
          const item = vscode.debug.activeStackItem;
          return item instanceof vscode.DebugStackFrame ? item : undefined;
        },
        30_000,
      );
      const session = frame.session;
      const st = await session.customRequest('stackTrace', { threadId: frame.threadId, levels: 1 });
      assert.equal(st.stackFrames[0].line, bpLine + 1);
      // /app/main.py in the sandbox is mapped to the workspace file (code-server passes the
      // remote workspace as a vscode-remote: path; desktop VS Code as a plain path)
      const src = String(st.stackFrames[0].source.path);
      assert.ok(src.endsWith(file), `sandbox /app mapped to the workspace: ${src}`);
      const scopes = await session.customRequest('scopes', { frameId: frame.frameId });
      const vars = await session.customRequest('variables', { variablesReference: scopes.scopes[0].variablesReference });
      assert.ok(vars.variables.some((v: { name: string }) => v.name === 'event'), JSON.stringify(vars.variables.map((v: { name: string }) => v.name)));
      vscode.debug.removeBreakpoints(vscode.debug.breakpoints);
      await session.customRequest('continue', { threadId: frame.threadId });
      await done;
    },
  ],
  [
    'a breakpoint in a Node handler is hit through VS Code\'s own node debugger',
    async () => {
      const dir = path.join(ws(), 'node-json-transform');
      const file = path.join(dir, 'index.js');
      const lines = fs.readFileSync(file, 'utf8').split('\n');
      const bpLine = lines.findIndex((l) => /exports\.handler\s*=/.test(l)) + 1; // first statement of the handler
      vscode.debug.addBreakpoints([new vscode.SourceBreakpoint(new vscode.Location(vscode.Uri.file(file), new vscode.Position(bpLine, 0)))]);
      const done = vscode.commands.executeCommand('trenv.debug', dir);
      const frame = await until(
        'the breakpoint in index.js',
        async () => {
          const item = vscode.debug.activeStackItem;
          if (!(item instanceof vscode.DebugStackFrame)) return undefined;
          try {
            const st = await item.session.customRequest('stackTrace', { threadId: item.threadId, levels: 1 });
            const top = st.stackFrames[0];
            return String(top?.source?.path ?? '').endsWith(path.join('node-json-transform', 'index.js')) && top.line === bpLine + 1 ? item : undefined;
          } catch {
            return undefined; // js-debug moves from its attach session to the target's: ask again
          }
        },
        30_000,
      );
      vscode.debug.removeBreakpoints(vscode.debug.breakpoints);
      await frame.session.customRequest('continue', { threadId: frame.threadId });
      await done;
    },
  ],
  [
    'the extension reconnects when the daemon restarts',
    async () => {
      const pid0 = ctx.status!.pid;
      process.kill(pid0, 'SIGTERM');
      await until('the disconnect', () => ctx.state !== 'connected', 15_000);
      const cli = path.join(vscode.extensions.getExtension('trenv.trenv')!.extensionPath, 'dist', 'trenv.js');
      const { spawnSync } = await import('node:child_process');
      const r = spawnSync(process.execPath, [cli, 'daemon', 'start'], { encoding: 'utf8', env: process.env });
      assert.equal(r.status, 0, r.stderr);
      await until('the reconnect to the new daemon', () => ctx.state === 'connected' && ctx.status?.pid !== pid0, 30_000);
    },
  ],
  [
    'a terminal opens a shell inside a sandbox',
    async () => {
      const t = (await vscode.commands.executeCommand('trenv.openTerminal', path.join(ws(), 'py-text-stats'))) as vscode.Terminal;
      assert.ok(t);
      assert.match(t.name, /TrEnv: py-text-stats/);
      t.dispose();
    },
  ],
];

export function run(): Promise<void> {
  return runSuite(tests);
}
