/** TrEnv: Open Terminal in Sandbox — not in this version: the daemon has no pty bridge into sandboxes yet. */
import * as vscode from 'vscode';
import type { Ctx } from '../ctx';

export async function openTerminal(_ctx: Ctx, _arg: unknown): Promise<void> {
  void vscode.window.showWarningMessage('TrEnv: terminals inside sandboxes are not available in this version yet (no pty bridge in the daemon).');
}
