/** The command table: each command is a small function; all live under the "TrEnv" category. */
import * as vscode from 'vscode';
import { Methods } from '../../runtime-daemon/protocol/messages';
import type { Ctx } from '../ctx';
import type { Panels } from '../panels';
import { pickAgent } from './agents';
import { invoke } from './invoke';
import { debugAgent } from './debug';
import { openTerminal } from './terminal';

async function pickInvocation(ctx: Ctx, arg: unknown): Promise<string | undefined> {
  if (typeof arg === 'string') return arg;
  if (arg && typeof arg === 'object' && 'id' in arg) return String((arg as { id: string }).id);
  const list = await ctx.need().sendRequest(Methods.listInvocations, { limit: 50 });
  const pick = await vscode.window.showQuickPick(
    list.map((s) => ({ label: s.agent, description: `${s.state} · ${new Date(s.createdAt).toLocaleTimeString()}`, detail: s.id, id: s.id })),
    { placeHolder: 'Which invocation?' },
  );
  return pick?.id;
}

export function registerCommands(ctx: Ctx, panels: Panels): vscode.Disposable[] {
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
    'trenv.rebuildTemplate': async (arg) => {
      const agentDir = await pickAgent(arg);
      if (!agentDir) return undefined;
      return vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: 'TrEnv: building template' }, async (p) => {
        const sub = ctx.need().onNotification('trenv/progress', (m: { message: string }) => p.report({ message: m.message }));
        try {
          const t = await ctx.need().sendRequest(Methods.buildTemplate, { agentDir });
          void vscode.window.showInformationMessage(`Template ${t.name} built in ${t.buildMs} ms`);
          return t;
        } finally {
          sub.dispose();
        }
      });
    },
    'trenv.showLogs': async (arg) => {
      const id = await pickInvocation(ctx, arg);
      if (id) await panels.showLogs(id);
    },
    'trenv.showTrace': async (arg) => {
      const id = await pickInvocation(ctx, arg);
      if (id) await panels.showTrace(id);
    },
    'trenv.showMemory': async (arg) => panels.showMemory(typeof arg === 'string' ? arg : undefined),
    'trenv.openTerminal': (arg) => openTerminal(ctx, arg),
    'trenv.stopSandbox': async (arg) => {
      const id = typeof arg === 'object' && arg && 's' in arg ? (arg as { s: { invocationId?: string } }).s.invocationId : undefined;
      const inv = id ?? (await pickInvocation(ctx, undefined));
      if (!inv) return undefined;
      const r = await ctx.need().sendRequest(Methods.kill, { id: inv });
      void vscode.window.showInformationMessage(r.killed ? `Stopped ${inv}` : `${inv} is not running`);
      return r;
    },
    'trenv.restartDaemon': () => ctx.restartDaemon(),
    'trenv.showSandboxes': async () => vscode.commands.executeCommand('trenv.sandboxes.focus'),
  };
  return Object.entries(table).map(([id, fn]) => vscode.commands.registerCommand(id, wrap(fn)));
}
