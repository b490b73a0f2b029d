import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { once } from 'node:events';
import fc from 'fast-check';
import {
  acceptProxied,
  encodeV1,
  encodeV2,
  parseProxyHeader,
  ProxyProtocolError,
  TrustedSources,
  V2_SIGNATURE,
  type ClientInfo,
} from '../../services/core/proxy-protocol.ts';
import { acceptor } from '../../services/core/net.ts';

const src4 = { address: '203.0.113.7', port: 51234 };
const dst4 = { address: '198.51.100.1', port: 25 };

test('v1 TCP4 and TCP6 headers give the client address and leave the rest', () => {
  const buf = Buffer.concat([encodeV1(src4, dst4), Buffer.from('EHLO x\r\n')]);
  const r = parseProxyHeader(buf);
  assert.equal(r.state, 'done');
  assert.ok(r.state === 'done');
  assert.deepEqual(r.header.source, src4);
  assert.deepEqual(r.header.destination, dst4);
  assert.equal(buf.subarray(r.length).toString(), 'EHLO x\r\n');
  const r6 = parseProxyHeader(Buffer.from('PROXY TCP6 2001:db8::1 2001:db8::2 4000 993\r\n'));
  assert.ok(r6.state === 'done');
  assert.deepEqual(r6.header.source, { address: '2001:db8::1', port: 4000 });
  assert.equal(r6.header.family, 'tcp6');
});

test('v1 UNKNOWN keeps the real connection addresses (spec 2.1)', () => {
  const r = parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n'));
  assert.ok(r.state === 'done');
  assert.equal(r.header.command, 'local');
  assert.equal(r.header.source, undefined);
});

test('v2 IPv4 and IPv6 headers, with TLVs skipped', () => {
  const tlv = Buffer.from([0x04, 0x00, 0x03, 0x61, 0x62, 0x63]); // PP2_TYPE_NOOP "abc"
  const r = parseProxyHeader(Buffer.concat([encodeV2(src4, dst4, tlv), Buffer.from('A1 CAPA')]));
  assert.ok(r.state === 'done');
  assert.deepEqual(r.header.source, src4);
  assert.equal(r.length, 16 + 12 + tlv.length);
  const s6 = { address: '2001:db8:0:0:1::2', port: 1 };
  const r6 = parseProxyHeader(encodeV2(s6, { address: '::1', port: 993 }));
  assert.ok(r6.state === 'done');
  assert.deepEqual(r6.header.source, { address: '2001:db8::1:0:0:2', port: 1 });
  assert.equal(r6.header.destination?.address, '::1');
});

test('v2 LOCAL command (balancer health check) carries no client', () => {
  const h = encodeV2(src4, dst4);
  h[12] = 0x20;
  const r = parseProxyHeader(h);
  assert.ok(r.state === 'done');
  assert.equal(r.header.command, 'local');
});

test('headers arriving byte by byte are incomplete until the last byte', () => {
  for (const h of [encodeV1(src4, dst4), encodeV2(src4, dst4)]) {
    for (let i = 0; i < h.length; i++) assert.equal(parseProxyHeader(h.subarray(0, i)).state, 'incomplete');
    assert.equal(parseProxyHeader(h).state, 'done');
  }
});

test('bad headers are protocol errors, never a hang', () => {
  const bad = [
    'EHLO example.com\r\n',
    'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n',
    'PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n',
    'PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n',
    'PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n',
    'PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n',
    'PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n',
    `PROXY TCP4 ${'1'.repeat(120)}`,
  ];
  for (const b of bad) assert.throws(() => parseProxyHeader(Buffer.from(b)), ProxyProtocolError, b);
  const v3 = encodeV2(src4, dst4);
  v3[12] = 0x31;
  assert.throws(() => parseProxyHeader(v3), ProxyProtocolError);
  const huge = Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, 0x11, 0xff, 0xff])]);
  assert.throws(() => parseProxyHeader(huge), ProxyProtocolError);
  const short = encodeV2(src4, dst4);
  short.writeUInt16BE(4, 14);
  assert.throws(() => parseProxyHeader(short), ProxyProtocolError);
});

test('arbitrary bytes either parse, ask for more, or throw ProxyProtocolError', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
      for (const prefix of [Buffer.alloc(0), Buffer.from('PROXY '), V2_SIGNATURE]) {
        try {
          parseProxyHeader(Buffer.concat([prefix, bytes]));
        } catch (err) {
          if (!(err instanceof ProxyProtocolError)) throw err;
        }
      }
    }),
  );
});

test('trusted sources match CIDRs and IPv4-mapped addresses', () => {
  const t = new TrustedSources(['10.0.0.0/8', '127.0.0.1', 'fd00::/8']);
  assert.ok(t.has('10.1.2.3'));
  assert.ok(t.has('::ffff:10.1.2.3'));
  assert.ok(t.has('127.0.0.1'));
  assert.ok(t.has('fd12::1'));
  assert.ok(!t.has('11.0.0.1'));
  assert.ok(!t.has('::1'));
  assert.ok(!t.has(undefined));
  assert.throws(() => new TrustedSources(['nonsense']), ProxyProtocolError);
  assert.throws(() => new TrustedSources(['10.0.0.0/33']), ProxyProtocolError);
});

/** A listener that answers each connection with the address it sees and echoes the first line. */
async function listener(
  trusted: TrustedSources,
  timeoutMs?: number,
): Promise<{ server: Server; port: number; errors: Error[] }> {
  const errors: Error[] = [];
  const server = createServer((socket: Socket) => {
    acceptProxied(socket, trusted, timeoutMs).then(
      (info: ClientInfo) => {
        socket.write(
          `220 hello ${socket.remoteAddress}:${socket.remotePort} ${info.proxy?.version ?? '-'}\r\n`,
        );
        socket.once('data', (d: Buffer) => socket.end(`echo ${d.toString()}`));
        socket.resume();
      },
      (err: Error) => errors.push(err),
    );
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const addr = server.address();
  return { server, port: typeof addr === 'object' && addr ? addr.port : 0, errors };
}

async function talk(port: number, first: Buffer): Promise<string> {
  const c = connect(port, '127.0.0.1');
  await once(c, 'connect');
  c.write(first);
  let out = '';
  c.on('data', (d: Buffer) => {
    out += d.toString();
    if (out.includes('\r\n') && !out.includes('echo')) c.write('QUIT\r\n');
  });
  await once(c, 'close');
  return out;
}

test('a trusted balancer: the header is removed and the socket reports the client', async () => {
  const { server, port } = await listener(new TrustedSources(['127.0.0.0/8']));
  try {
    // Header and client bytes in one segment: the bytes after the header reach the service.
    const v1 = await talk(port, Buffer.concat([encodeV1(src4, dst4), Buffer.from('NOOP\r\n')]));
    assert.match(v1, /^220 hello 203\.0\.113\.7:51234 1\r\necho NOOP/);
    const v2 = await talk(port, encodeV2({ address: '2001:db8::5', port: 7 }, { address: '::1', port: 143 }));
    assert.match(v2, /^220 hello 2001:db8::5:7 2\r\n/);
  } finally {
    server.close();
  }
});

test('an untrusted peer is not asked for a header, and cannot forge one', async () => {
  const { server, port } = await listener(new TrustedSources(['10.0.0.0/8']));
  try {
    const out = await talk(port, encodeV1(src4, dst4));
    assert.match(out, /^220 hello 127\.0\.0\.1:\d+ -\r\necho PROXY TCP4 203\.0\.113\.7/);
  } finally {
    server.close();
  }
});

test('a trusted peer without a header is disconnected; a silent one times out', async () => {
  const { server, port, errors } = await listener(new TrustedSources(['127.0.0.1']), 300);
  try {
    const c = connect(port, '127.0.0.1');
    c.write('EHLO me\r\n');
    c.resume();
    await once(c, 'close');
    const silent = connect(port, '127.0.0.1');
    silent.resume();
    await once(silent, 'close');
    assert.equal(errors.length, 2);
    assert.ok(errors.every((e) => e instanceof ProxyProtocolError));
    assert.match(errors.map((e) => e.message).join('\n'), /no PROXY header within 300 ms/);
  } finally {
    server.close();
  }
});

test('bytes after the header wait for a reader that comes later, as a server-speaks-first session does', async () => {
  const trusted = new TrustedSources(['127.0.0.1']);
  const server = createServer((socket: Socket) => {
    void acceptProxied(socket, trusted).then(() => {
      // The SMTP session reads only once its greeting is written: nothing may be lost meanwhile.
      socket.write('220 hello\r\n', () =>
        socket.once('data', (d: Buffer) => socket.end(`got ${d.toString()}`)),
      );
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const port = (server.address() as { port: number }).port;
    const c = connect(port, '127.0.0.1');
    c.write(Buffer.concat([encodeV2(src4, dst4), Buffer.from('EHLO early\r\n')]));
    let out = '';
    c.on('data', (d: Buffer) => (out += d.toString()));
    await once(c, 'close');
    assert.equal(out, '220 hello\r\ngot EHLO early\r\n');
  } finally {
    server.close();
  }
});

test("a listener's close() drops the connections still waiting for their header", async () => {
  const served: string[] = [];
  const accept = acceptor(
    {
      name: 'test',
      logger: { debug: () => undefined, warn: () => undefined },
      proxy: { trusted: new TrustedSources(['127.0.0.1']), timeoutMs: 600_000 },
    },
    (socket) => served.push(socket.remoteAddress ?? ''),
  );
  const server = createServer(accept);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const accepted = once(server, 'connection');
  const c = connect(port, '127.0.0.1');
  c.on('error', () => undefined);
  await accepted;
  // Without close() the silent connection would wait for its header far longer than the test runs.
  accept.close();
  await once(c, 'close');
  await new Promise<void>((resolve) => server.close(() => resolve()));
  assert.deepEqual(served, []);
});
