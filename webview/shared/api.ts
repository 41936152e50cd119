/**
 * The webview side of the typed message layer: `connect('logs')` gives a `post` that only accepts
 * that view's outgoing messages, an `onMessage` that hands over its incoming ones, and the
 * persisted state (vscode.getState/setState: survives a reload of the webview, not a VS Code restart).
 */
import { FromWebview, isMessage, ToWebview, ViewName } from './messages';

interface VsCodeApi {
  postMessage(message: unknown): void;
  getState(): unknown;
  setState(state: unknown): void;
}
declare function acquireVsCodeApi(): VsCodeApi;

export interface WebviewConnection<V extends ViewName, S> {
  post(msg: FromWebview<V>): void;
  onMessage(handler: (msg: ToWebview<V>) => void): void;
  getState(): S | undefined;
  setState(state: S): void;
}

let api: VsCodeApi | undefined; // acquireVsCodeApi() may be called only once per document

export function connect<V extends ViewName, S>(_view: V): WebviewConnection<V, S> {
  api ??= acquireVsCodeApi();
  const vs = api;
  return {
    post: (msg) => vs.postMessage(msg),
    onMessage: (handler) =>
      window.addEventListener('message', (e: MessageEvent) => {
        if (isMessage(e.data)) handler(e.data as ToWebview<V>);
      }),
    getState: () => (vs.getState() as S | null) ?? undefined,
    setState: (s) => vs.setState(s),
  };
}
