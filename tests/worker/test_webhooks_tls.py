"""Webhook delivery over HTTPS: post() connects to the address it checked, sends the URL's host
name as SNI and Host, and verifies the receiver's certificate for that name against trusted CAs."""

from __future__ import annotations

import contextlib
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Hit, wait_until
from worker import webhooks

# The receiver's name, which the test resolver sends to loopback, and a name it is not.
NAME = "hooks.example"
OTHER_NAME = "other.example"
LOOPBACK = "127.0.0.1"
# Each step's timeout for the receivers that answer: far longer than a loopback handshake takes.
TIMEOUT = 2.0
OPENSSL_TIMEOUT = 60
# How long the silent server holds a connection: far past any try's bound in these tests.
HOLD = 5.0

CA_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
x509_extensions = ca
[dn]
CN = toolkit-jobs throwaway webhook CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""
SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = DNS:{name}
"""
# Elliptic-curve keys: made in milliseconds, where RSA ones take a noticeable while.
NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


# --- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """A throwaway CA and, per host name, the certificate it issued for that name and its key."""

    ca: Path
    issued: dict[str, tuple[Path, Path]]


def openssl(directory: Path, *args: str) -> None:
    """Run `openssl` with `args` in `directory`, failing with its output if it fails."""
    binary = shutil.which("openssl")
    assert binary, "openssl is not installed: the HTTPS webhook tests need it to make certificates"
    done = subprocess.run(
        [binary, *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=OPENSSL_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"openssl {' '.join(args)} failed:\n{done.stderr}"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """Make a CA and a server certificate of it for NAME and for OTHER_NAME."""
    directory = tmp_path_factory.mktemp("webhook-tls")
    (directory / "ca.cnf").write_text(CA_CONFIG)
    openssl(
        directory,
        *("req", "-x509", *NEW_KEY, "-days", "2", "-config", "ca.cnf"),
        *("-keyout", "ca.key", "-out", "ca.crt"),
    )
    issued = {}
    for serial, name in enumerate((NAME, OTHER_NAME), start=2):
        (directory / f"{name}.ext").write_text(SERVER_EXTENSIONS.format(name=name))
        openssl(
            directory,
            *("req", "-new", *NEW_KEY, "-subj", f"/CN={name}"),
            *("-keyout", f"{name}.key", "-out", f"{name}.csr"),
        )
        openssl(
            directory,
            *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key"),
            *("-set_serial", str(serial), "-days", "2", "-extfile", f"{name}.ext"),
            *("-out", f"{name}.crt"),
        )
        issued[name] = (directory / f"{name}.crt", directory / f"{name}.key")
    return Certificates(directory / "ca.crt", issued)


# --- the client's view: DNS and trusted CAs --------------------------------------------------


class Resolver:
    """socket.getaddrinfo resolving NAME to loopback (counting its lookups); any other host is
    resolved as the system resolves it."""

    def __init__(self) -> None:
        self.real = socket.getaddrinfo
        self.lookups = 0

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != NAME:
            return self.real(host, port, *args, **kwargs)
        self.lookups += 1
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (LOOPBACK, port))]


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Resolver:
    """Make NAME resolve to 127.0.0.1 for this test; return the resolver, to count lookups."""
    fake = Resolver()
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


@pytest.fixture
def trust_ca(monkeypatch: pytest.MonkeyPatch, certificates: Certificates) -> None:
    """Make the contexts the webhook client creates trust the throwaway CA (and only it)."""
    real = ssl.create_default_context

    def create(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        return real(*args, **kwargs, cafile=str(certificates.ca))

    # worker.webhooks looks the function up on the ssl module at each connection.
    monkeypatch.setattr(ssl, "create_default_context", create)


# --- the receivers ---------------------------------------------------------------------------


class TlsReceiver:
    """An HTTPS receiver on loopback serving one certificate: answers 200 to every POST; records
    each request, the SNI name of each handshake, and each handshake that failed."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.hits: list[Hit] = []
        self.names: list[str | None] = []
        self.failed: list[OSError] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.sni_callback = lambda _sock, name, _context: self.names.append(name)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.hits.append(Hit(self.path, headers, body, time.monotonic()))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request: Any, client_address: Any) -> None:
                # The handshake runs on the request's own thread, not on the one that accepts.
                request.settimeout(5)
                try:
                    tls = context.wrap_socket(request, server_side=True)
                except OSError as exc:
                    receiver.failed.append(exc)
                    return
                with tls:
                    super().finish_request(tls, client_address)

        self.server = Server((LOOPBACK, 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        """Return the port it listens on."""
        return int(self.server.server_port)

    def url(self, host: str = NAME) -> str:
        """Return an https URL naming `host` at the receiver's port."""
        return f"https://{host}:{self.port}/hook"

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class SilentServer:
    """A loopback TCP server that accepts one connection and never sends a byte, hanging up after
    HOLD seconds (a client with no bound fails then, not at the test's timeout); records what the
    connection sent."""

    def __init__(self) -> None:
        self.received = b""
        self.stop_event = threading.Event()
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(0.05)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        """Return the port it listens on."""
        return int(self.listener.getsockname()[1])

    def _serve(self) -> None:
        while not self.stop_event.is_set():
            try:
                peer, _ = self.listener.accept()
            except TimeoutError:
                continue
            with peer:
                peer.settimeout(5)
                # A client that hung up sending nothing leaves `received` empty: the test sees it.
                with contextlib.suppress(OSError):
                    self.received = peer.recv(65536)
                self.stop_event.wait(HOLD)
            return

    def stop(self) -> None:
        """Stop, hang up on the connection held, and close the listening socket."""
        self.stop_event.set()
        self.thread.join(timeout=5)
        self.listener.close()


@pytest.fixture
def serve(certificates: Certificates) -> Iterator[Callable[[str], TlsReceiver]]:
    """Return a starter of HTTPS receivers serving the certificate issued for a name; every one
    is stopped after the test."""
    started: list[TlsReceiver] = []

    def start(name: str) -> TlsReceiver:
        receiver = TlsReceiver(*certificates.issued[name])
        started.append(receiver)
        return receiver

    try:
        yield start
    finally:
        for receiver in started:
            receiver.stop()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    """Return a running server that accepts and never answers."""
    server = SilentServer()
    try:
        yield server
    finally:
        server.stop()


def wait_handshake_failed(receiver: TlsReceiver) -> OSError:
    """Return the failure of the receiver's first failed handshake, waiting for it."""
    failed: list[OSError] = wait_until(lambda: receiver.failed, timeout=5)
    return failed[0]


# --- the tests -------------------------------------------------------------------------------


@pytest.mark.usefixtures("trust_ca")
def test_delivery_to_a_host_whose_certificate_names_it_arrives(
    resolver: Resolver, serve: Callable[[str], TlsReceiver]
) -> None:
    """An HTTPS delivery to a host whose certificate names it arrives: post() returns 200; the
    name was resolved once, the address it gave was connected to, with the name as SNI and Host."""
    receiver = serve(NAME)
    answer = webhooks.post(
        receiver.url(),
        b'{"job_id": "j1"}',
        {"webhook-id": "msg_1"},
        allow_private=True,
        timeout=TIMEOUT,
    )
    assert answer.status == 200
    assert receiver.names == [NAME]
    assert [(hit.path, hit.headers["host"], hit.body) for hit in receiver.hits] == [
        ("/hook", f"{NAME}:{receiver.port}", b'{"job_id": "j1"}')
    ]
    assert receiver.hits[0].headers["webhook-id"] == "msg_1"
    assert receiver.failed == []
    # One lookup, the check's: the connection went to the checked address, not to a new answer.
    assert resolver.lookups == 1


@pytest.mark.usefixtures("trust_ca")
def test_certificate_for_another_name_is_refused(
    resolver: Resolver, serve: Callable[[str], TlsReceiver]
) -> None:
    """A trusted certificate issued for another name is refused: post() raises DeliveryError
    naming the hostname mismatch, and the receiver never gets a request."""
    receiver = serve(OTHER_NAME)
    with pytest.raises(webhooks.DeliveryError) as caught:
        webhooks.post(receiver.url(), b"{}", {}, allow_private=True, timeout=TIMEOUT)
    message = str(caught.value)
    assert message.startswith(f"{NAME}: SSLCertVerificationError"), message
    assert "certificate verify failed" in message
    assert f"Hostname mismatch, certificate is not valid for '{NAME}'" in message
    # The client got as far as the handshake, asking for NAME, and went no further.
    assert isinstance(wait_handshake_failed(receiver), ssl.SSLError)
    assert receiver.names == [NAME]
    assert receiver.hits == []
    assert resolver.lookups == 1


def test_certificate_from_an_untrusted_ca_is_refused(
    resolver: Resolver, serve: Callable[[str], TlsReceiver]
) -> None:
    """A certificate for the right name from a CA the system does not trust is refused: post()
    raises DeliveryError saying the certificate failed verification; no request arrives."""
    receiver = serve(NAME)
    with pytest.raises(webhooks.DeliveryError) as caught:
        webhooks.post(receiver.url(), b"{}", {}, allow_private=True, timeout=TIMEOUT)
    message = str(caught.value)
    assert message.startswith(f"{NAME}: SSLCertVerificationError"), message
    assert "certificate verify failed: unable to get local issuer certificate" in message
    assert isinstance(wait_handshake_failed(receiver), ssl.SSLError)
    assert receiver.names == [NAME]
    assert receiver.hits == []
    assert resolver.lookups == 1


@pytest.mark.usefixtures("trust_ca")
def test_handshake_never_answered_ends_within_three_timeouts(
    resolver: Resolver, silent: SilentServer
) -> None:
    """A receiver that accepts the connection and never answers the TLS handshake ends the try
    within about three times the timeout, with DeliveryError."""
    timeout = 0.3
    started = time.monotonic()
    with pytest.raises(webhooks.DeliveryError) as caught:
        webhooks.post(
            f"https://{NAME}:{silent.port}/hook", b"{}", {}, allow_private=True, timeout=timeout
        )
    took = time.monotonic() - started
    assert took < 3 * timeout + 1.0, f"the try took {took:.2f} s"
    assert NAME in str(caught.value)
    # It was the handshake that stalled: the client's hello (a TLS handshake record) went out.
    wait_until(lambda: silent.received, timeout=5)
    assert silent.received[:1] == b"\x16", silent.received[:16]
    assert resolver.lookups == 1
