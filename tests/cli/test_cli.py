#!/usr/bin/env python3
"""The `starling` admin tool as an operator runs it: users file, config
errors, exit statuses, then against a running node (status, deliver, dump)
and the offline dump of its stopped store."""
import os
import subprocess
import sys
import tempfile

top_builddir = os.environ.get("top_builddir", os.getcwd())
STARLING = os.path.join(top_builddir, "cli", "starling")

passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def run(args, stdin=b"", timeout=30):
    p = subprocess.run([STARLING] + args, input=stdin, capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


with tempfile.TemporaryDirectory(prefix="starling-cli-") as tmp:
    conf = os.path.join(tmp, "node.conf")
    users = os.path.join(tmp, "users")
    with open(conf, "w") as f:
        f.write(f"node_id = 1\ndata_dir = {tmp}/data\nusers_file = {users}\n")

    rc, out, err = run(["-c", conf, "user", "add", "alice"], b"s3cret\n")
    check("user add exits 0", rc == 0, err)
    with open(users) as f:
        content = f.read()
    check("user add stores SHA512-CRYPT", content.startswith("alice:{SHA512-CRYPT}$6$"), content)
    check("password is not stored in clear", "s3cret" not in content)

    rc, out, err = run(["-c", conf, "user", "add", "bob"], b"pw2\n")
    rc2, out, err = run(["-c", conf, "user", "add", "alice"], b"changed\n")
    rc, out, err = run(["-c", conf, "user", "list"])
    check("user list lists each user once, in file order", rc == 0 and out == "alice\nbob\n", repr(out))

    rc, out, err = run(["-c", conf, "user", "add", "bad name"], b"x\n")
    check("invalid user name is refused", rc != 0 and err.count("\n") == 1 and "invalid user name" in err, err)
    rc, out, err = run(["-c", conf, "user", "add", "carol"], b"")
    check("empty stdin is refused", rc != 0 and "no password" in err, err)

    bad = os.path.join(tmp, "bad.conf")
    with open(bad, "w") as f:
        f.write("node_id = 1\ndata_dir = /x\nbogus = 1\n")
    rc, out, err = run(["-c", bad, "user", "list"])
    check("config error names file and line", rc == 1 and err.strip() == f"starling: {bad}:3: unknown key 'bogus'", err)

    rc, out, err = run(["-c", conf, "frobnicate"])
    check("unknown command exits 2 with one line", rc == 2 and err.count("\n") == 1, err)
    rc, out, err = run(["user", "list"])
    check("missing -c exits 2", rc == 2 and "-c FILE" in err, err)

    rc, out, err = run(["-c", conf, "deliver", "-u", "alice"], b"Subject: x\r\n\r\nbody\r\n")
    check("deliver without a running node is a temporary failure (75)", rc == 75 and "not running" in err, f"{rc} {err}")

    # The size bound comes before the node is asked: a message over it is
    # refused for good (65) even with no node running, one at it is not.
    small = os.path.join(tmp, "small.conf")
    with open(small, "w") as f:
        f.write(f"node_id = 1\ndata_dir = {tmp}/data\nusers_file = {users}\nmax_message_size = 1024\n")
    at_cap = b"Subject: x\r\n\r\n" + b"a" * (1024 - 14)
    rc, out, err = run(["-c", small, "deliver", "-u", "alice"], at_cap)
    check("deliver of max_message_size bytes reaches for the node (75)", rc == 75 and "not running" in err, f"{rc} {err}")
    rc, out, err = run(["-c", small, "deliver", "-u", "alice"], at_cap + b"a")
    check("deliver of one byte more is refused for good (65)",
          rc == 65 and err.count("\n") == 1 and "message too large (limit 1024 bytes)" in err, f"{rc} {err}")

    rc, out, err = run(["-c", conf, "status"])
    check("status without a running node fails with one line", rc == 1 and err.count("\n") == 1, err)

    rc, out, err = run(["-c", conf, "dump", "-u", "alice"])
    check("offline dump of a user with no mail is empty", rc == 0 and out == "", f"{rc} {out!r} {err}")

    # With a running node: deliver, then the dump through the node and the
    # dump of the stopped node's store must be the same, and show the mail.
    import socket
    import time
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with open(conf, "a") as f:
        f.write(f"imap_listen = 127.0.0.1:{port}\n")
    log = open(os.path.join(tmp, "starlingd.log"), "wb")
    node = subprocess.Popen([os.path.join(top_builddir, "replicator", "starlingd"), "-c", conf],
                            stdout=log, stderr=log)
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            rc, out, err = run(["-c", conf, "status"])
            if rc == 0:
                break
            time.sleep(0.1)
        check("status of a running node names it", rc == 0 and "node_id: 1" in out, out + err)
        check("status shows the store's journal", "store.journal_segments: 1" in out and
              "store.compacting: no" in out, out)
        rc, out, err = run(["-c", conf, "status", "--json"])
        check("status --json is one JSON object", rc == 0 and out.startswith("{") and '"node_id":1' in out, out)
        msg = b"From: a@example.com\r\nSubject: cli test\r\n\r\nhello\r\n"
        rc, out, err = run(["-c", conf, "deliver", "-u", "alice"], msg)
        check("deliver through the running node exits 0", rc == 0, f"{rc} {err}")
        rc, out, err = run(["-c", conf, "deliver", "-u", "alice", "-m", "NoSuchBox"], msg)
        check("deliver into a missing mailbox is refused", rc != 0 and "does not exist" in err, f"{rc} {err}")
        rc, out, err = run(["-c", conf, "deliver", "-u", "nobody"], msg)
        check("deliver to an unknown user exits 67", rc == 67, f"{rc} {err}")
        check("...and into a missing mailbox exits 65 (EX_DATAERR, as the README says)",
              run(["-c", conf, "deliver", "-u", "alice", "-m", "NoSuchBox"], msg)[0] == 65)
        rc, out, err = run(["-c", conf, "resync", "-u", "nobody"])
        check("resync of an unknown user fails with one line saying so",
              rc == 1 and err.count("\n") == 1 and "unknown user 'nobody'" in err,
              f"{rc} {out!r} {err}")
        rc, out, err = run(["-c", conf, "resync", "-u", "alice", "--peer", "9"])
        check("resync with a peer not in the file says it is not configured",
              rc == 1 and err.count("\n") == 1 and "peer 9 is not configured" in err,
              f"{rc} {out!r} {err}")
        rc, online, err = run(["-c", conf, "dump", "-u", "alice"])
        check("online dump shows the delivered message", rc == 0 and "msg INBOX uid=1 " in online, online + err)
    finally:
        node.terminate()
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
        log.close()
    check("starlingd exits 0 on SIGTERM", node.returncode == 0, str(node.returncode))
    rc, offline, err = run(["-c", conf, "dump", "-u", "alice"])
    check("offline dump equals the online dump", rc == 0 and offline == online, offline + err)

print(f"test-cli: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
