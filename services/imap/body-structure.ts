/**
 * FETCH BODY and BODYSTRUCTURE (RFC 9051 7.5.2, grammar `body` in section 9). Pure.
 *
 * Types, subtypes, parameter names and encodings are upper-cased as in the RFC's examples;
 * parameter values, ids and descriptions are the header bytes as they are (no RFC 2047 or
 * RFC 2231 decoding: the client decodes). BODY is BODYSTRUCTURE without extension data.
 */
import { envelope } from './envelope.ts';
import {
  bodyBytes,
  countLines,
  headerValue,
  isMessageRfc822,
  parseStructured,
  transferEncoding,
} from './mime-tree.ts';
import type { MimeNode, ParsedMessage } from './mime-tree.ts';
import { Joined } from './response.ts';
import type { ImapValue } from './response.ts';

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
function disposition(node: MimeNode): ImapValue {
  const raw = headerValue(node.headers, 'content-disposition');
  if (!raw) return null;
  const { value, params } = parseStructured(raw);
  if (value.trim() === '') return null;
  return [upper(value.trim()), paramList(params)];
}

/** body-fld-lang: a string, a list of strings, or NIL. */
function language(node: MimeNode): ImapValue {
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

function part(msg: ParsedMessage, node: MimeNode, extensible: boolean): ImapValue[] {
  const ct = node.contentType;
  if (node.children.length > 0) {
    // body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]: the parts are not separated.
    const out: ImapValue[] = [
      new Joined(node.children.map((child) => part(msg, child, extensible))),
      upper(ct.subtype),
    ];
    if (extensible) out.push(paramList(ct.params), disposition(node), language(node), location(node));
    return out;
  }
  const body = bodyBytes(msg, node);
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
    body.length,
  ];
  if (asMessage && node.message) {
    out.push(envelope(node.message.headers), part(msg, node.message, extensible), countLines(body));
  } else if (ct.type === 'text') {
    out.push(countLines(body));
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

function location(node: MimeNode): ImapValue {
  return nstring(headerValue(node.headers, 'content-location'));
}

/** BODYSTRUCTURE (`extensible`) or BODY of a whole message. */
export function bodyStructure(msg: ParsedMessage, extensible: boolean): ImapValue {
  return part(msg, msg.root, extensible);
}
