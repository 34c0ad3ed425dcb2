"""After the heal: wait for convergence, read every node's final state, and
check the invariants against a model built from the history.

Only what the history makes unambiguous is judged.  An operation whose
answer was not OK (NO, BAD, a broken connection, a timeout) may or may not
have happened, at any time after it was sent: it never counts as done, and
it makes every judgement that it could change undecided rather than wrong.
"""
import time

from harness.imapwire import Client, ProtocolError, expand_set, parse

from execute import USER, PASSWORD, IMAP_TIMEOUT, FETCH_ITEMS, parse_untagged
from schedule import JUDGED_FLAGS, COPIES, MAILBOXES

INF = float("inf")


class Violation:
    def __init__(self, invariant, text, msgid=None, events=None):
        self.invariant = invariant
        self.text = text
        self.msgid = msgid
        self.events = events or []

    def __str__(self):
        return "%s: %s" % (self.invariant, self.text)


# ------------------------------------------------------------- convergence
def probe_imap(node, timeout=10.0):
    """True when the node answers LOGIN and NOOP within timeout."""
    try:
        c = Client(node.host, node.imap_port, timeout=timeout)
        ok = c.login(USER, PASSWORD).ok and c.command("NOOP").ok
        c.logout()
        return ok
    except (OSError, EOFError, ProtocolError):
        return False


def converge(runner, nodes, bound):
    """Wait up to bound seconds for identical dumps on the given nodes,
    probing IMAP on each meanwhile.  Returns (seconds, violations)."""
    out = []
    t0 = time.monotonic()
    deadline = t0 + bound
    last = None
    silent = {}
    while True:
        for n in nodes:
            if not probe_imap(n):
                silent[n.node_id] = silent.get(n.node_id, 0) + 1
        dumps = []
        try:
            dumps = [n.dump(USER, timeout=30) for n in nodes]
        except Exception as e:  # noqa: BLE001 -- CLI timeout or failure
            last = "dump failed: %s" % str(e)[:300]
        if dumps and all(d == dumps[0] for d in dumps):
            break
        if dumps:
            last = _first_difference(nodes, dumps)
        if time.monotonic() >= deadline:
            out.append(Violation("converge", "dumps of %s still differ %.0f s after the heal: %s"
                                 % (USER, bound, last)))
            break
        time.sleep(0.5)
    for nid, k in sorted(silent.items()):
        out.append(Violation("answers-imap", "node %d did not answer LOGIN+NOOP within 10 s "
                             "%d time(s) during the heal" % (nid, k)))
    return time.monotonic() - t0, out


def _first_difference(nodes, dumps):
    base = dumps[0].splitlines()
    for n, d in zip(nodes[1:], dumps[1:]):
        other = d.splitlines()
        if other == base:
            continue
        bs, os_ = set(base), set(other)
        only_a = [x for x in base if x not in os_][:3]
        only_b = [x for x in other if x not in bs][:3]
        return "node %d only: %s; node %d only: %s" % (nodes[0].node_id, only_a,
                                                       n.node_id, only_b)
    return "no difference"


# ------------------------------------------------------------- final state
def read_state(node):
    """{mailbox: {"uidvalidity": n, "msgs": {uid: (msgid, flags)}}} and the
    set of subscriptions, as a fresh IMAP session on node sees them."""
    c = Client(node.host, node.imap_port, timeout=IMAP_TIMEOUT)
    try:
        if not c.login(USER, PASSWORD).ok:
            raise ProtocolError("LOGIN refused on node %d" % node.node_id)
        c.command("ENABLE QRESYNC")
        r = c.command('LIST "" "*"')
        names = []
        for u in r.untagged:
            if u.startswith(b"* LIST"):
                toks = parse(u[2:])
                names.append(bytes(toks[-1]).decode())
        r = c.command('LSUB "" "*"')
        subs = set()
        for u in r.untagged:
            if u.startswith(b"* LSUB"):
                subs.add(bytes(parse(u[2:])[-1]).decode())
        boxes = {}
        for name in names:
            r = c.command("SELECT", '"%s"' % name)
            if not r.ok:
                continue
            sel = parse_untagged(r.untagged)
            r = c.command("UID FETCH 1:* " + FETCH_ITEMS)
            msgs = {}
            for f in parse_untagged(r.untagged)["fetch"]:
                # A change made meanwhile may add an unsolicited FETCH
                # (FLAGS only) for a UID: it updates the flags, not the
                # Message-ID the answer gave.
                old_msgid = msgs.get(f["uid"], (None, ()))[0]
                msgs[f["uid"]] = (f.get("msgid") or old_msgid, tuple(f.get("flags", ())))
            boxes[name] = {"uidvalidity": sel["uidvalidity"], "msgs": msgs}
        return boxes, subs
    finally:
        c.logout()


def check_snapshot(node, snap):
    """A QRESYNC client's cache taken mid-schedule, brought up to date by
    SELECT (QRESYNC ...) after the heal, must equal the mailbox."""
    c = Client(node.host, node.imap_port, timeout=IMAP_TIMEOUT)
    try:
        c.login(USER, PASSWORD)
        c.command("ENABLE QRESYNC")
        r = c.command("SELECT", snap["mailbox"], "(QRESYNC (%d %d))"
                      % (snap["uidvalidity"], snap["modseq"]))
        if not r.ok:
            return "SELECT (QRESYNC) refused: %r" % r.line
        got = parse_untagged(r.untagged)
        if got["uidvalidity"] != snap["uidvalidity"]:
            return None   # the UIDVALIDITY check reports it; the cache is void
        cache = dict(snap["cache"])
        for _earlier, uids in got["vanished"]:
            for u in uids:
                cache.pop(u, None)
        for f in got["fetch"]:
            if "flags" in f:
                cache[f["uid"]] = f["flags"]
        r = c.command("UID FETCH 1:* (UID FLAGS)")
        truth = {f["uid"]: f["flags"] for f in parse_untagged(r.untagged)["fetch"]
                 if "flags" in f}
        if cache != truth:
            wrong = sorted(set(cache) ^ set(truth))[:10]
            diff = [u for u in sorted(set(cache) & set(truth)) if cache[u] != truth[u]][:5]
            return ("after SELECT (QRESYNC (%d %d)) the cache differs: uids only on one side "
                    "%s, flags differ %s" % (snap["uidvalidity"], snap["modseq"], wrong,
                                             [(u, cache[u], truth[u]) for u in diff]))
        return None
    finally:
        c.logout()


# ------------------------------------------------------------- the model
class Model:
    """What the history says must hold."""

    def __init__(self, events):
        self.events = events
        self.appends = {}       # msgid -> event (APPEND or deliver)
        self.removals = {}      # msgid -> [(event, acked)]
        self.copies = {}        # msgid -> [acked count, attempted count]
        self.flag_changes = {}  # (msgid, flag) -> [(t0, t1 or INF, value, event)]
        self.by_msgid = {}      # msgid -> [event seq]
        self._build()
        self.judged = {"messages": 0, "flags": 0}

    def _touch(self, msgid, ev):
        self.by_msgid.setdefault(msgid, []).append(ev["seq"])

    def _build(self):
        for ev in self.events:
            kind = ev.get("kind")
            ok = ev.get("status") == "OK"
            if kind in ("append", "deliver") and "msgid" in ev:
                self.appends[ev["msgid"]] = ev
                self._touch(ev["msgid"], ev)
                t1 = ev["t1"] if ok else INF
                for f in JUDGED_FLAGS:
                    self.flag_changes.setdefault((ev["msgid"], f), []).append(
                        (ev["t0"], t1, f in ev.get("flags", ()), ev, ok))
            targets = ev.get("targets") or {}
            for m in targets.values():
                self._touch(m, ev)
            if kind == "store" and targets:
                self._store(ev, targets, ok)
            elif kind == "expunge" and targets and not ev.get("deleted_mark"):
                for uid, m in targets.items():
                    gone = ok and any(uid in uids for _e, uids in ev.get("vanished", ()))
                    self.removals.setdefault(m, []).append((ev, gone))
            elif kind == "expunge" and ev.get("deleted_mark"):
                # Marked \\Deleted: a plain EXPUNGE by anyone may remove it.
                for m in targets.values():
                    self.removals.setdefault(m, []).append((ev, False))
            elif kind in ("copy", "move") and targets:
                (uid, m), = targets.items()
                c = self.copies.setdefault(m, [0, 0])
                c[1] += 1
                cu = ev.get("copyuid") if kind == "move" else None
                if kind == "copy" and ev.get("code") == "COPYUID":
                    cu = True
                if ok and cu:
                    c[0] += 1
                if kind == "move":
                    # Moved only when the answer says where to (COPYUID): an
                    # OK "No messages moved" may still report the UID vanished,
                    # when a sync renumbered the message meanwhile.
                    moved = ok and bool(cu) and any(uid in uids
                                                    for _e, uids in ev.get("vanished", ()))
                    self.removals.setdefault(m, []).append((ev, moved))

    def _store(self, ev, targets, ok):
        modified = set()
        if ev.get("code") == "MODIFIED":
            modified = set(expand_set(ev["code_args"]))
        fetched = {f["uid"] for f in ev.get("fetch", ())}
        for uid, m in targets.items():
            if ok and uid in modified:
                continue   # the server said it did not change this one
            # Acknowledged only when the answer showed the message: an OK
            # without its FETCH may mean the UID named nothing any more.
            acked = ok and uid in fetched
            for f in ev["flags"]:
                self.flag_changes.setdefault((m, f), []).append(
                    (ev["t0"], ev["t1"] if acked else INF, ev["sign"] == "+", ev, acked))

    def expected_flag(self, msgid, flag, mailbox=None):
        """The value the last change must have left, or None when the
        history does not decide it: the decisive change is acknowledged and
        every other change to this flag of this message ended before it
        began.  With mailbox, only the changes made in that mailbox count: a
        STORE on a copy of the message elsewhere (one Message-ID, two
        messages) changes that copy only."""
        changes = self.flag_changes.get((msgid, flag), [])
        if mailbox is not None:
            changes = [c for c in changes if change_mailbox(c[3]) == mailbox]
        acked = [c for c in changes if c[4]]
        if not acked:
            return None, None
        cand = max(acked, key=lambda c: c[0])
        for c in changes:
            if c is cand:
                continue
            if not c[1] < cand[0]:
                return None, None
        return cand[2], cand[3]


def change_mailbox(ev):
    """The mailbox a flag change was made in: an APPEND's or a delivery's
    target, a STORE's selected mailbox."""
    if ev.get("kind") in ("append", "deliver"):
        return ev.get("target_mailbox")
    return ev.get("mailbox")


def check_all(runner, nodes, states, snapshots_result):
    """Every invariant but convergence; returns a list of Violations."""
    events = runner.history.events
    model = Model(events)
    out = []

    # -- acknowledged APPENDs and deliveries: exactly once, unless removed.
    for msgid, ev in sorted(model.appends.items()):
        mb = ev["target_mailbox"]
        removals = model.removals.get(msgid, [])
        maybe_removed = bool(removals)
        acked_removed = any(acked for _e, acked in removals)
        if ev["status"] == "OK" and not maybe_removed or acked_removed:
            model.judged["messages"] += 1
        for node in nodes:
            boxes = states[node.node_id][0]
            count = sum(1 for m, _f in boxes.get(mb, {}).get("msgs", {}).values() if m == msgid)
            where = "node %d, %s" % (node.node_id, mb)
            if count > 1:
                out.append(Violation("exactly-once", "%s holds %s %d times"
                                     % (where, msgid, count), msgid))
            elif count == 0 and ev["status"] == "OK" and not maybe_removed:
                out.append(Violation("acked-append-present", "%s: %s (%s OK at %.2f s) is "
                                     "missing" % (where, msgid, ev["kind"], ev["t1"]), msgid))
            elif count == 1 and acked_removed:
                out.append(Violation("acked-expunge-holds", "%s: %s is back after an "
                                     "acknowledged EXPUNGE/MOVE" % (where, msgid), msgid))
    # Copies: between the acknowledged and the attempted COPY/MOVEs.
    for msgid, (acked, tried) in sorted(model.copies.items()):
        for node in nodes:
            boxes = states[node.node_id][0]
            count = sum(1 for m, _f in boxes.get(COPIES, {}).get("msgs", {}).values()
                        if m == msgid)
            if not acked <= count <= tried:
                out.append(Violation("copies", "node %d, %s holds %d copies of %s; %d "
                                     "COPY/MOVE acknowledged, %d tried"
                                     % (node.node_id, COPIES, count, msgid, acked, tried),
                                     msgid))

    # -- a message stays where it was put: the sessions' mailboxes hold only
    # what was appended or delivered to them (copies go to COPIES only).
    for msgid, ev in sorted(model.appends.items()):
        mb = ev["target_mailbox"]
        for node in nodes:
            boxes = states[node.node_id][0]
            for other in MAILBOXES:
                if other == mb:
                    continue
                for uid, (m, _f) in sorted(boxes.get(other, {}).get("msgs", {}).items()):
                    if m == msgid:
                        out.append(Violation(
                            "own-mailbox", "node %d, %s uid %d holds %s, which was %s to %s "
                            "and never copied or moved to %s" % (
                                node.node_id, other, uid, msgid,
                                "delivered" if ev.get("kind") == "deliver" else "appended",
                                mb, other), msgid))

    # -- flags: acknowledged changes hold unless a later one superseded.
    for msgid, ev in sorted(model.appends.items()):
        mb = ev["target_mailbox"]
        for flag in JUDGED_FLAGS:
            want, by = model.expected_flag(msgid, flag, mb)
            if want is None:
                continue
            model.judged["flags"] += 1
            for node in nodes:
                msgs = states[node.node_id][0].get(mb, {}).get("msgs", {})
                for uid, (m, flags) in msgs.items():
                    if m != msgid:
                        continue
                    has = flag in flags
                    if has != want:
                        out.append(Violation(
                            "flag-holds", "node %d, %s uid %d (%s): %s is %s, but the last "
                            "acknowledged change (%s at %.2f-%.2f s, by %s) made it %s"
                            % (node.node_id, mb, uid, msgid, flag, "set" if has else "clear",
                               by.get("cmd"), by["t0"], by["t1"], by["actor"],
                               "set" if want else "clear"), msgid))

    # -- UIDs: one message per UID per client; UIDVALIDITY never changes.
    seen_uv = {}
    for node in nodes:
        for mb, box in states[node.node_id][0].items():
            if box["uidvalidity"] is not None and not mb.startswith("scratch-"):
                seen_uv.setdefault(mb, {}).setdefault(box["uidvalidity"], []).append(
                    "final SELECT on node %d" % node.node_id)
    names = {}
    for ev in events:
        actor = ev.get("actor", "")
        if not actor.startswith("s"):
            continue
        mb, uv = ev.get("mailbox"), ev.get("uidvalidity")
        if ev.get("kind") in ("select", "snapshot") and ev.get("cmd", "").startswith("SELECT") \
                and uv is not None:
            seen_uv.setdefault(mb, {}).setdefault(uv, []).append(
                "%s SELECT at %.2f s (event %d)" % (actor, ev["t1"], ev["seq"]))
        obs = []
        if uv is not None:
            obs += [(mb, uv, f["uid"], f["msgid"]) for f in ev.get("fetch", ())
                    if f.get("msgid")]
        if ev.get("code") == "APPENDUID" and ev.get("status") == "OK":
            a_uv, a_uid = (int(x) for x in ev["code_args"].split())
            obs.append((ev["target_mailbox"], a_uv, a_uid, ev["msgid"]))
        for key in obs:
            k = (actor,) + key[:3]
            prev = names.get(k)
            if prev is None:
                names[k] = (key[3], ev["seq"])
            elif prev[0] != key[3]:
                out.append(Violation(
                    "uid-names-one-message", "%s saw %s UID %d (UIDVALIDITY %d) name %s "
                    "(event %d) and then %s (event %d)" % (actor, key[0], key[2], key[1],
                                                          prev[0], prev[1], key[3], ev["seq"]),
                    key[3], [prev[1], ev["seq"]]))
                names[k] = (key[3], ev["seq"])
    for mb, uvs in sorted(seen_uv.items()):
        if len(uvs) > 1:
            out.append(Violation("uidvalidity-stable", "%s had UIDVALIDITY %s" % (
                mb, "; ".join("%d (%s)" % (uv, ", ".join(w[:2])) for uv, w in uvs.items()))))

    # -- HIGHESTMODSEQ never goes backward within a connection.
    top = {}
    for ev in events:
        actor = ev.get("actor", "")
        if not actor.startswith("s") or ev.get("mailbox") is None:
            continue
        key = (actor, ev.get("conn"), ev["mailbox"])
        for h in ev.get("highestmodseq", ()):
            prev = top.get(key)
            if prev is not None and h < prev[0]:
                out.append(Violation("highestmodseq-monotonic",
                                     "%s (connection %d, %s): HIGHESTMODSEQ %d (event %d) after "
                                     "%d (event %d)" % (actor, key[1], key[2], h, ev["seq"],
                                                        prev[0], prev[1]),
                                     None, [prev[1], ev["seq"]]))
            if prev is None or h > prev[0]:
                top[key] = (h, ev["seq"])

    # -- scratch mailboxes: each session's own names, when every step on
    # them was acknowledged.
    expect, unsure = {}, set()
    for ev in events:
        cmd = ev.get("mbox_cmd")
        if not cmd:
            continue
        name, new = ev["name"], ev.get("new")
        if ev.get("status") != "OK":
            unsure.update([name] + ([new] if new else []))
            continue
        if cmd == "CREATE":
            expect[name] = True
        elif cmd == "DELETE":
            expect[name] = False
        elif cmd == "RENAME":
            expect[name] = False
            expect[new] = True
            if name in unsure:
                unsure.add(new)
    for name, present in sorted(expect.items()):
        if name in unsure:
            continue
        for node in nodes:
            has = name in states[node.node_id][0]
            if has != present:
                out.append(Violation("mailbox-ops", "node %d: mailbox %s is %s, but its last "
                                     "acknowledged CREATE/RENAME/DELETE left it %s"
                                     % (node.node_id, name, "there" if has else "missing",
                                        "there" if present else "gone")))

    out += snapshots_result
    return merge_nodes(out), model


def merge_nodes(violations):
    """One violation per fact: the same finding on several nodes is one
    violation naming them all."""
    import re
    merged, order = {}, []
    for v in violations:
        m = re.match(r"node (\d+)(.*)", v.text, re.S)
        key = (v.invariant, m.group(2) if m else v.text)
        if key in merged:
            if m:
                merged[key][1].append(m.group(1))
            continue
        merged[key] = (v, [m.group(1)] if m else None)
        order.append(key)
    out = []
    for key in order:
        v, nodes = merged[key]
        if nodes and len(nodes) > 1:
            v.text = "nodes %s%s" % (",".join(nodes), key[1])
        out.append(v)
    return out


def history_excerpt(model, v, limit=25):
    """The events that show a violation: those naming its message, or the
    ones it points at, plus the faults active around them."""
    seqs = set(v.events)
    if v.msgid:
        seqs.update(model.by_msgid.get(v.msgid, ()))
    if not seqs:
        return []
    evs = [model.events[s] for s in sorted(seqs)][:limit]
    lo, hi = evs[0]["t0"] - 3, evs[-1]["t1"] + 3
    faults = [e for e in model.events if e.get("actor") == "fault" and lo <= e["t0"] <= hi]
    merged = sorted(evs + faults, key=lambda e: e["t0"])
    return [format_event(e) for e in merged]


def format_event(e):
    if e.get("actor") == "fault":
        return "  %7.2f          fault %s %s %s" % (e["t0"], e["action"], e["kind"], e["where"])
    s = "  %7.2f-%7.2f %-5s node %s: %s -> %s" % (
        e["t0"], e["t1"], e.get("actor"), e.get("node"), e.get("cmd", e.get("kind")),
        e.get("line") or e.get("status"))
    extra = []
    for f in e.get("fetch", ())[:6]:
        extra.append("FETCH uid %d %s%s" % (f["uid"], f.get("flags", ""),
                                             " modseq %d" % f["modseq"] if "modseq" in f else ""))
    for earlier, uids in e.get("vanished", ()):
        extra.append("VANISHED%s %s" % (" (EARLIER)" if earlier else "", uids[:10]))
    if e.get("error"):
        extra.append("error: %s" % e["error"])
    if extra:
        s += "\n                      " + "; ".join(extra)
    return s
