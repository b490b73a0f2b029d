/** A raw SMTP client for transcript tests: writes bytes, reads whole (multi-line) replies. */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { until } from './servers.ts';

/** A raw SMTP client: writes bytes, reads whole (multi-line) replies. */
export class Wire {
  sock: Socket | TLSSocket;
  #buf = '';
  #closed = false;
  #wake: (() => void) | null = null;

  constructor(sock: Socket | TLSSocket) {
    this.sock = sock;
    this.#attach();
  }

  #attach(): void {
    this.sock.on('data', (c: Buffer) => {
      this.#buf += c.toString('utf8');
      this.#wake?.();
    });
    this.sock.on('close', () => {
      this.#closed = true;
      this.#wake?.();
    });
    this.sock.on('error', () => undefined);
  }

  static async open(port: number): Promise<Wire> {
    const sock = connect({ host: '127.0.0.1', port });
    await new Promise((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    return new Wire(sock);
  }

  send(data: string | Buffer): void {
    this.sock.write(data);
  }

  /** The next complete reply, e.g. "250-a\r\n250 b" as its lines. */
  async reply(): Promise<string> {
    for (;;) {
      const m = /^(?:\d{3}-[^\n]*\n)*\d{3}(?: [^\n]*)?\r?\n/.exec(this.#buf);
      if (m) {
        this.#buf = this.#buf.slice(m[0].length);
        return m[0].trimEnd();
      }
      if (this.#closed) throw new Error(`connection closed; unread: ${JSON.stringify(this.#buf)}`);
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  async cmd(line: string): Promise<string> {
    this.send(`${line}\r\n`);
    return this.reply();
  }

  async startTls(): Promise<void> {
    this.sock.removeAllListeners('data');
    const tls = tlsConnect({ socket: this.sock as Socket, rejectUnauthorized: false });
    await new Promise((resolve, reject) => tls.once('secureConnect', resolve).once('error', reject));
    this.sock = tls;
    this.#attach();
  }

  async closed(): Promise<void> {
    await until('the server to close the connection', async () => this.#closed);
  }

  end(): void {
    this.sock.destroy();
  }
}

/** Runs a C:/S: transcript; S: lines are prefixes of the reply's lines, joined by " | ". */
export async function transcript(w: Wire, script: string): Promise<void> {
  for (const raw of script.trim().split('\n')) {
    const line = raw.trim();
    if (line.startsWith('C: ')) w.send(`${line.slice(3)}\r\n`);
    else if (line.startsWith('S: ')) {
      const got = (await w.reply()).split(/\r?\n/).join(' | ');
      assert.ok(got.startsWith(line.slice(3)), `expected ${line.slice(3)}\n     got ${got}`);
    }
  }
}
