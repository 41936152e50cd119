'use strict';
// Test agent of the daemon guest (kernel-modules/test/daemon-guest.sh). At load it builds a state
// (~20 MB of objects and a typed array), which a template holds; the handler reports a digest of that
// state (the same in every instance), how many of its maps are mm_template files (0 when cold),
// and random values (different in every re-seeded instance).
const crypto = require('node:crypto');
const fs = require('node:fs');

const docs = [];
for (let i = 0; i < 60000; i++) docs.push({ id: i, title: `record ${i}`, tags: [`t${i % 13}`, `u${i % 7}`] });
const table = new Float64Array(1 << 20);
for (let i = 0; i < table.length; i++) table[i] = (i * 7919) % 1000;

exports.handler = async (event) => {
  const h = crypto.createHash('sha256');
  for (let i = 0; i < docs.length; i += 101) h.update(`${docs[i].id}:${docs[i].title}:${docs[i].tags.join(',')}`);
  for (let i = 0; i < table.length; i += 1009) h.update(String(table[i]));
  const maps = fs.readFileSync('/proc/self/maps', 'utf8').split('\n');
  return {
    digest: h.digest('hex'),
    sum: (event.values ?? []).reduce((a, b) => a + b, 0),
    templateMaps: maps.filter((l) => l.includes('/run/mm_template/')).length,
    random: Math.random(),
    uuid: crypto.randomUUID(),
  };
};
