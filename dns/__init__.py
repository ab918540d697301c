"""pyswarm's DNS server: service discovery for containers.

Every manager answers, from its own store replica, the names of the
cluster's services with the addresses of their running tasks, rotated per
query (see docs/dns.md for the names and why). The package is split so that
the DNS decisions can be tested without sockets:

- ``records``  the name table built from a store snapshot (pure) and rotation
- ``cache``    the current table, rebuilt only when the store changes
- ``answer``   query bytes → reply bytes (NXDOMAIN, NODATA, TC, FORMERR...)
- ``forward``  names outside the cluster, relayed to upstream resolvers
- ``server``   the asyncio UDP and TCP listeners

Errors::

    pyswarm.errors.PyswarmError
    └── DnsError                   anything the DNS server reports
        ├── DnsBindError           cannot listen on ADDRESS:PORT/PROTO, with the cause
        └── DnsConfigError         a malformed setting (also a UsageError)

Malformed queries are not errors: they are answered FORMERR or dropped, and
the server keeps serving.
"""

from __future__ import annotations

from .answer import DnsSettings, Responder
from .cache import TableCache
from .errors import DnsBindError, DnsConfigError, DnsError
from .forward import Forwarder, parse_upstream, upstreams_from_resolv_conf
from .records import NameEntry, NameTable, build_table
from .server import DnsServer

__all__ = [
    "DnsBindError",
    "DnsConfigError",
    "DnsError",
    "DnsServer",
    "DnsSettings",
    "Forwarder",
    "NameEntry",
    "NameTable",
    "Responder",
    "TableCache",
    "build_table",
    "parse_upstream",
    "upstreams_from_resolv_conf",
]
