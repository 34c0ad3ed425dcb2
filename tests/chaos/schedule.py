"""The seeded random schedule of one chaos run: client operations per
session, admin commands, and faults, each at a planned time offset.

make_schedule() is a pure function of its arguments: the same seed, node
count, duration and fault classes give the same schedule, operation for
operation and fault for fault.  What an operation acts on at run time (the
k-th message of what its session sees) depends on the real nodes, but the
random choices (which operation, which k, which node, which link, when) do
not.
"""
import random

# Fault classes --faults can name.  "diskfull" needs root (a tmpfs data_dir);
# "logmax" is a configuration (a small repl_log_max on every node) that the
# other faults then overflow.
FAULT_CLASSES = ("kill", "pause", "partition", "partial", "oneway",
                 "blackhole", "latency", "diskfull", "logmax")

# Flags that STORE and APPEND set at random and the checker judges.
# \Deleted is left to the expunge operation, so that a plain EXPUNGE can
# only remove messages some expunge operation marked.
JUDGED_FLAGS = ("\\Seen", "\\Flagged", "\\Answered", "\\Draft", "$k1", "$k2", "$k3")

# Mailboxes every session uses; COPY and MOVE go to COPIES, which nothing
# expunges.  Scratch mailboxes (CREATE/RENAME/DELETE/SUBSCRIBE) are named
# per session so that no two sessions race on one name.
MAILBOXES = ("INBOX", "Shared")
COPIES = "Copies"

SESSION_OPS = (
    ("append", 26), ("store", 28), ("expunge", 7), ("copy", 5), ("move", 5),
    ("fetch", 10), ("select", 6), ("mbox", 6), ("snapshot", 2),
)
ADMIN_OPS = (("deliver", 5), ("bundle", 2), ("resync", 2))

# How long each fault lasts (seconds, uniform range).  A pause outlasts the
# links' 3 s dead timeout, so the other nodes declare the node dead.
FAULT_DURATION = {
    "kill": (1.0, 4.0), "pause": (4.0, 7.0), "partition": (3.0, 8.0),
    "partial": (3.0, 8.0), "oneway": (3.0, 7.0), "blackhole": (4.0, 8.0),
    "latency": (3.0, 8.0), "diskfull": (3.0, 6.0),
}
NODE_FAULTS = ("kill", "pause", "diskfull", "partition")


def _weighted(rng, table):
    total = sum(w for _, w in table)
    x = rng.uniform(0, total)
    for name, w in table:
        x -= w
        if x <= 0:
            return name
    return table[-1][0]


def make_schedule(seed, nodes=3, duration=30.0, faults=FAULT_CLASSES,
                  sessions=None, refuse=False):
    rng = random.Random(seed)
    faults = tuple(f for f in FAULT_CLASSES if f in faults)
    nsess = sessions or nodes + 1
    sched = {
        "seed": seed, "nodes": nodes, "duration": duration,
        "fault_classes": list(faults), "refuse": refuse,
        "repl_log_max": None, "diskfull_node": None,
        "sessions": [], "admin": [], "faults": [], "loss_victim": None,
    }
    if "logmax" in faults and rng.random() < 0.6:
        sched["repl_log_max"] = rng.choice((10, 15, 25))
    if "diskfull" in faults:
        sched["diskfull_node"] = rng.randint(1, nodes)
    if refuse:
        sched["loss_victim"] = rng.randint(1, nodes)

    # Sessions: one per node, then the rest on random nodes.
    for i in range(nsess):
        node = i + 1 if i < nodes else rng.randint(1, nodes)
        ops, t, scratch = [], rng.uniform(0.0, 0.5), []
        mbox_seq = 0
        while t < duration:
            kind = _weighted(rng, SESSION_OPS)
            op = {"t": round(t, 3), "kind": kind}
            if kind == "append":
                op["mailbox"] = rng.choice(("INBOX", "Shared", "Shared"))
                op["flags"] = sorted(f for f in JUDGED_FLAGS if rng.random() < 0.2)
                op["size"] = rng.choice((200, 600, 2000, 2000, 9000, 40000))
            elif kind == "store":
                op["k"] = rng.randrange(1 << 30)
                op["sign"] = rng.choice("+-")
                op["flags"] = sorted(rng.sample(JUDGED_FLAGS, rng.choice((1, 1, 2))))
                op["unchangedsince"] = rng.random() < 0.3
                op["count"] = rng.choice((1, 1, 1, 2))
            elif kind in ("expunge", "copy", "move"):
                op["k"] = rng.randrange(1 << 30)
                if kind == "expunge":
                    op["plain"] = rng.random() < 0.3
            elif kind == "select":
                op["mailbox"] = rng.choice(MAILBOXES)
            elif kind == "snapshot":
                op["mailbox"] = rng.choice(MAILBOXES)
            elif kind == "mbox":
                # A scratch mailbox's life, step by step, planned as if
                # every step succeeded (the checker judges only names whose
                # every step was acknowledged).
                if not scratch:
                    mbox_seq += 1
                    name = "scratch-s%d-%d" % (i + 1, mbox_seq)
                    op.update(cmd="CREATE", name=name)
                    scratch.append(name)
                else:
                    name = scratch[-1]
                    step = rng.choice(("SUBSCRIBE", "RENAME", "DELETE", "DELETE",
                                       "UNSUBSCRIBE"))
                    op.update(cmd=step, name=name)
                    if step == "RENAME":
                        mbox_seq += 1
                        op["new"] = "scratch-s%d-%d" % (i + 1, mbox_seq)
                        scratch[-1] = op["new"]
                    elif step == "DELETE":
                        scratch.pop()
            ops.append(op)
            t += rng.expovariate(1.0 / 0.45)
        sched["sessions"].append({"id": i + 1, "node": node, "ops": ops})

    t = rng.uniform(0.5, 2.0)
    while t < duration:
        kind = _weighted(rng, ADMIN_OPS)
        op = {"t": round(t, 3), "kind": kind, "node": rng.randint(1, nodes)}
        if kind == "deliver":
            op["mailbox"] = rng.choice(("INBOX", "Shared"))
            op["size"] = rng.choice((300, 3000))
        elif kind == "bundle":
            op["to"] = rng.choice([n for n in range(1, nodes + 1) if n != op["node"]])
        ops = sched["admin"]
        ops.append(op)
        t += rng.expovariate(1.0 / 2.5)

    sched["faults"] = _fault_plan(rng, nodes, duration, faults, sched["diskfull_node"])
    return sched


def _fault_plan(rng, nodes, duration, faults, diskfull_node):
    """Fault episodes as inject/heal events.  At most one node is down
    (killed or paused) at a time and at most two faults overlap, so the
    cluster keeps a majority of working nodes most of the time while
    partitions, kills and slow links still meet."""
    kinds = [f for f in faults if f in FAULT_DURATION]
    events = []
    if not kinds:
        return events
    active = []   # (heal_time, kind, nodes touched)
    t = rng.uniform(1.0, 3.0)
    ids = list(range(1, nodes + 1))
    end = duration - 1.0
    while t < end - 1.0:
        active = [a for a in active if a[0] > t]
        kind = rng.choice(kinds)
        lo, hi = FAULT_DURATION[kind]
        d = min(rng.uniform(lo, hi), end - t)
        busy = set(n for a in active for n in a[2])
        down_now = any(a[1] in ("kill", "pause") for a in active)
        ok = len(active) < 2 and not (kind in ("kill", "pause") and down_now)
        free = [n for n in ids if n not in busy]
        if ok and kind == "diskfull":
            # Only the node whose data_dir is the small tmpfs can fill up.
            free = [n for n in free if n == diskfull_node]
        if ok and kind in NODE_FAULTS:
            ok = bool(free)
        if ok and kind not in NODE_FAULTS:
            ok = len(free) >= 2
        if ok and d >= 1.0:
            ev = {"t": round(t, 3), "kind": kind, "heal": round(t + d, 3)}
            if kind in NODE_FAULTS:
                ev["node"] = rng.choice(free)
                touched = (ev["node"],)
            else:
                a, b = rng.sample(free, 2)
                ev["a"], ev["b"] = a, b
                touched = (a, b)
                if kind == "latency":
                    ev["delay"] = rng.choice((0.05, 0.15, 0.4, 1.0))
                if kind == "partial" and nodes >= 3:
                    # A-B-C with A-C down: the middle node still links both.
                    pass
            active.append((t + d, kind, touched))
            events.append(ev)
        t += rng.uniform(0.8, 3.5)
    return events


def describe(sched):
    """The schedule as short text lines (for a violation report)."""
    out = ["seed %d: %d nodes, %.0f s, fault classes %s%s%s%s" % (
        sched["seed"], sched["nodes"], sched["duration"],
        ",".join(sched["fault_classes"]) or "none",
        ", repl_log_max %d" % sched["repl_log_max"] if sched["repl_log_max"] else "",
        ", tmpfs data_dir on node %d" % sched["diskfull_node"]
        if sched.get("diskfull_node") else "",
        ", degraded_writes refuse, node %d lost at the end" % sched["loss_victim"]
        if sched.get("refuse") else "")]
    for ev in sched["faults"]:
        where = ("node %d" % ev["node"]) if "node" in ev else "link %d-%d" % (ev["a"], ev["b"])
        extra = " +%.2fs" % ev["delay"] if "delay" in ev else ""
        out.append("  fault %6.2f-%6.2f %-9s %s%s" % (ev["t"], ev["heal"], ev["kind"],
                                                       where, extra))
    for s in sched["sessions"]:
        counts = {}
        for op in s["ops"]:
            counts[op["kind"]] = counts.get(op["kind"], 0) + 1
        out.append("  session %d on node %d: %d ops (%s)" % (
            s["id"], s["node"], len(s["ops"]),
            ", ".join("%s %d" % kv for kv in sorted(counts.items()))))
    counts = {}
    for op in sched["admin"]:
        counts[op["kind"]] = counts.get(op["kind"], 0) + 1
    out.append("  admin: %d commands (%s)" % (
        len(sched["admin"]), ", ".join("%s %d" % kv for kv in sorted(counts.items()))))
    return out
