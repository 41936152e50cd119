/** Shared by commands: which agent a command is about (code-lens argument, active editor, or a pick). */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { agentDirOf } from '../../runtime-daemon/manifest/agentDir';

export const agentDirOfFile = agentDirOf;

export async function pickAgent(arg?: unknown): Promise<string | undefined> {
  if (typeof arg === 'string' && fs.existsSync(path.join(arg, 'trenv.json'))) return arg;
  if (arg instanceof vscode.Uri) return agentDirOfFile(arg.fsPath);
  const active = vscode.window.activeTextEditor?.document.uri;
  if (active?.scheme === 'file') {
    const d = agentDirOfFile(active.fsPath);
    if (d) return d;
  }
  const manifests = await vscode.workspace.findFiles('**/trenv.json', '**/node_modules/**', 200);
  if (!manifests.length) {
    void vscode.window.showWarningMessage('No agents in this workspace: an agent is a folder with a trenv.json.');
    return undefined;
  }
  const items = manifests.map((u) => ({ label: path.basename(path.dirname(u.fsPath)), description: vscode.workspace.asRelativePath(path.dirname(u.fsPath)), dir: path.dirname(u.fsPath) }));
  if (items.length === 1) return items[0].dir;
  return (await vscode.window.showQuickPick(items, { placeHolder: 'Which agent?' }))?.dir;
}

/** Saved events of an agent: .trenv/events/*.json */
export function savedEvents(agentDir: string): string[] {
  const d = path.join(agentDir, '.trenv', 'events');
  try {
    return fs
      .readdirSync(d)
      .filter((n) => n.endsWith('.json'))
      .sort()
      .map((n) => path.join(d, n));
  } catch {
    return [];
  }
}
