#!/usr/bin/env python3
"""The password verification cache (lib/passwd-cache.h) seen from IMAP.

A real starlingd: a user logs in again and again (the cache holds the
success), then the users_file line changes; the old password must be
refused on the very next LOGIN and AUTHENTICATE PLAIN, the new one accepted;
a user removed from the file is refused with the password that was cached;
a wrong password stays refused however often it is tried.  The cluster path
(`starling user passwd`) is checked by tests/cluster/test_users.py, which
logs in with the old password on every node before changing it.

The last line is "test-authcache: N passed, M failed".
"""
import os
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import proc  # noqa: E402
from harness.imapwire import Client  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-authcache")


def login(node, user, password, plain=False):
    c = Client(node.host, node.imap_port)
    try:
        r = c.authenticate_plain(user, password) if plain else c.login(user, password)
        return r.ok
    finally:
        c.logout()


def rewrite_users(path, lines):
    """Replace the users file atomically, as `starling user` and most
    provisioning tools do."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write("".join(l + "\n" for l in lines))
    os.replace(tmp, path)


def t_users_file():
    c = Cluster(n=1, users={"alice": "first-pw", "bob": "bob-pw"})
    node = c.nodes[0]
    try:
        c.start_all()
        t0 = time.monotonic()
        R.check("alice logs in with her password", login(node, "alice", "first-pw"))
        first = time.monotonic() - t0
        t0 = time.monotonic()
        oks = [login(node, "alice", "first-pw", plain=(i % 2 == 1)) for i in range(10)]
        again = (time.monotonic() - t0) / 10
        R.check("and again, 10 times (LOGIN and AUTHENTICATE PLAIN)", all(oks), oks)
        print("measured: first LOGIN %.1f ms, later ones %.1f ms each (cache)" %
              (first * 1000, again * 1000))
        R.equal("a wrong password is refused, every time",
                [login(node, "alice", "first-pwX") for _ in range(3)], [False] * 3)

        new_hash = proc.sha512_crypt("second-pw")
        bob_line = [l.strip() for l in open(c.users_file) if l.startswith("bob:")][0]
        rewrite_users(c.users_file, ["alice:" + new_hash, bob_line])
        R.equal("after the users_file edit the old password is refused at once",
                login(node, "alice", "first-pw"), False)
        R.equal("by AUTHENTICATE PLAIN too", login(node, "alice", "first-pw", plain=True), False)
        R.equal("the new password is accepted", login(node, "alice", "second-pw"), True)
        R.equal("and again", login(node, "alice", "second-pw", plain=True), True)
        R.equal("bob, whose line did not change, still logs in",
                login(node, "bob", "bob-pw"), True)

        # Back to the first password, hashed with a new salt: accepted
        # (verified afresh, not refused because an entry is stale).
        rewrite_users(c.users_file, ["alice:" + proc.sha512_crypt("first-pw"), bob_line])
        R.equal("the first password again, under a new hash, is accepted",
                login(node, "alice", "first-pw"), True)
        R.equal("and the second one is refused", login(node, "alice", "second-pw"), False)

        rewrite_users(c.users_file, [bob_line])
        R.equal("alice removed from users_file is refused with her cached password",
                login(node, "alice", "first-pw"), False)
        R.equal("bob still logs in", login(node, "bob", "bob-pw"), True)
    finally:
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report", not reps, reps)


def main():
    R.section("users_file changes under the cache", t_users_file)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
