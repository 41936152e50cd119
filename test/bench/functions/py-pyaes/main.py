"""Benchmark: AES-128-CTR encrypt then decrypt N KiB with pure-Python pyaes.

Event: {"kib": 8, "rounds": 1, "seed": "trenv"}. The plaintext and key are derived
from the seed with SHA-256, so the result is the same on every machine.
Returns the SHA-256 of the (last round's) ciphertext and whether decryption round-trips.
"""
import hashlib

import pyaes


def _stream(seed: bytes, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


def handler(event, context):
    kib = int(event.get("kib", 8))
    rounds = int(event.get("rounds", 1))
    if not 1 <= kib <= 4096 or not 1 <= rounds <= 100:
        raise ValueError("kib must be 1..4096 and rounds 1..100")
    seed = str(event.get("seed", "trenv")).encode()
    key = hashlib.sha256(b"key:" + seed).digest()[:16]
    plaintext = _stream(b"data:" + seed, kib * 1024)

    ciphertext = b""
    ok = True
    for r in range(rounds):
        enc = pyaes.AESModeOfOperationCTR(key, counter=pyaes.Counter(initial_value=r))
        ciphertext = enc.encrypt(plaintext)
        dec = pyaes.AESModeOfOperationCTR(key, counter=pyaes.Counter(initial_value=r))
        ok = ok and dec.decrypt(ciphertext) == plaintext
    return {
        "bytes": len(plaintext),
        "rounds": rounds,
        "roundtrip": ok,
        "sha256": hashlib.sha256(ciphertext).hexdigest(),
    }
