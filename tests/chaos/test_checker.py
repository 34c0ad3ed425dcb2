#!/usr/bin/env python3
"""The fault campaign's checker against made-up histories and final states,
without any server: each invariant fires on a history that breaks it, and
stays quiet where the history does not decide (a change with no OK, changes
that overlap in time, a STORE whose answer did not show the message, a UID
seen by two different clients).  The last line is
"chaos-checker: N passed, M failed".
"""
import os
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from harness.report import Report  # noqa: E402
import check  # noqa: E402
import execute  # noqa: E402

R = Report("chaos-checker")


class FakeNode:
    def __init__(self, node_id):
        self.node_id = node_id


class FakeRunner:
    def __init__(self, events):
        self.history = type("H", (), {})()
        self.history.events = events
        for i, e in enumerate(events):
            e["seq"] = i


def ev(actor, t0, t1, kind, cmd, status="OK", **kw):
    e = {"actor": actor, "node": 1, "conn": kw.pop("conn", 1), "kind": kind, "cmd": cmd,
         "status": status, "t0": t0, "t1": t1, "mailbox": kw.pop("mailbox", "INBOX"),
         "uidvalidity": kw.pop("uidvalidity", 7), "fetch": [], "vanished": [],
         "highestmodseq": [], "code": None, "code_args": None}
    e.update(kw)
    return e


def append(actor, t0, t1, msgid, uid, flags=(), status="OK", mailbox="INBOX"):
    return ev(actor, t0, t1, "append", "APPEND %s" % msgid, status, msgid=msgid,
              target_mailbox=mailbox, flags=list(flags),
              code="APPENDUID" if status == "OK" else None,
              code_args="7 %d" % uid if status == "OK" else None)


def store(actor, t0, t1, uid, msgid, sign, flags, status="OK", show=True, **kw):
    fetch = [{"uid": uid, "flags": [], "modseq": 5}] if show and status == "OK" else []
    return ev(actor, t0, t1, "store", "UID STORE %d %sFLAGS" % (uid, sign), status,
              targets={uid: msgid}, sign=sign, flags=list(flags), fetch=fetch, **kw)


def state(msgs, mailbox="INBOX", extra_boxes=()):
    """{node_id: (boxes, subs)} for two nodes holding the same msgs
    ([(uid, msgid, flags)])."""
    boxes = {mailbox: {"uidvalidity": 7,
                       "msgs": {u: (m, tuple(f)) for u, m, f in msgs}}}
    for b in extra_boxes:
        boxes[b] = {"uidvalidity": 9, "msgs": {}}
    return boxes


def run(events, per_node):
    nodes = [FakeNode(i) for i in sorted(per_node)]
    states = {i: (b, set()) for i, b in per_node.items()}
    vs, _model = check.check_all(FakeRunner(events), nodes, states, [])
    return sorted(set(v.invariant for v in vs)), vs


def expect(what, events, per_node, want):
    got, vs = run(events, per_node)
    R.check(what, got == sorted(want), "got %s, want %s: %s"
            % (got, sorted(want), [str(v) for v in vs]))


def t_appends():
    a = append("s1", 1, 2, "<m1>", 1)
    full = state([(1, "<m1>", [])])
    expect("an acknowledged APPEND on every node: nothing", [a], {1: full, 2: full}, [])
    expect("an acknowledged APPEND missing on one node", [a], {1: full, 2: state([])},
           ["acked-append-present"])
    expect("an APPEND without OK may be missing", [append("s1", 1, 2, "<m1>", 1, status="NO")],
           {1: state([]), 2: state([])}, [])
    expect("a message twice in one mailbox", [a],
           {1: state([(1, "<m1>", []), (2, "<m1>", [])]), 2: full}, ["exactly-once"])
    mark = ev("s2", 3, 4, "expunge", "UID STORE 1 +FLAGS.SILENT (\\Deleted)",
              targets={1: "<m1>"}, deleted_mark=True)
    gone = ev("s2", 4, 5, "expunge", "UID EXPUNGE 1", targets={1: "<m1>"},
              vanished=[(False, [1])])
    expect("an acknowledged EXPUNGE, message gone: nothing", [a, mark, gone],
           {1: state([]), 2: state([])}, [])
    expect("an acknowledged EXPUNGE, message back on one node", [a, mark, gone],
           {1: state([]), 2: full}, ["acked-expunge-holds"])
    unsure = dict(gone, status="BROKEN", vanished=[])
    expect("an EXPUNGE without OK: either way is fine", [a, mark, unsure],
           {1: state([]), 2: full}, [])
    mv = ev("s2", 4, 5, "move", "UID MOVE 1 Copies", targets={1: "<m1>"},
            vanished=[(False, [1])], copyuid=[9, "1", "4"])
    expect("an acknowledged MOVE, message back on one node", [a, mv],
           {1: state([]), 2: full}, ["acked-expunge-holds", "copies"])
    renumbered = dict(mv, copyuid=None)
    expect("a MOVE that moved nothing while a sync renumbered the message", [a, renumbered],
           {1: full, 2: full}, [])


def t_flags():
    a = append("s1", 1, 2, "<m1>", 1)
    seen = store("s1", 3, 4, 1, "<m1>", "+", ["\\Seen"])
    expect("an acknowledged +FLAGS holds: nothing", [a, seen],
           {1: state([(1, "<m1>", ["\\Seen"])])}, [])
    expect("an acknowledged +FLAGS lost", [a, seen], {1: state([(1, "<m1>", [])])},
           ["flag-holds"])
    later = store("s2", 5, 6, 1, "<m1>", "-", ["\\Seen"])
    expect("a later acknowledged -FLAGS supersedes it", [a, seen, later],
           {1: state([(1, "<m1>", [])])}, [])
    expect("...and then the flag must be clear", [a, seen, later],
           {1: state([(1, "<m1>", ["\\Seen"])])}, ["flag-holds"])
    overlap = store("s2", 3.5, 6, 1, "<m1>", "-", ["\\Seen"])
    expect("overlapping changes of one flag decide nothing", [a, seen, overlap],
           {1: state([(1, "<m1>", ["\\Seen"])])}, [])
    expect("...either way", [a, seen, overlap], {1: state([(1, "<m1>", [])])}, [])
    lost = store("s2", 0.5, 0.6, 1, "<m1>", "-", ["\\Seen"], status="BROKEN")
    expect("an earlier change with no answer may land any time: undecided", [a, lost, seen],
           {1: state([(1, "<m1>", [])])}, [])
    other = store("s2", 3.5, 6, 1, "<m1>", "+", ["\\Flagged"])
    expect("an overlapping change of another flag does not excuse a lost one",
           [a, seen, other], {1: state([(1, "<m1>", ["\\Flagged"])])}, ["flag-holds"])
    blind = store("s1", 3, 4, 1, "<m1>", "+", ["\\Seen"], show=False)
    expect("an OK that did not show the message judges nothing", [a, blind],
           {1: state([(1, "<m1>", [])])}, [])
    refused = store("s1", 3, 4, 1, "<m1>", "+", ["\\Seen"], code="MODIFIED", code_args="1")
    expect("a conditional STORE refused by MODIFIED changed nothing", [a, refused],
           {1: state([(1, "<m1>", [])])}, [])


def t_own_mailbox():
    # Seed 9101 (fault campaign, all classes): the message appended to
    # INBOX also turned up in Shared at the same UID, where a session set
    # $k3 on it; the checker took that STORE as a change of the INBOX
    # message and reported a lost flag instead of the misplaced message.
    a = append("s1", 1, 2, "<m1>", 14, mailbox="INBOX")
    k3 = store("s4", 3, 4, 14, "<m1>", "+", ["$k3"], mailbox="Shared")
    both = state([(14, "<m1>", [])])
    both["Shared"] = {"uidvalidity": 9, "msgs": {14: ("<m1>", ("$k3",))}}
    expect("a message in a mailbox it was never put in, and a STORE there",
           [a, k3], {1: both}, ["own-mailbox"])
    expect("a STORE in another mailbox does not decide the flag here", [a, k3],
           {1: state([(14, "<m1>", [])], extra_boxes=["Shared"])}, [])
    here = store("s4", 3, 4, 14, "<m1>", "+", ["$k3"], mailbox="INBOX")
    expect("...while one in the message's own mailbox does", [a, here],
           {1: state([(14, "<m1>", [])], extra_boxes=["Shared"])}, ["flag-holds"])
    copied = state([(14, "<m1>", [])])
    copied["Copies"] = {"uidvalidity": 9, "msgs": {3: ("<m1>", ())}}
    expect("a copy in Copies is where copies go", [a], {1: copied}, [])


def t_uids():
    f1 = ev("s1", 1, 2, "fetch", "UID FETCH 1:*", fetch=[{"uid": 3, "msgid": "<a>"}])
    f2 = ev("s1", 3, 4, "fetch", "UID FETCH 1:*", conn=2, fetch=[{"uid": 3, "msgid": "<b>"}])
    expect("one client sees UID 3 name two messages", [f1, f2], {1: state([])},
           ["uid-names-one-message"])
    f3 = dict(f2, actor="s2")
    expect("two clients of two sides of a split may", [f1, f3], {1: state([])}, [])
    f4 = dict(f2, uidvalidity=8)
    s1 = ev("s1", 0, 0.5, "select", "SELECT INBOX")
    s2 = ev("s1", 2.5, 3, "select", "SELECT INBOX", uidvalidity=8)
    expect("a new UIDVALIDITY is a violation (and voids the UID check)",
           [s1, f1, s2, f4], {1: state([])}, ["uidvalidity-stable"])
    h1 = ev("s1", 1, 2, "select", "SELECT INBOX", highestmodseq=[40])
    h2 = ev("s1", 3, 4, "select", "SELECT INBOX", highestmodseq=[30])
    expect("HIGHESTMODSEQ going back in one connection", [h1, h2], {1: state([])},
           ["highestmodseq-monotonic"])
    expect("...but not across connections", [h1, dict(h2, conn=2)], {1: state([])}, [])


def t_mailboxes_and_copies():
    cr = ev("s1", 1, 2, "mbox", "CREATE scratch-s1-1", mbox_cmd="CREATE", name="scratch-s1-1")
    dl = ev("s1", 3, 4, "mbox", "DELETE scratch-s1-1", mbox_cmd="DELETE", name="scratch-s1-1")
    expect("an acknowledged DELETE undone", [cr, dl],
           {1: state([], extra_boxes=["scratch-s1-1"])}, ["mailbox-ops"])
    expect("a DELETE without OK decides nothing", [cr, dict(dl, status="BROKEN")],
           {1: state([], extra_boxes=["scratch-s1-1"])}, [])
    rn = ev("s1", 3, 4, "mbox", "RENAME", mbox_cmd="RENAME", name="scratch-s1-1",
            new="scratch-s1-2")
    expect("an acknowledged RENAME undone", [cr, rn],
           {1: state([], extra_boxes=["scratch-s1-1"])}, ["mailbox-ops"])
    a = append("s1", 0, 0.5, "<m1>", 1)
    c1 = ev("s1", 1, 2, "copy", "UID COPY 1 Copies", targets={1: "<m1>"}, code="COPYUID")
    c2 = dict(c1, actor="s2", t0=1.5, t1=2.5)
    one = state([(1, "<m1>", [])])
    one["Copies"] = {"uidvalidity": 9, "msgs": {4: ("<m1>", ())}}
    expect("two acknowledged COPYs, one copy", [a, c1, c2], {1: one}, ["copies"])
    expect("one acknowledged and one unanswered COPY, one copy",
           [a, c1, dict(c2, status="BROKEN", code=None)], {1: one}, [])


class FakeStoreNode:
    """A node for Runner's restart logic: its log, its starts, no process."""

    def __init__(self, node_id, log):
        self.node_id = node_id
        self.data_dir = "/nonexistent/node%d/data" % node_id
        self.starts = 1
        self.log = "--- start 1 at now\n" + log
        self.up = True

    def running(self):
        return self.up

    def log_text(self):
        return self.log

    def stop(self):
        self.up = False
        return 0

    def start(self, timeout=None):
        self.starts += 1
        self.log += "--- start %d at now\n" % self.starts
        self.up = True


def fake_runner(nodes):
    r = execute.Runner.__new__(execute.Runner)
    r.cluster = type("C", (), {})()
    r.cluster.nodes = nodes
    r.cluster.mesh = type("M", (), {"restore_all": lambda self: None,
                                    "clear_latency": lambda self: None})()
    r.node_lock = execute.threading.RLock()
    r.paused, r.killed, r.crashes, r.fillers = set(), set(), [], {}
    r.disk_filled = set()
    r.history = execute.History(execute.time.monotonic())
    return r


def t_final_heal():
    # Node 1's disk was filled and freed, and its store failed only after
    # that (a write staged while the disk was full): no diskfull heal is
    # left to see it, so the final heal must restart it, as an operator
    # would.  Node 2's disk was filled too, its store is fine.
    failed = 'ts=2026-12-07T12:00:00.000Z level=error node=1 msg="x: ' \
        '/nonexistent/node1/data/store: a write to the store failed earlier; restart ' \
        'the node to recover the store"\n'
    n1, n2 = FakeStoreNode(1, failed), FakeStoreNode(
        2, 'ts=2026-12-07T12:00:00.000Z level=info node=2 msg="all is well"\n')
    r = fake_runner([n1, n2])
    r.disk_filled = {1, 2}
    r.heal_all()
    R.check("a node whose store failed after its disk was freed is restarted",
            n1.starts == 2, "starts %d" % n1.starts)
    R.check("a node whose store is fine is left alone", n2.starts == 1,
            "starts %d" % n2.starts)
    R.check("no crash is reported", r.crashes == [], r.crashes)
    r.heal_all()
    R.check("a restarted node is not restarted again", n1.starts == 2,
            "starts %d" % n1.starts)


def load_run():
    """tests/chaos/run as a module (its name has no .py)."""
    import importlib.machinery
    import importlib.util
    path = os.path.join(HERE, "run")
    loader = importlib.machinery.SourceFileLoader("chaos_run", path)
    spec = importlib.util.spec_from_loader("chaos_run", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def t_jobs():
    # A schedule run by --jobs runs in a process of its own, started with
    # the command line child_argv builds: it must get every option that
    # shapes the schedule, or a parallel campaign would run other
    # schedules than the ones its seeds replay.
    run = load_run()
    for opts in (["--nodes", "5", "--duration", "45.5", "--refuse", "--sessions", "4",
                  "--faults", "kill,partial"],
                 ["--nodes", "4", "--faults", "none", "--keep", "--bound", "90"],
                 ["--duration", "60"]):
        args = run.parser().parse_args(["--schedules", "8", "--seed", "9700",
                                        "--jobs", "3"] + opts)
        args.build_dir = "/nonexistent/build"
        faults = run.parse_faults(args.faults)
        argv = run.child_argv(args, 9703, 4, faults, "/nonexistent/r.json")
        child = run.parser().parse_args(argv[2:])
        R.check("the child of %s runs one schedule, seed 9703" % " ".join(opts),
                (child.schedules, child.seed, child.child_index) == (1, 9703, 4),
                argv)
        R.check("the child of %s runs the schedule seed 9703 replays" % " ".join(opts),
                run.schedule_of(child, 9703, run.parse_faults(child.faults))
                == run.schedule_of(args, 9703, faults), argv)
        R.check("the child of %s judges as the campaign does" % " ".join(opts),
                (child.bound, child.sync_check, child.known_open, child.keep,
                 child.build) == (args.bound, args.sync_check, args.known_open, args.keep,
                                  args.build_dir), argv)
    # Seeds, not the order schedules run in, decide them.
    args = run.parser().parse_args(["--schedules", "2", "--seed", "1"])
    R.check("one seed gives one schedule", run.schedule_of(args, 5, ["kill"])
            == run.schedule_of(args, 5, ["kill"]))
    R.check("two seeds give two schedules", run.schedule_of(args, 5, ["kill"])
            != run.schedule_of(args, 6, ["kill"]))


def main():
    for name, f in (("appends", t_appends), ("flags", t_flags),
                    ("own mailbox", t_own_mailbox), ("uids", t_uids),
                    ("mailboxes and copies", t_mailboxes_and_copies),
                    ("the final heal", t_final_heal), ("--jobs", t_jobs)):
        R.section(name, f)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
