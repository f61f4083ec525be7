"""Which URLs a webhook may be sent to, without I/O (docs/security.md, "Webhook targets").

A webhook makes the service itself send requests to a URL a tenant chose, so the target gets the
same address rules as the sandboxes' egress tunnel (``tunnel.address_allowed``): every address the
host resolves to must be public, or lie in a network the operator allowed
(``MOORAGE_WEBHOOK_ALLOW_NETWORKS``: "127.0.0.0/8" for a receiver on this host). Loopback,
private, link-local, metadata (169.254.169.254) and the IPv6 forms that lead to them are refused
otherwise. Plain ``http://`` is allowed only to the operator's networks; anything public needs
``https://``. The URL is checked when the endpoint is made or changed (a clear 400) and again
before every attempt, in the attempt's own resolver (``ssrf.CheckedResolver``): the connection goes
only to addresses that were checked, so a name that re-resolves inward is refused then.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .ssrf import in_networks
from .tunnel import Network, address_allowed

MAX_URL_LENGTH = 2048


class UrlRefused(ValueError):
    """A webhook URL this server will not send to; the message says why (no secrets in it)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed webhook URL: where to connect and whether TLS is used."""

    url: str
    scheme: str
    host: str
    port: int


def parse_target(url: object) -> Target:
    """The URL's shape: ``https://`` or ``http://``, a host, no user info, no fragment."""
    if not isinstance(url, str) or not url:
        raise UrlRefused("url must be a non-empty string")
    if len(url) > MAX_URL_LENGTH or any(c.isspace() or ord(c) < 0x20 for c in url):
        raise UrlRefused(f"url must be at most {MAX_URL_LENGTH} characters, without spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("url is not a valid URL") from None
    if parts.scheme not in ("https", "http"):
        raise UrlRefused("url must be an https:// URL")
    if not parts.hostname:
        raise UrlRefused("url must name a host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("url must not carry credentials")
    if parts.fragment:
        raise UrlRefused("url must not have a fragment")
    default = 443 if parts.scheme == "https" else 80
    return Target(url, parts.scheme, parts.hostname, port or default)


def check_addresses(target: Target, addresses: list[str], networks: tuple[Network, ...]) -> None:
    """Refuse ``target`` unless every address its host resolved to may be reached: public (for
    ``https://``) or in the operator's ``networks`` (for either scheme)."""
    if not addresses:
        raise UrlRefused(f"{target.host} does not resolve")
    inside = all(in_networks(a, networks) for a in addresses)
    if target.scheme == "http" and not inside:
        raise UrlRefused("url must be an https:// URL (plain http:// only to networks the operator allows)")
    if not all(address_allowed(a, networks) for a in addresses):
        raise UrlRefused(f"{target.host} resolves to a non-public address this server does not send to")


def refusal(target: Target, networks: tuple[Network, ...]) -> Callable[[Sequence[str]], str | None]:
    """``check_addresses`` for ``target`` as an ``ssrf.Refusal`` (the reason, or ``None``)."""

    def why(addresses: Sequence[str]) -> str | None:
        try:
            check_addresses(target, list(addresses), networks)
        except UrlRefused as exc:
            return str(exc)
        return None

    return why
