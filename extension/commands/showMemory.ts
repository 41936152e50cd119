/** TrEnv: Show Memory — live memory charts of the sandboxes, with the cold-start baseline. */
import type { Panels } from '../panels';

export async function showMemory(panels: Panels, arg: unknown): Promise<void> {
  await panels.showMemory(typeof arg === 'string' ? arg : undefined);
}
