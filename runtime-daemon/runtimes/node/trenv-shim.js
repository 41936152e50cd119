'use strict';
/**
 * trenv runtime shim for Node handlers.
 *
 * Run by the daemon inside a sandbox as `node trenv-shim.js` with:
 *  - cwd `/app` (the agent's folder, read-only),
 *  - the event JSON on stdin (read to EOF; empty stdin means `{}`),
 *  - TRENV_HANDLER (`path/to/file.js:function`; .js/.cjs are require()d, .mjs and
 *    ESM .js are import()ed), TRENV_INVOCATION_ID, TRENV_DEADLINE_MS (unix epoch ms)
 *    and TRENV_AGENT in the environment,
 *  - fd 3: the "chan" pipe for structured messages.
 *
 * Everything the shim itself has to say goes to fd 3 as JSON lines (one compact
 * object per line); stdout and stderr belong to the user's code. Messages:
 * `loaded`, `start`, `log`, then exactly one `result` or `error`. `mono_ns` is
 * CLOCK_MONOTONIC in nanoseconds (process.hrtime.bigint()), as a decimal string.
 *
 * Exit codes: 0 success, 1 handler error, 2 load error, 3 result not JSON.
 *
 * load() and invoke() are kept apart so a long-lived template server can load
 * the module once and invoke it many times.
 *
 * Restored clones (CRIU templates): with TRENV_EVENT_ENVELOPE=1 in the environment
 * the shim was started once, checkpointed after `loaded` and restored many times,
 * so every clone starts with the same memory: the same Math.random() state, the
 * same OpenSSL DRBG state (OpenSSL 3.0 only reseeds when getpid() changes, and
 * CRIU restores the same PID) and the same frozen environment. stdin then carries
 * an envelope instead of the bare event:
 *   {"trenv": {"seed": "<hex, >= 16 bytes>", "env": {"TRENV_INVOCATION_ID": "..."}}, "event": <event>}
 * and before the handler runs the shim applies `env` (every key: it is the daemon's
 * per-invocation environment, the same the cold path passes to exec, e.g. the
 * manifest's and the caller's OPENAI_BASE_URL; only TRENV_EVENT_ENVELOPE itself is
 * kept) and, if a seed is given, re-seeds (see reseed()). Without the variable
 * nothing changes.
 */
const fs = require('node:fs');
const path = require('node:path');
const util = require('node:util');
const { pathToFileURL } = require('node:url');

const EXIT = { OK: 0, HANDLER: 1, LOAD: 2, RESULT: 3 };
const CHAN_FD = 3;

class LoadError extends Error {
  get name() { return 'LoadError'; }
}

/**
 * The chan writer. Writes are synchronous on purpose: messages keep their order,
 * and each one is out of the process before the next line of user code runs or
 * the process exits.
 */
function openChan(fd = CHAN_FD) {
  try {
    fs.fstatSync(fd);
  } catch {
    fd = 2; // run by hand without fd 3: fall back to stderr so nothing is lost
  }
  const nap = new Int32Array(new SharedArrayBuffer(4));
  return {
    finished: false, // a result or error has been sent
    /** Write one message; throws (writing nothing) if it cannot be JSON. */
    send(t, fields = {}) {
      const line = JSON.stringify({ t, ...fields, mono_ns: process.hrtime.bigint().toString() });
      let buf = Buffer.from(line + '\n', 'utf8');
      while (buf.length > 0) {
        try {
          buf = buf.subarray(fs.writeSync(fd, buf));
        } catch (err) {
          if (err.code !== 'EAGAIN') throw err;
          Atomics.wait(nap, 0, 0, 1); // non-blocking pipe is full: wait 1 ms for the reader
        }
      }
      if (t === 'result' || t === 'error') this.finished = true;
    },
  };
}

/** The `error` object of an `error` message, without the shim's own stack frames. */
function describe(err) {
  if (err !== null && typeof err === 'object' && typeof err.message === 'string') {
    const type = err.name && err.name !== 'Error' ? err.name : err.constructor?.name || 'Error';
    const stack = typeof err.stack === 'string' ? err.stack : `${type}: ${err.message}`;
    const ours = stack.split('\n').filter((line) => !line.includes(__filename));
    return { type, message: err.message, stack: ours.join('\n') };
  }
  const text = util.inspect(err); // `throw "x"`, `throw 42`, ...
  return { type: typeof err, message: text, stack: text };
}

/** Wait until everything the user wrote to stdout/stderr has left the process. */
function flushStdio() {
  const flushOne = (stream) =>
    new Promise((resolve) => {
      if (stream.destroyed || stream.writableEnded) return resolve();
      // Writes complete in order, so this callback runs after all earlier ones.
      stream.write('', () => resolve());
    });
  return Promise.all([flushOne(process.stdout), flushOne(process.stderr)]);
}

/** `context.logger`: structured logs, e.g. `logger.info('fetched', { url, ms: 12 })`. */
function makeLogger(chan) {
  const log = (level) => (msg, fields) => {
    let obj = fields == null ? {} : typeof fields === 'object' ? fields : { value: fields };
    if (obj instanceof Error) obj = { error: obj };
    // Errors stringify as {}: keep what matters about them.
    const plain = {};
    for (const [k, v] of Object.entries(obj)) plain[k] = v instanceof Error ? describe(v) : v;
    try {
      chan.send('log', { level, msg: String(msg), fields: plain });
    } catch {
      // Circular, BigInt, ...: a bad field must never break logging.
      const shown = Object.fromEntries(Object.entries(plain).map(([k, v]) => [k, util.inspect(v)]));
      chan.send('log', { level, msg: String(msg), fields: shown });
    }
  };
  return { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') };
}

/** The second argument of every handler. */
function makeContext({ invocationId, deadlineMs, agent }, chan) {
  return {
    invocationId,
    deadlineMs, // unix epoch ms, or null if no deadline
    agent,
    logger: makeLogger(chan),
    /** Milliseconds left before the deadline (never negative; Infinity if none). */
    remainingMs() {
      return deadlineMs == null ? Infinity : Math.max(0, deadlineMs - Date.now());
    },
  };
}

function contextFromEnv(env, chan) {
  return makeContext(
    {
      invocationId: env.TRENV_INVOCATION_ID ?? '',
      deadlineMs: env.TRENV_DEADLINE_MS ? Number(env.TRENV_DEADLINE_MS) : null,
      agent: env.TRENV_AGENT ?? '',
    },
    chan,
  );
}

/**
 * Load `file.js:function` (relative to appDir) and return the function.
 * Rejects with LoadError for a bad spec or a missing file/function; errors thrown
 * while evaluating the module propagate unchanged.
 */
async function load(spec, appDir = process.cwd()) {
  const m = /^(.+\.(?:js|cjs|mjs)):([A-Za-z_$][\w$]*)$/.exec(spec ?? '');
  if (!m) {
    throw new LoadError(`bad handler '${spec ?? ''}': expected 'file.js:function', e.g. 'index.js:handler'`);
  }
  const [, file, name] = m;
  const abs = path.resolve(appDir, file);
  if (!fs.statSync(abs, { throwIfNoEntry: false })?.isFile()) {
    throw new LoadError(`handler file '${file}' not found in ${path.resolve(appDir)}`);
  }

  let mod;
  if (abs.endsWith('.mjs')) {
    mod = await import(pathToFileURL(abs).href);
  } else {
    try {
      mod = require(abs);
    } catch (err) {
      if (err.code !== 'ERR_REQUIRE_ESM') throw err; // .js in a "type": "module" package
      mod = await import(pathToFileURL(abs).href);
    }
  }

  const fn = mod[name] ?? mod.default?.[name];
  if (fn === undefined) throw new LoadError(`${file} does not export '${name}'`);
  if (typeof fn !== 'function') throw new LoadError(`${file}:${name} is not a function`);
  return fn;
}

/** Call the handler once and report its result on chan. Resolves to the exit code. */
async function invoke(handler, event, context, chan) {
  chan.send('start');
  let value;
  try {
    value = await handler(event, context);
  } catch (err) {
    await flushStdio();
    chan.send('error', { phase: 'handler', error: describe(err) });
    return EXIT.HANDLER;
  }

  await flushStdio();
  try {
    if (typeof value === 'function' || typeof value === 'symbol' || typeof value === 'bigint') {
      throw new TypeError(`handler returned a ${typeof value}, which is not JSON`);
    }
    // JSON.stringify throws on cycles and BigInt; NaN/Infinity become null (JSON.stringify's rule).
    chan.send('result', { value: value === undefined ? null : value });
  } catch (err) {
    chan.send('error', { phase: 'result', error: describe(err) });
    return EXIT.RESULT;
  }
  return EXIT.OK;
}

/** Parse all of stream as the event; empty input is `{}`. */
async function readEvent(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const raw = Buffer.concat(chunks).toString('utf8');
  try {
    return raw.trim() ? JSON.parse(raw) : {};
  } catch (err) {
    throw new SyntaxError(`the event on stdin is not JSON: ${err.message}`);
  }
}

/**
 * Re-seed the process after it was restored from a checkpoint shared with other clones.
 * `seedHex` comes from the daemon; it is mixed with 32 bytes from the kernel when
 * /dev/urandom can be read. Then:
 *  - Math.random: V8 cannot re-seed its generator, so it is replaced by xoshiro128**
 *    seeded from that entropy (same contract: doubles in [0, 1), not cryptographic).
 *  - OpenSSL: its DRBG state is a copy of the template's (OpenSSL 3.0 re-seeds on a getpid()
 *    change, and clones keep the template's PID) and Node has no JavaScript call to re-seed
 *    it, so the addon trenv_rand.node (loaded before the snapshot, see preloadReseed) calls
 *    RAND_add() with the fresh entropy: the primary DRBG re-seeds and every per-thread DRBG
 *    follows on its next use. This covers everything that draws from OpenSSL: randomBytes,
 *    randomFill, getRandomValues, key generation, DH/ECDH, TLS handshake randoms.
 *  - randomUUID and randomInt: Node serves them from JS-side caches of random bytes filled
 *    on first use; a cache filled before the snapshot would be replayed in every clone, so
 *    both are replaced by versions drawing from the re-seeded OpenSSL.
 *  - Without the addon (not built): the JS random APIs -- crypto.randomBytes, randomFill(Sync),
 *    randomUUID, randomInt, getRandomValues and globalThis.crypto.getRandomValues/randomUUID --
 *    are wrapped: the original still validates arguments, then the bytes are overwritten from
 *    a ChaCha20 keystream keyed with the fresh entropy. OpenSSL-internal randomness (key
 *    generation, TLS, DH/ECDH) is then NOT re-seeded, and references to the functions taken
 *    before the checkpoint keep the originals; the debug log says so.
 * Returns what was done (reported as a debug log on chan).
 */
let randAddon = null;
let randAddonError = null;
/** node:crypto's random APIs as Node made them, kept by the first reseed: a later one wraps these, not its predecessor's wrappers */
let nodeRandom = null;
/**
 * A full garbage collection before the snapshot: the load's garbage is not copied into the images
 * (or a kernel-module template), and no collection is left pending for every clone to run right
 * after its restore.
 */
function fullGc() {
  try {
    require('node:v8').setFlagsFromString('--expose-gc');
    require('node:vm').runInNewContext('gc')();
  } catch {
    /* without it the snapshot is just larger */
  }
}

/** Load the re-seed addon (before the snapshot, so no clone pays for the dlopen). */
function preloadReseed() {
  try {
    const m = { exports: {} };
    process.dlopen(m, path.join(__dirname, 'trenv_rand.node'));
    randAddon = m.exports;
  } catch (err) {
    randAddonError = `trenv_rand.node not loaded: ${err.message.split('\n')[0]}`;
  }
}

function reseed(seedHex) {
  const crypto = require('node:crypto');
  let seed = Buffer.from(String(seedHex), 'hex');
  if (seed.length < 16) throw new Error('trenv: re-seed needs at least 16 bytes of seed');
  let kernel = false;
  try {
    const fd = fs.openSync('/dev/urandom', 'r');
    const k = Buffer.alloc(32);
    fs.readSync(fd, k, 0, 32, null);
    fs.closeSync(fd);
    seed = crypto.createHash('sha256').update(seed).update(k).digest();
    kernel = true;
  } catch {
    seed = crypto.createHash('sha256').update(seed).digest();
  }

  // Math.random: xoshiro128** (Blackman & Vigna); the state must not be all zero
  const rotl = (x, k) => (x << k) | (x >>> (32 - k));
  let a = seed.readUInt32LE(0), b = seed.readUInt32LE(4), c = seed.readUInt32LE(8), d = seed.readUInt32LE(12) | 1;
  const next = () => {
    const r = Math.imul(rotl(Math.imul(b, 5), 7), 9) >>> 0;
    const t = b << 9;
    c ^= a; d ^= b; b ^= c; a ^= d; c ^= t; d = rotl(d, 11);
    return r;
  };
  Object.defineProperty(Math, 'random', {
    value: function random() {
      return ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992;
    },
    writable: true, configurable: true, enumerable: false,
  });

  // OpenSSL's DRBG (see above); the input is derived from the seed, never the seed itself
  let openssl = false;
  if (randAddon) openssl = randAddon.reseed(crypto.createHash('sha256').update('trenv-openssl-reseed').update(seed).digest()) === true;
  // node:crypto JS APIs: the re-seeded OpenSSL, or else a per-clone ChaCha20 keystream
  let fresh;
  if (openssl) {
    fresh = (n) => crypto.randomBytes(n);
  } else {
    const key = crypto.createHash('sha256').update('trenv-crypto-reseed').update(seed).digest();
    const stream = crypto.createCipheriv('chacha20', key, Buffer.alloc(16));
    fresh = (n) => stream.update(Buffer.alloc(n));
  }
  const bytesOf = (buf) => (ArrayBuffer.isView(buf) ? new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength) : new Uint8Array(buf));
  const fillRange = (buf, offset, size) => {
    const el = buf.BYTES_PER_ELEMENT || 1;
    const all = bytesOf(buf);
    const from = (offset ?? 0) * el;
    const len = size === undefined ? all.length - from : size * el;
    all.set(fresh(len), from);
    return buf;
  };
  const web = globalThis.crypto;
  nodeRandom ??= {
    randomBytes: crypto.randomBytes, randomFillSync: crypto.randomFillSync, randomFill: crypto.randomFill,
    randomInt: crypto.randomInt, getRandomValues: crypto.getRandomValues, randomUUID: crypto.randomUUID,
    webGetRandomValues: web ? Object.getPrototypeOf(web).getRandomValues : undefined,
  };
  const orig = nodeRandom;
  const uuid = () => {
    const u = fresh(16);
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    const h = u.toString('hex');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  };
  const wrapped = {
    randomBytes(size, cb) {
      if (typeof cb !== 'function') return fillRange(orig.randomBytes(size));
      return orig.randomBytes(size, (err, buf) => cb(err, err ? buf : fillRange(buf)));
    },
    randomFillSync(buf, offset, size) {
      orig.randomFillSync(buf, offset, size); // validates
      return fillRange(buf, offset, size);
    },
    randomFill(buf, ...rest) {
      const cb = rest.pop();
      if (typeof cb !== 'function') return orig.randomFill(buf, ...rest, cb); // let Node throw
      return orig.randomFill(buf, ...rest, (err, b2) => cb(err, err ? b2 : fillRange(b2, rest[0], rest[1])));
    },
    randomUUID(options) {
      if (options !== undefined) orig.randomUUID(options); // validates the options
      return uuid();
    },
    randomInt(min, max, cb) {
      if (typeof max === 'undefined' || typeof max === 'function') {
        cb = max;
        max = min;
        min = 0;
      }
      orig.randomInt(min, max); // validates (throws like Node)
      const range = max - min;
      const limit = 2 ** 48 - (2 ** 48 % range);
      let x;
      do x = fresh(6).readUIntBE(0, 6); while (x >= limit);
      const n = min + (x % range);
      if (typeof cb === 'function') return void process.nextTick(cb, null, n);
      return n;
    },
    getRandomValues(arr) {
      orig.getRandomValues.call(crypto, arr); // validates type and the 65536-byte limit
      return fillRange(arr);
    },
  };
  // with OpenSSL re-seeded only the two cached APIs need replacing
  if (openssl) for (const k of ['randomBytes', 'randomFillSync', 'randomFill', 'getRandomValues']) delete wrapped[k];
  for (const [k, v] of Object.entries(wrapped)) {
    // crypto.getRandomValues is a fixed accessor that calls globalThis.crypto's (patched below)
    const desc = Object.getOwnPropertyDescriptor(crypto, k);
    if (!desc || desc.configurable) Object.defineProperty(crypto, k, { value: v, writable: true, configurable: true, enumerable: true });
    else if (desc.writable) crypto[k] = v;
  }
  if (web) {
    const proto = Object.getPrototypeOf(web);
    const gv = orig.webGetRandomValues;
    if (!openssl) Object.defineProperty(proto, 'getRandomValues', {
      value: function getRandomValues(arr) {
        gv.call(this, arr);
        return fillRange(arr);
      },
      writable: true, configurable: true, enumerable: true,
    });
    Object.defineProperty(proto, 'randomUUID', { value: function randomUUID() { return uuid(); }, writable: true, configurable: true, enumerable: true });
  }
  return {
    math: 'xoshiro128**',
    crypto: openssl ? 'OpenSSL DRBG re-seeded (RAND_add); randomUUID/randomInt caches bypassed' : `chacha20 (JS APIs only; OpenSSL internal DRBG still cloned: ${randAddonError ?? 'addon reported not ready'})`,
    openssl,
    kernel,
  };
}

/** CPU time (clock ticks, utime + stime) used so far by this process's threads other than the main one */
function backgroundTicks() {
  let ticks = 0;
  for (const tid of fs.readdirSync('/proc/self/task')) {
    if (Number(tid) === process.pid) continue;
    try {
      const st = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' '); // f[0] = field 3 (state)
      ticks += Number(f[11]) + Number(f[12]); // fields 14, 15
    } catch {
      /* the thread ended */
    }
  }
  return ticks;
}

/**
 * Wait until the runtime's background threads have stopped using CPU (no tick for `quietMs`), at
 * most `maxMs`. After a full GC, V8 sweeps the heap on its worker threads; a snapshot taken then
 * freezes that work half-done and EVERY clone finishes it right after its restore (measured in the
 * kmod guest, 150 MB heap: the clones' first 40 ms went to it, and with template maps it writes
 * (copies) template pages).
 */
async function settleBackgroundThreads({ quietMs = 60, maxMs = 5000, stepMs = 15 } = {}) {
  const t0 = Date.now();
  let last = backgroundTicks();
  let quietSince = t0;
  while (Date.now() - t0 < maxMs) {
    await new Promise((r) => setTimeout(r, stepMs));
    const now = backgroundTicks();
    if (now !== last) {
      last = now;
      quietSince = Date.now();
    } else if (Date.now() - quietSince >= quietMs) {
      return { settled: true, ms: Date.now() - t0 };
    }
  }
  return { settled: false, ms: Date.now() - t0 };
}

/**
 * Before a snapshot: load and run once what every clone runs first (hashing, the re-seed addon,
 * re-seeding itself: node:crypto's lazily loaded parts, globalThis.crypto, the functions' bytecode),
 * so no clone pays for it after its restore; then a full GC, and wait for the GC's background work
 * (sweeping) to finish. The clone's own reseed() replaces everything this one set up.
 * Resolves to what the wait took and how clones will be re-seeded ({settled, ms, reseed}).
 */
async function prepareSnapshot(settle = {}) {
  const crypto = require('node:crypto');
  crypto.createHash('sha256').update('warm').digest();
  preloadReseed();
  const { openssl } = reseed(crypto.randomBytes(32).toString('hex'));
  fullGc();
  // how clones will be re-seeded (the daemon warns when OpenSSL's own state cannot be)
  return { ...(await settleBackgroundThreads(settle)), reseed: openssl ? 'openssl' : 'js-only' };
}

/** Unwrap a restore envelope (see the header): apply env, re-seed, return the event. */
function openEnvelope(msg, chan) {
  if (msg === null || typeof msg !== 'object' || typeof msg.trenv !== 'object' || msg.trenv === null) {
    throw new TypeError('TRENV_EVENT_ENVELOPE is set but stdin is not an envelope {"trenv": {...}, "event": ...}');
  }
  const { seed, env } = msg.trenv;
  for (const [k, v] of Object.entries(env ?? {})) {
    if (k !== 'TRENV_EVENT_ENVELOPE') process.env[k] = String(v);
  }
  if (seed !== undefined) chan.send('log', { level: 'debug', msg: 'trenv: re-seeded', fields: reseed(seed) });
  return msg.event === undefined ? {} : msg.event;
}

/** One-shot mode: load, read the event, invoke, exit. */
function runOnce() {
  const chan = openChan();
  let phase = 'load';

  const exit = async (code) => {
    await flushStdio();
    // process.exit, not exitCode: the result is out, and a handler's leftover timers
    // or keep-alive sockets must not hold the sandbox until its deadline.
    process.exit(code);
  };
  const fail = (err, code) => {
    if (chan.finished) return undefined; // already reported and on the way out
    chan.send('error', { phase, error: describe(err) });
    return exit(code);
  };

  // Errors thrown outside the handler's own promise chain (timers, event emitters).
  process.on('uncaughtException', (err) => fail(err, phase === 'load' ? EXIT.LOAD : EXIT.HANDLER));
  // The event loop ran dry while we were still awaiting the handler.
  process.on('beforeExit', () => fail(new Error("the handler's promise never settled"), EXIT.HANDLER));

  (async () => {
    let handler;
    try {
      handler = await load(process.env.TRENV_HANDLER);
    } catch (err) {
      return fail(err, EXIT.LOAD);
    }
    // a snapshot is taken after `loaded`: load what re-seeding needs now, not in every clone
    chan.send('loaded', process.env.TRENV_EVENT_ENVELOPE === '1' ? await prepareSnapshot() : {});
    phase = 'handler';

    let event;
    try {
      event = await readEvent(process.stdin);
      if (process.env.TRENV_EVENT_ENVELOPE === '1') event = openEnvelope(event, chan);
    } catch (err) {
      return fail(err, EXIT.HANDLER); // not JSON: the handler cannot be called with it
    }
    return exit(await invoke(handler, event, contextFromEnv(process.env, chan), chan));
  })();
}

module.exports = { EXIT, LoadError, openChan, describe, flushStdio, makeContext, contextFromEnv, load, invoke, readEvent, reseed, openEnvelope, fullGc, prepareSnapshot, settleBackgroundThreads };

if (require.main === module) runOnce();
