/** Recipient expansion in the directory, on a real redis-server. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { startRedis, type Proc } from '../helpers/servers.ts';
import { connectRedis, type Redis } from '../../services/core/redis.ts';
import { Directory } from '../../services/core/directory.ts';

let proc: Proc;

/** Expansion with its lists sorted: alias targets come from Redis sets, in no fixed order. */
async function expand(address: string) {
  const e = await dir.resolveRecipient(address);
  return e && { users: [...e.users].sort(), external: [...e.external].sort() };
}
let redis: Redis;
let dir: Directory;

before(async () => {
  proc = await startRedis();
  redis = await connectRedis(proc.url, pino({ level: 'silent' }));
  dir = new Directory(redis, 'd:');
  await dir.addDomain('example.test');
  await dir.addDomain('other.test');
  await dir.addUser('Bob@Example.test', 'bob-password');
  await dir.addUser('carol@example.test', 'carol-password');
});

after(async () => {
  redis.disconnect();
  await proc.cleanup();
});

test('users, case-insensitive addresses and plus-addressing', async () => {
  assert.deepEqual(await expand('bob@example.test'), {
    users: ['bob@example.test'],
    external: [],
  });
  assert.deepEqual(await expand('BOB@EXAMPLE.TEST'), {
    users: ['bob@example.test'],
    external: [],
  });
  assert.deepEqual(await expand('bob+lists@example.test'), {
    users: ['bob@example.test'],
    external: [],
  });
  assert.equal(await expand('nobody@example.test'), null);
});

test('aliases to one or many addresses, chains, and forwarding outside', async () => {
  await dir.addAlias('team@example.test', ['bob@example.test', 'carol@example.test']);
  await dir.addAlias('all@example.test', ['team@example.test', 'bob@example.test', 'friend@remote.test']);
  assert.deepEqual(await expand('all@example.test'), {
    users: ['bob@example.test', 'carol@example.test'],
    external: ['friend@remote.test'],
  });
  assert.deepEqual(
    (await dir.listAliases('example.test')).map((a) => a.alias),
    ['all@example.test', 'team@example.test'],
  );
});

test('an alias loop without a mailbox is refused; one that reaches a mailbox delivers once', async () => {
  await assert.rejects(dir.addAlias('self@example.test', ['self@example.test']), { code: 'LOOP' });
  await dir.addAlias('ping@example.test', ['pong@example.test', 'carol@example.test']);
  await dir.addAlias('pong@example.test', ['ping@example.test']);
  assert.deepEqual(await expand('pong@example.test'), {
    users: ['carol@example.test'],
    external: [],
  });
});

test('catch-all and domain aliases', async () => {
  await dir.setCatchAll('example.test', 'carol@example.test');
  assert.deepEqual(await expand('whoever@example.test'), {
    users: ['carol@example.test'],
    external: [],
  });
  await dir.setCatchAll('example.test', '');
  assert.equal(await expand('whoever@example.test'), null);
  await dir.addDomainAlias('example.org', 'example.test');
  assert.ok(await dir.isLocalDomain('example.org'));
  assert.deepEqual(await expand('bob@example.org'), {
    users: ['bob@example.test'],
    external: [],
  });
});

test('passwords are stored hashed and checked in constant form', async () => {
  const stored = await redis.hget('d:dir:user:bob@example.test', 'password');
  assert.match(stored ?? '', /^\$scrypt\$ln=15,r=8,p=1\$/);
  assert.ok(!stored?.includes('bob-password'));
  assert.equal(await dir.authenticate('bob@example.test', 'bob-password'), 'bob@example.test');
  assert.equal(await dir.authenticate('bob@example.test', 'wrong'), null);
  assert.equal(await dir.authenticate('ghost@example.test', 'bob-password'), null);
});
