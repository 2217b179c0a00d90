"""Webhook targets: which addresses a webhook may reach (public ones, unless private are allowed).

Both sides check: the API when a job is submitted, the worker again at each delivery attempt,
connecting to the very address it checked (DNS can change between the two, or between a check
and a connect).
"""

from __future__ import annotations

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
RESOLVE_TIMEOUT = 2.0
GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


class TargetError(Exception):
    """A webhook URL's host may not be reached: it does not resolve, or not to a public address."""


class UnresolvableTargetError(TargetError):
    """The host did not resolve (in time): a DNS answer may come later."""


class PrivateTargetError(TargetError):
    """The host is, or resolves to, a non-public address."""


def url_host_port(url: str) -> tuple[str, int]:
    """Return the host and port (the scheme's default when absent) an HTTP client would use."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def checked_addresses(
    url: str, *, allow_private: bool, timeout: float = RESOLVE_TIMEOUT
) -> list[IPAddress]:
    """Return the addresses the host of `url` resolves to, every one public unless allowed.

    The host is resolved the way an HTTP client would resolve it, so every spelling of an
    address (`localhost`, `127.1`, `2130706433`, `[::ffff:127.0.0.1]`) ends up as the address
    it really means. Raise UnresolvableTargetError or PrivateTargetError.
    """
    host, port = url_host_port(url)
    addresses = resolve(host, port, timeout)
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise PrivateTargetError(
                    f"webhook_url must point to a public address: {host} is {address} "
                    "(set WEBHOOK_ALLOW_PRIVATE=true to allow private targets)"
                )
    return addresses


def resolve(host: str, port: int, timeout: float) -> list[IPAddress]:
    """Return every address `host` resolves to; raise UnresolvableTargetError past `timeout`."""
    # getaddrinfo has no timeout of its own: run it on a thread and stop waiting for it.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resolve")
    future = pool.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    pool.shutdown(wait=False)
    try:
        infos = future.result(timeout=timeout)
    except FutureTimeout:
        raise UnresolvableTargetError(
            f"webhook_url host {host!r} did not resolve within {timeout} s"
        ) from None
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableTargetError(
            f"webhook_url host {host!r} does not resolve: {exc}"
        ) from None
    # A scoped IPv6 address comes back as "fe80::1%eth0"; the scope is not part of the address.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def is_public(address: IPAddress) -> bool:
    """Return whether `address` is a globally routable unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public(address.ipv4_mapped)
        # Outside 2000::/3 lie the forms that embed an IPv4 address without saying so
        # (IPv4-compatible ::a.b.c.d, IPv4-translated, NAT64): refuse them all.
        if address not in GLOBAL_UNICAST_V6:
            return False
        if address.sixtofour is not None:
            return is_public(address.sixtofour)
        if address.teredo is not None:
            return is_public(address.teredo[1])
    return address.is_global and not address.is_multicast
