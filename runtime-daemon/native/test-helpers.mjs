// Shared helpers for the native smoke tests (test-sandboxd.mjs, test-zygote.mjs): framing of the
// sandboxd protocol (PROTOCOL.md), a Daemon client, checks, process inspection and the lower-root
// skeleton every test sandbox uses. No dependencies.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

let failures = 0;
/** Number of failed checks so far (plus any counted with fail()). */
export const failureCount = () => failures;
export function fail(what) {
  failures++;
  console.log(`  FAIL ${what}`);
}

export function check(cond, what, extra = '') {
  if (cond) console.log(`  ok   ${what}`);
  else {
    failures++;
    console.log(`  FAIL ${what}${extra ? `\n       ${extra}` : ''}`);
  }
}

// ---------- framing ----------
export function frame(fields) {
  const body = Buffer.concat(
    fields.flatMap((f, i) => [i ? Buffer.from([0]) : Buffer.alloc(0), Buffer.isBuffer(f) ? f : Buffer.from(String(f))]),
  );
  const h = Buffer.alloc(4);
  h.writeUInt32LE(body.length);
  return Buffer.concat([h, body]);
}

// Split a reply; `data` has 5 text fields then raw bytes (which may contain NUL).
export function parse(body) {
  const fields = [];
  let i = 0;
  for (;;) {
    const isData = fields[0] === 'data';
    if (isData && fields.length === 5) {
      fields.push(body.subarray(i));
      break;
    }
    const z = body.indexOf(0, i);
    if (z < 0) {
      fields.push(body.subarray(i).toString());
      break;
    }
    fields.push(body.subarray(i, z).toString());
    i = z + 1;
  }
  return fields;
}

export class Daemon {
  constructor(bin) {
    this.p = spawn(bin, [], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.buf = Buffer.alloc(0);
    this.queue = [];
    this.waiters = [];
    this.exited = new Promise((res) => this.p.on('exit', (code, sig) => res({ code, sig })));
    this.p.stdout.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      while (this.buf.length >= 4) {
        const n = this.buf.readUInt32LE(0);
        if (this.buf.length < 4 + n) break;
        const msg = parse(this.buf.subarray(4, 4 + n));
        this.buf = this.buf.subarray(4 + n);
        this.queue.push(msg);
        this.wake();
      }
    });
  }
  wake() {
    for (const w of [...this.waiters]) {
      const idx = this.queue.findIndex(w.pred);
      if (idx >= 0) {
        const [m] = this.queue.splice(idx, 1);
        this.waiters.splice(this.waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(m);
      }
    }
  }
  send(...fields) {
    this.p.stdin.write(frame(fields));
  }
  sendRaw(buf) {
    this.p.stdin.write(buf);
  }
  next(pred, ms = 10000) {
    return new Promise((resolve, reject) => {
      const w = { pred, resolve };
      w.timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        reject(new Error(`timeout waiting for reply; queue=${JSON.stringify(this.queue.map((m) => m.slice(0, 4)))}`));
      }, ms);
      this.waiters.push(w);
      this.wake();
    });
  }
  // Collect a run's events until exit/error; returns { events, out, err, chan }.
  async collect(sbx, run, ms = 20000) {
    const events = [];
    for (;;) {
      const m = await this.next((m) => m[1] === sbx && m[2] === run, ms);
      events.push(m);
      if (m[0] === 'exit' || m[0] === 'error') break;
    }
    const cat = (s) => Buffer.concat(events.filter((e) => e[0] === 'data' && e[3] === s).map((e) => e[5]));
    return { events, out: cat('out').toString(), err: cat('err').toString(), chan: cat('chan').toString(), outBuf: cat('out') };
  }
}

export function spans(field) {
  const out = {};
  for (const s of field.replace(/^spans=/, '').split(',')) {
    const [name, a, b] = s.split(':');
    out[name] = [BigInt(a), BigInt(b)];
  }
  return out;
}
export const ms = (a, b) => Number(b - a) / 1e6;
export function fmtSpans(sp) {
  const names = Object.keys(sp);
  const start = names.reduce((m, n) => (sp[n][0] < m ? sp[n][0] : m), sp[names[0]][0]);
  const end = names.reduce((m, n) => (sp[n][1] > m ? sp[n][1] : m), sp[names[0]][1]);
  return `total ${ms(start, end).toFixed(3)} ms (${names.map((n) => `${n} ${ms(...sp[n]).toFixed(3)}`).join(', ')})`;
}

// Host pids of every process in the pid namespace whose init has host pid `initPid` (init excluded).
export function nsMembers(initPid) {
  let ns;
  try {
    ns = fs.readlinkSync(`/proc/${initPid}/ns/pid`);
  } catch {
    return null;
  }
  const out = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || Number(d) === initPid) continue;
    try {
      if (fs.readlinkSync(`/proc/${d}/ns/pid`) === ns) out.push(Number(d));
    } catch {}
  }
  return out;
}
export const alive = (pid) => {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) Z/.test(st);
  } catch {
    return false;
  }
};
export const childrenOf = (pid) => {
  try {
    return fs
      .readdirSync(`/proc/${pid}/task`)
      .flatMap((t) => fs.readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/))
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
};
export const sleep = (n) => new Promise((r) => setTimeout(r, n));

/** The read-only base root used as `lower=`: dirs, /bin etc. as symlinks into /usr, passwd/group
 * with an unprivileged user `sandbox` of the given uid. */
export function makeLower(lower, UID) {
  for (const d of ['etc', 'tmp', 'home', 'app', 'proc', 'dev', 'usr', 'root', 'opt', 'var', 'run', 'sys'])
    fs.mkdirSync(path.join(lower, d), { recursive: true });
  fs.chmodSync(path.join(lower, 'tmp'), 0o1777);
  fs.chmodSync(path.join(lower, 'root'), 0o700);
  for (const [l, t] of [['bin', 'usr/bin'], ['lib', 'usr/lib'], ['lib64', 'usr/lib64'], ['sbin', 'usr/sbin']])
    fs.symlinkSync(t, path.join(lower, l));
  fs.writeFileSync(path.join(lower, 'etc/passwd'), `root:x:0:0:root:/root:/bin/sh\nsandbox:x:${UID}:${UID}:sandbox:/home:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n`);
  fs.writeFileSync(path.join(lower, 'etc/group'), `root:x:0:\nsandbox:x:${UID}:\nnogroup:x:65534:\n`);
  fs.writeFileSync(path.join(lower, 'etc/hosts'), '127.0.0.1 localhost\n::1 localhost\n');
}
