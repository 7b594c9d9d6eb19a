"""The environment `recsys serve` gives a local Ray for each HTTP ingress."""

from __future__ import annotations

import socket

from serving.http_ingress import HAPROXY_PORTS, HAPROXY_SWITCHES, ingress_environment


def test_the_proxy_actor_needs_nothing_set() -> None:
    assert ingress_environment("proxy", {}) == {}


def test_haproxy_mode_is_switched_on_with_free_ports_of_its_own() -> None:
    env = ingress_environment("haproxy", {})
    assert {name: env[name] for name in HAPROXY_SWITCHES} == {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
    }
    ports = [int(env[name]) for name in HAPROXY_PORTS]
    assert len(set(ports)) == 2
    for port in ports:  # free: HAProxy binds them on all interfaces
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", port))


def test_what_the_environment_already_says_wins() -> None:
    env = ingress_environment(
        "haproxy", {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_HAPROXY_STATS_PORT": "18404"}
    )
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in env
    assert "RAY_SERVE_HAPROXY_STATS_PORT" not in env
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert "RAY_SERVE_HAPROXY_METRICS_PORT" in env
