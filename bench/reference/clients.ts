/**
 * The protocol clients of the comparative benchmark (bench/compare.ts), the same code against
 * Postino and against Postfix + Dovecot: a minimal IMAP client (one command at a time, literals
 * skipped by count, APPEND/MULTIAPPEND with LITERAL+), a POP3 client, and a one-message SMTP
 * client that times the reply to the end of DATA. Loopback only.
 */
import net from 'node:net';

function open(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.setNoDelay(true);
    s.once('error', reject);
  });
}

export interface ImapReply {
  /** OK, NO or BAD. */
  status: string;
  lines: string[];
  /** Octets of literals in the reply (message bodies for FETCH BODY[]). */
  literalOctets: number;
  /** The tagged line after the tag. */
  text?: string;
}

export class ImapClient {
  readonly #socket: net.Socket;
  #buffer: Buffer = Buffer.alloc(0);
  #literalLeft = 0;
  #literalOctets = 0;
  #waiting: { tag: string; resolve: (r: ImapReply) => void; lines: string[] } | null = null;
  #greeting: ((line: string) => void) | null;
  #n = 0;
  #closed: Error | null = null;
  /** Untagged lines that arrive while no command is running (IDLE's EXISTS). */
  onUntagged: ((line: string) => void) | null = null;

  private constructor(socket: net.Socket, greeting: (line: string) => void) {
    this.#socket = socket;
    this.#greeting = greeting;
    socket.on('data', (chunk: Buffer) => this.#receive(chunk));
    const fail = (err: Error) => {
      this.#closed = err;
      const w = this.#waiting;
      this.#waiting = null;
      w?.resolve({ status: 'BYE', lines: [...w.lines, err.message], literalOctets: 0 });
    };
    socket.on('error', fail);
    socket.on('close', () => fail(new Error('connection closed')));
  }

  static async connect(port: number): Promise<ImapClient> {
    const socket = await open(port);
    let greeted: (line: string) => void = () => undefined;
    const greeting = new Promise<string>((resolve) => (greeted = resolve));
    const c = new ImapClient(socket, greeted);
    const line = await greeting;
    if (!line.startsWith('* OK')) throw new Error(`IMAP greeting: ${line}`);
    return c;
  }

  #receive(chunk: Buffer): void {
    this.#buffer = this.#buffer.length ? Buffer.concat([this.#buffer, chunk]) : chunk;
    for (;;) {
      if (this.#literalLeft > 0) {
        const take = Math.min(this.#literalLeft, this.#buffer.length);
        this.#literalLeft -= take;
        this.#literalOctets += take;
        this.#buffer = this.#buffer.subarray(take);
        if (this.#literalLeft > 0) return;
      }
      const end = this.#buffer.indexOf('\r\n');
      if (end < 0) return;
      const line = this.#buffer.subarray(0, end).toString('latin1');
      this.#buffer = this.#buffer.subarray(end + 2);
      const literal = /\{(\d+)\}$/.exec(line);
      if (literal) this.#literalLeft = Number(literal[1]);
      if (this.#greeting) {
        const g = this.#greeting;
        this.#greeting = null;
        g(line);
        continue;
      }
      const w = this.#waiting;
      if (!w) {
        this.onUntagged?.(line);
        continue;
      }
      if (line.startsWith(`${w.tag} `)) {
        this.#waiting = null;
        const octets = this.#literalOctets;
        this.#literalOctets = 0;
        w.resolve({
          status: line.slice(w.tag.length + 1).split(' ')[0] ?? '',
          lines: w.lines,
          literalOctets: octets,
          text: line.slice(w.tag.length + 1),
        });
      } else {
        w.lines.push(line);
        this.onUntagged?.(line);
      }
    }
  }

  /** Sends a command (with LITERAL+ literals, if any) and waits for its tagged reply. */
  command(text: string, literals: Buffer[] = []): Promise<ImapReply> {
    if (this.#closed)
      return Promise.resolve({ status: 'BYE', lines: [this.#closed.message], literalOctets: 0 });
    const tag = `b${++this.#n}`;
    const lines: string[] = [];
    const done = new Promise<ImapReply>((resolve) => (this.#waiting = { tag, resolve, lines }));
    this.#literalOctets = 0;
    if (literals.length === 0) this.#socket.write(`${tag} ${text}\r\n`);
    else {
      // text holds one `{}` per literal: each becomes {n+} followed by the data.
      const parts = text.split('{}');
      const out: Buffer[] = [Buffer.from(`${tag} ${parts[0] ?? ''}`)];
      literals.forEach((l, i) => {
        out.push(Buffer.from(`{${l.length}+}\r\n`), l, Buffer.from(parts[i + 1] ?? ''));
      });
      out.push(Buffer.from('\r\n'));
      this.#socket.write(Buffer.concat(out));
    }
    return done;
  }

  /** Like command(), but a reply other than OK is an error. */
  async ok(text: string, literals: Buffer[] = []): Promise<ImapReply> {
    const r = await this.command(text, literals);
    if (r.status !== 'OK')
      throw new Error(`${text.split(' ')[0]}: ${r.text ?? r.status} ${r.lines.slice(-1)[0] ?? ''}`);
    return r;
  }

  async login(user: string, password: string): Promise<void> {
    await this.ok(`LOGIN "${user}" "${password}"`);
  }

  /** Messages in a mailbox, by STATUS. */
  async messages(mailbox = 'INBOX'): Promise<number> {
    const r = await this.ok(`STATUS ${mailbox} (MESSAGES)`);
    const m = /MESSAGES (\d+)/.exec(r.lines.join(' '));
    return Number(m?.[1] ?? 0);
  }

  /** APPENDs the messages in commands of `per` messages each (MULTIAPPEND, RFC 3502). */
  async append(mailbox: string, messages: Buffer[], per = 1): Promise<void> {
    for (let i = 0; i < messages.length; i += per) {
      const batch = messages.slice(i, i + per);
      await this.ok(`APPEND ${mailbox}${' {}'.repeat(batch.length)}`, batch);
    }
  }

  async logout(): Promise<void> {
    await this.command('LOGOUT').catch(() => undefined);
    this.#socket.destroy();
  }

  close(): void {
    this.#socket.destroy();
  }
}

/** One POP3 connection, one command at a time. */
export class Pop3Client {
  readonly #socket: net.Socket;
  #chunks: Buffer[] = [];
  #tail = '';
  #multi = false;
  #done: ((data: Buffer) => void) | null = null;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    socket.on('data', (chunk: Buffer) => this.#receive(chunk));
    socket.on('error', () => this.#done?.(Buffer.from('-ERR connection error\r\n')));
  }

  static async connect(port: number): Promise<Pop3Client> {
    const c = new Pop3Client(await open(port));
    const greeting = await c.#wait(false);
    if (greeting[0] !== 0x2b) throw new Error(`POP3 greeting: ${greeting.toString('latin1')}`);
    return c;
  }

  #receive(chunk: Buffer): void {
    this.#chunks.push(chunk);
    this.#tail = (this.#tail + chunk.toString('latin1')).slice(-5);
    const complete = this.#multi
      ? this.#tail.endsWith('\r\n.\r\n') || (this.#chunks.length === 1 && chunk[0] === 0x2d)
      : this.#tail.endsWith('\r\n');
    if (!complete || !this.#done) return;
    const data = Buffer.concat(this.#chunks);
    this.#chunks = [];
    this.#tail = '';
    const done = this.#done;
    this.#done = null;
    done(data);
  }

  #wait(multi: boolean): Promise<Buffer> {
    this.#multi = multi;
    return new Promise((resolve) => (this.#done = resolve));
  }

  async command(line: string, multi = false): Promise<Buffer> {
    const reply = this.#wait(multi);
    this.#socket.write(`${line}\r\n`);
    const data = await reply;
    if (data[0] !== 0x2b) throw new Error(`${line.split(' ')[0]}: ${data.toString('latin1').trim()}`);
    return data;
  }

  async login(user: string, password: string): Promise<void> {
    await this.command(`USER ${user}`);
    await this.command(`PASS ${password}`);
  }

  async quit(): Promise<void> {
    await this.command('QUIT').catch(() => undefined);
    this.#socket.destroy();
  }
}

/**
 * One SMTP transaction on a fresh connection; resolves with the time the end of DATA was written
 * and the time its reply arrived (performance.now() milliseconds). A reply other than 2xx/3xx
 * where expected is an error.
 */
export async function smtpSendOne(
  port: number,
  from: string,
  to: string,
  message: Buffer,
): Promise<{ dataEnd: number; replied: number }> {
  const s = await open(port);
  let buf = '';
  let want: ((line: string) => void) | null = null;
  s.on('data', (c: Buffer) => {
    buf += c.toString('latin1');
    // A complete reply: its last line has a space after the code.
    const m = /(?:^|\r\n)(\d{3}) [^\r\n]*\r\n$/.exec(buf);
    if (m && want) {
      const reply = buf;
      buf = '';
      const w = want;
      want = null;
      w(reply);
    }
  });
  const reply = () => new Promise<string>((resolve) => (want = resolve));
  const expect = async (code: string, line?: string | Buffer): Promise<void> => {
    const r = reply();
    if (line !== undefined) s.write(line);
    const text = await r;
    if (!text.split('\r\n').some((l) => l.startsWith(`${code} `)))
      throw new Error(`SMTP: wanted ${code}, got ${text.trim()}`);
  };
  try {
    await expect('220');
    await expect('250', 'EHLO bench.client\r\n');
    await expect('250', `MAIL FROM:<${from}>\r\n`);
    await expect('250', `RCPT TO:<${to}>\r\n`);
    await expect('354', 'DATA\r\n');
    const r = reply();
    s.write(message);
    const dataEnd = performance.now();
    s.write('.\r\n'); // the message ends with CRLF
    const text = await r;
    const replied = performance.now();
    if (!text.startsWith('250')) throw new Error(`SMTP end of DATA: ${text.trim()}`);
    s.write('QUIT\r\n');
    return { dataEnd, replied };
  } finally {
    s.end();
  }
}

/** A message of about `octets` octets (CRLF lines, no line starting with a dot). */
export function message(n: number, to: string, octets = 2048): Buffer {
  const header =
    `From: bench@remote.test\r\nTo: ${to}\r\nSubject: bench message ${n}\r\n` +
    `Date: Thu, 26 Nov 2026 12:00:00 +0000\r\nMessage-ID: <${n}.${Date.now()}@bench>\r\n\r\n`;
  const line = `${'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(2)}\r\n`;
  const body = line.repeat(Math.max(1, Math.ceil((octets - header.length) / line.length)));
  return Buffer.from(header + body);
}
