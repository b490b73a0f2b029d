import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, loadConfig } from '../../services/core/config.ts';

test('defaults give the documented unprivileged ports', () => {
  const c = loadConfig({});
  assert.equal(c.smtpPort, 2525);
  assert.equal(c.submissionPort, 2587);
  assert.equal(c.imapPort, 1143);
  assert.equal(c.pop3Port, 1110);
  assert.equal(c.httpPort, 8080);
  assert.equal(c.maxMessageSize, 25 * 1024 * 1024);
});

test('values are parsed by type: sizes, durations, lists, booleans', () => {
  const c = loadConfig({
    MAX_MESSAGE_SIZE: '10MiB',
    DELIVERY_TIMEOUT: '30s',
    DELIVERY_RETRY_SCHEDULE: '1m,5m,1h',
    DNS_SERVERS: '127.0.0.1:5353, [::1]:53',
    ALLOW_PLAINTEXT_AUTH: 'yes',
  });
  assert.equal(c.maxMessageSize, 10 * 1024 * 1024);
  assert.equal(c.deliveryTimeout, 30_000);
  assert.deepEqual(c.deliveryRetries, [60_000, 300_000, 3_600_000]);
  assert.deepEqual(c.dnsServers, ['127.0.0.1:5353', '[::1]:53']);
  assert.equal(c.allowPlaintextAuth, true);
});

test('a bad value fails at start naming the variable and what is expected', () => {
  assert.throws(
    () => loadConfig({ SMTP_PORT: 'twenty-five', REDIS_URL: 'http://x', ALLOW_PLAINTEXT_AUTH: 'maybe' }),
    (err: Error) => {
      assert.ok(err instanceof ConfigError);
      assert.match(err.message, /SMTP_PORT: expected an integer, got "twenty-five"/);
      assert.match(err.message, /REDIS_URL: expected a redis or rediss URL/);
      assert.match(err.message, /ALLOW_PLAINTEXT_AUTH: expected true or false/);
      return true;
    },
  );
  assert.throws(
    () => loadConfig({ IMAP_PORT: '70000' }),
    /IMAP_PORT: expected an integer from 0 to 65535, got 70000/,
  );
});
