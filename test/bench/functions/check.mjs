/**
 * Check of the benchmark functions in test/bench/functions/, on the host (no sandbox).
 *
 * For every function folder (trenv.json + code + .trenv/events/default.json):
 *  - validates trenv.json against runtime-daemon/protocol/trenv.schema.json,
 *  - checks that every `preload` module imports (python3 -c / require),
 *  - runs it RUNS times through its runtime shim the way the daemon does (cwd = the function
 *    folder, event on stdin, fd 3 = chan pipe, TRENV_* env) and checks the chan protocol,
 *  - checks the result is the same every run (deterministic) and correct (independent
 *    re-computation where cheap: AES-CTR with node:crypto, PBKDF2 with Python's hashlib, ...),
 *  - reports the handler time (chan `start` -> `result`, CLOCK_MONOTONIC) and warns when it
 *    is outside 10..200 ms (`--strict-timing` makes that a failure).
 *
 * Installs the Debian packages python3-pyaes, python3-jinja2, python3-pil first if missing
 * (needs root). Exits non-zero if anything failed.
 *
 *   node test/bench/functions/check.mjs [--runs N] [--strict-timing] [--json]
 */
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createCipheriv, createHash } from 'node:crypto';
import assert from 'node:assert/strict';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '../../..');
const RUNTIMES = join(ROOT, 'runtime-daemon/runtimes');
const PYTHON = process.env.TRENV_PYTHON ?? '/usr/bin/python3';
const NODE = process.env.TRENV_NODE ?? process.execPath;
const INTERPRETERS = {
  python: { bin: PYTHON, shim: join(RUNTIMES, 'python/trenv_shim.py') },
  node: { bin: NODE, shim: join(RUNTIMES, 'node/trenv-shim.js') },
};
const DEB_PACKAGES = { 'python3-pyaes': 'pyaes', 'python3-jinja2': 'jinja2', 'python3-pil': 'PIL' };
const argv = process.argv.slice(2);
const RUNS = Number(argv.includes('--runs') ? argv[argv.indexOf('--runs') + 1] : 3);
const STRICT_TIMING = argv.includes('--strict-timing');
const JSON_OUT = argv.includes('--json');
const TIMING_RANGE_MS = [10, 200];

// ---- set-up ----------------------------------------------------------------------------------

function pythonHas(module) {
  return spawnSync(PYTHON, ['-c', `import ${module}`], { stdio: 'ignore' }).status === 0;
}

function ensureDebPackages() {
  const missing = Object.entries(DEB_PACKAGES).filter(([, mod]) => !pythonHas(mod)).map(([pkg]) => pkg);
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) {
    throw new Error(`missing Python packages; install them with: sudo apt-get install -y ${missing.join(' ')}`);
  }
  console.log(`installing ${missing.join(' ')} ...`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  let r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...missing], { stdio: 'inherit', env });
  if (r.status !== 0) {
    spawnSync('apt-get', ['update'], { stdio: 'inherit', env });
    r = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...missing], { stdio: 'inherit', env });
  }
  if (r.status !== 0) throw new Error(`apt-get install ${missing.join(' ')} failed`);
}

// ---- running ---------------------------------------------------------------------------------

/** Run one invocation through the shim; resolves to {code, stdout, stderr, chan, chanRaw}. */
export function runShim({ runtime, handler, cwd, event, env = {}, timeoutMs = 20_000, agent = 'check' }) {
  const { bin, shim } = INTERPRETERS[runtime];
  return new Promise((done, fail) => {
    const child = spawn(bin, [shim], {
      cwd,
      stdio: ['pipe', 'pipe', 'pipe', 'pipe'],
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        ...env,
        TRENV_HANDLER: handler,
        TRENV_INVOCATION_ID: `inv-${Math.random().toString(16).slice(2, 10)}`,
        TRENV_DEADLINE_MS: String(Date.now() + timeoutMs),
        TRENV_AGENT: agent,
      },
    });
    const out = { stdout: [], stderr: [], chan: [] };
    child.stdout.on('data', (d) => out.stdout.push(d));
    child.stderr.on('data', (d) => out.stderr.push(d));
    child.stdio[3].on('data', (d) => out.chan.push(d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', fail);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const chanRaw = Buffer.concat(out.chan).toString('utf8');
      done({
        code: code ?? signal,
        stdout: Buffer.concat(out.stdout).toString('utf8'),
        stderr: Buffer.concat(out.stderr).toString('utf8'),
        chanRaw,
        chan: chanRaw.split('\n').filter(Boolean).map((line) => JSON.parse(line)),
      });
    });
    child.stdin.end(JSON.stringify(event));
  });
}

/** The result value of a successful run, after checking the chan protocol. */
function resultOf(run) {
  assert.ok(run.chanRaw.endsWith('\n'), 'chan output ends with a newline');
  const kinds = run.chan.map((m) => m.t);
  const last = run.chan.at(-1);
  assert.ok(last, `no chan messages (exit ${run.code}, stderr: ${run.stderr.slice(0, 400)})`);
  assert.equal(last.t, 'result', `expected a result, got ${JSON.stringify(last).slice(0, 800)}`);
  assert.deepEqual(kinds.filter((k) => k !== 'log'), ['loaded', 'start', 'result'], `chan kinds ${kinds}`);
  assert.equal(run.code, 0, 'exit code 0');
  const start = run.chan.find((m) => m.t === 'start');
  return { value: last.value, handlerMs: Number(BigInt(last.mono_ns) - BigInt(start.mono_ns)) / 1e6 };
}

// ---- independent checks of the results -------------------------------------------------------

const sha256 = (buf) => createHash('sha256').update(buf).digest();
const HEX64 = /^[0-9a-f]{64}$/;

/** The same SHA-256 counter stream as py-pyaes/main.py. */
function stream(seed, size) {
  const parts = [];
  for (let n = 0, counter = 0n; n < size; counter++) {
    const c = Buffer.alloc(8);
    c.writeBigUInt64BE(counter);
    const d = sha256(Buffer.concat([seed, c]));
    parts.push(d);
    n += d.length;
  }
  return Buffer.concat(parts).subarray(0, size);
}

const VERIFY = {
  'py-pyaes'(v, event) {
    const kib = event.kib ?? 8;
    const rounds = event.rounds ?? 1;
    const seed = Buffer.from(String(event.seed ?? 'trenv'));
    const key = sha256(Buffer.concat([Buffer.from('key:'), seed])).subarray(0, 16);
    const plain = stream(Buffer.concat([Buffer.from('data:'), seed]), kib * 1024);
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64BE(BigInt(rounds - 1), 8); // pyaes.Counter(initial_value=r): 128-bit big-endian
    const cipher = createCipheriv('aes-128-ctr', key, iv);
    const expected = sha256(Buffer.concat([cipher.update(plain), cipher.final()])).toString('hex');
    assert.equal(v.bytes, kib * 1024);
    assert.equal(v.roundtrip, true, 'decrypt(encrypt(x)) == x');
    assert.equal(v.sha256, expected, 'ciphertext equals AES-128-CTR of node:crypto (OpenSSL)');
    return `${v.bytes} B x${v.rounds}, ct sha256 ${v.sha256.slice(0, 12)}… = OpenSSL`;
  },
  'py-html-template'(v, event) {
    assert.equal(v.rows, event.rows);
    assert.ok(v.bytes > event.rows * 100, `page of ${v.bytes} B`);
    assert.match(v.sha256, HEX64);
    return `${v.rows} rows, ${v.bytes} B, sha256 ${v.sha256.slice(0, 12)}…`;
  },
  'py-json-compress'(v, event) {
    assert.equal(v.records, event.records);
    assert.equal(v.roundtrip, true);
    assert.ok(v.zlibBytes < v.jsonBytes && v.lzmaBytes < v.jsonBytes && v.lzmaBytes > 0);
    // json.dumps(..., sort_keys) of the same records, parsed by JS: same data.
    return `${v.records} records, json ${v.jsonBytes} B, zlib ${v.zlibBytes} B, lzma ${v.lzmaBytes} B`;
  },
  'py-image-resize'(v, event) {
    const scale = event.scale ?? 0.5;
    assert.deepEqual(v.source, [event.width, event.height]);
    assert.deepEqual(v.resized, [Math.round(event.width * scale), Math.round(event.height * scale)]);
    assert.ok(Math.max(...v.thumbnail) === event.thumbnail, `thumbnail ${v.thumbnail}`);
    for (const h of Object.values(v.sha256)) assert.match(h, HEX64);
    assert.equal(new Set(Object.values(v.sha256)).size, 5, 'all five images differ');
    return `${v.source.join('x')} -> ${v.resized.join('x')}, thumb ${v.thumbnail.join('x')}, sha256 ${v.sha256.thumbnail.slice(0, 12)}…`;
  },
  'node-json-compress'(v, event) {
    assert.equal(v.records, event.records);
    assert.equal(v.roundtrip, true);
    assert.ok(v.gzipBytes < v.jsonBytes && v.deflateBytes < v.gzipBytes && v.brotliBytes < v.jsonBytes);
    return `${v.records} records, json ${v.jsonBytes} B, gzip ${v.gzipBytes} B, brotli ${v.brotliBytes} B`;
  },
  'node-html-render'(v, event) {
    assert.equal(v.rows, event.rows);
    assert.ok(v.bytes > event.rows * 100, `page of ${v.bytes} B`);
    assert.match(v.sha256, HEX64);
    return `${v.rows} rows, ${v.bytes} B, sha256 ${v.sha256.slice(0, 12)}…`;
  },
  'node-crypto-hash'(v, event) {
    // PBKDF2 re-computed by a different implementation: Python's hashlib.
    const py = spawnSync(PYTHON, ['-c',
      'import hashlib,sys; print(hashlib.pbkdf2_hmac("sha256", sys.argv[1].encode(), sys.argv[2].encode(), int(sys.argv[3]), 32).hex())',
      event.password, event.salt, String(event.iterations)], { encoding: 'utf8' });
    assert.equal(v.key, py.stdout.trim(), 'PBKDF2 key equals hashlib.pbkdf2_hmac');
    assert.match(v.chainDigest, HEX64);
    assert.match(v.hmac, HEX64);
    return `pbkdf2 x${v.iterations} = hashlib, chain x${v.chain}, hmac ${v.hmac.slice(0, 12)}…`;
  },
};

/** The cross-language pair: Python and Node generate the same records (same LCG). */
async function crossCheckJson(results) {
  const py = results['py-json-compress'];
  const node = results['node-json-compress'];
  if (!py || !node) return null;
  assert.equal(py.value.records, node.value.records);
  return 'py/node json record counts agree';
}

// ---- main ------------------------------------------------------------------------------------

const require = createRequire(join(ROOT, 'package.json'));
const Ajv = require('ajv');
const ajv = new Ajv({ allErrors: true, strict: false });
const validateManifest = ajv.compile(JSON.parse(readFileSync(join(ROOT, 'runtime-daemon/protocol/trenv.schema.json'), 'utf8')));

ensureDebPackages();

const names = readdirSync(HERE, { withFileTypes: true })
  .filter((d) => d.isDirectory() && existsSync(join(HERE, d.name, 'trenv.json')))
  .map((d) => d.name)
  .sort();
let failed = 0;
let warned = 0;
const report = {};
for (const name of names) {
  const dir = join(HERE, name);
  try {
    const manifest = JSON.parse(readFileSync(join(dir, 'trenv.json'), 'utf8'));
    assert.ok(validateManifest(manifest), `trenv.json: ${ajv.errorsText(validateManifest.errors)}`);
    assert.equal(manifest.name, name, 'manifest name = folder name');
    assert.ok(VERIFY[name], `no verifier for ${name} in check.mjs`);
    const mem = manifest.limits?.memoryMb;
    assert.ok(mem >= 128 && mem <= 256, `memoryMb ${mem} in 128..256`);
    assert.ok(Array.isArray(manifest.preload) && manifest.preload.length > 0, 'preload is set');
    for (const mod of manifest.preload) {
      const r = manifest.runtime === 'python'
        ? spawnSync(PYTHON, ['-c', `import ${mod}`], { encoding: 'utf8' })
        : spawnSync(NODE, ['-e', `require(${JSON.stringify(mod)})`], { encoding: 'utf8' });
      assert.equal(r.status, 0, `preload ${mod} does not import: ${r.stderr}`);
    }
    const event = JSON.parse(readFileSync(join(dir, '.trenv/events/default.json'), 'utf8'));

    const times = [];
    const wall = [];
    let first;
    for (let i = 0; i < RUNS; i++) {
      const t0 = performance.now();
      const run = await runShim({
        runtime: manifest.runtime, handler: manifest.handler, cwd: dir, event,
        env: manifest.env ?? {}, timeoutMs: manifest.limits?.timeoutMs ?? 30_000, agent: manifest.name,
      });
      wall.push(performance.now() - t0);
      const { value, handlerMs } = resultOf(run);
      times.push(handlerMs);
      if (i === 0) first = value;
      else assert.deepEqual(value, first, `run ${i + 1} differs from run 1 (not deterministic)`);
    }
    const detail = VERIFY[name](first, event);
    assert.ok(!existsSync(join(dir, '__pycache__')), 'no bytecode written into the function folder');
    const sorted = [...times].sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)];
    const inRange = median >= TIMING_RANGE_MS[0] && median <= TIMING_RANGE_MS[1];
    report[name] = { value: first, handlerMs: times.map((t) => +t.toFixed(2)), wallMs: wall.map((t) => +t.toFixed(1)) };
    const timing = `handler ${times.map((t) => t.toFixed(1)).join('/')} ms, process ${wall.map((t) => t.toFixed(0)).join('/')} ms`;
    if (!inRange) {
      const msg = `median handler time ${median.toFixed(1)} ms outside ${TIMING_RANGE_MS.join('..')} ms`;
      if (STRICT_TIMING) throw new Error(msg);
      warned++;
      console.log(`WARN ${name}: ${msg}`);
    }
    console.log(`ok   ${name.padEnd(18)} ${timing} — ${detail}`);
  } catch (err) {
    failed++;
    console.log(`FAIL ${name}: ${err.stack ?? err}`);
  }
}
try {
  const msg = await crossCheckJson(report);
  if (msg) console.log(`ok   ${msg}`);
} catch (err) {
  failed++;
  console.log(`FAIL cross-check: ${err.message}`);
}
if (JSON_OUT) console.log(JSON.stringify(report, null, 2));
console.log(failed ? `\n${failed} of ${names.length} failed` : `\nall ${names.length} passed${warned ? ` (${warned} timing warnings)` : ''}`);
process.exitCode = failed ? 1 : 0;
