import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkJsonRpcShape } from '../../runtime-daemon/protocol/transport';
import { checkUpgrade, tokenMatches } from '../../runtime-daemon/server/server';
import type { IncomingMessage } from 'node:http';

test('JSON-RPC shapes: valid ones pass', () => {
  assert.equal(checkJsonRpcShape({ jsonrpc: '2.0', id: 1, method: 'trenv/status' }), undefined);
  assert.equal(checkJsonRpcShape({ jsonrpc: '2.0', method: 'x', params: {} }), undefined);
  assert.equal(checkJsonRpcShape({ jsonrpc: '2.0', id: 'a', result: null }), undefined);
});

test('JSON-RPC shapes: malformed ones get InvalidRequest with the id when known', () => {
  assert.equal(checkJsonRpcShape([1, 2])?.code, -32600);
  assert.equal(checkJsonRpcShape(42)?.code, -32600);
  assert.equal(checkJsonRpcShape(null)?.code, -32600);
  assert.deepEqual(checkJsonRpcShape({ id: 3, method: 'x' }), { code: -32600, message: 'missing "jsonrpc": "2.0"', id: 3 });
  assert.equal(checkJsonRpcShape({ jsonrpc: '2.0', id: {}, method: 'x' })?.id, null);
  assert.equal(checkJsonRpcShape({ jsonrpc: '2.0', id: 1, method: 5 })?.code, -32600);
  assert.equal(checkJsonRpcShape({ jsonrpc: '2.0', id: 1, method: 'x', params: 'str' })?.code, -32600);
  assert.equal(checkJsonRpcShape({ jsonrpc: '2.0', id: 1 })?.code, -32600);
});

test('token comparison', () => {
  assert.ok(tokenMatches('abc', 'Bearer abc'));
  assert.ok(!tokenMatches('abc', 'Bearer abd'));
  assert.ok(!tokenMatches('abc', 'Bearer ab'));
  assert.ok(!tokenMatches('abc', 'abc'));
  assert.ok(!tokenMatches('abc', undefined));
});

test('upgrade checks: origin and token', () => {
  const req = (headers: Record<string, string>) => ({ headers }) as unknown as IncomingMessage;
  assert.deepEqual(checkUpgrade(req({ authorization: 'Bearer t' }), 't'), { ok: true });
  const withOrigin = checkUpgrade(req({ authorization: 'Bearer t', origin: 'http://evil.example' }), 't');
  assert.equal(withOrigin.ok, false);
  assert.equal((withOrigin as { status: number }).status, 403);
  assert.equal((checkUpgrade(req({}), 't') as { status: number }).status, 401);
  assert.equal((checkUpgrade(req({ authorization: 'Bearer x' }), 't') as { status: number }).status, 401);
});
