"""A private Postfix instance for tests: its own config_directory and
queue_directory under a temp dir, smtpd on one loopback port, every
domain's mail handed over LMTP to the given address.  Nothing listens off
loopback; the system Postfix (if any) is not touched."""
import os
import shutil
import subprocess
import time

POSTFIX = "/usr/sbin/postfix"

MASTER_CF = """\
# written by tests/lmtp/postfixrun.py: no chroot, loopback only
{smtp_addr} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def available():
    return os.access(POSTFIX, os.X_OK)


class Postfix:
    def __init__(self, base_dir, smtp_port, lmtp_target, domain="example.com",
                 fast_retry=True):
        """lmtp_target: "inet:127.0.0.1:PORT" or "unix:/path"."""
        self.dir = os.path.join(base_dir, "postfix")
        self.conf = os.path.join(self.dir, "etc")
        self.queue = os.path.join(self.dir, "spool")
        self.data = os.path.join(self.dir, "data")
        self.maillog = os.path.join(self.dir, "maillog")
        self.smtp_port = smtp_port
        os.makedirs(self.conf)
        os.makedirs(self.queue)
        os.makedirs(self.data)
        # Postfix wants its queue and data directories owned by mail_owner
        # and its config directory by root.
        shutil.chown(self.data, "postfix")
        main = [
            "compatibility_level = 3.6",
            "config_directory = %s" % self.conf,
            "queue_directory = %s" % self.queue,
            "data_directory = %s" % self.data,
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "maillog_file = %s" % self.maillog,
            "maillog_file_prefixes = %s" % self.dir,
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            "myhostname = mta.test.invalid",
            "mydomain = test.invalid",
            "mydestination =",
            "local_recipient_maps =",
            "relay_domains =",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            "smtpd_reject_unlisted_recipient = no",
            "virtual_mailbox_domains = %s" % domain,
            "virtual_transport = lmtp:%s" % lmtp_target,
            "smtp_dns_support_level = disabled",
            "append_dot_mydomain = no",
            "biff = no",
            "alias_maps =",
            "alias_database =",
        ]
        if fast_retry:
            # A 4xx from the LMTP server is retried within seconds, not
            # minutes, so a test can wait for it.
            main += ["queue_run_delay = 1s", "minimal_backoff_time = 1s",
                     "maximal_backoff_time = 2s"]
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.write("\n".join(x for x in main if x) + "\n")
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(smtp_addr="127.0.0.1:%d" % smtp_port))
        self.started = False

    def _run(self, *args, timeout=60):
        return subprocess.run([POSTFIX, "-c", self.conf] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout)

    def start(self):
        r = self._run("start")
        if r.returncode != 0:
            raise RuntimeError("postfix start failed (%d): %s\n%s"
                               % (r.returncode, r.stdout.decode(errors="replace"),
                                  self.log_tail()))
        self.started = True

    def stop(self):
        if not self.started:
            return
        self.started = False
        r = self._run("stop")
        if r.returncode != 0:
            self._run("abort")
        # master exits after its children; wait for its pid file to go.
        pid = os.path.join(self.queue, "pid", "master.pid")
        deadline = time.monotonic() + 20
        while os.path.exists(pid) and time.monotonic() < deadline:
            time.sleep(0.1)

    def postconf(self, setting):
        r = subprocess.run(["/usr/sbin/postconf", "-c", self.conf, "-e", setting],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        if r.returncode != 0:
            raise RuntimeError("postconf %s: %s" % (setting, r.stdout.decode(errors="replace")))

    def reload(self):
        r = self._run("reload")
        if r.returncode != 0:
            raise RuntimeError("postfix reload: %s" % r.stdout.decode(errors="replace"))

    def flush(self):
        """Every queued message tried again now (postqueue -f)."""
        r = subprocess.run(["/usr/sbin/postqueue", "-c", self.conf, "-f"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if r.returncode != 0:
            raise RuntimeError("postqueue -f: %s" % r.stdout.decode(errors="replace"))

    def log_text(self):
        try:
            with open(self.maillog, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=30):
        return "\n".join(self.log_text().splitlines()[-n:])
