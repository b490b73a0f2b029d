#!/bin/sh
# Installs the reference system for `npm run bench -- --reference`: Postfix and Dovecot from Debian's
# packages (postfix brings /usr/sbin/smtp-source and /usr/sbin/smtp-sink). The bench configures and
# starts its own instances in a temporary folder on free loopback ports, so the system-wide daemons
# the packages start are stopped and disabled here and hold no ports. Run as root (or with sudo):
#   sh bench/reference/setup.sh
set -eu

if [ "$(id -u)" != 0 ]; then
  exec sudo sh "$0" "$@"
fi

# No questions: Postfix installs unconfigured (the bench writes its own main.cf).
echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
echo 'postfix postfix/mailname string localhost' | debconf-set-selections

export DEBIAN_FRONTEND=noninteractive
if ! command -v postfix >/dev/null 2>&1 || ! command -v dovecot >/dev/null 2>&1 \
  || [ ! -x /usr/lib/dovecot/imap ] || [ ! -x /usr/lib/dovecot/pop3 ] || [ ! -x /usr/lib/dovecot/lmtp ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends postfix dovecot-imapd dovecot-pop3d dovecot-lmtpd
fi

# Stop the system-wide daemons (and keep them from starting at boot): the bench runs its own.
for svc in postfix dovecot; do
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
  if [ -x "/etc/init.d/$svc" ]; then
    "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
  fi
  if command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
done
postfix stop >/dev/null 2>&1 || true
doveadm stop >/dev/null 2>&1 || true
# Whatever is left of the packaged masters (their pid files name them), by pid.
for pidfile in /var/spool/postfix/pid/master.pid /run/dovecot/master.pid; do
  if [ -f "$pidfile" ]; then
    pid=$(tr -dc 0-9 <"$pidfile")
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  fi
done

# The bench's instances run their processes as the unprivileged users the packages created, and
# store the Dovecot mailboxes as `vmail` (virtual users, as in most Dovecot setups).
id postfix >/dev/null && id dovecot >/dev/null && id dovenull >/dev/null
if ! id vmail >/dev/null 2>&1; then
  useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin vmail
fi

echo "reference system ready: $(postconf -d -h mail_version 2>/dev/null | sed 's/^/Postfix /'), Dovecot $(dovecot --version)"
for tool in smtp-source smtp-sink; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || { echo "missing $tool" >&2; exit 1; }
done
