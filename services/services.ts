/** Every service by name: `postino run <name>` starts one, `postino up` starts them all in one process. */
import type { ServiceStart } from './core/runtime.ts';
import { start as smtpIngress } from './smtp-ingress/index.ts';
import { start as router } from './router/index.ts';
import { start as delivery } from './delivery/index.ts';
import { start as mailboxStore } from './mailbox-store/index.ts';
import { start as imap } from './imap/index.ts';
import { start as pop3 } from './pop3/index.ts';
import { start as admin } from './admin/index.ts';

/** In start order: the consumers before the doors, so nothing waits at start. */
export const SERVICES: Record<string, ServiceStart> = {
  'mailbox-store': mailboxStore,
  router,
  delivery,
  admin,
  imap,
  pop3,
  'smtp-ingress': smtpIngress,
};

/**
 * Services started only by name (`postino run operator`), never by `postino up`: the operator needs
 * a Kubernetes API. Loaded on demand, so other processes do not load @kubernetes/client-node.
 */
export const OPTIONAL_SERVICES: Record<string, ServiceStart> = {
  operator: async (rt) => (await import('./operator/index.ts')).start(rt),
};
