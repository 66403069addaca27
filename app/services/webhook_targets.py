"""Where a webhook may be sent (docs/architecture.md, "Webhooks").

A URL's host is resolved, and every address it resolves to must be allowed: public addresses always; private,
loopback and shared ones (RFC 1918, 127/8, ::1, fc00::/7, 100.64/10) only with TUNEQ_WEBHOOK_ALLOW_PRIVATE;
link-local (cloud metadata at 169.254.169.254), multicast, unspecified and other reserved addresses only when a
network in TUNEQ_WEBHOOK_ALLOWED_NETWORKS holds them. The check runs at submit and again at every send, and a
send connects to the very address it checked (`PinnedTransport`), so a name cannot be re-pointed at an internal
address between the check and the connection (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import httpx

from app.settings import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]  # (host, port) → the addresses it resolves to

_PRIVATE = [ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "100.64.0.0/10", "::1/128", "fc00::/7")]
# Cloud metadata services outside link-local space (AWS IPv6, Alibaba, Azure's wire server).
_METADATA = {ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "168.63.129.16")}
_resolver_threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-dns")


class TargetRefused(Exception):
    """The URL may not be called. The message says why without naming the resolved address."""


class TargetUnresolved(Exception):
    """The host did not resolve (now): worth another try later."""


def system_resolver(timeout: float) -> Resolver:
    """getaddrinfo, bounded by `timeout` (it has no timeout of its own)."""
    def resolve(host: str, port: int) -> list[str]:
        future = _resolver_threads.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
        try:
            infos = future.result(timeout=timeout)
        except FutureTimeout:
            raise TargetUnresolved(f"resolving the host took over {timeout:g} s") from None
        except (socket.gaierror, UnicodeError):
            raise TargetUnresolved("the host name does not resolve") from None
        return [str(info[4][0]) for info in infos]
    return resolve


def _kind(address: Address) -> str | None:
    """What makes `address` internal ('private', 'link-local', ...), or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _kind(address.ipv4_mapped)
    if address.is_link_local or address in _METADATA:
        return "link-local (cloud metadata)"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if any(address in net for net in _PRIVATE):
        return "private"
    if not address.is_global:
        return "reserved"
    return None


class AddressPolicy:
    def __init__(self, settings: Settings) -> None:
        self.allow_private = settings.webhook_allow_private
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in settings.webhook_allowed_networks]

    def refusal(self, address: Address) -> str | None:
        """Why `address` is refused, or None if it may be called."""
        if any(address in net for net in self.allowed if net.version == address.version):
            return None
        kind = _kind(address)
        if kind is None or (self.allow_private and kind in ("loopback", "private")):
            return None
        return kind

    def pick(self, host: str, addresses: Iterable[str]) -> str:
        """The address to connect to: the first of `addresses`, once every one of them is allowed (an
        attacker's name may mix a public address with an internal one)."""
        checked: list[str] = []
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            why = self.refusal(address)
            if why is not None:
                setting = ("TUNEQ_WEBHOOK_ALLOW_PRIVATE" if why in ("loopback", "private")
                           else "TUNEQ_WEBHOOK_ALLOWED_NETWORKS")
                raise TargetRefused(f"the host resolves to a {why} address, which this server does not call "
                                    f"(an operator can allow it with {setting})")
            checked.append(str(address))
        if not checked:
            raise TargetUnresolved("the host name does not resolve")
        return checked[0]

    def check(self, host: str, port: int, resolver: Resolver) -> str:
        try:  # an address literal is checked as it is, without DNS
            return self.pick(host, [str(ipaddress.ip_address(host))])
        except ValueError:
            return self.pick(host, resolver(host, port))


def target(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL; TargetRefused for anything else."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise TargetRefused("not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise TargetRefused("must be an http:// or https:// URL with a host")
    if parsed.userinfo:
        raise TargetRefused("must not carry credentials (user:password@); receivers verify the signature instead")
    return parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80)


class PinnedTransport(httpx.HTTPTransport):
    """Resolves and checks the request's host itself, then connects to exactly the address it checked, keeping
    the name in the Host header and, for https, in SNI and certificate verification."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.policy = policy
        self.resolver = resolver

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        address = self.policy.check(host, port, self.resolver)
        request.url = request.url.copy_with(host=address)  # the Host header keeps the name
        request.extensions = {**request.extensions, "sni_hostname": host}
        return super().handle_request(request)
