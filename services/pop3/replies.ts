/**
 * Outcomes of POP3 commands, as values. The session turns them into bytes on the wire.
 */

/**
 * Extended response codes: IN-USE (RFC 2449 section 8.1.2), SYS/TEMP, SYS/PERM and AUTH
 * (RFC 3206 section 4), sent between brackets right after -ERR.
 */
export type RespCode = 'IN-USE' | 'SYS/TEMP' | 'SYS/PERM' | 'AUTH';

export type Reply =
  /** +OK text, single line. */
  | { kind: 'ok'; text: string }
  /** +OK text, then the lines, then "." (CAPA, LIST, UIDL). */
  | { kind: 'lines'; text: string; lines: string[] }
  /**
   * +OK text, then a stored body streamed from the blob store, then "." (RETR, TOP).
   * `maxBodyLines` is null for the whole message; `delivered` runs once the last byte is written.
   */
  | {
      kind: 'message';
      text: string;
      blob: string;
      maxBodyLines: number | null;
      delivered?: () => Promise<void>;
      /** A body worth reading ahead of the client's next command (the next message of a RETR). */
      prefetch?: string;
    }
  /** -ERR [code] text. */
  | { kind: 'err'; code: RespCode | null; text: string }
  /** "+ " and a base64 challenge (RFC 5034 section 4). */
  | { kind: 'challenge'; data: Buffer };

export function ok(text: string): Reply {
  return { kind: 'ok', text };
}

export function err(text: string, code: RespCode | null = null): Reply {
  return { kind: 'err', code, text };
}

/** The status line of a reply, with CRLF. */
export function statusLine(reply: Reply): string {
  switch (reply.kind) {
    case 'ok':
    case 'lines':
    case 'message':
      return reply.text ? `+OK ${reply.text}\r\n` : '+OK\r\n';
    case 'err':
      return reply.code ? `-ERR [${reply.code}] ${reply.text}\r\n` : `-ERR ${reply.text}\r\n`;
    case 'challenge':
      return `+ ${reply.data.toString('base64')}\r\n`;
  }
}
