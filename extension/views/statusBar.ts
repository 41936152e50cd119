/** Status bar item: connection state, live sandboxes, total memory. Updated from events, no polling. */
import * as vscode from 'vscode';
import type { SandboxInfo } from '../../runtime-daemon/protocol/messages';
import type { Ctx } from '../ctx';

export function statusBar(ctx: Ctx): vscode.Disposable {
  const item = vscode.window.createStatusBarItem('trenv.status', vscode.StatusBarAlignment.Left, 50);
  item.name = 'TrEnv';
  item.command = 'trenv.showSandboxes';
  let sandboxes: SandboxInfo[] = [];
  const render = () => {
    if (ctx.state !== 'connected') {
      item.text = ctx.state === 'connecting' ? '$(sync~spin) TrEnv' : '$(debug-disconnect) TrEnv';
      item.tooltip = ctx.state === 'connecting' ? 'Connecting to the trenv daemon' : 'Not connected to the trenv daemon: click to see sandboxes, or run "TrEnv: Restart Daemon"';
      item.backgroundColor = ctx.state === 'disconnected' ? new vscode.ThemeColor('statusBarItem.warningBackground') : undefined;
    } else {
      const live = sandboxes.filter((s) => s.state !== 'destroyed');
      const busy = live.filter((s) => s.state === 'busy').length;
      const pss = live.reduce((a, s) => a + (s.memory?.pssKb ?? 0), 0);
      item.text = `$(server-process) TrEnv ${live.length} (${busy} busy) · ${(pss / 1024).toFixed(1)} MiB`;
      item.tooltip = `trenv daemon connected: ${live.length} sandboxes, ${busy} running, ${(pss / 1024).toFixed(1)} MiB PSS in total`;
      item.backgroundColor = undefined;
    }
    item.show();
  };
  const subs = [
    ctx.onState.event(async (s) => {
      if (s === 'connected') {
        try {
          sandboxes = await ctx.need().sendRequest('trenv/listSandboxes');
        } catch {
          /* next event */
        }
      }
      render();
    }),
    ctx.onSandboxes.event((s) => {
      sandboxes = s;
      render();
    }),
  ];
  render();
  return vscode.Disposable.from(item, ...subs);
}
