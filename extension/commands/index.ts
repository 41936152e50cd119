/** The command table: each command lives in its own file; all are in the palette's "TrEnv" category. */
import * as vscode from 'vscode';
import type { Ctx } from '../ctx';
import type { Panels } from '../panels';
import { debugAgent } from './debug';
import { invoke } from './invoke';
import { rebuildTemplate } from './rebuildTemplate';
import { restartDaemon } from './restartDaemon';
import { showBrowser } from './showBrowser';
import { showLogs } from './showLogs';
import { showMemory } from './showMemory';
import { showTrace } from './showTrace';
import { stopSandbox } from './stopSandbox';
import { openTerminal } from './terminal';

export function registerCommands(ctx: Ctx, panels: Panels): vscode.Disposable[] {
  // errors become a message and a log line, never an unhandled rejection in the extension host
  const wrap = (fn: (...a: unknown[]) => Promise<unknown>) => async (...a: unknown[]) => {
    try {
      return await fn(...a);
    } catch (e) {
      ctx.log.error((e as Error).message);
      void vscode.window.showErrorMessage((e as Error).message);
      return undefined;
    }
  };
  const table: Record<string, (...a: unknown[]) => Promise<unknown>> = {
    'trenv.invoke': (arg, event) => invoke(ctx, panels, arg, { event }),
    'trenv.invokeVm': (arg) => invoke(ctx, panels, arg, { sandbox: 'vm' }),
    'trenv.debug': (arg) => debugAgent(ctx, panels, arg),
    'trenv.rebuildTemplate': (arg) => rebuildTemplate(ctx, arg),
    'trenv.showLogs': (arg) => showLogs(ctx, panels, arg),
    'trenv.showTrace': (arg) => showTrace(ctx, panels, arg),
    'trenv.showMemory': (arg) => showMemory(panels, arg),
    'trenv.showBrowser': (arg) => showBrowser(ctx, panels, arg),
    'trenv.openTerminal': (arg) => openTerminal(ctx, arg),
    'trenv.stopSandbox': (arg) => stopSandbox(ctx, arg),
    'trenv.restartDaemon': () => restartDaemon(ctx),
    'trenv.showSandboxes': async () => vscode.commands.executeCommand('trenv.sandboxes.focus'),
  };
  return Object.entries(table).map(([id, fn]) => vscode.commands.registerCommand(id, wrap(fn)));
}
