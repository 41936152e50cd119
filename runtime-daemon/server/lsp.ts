/**
 * The daemon is a language server for agent folders (every client connection is an LSP connection
 * too; clients that never send `initialize`, like the CLI, just use the custom trenv/ methods):
 *  - code lenses above an agent's handler: ▶ Invoke, Debug
 *  - diagnostics for trenv.json (JSON errors, schema errors, handler file/function not found)
 *  - hovers on manifest fields (the schema's descriptions)
 * The watchdog is our own: an LSP `exit` or a vanished editor process closes that client's
 * connection, never the daemon (vscode-languageserver's node default would exit the process).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as jsonc from 'jsonc-parser';
import {
  CodeLens,
  createConnection,
  createProtocolConnection,
  DiagnosticSeverity,
  Hover,
  MessageReader,
  MessageWriter,
  TextDocuments,
  TextDocumentSyncKind,
  type Connection,
  type Diagnostic as LspDiagnostic,
} from 'vscode-languageserver';
import { TextDocument } from 'vscode-languageserver-textdocument';
import { agentDirOf } from '../manifest/agentDir';
import { checkManifestText, Manifest, parseManifestText } from '../manifest/manifest';
import schema from '../protocol/trenv.schema.json';

export const LensCommands = { invoke: 'trenv.invoke', debug: 'trenv.debug', invokeVm: 'trenv.invokeVm' } as const;

export function createClientConnection(reader: MessageReader, writer: MessageWriter, close: () => void): Connection {
  let shutdown = false;
  const watchDog = {
    initialize: () => undefined,
    get shutdownReceived() {
      return shutdown;
    },
    set shutdownReceived(v: boolean) {
      shutdown = v;
    },
    exit: () => close(),
  };
  // The protocol connection logs through a local no-op logger: vscode-languageserver's default is
  // the remote console, which sends over this very connection — after the peer is gone every send
  // fails and logs again, in a loop.
  const quiet = { error: () => undefined, warn: () => undefined, info: () => undefined, log: () => undefined };
  const conn = createConnection(() => createProtocolConnection(reader, writer, quiet), watchDog) as unknown as Connection;
  return conn;
}

function readManifestLoose(dir: string): Manifest | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, 'trenv.json'), 'utf8')) as Manifest;
  } catch {
    return undefined;
  }
}

/** The 0-based line where the handler function is defined, if this file is an agent's handler. */
export function handlerLine(file: string, text: string): { agentDir: string; line: number; fn: string } | undefined {
  const agentDir = agentDirOf(file);
  if (!agentDir) return undefined;
  const m = readManifestLoose(agentDir);
  if (!m || typeof m.handler !== 'string' || !m.handler.includes(':')) return undefined;
  const [hf, fn] = m.handler.split(':');
  if (path.resolve(agentDir, hf) !== path.resolve(file)) return undefined;
  const esc = fn.replace(/[$]/g, '\\$');
  const re =
    m.runtime === 'python'
      ? new RegExp(`^\\s*(async\\s+)?def\\s+${esc}\\s*\\(`)
      : new RegExp(`(function\\s*\\*?\\s+${esc}\\b|\\b(const|let|var)\\s+${esc}\\s*=|exports\\.${esc}\\s*=|^\\s*(async\\s+)?${esc}\\s*\\()`);
  const lines = text.split('\n');
  const i = lines.findIndex((l) => re.test(l));
  return { agentDir, line: Math.max(0, i), fn };
}

/** `vmAvailable`: offer "▶ Invoke in microVM" (only when this daemon can start microVMs). */
export function codeLenses(file: string, text: string, vmAvailable = false): CodeLens[] {
  const h = handlerLine(file, text);
  if (!h) return [];
  const range = { start: { line: h.line, character: 0 }, end: { line: h.line, character: 0 } };
  return [
    { range, command: { title: '▶ Invoke', command: LensCommands.invoke, arguments: [h.agentDir] } },
    ...(vmAvailable ? [{ range, command: { title: '▶ Invoke in microVM', command: LensCommands.invokeVm, arguments: [h.agentDir] } }] : []),
    { range, command: { title: 'Debug', command: LensCommands.debug, arguments: [h.agentDir] } },
  ];
}

function rangeOf(doc: TextDocument, root: jsonc.Node | undefined, pointer: string) {
  const segs = pointer.split('/').filter(Boolean).map((s) => (/^\d+$/.test(s) ? Number(s) : s));
  let node = root ? jsonc.findNodeAtLocation(root, segs) : undefined;
  // a missing field: point at its parent object; an unknown one: at its key
  while (!node && segs.length && root) {
    segs.pop();
    node = jsonc.findNodeAtLocation(root, segs);
  }
  const target = node?.parent?.type === 'property' ? node.parent.children![0] : node;
  if (!target) return { start: doc.positionAt(0), end: doc.positionAt(0) };
  return { start: doc.positionAt(target.offset), end: doc.positionAt(target.offset + target.length) };
}

export function manifestDiagnostics(doc: TextDocument, file: string): LspDiagnostic[] {
  const text = doc.getText();
  const parsed = parseManifestText(text);
  const out: LspDiagnostic[] = [];
  if (parsed.diagnostics.length) {
    const errors: jsonc.ParseError[] = [];
    jsonc.parse(text, errors);
    const e = errors[0];
    const start = doc.positionAt(e?.offset ?? 0);
    const end = doc.positionAt((e?.offset ?? 0) + (e?.length ?? 1));
    return [{ range: { start, end }, severity: DiagnosticSeverity.Error, source: 'trenv', message: parsed.diagnostics[0].message }];
  }
  const root = jsonc.parseTree(text);
  for (const d of checkManifestText(path.dirname(file), text).diagnostics) {
    out.push({
      range: rangeOf(doc, root, d.path),
      severity: d.severity === 'error' ? DiagnosticSeverity.Error : DiagnosticSeverity.Warning,
      source: 'trenv',
      message: d.message,
    });
  }
  return out;
}

type SchemaNode = { description?: string; properties?: Record<string, SchemaNode>; default?: unknown; enum?: unknown[] };

export function manifestHover(doc: TextDocument, offset: number): Hover | undefined {
  const loc = jsonc.getLocation(doc.getText(), offset);
  if (!loc.path.length) return undefined;
  let node: SchemaNode | undefined = schema as SchemaNode;
  for (const seg of loc.path) {
    if (typeof seg !== 'string') return undefined;
    node = node?.properties?.[seg];
  }
  if (!node?.description) return undefined;
  const extra = [node.enum ? `one of: ${node.enum.map((v) => `\`${JSON.stringify(v)}\``).join(', ')}` : '', node.default !== undefined && typeof node.default !== 'object' ? `default: \`${JSON.stringify(node.default)}\`` : '']
    .filter(Boolean)
    .join(' · ');
  return { contents: { kind: 'markdown', value: `**${loc.path.join('.')}** — ${node.description}${extra ? `\n\n${extra}` : ''}` } };
}

/** Registers the language features on one client connection. */
export function serveLanguageFeatures(conn: Connection, vmAvailable: () => boolean = () => false): void {
  const documents = new TextDocuments(TextDocument);
  const fileOf = (uri: string) => (uri.startsWith('file:') ? fileURLToPath(uri) : undefined);
  conn.onInitialize(() => ({
    capabilities: {
      textDocumentSync: TextDocumentSyncKind.Incremental,
      codeLensProvider: { resolveProvider: false },
      hoverProvider: true,
    },
    serverInfo: { name: 'trenvd' },
  }));
  const validate = (doc: TextDocument) => {
    const file = fileOf(doc.uri);
    if (!file || path.basename(file) !== 'trenv.json') return;
    void conn.sendDiagnostics({ uri: doc.uri, diagnostics: manifestDiagnostics(doc, file) });
  };
  documents.onDidChangeContent((e) => validate(e.document));
  documents.onDidClose((e) => {
    if (fileOf(e.document.uri)?.endsWith('trenv.json')) void conn.sendDiagnostics({ uri: e.document.uri, diagnostics: [] });
  });
  conn.onCodeLens((p) => {
    const doc = documents.get(p.textDocument.uri);
    const file = fileOf(p.textDocument.uri);
    if (!doc || !file) return [];
    return codeLenses(file, doc.getText(), vmAvailable());
  });
  conn.onHover((p) => {
    const doc = documents.get(p.textDocument.uri);
    const file = fileOf(p.textDocument.uri);
    if (!doc || !file || path.basename(file) !== 'trenv.json') return undefined;
    return manifestHover(doc, doc.offsetAt(p.position));
  });
  documents.listen(conn);
}

export { pathToFileURL };
