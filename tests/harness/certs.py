"""A private CA and certificates signed by it, made at test time with the
openssl command, for TLS between peers (mutual TLS against tls_ca).

    ca = TestCA(directory)
    cert, key = ca.issue("node1", san="DNS:starling-node-1")
    ca.cert   # the CA certificate, for tls_ca
"""
import os

from harness import proc

CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


class TestCA:
    def __init__(self, directory, name="Starling test CA"):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.cert = os.path.join(directory, "ca.pem")
        self.key = os.path.join(directory, "ca.key")
        proc.run(["openssl", "req", "-x509"] + CURVE +
                 ["-keyout", self.key, "-out", self.cert, "-days", "2",
                  "-subj", "/CN=" + name], timeout=60, check=True)
        os.chmod(self.key, 0o600)

    def issue(self, cn, san=None):
        """A certificate for cn signed by this CA: (cert_path, key_path).
        san: the subjectAltName value ("DNS:starling-node-1,IP:127.0.0.1"),
        None for a certificate without one (it names no peer)."""
        key = os.path.join(self.dir, cn + ".key")
        csr = os.path.join(self.dir, cn + ".csr")
        cert = os.path.join(self.dir, cn + ".pem")
        proc.run(["openssl", "req"] + CURVE +
                 ["-keyout", key, "-out", csr, "-subj", "/CN=" + cn],
                 timeout=60, check=True)
        ext = []
        if san:
            extfile = os.path.join(self.dir, cn + ".ext")
            with open(extfile, "w") as f:
                f.write("subjectAltName = %s\n" % san)
            ext = ["-extfile", extfile]
        proc.run(["openssl", "x509", "-req", "-in", csr, "-CA", self.cert,
                  "-CAkey", self.key, "-CAcreateserial", "-out", cert, "-days", "2"] + ext,
                 timeout=60, check=True)
        os.chmod(key, 0o600)
        return cert, key
