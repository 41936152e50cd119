/** TrEnv: Show Logs — the logs webview of an invocation (live while it runs). */
import type { Ctx } from '../ctx';
import type { Panels } from '../panels';
import { pickInvocation } from './pickInvocation';

export async function showLogs(ctx: Ctx, panels: Panels, arg: unknown): Promise<void> {
  const id = await pickInvocation(ctx, arg);
  if (id) await panels.showLogs(id);
}
