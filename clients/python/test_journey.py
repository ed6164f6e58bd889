"""Runs the example journey against a real server on a fresh database (run by .ci/run):

    python3 clients/python/test_journey.py [path/to/llm-registry]

Starts the binary in production mode over TLS (a CA and certificate made now by
clients/make-test-certs.sh) with a generated admin token and encryption key on 127.0.0.1:0,
runs `journey.run` over a TLS channel that trusts that CA, and checks that the API key never reached the server's log.
Needs PostgreSQL on 127.0.0.1:5432 with trust authentication, psql and openssl.
"""

import base64
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import journey  # noqa: E402

BINARY = Path(os.environ.get("LLM_REGISTRY_BIN", ROOT / "target" / "debug" / "llm-registry"))


def psql(sql):
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atqc", sql],
        check=True,
        capture_output=True,
    )


class JourneyTest(unittest.TestCase):
    def setUp(self):
        self.database = "llmr_test_" + secrets.token_hex(8)
        psql(f"CREATE DATABASE {self.database}")
        self.admin_token = "llmr_admin_" + secrets.token_urlsafe(24)
        self.log = tempfile.NamedTemporaryFile(prefix="llmr-journey-", suffix=".log")
        # Over TLS, with a CA and certificate made now (never committed).
        self.certs = tempfile.TemporaryDirectory(prefix="llmr-journey-tls-")
        subprocess.run(
            [str(ROOT / "clients" / "make-test-certs.sh"), self.certs.name], check=True
        )
        certs = Path(self.certs.name)
        env = dict(
            os.environ,
            LLM_REGISTRY_MODE="production",
            ADMIN_TOKEN=self.admin_token,
            ENCRYPTION_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
            DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{self.database}",
            LISTEN_ADDR="127.0.0.1:0",
            TLS_CERT_FILE=str(certs / "server.crt"),
            TLS_KEY_FILE=str(certs / "server.key"),
            RUST_LOG="info",
        )
        self.server = subprocess.Popen(
            [str(BINARY)], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.addr = self.wait_for_address()

    def wait_for_address(self):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(r"address=([0-9.:]+)", Path(self.log.name).read_text())
            if found:
                return found.group(1)
            if self.server.poll() is not None:
                self.fail("the server exited:\n" + Path(self.log.name).read_text())
            time.sleep(0.05)
        self.fail("the server did not report its address")

    def tearDown(self):
        self.server.terminate()
        self.server.wait(timeout=30)
        self.log.close()
        self.certs.cleanup()
        psql(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")

    def test_the_whole_journey(self):
        api_key = "sk-test-" + secrets.token_urlsafe(24)
        self.assertIn('transport="TLS"', Path(self.log.name).read_text())
        port = self.addr.rsplit(":", 1)[1]
        ca = (Path(self.certs.name) / "ca.pem").read_bytes()
        outcome = journey.run(f"localhost:{port}", self.admin_token, api_key, ca_pem=ca)
        self.assertGreaterEqual(len(outcome.responses), 6)
        self.assertNotIn(api_key, Path(self.log.name).read_text())


if __name__ == "__main__":
    if len(sys.argv) > 1:
        BINARY = Path(sys.argv.pop(1))
    unittest.main(verbosity=2)
