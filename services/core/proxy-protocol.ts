/**
 * PROXY protocol v1 (text) and v2 (binary), as specified by HAProxy's "The PROXY protocol"
 * (haproxy.org/download/2.9/doc/proxy-protocol.txt, referred to below as "spec §n").
 *
 * A load balancer in front of Postino (a cloud LB, HAProxy, Traefik, an ingress) opens its own TCP
 * connection and writes one header carrying the real client's address before any byte of the
 * client's. Two layers here:
 *   - `parseProxyHeader`: a pure, incremental parser (bytes → header or "need more" or an error);
 *   - `acceptProxied`: for a socket just accepted by a listener, reads the header only when the peer
 *     is a trusted source (spec §1: a receiver must never accept the header from anyone else, or any
 *     client could forge its address), pushes the bytes after it back into the socket, and reports
 *     the client's address.
 */
import { BlockList, isIPv4, isIPv6, type Socket } from 'node:net';

/** spec §2.2: a v1 header is at most 107 bytes including CRLF. */
export const V1_MAX_LENGTH = 107;
/** spec §2.2: the 12-byte v2 signature. */
export const V2_SIGNATURE = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);
/** v2 fixed part: signature, version/command, family/protocol, 2-byte length. */
const V2_FIXED = 16;
/**
 * Largest v2 address block we accept: the spec allows 65535, but the addresses are at most 216
 * bytes (UNIX) and TLVs from real balancers (AWS, GCP, Azure) stay well under 1 KiB.
 */
export const V2_MAX_PAYLOAD = 4096;
/** Time a trusted peer gets to send its header (spec §2.2 asks receivers to bound it). */
export const HEADER_TIMEOUT_MS = 10_000;

const V1_PREFIX = Buffer.from('PROXY ', 'ascii');

/** What the header says about the connection. */
export interface ProxyHeader {
  version: 1 | 2;
  /**
   * 'proxy': the addresses are the client's (source) and the address it connected to (destination).
   * 'local': the balancer's own connection, e.g. a health check (v2 LOCAL, v1 UNKNOWN): keep the
   * socket's own addresses (spec §2.1, §2.2).
   */
  command: 'proxy' | 'local';
  family: 'tcp4' | 'tcp6' | 'unix' | 'unspec';
  source?: { address: string; port: number };
  destination?: { address: string; port: number };
}

export class ProxyProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProxyProtocolError';
  }
}

export type ParseResult = { state: 'incomplete' } | { state: 'done'; header: ProxyHeader; length: number };

/**
 * Parses the header at the start of `buf`. Returns 'incomplete' while more bytes are needed, the
 * header and its length in bytes when complete, and throws ProxyProtocolError for anything that is
 * not a valid header (the caller closes the connection: spec §2 forbids guessing).
 */
export function parseProxyHeader(buf: Buffer): ParseResult {
  // spec §2.2/§2.1: v2 starts with the 12-byte signature, v1 with "PROXY ". Compare what we have.
  const n = Math.min(buf.length, V2_SIGNATURE.length);
  if (n > 0 && buf.subarray(0, n).equals(V2_SIGNATURE.subarray(0, n))) {
    return n < V2_SIGNATURE.length ? { state: 'incomplete' } : parseV2(buf);
  }
  const m = Math.min(buf.length, V1_PREFIX.length);
  if (m > 0 && buf.subarray(0, m).equals(V1_PREFIX.subarray(0, m))) {
    return m < V1_PREFIX.length ? { state: 'incomplete' } : parseV1(buf);
  }
  if (buf.length === 0) return { state: 'incomplete' };
  throw new ProxyProtocolError('connection does not start with a PROXY protocol header');
}

function parseV1(buf: Buffer): ParseResult {
  const cr = buf.indexOf(0x0d);
  const lf = buf.indexOf(0x0a);
  // spec §2.1: the line ends with CRLF; a bare LF is not a header.
  if (lf >= 0 && (cr < 0 || lf < cr)) throw new ProxyProtocolError('PROXY v1 header not ended by CRLF');
  const end = cr >= 0 && cr + 1 < V1_MAX_LENGTH ? cr : -1;
  if (end < 0) {
    if (buf.length >= V1_MAX_LENGTH || cr >= 0)
      throw new ProxyProtocolError('PROXY v1 header longer than 107 bytes');
    return { state: 'incomplete' };
  }
  if (buf.length < end + 2) return { state: 'incomplete' };
  if (buf[end + 1] !== 0x0a) throw new ProxyProtocolError('PROXY v1 header not ended by CRLF');
  const line = buf.subarray(0, end).toString('latin1');
  // spec §2.1: fields separated by exactly one space.
  const parts = line.split(' ');
  const length = end + 2;
  if (parts[1] === 'UNKNOWN') {
    // spec §2.1: the rest of the line is ignored; the receiver uses the real connection's addresses.
    return { state: 'done', header: { version: 1, command: 'local', family: 'unspec' }, length };
  }
  if (parts.length !== 6) throw new ProxyProtocolError('PROXY v1 header needs 6 fields');
  const [, proto, src, dst, sport, dport] = parts as [string, string, string, string, string, string];
  if (proto !== 'TCP4' && proto !== 'TCP6')
    throw new ProxyProtocolError(`PROXY v1: unknown protocol ${JSON.stringify(proto)}`);
  const valid = proto === 'TCP4' ? isIPv4 : isIPv6;
  if (!valid(src) || !valid(dst)) throw new ProxyProtocolError(`PROXY v1: bad ${proto} address`);
  return {
    state: 'done',
    header: {
      version: 1,
      command: 'proxy',
      family: proto === 'TCP4' ? 'tcp4' : 'tcp6',
      source: { address: src, port: v1Port(sport) },
      destination: { address: dst, port: v1Port(dport) },
    },
    length,
  };
}

/** spec §2.1: ports are decimal 0..65535 without leading zeroes. */
function v1Port(s: string): number {
  if (!/^(0|[1-9]\d{0,4})$/.test(s) || Number(s) > 65535)
    throw new ProxyProtocolError(`PROXY v1: bad port ${JSON.stringify(s)}`);
  return Number(s);
}

function parseV2(buf: Buffer): ParseResult {
  if (buf.length < V2_FIXED) return { state: 'incomplete' };
  const verCmd = buf[12] ?? 0;
  const famProto = buf[13] ?? 0;
  const len = buf.readUInt16BE(14);
  // spec §2.2: the high nibble is the version, which must be 2; the low nibble the command.
  if (verCmd >> 4 !== 2) throw new ProxyProtocolError(`PROXY v2: unsupported version ${verCmd >> 4}`);
  const cmd = verCmd & 0x0f;
  if (cmd !== 0 && cmd !== 1) throw new ProxyProtocolError(`PROXY v2: unknown command ${cmd}`);
  if (len > V2_MAX_PAYLOAD) throw new ProxyProtocolError(`PROXY v2: header of ${len} bytes is too long`);
  if (buf.length < V2_FIXED + len) return { state: 'incomplete' };
  const length = V2_FIXED + len;
  const body = buf.subarray(V2_FIXED, length);
  // spec §2.2: LOCAL (0x0): the receiver must ignore the address block and use the real addresses.
  if (cmd === 0) return { state: 'done', header: { version: 2, command: 'local', family: 'unspec' }, length };
  const family = famProto >> 4;
  const transport = famProto & 0x0f;
  // spec §2.2: 0x1 STREAM, 0x2 DGRAM; mail protocols are streams only.
  if (family !== 0 && transport !== 1)
    throw new ProxyProtocolError(`PROXY v2: transport ${transport} is not a stream`);
  if (family === 0x1) {
    if (len < 12) throw new ProxyProtocolError('PROXY v2: short IPv4 address block');
    return {
      state: 'done',
      header: {
        version: 2,
        command: 'proxy',
        family: 'tcp4',
        source: { address: [...body.subarray(0, 4)].join('.'), port: body.readUInt16BE(8) },
        destination: { address: [...body.subarray(4, 8)].join('.'), port: body.readUInt16BE(10) },
      },
      length,
    };
  }
  if (family === 0x2) {
    if (len < 36) throw new ProxyProtocolError('PROXY v2: short IPv6 address block');
    return {
      state: 'done',
      header: {
        version: 2,
        command: 'proxy',
        family: 'tcp6',
        source: { address: ipv6(body.subarray(0, 16)), port: body.readUInt16BE(32) },
        destination: { address: ipv6(body.subarray(16, 32)), port: body.readUInt16BE(34) },
      },
      length,
    };
  }
  if (family === 0x3) {
    if (len < 216) throw new ProxyProtocolError('PROXY v2: short UNIX address block');
    return { state: 'done', header: { version: 2, command: 'proxy', family: 'unix' }, length };
  }
  if (family === 0x0) {
    // spec §2.2: AF_UNSPEC with PROXY: the receiver uses the real connection's addresses.
    return { state: 'done', header: { version: 2, command: 'proxy', family: 'unspec' }, length };
  }
  throw new ProxyProtocolError(`PROXY v2: unknown address family ${family}`);
}

function ipv6(b: Buffer): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16));
  // Canonical text form (RFC 5952) through URL's IPv6 serializer.
  return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1);
}

/** Trusted sources: CIDRs or single addresses (IPv4-mapped IPv6 peers match their IPv4 form). */
export class TrustedSources {
  readonly #list = new BlockList();
  readonly size: number;

  constructor(cidrs: string[]) {
    for (const c of cidrs) {
      const [addr = '', bits] = c.split('/');
      const type = isIPv4(addr) ? 'ipv4' : isIPv6(addr) ? 'ipv6' : null;
      if (!type) throw new ProxyProtocolError(`not an address or CIDR: ${JSON.stringify(c)}`);
      const max = type === 'ipv4' ? 32 : 128;
      const prefix = bits === undefined ? max : Number(bits);
      if (!Number.isInteger(prefix) || prefix < 0 || prefix > max)
        throw new ProxyProtocolError(`bad prefix length in ${JSON.stringify(c)}`);
      this.#list.addSubnet(addr, prefix, type);
    }
    this.size = cidrs.length;
  }

  has(address: string | undefined): boolean {
    if (!address) return false;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
    if (mapped?.[1]) return this.#list.check(mapped[1], 'ipv4');
    return isIPv4(address) ? this.#list.check(address, 'ipv4') : this.#list.check(address, 'ipv6');
  }
}

/** The client as the service should see it. */
export interface ClientInfo {
  remoteAddress: string;
  remotePort: number;
  /** The header, when the peer is trusted and sent one. */
  proxy?: ProxyHeader;
}

/**
 * For a socket a listener just accepted: if its peer is a trusted balancer, reads and removes the
 * PROXY header (v1 or v2), puts back any bytes that followed it, and makes `socket.remoteAddress`,
 * `socket.remotePort` and `socket.remoteFamily` report the client (so code that reads them needs
 * no change). v2 LOCAL and v1 UNKNOWN keep the socket's own addresses (spec §2.1, §2.2). Peers that
 * are not trusted are returned untouched, without reading a byte. Rejects (and destroys the socket)
 * on a missing or malformed header, or when none is complete within `timeoutMs`.
 *
 * The header is read in paused mode (`'readable'` and `read()`), never more than the socket has
 * buffered, and the bytes after it go back with `unshift()`: afterwards the socket is in the same
 * state as a freshly accepted one — a `'data'` listener or `pipe()` starts reading, and a
 * `tls.TLSSocket` built on it takes the buffered bytes as the start of the handshake.
 *
 * Must be called before anything else reads the socket or writes a greeting: in server-speaks-first
 * protocols (SMTP, IMAP, POP3) the balancer sends the header first and the banner waits for it
 * (spec §2: the receiver must not start processing the connection before a complete header).
 */
export async function acceptProxied(
  socket: Socket,
  trusted: TrustedSources,
  timeoutMs = HEADER_TIMEOUT_MS,
): Promise<ClientInfo> {
  const peer = { remoteAddress: socket.remoteAddress ?? '', remotePort: socket.remotePort ?? 0 };
  if (!trusted.has(socket.remoteAddress)) return peer;
  const header = await readHeader(socket, timeoutMs);
  const src = header.command === 'proxy' ? header.source : undefined;
  const info: ClientInfo = src
    ? { remoteAddress: src.address, remotePort: src.port, proxy: header }
    : { ...peer, proxy: header };
  if (src) reportClient(socket, info);
  return info;
}

/**
 * Makes `socket` report the client of `info` as its remote end (own properties shadowing the
 * prototype getters, on this socket only). For the TLS socket built on a proxied connection, whose
 * getters would ask the TCP handle (the balancer's address) again.
 */
export function reportClient(socket: Socket, info: ClientInfo): void {
  Object.defineProperty(socket, 'remoteAddress', { value: info.remoteAddress, configurable: true });
  Object.defineProperty(socket, 'remotePort', { value: info.remotePort, configurable: true });
  Object.defineProperty(socket, 'remoteFamily', {
    value: isIPv4(info.remoteAddress) ? 'IPv4' : 'IPv6',
    configurable: true,
  });
}

function readHeader(socket: Socket, timeoutMs: number): Promise<ProxyHeader> {
  return new Promise<ProxyHeader>((resolve, reject) => {
    let buf: Buffer = Buffer.alloc(0);
    const cleanup = (): void => {
      clearTimeout(timer);
      socket.off('readable', onReadable);
      socket.off('end', onEnd);
      socket.off('error', onError);
      socket.off('close', onEnd);
    };
    const fail = (err: Error): void => {
      cleanup();
      socket.destroy();
      reject(err);
    };
    const onReadable = (): void => {
      // What the socket has buffered (at most its high-water mark): the parser decides after each
      // chunk, so a header is never held past its complete length nor past 107 / 4112 bytes.
      for (
        let chunk = socket.read() as Buffer | null;
        chunk !== null;
        chunk = socket.read() as Buffer | null
      ) {
        buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
        let r: ParseResult;
        try {
          r = parseProxyHeader(buf);
        } catch (err) {
          fail(err as Error);
          return;
        }
        if (r.state === 'incomplete') continue;
        cleanup();
        // Removing the 'readable' listener returns the socket to its initial state (not flowing).
        if (buf.length > r.length) socket.unshift(buf.subarray(r.length));
        resolve(r.header);
        return;
      }
    };
    const onEnd = (): void => fail(new ProxyProtocolError('connection closed before the PROXY header'));
    const onError = (err: Error): void => fail(err);
    const timer = setTimeout(
      () => fail(new ProxyProtocolError(`no PROXY header within ${timeoutMs} ms`)),
      timeoutMs,
    );
    socket.on('readable', onReadable);
    socket.once('end', onEnd);
    socket.once('error', onError);
    socket.once('close', onEnd);
  });
}

/** Builds a v1 header (for tests and for clients that speak through a balancer). */
export function encodeV1(
  src: { address: string; port: number },
  dst: { address: string; port: number },
): Buffer {
  const proto = isIPv4(src.address) ? 'TCP4' : 'TCP6';
  return Buffer.from(`PROXY ${proto} ${src.address} ${dst.address} ${src.port} ${dst.port}\r\n`, 'latin1');
}

/** Builds a v2 PROXY header over TCP (IPv4 or IPv6), optionally with raw TLV bytes after the addresses. */
export function encodeV2(
  src: { address: string; port: number },
  dst: { address: string; port: number },
  tlvs: Buffer = Buffer.alloc(0),
): Buffer {
  const v4 = isIPv4(src.address);
  const addrLen = v4 ? 12 : 36;
  const out = Buffer.alloc(V2_FIXED + addrLen + tlvs.length);
  V2_SIGNATURE.copy(out, 0);
  out[12] = 0x21;
  out[13] = v4 ? 0x11 : 0x21;
  out.writeUInt16BE(addrLen + tlvs.length, 14);
  const addrBytes = (a: string) => (v4 ? Buffer.from(a.split('.').map(Number)) : ipv6Bytes(a));
  addrBytes(src.address).copy(out, 16);
  addrBytes(dst.address).copy(out, v4 ? 20 : 32);
  out.writeUInt16BE(src.port, v4 ? 24 : 48);
  out.writeUInt16BE(dst.port, v4 ? 26 : 50);
  tlvs.copy(out, V2_FIXED + addrLen);
  return out;
}

function ipv6Bytes(a: string): Buffer {
  const [head = '', tail] = a.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  const b = Buffer.alloc(16);
  groups.forEach((g, i) => b.writeUInt16BE(parseInt(g, 16), i * 2));
  return b;
}
