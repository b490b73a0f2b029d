/** The POP3 command table: every known keyword, the states it is valid in, and its handler. */
import { AUTH, PASS, USER } from './auth.ts';
import type { CommandTable } from './command.ts';
import { CAPA, QUIT, STLS } from './general.ts';
import { DELE, LIST, NOOP, RETR, RSET, STAT, TOP, UIDL } from './maildrop.ts';

export const COMMANDS: CommandTable = {
  USER,
  PASS,
  AUTH,
  CAPA,
  STLS,
  QUIT,
  NOOP,
  STAT,
  RSET,
  LIST,
  UIDL,
  RETR,
  DELE,
  TOP,
};
