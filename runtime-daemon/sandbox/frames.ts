/**
 * Framing of the trenv-sandboxd protocol (see native/PROTOCOL.md): u32 LE length + fields separated
 * by NUL; the last field runs to the end of the frame and may hold any bytes.
 */

export const MAX_FRAME = 16 * 1024 * 1024;

export function encodeFrame(fields: Array<string | Buffer>): Buffer {
  const parts: Buffer[] = [];
  fields.forEach((f, i) => {
    const b = Buffer.isBuffer(f) ? f : Buffer.from(f, 'utf8');
    if (i < fields.length - 1 && b.includes(0)) throw new Error(`frame field ${i} contains a NUL byte`);
    parts.push(b);
    if (i < fields.length - 1) parts.push(Buffer.from([0]));
  });
  const body = Buffer.concat(parts);
  if (body.length > MAX_FRAME) throw new Error(`frame of ${body.length} bytes exceeds ${MAX_FRAME}`);
  const head = Buffer.alloc(4);
  head.writeUInt32LE(body.length, 0);
  return Buffer.concat([head, body]);
}

/** Splits a frame body into at most `maxFields` fields: the last one keeps the rest (NULs included). */
export function splitFields(body: Buffer, maxFields: number): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  while (out.length < maxFields - 1) {
    const nul = body.indexOf(0, start);
    if (nul < 0) break;
    out.push(body.subarray(start, nul));
    start = nul + 1;
  }
  out.push(body.subarray(start));
  return out;
}

/** Incremental decoder: feed chunks, get whole frame bodies. */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Buffer[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const frames: Buffer[] = [];
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32LE(0);
      if (len > MAX_FRAME) throw new Error(`sandboxd sent a frame of ${len} bytes (limit ${MAX_FRAME})`);
      if (this.buf.length < 4 + len) break;
      frames.push(this.buf.subarray(4, 4 + len));
      this.buf = this.buf.subarray(4 + len);
    }
    return frames;
  }
}

/** Parses `name:start:end,...` span lists that sandboxd sends with `created` / `reset-done`. */
export function parseSpans(field: string | undefined): Array<{ name: string; startNs: bigint; endNs: bigint }> {
  if (!field) return [];
  const v = field.startsWith('spans=') ? field.slice(6) : field;
  if (!v) return [];
  return v.split(',').flatMap((s) => {
    const [name, a, b] = s.split(':');
    if (!name || !a || !b) return [];
    try {
      return [{ name, startNs: BigInt(a), endNs: BigInt(b) }];
    } catch {
      return [];
    }
  });
}
