/**
 * smtp-server adds an enhanced status code derived from the basic code alone, which is wrong for
 * replies such as 554 5.7.1 (relay denied). Our replies carry their own code at the start of the
 * text; this patch makes the connection skip its guess for those. Applied once per process.
 */
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3} /;
let applied = false;

export function useOwnEnhancedCodes(): void {
  if (applied) return;
  applied = true;
  const proto = SMTPConnection.prototype as unknown as {
    send(code: number, data: unknown, context?: unknown): unknown;
  };
  const send = proto.send;
  proto.send = function (this: unknown, code: number, data: unknown, context?: unknown) {
    if (typeof data === 'string' && ENHANCED.test(data)) return send.call(this, code, data, false);
    return send.call(this, code, data, context);
  };
}
