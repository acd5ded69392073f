"""Client addresses behind a reverse proxy (``--web-trusted-proxies``).

A request that comes from a trusted proxy is from the address that proxy put in
``X-Forwarded-For``: read from the right, the first hop that is not itself a trusted proxy.
From anyone else the header is ignored (it is whatever the client wrote). That address is
the one per-address limits, login throttles and logs use.
"""

from __future__ import annotations

import ipaddress


def trusted_proxies(text: str) -> TrustedProxies:
    """The option's value: comma-separated addresses or networks (``10.0.0.1,192.168.0.0/16``)."""
    try:
        return TrustedProxies([ipaddress.ip_network(part.strip(), strict=False)
                               for part in text.split(",") if part.strip()])
    except ValueError as e:
        raise ValueError(f"--web-trusted-proxies: {e}") from None


trusted_proxies.coerceDoc = "Comma-separated addresses or networks."


class TrustedProxies:
    def __init__(self, networks=()):
        self.networks = list(networks)

    def __bool__(self):
        return bool(self.networks)

    def __str__(self):
        """As the option is written (``--help`` shows the default so: empty)."""
        return ",".join(str(network) for network in self.networks)

    def trusts(self, host: str) -> bool:
        address = _address(host)
        return address is not None and any(address in network for network in self.networks)

    def client(self, peer: str, forwarded_for) -> str:
        """The client's address, given the TCP peer and the X-Forwarded-For header values
        (a list of bytes or str, or None)."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        hops = []
        for value in forwarded_for:
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            hops += [hop.strip() for hop in text.split(",")]
        client = peer
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                break  # garbage from the client: the last proxy's word is all there is
            client = str(address)
            if not self.trusts(client):
                break
        return client


def _address(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
