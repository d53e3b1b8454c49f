"""Web pages as documents: fetch a URL the server can reach, safely.

Server-side request forgery is the risk: a key holder asking the server to fetch
``http://169.254.169.254/`` or an admin port on loopback. So every hop (the URL and each redirect)
is checked before connecting: http or https only, no credentials in the URL, the host resolved
here and every address it resolves to must be public (not private, loopback, link-local,
multicast, reserved, unspecified, or IPv4-mapped IPv6) unless the operator allow-listed it
(``ESPALIER_WEB_ALLOW_HOSTS``: host names, addresses or CIDR networks). The connection then goes to
the address that was checked (Host header and TLS SNI keep the name), so DNS cannot answer
differently between the check and the connect. Size, time and content type are capped.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from espalier.core.infrastructure.errors import InvalidInput, PayloadTooLarge, Unavailable

if TYPE_CHECKING:
    from espalier.core.infrastructure.settings import Settings

ACCEPTED = {"text/html": "html", "application/xhtml+xml": "html", "text/plain": "text"}
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class UrlRefused(InvalidInput):
    """A URL the policy does not allow (400, ``url_not_allowed``)."""

    def __init__(self, message: str):
        super().__init__(message, code="url_not_allowed")


@dataclass
class WebPolicy:
    allow_hosts: Sequence[str] = ()
    public: bool = True
    max_bytes: int = 5 * 1024 * 1024
    timeout_s: float = 15.0
    max_redirects: int = 5
    resolve: Callable[[str, int], list[str]] | None = None  # tests may pin DNS; default getaddrinfo
    _names: set[str] = field(default_factory=set, init=False)
    _networks: list[Network] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        for entry in self.allow_hosts:
            entry = entry.strip().lower()
            try:
                self._networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self._names.add(entry.rstrip("."))

    @classmethod
    def from_settings(cls, settings: Settings) -> WebPolicy:
        return cls(
            allow_hosts=settings.web_allow_hosts,
            public=settings.web_public,
            max_bytes=settings.web_max_bytes,
            timeout_s=settings.web_timeout_s,
            max_redirects=settings.web_max_redirects,
        )

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self._names

    def address_allowed(self, address: Address) -> bool:
        if any(address in network for network in self._networks if network.version == address.version):
            return True
        embedded = embedded_ipv4(address)
        if embedded:
            # ::ffff:127.0.0.1, ::127.0.0.1, 64:ff9b::7f00:1, 2002:7f00:1::, Teredo: the IPv4 inside
            # is where the packets go, so that is what is judged
            return all(self.address_allowed(inner) for inner in embedded)
        return self.public and address.is_global and not address.is_multicast


NAT64_PREFIXES = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))


def embedded_ipv4(address: Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: IPv4-mapped and IPv4-compatible forms, NAT64
    (RFC 6052 well-known and RFC 8215 local-use prefixes, the IPv4 in the last 32 bits), 6to4 and
    Teredo (its server and its client). Empty for a plain IPv6 or IPv4 address."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    value = int(address)
    if value >> 32 == 0 and value > 1:  # ::a.b.c.d (:: and ::1 are IPv6's own)
        return [ipaddress.IPv4Address(value & 0xFFFFFFFF)]
    if any(address in prefix for prefix in NAT64_PREFIXES):
        return [ipaddress.IPv4Address(value & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address.sixtofour]
    if address.teredo is not None:
        return list(address.teredo)
    return []


@dataclass
class Page:
    url: str  # the URL asked for
    final_url: str  # after redirects
    kind: str  # html or text
    data: bytes


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InvalidInput(f"cannot resolve host '{host}'", code="url_unresolvable") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def check_url(url: str, policy: WebPolicy) -> tuple[Any, str]:
    """``(parsed_url, address_to_connect)`` for an allowed URL; :class:`UrlRefused` otherwise."""
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise UrlRefused(f"'{url[:200]}' is not a URL") from None
    if parsed.scheme not in ("http", "https"):
        raise UrlRefused(f"only http and https URLs can be fetched, not '{parsed.scheme or 'none'}'")
    if parsed.userinfo:
        raise UrlRefused("URLs with credentials are not fetched; make the page readable without them")
    host = parsed.host
    if not host:
        raise UrlRefused("the URL has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    addresses = [str(literal)] if literal is not None else (policy.resolve or _resolve)(host, port)
    if not addresses:
        raise InvalidInput(f"cannot resolve host '{host}'", code="url_unresolvable")
    if not policy.host_allowed(host):
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if not policy.address_allowed(address):
                raise UrlRefused(
                    f"'{host}' resolves to {address}, a private, loopback, link-local or reserved address; "
                    "an operator can allow it with ESPALIER_WEB_ALLOW_HOSTS"
                )
    return parsed, addresses[0].split("%", 1)[0]


def fetch(url: str, policy: WebPolicy) -> Page:
    """GETs ``url`` following at most ``policy.max_redirects`` redirects, each checked again."""
    import httpx

    deadline = time.monotonic() + policy.timeout_s
    current = url
    with httpx.Client(
        follow_redirects=False, trust_env=False, verify=True
    ) as client:  # no proxies from the environment
        for _hop in range(policy.max_redirects + 1):
            parsed, address = check_url(current, policy)
            host = parsed.host
            target = parsed.copy_with(host=address)
            headers = {
                "Host": parsed.netloc.decode("ascii"),
                "Accept": "text/html, text/plain;q=0.9",
                "User-Agent": "espalier-ingest",
            }
            extensions = {"sni_hostname": host} if parsed.scheme == "https" else {}
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(
                    f"fetching '{url}' took longer than {policy.timeout_s} s (ESPALIER_WEB_TIMEOUT_S)",
                    code="url_timeout",
                )
            try:
                with client.stream(
                    "GET", target, headers=headers, extensions=extensions, timeout=remaining
                ) as response:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise InvalidInput(f"'{current}' redirects without a Location", code="url_failed")
                        current = urljoin(current, location)
                        continue
                    return _read(url, current, response, policy, deadline)
            except httpx.TimeoutException:
                raise Unavailable(
                    f"fetching '{url}' took longer than {policy.timeout_s} s (ESPALIER_WEB_TIMEOUT_S)",
                    code="url_timeout",
                ) from None
            except httpx.HTTPError as exc:
                raise InvalidInput(
                    f"could not fetch '{current}' ({exc.__class__.__name__})", code="url_failed"
                ) from None
    raise InvalidInput(
        f"'{url}' redirected more than {policy.max_redirects} times (ESPALIER_WEB_MAX_REDIRECTS)", code="url_failed"
    )


def _read(url: str, current: str, response: Any, policy: WebPolicy, deadline: float) -> Page:
    if response.status_code != 200:
        raise InvalidInput(f"'{current}' answered HTTP {response.status_code}", code="url_failed")
    media = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in ACCEPTED:
        raise InvalidInput(
            f"'{current}' is {media or 'of no declared type'}; only text/html and text/plain pages are ingested",
            code="unsupported_type",
        )
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > policy.max_bytes:
        raise PayloadTooLarge(
            f"'{current}' has {declared} bytes; the limit is {policy.max_bytes} (ESPALIER_WEB_MAX_BYTES)"
        )
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > policy.max_bytes:
            raise PayloadTooLarge(f"'{current}' is larger than {policy.max_bytes} bytes (ESPALIER_WEB_MAX_BYTES)")
        if time.monotonic() > deadline:
            raise Unavailable(
                f"fetching '{url}' took longer than {policy.timeout_s} s (ESPALIER_WEB_TIMEOUT_S)", code="url_timeout"
            )
    data = bytes(body)
    charset = response.charset_encoding
    if charset and charset.lower().replace("-", "") not in ("utf8", "ascii", "usascii"):
        try:
            data = data.decode(charset).encode("utf-8")  # extraction reads UTF-8
        except (LookupError, UnicodeDecodeError):
            raise InvalidInput(f"'{current}' is not valid {charset}", code="invalid_encoding") from None
    return Page(url=url, final_url=current, kind=ACCEPTED[media], data=data)
