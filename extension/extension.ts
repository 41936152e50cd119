/**
 * TrEnv extension entry: a thin client of the trenv daemon. It owns the connection (Ctx), the
 * views, the commands and the webview panels; everything about sandboxes happens in the daemon.
 */
import * as vscode from 'vscode';
import { registerCommands } from './commands';
import { PYTHON_DEBUG_TYPE, TrenvPythonAdapterFactory } from './commands/debug';
import { Ctx } from './ctx';
import { Panels } from './panels';
import { statusBar } from './views/statusBar';
import { InvocationsTree, SandboxesTree } from './views/trees';

let ctx: Ctx | undefined;

export async function activate(ext: vscode.ExtensionContext): Promise<{ ctx: Ctx; panels: Panels; sandboxes: SandboxesTree }> {
  ctx = new Ctx(ext);
  const panels = new Panels(ctx, ext);
  const sandboxes = new SandboxesTree(ctx);
  ext.subscriptions.push(
    ctx,
    panels,
    statusBar(ctx),
    vscode.window.registerTreeDataProvider('trenv.sandboxes', sandboxes),
    vscode.window.registerTreeDataProvider('trenv.invocations', new InvocationsTree(ctx)),
    ...registerCommands(ctx, panels),
    vscode.debug.registerDebugAdapterDescriptorFactory(PYTHON_DEBUG_TYPE, new TrenvPythonAdapterFactory()),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration('trenv.stateDir')) void ctx?.restartDaemon();
    }),
  );
  void ctx.connect();
  // the API is for the extension-host tests
  return { ctx, panels, sandboxes };
}

export function deactivate(): void {
  ctx?.dispose();
  ctx = undefined;
}
