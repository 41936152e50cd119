"""Benchmark: render an HTML page with a table of N rows with jinja2.

Event: {"rows": 2000, "title": "...", "seed": 7}. Row data come from a small linear
congruential generator, so the page is the same on every machine.
Returns the page size and its SHA-256.
"""
import hashlib

import jinja2

TEMPLATE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{{ title | e }}</title></head>
<body>
<h1>{{ title | e }}</h1>
<p>{{ rows | length }} rows, total {{ "%.2f" | format(total) }}</p>
<table>
  <thead><tr>{% for c in columns %}<th>{{ c | title }}</th>{% endfor %}</tr></thead>
  <tbody>
  {%- for row in rows %}
    <tr class="{{ loop.cycle('odd', 'even') }}{% if row.amount > 900 %} big{% endif %}">
      <td>{{ row.id }}</td><td>{{ row.name | e }}</td><td>{{ row.region | upper }}</td>
      <td>{{ "%.2f" | format(row.amount) }}</td><td>{{ row.tags | join(", ") }}</td>
    </tr>
  {%- endfor %}
  </tbody>
</table>
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_TEMPLATE = _ENV.from_string(TEMPLATE)
REGIONS = ["eu", "us", "apac", "latam"]
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "<iota>", "kappa & co"]


def _rows(n, seed):
    x = seed & 0x7FFFFFFF
    out = []
    for i in range(n):
        x = (1103515245 * x + 12345) & 0x7FFFFFFF
        out.append({
            "id": i + 1,
            "name": f"{WORDS[x % len(WORDS)]}-{x % 9973}",
            "region": REGIONS[(x >> 8) % len(REGIONS)],
            "amount": (x % 100000) / 100.0,
            "tags": [WORDS[(x >> s) % len(WORDS)] for s in (3, 7, 11)][: 1 + x % 3],
        })
    return out


def handler(event, context):
    n = int(event.get("rows", 2000))
    if not 0 <= n <= 200000:
        raise ValueError("rows must be 0..200000")
    rows = _rows(n, int(event.get("seed", 7)))
    html = _TEMPLATE.render(
        title=str(event.get("title", "Report")),
        columns=["id", "name", "region", "amount", "tags"],
        rows=rows,
        total=sum(r["amount"] for r in rows),
    )
    data = html.encode("utf-8")
    return {"rows": n, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
