'use strict';
/**
 * Groups JSON records by a field and aggregates their numeric fields.
 *
 * Event: { "records": [{...}, ...], "groupBy": "field", "fields"?: ["amount", ...] }
 * Without `fields`, every field that is a number in all records having it is aggregated,
 * except identifiers (`id`, `*Id`, `*_id`).
 */
const zlib = require('node:zlib');

const MISSING = '(missing)';

function validate(event) {
  if (event === null || typeof event !== 'object') throw new TypeError('event must be an object');
  const { records, groupBy, fields } = event;
  if (!Array.isArray(records)) throw new TypeError('event.records must be an array of objects');
  if (typeof groupBy !== 'string' || groupBy === '') throw new TypeError('event.groupBy must be a non-empty string');
  if (fields !== undefined && !(Array.isArray(fields) && fields.every((f) => typeof f === 'string'))) {
    throw new TypeError('event.fields, if given, must be an array of field names');
  }
  const valid = [];
  const invalid = [];
  records.forEach((record, index) => {
    if (record === null || typeof record !== 'object' || Array.isArray(record)) {
      invalid.push({ index, reason: `expected an object, got ${record === null ? 'null' : Array.isArray(record) ? 'array' : typeof record}` });
    } else {
      valid.push(record);
    }
  });
  return { records: valid, invalid, groupBy, fields };
}

const isIdentifier = (key) => key === 'id' || /(?:Id|_id)$/.test(key);

/** Fields (other than groupBy and ids) that hold a finite number wherever they are present. */
function numericFields(records, groupBy) {
  const seen = new Map(); // field -> still numeric?
  for (const record of records) {
    for (const [key, value] of Object.entries(record)) {
      if (key === groupBy || isIdentifier(key)) continue;
      const numeric = typeof value === 'number' && Number.isFinite(value);
      seen.set(key, (seen.get(key) ?? true) && numeric);
    }
  }
  return [...seen].filter(([, numeric]) => numeric).map(([key]) => key).sort();
}

function aggregate(records, groupBy, fields) {
  const groups = new Map();
  for (const record of records) {
    const key = record[groupBy] === undefined || record[groupBy] === null ? MISSING : String(record[groupBy]);
    let group = groups.get(key);
    if (!group) {
      group = { key, count: 0, fields: {} };
      groups.set(key, group);
    }
    group.count += 1;
    for (const field of fields) {
      const value = record[field];
      if (typeof value !== 'number' || !Number.isFinite(value)) continue;
      const agg = (group.fields[field] ??= { count: 0, sum: 0, min: value, max: value });
      agg.count += 1;
      agg.sum += value;
      agg.min = Math.min(agg.min, value);
      agg.max = Math.max(agg.max, value);
    }
  }
  const round = (x) => Math.round(x * 1e6) / 1e6;
  return [...groups.values()]
    .sort((a, b) => b.count - a.count || a.key.localeCompare(b.key))
    .map((group) => {
      for (const agg of Object.values(group.fields)) {
        agg.sum = round(agg.sum);
        agg.mean = round(agg.sum / agg.count);
      }
      return group;
    });
}

exports.handler = async (event, context) => {
  const { records, invalid, groupBy, fields } = validate(event);
  if (invalid.length > 0) context.logger.warn('skipping invalid records', { count: invalid.length });

  const aggregated = fields ?? numericFields(records, groupBy);
  const groups = aggregate(records, groupBy, aggregated);
  context.logger.info('grouped', { records: records.length, groups: groups.length, fields: aggregated });

  const output = { groupBy, fields: aggregated, groups, invalid };
  const json = Buffer.from(JSON.stringify(output));
  const gzipped = zlib.gzipSync(json, { level: 9 });
  return {
    ...output,
    compression: { jsonBytes: json.length, gzipBytes: gzipped.length, ratio: Math.round((gzipped.length / json.length) * 1000) / 1000 },
  };
};
