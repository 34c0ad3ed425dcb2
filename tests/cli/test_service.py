#!/usr/bin/env python3
"""What a service manager and an administrator need from the binaries:
`starlingd --help/--version/-f`, `starling --version`, and `make install`
putting starlingd in $(sbindir) and starling in $(bindir)."""
import os
import shutil
import subprocess
import sys
import tempfile

top_builddir = os.environ.get("top_builddir", os.getcwd())
STARLINGD = os.path.join(top_builddir, "replicator", "starlingd")
STARLING = os.path.join(top_builddir, "cli", "starling")

passed = failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def run(argv, timeout=30):
    p = subprocess.run(argv, capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


rc, out, err = run([STARLINGD, "--help"])
check("starlingd --help exits 0 on stdout", rc == 0 and out.startswith("usage: starlingd") and err == "",
      f"{rc} {out!r} {err!r}")
usage_line = out.splitlines()[0] if out else ""
for opt in ("-c FILE", "-f", "-n"):
    check(f"usage line shows {opt}", opt in usage_line, usage_line)
for opt in ("-c FILE", "-n", "-f", "--help", "--version"):
    check(f"--help documents {opt}", any(l.lstrip().startswith(opt) or f" {opt}" in l
                                         for l in out.splitlines()[2:]), out)
rc, out2, err = run([STARLINGD, "-h"])
check("starlingd -h is --help", rc == 0 and out2 == out, f"{rc} {out2!r}")

rc, out, err = run([STARLINGD, "--version"])
check("starlingd --version exits 0 with one line", rc == 0 and out.startswith("starlingd ")
      and out.count("\n") == 1 and err == "", f"{rc} {out!r} {err!r}")
version = out.split()[1] if rc == 0 and out.split()[1:] else "?"
rc, out, err = run([STARLING, "--version"])
check("starling --version prints the same version", rc == 0 and out == f"starling {version}\n",
      f"{rc} {out!r} {err!r}")

rc, out, err = run([STARLINGD, "--bogus"])
check("an unknown option exits 2 with the usage on stderr", rc == 2 and "usage: starlingd" in err
      and out == "", f"{rc} {err!r}")
rc, out, err = run([STARLINGD])
check("no -c exits 2", rc == 2 and "usage: starlingd" in err, f"{rc} {err!r}")

with tempfile.TemporaryDirectory(prefix="starling-svc-") as tmp:
    conf = os.path.join(tmp, "node.conf")
    with open(conf, "w") as f:
        f.write(f"node_id = 3\ndata_dir = {tmp}/data\nusers_file = {tmp}/users\n"
                "imap_listen = 127.0.0.1:1\n")
    rc, out, err = run([STARLINGD, "-f", "-n", "-c", conf])
    check("-f is accepted (with -n: prints the config, exit 0)",
          rc == 0 and "node_id = 3\n" in out, f"{rc} {out!r} {err!r}")

    # make install into a staging directory, as a package build does.
    dest = os.path.join(tmp, "dest")
    p = subprocess.run(["make", "-s", "-C", top_builddir, "install", f"DESTDIR={dest}"],
                       capture_output=True, timeout=600)
    check("make install DESTDIR=... succeeds", p.returncode == 0, p.stderr.decode(errors="replace")[-2000:])
    sbin, binp = [], []
    for root, dirs, files in os.walk(dest):
        for name in files:
            path = os.path.join(root, name)
            if name == "starlingd":
                sbin.append(path)
            if name == "starling":
                binp.append(path)
    check("starlingd is installed once, in sbin", len(sbin) == 1 and
          os.path.basename(os.path.dirname(sbin[0])) == "sbin", repr(sbin))
    check("starling is installed once, in bin", len(binp) == 1 and
          os.path.basename(os.path.dirname(binp[0])) == "bin", repr(binp))
    if sbin:
        rc, out, err = run([sbin[0], "--version"])
        check("the installed starlingd runs", rc == 0 and out == f"starlingd {version}\n", f"{rc} {out!r}")
    if binp:
        rc, out, err = run([binp[0], "--version"])
        check("the installed starling runs", rc == 0 and out == f"starling {version}\n", f"{rc} {out!r}")

    # contrib/: the unit and the example config are installed with the docs.
    units = [os.path.join(r, f) for r, d, fs in os.walk(dest) for f in fs if f == "starlingd.service"]
    examples = [os.path.join(r, f) for r, d, fs in os.walk(dest) for f in fs
                if f == "starling.conf.example"]
    check("the systemd unit is installed", len(units) == 1, repr(units))
    check("the example config is installed", len(examples) == 1, repr(examples))
    if units and sbin:
        with open(units[0]) as f:
            unit = f.read()
        real_sbin = sbin[0][len(dest):]
        check("the unit starts the installed starlingd", f"ExecStart={real_sbin} -c " in unit, unit)
        check("the unit is Type=simple (starlingd neither forks nor notifies)",
              "\nType=simple\n" in unit, unit)
        check("the unit reloads with SIGHUP", "\nExecReload=/bin/kill -HUP $MAINPID\n" in unit, unit)
        check("systemd-analyze is there (scripts/install-deps installs systemd)",
              shutil.which("systemd-analyze") is not None)
        if shutil.which("systemd-analyze"):
            # verify wants ExecStart's binary to exist: point it at the staged one.
            staged = os.path.join(tmp, "starlingd.service")
            with open(staged, "w") as f:
                f.write(unit.replace(real_sbin, sbin[0]))
            p = subprocess.run(["systemd-analyze", "verify", staged], capture_output=True, timeout=60)
            err = p.stderr.decode(errors="replace")
            check("systemd-analyze verify accepts the unit, no warning", p.returncode == 0 and
                  "starlingd.service" not in err, err)
    if examples:
        with open(examples[0]) as f:
            example = f.read()
        ex = os.path.join(tmp, "example.conf")
        with open(ex, "w") as f:
            f.write(example)
        rc, out, err = run([STARLINGD, "-c", ex, "-n"])
        check("the example config is valid as shipped", rc == 0, f"{rc} {err}")
        # Every commented-out key, switched on, must be valid too and,
        # together, give every key starlingd -n knows.
        full = os.path.join(tmp, "full.conf")
        with open(full, "w") as f:
            for line in example.splitlines():
                if line.startswith("#") and " = " in line and " " not in line[1:].split("=")[0].strip():
                    line = line[1:]
                f.write(line + "\n")
        rc, out, err = run([STARLINGD, "-c", full, "-n"])
        check("the example with every key switched on is valid", rc == 0, f"{rc} {err}")
        printed = {l.split(" = ")[0] for l in out.splitlines() if " = " in l}
        with open(full) as f:
            given = {l.split("=")[0].strip() for l in f if "=" in l and not l.startswith("#")}
        check("the example names every key starlingd -n prints", printed <= given and len(printed) > 10,
              repr(printed - given))
        top_srcdir = os.environ.get("top_srcdir", os.path.join(os.path.dirname(__file__), "..", ".."))
        with open(os.path.join(top_srcdir, "README.md")) as f:
            readme = f.read()
        table = set()
        for l in readme.split("## Configuring a node", 1)[1].split("\n## ", 1)[0].splitlines():
            if l.startswith("| `"):
                for k in l.split("|")[1].split(","):
                    table.add(k.strip().strip("`"))
        check("the example names every key of README's table", table and table <= given,
              repr(table - given))

print(f"test_service: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
