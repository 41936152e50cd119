/** Placeholder replaced when the webview panels land (see webview/). */
import * as vscode from 'vscode';
import type { Ctx } from './ctx';

export class Panels implements vscode.Disposable {
  constructor(private readonly ctx: Ctx, private readonly ext: vscode.ExtensionContext) {}
  followNext(_agentDir: string): void {}
  async showLogs(_id: string): Promise<void> {}
  async showTrace(_id: string): Promise<void> {}
  async showMemory(_id?: string): Promise<void> {}
  dispose(): void {}
}
