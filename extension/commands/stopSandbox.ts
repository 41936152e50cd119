/** TrEnv: Stop Invocation — kills a running invocation (its sandbox is cleaned and kept). */
import * as vscode from 'vscode';
import { Methods } from '../../runtime-daemon/protocol/messages';
import type { Ctx } from '../ctx';
import { pickInvocation } from './pickInvocation';

export async function stopSandbox(ctx: Ctx, arg: unknown): Promise<{ killed: boolean } | undefined> {
  const fromTree = typeof arg === 'object' && arg && 's' in arg ? (arg as { s: { invocationId?: string } }).s.invocationId : undefined;
  const id = fromTree ?? (await pickInvocation(ctx, arg));
  if (!id) return undefined;
  const r = await ctx.need().sendRequest(Methods.kill, { id });
  void vscode.window.showInformationMessage(r.killed ? `Stopped ${id}` : `${id} is not running`);
  return r;
}
