'use strict';
/**
 * Benchmark: render an HTML page with a table of N rows using template literals (no dependencies),
 * HTML-escaping every value, like a server-side page render (SeBS dynamic-html).
 *
 * Event: { "rows": 20000, "title": "...", "seed": 7 }. Row data come from a linear congruential
 * generator, so the page is the same on every machine. Returns the page size and its SHA-256.
 */
const crypto = require('node:crypto');

const REGIONS = ['eu', 'us', 'apac', 'latam'];
const WORDS = ['alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta', 'theta', '<iota>', 'kappa & co'];
const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&#34;', "'": '&#39;' };
const esc = (v) => String(v).replace(/[&<>"']/g, (c) => ESC[c]);
const title = (s) => s.charAt(0).toUpperCase() + s.slice(1);

function rows(n, seed) {
  let x = seed & 0x7fffffff;
  const out = [];
  for (let i = 0; i < n; i++) {
    x = Number((1103515245n * BigInt(x) + 12345n) & 0x7fffffffn);
    out.push({
      id: i + 1,
      name: `${WORDS[x % WORDS.length]}-${x % 9973}`,
      region: REGIONS[(x >>> 8) % REGIONS.length],
      amount: (x % 100000) / 100,
      tags: [3, 7, 11].map((s) => WORDS[(x >>> s) % WORDS.length]).slice(0, 1 + (x % 3)),
    });
  }
  return out;
}

const renderRow = (r, i) =>
  `    <tr class="${i % 2 ? 'even' : 'odd'}${r.amount > 900 ? ' big' : ''}">
      <td>${r.id}</td><td>${esc(r.name)}</td><td>${esc(r.region.toUpperCase())}</td>
      <td>${r.amount.toFixed(2)}</td><td>${esc(r.tags.join(', '))}</td>
    </tr>`;

function page({ heading, columns, data }) {
  const total = data.reduce((s, r) => s + r.amount, 0);
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>${esc(heading)}</title></head>
<body>
<h1>${esc(heading)}</h1>
<p>${data.length} rows, total ${total.toFixed(2)}</p>
<table>
  <thead><tr>${columns.map((c) => `<th>${esc(title(c))}</th>`).join('')}</tr></thead>
  <tbody>
${data.map(renderRow).join('\n')}
  </tbody>
</table>
</body>
</html>
`;
}

exports.handler = (event = {}) => {
  const n = Number(event.rows ?? 20000);
  if (!Number.isInteger(n) || n < 0 || n > 1000000) throw new RangeError('rows must be 0..1000000');
  const html = page({
    heading: String(event.title ?? 'Report'),
    columns: ['id', 'name', 'region', 'amount', 'tags'],
    data: rows(n, Number(event.seed ?? 7)),
  });
  const buf = Buffer.from(html, 'utf8');
  return { rows: n, bytes: buf.length, sha256: crypto.createHash('sha256').update(buf).digest('hex') };
};
