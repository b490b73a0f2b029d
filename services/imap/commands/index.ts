/**
 * The command table: every command the parser knows, with the states it is allowed in
 * (RFC 9051 3) and its handler. The session consults it before running anything.
 */
import type { CommandName } from '../parser.ts';
import { ANY_STATE_COMMANDS } from './any-state.ts';
import { AUTH_COMMANDS } from './auth.ts';
import type { CommandSpec } from './common.ts';
import { FETCH_COMMANDS } from './fetch.ts';
import { IDLE_COMMANDS } from './idle.ts';
import { MAILBOX_COMMANDS } from './mailbox.ts';
import { MESSAGE_COMMANDS } from './message.ts';
import { QUOTA_COMMANDS } from './quota.ts';
import { SORT_COMMANDS } from './sort.ts';
import { SEARCH_COMMANDS } from './search.ts';

export type CommandTable = { [K in CommandName]: CommandSpec<K> };

export const COMMANDS: CommandTable = {
  ...ANY_STATE_COMMANDS,
  ...AUTH_COMMANDS,
  ...MAILBOX_COMMANDS,
  ...MESSAGE_COMMANDS,
  ...FETCH_COMMANDS,
  ...SEARCH_COMMANDS,
  ...IDLE_COMMANDS,
  ...QUOTA_COMMANDS,
  ...SORT_COMMANDS,
};
