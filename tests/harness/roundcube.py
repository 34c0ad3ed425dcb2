"""Debian's Roundcube served by PHP's built-in web server on loopback.

    rc = Roundcube(directory, imap_port)   # writes a private config
    rc.start()                             # php -S 127.0.0.1:PORT
    ... http://127.0.0.1:rc.port/ ...
    rc.imap_log()                          # Roundcube's IMAP debug log

Nothing system-wide is configured or started: Roundcube reads its config
from $ROUNDCUBE_CONFIG_DIR (Debian's iniset.php honours it), which is a
directory of our own holding config.inc.php, a SQLite database file, the
logs (imap_debug on) and temp files.  Debian's package layout is used as
installed: /var/lib/roundcube/public_html is the document root, and
Debian's defaults.inc.php and mimetypes.php are linked in.
"""
import os
import shutil

from harness import proc

DEBIAN_ROOT = "/var/lib/roundcube"
DEBIAN_CONFIG = "/etc/roundcube"


def available():
    """None if Roundcube and php can run here, else why not."""
    if not shutil.which("php"):
        return "php not found (Debian package php-cli)"
    for f in (os.path.join(DEBIAN_ROOT, "public_html", "index.php"),
              os.path.join(DEBIAN_CONFIG, "defaults.inc.php")):
        if not os.path.exists(f):
            return "%s missing (Debian package roundcube)" % f
    return None


def _php_str(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Roundcube:
    def __init__(self, directory, imap_host, imap_port, trash="Trash"):
        self.dir = directory
        self.conf_dir = os.path.join(directory, "config")
        self.log_dir = os.path.join(directory, "logs")
        self.temp_dir = os.path.join(directory, "temp")
        for d in (self.conf_dir, self.log_dir, self.temp_dir):
            os.makedirs(d, exist_ok=True)
        self.port = proc.free_port()
        self.url = "http://%s:%d/" % (proc.LOOPBACK, self.port)
        self.process = None
        for name in ("defaults.inc.php", "mimetypes.php"):
            dst = os.path.join(self.conf_dir, name)
            if not os.path.exists(dst):
                os.symlink(os.path.join(DEBIAN_CONFIG, name), dst)
        settings = {
            "db_dsnw": "sqlite:///%s?mode=0600" % os.path.join(directory, "roundcube.db"),
            "imap_host": "%s:%d" % (imap_host, imap_port),
            "smtp_host": "",
            "log_driver": "file",
            "log_dir": self.log_dir + "/",
            # .txt, not .log: scripts/test counts every *.log under the
            # build's tests/ as a test's output.
            "log_file_ext": ".txt",
            "temp_dir": self.temp_dir + "/",
            "imap_debug": True,
            "sql_debug": False,
            "des_key": os.urandom(12).hex(),  # 24 characters, as Roundcube wants
            "plugins": [],
            "skin": "elastic",
            "language": "en_US",
            "enable_installer": False,
            "enable_spellcheck": False,
            "support_url": "",
            "product_name": "Starling webmail test",
            "create_default_folders": True,
            "trash_mbox": trash,
            "drafts_mbox": "Drafts",
            "sent_mbox": "Sent",
            "junk_mbox": "Junk",
            "imap_cache": None,
            "messages_cache": False,
            "mail_pagesize": 50,
            "login_rate_limit": 0,
            "session_lifetime": 60,
            "check_all_folders": False,
            "refresh_interval": 0,
            "date_format": "Y-m-d",
            "date_long": "Y-m-d H:i",
            "pretty_date": False,
            "prefer_html": False,
            "autoexpand_threads": 2,
        }
        lines = ["<?php", "// written by tests/harness/roundcube.py", "$config = [];"]
        for k, v in settings.items():
            lines.append("$config[%s] = %s;" % (_php_str(k), _php_value(v)))
        with open(os.path.join(self.conf_dir, "config.inc.php"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, timeout=30.0):
        env = dict(os.environ)
        env["ROUNDCUBE_CONFIG_DIR"] = self.conf_dir
        # A few PHP workers, so the page's parallel requests (list, folder
        # counts, keep-alive) do not queue behind each other.
        env["PHP_CLI_SERVER_WORKERS"] = "4"
        docroot = os.path.join(DEBIAN_ROOT, "public_html")
        self.process = proc.ManagedProcess(
            ["php", "-d", "variables_order=EGPCS", "-d", "display_errors=stderr",
             "-d", "error_log=%s" % os.path.join(self.log_dir, "php-errors.txt"),
             "-S", "%s:%d" % (proc.LOOPBACK, self.port), "-t", docroot],
            os.path.join(self.log_dir, "php-server.txt"), env=env, cwd=docroot)
        proc.wait_for(lambda: proc.port_open(self.port) or not self.process.alive(),
                      timeout, what="php -S on port %d" % self.port)
        if not self.process.alive():
            raise RuntimeError("php -S exited:\n%s" % self.process.log_text()[-2000:])
        proc.at_cleanup(self.stop)
        return self

    def stop(self):
        if self.process is not None:
            self.process.stop(timeout=10)
            self.process = None

    def _read(self, name):
        try:
            with open(os.path.join(self.log_dir, name), "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def imap_log(self):
        return self._read("imap.txt")

    def errors_log(self):
        """Roundcube's own errors log plus PHP's."""
        return self._read("errors.txt") + self._read("php-errors.txt")


def _php_value(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_php_value(x) for x in v) + "]"
    return _php_str(str(v))
