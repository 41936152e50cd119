/**
 * The shared browser for microVMs, host side. A VM has no network device; its guest agent listens
 * on the guest's own 127.0.0.1:9222 and carries every TCP connection made there over a second
 * virtio-serial port (org.trenv.cdp) as binary frames:
 *
 *   type (1 byte: 1 open, 2 data, 3 close) | connection id (u32 BE) | length (u32 BE) | payload
 *
 * This side joins each guest connection to a unix socket: the sandbox's own filtering CDP endpoint
 * of the browser broker (the same endpoint a container sandbox reaches through `trenv-enter
 * expose`). Without a target (the agent did not ask for a browser) a guest connection is closed at
 * once. The frame format is also described in native/guest/PROTOCOL.md.
 */
import * as net from 'node:net';
import { FramePort } from './vmFrames';

export const CDP_PORT_NAME = 'org.trenv.cdp';
const enum F {
  Open = 1,
  Data = 2,
  Close = 3,
}

export class CdpRelay {
  private target: string | undefined;
  private readonly conns = new Map<number, net.Socket>();
  private readonly frames: FramePort;
  /** connections the guest opened since the relay started (for traces and tests) */
  opened = 0;

  constructor(private readonly port: net.Socket) {
    // a frame longer than the format allows: out of step with the guest, nothing after it can be trusted
    this.frames = new FramePort(port, (type, id, payload) => this.onFrame(type, id, payload), () => this.dropAll());
    port.on('close', () => this.dropAll());
  }

  /** Where guest connections go from now on (undefined: refuse them; open ones are closed). */
  setTarget(unixSocket: string | undefined): void {
    this.target = unixSocket;
    if (!unixSocket) this.dropAll(true);
  }

  close(): void {
    this.dropAll();
    this.port.destroy();
  }

  private frame(type: F, id: number, payload?: Buffer): void {
    this.frames.send(type, id, payload);
  }

  private dropAll(tellGuest = false): void {
    for (const [id, c] of this.conns) {
      this.conns.delete(id);
      c.destroy();
      if (tellGuest) this.frame(F.Close, id);
    }
  }

  private onFrame(type: number, id: number, payload: Buffer): void {
    if (type === F.Open) this.open(id);
    else if (type === F.Data) this.conns.get(id)?.write(Buffer.from(payload));
    else if (type === F.Close) {
      const c = this.conns.get(id);
      this.conns.delete(id);
      c?.end();
    }
  }

  private open(id: number): void {
    this.opened++;
    if (!this.target) {
      this.frame(F.Close, id);
      return;
    }
    const c = net.connect(this.target);
    this.conns.set(id, c);
    c.on('data', (b: Buffer) => this.frame(F.Data, id, b));
    c.on('error', () => undefined);
    c.on('close', () => {
      if (this.conns.get(id) === c) {
        this.conns.delete(id);
        this.frame(F.Close, id);
      }
    });
  }
}
