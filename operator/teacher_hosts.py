"""Which hosts an InstructDataset may send its teacher API key to (an operator setting).

A Secret's value goes wherever the spec's baseURL points, so the operator decides where that may
be: never a link-local or cloud metadata address (where a key, or the request itself, reaches the
node's instance credentials) unless the platform allows it, and, when the platform lists hosts,
only those. Pure: the reconcile asks before it builds the Job.
"""

from __future__ import annotations

import ipaddress
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

# Instance metadata services by name; their addresses are link-local and caught by the IP check.
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data", "instance-data.ec2.internal"})


def refusal(base_url: str, *, allowed: list[str], allow_link_local: bool) -> str | None:
    """Why the key must not be sent to `base_url`, or None when it may."""
    host = (urlsplit(base_url).hostname or "").lower().rstrip(".")
    if not host:
        return f"teacher.baseURL {base_url!r} has no host"
    if not allow_link_local:
        if host in METADATA_HOSTS:
            return f"teacher.baseURL host {host!r} is a cloud metadata service; the operator does not send keys there"
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None:
            mapped = getattr(address, "ipv4_mapped", None) or address
            if mapped.is_link_local or str(mapped) == "fd00:ec2::254":
                return f"teacher.baseURL host {host} is a link-local (metadata) address; the operator does not send keys there"
    if allowed and not any(fnmatchcase(host, pattern.lower()) for pattern in allowed):
        return f"teacher.baseURL host {host!r} is not among the teacher hosts this operator allows ({', '.join(allowed)})"
    return None
