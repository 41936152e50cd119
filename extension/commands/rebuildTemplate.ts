/** TrEnv: Rebuild Memory Template — builds the agent's template now, with progress. */
import * as vscode from 'vscode';
import { Methods, Notifications, TemplateInfo } from '../../runtime-daemon/protocol/messages';
import type { Ctx } from '../ctx';
import { pickAgent } from './agents';

export async function rebuildTemplate(ctx: Ctx, arg: unknown): Promise<TemplateInfo | undefined> {
  const agentDir = await pickAgent(arg);
  if (!agentDir) return undefined;
  return vscode.window.withProgress({ location: vscode.ProgressLocation.Notification, title: 'TrEnv: building template' }, async (p) => {
    const client = ctx.need();
    const sub = client.onNotification(Notifications.progress, (m) => p.report({ message: m.message }));
    try {
      const t = await client.sendRequest(Methods.buildTemplate, { agentDir });
      void vscode.window.showInformationMessage(`Template ${t.name} built in ${t.buildMs} ms`);
      return t;
    } finally {
      sub.dispose();
    }
  });
}
