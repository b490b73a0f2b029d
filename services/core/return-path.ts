/**
 * The Return-Path header field (RFC 5321 4.4): the final delivery records the reverse path at the
 * top of the message. smtp-ingress stores every body with it in front (BlobRef.return_path says
 * how many octets), so a local delivery files the stored body as it is; everything that sends the
 * message on (delivery to other servers, the original in a bounce) leaves those octets out.
 */

/** `Return-Path: <reverse-path>` CRLF; `<>` for the null sender of a bounce. */
export function returnPathField(mailFrom: string): Buffer {
  return Buffer.from(`Return-Path: <${mailFrom.replace(/[\r\n<>]/g, '')}>\r\n`, 'utf8');
}

/** The stream without its first `skip` octets (a body without the Return-Path it was stored with). */
export async function* skipOctets(
  source: AsyncIterable<Uint8Array>,
  skip: number,
): AsyncIterable<Uint8Array> {
  let left = skip;
  for await (const chunk of source) {
    if (left >= chunk.byteLength) {
      left -= chunk.byteLength;
      continue;
    }
    yield left > 0 ? chunk.subarray(left) : chunk;
    left = 0;
  }
}
