#!/usr/bin/env bash
# Runs Dovecot's imaptest in its stress mode (random commands from CLIENTS
# concurrent sessions on one mailbox for SECS seconds, no checkpoint=) against
# a private starlingd and a private Dovecot (dovecot-imapd, mail_fsync =
# always: fsync before OK, as Starling) in one run, and prints the number of
# commands of each kind imaptest got done, their total, and the ratio
# Starling/Dovecot.  Builds nothing; imaptest is not a Debian package (docs/testing.md
# says how to build it).
#
#   IMAPTEST=/path/to/imaptest BUILD=/tmp/b-rel bench/imaptest-vs-dovecot.sh
#
# Environment: IMAPTEST (required), IMAPTEST_MBOX (the messages imaptest
# appends; default tests/default.mbox beside the binary, as in imaptest's
# source tree), STARLINGD (default $BUILD/replicator/starlingd, BUILD default
# ./build: give an -O2 build), BENCH_DIR (where both servers keep their data;
# default /var/tmp, must not be tmpfs or fsync means nothing), CLIENTS (10),
# SECS (20), ROUNDS (3: the servers take turns, each figure is the median of
# its rounds), IMAPTEST_ARGS (more imaptest settings, e.g. "logout=0").
# Goal of issue 15: the total >= 2x Dovecot's.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$top/build}
STARLINGD=${STARLINGD:-$BUILD/replicator/starlingd}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
: "${IMAPTEST:?set IMAPTEST to an imaptest binary}"
IMAPTEST_MBOX=${IMAPTEST_MBOX:-$(dirname "$IMAPTEST")/tests/default.mbox}
[ -x "$IMAPTEST" ] || { echo "imaptest-vs-dovecot: $IMAPTEST is not executable" >&2; exit 1; }
[ -r "$IMAPTEST_MBOX" ] || { echo "imaptest-vs-dovecot: no mbox $IMAPTEST_MBOX (set IMAPTEST_MBOX)" >&2; exit 1; }
[ -x "$STARLINGD" ] || { echo "imaptest-vs-dovecot: no starlingd at $STARLINGD (set STARLINGD or BUILD)" >&2; exit 1; }
command -v dovecot >/dev/null || [ -x /usr/sbin/dovecot ] || { echo "imaptest-vs-dovecot: dovecot not installed (scripts/install-deps --bench)" >&2; exit 1; }
fs=$(stat -f -c %T "$BENCH_DIR")
[ "$fs" != tmpfs ] || echo "imaptest-vs-dovecot: warning: $BENCH_DIR is tmpfs, fsync costs nothing there" >&2

export STARLINGD BENCH_DIR IMAPTEST IMAPTEST_MBOX TOP="$top"
export CLIENTS=${CLIENTS:-10} SECS=${SECS:-20} ROUNDS=${ROUNDS:-3} IMAPTEST_ARGS=${IMAPTEST_ARGS:-}
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/lib/dovecot
exec python3 -B - <<'EOF'
import os, re, subprocess, sys, tempfile
top = os.environ["TOP"]
sys.path.insert(0, os.path.join(top, "tests"))
from harness import proc
from harness.starling import Cluster
from harness.dovecot import Dovecot

user, pw = "bench", "bench-pw"
base = os.environ["BENCH_DIR"]
secs, clients, rounds = int(os.environ["SECS"]), int(os.environ["CLIENTS"]), int(os.environ["ROUNDS"])
sdir = tempfile.mkdtemp(prefix="starling-bench-", dir=base)
ddir = tempfile.mkdtemp(prefix="dovecot-bench-", dir=base)
proc._tmpdirs.extend([sdir, ddir])
print("machine: %s, %d cores, load average %s; data in %s (%s)" % (
    subprocess.run(["uname", "-srm"], capture_output=True, text=True).stdout.strip(),
    os.cpu_count(), " ".join("%.2f" % x for x in os.getloadavg()), base,
    subprocess.run(["stat", "-f", "-c", "%T", base], capture_output=True, text=True).stdout.strip()))
print("starlingd: %s" % os.environ["STARLINGD"])
print("imaptest: %s, stress mode, clients=%d secs=%d %s, %d rounds" % (
    os.environ["IMAPTEST"], clients, secs, os.environ["IMAPTEST_ARGS"], rounds))


def totals(out):
    """{command: count} from imaptest's "Totals:" block: the line of
    command names, then percentage lines, then one line of counts."""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Totals:" and i + 1 < len(lines):
            names = lines[i + 1].split()
            for l in lines[i + 2:]:
                f = l.split()
                if f and all(re.fullmatch(r"\d+", x) for x in f):
                    if len(f) != len(names):
                        break
                    return dict(zip(names, map(int, f)))
    return None


results = {"starling": [], "dovecot": []}


def run(label, port):
    cmd = [os.environ["IMAPTEST"], "host=127.0.0.1", "port=%d" % port, "user=" + user,
           "pass=" + pw, "mbox=" + os.environ["IMAPTEST_MBOX"], "secs=%d" % secs,
           "clients=%d" % clients] + os.environ["IMAPTEST_ARGS"].split()
    # imaptest waits up to 30 s for its clients to log out after SECS.
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 120)
    out = r.stdout + r.stderr
    t = totals(r.stdout)
    errors = [l for l in out.splitlines() if l.startswith(("Error:", "Panic:", "Fatal:"))]
    if r.returncode != 0 or t is None:
        sys.stdout.write(out[-4000:])
        raise SystemExit("imaptest-vs-dovecot: imaptest against %s failed (exit %d)"
                         % (label, r.returncode))
    results[label].append(t)
    print("%-9s total %7d commands, %d imaptest errors%s" % (
        label, sum(t.values()), len(errors),
        "" if not errors else " (first: %s)" % errors[0][:160]), flush=True)


# Both servers run side by side and the rounds alternate between them, so
# that other load on the machine hits both alike.  The mailbox carries over
# from round to round on both.
c = Cluster(n=1, users={user: pw}, daemon=os.environ["STARLINGD"], cli="",
            base_dir=sdir)
d = Dovecot(users={user: pw}, base_dir=ddir)
try:
    c.start_all()
    d.start()
    for i in range(rounds):
        print("-- round %d" % (i + 1), flush=True)
        run("starling", c.nodes[0].imap_port)
        run("dovecot", d.imap_port)
finally:
    c.stop_all()
    d.stop()


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


names = list(results["starling"][0])
for r in results["starling"] + results["dovecot"]:
    names += [k for k in r if k not in names]
print()
print("medians of %d rounds (commands done in %d s by %d clients)" % (rounds, secs, clients))
print("%-10s %10s %10s %8s" % ("command", "starling", "dovecot", "ratio"))
for k in names:
    s = median([r.get(k, 0) for r in results["starling"]])
    v = median([r.get(k, 0) for r in results["dovecot"]])
    print("%-10s %10g %10g %8s" % (k, s, v, "%.2fx" % (s / v) if v else "-"))
s = median([sum(r.values()) for r in results["starling"]])
v = median([sum(r.values()) for r in results["dovecot"]])
ratio = s / v if v else float("inf")
print("%-10s %10g %10g %7.2fx  (goal >= 2x: %s)" % ("total", s, v, ratio,
                                                    "met" if ratio >= 2 else "NOT met"))
print("load average at the end: %s" % " ".join("%.2f" % x for x in os.getloadavg()))
EOF
