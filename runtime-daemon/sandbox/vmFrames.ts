/**
 * Binary frames over a virtio-serial port's host socket, as the guest agent speaks them on its
 * multiplexing ports (org.trenv.cdp, org.trenv.exec; see native/guest/PROTOCOL.md):
 *
 *   type (1 byte) | stream id (u32 BE) | payload length (u32 BE) | payload (at most 1 MiB)
 */
import type * as net from 'node:net';

export const FRAME_HDR = 9;
export const MAX_FRAME = 1024 * 1024;

export class FramePort {
  private buf: Buffer = Buffer.alloc(0);

  /** `onBad`: a length above MAX_FRAME arrived, the stream is out of step (what is buffered is dropped). */
  constructor(
    readonly sock: net.Socket,
    private readonly onFrame: (type: number, id: number, payload: Buffer) => void,
    private readonly onBad: () => void,
  ) {
    sock.on('data', (d: Buffer) => this.feed(d));
    sock.on('error', () => undefined); // the VM went away: its close handler does the cleanup
  }

  /** Sends one frame (payloads above MAX_FRAME are split); false when the socket's buffer is full. */
  send(type: number, id: number, payload?: Buffer): boolean {
    if (this.sock.destroyed) return true;
    if (payload && payload.length > MAX_FRAME) {
      let ok = true;
      for (let o = 0; o < payload.length; o += MAX_FRAME) ok = this.send(type, id, payload.subarray(o, o + MAX_FRAME));
      return ok;
    }
    const h = Buffer.alloc(FRAME_HDR);
    h[0] = type;
    h.writeUInt32BE(id, 1);
    h.writeUInt32BE(payload?.length ?? 0, 5);
    return this.sock.write(payload?.length ? Buffer.concat([h, payload]) : h);
  }

  private feed(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    let off = 0;
    while (this.buf.length - off >= FRAME_HDR) {
      const type = this.buf[off];
      const id = this.buf.readUInt32BE(off + 1);
      const len = this.buf.readUInt32BE(off + 5);
      if (len > MAX_FRAME) {
        this.buf = Buffer.alloc(0);
        this.onBad();
        return;
      }
      if (this.buf.length - off < FRAME_HDR + len) break;
      const payload = this.buf.subarray(off + FRAME_HDR, off + FRAME_HDR + len);
      off += FRAME_HDR + len;
      this.onFrame(type, id, payload);
    }
    this.buf = this.buf.subarray(off);
  }
}
