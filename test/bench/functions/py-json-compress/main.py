"""Benchmark: generate N JSON records, serialise, parse back, compress with zlib and lzma.

Event: {"records": 3000, "seed": 42, "zlibLevel": 6, "lzmaPreset": 1}. Records come from
a linear congruential generator, so the JSON is the same on every machine.
Returns the sizes, the SHA-256 of the JSON text and that both compressions round-trip.
"""
import hashlib
import json
import lzma
import zlib

CITIES = ["Berlin", "Lisbon", "Osaka", "Lagos", "Lima", "Oslo", "Pune", "Quito"]


def _records(n, seed):
    x = seed & 0x7FFFFFFF
    out = []
    for i in range(n):
        x = (1103515245 * x + 12345) & 0x7FFFFFFF
        out.append({
            "id": i,
            "user": f"user{x % 5000:04d}",
            "city": CITIES[x % len(CITIES)],
            "score": (x % 10007) / 100.0,
            "active": bool(x & 4),
            "tags": [CITIES[(x >> s) % len(CITIES)].lower() for s in (4, 9, 14)],
            "point": {"lat": ((x >> 3) % 18000) / 100.0 - 90, "lon": ((x >> 5) % 36000) / 100.0 - 180},
        })
    return out


def handler(event, context):
    n = int(event.get("records", 3000))
    if not 0 <= n <= 500000:
        raise ValueError("records must be 0..500000")
    records = _records(n, int(event.get("seed", 42)))
    text = json.dumps(records, sort_keys=True, separators=(",", ":"))
    parsed = json.loads(text)
    raw = text.encode("utf-8")
    z = zlib.compress(raw, int(event.get("zlibLevel", 6)))
    x = lzma.compress(raw, preset=int(event.get("lzmaPreset", 1)))
    return {
        "records": len(parsed),
        "jsonBytes": len(raw),
        "zlibBytes": len(z),
        "lzmaBytes": len(x),
        "roundtrip": parsed == records and zlib.decompress(z) == raw and lzma.decompress(x) == raw,
        "sha256": hashlib.sha256(raw).hexdigest(),
    }
