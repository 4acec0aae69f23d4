"""
What a node says at start about a configuration that loads but is unsafe
or quietly does nothing: each check returns one line for the log.

Errors stop the node (L{mpush.config.ConfigError}); these do not, because
each has a legitimate use (a test box, a gateway behind a firewall), but an
operator who did not mean it must hear about it on the first day.
"""

from __future__ import annotations

import ipaddress

from mpush.config import Config

__all__ = ["MIN_TOKEN_LENGTH", "config_warnings", "gateway_warnings", "http_warnings", "tls_warnings"]

#: Shorter API tokens are warned about: 16 random characters are out of
#: reach of guessing over HTTP, "s3cret" is not.
MIN_TOKEN_LENGTH = 16


def _is_loopback(address: str) -> bool:
    return bool(address) and ipaddress.ip_address(address).is_loopback


def gateway_warnings(config: Config, advertised_host: str) -> list[str]:
    """
    The gateway takes pushes with no authentication: one that other hosts
    reach with no allow-list lets anyone push; one on loopback while the
    routes name another address cannot be reached by the other nodes.
    """
    net = config.net
    if not net.gateway_server_port:
        return []
    where = f"{net.gateway_server_bind_ip or '*'}:{net.gateway_server_port}"
    warnings = []
    if not _is_loopback(net.gateway_server_bind_ip) and not net.gateway_allow:
        warnings.append(
            f"gateway {where} is reachable from other hosts with no [net] gateway-allow: anyone "
            f"who reaches it can push to any user or broadcast (see SECURITY.md 3.1)"
        )
    shared = config.redis.nodes or config.zk.enabled
    if _is_loopback(net.gateway_server_bind_ip) and not _is_loopback(advertised_host) and shared:
        warnings.append(
            f"gateway {where} listens on loopback but routes and registrations name "
            f"{advertised_host}: other nodes and PushSender cannot reach it; set "
            f"[net] gateway-server-bind-ip"
        )
    return warnings


def http_warnings(config: Config) -> list[str]:
    """A short API token can be guessed."""
    token = config.http.api_token
    if config.net.http_server_port and 0 < len(token) < MIN_TOKEN_LENGTH:
        return [
            f"[http] api-token is {len(token)} characters: use at least {MIN_TOKEN_LENGTH} random "
            f"ones (e.g. openssl rand -hex 16)"
        ]
    return []


def tls_warnings(config: Config) -> list[str]:
    """A certificate no port uses: the operator meant TLS and gets none."""
    tls = config.tls
    ports = (
        ("connect-server", tls.connect_server, config.net.connect_server_port),
        ("ws-server", tls.ws_server, config.net.ws_server_port),
        ("http-server", tls.http_server, config.net.http_server_port),
    )
    if (tls.cert_file or tls.key_file) and not any(on and port for _, on, port in ports):
        return [
            "[tls] cert-file/key-file are set but no port uses them: every port is plain text; "
            "set [tls] connect-server, ws-server or http-server = true"
        ]
    return [
        f"[tls] {name} = true but its port is disabled ([net] {name}-port = 0)"
        for name, on, port in ports
        if on and not port
    ]


def config_warnings(config: Config, advertised_host: str) -> list[str]:
    """Every start-up warning of C{config}, in the order of the file."""
    return gateway_warnings(config, advertised_host) + http_warnings(config) + tls_warnings(config)
