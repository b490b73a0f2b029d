/**
 * The directory on real Redis: recipient expansion, users, aliases, domain aliases, quotas and DKIM
 * keys. The whole suite runs twice: against a single redis-server and against a three-master Redis
 * Cluster (directory keys live in different hash slots there, so a cross-slot MULTI would fail with
 * CROSSSLOT). It also replays the states a crash half way through a write leaves, and checks they
 * are safe and that retrying the call repairs them.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { REDIS_BACKENDS, startRedisBackend, until } from '../helpers/servers.ts';
import { connectRedis, type Redis } from '../../services/core/redis.ts';
import { Directory } from '../../services/core/directory.ts';

const logger = pino({ level: 'silent' });

for (const backend of REDIS_BACKENDS) {
  describe(`directory on a ${backend}`, () => {
    let cleanup: () => Promise<void>;
    let redis: Redis;
    let dir: Directory;

    /** Expansion with its lists sorted: alias targets come from Redis sets, in no fixed order. */
    async function expand(address: string) {
      const e = await dir.resolveRecipient(address);
      return e && { users: [...e.users].sort(), external: [...e.external].sort() };
    }

    before(async () => {
      const server = await startRedisBackend(backend);
      cleanup = () => server.cleanup();
      redis = await connectRedis(server.url, logger);
      dir = new Directory(redis, 'd:');
      await dir.addDomain('example.test');
      await dir.addDomain('other.test');
      await dir.addUser('Bob@Example.test', 'bob-password');
      await dir.addUser('carol@example.test', 'carol-password');
    });

    after(async () => {
      redis.disconnect();
      await cleanup();
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
      assert.deepEqual(
        (await dir.listUsers('example.test')).map((u) => [u.address, u.quota, u.disabled]),
        [
          ['bob@example.test', 0, false],
          ['carol@example.test', 0, false],
        ],
      );
      await assert.rejects(dir.addUser('bob@example.test', 'another-password'), { code: 'EXISTS' });
      await assert.rejects(dir.addDomain('example.test'), { code: 'EXISTS' });
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
      assert.equal(await expand('self@example.test'), null);
      await dir.addAlias('ping@example.test', ['pong@example.test', 'carol@example.test']);
      await dir.addAlias('pong@example.test', ['ping@example.test']);
      assert.deepEqual(await expand('pong@example.test'), {
        users: ['carol@example.test'],
        external: [],
      });
    });

    test('a refused target is taken back and the alias keeps the targets it had', async () => {
      await dir.addAlias('keep@example.test', ['carol@example.test']);
      // A chain of 20 aliases ending at carol: each one is fine on its own...
      for (let i = 19; i >= 0; i--)
        await dir.addAlias(`c${i}@example.test`, [
          i === 19 ? 'carol@example.test' : `c${i + 1}@example.test`,
        ]);
      // ...but from keep it nests too deep (a loop, as far as anyone can tell): refused.
      await assert.rejects(dir.addAlias('keep@example.test', ['c0@example.test', 'friend@remote.test']), {
        code: 'LOOP',
      });
      assert.deepEqual(
        (await dir.listAliases('example.test')).find((a) => a.alias === 'keep@example.test')?.targets,
        ['carol@example.test'],
      );
      await assert.rejects(dir.addAlias('void@example.test', ['void2@example.test']), { code: 'LOOP' });
      assert.ok(!(await dir.listAliases('example.test')).some((a) => a.alias === 'void@example.test'));
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
      // The router takes `hosted` for "local or remote", without asking for the domain again.
      assert.equal((await dir.resolveRecipient('bob@example.org'))?.hosted, true);
      await dir.removeDomain('example.org');
      assert.equal(await dir.isLocalDomain('example.org'), false);
      // No longer hosted: mail for it goes out like any remote recipient's.
      assert.deepEqual(await expand('bob@example.org'), { users: [], external: ['bob@example.org'] });
      assert.equal((await dir.resolveRecipient('bob@example.org'))?.hosted, false);
    });

    test('a follower keeps routing answers until a write anywhere announces a change', async () => {
      // Another replica's directory, following the changes channel on a connection of its own.
      const follower = new Directory(redis, 'd:');
      await follower.followChanges(redis.duplicate());
      try {
        assert.equal(await follower.resolveRecipient('dave@example.test'), null);
        assert.equal(await follower.isLocalDomain('new.test'), false);
        await dir.addUser('dave@example.test', 'dave-password');
        await dir.addDomain('new.test');
        await until('the follower to hear of the new user', async () =>
          (await follower.resolveRecipient('dave@example.test'))?.users.includes('dave@example.test'),
        );
        assert.equal(await follower.isLocalDomain('new.test'), true);
        // The announcements of both writes in (they may land after the reads above), the answer
        // read again is kept: a change made behind the directory's back (no announcement) is not
        // seen...
        await new Promise((r) => setTimeout(r, 300));
        assert.equal((await follower.resolveRecipient('dave@example.test'))?.hosted, true);
        await redis.del('d:dir:user:dave@example.test');
        assert.deepEqual((await follower.resolveRecipient('dave@example.test'))?.users, [
          'dave@example.test',
        ]);
        // ...until any announced write makes every follower forget.
        await dir.removeDomain('new.test');
        await until('the follower to forget', async () =>
          (await follower.resolveRecipient('dave@example.test')) === null ? true : undefined,
        );
        assert.equal(await follower.isLocalDomain('new.test'), false);
        if (backend === 'single redis-server') {
          // A lost subscription may have missed announcements: after it, nothing old is used.
          await dir.addUser('dave@example.test', 'dave-password');
          await until('the follower to hear of dave again', async () =>
            (await follower.resolveRecipient('dave@example.test')) ? true : undefined,
          );
          await redis.del('d:dir:user:dave@example.test');
          await redis.call('CLIENT', 'KILL', 'TYPE', 'pubsub');
          await until('the follower to drop what it kept', async () =>
            (await follower.resolveRecipient('dave@example.test')) === null ? true : undefined,
          );
        }
      } finally {
        follower.close();
      }
    });

    test('passwords are stored hashed and checked in constant form', async () => {
      const stored = await redis.hget('d:dir:user:bob@example.test', 'password');
      assert.match(stored ?? '', /^\$scrypt\$ln=15,r=8,p=1\$/);
      assert.ok(!stored?.includes('bob-password'));
      assert.equal(await dir.authenticate('bob@example.test', 'bob-password'), 'bob@example.test');
      assert.equal(await dir.authenticate('bob@example.test', 'wrong'), null);
      assert.equal(await dir.authenticate('ghost@example.test', 'bob-password'), null);
      await dir.setPassword('bob@example.test', 'bob-new-password');
      assert.equal(await dir.authenticate('bob@example.test', 'bob-password'), null);
      assert.equal(await dir.authenticate('bob@example.test', 'bob-new-password'), 'bob@example.test');
      await assert.rejects(dir.setPassword('ghost@example.test', 'ghost-password'), { code: 'NOT_FOUND' });
      // No record was made for the user that does not exist.
      assert.equal(await redis.exists('d:dir:user:ghost@example.test'), 0);
    });

    test('quotas of users and domains, and DKIM keys', async () => {
      await dir.setDomainQuota('other.test', { bytes: 5000, messages: 10 });
      await dir.addUser('dave@other.test', 'dave-password');
      assert.deepEqual(await dir.quotaOf('dave@other.test'), { bytes: 5000, messages: 10 });
      await dir.setUserQuota('dave@other.test', { bytes: 9000, messages: 0 });
      assert.deepEqual(await dir.quotaOf('dave@other.test'), { bytes: 9000, messages: 10 });
      await assert.rejects(dir.setUserQuota('ghost@other.test', { bytes: 1, messages: 1 }), {
        code: 'NOT_FOUND',
      });
      assert.equal(await redis.exists('d:dir:user:ghost@other.test'), 0);
      await dir.setDkimKey('other.test', { selector: 's1', privateKey: 'PRIV', publicKey: 'PUB' });
      assert.equal((await dir.getDkimKey('other.test'))?.selector, 's1');
      assert.equal(await dir.getDkimKey('example.test'), null);
    });

    test('a domain goes only when its users are gone, and takes its aliases, catch-all and key with it', async () => {
      await dir.addDomain('gone.test');
      await dir.addUser('erin@gone.test', 'erin-password');
      await dir.addAlias('info@gone.test', ['erin@gone.test']);
      await dir.setCatchAll('gone.test', 'erin@gone.test');
      await dir.setDkimKey('gone.test', { selector: 's1', privateKey: 'PRIV', publicKey: 'PUB' });
      await assert.rejects(dir.removeDomain('gone.test'), { code: 'NOT_EMPTY' });
      await dir.removeUser('erin@gone.test');
      await assert.rejects(dir.removeUser('erin@gone.test'), { code: 'NOT_FOUND' });
      await dir.removeDomain('gone.test');
      await assert.rejects(dir.removeDomain('gone.test'), { code: 'NOT_FOUND' });
      assert.equal(await dir.isLocalDomain('gone.test'), false);
      // Added again, it starts empty: nothing of the old domain comes back.
      await dir.addDomain('gone.test');
      await dir.addUser('erin@gone.test', 'erin-password');
      assert.equal(await expand('info@gone.test'), null);
      assert.equal(await expand('whoever@gone.test'), null);
      assert.equal(await dir.getDkimKey('gone.test'), null);
      assert.deepEqual(await dir.listAliases('gone.test'), []);
    });

    describe('a crash half way through a write leaves a safe state that a retry repairs', () => {
      test('addUser stopped after the index: no user, not listed, and the retry creates it', async () => {
        // The state addUser leaves when it stops after its first step.
        await redis.sadd('d:dir:users:example.test', 'frank@example.test');
        assert.equal(await expand('frank@example.test'), null);
        assert.equal(await dir.authenticate('frank@example.test', 'frank-password'), null);
        assert.ok(!(await dir.listUsers('example.test')).some((u) => u.address === 'frank@example.test'));
        await dir.addUser('frank@example.test', 'frank-password');
        assert.equal(await dir.authenticate('frank@example.test', 'frank-password'), 'frank@example.test');
        assert.ok((await dir.listUsers('example.test')).some((u) => u.address === 'frank@example.test'));
      });

      test('removeUser stopped after the record: the user is gone and the retry clears the index', async () => {
        await dir.addUser('gina@example.test', 'gina-password');
        await redis.del('d:dir:user:gina@example.test');
        assert.equal(await expand('gina@example.test'), null);
        await dir.removeUser('gina@example.test');
        assert.equal(await redis.sismember('d:dir:users:example.test', 'gina@example.test'), 0);
      });

      test('removeAlias stopped after the targets: no mail goes there, not listed, the retry finishes', async () => {
        await dir.addAlias('sales@example.test', ['bob@example.test']);
        await redis.del('d:dir:alias:sales@example.test');
        assert.equal(await expand('sales@example.test'), null);
        assert.ok(!(await dir.listAliases('example.test')).some((a) => a.alias === 'sales@example.test'));
        await dir.removeAlias('sales@example.test');
        assert.equal(await redis.sismember('d:dir:aliases:example.test', 'sales@example.test'), 0);
      });

      test('removeDomain stopped after hosting ended: mail is refused and the retry cleans the rest', async () => {
        await dir.addDomain('half.test');
        await dir.addUser('hal@half.test', 'hal-password');
        await dir.addAlias('all@half.test', ['hal@half.test']);
        await dir.setCatchAll('half.test', 'hal@half.test');
        await dir.removeUser('hal@half.test');
        // The state removeDomain leaves when it stops after its first step.
        await redis.srem('d:dir:domains', 'half.test');
        assert.equal(await dir.isLocalDomain('half.test'), false);
        await dir.removeDomain('half.test');
        await dir.addDomain('half.test');
        assert.equal(await expand('all@half.test'), null);
        assert.equal(await expand('x@half.test'), null);
      });

      test('a stale index entry does not keep a domain from being removed', async () => {
        await dir.addDomain('stale.test');
        await redis.sadd('d:dir:users:stale.test', 'nobody@stale.test');
        await dir.removeDomain('stale.test');
        assert.equal(await redis.exists('d:dir:users:stale.test'), 0);
      });
    });
  });
}
