#!/usr/bin/env bash
# Runs bench/imap-bench.py against a private starlingd and a private Dovecot
# (dovecot-imapd, mail_fsync = always: fsync before OK, as Starling) in one
# run, on the same filesystem, with the same load, and prints each figure
# with the ratio Starling/Dovecot.  Builds nothing.
#
#   STARLINGD=/path/to/starlingd bench/imap-vs-dovecot.sh
#   BUILD=/tmp/b-rel bench/imap-vs-dovecot.sh      # uses $BUILD/replicator/starlingd
#
# Environment: STARLINGD (default $BUILD/replicator/starlingd, BUILD default
# ./build), BENCH_DIR (where both servers keep their data; default /var/tmp,
# must not be tmpfs or fsync means nothing), CLIENTS (8), MESSAGES (100 per
# client), MIX_OPS (200 per client), FETCH_ROUNDS (10), ROUNDS (3: the servers
# take turns, each figure is the median), FETCH_CHUNK (50 messages per UID
# FETCH), PIPELINE (1: FETCH commands a fetch client keeps in flight),
# HARNESS_READER=1 (fetch clients read with the tests' imapwire reader, as
# before 2026-12-07: it costs the clients more CPU than the server; implies
# FETCH_CLIENT=python), FETCH_CLIENT (the fetch phase's load client: default
# bench/imap-fetch-load of starlingd's build directory when built, one C
# process with CLIENTS
# connections; FETCH_CLIENT=python runs CLIENTS Python processes, as before
# 2026-12-07 evening).
# Each phase also reports the server's CPU (its process tree, Dovecot's
# short-lived imap processes included) and the clients' CPU per message.
# Goals of issue 15: APPEND >= 5x Dovecot, FETCH (bodies and listing) and the
# mix >= 2x.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$top/build}
STARLINGD=${STARLINGD:-$BUILD/replicator/starlingd}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
[ -x "$STARLINGD" ] || { echo "imap-vs-dovecot: no starlingd at $STARLINGD (set STARLINGD or BUILD)" >&2; exit 1; }
command -v dovecot >/dev/null || [ -x /usr/sbin/dovecot ] || { echo "imap-vs-dovecot: dovecot not installed (scripts/install-deps --bench)" >&2; exit 1; }
fs=$(stat -f -c %T "$BENCH_DIR")
[ "$fs" != tmpfs ] || echo "imap-vs-dovecot: warning: $BENCH_DIR is tmpfs, fsync costs nothing there" >&2

export STARLINGD BENCH_DIR TOP="$top"
export CLIENTS=${CLIENTS:-8} MESSAGES=${MESSAGES:-100} MIX_OPS=${MIX_OPS:-200} FETCH_ROUNDS=${FETCH_ROUNDS:-10}
export ROUNDS=${ROUNDS:-3} FETCH_CHUNK=${FETCH_CHUNK:-50} PIPELINE=${PIPELINE:-1}
if [ "${HARNESS_READER:-0}" = 1 ]; then
    FETCH_CLIENT=python
elif [ -z "${FETCH_CLIENT:-}" ]; then
    # The one of starlingd's own build: a sanitizer build's client would
    # measure itself.
    FETCH_CLIENT=python
    fl=$(dirname "$STARLINGD")/../bench/imap-fetch-load
    [ -x "$fl" ] && FETCH_CLIENT=$(cd "$(dirname "$fl")" && pwd)/imap-fetch-load
fi
[ "$FETCH_CLIENT" = python ] || [ -x "$FETCH_CLIENT" ] || { echo "imap-vs-dovecot: no load client at $FETCH_CLIENT" >&2; exit 1; }
export FETCH_CLIENT
exec python3 -B - <<'EOF'
import json, os, subprocess, sys, tempfile
top = os.environ["TOP"]
sys.path.insert(0, os.path.join(top, "tests"))
from harness import proc
from harness.starling import Cluster
from harness.dovecot import Dovecot

user, pw = "bench", "bench-pw"
base = os.environ["BENCH_DIR"]
sdir = tempfile.mkdtemp(prefix="starling-bench-", dir=base)
ddir = tempfile.mkdtemp(prefix="dovecot-bench-", dir=base)
proc._tmpdirs.extend([sdir, ddir])
bench = [sys.executable, "-B", os.path.join(top, "bench", "imap-bench.py"),
         "--clients", os.environ["CLIENTS"], "--messages", os.environ["MESSAGES"],
         "--mix-ops", os.environ["MIX_OPS"], "--fetch-rounds", os.environ["FETCH_ROUNDS"],
         "--fetch-chunk", os.environ["FETCH_CHUNK"], "--pipeline", os.environ["PIPELINE"],
         ] + (["--harness-reader"] if os.environ.get("HARNESS_READER") == "1" else []) + (
         [] if os.environ["FETCH_CLIENT"] == "python" else ["--fetch-client", os.environ["FETCH_CLIENT"]]) + [
         "--user", user, "--password", pw, "--host", "127.0.0.1"]
print("machine: %s, %d cores; data in %s (%s)" % (
    subprocess.run(["uname", "-srm"], capture_output=True, text=True).stdout.strip(),
    os.cpu_count(), base,
    subprocess.run(["stat", "-f", "-c", "%T", base], capture_output=True, text=True).stdout.strip()))
print("starlingd: %s" % os.environ["STARLINGD"])
print("fetch client: %s" % ("python (one process per client)" if os.environ["FETCH_CLIENT"] == "python"
                            else os.environ["FETCH_CLIENT"] + " (one C process, one thread per connection)"))
print("load: %s clients x %s APPENDs, fetch x%s, %s mix ops per client, %s rounds" % (
    os.environ["CLIENTS"], os.environ["MESSAGES"], os.environ["FETCH_ROUNDS"],
    os.environ["MIX_OPS"], os.environ["ROUNDS"]))

results = {"starling": [], "dovecot": []}
def run(label, port, pid):
    r = subprocess.run(bench + ["--port", str(port), "--label", label, "--server-pid", str(pid)],
                       capture_output=True, text=True, timeout=3600)
    sys.stdout.write("".join(l + "\n" for l in r.stdout.splitlines()
                             if not l.startswith("RESULT ")))
    sys.stdout.flush()
    if r.returncode != 0:
        sys.stdout.write(r.stderr)
        raise SystemExit("imap-vs-dovecot: benchmark against %s failed" % label)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            results[label].append(json.loads(line[7:]))

# Both servers run side by side and the rounds alternate between them, so
# that other load on the machine (the disk is shared) hits both alike;
# each figure is the median of the rounds.
c = Cluster(n=1, users={user: pw}, daemon=os.environ["STARLINGD"], cli="",
            base_dir=sdir)
d = Dovecot(users={user: pw}, base_dir=ddir)
try:
    c.start_all()
    d.start()
    for i in range(int(os.environ["ROUNDS"])):
        print("-- round %d" % (i + 1), flush=True)
        run("starling", c.nodes[0].imap_port, c.nodes[0].process.pid)
        run("dovecot", d.imap_port, d.process.pid)
finally:
    c.stop_all()
    d.stop()

def median(label, key):
    xs = sorted(r[key] for r in results[label])
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

keys = ("append_msgs_s", "append_mb_s", "fetch_msgs_s", "fetch_mb_s", "list_msgs_s", "mix_ops_s")
s = {k: median("starling", k) for k in keys}
v = {k: median("dovecot", k) for k in keys}
print()
print("medians of %d rounds" % len(results["starling"]))
print("%-22s %12s %12s %8s" % ("figure", "starling", "dovecot", "ratio"))
goals = {"append_msgs_s": 5.0, "fetch_msgs_s": 2.0, "fetch_mb_s": 2.0, "list_msgs_s": 2.0,
         "mix_ops_s": 2.0}
ok = True
for key, name in (("append_msgs_s", "APPEND msgs/s"), ("append_mb_s", "APPEND MB/s"),
                  ("fetch_msgs_s", "FETCH msgs/s"), ("fetch_mb_s", "FETCH MB/s"),
                  ("list_msgs_s", "FETCH list msgs/s"), ("mix_ops_s", "mix ops/s")):
    ratio = s[key] / v[key] if v[key] else float("inf")
    goal = goals.get(key)
    mark = "" if goal is None else ("  (goal >= %gx: %s)" % (goal, "met" if ratio >= goal else "NOT met"))
    if goal is not None and ratio < goal:
        ok = False
    print("%-22s %12.1f %12.1f %7.2fx%s" % (name, s[key], v[key], ratio, mark))
fc = "C" if results["starling"] and results["starling"][0].get("fetch_client") == "imap-fetch-load" else "py"
for key, name in (("fetch_srv_us", "FETCH server us/msg"), ("fetch_cli_us", "FETCH client(%s) us/msg" % fc),
                  ("list_srv_us", "list server us/msg"), ("list_cli_us", "list client us/msg"),
                  ("mix_srv_us", "mix server us/op"), ("mix_cli_us", "mix client us/op")):
    if all(key in r for r in results["starling"] + results["dovecot"]):
        sv, dv = median("starling", key), median("dovecot", key)
        print("%-22s %12.0f %12.0f %7.2fx" % (name, sv, dv, dv / sv if sv else float("inf")))
print("goals %s" % ("met" if ok else "not met"))
EOF
