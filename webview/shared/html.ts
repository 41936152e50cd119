/**
 * The HTML document of a webview, shared by the extension host (extension/webviews/panels.ts) and
 * the browser preview test, so the test runs the bundles under exactly the CSP VS Code gets.
 * No DOM, no `vscode`: plain strings in, a string out.
 */
import type { ViewName } from './messages';

export interface WebviewHtmlOptions {
  view: ViewName;
  title: string;
  /** webview.cspSource (in the test: the origin serving dist/webview) */
  cspSource: string;
  nonce: string;
  scriptUri: string;
  styleUri: string;
}

export function contentSecurityPolicy(cspSource: string, nonce: string): string {
  return [
    `default-src 'none'`,
    `img-src ${cspSource} data:`,
    `style-src ${cspSource} 'nonce-${nonce}'`,
    `script-src 'nonce-${nonce}'`,
    `font-src ${cspSource}`,
  ].join('; ');
}

const esc = (s: string): string =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

export function renderWebviewHtml(o: WebviewHtmlOptions): string {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${esc(contentSecurityPolicy(o.cspSource, o.nonce))}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" nonce="${esc(o.nonce)}" href="${esc(o.styleUri)}">
<title>${esc(o.title)}</title>
</head>
<body data-view="${o.view}">
<div id="app"></div>
<script nonce="${esc(o.nonce)}" src="${esc(o.scriptUri)}"></script>
</body>
</html>
`;
}
