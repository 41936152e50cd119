/** TrEnv: Show Restore Trace — the step-through restore trace of an invocation. */
import type { Ctx } from '../ctx';
import type { Panels } from '../panels';
import { pickInvocation } from './pickInvocation';

export async function showTrace(ctx: Ctx, panels: Panels, arg: unknown): Promise<void> {
  const id = await pickInvocation(ctx, arg);
  if (id) await panels.showTrace(id);
}
