/** Pool logic with a fake driver (sinon): the real driver is covered by the integration tests. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import sinon from 'sinon';
import { SandboxPool } from '../../runtime-daemon/sandbox/pool';
import { ContainerDriver, ContainerSandbox, SandboxSpec } from '../../runtime-daemon/sandbox/container';
import type { SandboxCgroup } from '../../runtime-daemon/sandbox/cgroup';

const spec: SandboxSpec = { runtime: 'python', memoryMb: 128, pids: 64, tmpfsMb: 64, network: 'none' };

function fakeDriver(cleanMs = 5) {
  let n = 0;
  const driver = {
    create: sinon.fake(async (s: SandboxSpec, app: string) => {
      const sb = new ContainerSandbox(`sb${++n}`, s, {} as SandboxCgroup);
      sb.appDir = app;
      sb.state = 'idle';
      return { sandbox: sb, spans: [] };
    }),
    resize: sinon.fake((sb: ContainerSandbox, s: SandboxSpec) => {
      if (s.memoryMb === 999) throw new Error('EBUSY');
      sb.spec = { ...sb.spec, memoryMb: s.memoryMb, pids: s.pids };
    }),
    swapApp: sinon.fake(async (sb: ContainerSandbox, app: string) => {
      sb.appDir = app;
      return [];
    }),
    clean: sinon.fake(async () => {
      await new Promise((r) => setTimeout(r, cleanMs));
      return [];
    }),
    destroy: sinon.fake(async (sb: ContainerSandbox) => {
      sb.state = 'destroyed';
    }),
  };
  return driver;
}

test('a released sandbox is cleaned and repurposed for the same key only', async () => {
  const drv = fakeDriver();
  const pool = new SandboxPool(drv as unknown as ContainerDriver, '/empty');
  const a = await pool.acquire(spec, '/agents/a');
  assert.equal(a.how, 'fresh');
  await pool.release(a.sandbox, true);
  assert.equal(a.sandbox.state, 'idle');
  const other = await pool.acquire({ ...spec, network: 'egress' }, '/agents/x');
  assert.equal(other.how, 'fresh', 'another network mode never shares a sandbox');
  const b = await pool.acquire(spec, '/agents/b');
  assert.equal(b.how, 'repurposed');
  assert.equal(b.sandbox, a.sandbox);
  assert.equal(b.sandbox.appDir, '/agents/b');
  assert.equal(drv.clean.callCount, 1);
  await pool.close();
});

test('other memory/pids limits reuse a sandbox with its cgroup resized; a refused resize starts a fresh one', async () => {
  const drv = fakeDriver();
  const pool = new SandboxPool(drv as unknown as ContainerDriver, '/empty');
  const a = await pool.acquire(spec, '/agents/a');
  await pool.release(a.sandbox, true);
  const big = await pool.acquire({ ...spec, memoryMb: 256, pids: 64 }, '/agents/big');
  assert.equal(big.how, 'repurposed');
  assert.equal(big.sandbox, a.sandbox);
  assert.equal(big.sandbox.spec.memoryMb, 256);
  assert.equal(big.sandbox.spec.pids, 64);
  await pool.release(big.sandbox, true);
  const refused = await pool.acquire({ ...spec, memoryMb: 999 }, '/agents/r');
  assert.equal(refused.how, 'fresh');
  assert.equal(a.sandbox.state, 'destroyed', 'the sandbox that could not be resized is dropped');
  await pool.close();
});

test('acquire waits for a cleanup in flight instead of creating a fresh sandbox', async () => {
  const drv = fakeDriver(30);
  const pool = new SandboxPool(drv as unknown as ContainerDriver, '/empty');
  const a = await pool.acquire(spec, '/a');
  const releasing = pool.release(a.sandbox, true);
  const b = await pool.acquire(spec, '/b');
  await releasing;
  assert.equal(b.how, 'repurposed');
  assert.equal(drv.create.callCount, 1);
  await pool.close();
});

test('fresh acquisitions bypass the pool; release without reuse destroys', async () => {
  const drv = fakeDriver();
  const pool = new SandboxPool(drv as unknown as ContainerDriver, '/empty');
  const a = await pool.acquire(spec, '/a');
  await pool.release(a.sandbox, true);
  const f = await pool.acquire(spec, '/b', { fresh: true });
  assert.equal(f.how, 'fresh');
  await pool.release(f.sandbox, false);
  assert.equal(f.sandbox.state, 'destroyed');
  assert.equal(drv.destroy.callCount, 1);
  await pool.close();
});

test('the pool is bounded and idle sandboxes expire', async () => {
  const drv = fakeDriver(1);
  const pool = new SandboxPool(drv as unknown as ContainerDriver, '/empty');
  pool.config.maxIdle = 2;
  const got = await Promise.all([1, 2, 3].map((i) => pool.acquire(spec, `/a${i}`)));
  await Promise.all(got.map((g) => pool.release(g.sandbox, true)));
  assert.equal(pool.list().length, 2, 'third one destroyed: the pool holds at most 2 idle');
  pool.config.idleTtlMs = 1000;
  assert.equal(await pool.evictExpired(Date.now() + 5000), 2);
  assert.equal(pool.list().length, 0);
  await pool.close();
});

test('a sandbox that cannot take a new app is dropped and a fresh one made', async () => {
  const drv = fakeDriver(1);
  const pool = new SandboxPool(drv as unknown as ContainerDriver, '/empty');
  const warnings: string[] = [];
  pool.on('warn', (m: string) => warnings.push(m));
  const a = await pool.acquire(spec, '/a');
  await pool.release(a.sandbox, true);
  drv.swapApp = sinon.fake.rejects(new Error('init is gone'));
  const b = await pool.acquire(spec, '/b');
  assert.equal(b.how, 'fresh');
  assert.equal(a.sandbox.state, 'destroyed');
  assert.match(warnings[0], /repurposing sb1 failed \(init is gone\)/);
  await pool.close();
});

test('prewarm fills the pool ahead of demand', async () => {
  const drv = fakeDriver(1);
  const pool = new SandboxPool(drv as unknown as ContainerDriver, '/empty');
  assert.equal(await pool.prewarm(spec, 3), 3);
  const a = await pool.acquire(spec, '/a');
  assert.equal(a.how, 'repurposed');
  await pool.close();
  assert.equal(drv.destroy.callCount, 3);
});
