#!/usr/bin/env python3
"""Roundcube webmail against a 3-node Starling cluster (issue 15).

Debian's Roundcube 1.6 (SQLite, a private config dir, PHP's built-in web
server on 127.0.0.1; tests/harness/roundcube.py) talks IMAP to node 1;
headless Chromium, driven through chromedriver's WebDriver API
(tests/harness/webdriver.py), uses it as a person would:

  - log in; INBOX lists the 8 messages put there beforehand (7 by
    `starling deliver` on node 1, one by APPEND on node 3), RFC 2047
    subjects and names decoded;
  - sort by date (descending), subject and sender (ascending) and check
    the order Roundcube shows.  Checks marked [SORT] get the right order
    only from the server's SORT (RFC 5256 base subject, first From
    address): without SORT, Roundcube sorts raw header bytes itself, and
    "=?UTF-8?..." sorts first, "Re: Lunch" under R.  The date order comes
    out right either way (Roundcube parses Date itself without SORT);
  - thread view: checked only when CAPABILITY has THREAD=REFS or
    THREAD=REFERENCES (Roundcube asks for those); otherwise the output says
    "NOT CHECKED" and nothing is counted;
  - open the multipart message: its text and its attachment (name, and the
    downloaded content) are shown; flag it; move another message to Trash;
    create a folder; search (subject words, an RFC 2047-encoded word);
  - on node 2 over IMAP: the flag, the move (gone from INBOX, in Trash)
    and the folder are there, replicated;
  - Roundcube's IMAP debug log has no BAD or NO answer, its error log no
    IMAP error.

Screenshots of every step, Roundcube's logs and the nodes' logs are kept in
ARTIFACTS (default $top_builddir/tests/webmail/roundcube-artifacts), whose
path is printed at the end.  Every wait is bounded (STEP seconds for a page
to react, CONVERGE for replication).  The last line is
"test-roundcube: N passed, M failed".
"""
import email.utils
import imaplib
import os
import re
import shutil
import sys
import tempfile
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import proc  # noqa: E402
from harness.imapwire import Client, Literal, quote  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.roundcube import Roundcube, available  # noqa: E402
from harness.starling import Cluster  # noqa: E402
from harness.webdriver import KEY_ENTER, Browser  # noqa: E402

R = Report("test-roundcube")
USER = "webmail@example.com"
PASSWORD = "secret"
STEP = 30.0       # a page's reaction to one action, under sanitizers
CONVERGE = 20.0   # a change made on node 1 showing on node 2
NEW_FOLDER = "Project Notes"
ATTACHMENT_NAME = "invoice-2026.txt"
ATTACHMENT_TEXT = "Invoice 2026-117\nTotal: 42.00 EUR\n" * 3

# (key, From, Subject header, Date header, base subject, sort key of the
# first From address, extra headers).  Dates in several zones, so that an
# order by local time or by arrival differs from the order by UTC.
MESSAGES = [
    ("quarterly", "Bob Brown <bob@example.com>", "Quarterly report",
     "Tue, 1 Dec 2026 10:00:00 +0000", ""),
    ("lunch", "Zed Zulu <zed@example.com>", "Lunch",
     "Thu, 3 Dec 2026 09:00:00 +0900", ""),
    ("cafe", "=?UTF-8?Q?C=C3=A9line_Cruz?= <celine@example.com>",
     "=?UTF-8?Q?Caf=C3=A9_plans?=", "Wed, 2 Dec 2026 23:30:00 -0500", ""),
    ("relunch", "Anna Adams <anna@example.com>", "Re: Lunch",
     "Thu, 3 Dec 2026 08:00:00 +0000",
     "In-Reply-To: <lunch@test.example.com>\r\n"
     "References: <lunch@test.example.com>\r\n"),
    ("invoice", "dave@example.com", "Invoice with attachment",
     "Fri, 4 Dec 2026 12:00:00 +0000", None),  # None: multipart, below
    ("budget", "Eve Evans <eve@example.com>", "Budget 2027",
     "Mon, 30 Nov 2026 15:00:00 +0000", ""),  # APPENDed on node 3
    ("zebra", "Fay Fox <fay@example.com>", "Zebra notes",
     "Sat, 5 Dec 2026 07:00:00 +0100", ""),
    ("rerelunch", "Gus Green <gus@example.com>", "Re: Re: Lunch",
     "Thu, 3 Dec 2026 09:00:00 +0000",
     "In-Reply-To: <relunch@test.example.com>\r\n"
     "References: <lunch@test.example.com> <relunch@test.example.com>\r\n"),
]
DECODED_SUBJECT = {"cafe": "Café plans"}
BASE_SUBJECT = {"quarterly": "quarterly report", "lunch": "lunch", "cafe": "café plans",
                "relunch": "lunch", "invoice": "invoice with attachment",
                "budget": "budget 2027", "zebra": "zebra notes", "rerelunch": "lunch"}
FROM_KEY = {"quarterly": "bob", "lunch": "zed", "cafe": "celine", "relunch": "anna",
            "invoice": "dave", "budget": "eve", "zebra": "fay", "rerelunch": "gus"}


def msgid(key):
    return "<%s@test.example.com>" % key


def subject_shown(key):
    for k, _f, subj, _d, _x in MESSAGES:
        if k == key:
            return DECODED_SUBJECT.get(k, subj)
    raise KeyError(key)


def build_message(key, frm, subject, date, extra):
    head = ("From: %s\r\nTo: Webmail User <%s>\r\nSubject: %s\r\nDate: %s\r\n"
            "Message-ID: %s\r\nMIME-Version: 1.0\r\n" % (frm, USER, subject, date, msgid(key)))
    if extra is not None:
        return (head + extra + "Content-Type: text/plain; charset=utf-8\r\n\r\n"
                "This is the message %s.\r\n" % key).encode()
    import base64
    att = base64.encodebytes(ATTACHMENT_TEXT.encode()).decode().replace("\n", "\r\n")
    return (head +
            "Content-Type: multipart/mixed; boundary=\"=-b0undary-=\"\r\n\r\n"
            "This is a multi-part message in MIME format.\r\n"
            "--=-b0undary-=\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "Please find the invoice attached.\r\n"
            "--=-b0undary-=\r\nContent-Type: text/plain; name=\"%s\"\r\n"
            "Content-Disposition: attachment; filename=\"%s\"\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n%s"
            "--=-b0undary-=--\r\n" % (ATTACHMENT_NAME, ATTACHMENT_NAME, att)).encode()


def utc_ts(date):
    return email.utils.mktime_tz(email.utils.parsedate_tz(date))


# ------------------------------------------------------------------- IMAP
def imap_login(node):
    m = imaplib.IMAP4(node.host, node.imap_port, timeout=20)
    m.login(USER, PASSWORD)
    return m


def uids_by_msgid(node, mailbox="INBOX"):
    """{Message-ID: (uid, flags text)} of mailbox on node."""
    m = imap_login(node)
    try:
        typ, _ = m.select(quote(mailbox), readonly=True)
        if typ != "OK":
            return None
        typ, data = m.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        out = {}
        for item in data or []:
            if not isinstance(item, tuple):
                continue
            meta, hdr = item[0].decode(), item[1].decode("utf-8", "replace")
            uid = int(re.search(r"UID (\d+)", meta).group(1))
            flags = re.search(r"FLAGS \(([^)]*)\)", meta)
            mid = re.search(r"<[^>]+>", hdr)
            if mid:
                out[mid.group(0)] = (uid, flags.group(1) if flags else "")
        return out
    finally:
        m.logout()


def capabilities(node):
    c = Client(node.host, node.imap_port)
    try:
        c.login(USER, PASSWORD)
        r = c.command("CAPABILITY")
        caps = set()
        for u in r.untagged:
            if u.upper().startswith(b"* CAPABILITY "):
                caps |= set(u[len(b"* CAPABILITY "):].decode().upper().split())
        return caps
    finally:
        c.logout()


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError("%s: not after %.0fs" % (what, timeout))
        time.sleep(0.2)


# ------------------------------------------------------------------ pages
class Web:
    """The Roundcube page in the browser, with the few reads the steps need."""

    def __init__(self, browser, rc, shots):
        self.b = browser
        self.rc = rc
        self.shots = shots
        self.n = 0

    def shot(self, name):
        self.n += 1
        path = os.path.join(self.shots, "%02d-%s.png" % (self.n, name))
        try:
            self.b.screenshot(path)
        except Exception as e:  # noqa: BLE001 -- a missing screenshot is no test failure
            print("   (screenshot %s failed: %s)" % (name, e))

    def idle(self):
        """Roundcube's page loaded and no request of it running."""
        return self.b.execute(
            "return !!(window.rcmail && rcmail.env && rcmail.env.task && !rcmail.busy"
            " && document.readyState === 'complete')")

    def rows(self):
        """[(uid, subject shown, sender shown, classes)] in the order listed
        (rows Roundcube removed are hidden until the list is redrawn)."""
        return self.b.execute("""
            var out = [];
            document.querySelectorAll('#messagelist tbody tr').forEach(function (tr) {
                if (tr.style.display === 'none') return;
                var a = tr.querySelector('span.subject a');
                var m = a ? /[?&]_uid=(\\d+)/.exec(a.getAttribute('href')) : null;
                var s = tr.querySelector('span.subject a span');
                var f = tr.querySelector('.fromto .adr span, span.fromto');
                out.push([m ? parseInt(m[1], 10) : null, s ? s.textContent : null,
                          f ? f.textContent : null,
                          tr.className]);
            });
            return out;""")

    def list_state(self):
        return self.b.execute(
            "return [rcmail.env.sort_col, rcmail.env.sort_order, rcmail.env.threading ? 1 : 0,"
            " rcmail.env.mailbox, rcmail.env.messagecount]")

    def set_list(self, col, order, threads, count):
        """What the list options dialog's Save does (elastic hides column
        headers in its default layout): reload the list in that order.
        Returns once the list is redrawn: the rows shown before are marked,
        and Roundcube replaces every row when it reloads the list."""
        self.b.execute("document.querySelectorAll('#messagelist tbody tr').forEach("
                       "function (tr) { tr.setAttribute('data-stale', '1'); });"
                       "rcmail.set_list_options(null, arguments[0], arguments[1], arguments[2]);",
                       col, order, threads)
        self.b.wait(lambda: self.idle() and self.list_state()[:3] == [col, order, threads]
                    and len(self.rows()) == count
                    and not self.b.find_all("#messagelist tbody tr[data-stale]"),
                    STEP, "list sorted by %s %s threads=%d" % (col, order, threads))

    def preview(self, uid):
        """[body text, [(attachment name, url)]] of the message shown in
        the preview frame, once message uid is loaded there and the page
        is idle; else None."""
        return self.b.execute("""
            var f = document.getElementById('messagecontframe');
            var d = f && f.contentDocument;
            if (!d || d.readyState !== 'complete' || !d.location.href.match(/_uid=%d\\b/)
                || rcmail.busy) return null;
            var body = d.querySelector('#messagebody');
            var atts = Array.from(d.querySelectorAll('#attachment-list li a.filename, '
                + '#attachment-list li a')).map(function (a) { return [a.textContent, a.href]; });
            return body ? [body.textContent, atts] : null;""" % uid)

    def select(self, uid):
        """Click message uid's row; wait until it is shown in the preview.
        A message already selected and shown is not clicked again: a second
        click on its row within Roundcube's double-click time opens it in
        the full view instead (a race that depended on how fast the step
        before ran)."""
        sel = self.b.execute("return rcmail.message_list ?"
                             " rcmail.message_list.get_single_selection() : null")
        if sel is not None and str(sel) == str(uid):
            shown = self.preview(uid)
            if shown:
                return shown
        self.row_element(uid).find("td.subject").click()
        return self.b.wait(lambda: self.preview(uid), STEP, "message %d in the preview" % uid)

    def settled(self):
        """Idle, and a selected message is loaded in the preview: Roundcube
        ignores commands while it is busy, and selecting the next message
        after a move makes it busy again right after the move's answer."""
        if not self.idle():
            return False
        sel = self.b.execute("return rcmail.message_list ?"
                             " rcmail.message_list.get_single_selection() : null")
        return not sel or bool(self.preview(int(sel)))

    def settle(self, what):
        """Wait until settled() holds on two polls 0.3 s apart."""
        def twice():
            if not self.settled():
                return False
            time.sleep(0.3)
            return self.settled()
        self.b.wait(twice, STEP, "page settled (%s)" % what)

    def toolbar(self, css):
        """Click the displayed, enabled toolbar button matching css, once
        the page has settled."""
        self.settle("before clicking %r" % css)
        def enabled():
            for e in self.b.find_all(css):
                if e.displayed() and "disabled" not in (e.attribute("class") or "").split():
                    return e
            return None
        self.b.wait(enabled, STEP, "enabled button %r" % css).click()

    def row_element(self, uid):
        for tr in self.b.find_all("#messagelist tbody tr"):
            a = tr.find_all("span.subject a")
            if a and re.search(r"[?&]_uid=%d(&|$)" % uid, a[0].attribute("href") or ""):
                return tr
        return None


# ------------------------------------------------------------------ steps
def step_login(web, url):
    b = web.b
    b.get(url)
    b.wait_css("#rcmloginuser", STEP)
    web.shot("login-page")
    b.find("#rcmloginuser").send_keys(USER)
    b.find("#rcmloginpwd").send_keys(PASSWORD)
    b.find("#rcmloginsubmit").click()
    b.wait(lambda: b.find_all("#messagelist") and web.idle(), STEP, "mail view after login")
    web.shot("logged-in")
    R.check("login leads to the mail view", "_task=mail" in b.url or
            b.execute("return rcmail.env.task") == "mail", b.url)


def step_list(web, uids):
    b = web.b
    b.wait(lambda: len(web.rows()) == len(MESSAGES), STEP, "%d rows" % len(MESSAGES))
    rows = web.rows()
    web.shot("inbox")
    R.equal("INBOX lists every message once (by UID)",
            sorted(r[0] for r in rows), sorted(uids.values()))
    shown = {r[0]: r[1] for r in rows}
    R.equal("RFC 2047 subject decoded", shown.get(uids["cafe"]), "Café plans")
    sender = {r[0]: r[2] for r in rows}
    R.equal("RFC 2047 sender name decoded", sender.get(uids["cafe"]), "Céline Cruz")
    R.equal("the other subjects as sent",
            {k: shown.get(uids[k]) for k in uids if k != "cafe"},
            {k: subject_shown(k) for k in uids if k != "cafe"})
    count = b.find("#rcmcountdisplay").text
    R.check("count display says %d" % len(MESSAGES), ("of %d" % len(MESSAGES)) in count, count)


def step_sort(web, uids, has_sort):
    by_uid = {v: k for k, v in uids.items()}
    seq = sorted(uids.values())  # sequence order is UID order in a fresh mailbox
    dates = {k: utc_ts(d) for k, _f, _s, d, _x in MESSAGES}
    # RFC 5256: equal keys keep sequence order; the date order is descending,
    # which Roundcube gets by reversing the ascending SORT result.
    asc_date = sorted(uids, key=lambda k: (dates[k], seq.index(uids[k])))
    want = {
        ("date", "DESC"): list(reversed(asc_date)),
        ("subject", "ASC"): sorted(uids, key=lambda k: (BASE_SUBJECT[k], seq.index(uids[k]))),
        ("from", "ASC"): sorted(uids, key=lambda k: (FROM_KEY[k], seq.index(uids[k]))),
    }
    mark = {"date": "", "subject": " [SORT]", "from": " [SORT]"}
    for (col, order), expect in want.items():
        web.set_list(col, order, 0, len(MESSAGES))
        got = [by_uid.get(r[0], r[0]) for r in web.rows()]
        web.shot("sorted-%s-%s" % (col, order.lower()))
        R.equal("sorted by %s %s%s" % (col, order, mark[col]), got, expect)
    print("   SORT %s: the [SORT] checks %s" % (
        "advertised" if has_sort else "NOT advertised",
        "test the server's SORT" if has_sort else
        "fail by design until it is (Roundcube then sorts raw header bytes)"))


def step_threads(web, uids, caps):
    thread_caps = {"THREAD=REFS", "THREAD=REFERENCES"} & caps
    if not thread_caps:
        print("   thread view: NOT CHECKED -- CAPABILITY has neither THREAD=REFS nor "
              "THREAD=REFERENCES (not counted as passed)")
        return
    print("   thread view: checked (%s advertised)" % ", ".join(sorted(thread_caps)))
    web.set_list("date", "DESC", 1, len(MESSAGES))
    parents = web.b.execute("""
        var out = {}, rows = rcmail.message_list.rows;
        for (var uid in rows) out[uid] = [rows[uid].parent_uid || 0, rows[uid].depth || 0];
        return out;""")
    web.shot("threads")
    got = {k: (int(parents[str(uids[k])][0]), int(parents[str(uids[k])][1])) for k in uids}
    want = {k: (0, 0) for k in uids}
    want["relunch"] = (uids["lunch"], 1)
    want["rerelunch"] = (uids["relunch"], 2)
    R.equal("threads: (parent UID, depth) of every message", got, want)
    roots = [r for r in web.rows() if (parents.get(str(r[0])) or [0])[0] in (0, None)]
    R.equal("threads: 6 threads for 8 messages", len(roots), 6)
    count = web.b.find("#rcmcountdisplay").text
    R.check("threads: count display says 6 threads", "of 6" in count, count)
    web.set_list("date", "DESC", 0, len(MESSAGES))


def step_open_multipart(web, uids):
    b = web.b
    uid = uids["invoice"]
    if not R.check("the multipart message is listed", web.row_element(uid) is not None):
        return
    body, atts = web.select(uid)
    web.shot("multipart-open")
    R.check("multipart: text part shown", "Please find the invoice attached." in body, body[:300])
    names = [a[0] for a in atts]
    R.check("multipart: attachment listed by name",
            any(ATTACHMENT_NAME in n for n in names), names)
    hrefs = [a[1] for a in atts if ATTACHMENT_NAME in a[0]]
    if hrefs:
        url = re.sub(r"(&_download=1)?$", "", hrefs[0])
        url += ("&" if "?" in url else "?") + "_download=1"
        content = b.execute("""
            var x = new XMLHttpRequest(); x.open('GET', arguments[0], false); x.send();
            return [x.status, x.responseText];""", url)
        R.equal("multipart: attachment downloads with its content",
                (content[0], content[1].replace("\r\n", "\n")), (200, ATTACHMENT_TEXT))


def step_flag(web, uids):
    b = web.b
    uid = uids["invoice"]
    web.select(uid)
    web.toolbar("#markmessagemenulink")
    web.toolbar("#markmessage-menu a.flag")
    b.wait(lambda: "flagged" in (web.row_element(uid).attribute("class") or "").split()
           and web.idle(), STEP, "row marked flagged")
    web.shot("flagged")
    R.check("flag: the row shows flagged",
            "flagged" in web.row_element(uid).attribute("class").split())


def step_move_to_trash(web, uids):
    b = web.b
    uid = uids["quarterly"]
    web.select(uid)
    web.toolbar("a.button.delete, a.delete")
    b.wait(lambda: web.idle() and uid not in [r[0] for r in web.rows()], STEP,
           "message gone from the list")
    web.shot("moved-to-trash")
    R.equal("move: INBOX lists one message less", len(web.rows()), len(MESSAGES) - 1)
    web.toolbar("#mailboxlist li.trash > a")
    b.wait(lambda: web.idle() and b.execute("return rcmail.env.mailbox") == "Trash"
           and [r[1] for r in web.rows()] == ["Quarterly report"], STEP,
           "Trash to list the moved message")
    web.shot("trash")
    R.equal("move: Trash lists the moved message", [r[1] for r in web.rows()],
            ["Quarterly report"])
    web.toolbar("#mailboxlist li.inbox > a")
    b.wait(lambda: web.idle() and b.execute("return rcmail.env.mailbox") == "INBOX"
           and len(web.rows()) == len(MESSAGES) - 1, STEP, "back in INBOX")


def step_create_folder(web, url):
    b = web.b
    b.get(url + "?_task=settings&_action=folders")
    b.wait(lambda: web.idle() and b.find_all("#subscription-table"), STEP, "folder settings")
    web.shot("folders")
    b.execute("rcmail.command('create-folder');")

    def form():
        return b.execute("""
            var f = document.getElementById('preferences-frame');
            var d = f && f.contentDocument;
            return !!(d && d.readyState === 'complete' && d.querySelector('input[name=_name]'));""")
    b.wait(form, STEP, "new folder form")
    b.execute("""
        var d = document.getElementById('preferences-frame').contentDocument;
        d.querySelector('input[name=_name]').value = arguments[0];""", NEW_FOLDER)
    web.shot("folder-form")
    # The elastic skin's Save button (in the page or in the frame) runs this.
    b.execute("document.getElementById('preferences-frame').contentWindow"
              ".rcmail.command('save');")

    def listed():
        return b.execute("""
            return Array.from(document.querySelectorAll('#subscription-table li'))
                .some(function (li) { return li.textContent.indexOf(arguments[0]) >= 0; });
            """.replace("arguments[0]", "'%s'" % NEW_FOLDER))
    try:
        b.wait(listed, STEP, "folder %r listed" % NEW_FOLDER)
    except TimeoutError:
        pass
    web.shot("folder-created")
    R.check("folder: created and listed in settings", listed())
    b.get(url + "?_task=mail&_mbox=INBOX")
    b.wait(lambda: web.idle() and b.find_all("#messagelist"), STEP, "mail view")
    names = b.execute("return Array.from(document.querySelectorAll('#mailboxlist li a'))"
                      ".map(function (a) { return a.textContent; });")
    R.check("folder: in the mail view's folder list",
            any(NEW_FOLDER in (n or "") for n in names), names)


def step_search(web, uids):
    b = web.b
    by_uid = {v: k for k, v in uids.items()}
    for words, want in (("Zebra", ["zebra"]), ("Lunch", ["lunch", "relunch", "rerelunch"]),
                        ("Café", ["cafe"])):
        box = b.wait_css("#mailsearchform", STEP)
        box.clear()
        box.send_keys(words + KEY_ENTER)
        b.wait(lambda: web.idle() and b.execute("return rcmail.env.search_request ? 1 : 0")
               and sorted(by_uid.get(r[0]) for r in web.rows()) == sorted(want), STEP,
               "search %r to list %s (last: %s)" % (words, want,
                                                   [by_uid.get(r[0]) for r in web.rows()]))
        web.shot("search-%s" % re.sub(r"\W", "_", words.lower()))
        R.equal("search %r lists" % words,
                sorted(by_uid.get(r[0]) for r in web.rows()), sorted(want))
    b.execute("rcmail.command('reset-search');")
    b.wait(lambda: web.idle() and len(web.rows()) == len(MESSAGES) - 1, STEP, "search reset")


def step_replicated(node, uids):
    def state():
        inbox = uids_by_msgid(node, "INBOX") or {}
        trash = uids_by_msgid(node, "Trash") or {}
        m = imap_login(node)
        try:
            typ, data = m.list()
            folders = b" ".join(d for d in data if isinstance(d, bytes)).decode("utf-8", "replace")
        finally:
            m.logout()
        return inbox, trash, folders

    def ok():
        inbox, trash, folders = state()
        flagged = "\\Flagged" in inbox.get(msgid("invoice"), (0, ""))[1]
        return (flagged and msgid("quarterly") not in inbox and msgid("quarterly") in trash
                and NEW_FOLDER in folders)
    try:
        wait_until(ok, CONVERGE, "node %d to show the changes" % node.node_id)
    except TimeoutError:
        pass
    inbox, trash, folders = state()
    where = "node %d over IMAP" % node.node_id
    R.check("%s: the multipart message is \\Flagged" % where,
            "\\Flagged" in inbox.get(msgid("invoice"), (0, ""))[1], inbox.get(msgid("invoice")))
    R.check("%s: the moved message is gone from INBOX" % where, msgid("quarterly") not in inbox)
    R.check("%s: the moved message is in Trash" % where, msgid("quarterly") in trash, trash)
    R.check("%s: folder %r exists" % (where, NEW_FOLDER), NEW_FOLDER in folders, folders)
    R.equal("%s: INBOX holds the other messages" % where, len(inbox), len(MESSAGES) - 1)


def step_logs(rc):
    log = rc.imap_log()
    R.check("Roundcube's IMAP debug log is there", "C: " in log and "S: " in log, log[-300:])
    bad = [ln for ln in log.splitlines()
           if re.search(r"\] S: (\S+) (BAD|NO)\b", ln)]
    R.check("no BAD or NO in Roundcube's IMAP log", not bad, "\n".join(bad[:10]))
    errs = [ln for ln in rc.errors_log().splitlines() if ln.strip()]
    imap_errs = [ln for ln in errs if re.search(r"IMAP|imap", ln)]
    R.check("no IMAP error in Roundcube's error log", not imap_errs, "\n".join(imap_errs[:10]))
    if errs:
        print("   Roundcube/PHP error log (%d lines), first: %s" % (len(errs), errs[:5]))


# ------------------------------------------------------------------- main
def main():
    why = available()
    if why:
        R.check("Roundcube available", False, why)
        return R.summary()
    build = os.environ.get("top_builddir", "")
    artifacts = os.environ.get("ARTIFACTS") or os.path.join(
        build or tempfile.mkdtemp(prefix="starling-webmail-"), "tests", "webmail",
        "roundcube-artifacts")
    shutil.rmtree(artifacts, ignore_errors=True)
    shots = os.path.join(artifacts, "screenshots")
    os.makedirs(shots)
    t0 = time.monotonic()
    cluster = Cluster(n=3, users={USER: PASSWORD})
    cluster.start_all()
    cluster.wait_links_up(timeout=60)
    n1, n2, n3 = cluster.nodes
    rc = browser = None
    try:
        uids = {}

        def seed():
            for key, frm, subj, date, extra in MESSAGES:
                data = build_message(key, frm, subj, date, extra)
                if key == "budget":
                    c = Client(n3.host, n3.imap_port)
                    c.login(USER, PASSWORD)
                    r = c.command("APPEND", "INBOX", Literal(data, plus=True))
                    c.logout()
                    if not r.ok:
                        raise RuntimeError("APPEND on node 3: %r" % r)
                else:
                    n1.deliver(USER, data)
                # Wait for node 1 to hold it, so UIDs follow this order.
                have = wait_until(lambda: (lambda d: d if msgid(key) in d else None)(
                    uids_by_msgid(n1) or {}), CONVERGE, "%s on node 1" % key)
                uids[key] = have[msgid(key)][0]
            R.check("8 messages on node 1 (7 delivered, 1 APPENDed on node 3)",
                    len(uids) == len(MESSAGES) and len(set(uids.values())) == len(MESSAGES), uids)
        R.section("seed", seed)
        caps = capabilities(n1)
        has_sort = "SORT" in caps
        print("   node 1 CAPABILITY: %s" % " ".join(sorted(caps)))

        started = {}

        def start():
            started["rc"] = Roundcube(os.path.join(artifacts, "roundcube"),
                                      n1.host, n1.imap_port).start()
            started["browser"] = Browser(artifacts)
        R.section("start Roundcube and Chromium", start)
        rc, browser = started.get("rc"), started.get("browser")
        web = Web(browser, rc, shots)
        steps = [] if browser is None else [
            ("login", step_login, (web, rc.url)),
            ("list INBOX", step_list, (web, uids)),
            ("sort", step_sort, (web, uids, has_sort)),
            ("thread view", step_threads, (web, uids, caps)),
            ("open multipart", step_open_multipart, (web, uids)),
            ("flag", step_flag, (web, uids)),
            ("move to Trash", step_move_to_trash, (web, uids)),
            ("create folder", step_create_folder, (web, rc.url)),
            ("search", step_search, (web, uids)),
            ("replicated to node 2", step_replicated, (n2, uids)),
            ("Roundcube logs", step_logs, (rc,)),
        ]
        for name, func, args in steps:
            before = R.failed
            R.section(name, func, *args)
            if R.failed > before:
                web.shot("failed-%s" % re.sub(r"\W", "_", name))
    finally:
        if browser is not None:
            browser.close()
        if rc is not None:
            rc.stop()
        cluster.close()
        for node in cluster.nodes:
            report = node.sanitizer_report()
            R.check("node %d: no sanitizer report" % node.node_id, report is None, report)
            shutil.copy(node.log, os.path.join(artifacts, "starlingd-node%d.txt" % node.node_id))
    print("measured: webmail test took %.1fs" % (time.monotonic() - t0))
    print("artifacts (screenshots, Roundcube and node logs): %s" % artifacts)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
