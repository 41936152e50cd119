/** TrEnv: Show Browser (Live) — a read-only live view of a running agent's page in the shared browser. */
import * as vscode from 'vscode';
import { Methods } from '../../runtime-daemon/protocol/messages';
import type { Ctx } from '../ctx';
import type { Panels } from '../panels';

export async function showBrowser(ctx: Ctx, panels: Panels, arg: unknown): Promise<void> {
  const c = ctx.need();
  let id = typeof arg === 'string' ? arg : arg && typeof arg === 'object' && 'id' in arg ? String((arg as { id: string }).id) : undefined;
  const running = (await c.sendRequest(Methods.listInvocations, { limit: 50 })).filter((s) => s.state === 'running');
  if (!id) {
    if (!running.length) {
      void vscode.window.showInformationMessage('TrEnv: no invocation is running. Invoke an agent with "browser": true, then open its live view.');
      return;
    }
    const pick = await vscode.window.showQuickPick(
      running.map((s) => ({ label: s.agent, description: `running since ${new Date(s.createdAt).toLocaleTimeString()}`, detail: s.id, id: s.id })),
      { placeHolder: "Whose browser page?" },
    );
    id = pick?.id;
  }
  if (!id) return;
  const agent = running.find((s) => s.id === id)?.agent ?? 'agent';
  await panels.showBrowser(id, agent);
}
