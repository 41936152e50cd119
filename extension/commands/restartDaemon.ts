/** TrEnv: Restart Daemon — stops the daemon and connects again (starting it when allowed). */
import type { Ctx } from '../ctx';

export async function restartDaemon(ctx: Ctx): Promise<void> {
  await ctx.restartDaemon();
}
