/** TrEnv: Invoke — pick (or create) an event, invoke the agent, show its live logs. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as vscode from 'vscode';
import { InvocationRecord, Methods } from '../../runtime-daemon/protocol/messages';
import type { Ctx } from '../ctx';
import type { Panels } from '../panels';
import { pickAgent, savedEvents } from './agents';

export async function pickEvent(agentDir: string): Promise<unknown | undefined> {
  const saved = savedEvents(agentDir);
  const NEW = '$(add) New event…';
  const EMPTY = '$(circle-outline) Empty event {}';
  if (saved.length === 1) return JSON.parse(fs.readFileSync(saved[0], 'utf8'));
  const choice = await vscode.window.showQuickPick(
    [...saved.map((f) => ({ label: path.basename(f, '.json'), description: path.relative(agentDir, f), file: f })), { label: NEW }, { label: EMPTY }],
    { placeHolder: `Event for ${path.basename(agentDir)}` },
  );
  if (!choice) return undefined;
  if (choice.label === EMPTY) return {};
  if (choice.label === NEW) {
    const dir = path.join(agentDir, '.trenv', 'events');
    fs.mkdirSync(dir, { recursive: true });
    let n = 1;
    while (fs.existsSync(path.join(dir, `event-${n}.json`))) n++;
    const file = path.join(dir, `event-${n}.json`);
    fs.writeFileSync(file, JSON.stringify({ text: 'Hello from trenv.' }, null, 2) + '\n');
    await vscode.window.showTextDocument(vscode.Uri.file(file));
    void vscode.window.showInformationMessage(`Created ${path.relative(agentDir, file)}: edit it, then invoke again.`);
    return undefined;
  }
  const text = fs.readFileSync((choice as { file: string }).file, 'utf8');
  try {
    return JSON.parse(text);
  } catch (e) {
    void vscode.window.showErrorMessage(`${choice.label}.json is not valid JSON: ${(e as Error).message}`);
    return undefined;
  }
}

export async function invoke(ctx: Ctx, panels: Panels, arg: unknown, opts: { event?: unknown; sandbox?: 'vm' } = {}): Promise<InvocationRecord | undefined> {
  const agentDir = await pickAgent(arg);
  if (!agentDir) return undefined;
  const event = opts.event ?? (await pickEvent(agentDir));
  if (event === undefined) return undefined;
  const client = ctx.need();
  // the logs panel binds to this agent's next invocation as soon as the daemon announces it
  panels.followNext(agentDir);
  const rec = await client.sendRequest(Methods.invoke, { agentDir, event, sandbox: opts.sandbox });
  const msg = `${rec.agent}: ${rec.state} in ${rec.durationMs} ms`;
  if (rec.state === 'succeeded') void vscode.window.setStatusBarMessage(`$(pass) ${msg}`, 5000);
  else void vscode.window.showErrorMessage(`${msg}${rec.error ? ` — ${rec.error.type}: ${rec.error.message}` : ''}`, 'Show Trace').then((a) => a && panels.showTrace(rec.id));
  return rec;
}
