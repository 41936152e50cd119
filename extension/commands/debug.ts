/** TrEnv: Debug — not in this version: the daemon cannot yet start a handler under debugpy / the Node inspector. */
import * as vscode from 'vscode';
import type { Ctx } from '../ctx';
import type { Panels } from '../panels';

export async function debugAgent(_ctx: Ctx, _panels: Panels, _arg: unknown): Promise<void> {
  void vscode.window.showWarningMessage(
    'TrEnv: debugging a handler inside its sandbox is not available in this version yet (the daemon does not start handlers under debugpy or the Node inspector). Use "TrEnv: Invoke" and the logs and trace views meanwhile.',
  );
}
