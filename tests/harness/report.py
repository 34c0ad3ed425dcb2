"""Pass/fail counting for script tests.

Each check is one pass or one fail; a failing check prints why and the test
goes on, so the final "NAME: N passed, M failed" line (read by scripts/test
and CI) tells how much works.  An exception inside a section counts as one
failure of that section and the script continues with the next one.
"""
import sys
import time
import traceback


class Report:
    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = 0
        self.failures = []
        self.section_name = None

    def check(self, what, cond, detail=None):
        """Record one check; returns cond so callers can branch on it."""
        label = what if self.section_name is None else "%s: %s" % (self.section_name, what)
        if cond:
            self.passed += 1
            print("ok   %s" % label, flush=True)
        else:
            self.failed += 1
            msg = label if detail is None else "%s -- %s" % (label, _short(detail))
            self.failures.append(msg)
            print("FAIL %s" % msg, flush=True)
        return bool(cond)

    def equal(self, what, got, want):
        return self.check(what, got == want, "got %r, want %r" % (got, want))

    def section(self, name, func, *args, **kwargs):
        """Run func(*args); an exception is one failure, then go on."""
        self.section_name = name
        print("== %s" % name, flush=True)
        t0 = time.monotonic()
        try:
            func(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 -- any error is a failed section
            tb = traceback.format_exc()
            sys.stdout.write(tb)
            self.check("section ran without an exception", False,
                       "%s: %s" % (type(e).__name__, e))
        finally:
            print("   (%.2fs)" % (time.monotonic() - t0), flush=True)
            self.section_name = None

    def summary(self):
        """Print the failures and the summary line; return the exit code."""
        if self.failures:
            print("\nfailed checks:")
            for f in self.failures:
                print("  - %s" % f)
        print("%s: %d passed, %d failed" % (self.name, self.passed, self.failed), flush=True)
        return 0 if self.failed == 0 and self.passed > 0 else 1


def _short(x, limit=600):
    s = x if isinstance(x, str) else repr(x)
    return s if len(s) <= limit else s[:limit] + "...(%d chars)" % len(s)
