/**
 * TrEnv: Debug — runs the handler in a sandbox under its debugger and attaches VS Code:
 * Python through debugpy (a DAP server: our `trenv-python` debug type connects VS Code to it
 * directly, no Python extension needed), Node through the inspector (VS Code's built-in `node`
 * attach). The daemon relays the debugger's port from the sandbox's loopback to the host; paths
 * map from /app in the sandbox to the agent folder in the workspace.
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import { DebugReady, Methods, Notifications } from '../../runtime-daemon/protocol/messages';
import type { Ctx } from '../ctx';
import type { Panels } from '../panels';
import { pickAgent } from './agents';
import { pickEvent } from './invoke';

export const PYTHON_DEBUG_TYPE = 'trenv-python';

/** VS Code talks DAP straight to debugpy's listening adapter (relayed to a host port). */
export class TrenvPythonAdapterFactory implements vscode.DebugAdapterDescriptorFactory {
  createDebugAdapterDescriptor(session: vscode.DebugSession): vscode.DebugAdapterDescriptor {
    const { host, port } = (session.configuration.connect ?? {}) as { host?: string; port?: number };
    if (!port) throw new Error('trenv-python: missing connect.port');
    return new vscode.DebugAdapterServer(port, host ?? '127.0.0.1');
  }
}

export function debugConfiguration(r: DebugReady): vscode.DebugConfiguration {
  const name = `TrEnv: ${path.basename(r.agentDir)}`;
  if (r.runtime === 'python') {
    return {
      type: PYTHON_DEBUG_TYPE,
      request: 'attach',
      name,
      connect: { host: '127.0.0.1', port: r.port },
      pathMappings: [{ localRoot: r.agentDir, remoteRoot: r.remoteRoot }],
      justMyCode: true,
    };
  }
  return {
    type: 'node',
    request: 'attach',
    name,
    address: '127.0.0.1',
    port: r.port,
    localRoot: r.agentDir,
    remoteRoot: r.remoteRoot,
    continueOnAttach: true,
    skipFiles: ['<node_internals>/**', '/opt/trenv/**'],
  };
}

export async function debugAgent(ctx: Ctx, panels: Panels, arg: unknown): Promise<void> {
  const agentDir = await pickAgent(arg);
  if (!agentDir) return;
  const event = await pickEvent(agentDir);
  if (event === undefined) return;
  const client = ctx.need();
  const folder = vscode.workspace.getWorkspaceFolder(vscode.Uri.file(agentDir));
  const attached = new Promise<void>((resolve) => {
    const sub = client.onNotification(Notifications.debugReady, async (r: DebugReady) => {
      if (r.agentDir !== agentDir) return;
      sub.dispose();
      const ok = await vscode.debug.startDebugging(folder, debugConfiguration(r));
      if (!ok) void vscode.window.showErrorMessage(`TrEnv: could not attach the debugger to ${path.basename(agentDir)}`);
      resolve();
    });
  });
  panels.followNext(agentDir);
  const rec = await client.sendRequest(Methods.invoke, { agentDir, event, debug: true });
  await attached;
  void vscode.window.setStatusBarMessage(`TrEnv debug: ${rec.agent} ${rec.state}`, 5000);
}
