'use strict';
/**
 * Benchmark: CPU-bound hashing with node:crypto — a PBKDF2-HMAC-SHA256 key derivation,
 * then a SHA-256 hash chain over a derived block, then an HMAC of the result.
 *
 * Event: { "password": "...", "salt": "trenv", "iterations": 50000, "chain": 50000, "blockKib": 4 }.
 * Fully deterministic: returns hex digests that are the same on every machine.
 */
const crypto = require('node:crypto');

exports.handler = (event = {}) => {
  const iterations = Number(event.iterations ?? 50000);
  const chain = Number(event.chain ?? 50000);
  const blockKib = Number(event.blockKib ?? 4);
  if (!(Number.isInteger(iterations) && iterations >= 1 && iterations <= 10_000_000)) throw new RangeError('iterations must be 1..10000000');
  if (!(Number.isInteger(chain) && chain >= 0 && chain <= 10_000_000)) throw new RangeError('chain must be 0..10000000');
  if (!(Number.isInteger(blockKib) && blockKib >= 1 && blockKib <= 1024)) throw new RangeError('blockKib must be 1..1024');

  const key = crypto.pbkdf2Sync(String(event.password ?? 'password'), String(event.salt ?? 'trenv'), iterations, 32, 'sha256');
  // A block of blockKib KiB expanded from the key, re-hashed `chain` times (digest || block).
  const block = Buffer.alloc(blockKib * 1024);
  for (let off = 0, i = 0; off < block.length; off += 32, i++) {
    crypto.createHash('sha256').update(key).update(String(i)).digest().copy(block, off);
  }
  let digest = crypto.createHash('sha256').update(block).digest();
  for (let i = 0; i < chain; i++) digest = crypto.createHash('sha256').update(digest).update(block.subarray(0, 64)).digest();
  const mac = crypto.createHmac('sha256', key).update(digest).digest('hex');
  return { iterations, chain, blockBytes: block.length, key: key.toString('hex'), chainDigest: digest.toString('hex'), hmac: mac };
};
