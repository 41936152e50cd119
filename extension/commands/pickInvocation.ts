/** Shared by commands: which invocation a command is about (tree item, id argument, or a pick). */
import * as vscode from 'vscode';
import { Methods } from '../../runtime-daemon/protocol/messages';
import type { Ctx } from '../ctx';

export async function pickInvocation(ctx: Ctx, arg: unknown): Promise<string | undefined> {
  if (typeof arg === 'string') return arg;
  if (arg && typeof arg === 'object' && 'id' in arg) return String((arg as { id: string }).id);
  const list = await ctx.need().sendRequest(Methods.listInvocations, { limit: 50 });
  const pick = await vscode.window.showQuickPick(
    list.map((s) => ({ label: s.agent, description: `${s.state} · ${new Date(s.createdAt).toLocaleTimeString()}`, detail: s.id, id: s.id })),
    { placeHolder: 'Which invocation?' },
  );
  return pick?.id;
}
