/**
 * Sandboxes tree (templates -> live sandboxes with state and memory) and Invocations tree (history
 * with state icons; click opens logs and trace). Refreshed from daemon notifications, no polling.
 */
import * as vscode from 'vscode';
import { InvocationSummary, Methods, SandboxInfo, TemplateInfo } from '../../runtime-daemon/protocol/messages';
import type { Ctx } from '../ctx';

const STATE_ICON: Record<string, [string, string?]> = {
  succeeded: ['pass', 'testing.iconPassed'],
  failed: ['error', 'testing.iconFailed'],
  timeout: ['watch', 'testing.iconFailed'],
  oom: ['flame', 'testing.iconFailed'],
  killed: ['circle-slash', 'testing.iconFailed'],
  'daemon-lost': ['debug-disconnect', 'testing.iconFailed'],
  running: ['sync~spin'],
  queued: ['clock'],
};

const mib = (kb?: number) => (kb === undefined ? '-' : `${(kb / 1024).toFixed(1)} MiB`);

type SbNode =
  | { kind: 'template'; t: TemplateInfo; children: SbNode[] }
  | { kind: 'sandbox'; s: SandboxInfo }
  | { kind: 'group'; label: string; children: SbNode[] };

export class SandboxesTree implements vscode.TreeDataProvider<SbNode> {
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChangeTreeData = this.changed.event;
  constructor(private readonly ctx: Ctx) {
    ctx.onSandboxes.event(() => this.changed.fire());
    ctx.onState.event(() => this.changed.fire());
  }
  refresh(): void {
    this.changed.fire();
  }
  /** Templates with the sandboxes their instances ran in, then the sandboxes of cold starts. */
  async getChildren(node?: SbNode): Promise<SbNode[]> {
    if (node && node.kind !== 'sandbox') return node.children;
    if (node) return [];
    if (this.ctx.state !== 'connected') return [];
    const c = this.ctx.need();
    const [templates, sandboxes] = await Promise.all([c.sendRequest(Methods.listTemplates), c.sendRequest(Methods.listSandboxes)]);
    const of = (name?: string) => sandboxes.filter((s) => s.template === name).map((s) => ({ kind: 'sandbox' as const, s }));
    const cold = sandboxes.filter((s) => !s.template || !templates.some((t) => t.name === s.template));
    return [
      ...templates.map((t) => ({ kind: 'template' as const, t, children: of(t.name) })),
      { kind: 'group', label: `Sandboxes without a template (${cold.length})`, children: cold.map((s) => ({ kind: 'sandbox' as const, s })) },
    ];
  }
  getTreeItem(n: SbNode): vscode.TreeItem {
    if (n.kind === 'group') return new vscode.TreeItem(n.label, vscode.TreeItemCollapsibleState.Expanded);
    if (n.kind === 'template') {
      const it = new vscode.TreeItem(n.t.name, n.children.length ? vscode.TreeItemCollapsibleState.Expanded : vscode.TreeItemCollapsibleState.None);
      it.description = `${n.t.kind} · ${n.t.live ? 'live' : 'stopped'} · ${mib(n.t.memory?.pssKb)}`;
      it.iconPath = new vscode.ThemeIcon('layers');
      it.tooltip = `${n.t.runtimeVersion}, built ${new Date(n.t.builtAt).toLocaleString()} in ${n.t.buildMs} ms\npreload: ${n.t.preload.join(', ') || '-'}`;
      it.contextValue = 'template';
      return it;
    }
    const s = n.s;
    const it = new vscode.TreeItem(s.id);
    if (s.kind === 'vm') {
      // a microVM: warm (a clone waiting in the pool) or busy; it serves one invocation
      it.description = `microVM · ${s.state === 'idle' ? 'warm' : s.state} · ${mib(s.memory?.pssKb)}`;
      it.iconPath = new vscode.ThemeIcon(s.state === 'busy' ? 'play-circle' : 'server-environment');
      it.tooltip = `${s.template ? `clone of ${s.template}` : 'cold boot'}\nQEMU pid ${s.hostPid}`;
      it.contextValue = 'vm';
      return it;
    }
    it.description = `${s.state}${s.agent ? ` · ${s.agent}` : ''} · ${mib(s.memory?.pssKb)} · ${s.uses} use${s.uses === 1 ? '' : 's'}`;
    it.iconPath = new vscode.ThemeIcon(s.state === 'busy' ? 'play-circle' : 'vm');
    it.tooltip = `${s.poolKey}\ninit pid ${s.hostPid}`;
    it.contextValue = 'sandbox';
    return it;
  }
}

export class InvocationsTree implements vscode.TreeDataProvider<InvocationSummary> {
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChangeTreeData = this.changed.event;
  private items: InvocationSummary[] = [];
  constructor(private readonly ctx: Ctx) {
    ctx.onInvocation.event((s) => {
      const i = this.items.findIndex((x) => x.id === s.id);
      if (i >= 0) this.items[i] = s;
      else this.items.unshift(s);
      this.items = this.items.slice(0, 200);
      this.changed.fire();
    });
    ctx.onState.event(async (st) => {
      if (st === 'connected') {
        this.items = await ctx.need().sendRequest(Methods.listInvocations, { limit: 200 });
      }
      this.changed.fire();
    });
  }
  getChildren(node?: InvocationSummary): InvocationSummary[] {
    return node ? [] : this.items;
  }
  getTreeItem(s: InvocationSummary): vscode.TreeItem {
    const it = new vscode.TreeItem(s.agent);
    const [icon, color] = STATE_ICON[s.state] ?? ['question'];
    it.iconPath = new vscode.ThemeIcon(icon, color ? new vscode.ThemeColor(color) : undefined);
    it.description = `${s.state}${s.durationMs !== undefined ? ` · ${s.durationMs} ms` : ''} · ${s.start ?? ''}${s.template ? ' + template' : ''}`;
    it.tooltip = `${s.id}\n${new Date(s.createdAt).toLocaleString()}${s.error ? `\n${s.error.type}: ${s.error.message}` : ''}`;
    it.command = { command: 'trenv.showLogs', title: 'Show Logs', arguments: [s.id] };
    it.contextValue = 'invocation';
    it.id = s.id;
    return it;
  }
}
