#!/usr/bin/env bash
# LMTP delivery throughput: a 3-node Starling cluster (LMTP on node 1,
# sync_replicas = 1: 250 only once another node holds the message durably)
# against a private Dovecot LMTP (dovecot-lmtpd, mail_fsync = always: fsync
# before 250) on the same machine and filesystem, with the same load.  Builds
# nothing.  Two figures per server, each the median of ROUNDS (the servers
# take turns):
#   - direct: CLIENTS LMTP connections (bench/lmtp-load.py) each delivering
#     MESSAGES messages of SIZE bytes, MAIL/RCPT/DATA pipelined as an MTA
#     does: deliveries per second;
#   - postfix: a private Postfix (tests/lmtp/postfixrun.py; its own config
#     and queue in BENCH_DIR, loopback only) holds BURST messages
#     (defer_transports = lmtp), then releases them: deliveries per second
#     from the release to the last "status=sent" in its log.  Postfix's own
#     queue work (and its fsyncs) counts in this figure.
#
#   bench/lmtp.sh                       # uses ./build/replicator/starlingd
#   BUILD=/tmp/b-rel bench/lmtp.sh      # a build without sanitizers
#
# Environment: BUILD (./build), STARLINGD ($BUILD/replicator/starlingd),
# STARLING (the CLI next to it, ../cli/starling),
# BENCH_DIR (/var/tmp; not tmpfs, or fsync costs nothing), CLIENTS (4),
# MESSAGES (250 per client), SIZE (4096), BURST (500), ROUNDS (3),
# POSTFIX (1; 0 skips the Postfix figure).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$top/build}
STARLINGD=${STARLINGD:-$BUILD/replicator/starlingd}
STARLING=${STARLING:-$(dirname "$STARLINGD")/../cli/starling}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
[ -x "$STARLINGD" ] || { echo "lmtp: no starlingd at $STARLINGD (set STARLINGD or BUILD)" >&2; exit 1; }
[ -x "$STARLING" ] || { echo "lmtp: no starling CLI at $STARLING (set STARLING)" >&2; exit 1; }
[ -x /usr/lib/dovecot/lmtp ] || { echo "lmtp: Dovecot's LMTP server is not installed (Debian dovecot-lmtpd)" >&2; exit 1; }
fs=$(stat -f -c %T "$BENCH_DIR")
[ "$fs" != tmpfs ] || echo "lmtp: warning: $BENCH_DIR is tmpfs, fsync costs nothing there" >&2

export STARLINGD STARLING BENCH_DIR TOP="$top"
export CLIENTS=${CLIENTS:-4} MESSAGES=${MESSAGES:-250} SIZE=${SIZE:-4096} BURST=${BURST:-500}
export ROUNDS=${ROUNDS:-3} POSTFIX=${POSTFIX:-1}
exec python3 -B - <<'EOF'
import json, os, re, smtplib, statistics, subprocess, sys, tempfile, time
top = os.environ["TOP"]
sys.path.insert(0, os.path.join(top, "tests"))
sys.path.insert(0, os.path.join(top, "tests", "lmtp"))
from harness import proc
from harness.starling import Cluster
from harness.dovecot import Dovecot
import postfixrun

USER, PW = "bench@example.com", "bench-pw"
base = os.environ["BENCH_DIR"]
clients, messages = int(os.environ["CLIENTS"]), int(os.environ["MESSAGES"])
size, burst, rounds = int(os.environ["SIZE"]), int(os.environ["BURST"]), int(os.environ["ROUNDS"])
sdir = tempfile.mkdtemp(prefix="starling-bench-", dir=base)
ddir = tempfile.mkdtemp(prefix="dovecot-bench-", dir=base)
pdir = tempfile.mkdtemp(prefix="postfix-bench-", dir=base)
proc._tmpdirs.extend([sdir, ddir, pdir])
os.chmod(pdir, 0o755)  # Postfix's daemons run as the postfix user
print("machine: %s, %d cores; data in %s (%s)" % (
    subprocess.run(["uname", "-srm"], capture_output=True, text=True).stdout.strip(),
    os.cpu_count(), base,
    subprocess.run(["stat", "-f", "-c", "%T", base], capture_output=True, text=True).stdout.strip()))
print("starlingd: %s" % os.environ["STARLINGD"])
print("load: direct %d LMTP clients x %d messages of %d bytes; postfix burst %d; %d rounds"
      % (clients, messages, size, burst, rounds), flush=True)

# -- Starling: three nodes, LMTP on node 1 ------------------------------------
c = Cluster(3, users={USER: PW}, daemon=os.environ["STARLINGD"], cli=os.environ["STARLING"],
            base_dir=sdir,
            extra_config={"sync_replicas": "1"})
s_lmtp = proc.free_port()
c.nodes[0].extra["lmtp_listen"] = "127.0.0.1:%d" % s_lmtp
c.start_all()
c.wait_links_up(timeout=60)

# -- Dovecot: the harness' private instance, with LMTP ------------------------
d = Dovecot(users={USER: PW}, base_dir=ddir)
d_lmtp = proc.free_port()
with open(d.conf) as f:
    conf = f.read()
conf = conf.replace("protocols = imap\n", "protocols = imap lmtp\n")
conf += ("service lmtp {\n  inet_listener lmtp {\n    address = 127.0.0.1\n"
         "    port = %d\n  }\n}\n" % d_lmtp)
with open(d.conf, "w") as f:
    f.write(conf)
d.start()
deadline = time.monotonic() + 30
while not proc.port_open(d_lmtp) and time.monotonic() < deadline:
    time.sleep(0.1)

load = [sys.executable, "-B", os.path.join(top, "bench", "lmtp-load.py"), "--rcpt", USER,
        "--clients", str(clients), "--messages", str(messages), "--size", str(size)]


def direct(port):
    r = subprocess.run(load + ["--port", str(port)], capture_output=True, text=True,
                       timeout=3600)
    if r.returncode != 0:
        sys.exit("lmtp: load failed against port %d: %s" % (port, r.stderr.strip()[-2000:]))
    return json.loads(r.stdout)


def log_count(pf, pattern):
    return len(re.findall(pattern, pf.log_text()))


def via_postfix(pf, port, tag):
    """Deliveries per second of burst messages held in pf, then released."""
    pf.postconf("defer_transports = lmtp")
    pf.reload()
    sent_re = r"relay=127\.0\.0\.1\[127\.0\.0\.1\]:%d.*status=sent" % port
    held_re = r"status=deferred \(deferred transport\)"
    sent0, held0 = log_count(pf, sent_re), log_count(pf, held_re)
    body = b"x" * 76 + b"\r\n"
    s = smtplib.SMTP("127.0.0.1", pf.smtp_port, timeout=60)
    for i in range(burst):
        s.sendmail("load@example.net", [USER],
                   b"Subject: %s %d\r\nMessage-ID: <pf-%s-%d-%f@bench>\r\n\r\n"
                   % (tag.encode(), i, tag.encode(), i, time.time()) +
                   body * max(1, size // len(body)))
    s.quit()
    deadline = time.monotonic() + 600
    while log_count(pf, held_re) < held0 + burst:
        if time.monotonic() > deadline:
            sys.exit("lmtp: postfix did not queue the burst:\n" + pf.log_tail())
        time.sleep(0.2)
    pf.postconf("defer_transports =")
    pf.reload()
    t0 = time.monotonic()
    last_flush = 0.0
    deadline = t0 + 1200
    while log_count(pf, sent_re) < sent0 + burst:
        # reload is asynchronous: a flush every few seconds stands for the
        # queue runs a message deferred meanwhile would otherwise wait for.
        if time.monotonic() - last_flush >= 3:
            pf.flush()
            last_flush = time.monotonic()
        if time.monotonic() > deadline:
            sys.exit("lmtp: postfix did not deliver the burst:\n" + pf.log_tail())
        time.sleep(0.05)
    took = time.monotonic() - t0
    return {"deliveries": burst, "seconds": round(took, 3),
            "deliveries_per_s": round(burst / took, 1)}


pfs = {}
try:
    if os.environ["POSTFIX"] == "1":
        if not postfixrun.available():
            sys.exit("lmtp: postfix not installed (POSTFIX=0 skips that figure)")
        for name, port in (("starling", s_lmtp), ("dovecot", d_lmtp)):
            pf = postfixrun.Postfix(os.path.join(pdir, name), proc.free_port(),
                                    "inet:127.0.0.1:%d" % port)
            pf.start()
            pfs[name] = pf
    res = {"starling": {"direct": [], "postfix": []}, "dovecot": {"direct": [], "postfix": []}}
    for rnd in range(rounds):
        for name, port in (("starling", s_lmtp), ("dovecot", d_lmtp)):
            r = direct(port)
            res[name]["direct"].append(r["deliveries_per_s"])
            print("round %d %-8s direct : %s" % (rnd + 1, name, json.dumps(r)), flush=True)
            if name in pfs:
                r = via_postfix(pfs[name], port, "%s-%d" % (name, rnd))
                res[name]["postfix"].append(r["deliveries_per_s"])
                print("round %d %-8s postfix: %s" % (rnd + 1, name, json.dumps(r)), flush=True)
    # Every delivery arrived: INBOX counts over IMAP on node 3 and in Dovecot.
    want = rounds * (clients * messages + (burst if pfs else 0))
    for name, node_host, node_port in (("starling node 3", c.nodes[2].host, c.nodes[2].imap_port),
                                       ("dovecot", d.host, d.imap_port)):
        import imaplib
        deadline = time.monotonic() + 120
        while True:
            m = imaplib.IMAP4(node_host, node_port, timeout=60)
            m.login(USER, PW)
            typ, data = m.status("INBOX", "(MESSAGES)")
            m.logout()
            got = int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))
            if got >= want or time.monotonic() > deadline:
                break
            time.sleep(1)
        print("check: %s holds %d of %d messages%s" % (name, got, want,
              "" if got == want else "  <-- MISMATCH"))
    print()
    print("%-9s %16s %16s" % ("", "direct LMTP/s", "via Postfix/s"))
    for name in ("starling", "dovecot"):
        dm = statistics.median(res[name]["direct"])
        pm = statistics.median(res[name]["postfix"]) if res[name]["postfix"] else float("nan")
        print("%-9s %16.1f %16.1f" % (name, dm, pm))
    sd, dd = statistics.median(res["starling"]["direct"]), statistics.median(res["dovecot"]["direct"])
    print("ratio starling/dovecot: direct %.2f" % (sd / dd), end="")
    if pfs:
        sp, dp = statistics.median(res["starling"]["postfix"]), statistics.median(res["dovecot"]["postfix"])
        print(", via Postfix %.2f" % (sp / dp))
    else:
        print()
finally:
    for pf in pfs.values():
        pf.stop()
    d.stop()
    c.close()
EOF
