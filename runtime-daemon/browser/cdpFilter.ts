/**
 * The isolation rules of the per-agent CDP proxy, as pure decisions (no sockets here, so they are
 * unit-testable). An agent owns browser contexts (the one made for its sandbox and any it creates),
 * the targets in them and the sessions attached to those targets; it sees and touches nothing else.
 *
 * Commands are decided by `decide`: forward (possibly rewritten), answer locally, or refuse with a
 * CDP-style error. Events from the browser are kept or dropped by `keepEvent`.
 */
import * as path from 'node:path';

export interface CdpMessage {
  id?: number;
  method?: string;
  params?: Record<string, unknown>;
  sessionId?: string;
  result?: Record<string, unknown>;
  error?: { code: number; message: string };
}

export interface Ownership {
  /** the context made for the sandbox: what "no browserContextId" means for this agent */
  defaultContext: string;
  contexts: Set<string>;
  /** targetId -> browserContextId, for targets this agent may know about */
  targets: Map<string, string>;
  sessions: Set<string>;
  /** where downloads may go (host path) */
  downloadsDir: string;
}

export type Decision =
  | { action: 'forward'; msg: CdpMessage; after?: 'createContext' | 'getTargets' | 'getBrowserContexts' }
  | { action: 'answer'; result: Record<string, unknown> }
  | { action: 'refuse'; message: string }
  /** the target's context is not known yet: ask the broker, then decide again */
  | { action: 'lookup'; targetId: string };

/** Browser-wide commands no agent may send. */
const FORBIDDEN = new Set([
  'Browser.close',
  'Browser.crash',
  'Browser.crashGpuProcess',
  'Browser.executeBrowserCommand',
  'Browser.setDockTile',
  'Target.attachToBrowserTarget',
  'Target.exposeDevToolsProtocol',
  'Target.sendMessageToTarget',
  'Target.setRemoteLocations',
  'Target.openDevTools',
  'Tethering.bind',
  'Tethering.unbind',
  'SystemInfo.getProcessInfo',
]);

/** Browser-level methods that act on a browser context: no id means the agent's own. */
const CONTEXT_SCOPED = new Set([
  'Target.createTarget',
  'Storage.getCookies',
  'Storage.setCookies',
  'Storage.clearCookies',
  'Browser.setDownloadBehavior',
  'Browser.grantPermissions',
  'Browser.resetPermissions',
  'Browser.setPermission',
  'Browser.cancelDownload',
]);

/** Methods naming a target by `targetId` that the agent must own. */
const TARGET_SCOPED = new Set([
  'Target.attachToTarget',
  'Target.closeTarget',
  'Target.activateTarget',
  'Target.getTargetInfo',
  'Target.autoAttachRelated',
  'Browser.getWindowForTarget',
]);

const ALLOWED_SCHEMES = new Set(['http:', 'https:', 'about:', 'data:', 'blob:']);

/** Local schemes (file:, chrome:, devtools:, view-source: ...) are refused; web and blank pages pass. */
export function urlAllowed(url: unknown): boolean {
  if (url === undefined || url === '') return true;
  if (typeof url !== 'string') return false;
  try {
    return ALLOWED_SCHEMES.has(new URL(url).protocol);
  } catch {
    return false;
  }
}

/**
 * Targets an agent may see in its own contexts: not Chromium's own WebUI (each new context gets
 * chrome:// "browser_ui" targets such as the omnibox popup, with privileged bindings).
 */
export function visibleTarget(info: { type?: string; url?: string } | undefined): boolean {
  if (!info || info.type === 'browser_ui' || info.type === 'browser') return false;
  return !info.url || urlAllowed(info.url);
}

function err(message: string): Decision {
  return { action: 'refuse', message };
}

export function decide(msg: CdpMessage, own: Ownership): Decision {
  const method = msg.method ?? '';
  const p = { ...(msg.params ?? {}) };
  if (msg.sessionId && !own.sessions.has(msg.sessionId)) return err(`Session with given id not found.`);
  if (FORBIDDEN.has(method)) return err(`${method} is not allowed through trenv's shared browser (it would affect other agents)`);
  if (method.startsWith('Storage.') && !msg.sessionId && !CONTEXT_SCOPED.has(method)) {
    return err(`${method} at the browser level is not allowed through trenv's shared browser: call it on your page's session`);
  }
  if (CONTEXT_SCOPED.has(method)) {
    const ctx = p.browserContextId;
    if (ctx === undefined) p.browserContextId = own.defaultContext;
    else if (typeof ctx !== 'string' || !own.contexts.has(ctx)) return err('Failed to find browser context with id ' + String(ctx));
  }
  if (method === 'Target.createTarget' && !urlAllowed(p.url)) return err(`URL ${String(p.url)} is blocked: only http(s), about:, data: and blob: pages`);
  if (method === 'Page.navigate' && !urlAllowed(p.url)) return err(`URL ${String(p.url)} is blocked: only http(s), about:, data: and blob: pages`);
  if (method === 'Browser.setDownloadBehavior' || method === 'Page.setDownloadBehavior') {
    const behavior = p.behavior;
    if (behavior === 'allow' || behavior === 'allowAndName') {
      // the agent's path names a place in ITS file system (e.g. playwright's artifacts dir in the
      // sandbox's /tmp), not the host's: downloads are confined to the sandbox's own dir, always
      const dp = typeof p.downloadPath === 'string' ? path.resolve(p.downloadPath) : own.downloadsDir;
      p.downloadPath = dp === own.downloadsDir || dp.startsWith(own.downloadsDir + path.sep) ? dp : own.downloadsDir;
    }
  }
  if (TARGET_SCOPED.has(method) && typeof p.targetId === 'string') {
    const ctx = own.targets.get(p.targetId);
    if (ctx === undefined) return { action: 'lookup', targetId: p.targetId };
    if (!own.contexts.has(ctx)) return err('No target with given id found');
  }
  if (method === 'Target.detachFromTarget' && typeof p.sessionId === 'string' && !own.sessions.has(p.sessionId)) return err('No session with given id found');
  if (method === 'Target.disposeBrowserContext') {
    if (typeof p.browserContextId !== 'string' || !own.contexts.has(p.browserContextId) || p.browserContextId === own.defaultContext) {
      return err('Failed to find context with id ' + String(p.browserContextId));
    }
  }
  if (method === 'Target.getBrowserContexts') return { action: 'answer', result: { browserContextIds: [...own.contexts].filter((c) => c !== own.defaultContext) } };
  const out: CdpMessage = { ...msg, params: p };
  if (method === 'Target.createBrowserContext') return { action: 'forward', msg: out, after: 'createContext' };
  if (method === 'Target.getTargets') return { action: 'forward', msg: out, after: 'getTargets' };
  return { action: 'forward', msg: out };
}

/** Applies what a response teaches (a new own context) and filters what it shows. */
export function filterResponse(after: Decision & { action: 'forward' }, res: CdpMessage, own: Ownership): CdpMessage {
  if (!res.result) return res;
  if (after.after === 'createContext' && typeof res.result.browserContextId === 'string') own.contexts.add(res.result.browserContextId);
  if (after.after === 'getTargets' && Array.isArray(res.result.targetInfos)) {
    const infos = (res.result.targetInfos as Array<{ targetId: string; browserContextId?: string; type?: string; url?: string }>).filter((t) => {
      if (!t.browserContextId || !own.contexts.has(t.browserContextId) || !visibleTarget(t)) return false;
      own.targets.set(t.targetId, t.browserContextId);
      return true;
    });
    return { ...res, result: { ...res.result, targetInfos: infos } };
  }
  return res;
}

export type EventVerdict = 'keep' | 'drop' | { release: { sessionId: string; waiting: boolean } };

/**
 * Keeps an event from the browser for this agent or drops it. A foreign target the agent's
 * connection got auto-attached to must be released (resumed and detached) or it would wait for
 * this agent's debugger forever.
 */
export function keepEvent(ev: CdpMessage, own: Ownership): EventVerdict {
  const method = ev.method ?? '';
  if (ev.sessionId && !own.sessions.has(ev.sessionId)) return 'drop';
  const p = ev.params ?? {};
  const info = p.targetInfo as { targetId?: string; browserContextId?: string; type?: string; url?: string } | undefined;
  const mine = (i?: { browserContextId?: string; type?: string; url?: string }) => !!i?.browserContextId && own.contexts.has(i.browserContextId) && visibleTarget(i);
  switch (method) {
    case 'Target.targetCreated':
    case 'Target.targetInfoChanged':
      if (!mine(info)) return 'drop';
      own.targets.set(info!.targetId!, info!.browserContextId!);
      return 'keep';
    case 'Target.targetDestroyed':
    case 'Target.targetCrashed':
      return own.targets.has(p.targetId as string) ? 'keep' : 'drop';
    case 'Target.attachedToTarget': {
      const sid = p.sessionId as string;
      if (info?.type === 'browser') return { release: { sessionId: sid, waiting: false } };
      if (!mine(info)) return { release: { sessionId: sid, waiting: !!p.waitingForDebugger } };
      own.targets.set(info!.targetId!, info!.browserContextId!);
      own.sessions.add(sid);
      return 'keep';
    }
    case 'Target.detachedFromTarget': {
      const sid = p.sessionId as string;
      if (!own.sessions.has(sid)) return 'drop';
      own.sessions.delete(sid);
      return 'keep';
    }
    default:
      return 'keep';
  }
}
