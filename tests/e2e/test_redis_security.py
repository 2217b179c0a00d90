"""Redis behind a password and behind TLS: the API and workers need nothing but REDIS_URL."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from tests.helpers import (
    HOST,
    RedisServer,
    assert_fast_envelope,
    call,
    free_port,
    jobs_status,
    post_job,
    running,
    service_env,
    start_api,
    start_worker,
    submit_ok,
    wait_finished,
    wait_until,
)

pytestmark = pytest.mark.e2e

PASSWORD = "s3cret-pass"
WRONG_PASSWORD = "wrong-pass-42"
# A refused password or certificate is an immediate answer from Redis, not a timeout: with
# REDIS_TIMEOUT at 5 s, an answer within 2 s cannot be one that waited for a socket timeout.
REDIS_TIMEOUT = "5"
FAST = 2.0
OPENSSL_TIMEOUT = 60

CA_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
x509_extensions = ca
[dn]
CN = toolkit-jobs throwaway test CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
SERVER_EXTENSIONS = """\
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


class PasswordRedisServer(RedisServer):
    """A private redis-server that requires PASSWORD; its own client (and `url`) carry it."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, "--requirepass", PASSWORD)
        self.url = f"unix://:{PASSWORD}@{self.socket}"

    def client(self, **kwargs: Any) -> redis.Redis:
        """Return a client of this server that authenticates with PASSWORD."""
        return super().client(password=PASSWORD, **kwargs)


@dataclass
class TlsRedisServer:
    """A private redis-server that speaks only TLS, on 127.0.0.1:`port`."""

    port: int
    ca: Path
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, *, with_ca: bool = True) -> str:
        """Return the rediss:// URL of this server, naming the test CA in `ssl_ca_certs`."""
        query = f"?ssl_ca_certs={quote(str(self.ca))}" if with_ca else ""
        return f"rediss://{HOST}:{self.port}/0{query}"

    def ready(self) -> bool:
        """Return whether the server answers PING over TLS; fail at once if it exited."""
        code = self.process.poll()
        if code is not None:
            raise AssertionError(
                f"redis-server with --tls-port exited with {code}: is it built without TLS "
                f"support? Its output:\n{self.log.read_text(errors='replace')}"
            )
        client = redis.Redis(
            host=HOST, port=self.port, ssl=True, ssl_ca_certs=str(self.ca), socket_timeout=5
        )
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM), waiting for it to exit."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def openssl(directory: Path, *args: str) -> None:
    """Run `openssl` with `args` in `directory`, failing with its output if it fails."""
    binary = shutil.which("openssl")
    assert binary, "openssl is not installed: the TLS tests need it to make certificates"
    done = subprocess.run(
        [binary, *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=OPENSSL_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"openssl {' '.join(args)} failed:\n{done.stderr}"


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """Write a throwaway CA and its server certificate for 127.0.0.1; return CA, cert, key."""
    (directory / "ca.cnf").write_text(CA_CONFIG)
    (directory / "server.ext").write_text(SERVER_EXTENSIONS)
    openssl(
        directory,
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-config", "ca.cnf"),
        *("-keyout", "ca.key", "-out", "ca.crt"),
    )
    openssl(
        directory,
        *("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost"),
        *("-keyout", "server.key", "-out", "server.csr"),
    )
    openssl(
        directory,
        *("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
        *("-set_serial", "2", "-days", "2", "-extfile", "server.ext", "-out", "server.crt"),
    )
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[PasswordRedisServer]:
    """Start a redis-server of this test's own that requires PASSWORD."""
    server = PasswordRedisServer(tmp_path)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedisServer]:
    """Start a redis-server of this test's own that listens only for TLS, with a fresh CA."""
    ca, cert, key = make_certificates(tmp_path)
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not installed: run `make test`, which installs it"
    port = free_port()
    log = tmp_path / "redis-tls.log"
    argv = [
        binary,
        "--port",
        "0",
        "--bind",
        HOST,
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(ca),
        "--tls-auth-clients",
        "no",
        "--dir",
        str(tmp_path),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    server = TlsRedisServer(port, ca, process, log)
    try:
        wait_until(server.ready, timeout=10)
        yield server
    finally:
        server.stop()


def test_api_and_worker_authenticate_with_the_password_in_redis_url(
    password_redis: PasswordRedisServer,
) -> None:
    """With requirepass set, REDIS_URL unix://:<password>@<socket> runs a job to done."""
    anonymous = redis.Redis(unix_socket_path=str(password_redis.socket), socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()

    env = service_env(password_redis.url)
    port = free_port()
    worker = start_worker(env)
    with running(worker), running(api := start_api(env, port)):
        job_id = submit_ok(port, "echo", {"over": "a password"})
        described = wait_finished(port, job_id)
        assert described["job_status"] == "done", described
        assert described["result"] == {"over": "a password"}
        health = call(port, "GET", "/health", key=None)
        assert health.status == 200, health.body
        assert worker.popen.poll() is None, worker.output()
    for proc in (worker, api):
        assert PASSWORD not in proc.output(), f"{proc.name} logged the Redis password"


def test_a_wrong_password_makes_health_a_fast_503_while_the_api_answers(
    password_redis: PasswordRedisServer,
) -> None:
    """With a wrong password /health is a fast 503 envelope, other calls answer, none leak it."""
    url = f"unix://:{WRONG_PASSWORD}@{password_redis.socket}"
    env = service_env(url, REDIS_TIMEOUT=REDIS_TIMEOUT)
    port = free_port()
    with running(api := start_api(env, port, workers=1, ready_path="/v1/toolkit/authenticate")):
        health = call(port, "GET", "/health")
        assert_fast_envelope(health, 503, "Redis unavailable", within=FAST)
        assert health.body["queue_length"] is None
        authenticated = call(port, "GET", "/v1/toolkit/authenticate")
        assert_fast_envelope(authenticated, 200, "success", within=FAST)
        assert authenticated.body["response"] == "Authorized"
        assert authenticated.body["queue_length"] is None
        statuses = jobs_status(port)
        message = "Failed to retrieve job statuses: Redis unavailable"
        assert_fast_envelope(statuses, 503, message, within=FAST)
        submitted = post_job(port, "echo", {})
        message = "Failed to submit the job: Redis unavailable"
        assert_fast_envelope(submitted, 503, message, within=FAST)
        for reply in (health, authenticated, statuses, submitted):
            assert WRONG_PASSWORD not in json.dumps(reply.body)
    assert WRONG_PASSWORD not in api.output(), "the API logged the Redis password"


def test_api_and_worker_reach_redis_over_tls(tls_redis: TlsRedisServer) -> None:
    """Over rediss:// with the test CA in ssl_ca_certs a job runs to done and /health is 200."""
    # The server speaks only TLS: a clear-text client gets no answer from it.
    plain = redis.Redis(host=HOST, port=tls_redis.port, socket_timeout=5)
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        plain.ping()
    plain.close()

    env = service_env(tls_redis.url())
    port = free_port()
    worker = start_worker(env)
    with running(worker), running(start_api(env, port)):
        health = call(port, "GET", "/health")
        assert health.status == 200, health.body
        assert health.body["response"]["redis"] == "ok"
        job_id = submit_ok(port, "echo", {"over": "TLS"})
        described = wait_finished(port, job_id)
        assert described["job_status"] == "done", described
        assert described["result"] == {"over": "TLS"}
        assert jobs_status(port).body["response"] == {job_id: "done"}
        assert worker.popen.poll() is None, worker.output()


def test_a_tls_certificate_from_an_unknown_ca_is_refused(tls_redis: TlsRedisServer) -> None:
    """rediss:// without the test CA refuses the server's certificate: /health is a fast 503, and
    the log, not the answer, says why."""
    env = service_env(tls_redis.url(with_ca=False), REDIS_TIMEOUT=REDIS_TIMEOUT)
    port = free_port()
    with running(api := start_api(env, port, workers=1, ready_path="/v1/toolkit/authenticate")):
        health = call(port, "GET", "/health")
        assert_fast_envelope(health, 503, "Redis unavailable", within=FAST)
        message = "Failed to submit the job: Redis unavailable"
        assert_fast_envelope(post_job(port, "echo", {}), 503, message, within=FAST)
    # The cause goes to the log, never into an answer.
    assert "certificate verify failed" in api.output().lower()
