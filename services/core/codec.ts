/**
 * Hand-written wrappers around the generated protobufjs code (gen/proto, not committed).
 * Services import message types and encode/decode only from here.
 */
import { postino } from '../../gen/proto/postino.js';

export const pb = postino.v1;

export type Envelope = postino.v1.IEnvelope;
export type Recipient = postino.v1.IRecipient;
export type LocalDelivery = postino.v1.ILocalDelivery;
export type OutboundDelivery = postino.v1.IOutboundDelivery;
export type MessageEvent = postino.v1.IMessageEvent;
export type MxHost = postino.v1.IMxHost;

export function encode<P>(type: { encode(message: P): { finish(): Uint8Array } }, message: P): Uint8Array {
  return type.encode(message).finish();
}

/** Decodes into the generated class: every field present, with proto3 defaults. */
export function decode<R>(type: { decode(data: Uint8Array): R }, data: Uint8Array): R {
  return type.decode(data);
}
