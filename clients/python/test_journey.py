"""Runs the example journey against a real server on a fresh database (run by .ci/run):

    python3 clients/python/test_journey.py [path/to/llm-registry]

Starts the binary in production mode over TLS (a CA and certificate made now by
clients/make-test-certs.sh) with a generated admin token and encryption key on 127.0.0.1:0,
runs `journey.run` over a TLS channel that trusts that CA, with a fake OpenAI provider over HTTPS
(clients/fake_openai.py, in this process) for the service account's embeddings, and checks that
the provider received the vaulted key and that no key or token reached the server's log.
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

sys.path.insert(0, str(ROOT / "clients"))
import fake_openai  # noqa: E402

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
        self.provider, self.provider_endpoint, self.provider_requests = (
            fake_openai.serve_in_thread(str(certs / "server.crt"), str(certs / "server.key"))
        )
        env = dict(
            os.environ,
            LLM_REGISTRY_MODE="production",
            ADMIN_TOKEN=self.admin_token,
            ENCRYPTION_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
            DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{self.database}",
            LISTEN_ADDR="127.0.0.1:0",
            TLS_CERT_FILE=str(certs / "server.crt"),
            TLS_KEY_FILE=str(certs / "server.key"),
            # The fake provider is on loopback, with a certificate of the run's CA.
            PROVIDER_EGRESS_ALLOW="loopback",
            PROVIDER_CA_FILE=str(certs / "ca.pem"),
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
        self.provider.shutdown()
        self.certs.cleanup()
        psql(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")

    def test_the_whole_journey(self):
        api_key = "sk-test-" + secrets.token_urlsafe(24)
        self.assertIn('transport="TLS"', Path(self.log.name).read_text())
        port = self.addr.rsplit(":", 1)[1]
        ca = (Path(self.certs.name) / "ca.pem").read_bytes()
        provider_key = "sk-test-" + secrets.token_urlsafe(24)
        outcome = journey.run(
            f"localhost:{port}", self.admin_token, api_key, ca_pem=ca,
            provider_endpoint=self.provider_endpoint, provider_key=provider_key,
        )
        self.assertGreaterEqual(len(outcome.responses), 11)
        # Handles carry a per-run suffix: the journey runs again on the same database.
        again = journey.run(
            f"localhost:{port}", self.admin_token, api_key, ca_pem=ca,
            provider_endpoint=self.provider_endpoint, provider_key=provider_key,
        )
        self.assertEqual(len(again.responses), len(outcome.responses))
        self.assertIn(
            f"Bearer {provider_key}", [r["authorization"] for r in self.provider_requests]
        )
        log = Path(self.log.name).read_text()
        for secret in (api_key, provider_key, self.admin_token):
            self.assertNotIn(secret, log)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        BINARY = Path(sys.argv.pop(1))
    unittest.main(verbosity=2)
