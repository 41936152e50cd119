/** Checks shared by the E2B tests of container and microVM sandboxes (real `e2b` SDK). */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as E2B from 'e2b';

/**
 * A non-zero exit is CommandExitError with the output so far; envs and cwd reach the command;
 * `seq 1 <n>` arrives whole and in order, the streamed chunks too (the command waits when the
 * reader lags).
 */
export async function checkExitEnvAndOutput(sb: E2B.Sandbox, n: number): Promise<void> {
  await assert.rejects(sb.commands.run('echo before; exit 7'), (e: unknown) => {
    assert.ok(e instanceof E2B.CommandExitError);
    assert.equal(e.exitCode, 7);
    assert.equal(e.stdout, 'before\n');
    return true;
  });
  const envd = await sb.commands.run('echo "$FOO:$PWD"', { envs: { FOO: 'bar' }, cwd: '/tmp' });
  assert.equal(envd.stdout, 'bar:/tmp\n');
  let bytes = 0;
  const many = await sb.commands.run(`seq 1 ${n}`, { onStdout: (x) => void (bytes += x.length) });
  const expected = execFileSync('seq', ['1', String(n)], { encoding: 'utf8', maxBuffer: 1 << 26 });
  assert.equal(many.stdout.length, expected.length);
  assert.equal(bytes, expected.length);
  assert.ok(many.stdout === expected, 'same bytes in the same order');
}

/**
 * Files relative to the sandbox user's home: write, read, exists, makeDir (again: false), rename,
 * list with depth 2. Leaves dir/sub/b.txt (10 bytes) behind.
 */
export async function checkFileBasics(sb: E2B.Sandbox): Promise<void> {
  const w = await sb.files.write('dir/a.txt', 'hello file');
  assert.equal(w.path, '/home/agent/dir/a.txt');
  assert.equal(await sb.files.read('/home/agent/dir/a.txt'), 'hello file');
  assert.equal(await sb.files.exists('dir/a.txt'), true);
  assert.equal(await sb.files.exists('dir/none'), false);
  assert.equal(await sb.files.makeDir('dir/sub'), true);
  assert.equal(await sb.files.makeDir('dir/sub'), false, 'exists already');
  assert.equal((await sb.files.rename('dir/a.txt', 'dir/sub/b.txt')).path, '/home/agent/dir/sub/b.txt');
  const names = (await sb.files.list('dir', { depth: 2 })).map((x) => `${x.type}:${x.path}`).sort();
  assert.deepEqual(names, ['dir:/home/agent/dir/sub', 'file:/home/agent/dir/sub/b.txt']);
}
