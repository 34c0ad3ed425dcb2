"""Headless Chromium driven through chromedriver's W3C WebDriver HTTP API.

    from harness.webdriver import Browser
    with Browser(log_dir) as b:
        b.get("http://127.0.0.1:8080/")
        b.find("#rcmloginuser").send_keys("alice")
        b.wait_css("#messagelist tbody tr", timeout=20)
        b.screenshot("/tmp/x.png")

Only the handful of endpoints a page-level test needs (session, navigate,
find elements, click, send keys, text, attribute, execute script,
screenshot), spoken with urllib, so that no Python WebDriver client package
is needed.  chromedriver runs as a ManagedProcess on a free loopback port;
every HTTP call has a timeout, every wait a deadline.
"""
import base64
import json
import os
import shutil
import time
import urllib.error
import urllib.request

from harness import proc

ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"  # W3C's element reference key
KEY_ENTER = "\ue007"


class WebDriverError(Exception):
    pass


def find_binaries():
    """(chromedriver, chromium) from $CHROMEDRIVER / $CHROMIUM or PATH."""
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    browser = os.environ.get("CHROMIUM") or shutil.which("chromium")
    return driver, browser


class Element:
    def __init__(self, browser, ref):
        self.b = browser
        self.ref = ref

    def _path(self, tail=""):
        return "/element/%s%s" % (self.ref, tail)

    def click(self):
        self.b._call("POST", self._path("/click"), {})
        return self

    def send_keys(self, text):
        self.b._call("POST", self._path("/value"), {"text": text})
        return self

    def clear(self):
        self.b._call("POST", self._path("/clear"), {})
        return self

    @property
    def text(self):
        return self.b._call("GET", self._path("/text"))

    def attribute(self, name):
        return self.b._call("GET", self._path("/attribute/%s" % name))

    def displayed(self):
        return bool(self.b._call("GET", self._path("/displayed")))

    def find(self, css):
        r = self.b._call("POST", self._path("/element"),
                         {"using": "css selector", "value": css})
        return Element(self.b, r[ELEMENT_KEY])

    def find_all(self, css):
        r = self.b._call("POST", self._path("/elements"),
                         {"using": "css selector", "value": css})
        return [Element(self.b, e[ELEMENT_KEY]) for e in r]


class Browser:
    """One chromedriver process and one headless Chromium session."""

    def __init__(self, log_dir, width=1400, height=1000, start_timeout=30.0,
                 call_timeout=60.0):
        driver, chromium = find_binaries()
        if not driver or not chromium:
            raise RuntimeError("chromedriver/chromium not found (Debian packages "
                               "chromium-driver, chromium)")
        self.call_timeout = call_timeout
        self.port = proc.free_port()
        self.base = "http://%s:%d" % (proc.LOOPBACK, self.port)
        self.process = proc.ManagedProcess(
            [driver, "--port=%d" % self.port, "--allowed-ips=127.0.0.1",
             "--log-path=%s" % os.path.join(log_dir, "chromedriver-verbose.txt")],
            os.path.join(log_dir, "chromedriver.txt"))
        proc.wait_for(lambda: proc.port_open(self.port), start_timeout,
                      what="chromedriver port %d" % self.port)
        profile = proc.mkdtemp("starling-chromium-")
        args = ["--headless=new", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-sync",
                "--disable-dev-shm-usage", "--user-data-dir=%s" % profile,
                "--window-size=%d,%d" % (width, height), "--lang=en-US"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run as root otherwise
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args,
                                   "prefs": {"intl.accept_languages": "en-US"}},
            "timeouts": {"implicit": 0, "pageLoad": 30000, "script": 30000},
        }}}
        r = self._request("POST", "/session", caps, timeout=start_timeout + 30)
        self.session = r["sessionId"]
        proc.at_cleanup(self.close)

    # -- protocol --------------------------------------------------------
    def _request(self, method, path, body=None, timeout=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.call_timeout) as resp:
                payload = json.loads(resp.read().decode() or "{}")
        except urllib.error.HTTPError as e:
            try:
                payload = json.loads(e.read().decode() or "{}")
            except ValueError:
                payload = {}
            v = payload.get("value") or {}
            raise WebDriverError("%s %s: %s: %s" % (method, path, v.get("error", e.code),
                                                   (v.get("message") or "")[:300]))
        return payload.get("value", payload)

    def _call(self, method, path, body=None):
        return self._request(method, "/session/%s%s" % (self.session, path), body)

    # -- commands --------------------------------------------------------
    def get(self, url):
        self._call("POST", "/url", {"url": url})

    @property
    def url(self):
        return self._call("GET", "/url")

    def find(self, css):
        r = self._call("POST", "/element", {"using": "css selector", "value": css})
        return Element(self, r[ELEMENT_KEY])

    def find_all(self, css):
        r = self._call("POST", "/elements", {"using": "css selector", "value": css})
        return [Element(self, e[ELEMENT_KEY]) for e in r]

    def execute(self, script, *args):
        """Run script (a function body; `arguments` holds args) in the page."""
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self, path):
        png = base64.b64decode(self._call("GET", "/screenshot"))
        with open(path, "wb") as f:
            f.write(png)
        return path

    def wait(self, pred, timeout, what="condition", interval=0.2):
        """Poll pred() until it returns something true; WebDriver errors
        while polling count as not yet.  Raises TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                v = pred()
                if v:
                    return v
            except WebDriverError as e:
                last = e
            if time.monotonic() >= deadline:
                raise TimeoutError("%s not reached after %.0fs%s"
                                   % (what, timeout, " (last error: %s)" % last if last else ""))
            time.sleep(interval)

    def wait_css(self, css, timeout, what=None):
        """Wait until css matches at least one displayed element; returns it."""
        def pred():
            for e in self.find_all(css):
                if e.displayed():
                    return e
            return None
        return self.wait(pred, timeout, what or "element %r" % css)

    def close(self):
        if getattr(self, "session", None):
            try:
                self._request("DELETE", "/session/%s" % self.session, timeout=15)
            except Exception:  # noqa: BLE001 -- the process is killed next anyway
                pass
            self.session = None
        if self.process is not None:
            self.process.stop(timeout=10)
            self.process = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
