/**
 * FETCH BODY and BODYSTRUCTURE (RFC 9051 7.5.2, grammar `body` in section 9). Pure.
 *
 * Types, subtypes, parameter names and encodings are upper-cased as in the RFC's examples;
 * parameter values, ids and descriptions are the header bytes as they are (no RFC 2047 or
 * RFC 2231 decoding: the client decodes). BODY is BODYSTRUCTURE without extension data.
 */
import type { Field, StructureNode } from '../core/mime-structure.ts';
import { envelope } from './envelope.ts';
import { bodyBytes, countLines, isMessageRfc822, parseStructured } from './mime-tree.ts';
import type { MimeNode, ParsedMessage } from './mime-tree.ts';
import { Joined } from './response.ts';
import type { ImapValue } from './response.ts';

/** The first field of that name, or null (as mime-tree headerValue). */
function headerValue(headers: readonly Field[], name: string): Buffer | null {
  const field = headers.find((h) => h.name === name);
  return field ? field.value : null;
}

/** Content-Transfer-Encoding, lower-cased (`7bit` when absent), as mime-tree transferEncoding. */
function transferEncoding(node: StructureNode): string {
  const cte = headerValue(node.headers, 'content-transfer-encoding');
  return cte ? cte.toString('latin1').trim().toLowerCase() : '7bit';
}

function upper(text: string): Buffer {
  return Buffer.from(text.toUpperCase(), 'latin1');
}

/** body-fld-param: `("NAME" "value" ...)` or NIL. */
function paramList(params: ReadonlyArray<[string, Buffer]>): ImapValue {
  if (params.length === 0) return null;
  const out: ImapValue[] = [];
  for (const [name, value] of params) out.push(upper(name), value);
  return out;
}

function nstring(value: Buffer | null): ImapValue {
  return value && value.length > 0 ? value : null;
}

/** body-fld-dsp: `("ATTACHMENT" ("FILENAME" "a.pdf"))` or NIL. */
function disposition(node: StructureNode): ImapValue {
  const raw = headerValue(node.headers, 'content-disposition');
  if (!raw) return null;
  const { value, params } = parseStructured(raw);
  if (value.trim() === '') return null;
  return [upper(value.trim()), paramList(params)];
}

/** body-fld-lang: a string, a list of strings, or NIL. */
function language(node: StructureNode): ImapValue {
  const raw = headerValue(node.headers, 'content-language');
  if (!raw) return null;
  const tags = raw
    .toString('latin1')
    .split(',')
    .map((t) => t.trim())
    .filter((t) => t !== '');
  if (tags.length === 0) return null;
  if (tags.length === 1) return Buffer.from(tags[0] as string, 'latin1');
  return tags.map((t) => Buffer.from(t, 'latin1'));
}

function part(node: StructureNode, extensible: boolean): ImapValue[] {
  const ct = node.contentType;
  if (node.children.length > 0) {
    // body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]: the parts are not separated.
    const out: ImapValue[] = [
      new Joined(node.children.map((child) => part(child, extensible))),
      upper(ct.subtype),
    ];
    if (extensible) out.push(paramList(ct.params), disposition(node), language(node), location(node));
    return out;
  }
  // An encapsulated message that could not be parsed is described as opaque data.
  const asMessage = isMessageRfc822(ct) && node.message !== null;
  const type = isMessageRfc822(ct) && !asMessage ? 'application' : ct.type;
  const subtype = isMessageRfc822(ct) && !asMessage ? 'octet-stream' : ct.subtype;
  const out: ImapValue[] = [
    upper(type),
    upper(subtype),
    paramList(ct.params),
    nstring(headerValue(node.headers, 'content-id')),
    nstring(headerValue(node.headers, 'content-description')),
    upper(transferEncoding(node)),
    node.size,
  ];
  if (asMessage && node.message) {
    out.push(envelope(node.message.headers), part(node.message, extensible), node.lines());
  } else if (ct.type === 'text') {
    out.push(node.lines());
  }
  if (extensible) {
    out.push(
      nstring(headerValue(node.headers, 'content-md5')),
      disposition(node),
      language(node),
      location(node),
    );
  }
  return out;
}

function location(node: StructureNode): ImapValue {
  return nstring(headerValue(node.headers, 'content-location'));
}

/** A parsed entity seen as a structure node (body lines counted only when asked for). */
export function parsedNode(msg: ParsedMessage, node: MimeNode = msg.root): StructureNode {
  return {
    headers: node.headers,
    contentType: node.contentType,
    children: node.children.map((child) => parsedNode(msg, child)),
    message: node.message ? parsedNode(msg, node.message) : null,
    size: node.end - node.bodyStart,
    lines: () => countLines(bodyBytes(msg, node)),
  };
}

/** BODYSTRUCTURE (`extensible`) or BODY of a whole message, parsed or from its stored structure. */
export function bodyStructure(msg: ParsedMessage | StructureNode, extensible: boolean): ImapValue {
  return part('raw' in msg ? parsedNode(msg) : msg, extensible);
}
