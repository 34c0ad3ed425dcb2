"""A private Dovecot instance on loopback, to validate tests and to compare
benchmarks against.  It never touches the system's Dovecot: its own config,
base_dir, state dir, logs and Maildirs live in one temp dir, it listens on
127.0.0.1 on a free port, users come from a passwd-file, and mail_fsync =
always gives it the same durability as Starling (fsync before OK).

    d = Dovecot(users={"alice": "secret"}).start()
    imaplib.IMAP4(d.host, d.imap_port) ...
    d.deliver("alice", b"...")      # doveadm save
    d.stop()
"""
import os
import time

from harness import proc

DOVECOT = os.environ.get("DOVECOT", "/usr/sbin/dovecot")
DOVEADM = os.environ.get("DOVEADM", "/usr/bin/doveadm")

CONF_TEMPLATE = """\
# private test instance written by tests/harness/dovecot.py
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
instance_name = starling-test-{port}
protocols = imap
listen = 127.0.0.1
shutdown_clients = yes
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:{d}/mail/%u
mail_fsync = always
mail_privileged_group =
auth_mechanisms = plain login
disable_plaintext_auth = no
{ssl}
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT {d}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/home/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    auto = subscribe
    special_use = \\Drafts
  }}
  mailbox Sent {{
    auto = subscribe
    special_use = \\Sent
  }}
  mailbox Trash {{
    auto = subscribe
    special_use = \\Trash
  }}
  mailbox Junk {{
    auto = subscribe
    special_use = \\Junk
  }}
  mailbox Archive {{
    auto = subscribe
    special_use = \\Archive
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
  process_min_avail = 2
  client_limit = 1000
  service_count = 0
}}
service imap {{
  process_limit = 1000
}}
service anvil {{
  client_limit = 3000
}}
default_process_limit = 1000
default_client_limit = 3000
mail_max_userip_connections = 1000
imap_idle_notify_interval = 1 secs
"""


class Dovecot:
    host = proc.LOOPBACK

    def __init__(self, users=None, tls=False, base_dir=None):
        self.dir = base_dir or proc.mkdtemp("dovecot-test-")
        os.chmod(self.dir, 0o755)  # login processes run as dovenull
        self.imap_port = proc.free_port()
        self.imaps_port = proc.free_port() if tls else 0
        self.tls = tls
        self.conf = os.path.join(self.dir, "dovecot.conf")
        self.log = os.path.join(self.dir, "dovecot.log")
        self.users_file = os.path.join(self.dir, "users")
        self.users = {}
        self.started = False
        for sub in ("run", "state", "mail", "home"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        # Dovecot refuses to access mail as root: as root, mail belongs to
        # the unprivileged 'nobody' user, in dirs given to it.
        self.uid, self.gid = os.getuid(), os.getgid()
        if self.uid == 0:
            import pwd
            pw = pwd.getpwnam("nobody")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
            for sub in ("mail", "home"):
                os.chown(os.path.join(self.dir, sub), self.uid, self.gid)
        open(self.users_file, "a").close()
        for name, pw in (users or {}).items():
            self.add_user(name, pw)
        ssl = "ssl = no"
        self.tls_cert = self.tls_key = None
        if tls:
            self.tls_cert, self.tls_key = proc.make_cert(self.dir)
            ssl = "ssl = yes\nssl_cert = <%s\nssl_key = <%s" % (self.tls_cert, self.tls_key)
        with open(self.conf, "w") as f:
            f.write(CONF_TEMPLATE.format(d=self.dir, port=self.imap_port,
                                         imaps_port=self.imaps_port, ssl=ssl,
                                         uid=self.uid, gid=self.gid))
        proc.at_cleanup(self.stop)

    def add_user(self, name, password):
        self.users[name] = password
        with open(self.users_file, "a") as f:
            f.write("%s:%s\n" % (name, proc.sha512_crypt(password)))

    def start(self, timeout=30.0):
        """Run the master in the foreground (-F) in its own process group,
        so that stopping it (or the harness' cleanup) ends every child."""
        self.process = proc.ManagedProcess([DOVECOT, "-F", "-c", self.conf],
                                           os.path.join(self.dir, "master.out"))
        self.started = True
        deadline = time.monotonic() + timeout
        while not self._greets():
            if not self.process.alive() or time.monotonic() > deadline:
                out = open(os.path.join(self.dir, "master.out"), "rb").read()
                raise RuntimeError("dovecot did not start: %s\n%s"
                                   % (out.decode(errors="replace"), self.log_tail()))
            time.sleep(0.05)
        return self

    def _greets(self):
        """True once a connection gets the IMAP greeting (an open port alone
        may still be a dying previous instance's)."""
        import socket
        try:
            with socket.create_connection((self.host, self.imap_port), timeout=2) as s:
                return s.recv(100).startswith(b"* OK")
        except OSError:
            return False

    def stop(self, timeout=20.0):
        if not self.started:
            return
        self.started = False
        self.process.stop(timeout=timeout)

    def deliver(self, user, message, mailbox=None, timeout=60):
        """Put a message into a mailbox as a local delivery would."""
        args = [DOVEADM, "-c", self.conf, "save", "-u", user]
        if mailbox:
            args += ["-m", mailbox]
        r = proc.run(args, input=message, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("doveadm save failed: %s" % r.stderr.decode(errors="replace"))

    def log_text(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])

    def sanitizer_report(self):
        return None
