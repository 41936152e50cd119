"""Benchmark agent: imports what a typical LLM agent imports, does a little work, then stays alive."""
import asyncio
import decimal
import email.parser
import http.client
import json
import sqlite3
import ssl
import time
import uuid


def handler(event, context):
    db = sqlite3.connect(":memory:")
    db.execute("create table t (k text, v real)")
    db.executemany("insert into t values (?, ?)", [(str(uuid.uuid4()), i * 0.5) for i in range(200)])
    total = db.execute("select sum(v) from t").fetchone()[0]
    time.sleep(float(event.get("hold_ms", 0)) / 1000)
    return {"total": str(decimal.Decimal(total)), "ssl": ssl.OPENSSL_VERSION.split()[0], "loop": type(asyncio.new_event_loop()).__name__,
            "mime": email.parser.Parser().parsestr("Subject: x\n\nbody")["Subject"], "json": json.dumps({"ok": True}), "http": http.client.OK}
