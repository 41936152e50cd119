/**
 * The "CRIU" baseline of the templates bench (the paper's CRIU; REAP+/FaaSnap+ also give each
 * instance its own copy of the memory): per agent, an initialised runtime is checkpointed once;
 * every invocation gets a FRESH sandbox (trenv-sandboxd: namespaces, cgroup, mounts) and the full
 * checkpoint restored into it, with private memory. Uses runtime-daemon/template/criu.ts.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ContainerDriver, ContainerSandbox } from '../../runtime-daemon/sandbox/container';
import { SANDBOX_GID, SANDBOX_HOME, SANDBOX_UID } from '../../runtime-daemon/sandbox/rootfs';
import * as criu from '../../runtime-daemon/template/criu';

interface Agent {
  dir: string;
  name: string;
  runtime: 'python' | 'node';
}

type Target = criu.CriuTarget & { sb: ContainerSandbox };

const SHIM: Record<string, string[]> = {
  python: ['/usr/bin/python3', '-B', '/opt/trenv/runtimes/python/trenv_shim.py'],
  node: ['/usr/bin/node', '/opt/trenv/runtimes/node/trenv-shim.js'],
};

export interface CriuSystem {
  invoke(a: Agent, event: unknown): Promise<{ toHandlerMs: number; e2eMs: number; ok: boolean }>;
  liveMemory(a: Agent, n: number, holdMs: number): Promise<{ pssKb: number; cgroupKb: number; instances: number }>;
  close(): Promise<void>;
}

function manifest(dir: string) {
  return JSON.parse(fs.readFileSync(path.join(dir, 'trenv.json'), 'utf8'));
}

export async function criuSystem(agents: Agent[], runtimesDir: string): Promise<CriuSystem> {
  const avail = await criu.criuAvailable();
  if (!avail.ok) throw new Error(`${avail.reason} (run scripts/setup-criu.sh)`);
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-bench-criu-'));
  const driver = new ContainerDriver({
    sandboxdPath: path.resolve(__dirname, '../../../runtime-daemon/native/build/trenv-sandboxd'),
    stateRoot: root,
    rootfsDir: path.join(root, 'rootfs'),
    mntDir: path.join(root, 'mnt'),
    runtimesDir,
    instanceId: `bench-criu-${process.pid}`,
  });
  driver.start();
  const images = new Map<string, string>();
  const live = new Set<ContainerSandbox>();
  const spec = (dir: string) => {
    const m = manifest(dir);
    return { runtime: m.runtime, memoryMb: m.limits?.memoryMb ?? 256, pids: m.limits?.pids ?? 64, tmpfsMb: m.limits?.tmpfsMb ?? 64, network: 'none' as const };
  };
  const factory = (dir: string): criu.SandboxFactory<Target> => ({
    create: async () => {
      const { sandbox } = await driver.create(spec(dir), dir);
      live.add(sandbox);
      return { initPid: sandbox.initPid, cgroupProcs: sandbox.cgroup.procsFiles, sb: sandbox };
    },
    destroy: async (t) => {
      live.delete(t.sb);
      await driver.destroy(t.sb);
    },
  });

  // one checkpoint per agent, made in a sandbox of its own
  for (const a of agents) {
    const m = manifest(a.dir);
    const f = factory(a.dir);
    const target = await f.create();
    try {
      const envelope = a.runtime === 'node';
      const t = await criu.launchForCheckpoint(target, {
        argv: SHIM[a.runtime],
        env: { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: SANDBOX_HOME, LANG: 'C.UTF-8', PYTHONDONTWRITEBYTECODE: '1', TRENV_HANDLER: m.handler, TRENV_AGENT: m.name, TRENV_INVOCATION_ID: 'template', TRENV_DEADLINE_MS: String(Date.now() + 3600_000) },
        cwd: '/app',
        uid: SANDBOX_UID,
        gid: SANDBOX_GID,
        envelope,
      });
      const dir = path.join(root, 'images', a.name);
      await criu.dump(t.hostPid, dir, { target, envelope, runtime: a.runtime });
      t.close();
      images.set(a.name, dir);
    } finally {
      await f.destroy(target);
    }
  }

  const restore = (a: Agent) => {
    const dir = images.get(a.name);
    if (!dir) throw new Error(`no CRIU checkpoint for ${a.name}`);
    return criu.restoreFresh(dir, factory(a.dir));
  };

  return {
    async invoke(a, event) {
      const t0 = process.hrtime.bigint();
      let r: Awaited<ReturnType<typeof restore>> | undefined;
      try {
        r = await restore(a);
        const res = await r.instance.invoke(event, { env: { TRENV_INVOCATION_ID: `criu-${Date.now()}`, TRENV_DEADLINE_MS: String(Date.now() + 30_000) } });
        const e2eMs = Number(process.hrtime.bigint() - t0) / 1e6;
        const start = res.messages.find((m) => m.t === 'start');
        const toHandlerMs = start ? Number(BigInt(String(start.mono_ns)) - t0) / 1e6 : NaN;
        return { toHandlerMs, e2eMs, ok: res.ok };
      } finally {
        if (r) {
          r.instance.kill();
          await factory(a.dir).destroy(r.sandbox);
        }
      }
    },
    async liveMemory(a, n, holdMs) {
      const rs = await Promise.all(Array.from({ length: n }, () => restore(a)));
      const runs = rs.map((r) => r.instance.invoke({ hold_ms: holdMs }, { env: { TRENV_INVOCATION_ID: 'hold', TRENV_DEADLINE_MS: String(Date.now() + 60_000) } }).catch(() => undefined));
      await new Promise((ok) => setTimeout(ok, Math.min(holdMs - 300, 1500)));
      let pss = 0;
      let cg = 0;
      for (const r of rs) {
        for (const pid of r.sandbox.sb.workerPids()) pss += criu.memoryOf(pid)?.pssKb ?? 0;
        cg += r.sandbox.sb.cgroup.usageBytes() / 1024;
      }
      // measured: end the holds now instead of waiting them out
      for (const r of rs) r.instance.kill();
      await Promise.all(runs);
      for (const r of rs) await factory(a.dir).destroy(r.sandbox);
      return { pssKb: pss, cgroupKb: cg, instances: rs.length };
    },
    async close() {
      for (const sb of [...live]) await driver.destroy(sb).catch(() => undefined);
      await driver.stop();
      fs.rmSync(root, { recursive: true, force: true });
    },
  };
}
