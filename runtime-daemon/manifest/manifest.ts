/**
 * Loading and validating `trenv.json` against the JSON Schema shipped in protocol/ (the extension
 * registers the same schema). Errors name the field and say how to fix it.
 */
import Ajv, { ErrorObject } from 'ajv';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Diagnostic } from '../protocol/messages';
import schema from '../protocol/trenv.schema.json';

export interface Manifest {
  name: string;
  runtime: 'python' | 'node';
  handler: string;
  description?: string;
  limits: { memoryMb: number; pids: number; timeoutMs: number; tmpfsMb: number; vcpus?: number };
  network: 'none' | 'egress';
  env: Record<string, string>;
  preload: string[];
  sandbox: 'container' | 'vm';
  browser: boolean;
}

export interface LoadedAgent {
  dir: string;
  manifest: Manifest;
  handlerFile: string;
  handlerFunction: string;
}

export class ManifestError extends Error {
  constructor(readonly dir: string, readonly diagnostics: Diagnostic[]) {
    super(`${path.join(dir, 'trenv.json')}: ${diagnostics.map((d) => `${d.path || '(top)'}: ${d.message}`).join('; ')}`);
  }
}

export class AgentNotFoundError extends Error {}

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false });
const validate = ajv.compile(schema);

function fieldPath(e: ErrorObject): string {
  const base = e.instancePath || '';
  if (e.keyword === 'required') return `${base}/${(e.params as { missingProperty: string }).missingProperty}`;
  if (e.keyword === 'additionalProperties') return `${base}/${(e.params as { additionalProperty: string }).additionalProperty}`;
  return base;
}

function friendly(e: ErrorObject): string {
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'required':
      return `missing required field "${p.missingProperty}": add it (see the schema's description)`;
    case 'additionalProperties':
      return `unknown field "${p.additionalProperty}": remove it or check its spelling`;
    case 'enum':
      return `must be one of ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
    case 'type':
      return `must be a ${p.type}`;
    case 'pattern':
      return `${e.message}; ${hintForPattern(e.instancePath)}`;
    case 'minimum':
    case 'maximum':
      return `${e.message}`;
    default:
      return e.message ?? 'invalid';
  }
}

function hintForPattern(p: string): string {
  if (p === '/name') return 'use lower-case letters, digits, ".", "_" or "-" (at most 63), starting with a letter or digit';
  if (p === '/handler') return 'write it as "<file>:<function>", e.g. "main.py:handler" or "index.js:handler"';
  if (p.startsWith('/env')) return 'env names are letters, digits and "_" and must not start with TRENV_';
  return 'see the schema';
}

/** Validates a parsed manifest; fills defaults in place. */
export function validateManifest(value: unknown): Diagnostic[] {
  if (validate(value)) return [];
  return (validate.errors ?? []).map((e) => ({ path: fieldPath(e), message: friendly(e), severity: 'error' as const }));
}

/** Checks that the handler file and function exist (best effort for the function: a text search). */
export function checkHandler(dir: string, m: Manifest): Diagnostic[] {
  const [file, fn] = m.handler.split(':');
  const full = path.resolve(dir, file);
  if (!full.startsWith(path.resolve(dir) + path.sep)) {
    return [{ path: '/handler', message: `handler file "${file}" is outside the agent folder`, severity: 'error' }];
  }
  let text: string;
  try {
    text = fs.readFileSync(full, 'utf8');
  } catch {
    return [{ path: '/handler', message: `handler file "${file}" not found in ${dir}: create it or fix "handler"`, severity: 'error' }];
  }
  const re =
    m.runtime === 'python'
      ? new RegExp(`^\\s*(async\\s+)?def\\s+${fn}\\s*\\(`, 'm')
      : new RegExp(`(function\\s+${fn}\\b|\\b${fn}\\s*[:=]|exports\\.${fn}\\b|export\\s+(async\\s+)?function\\s+${fn}\\b|export\\s+(const|let)\\s+${fn}\\b)`);
  if (!re.test(text)) {
    return [{ path: '/handler', message: `function "${fn}" not found in ${file}: define it or fix "handler"`, severity: 'warning' }];
  }
  return [];
}

export function parseManifestText(text: string): { value?: unknown; diagnostics: Diagnostic[] } {
  try {
    return { value: JSON.parse(text), diagnostics: [] };
  } catch (e) {
    return { diagnostics: [{ path: '', message: `not valid JSON: ${(e as Error).message}`, severity: 'error' }] };
  }
}

/**
 * Everything wrong with a manifest's text, in one place for the daemon, the language server and
 * loadAgent: JSON, schema (the returned value has the schema's defaults filled in), and the handler
 * file/function whenever the fields it depends on are themselves valid.
 */
export function checkManifestText(dir: string, text: string): { value?: Manifest; diagnostics: Diagnostic[] } {
  const parsed = parseManifestText(text);
  if (parsed.diagnostics.length) return parsed as { diagnostics: Diagnostic[] };
  const value = parsed.value as Manifest;
  const diagnostics = validateManifest(value);
  if (!diagnostics.some((d) => d.path === '/handler' || d.path === '/runtime')) diagnostics.push(...checkHandler(dir, value));
  return { value, diagnostics };
}

/** Reads and validates an agent folder. Throws AgentNotFoundError or ManifestError. */
export function loadAgent(dir: string): LoadedAgent {
  const abs = path.resolve(dir);
  const file = path.join(abs, 'trenv.json');
  let text: string;
  try {
    if (!fs.statSync(abs).isDirectory()) throw new Error('not a directory');
    text = fs.readFileSync(file, 'utf8');
  } catch {
    throw new AgentNotFoundError(`no agent at ${abs}: expected a folder with a trenv.json manifest`);
  }
  const checked = checkManifestText(abs, text);
  const errors = checked.diagnostics.filter((d) => d.severity === 'error');
  if (errors.length || !checked.value) throw new ManifestError(abs, errors);
  const m = checked.value;
  const [handlerFile, handlerFunction] = m.handler.split(':');
  return { dir: abs, manifest: m, handlerFile, handlerFunction };
}
