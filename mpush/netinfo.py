"""
This node's addresses, as MPush derives them (spec 17.5).

Routes carry the gateway's address, so it must be one other nodes and
back-ends can reach: C{[net] local-ip}, else the first site-local IPv4
address of this host, else loopback.
"""

import ipaddress
import socket


def detect_local_ip():
    """
    The first private (site-local) IPv4 address of this host's name, or
    127.0.0.1.
    """
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address.is_private and not address.is_loopback and not address.is_link_local:
            return str(address)
    return "127.0.0.1"


def local_ip(net):
    return net.local_ip or detect_local_ip()


def public_ip(net):
    """
    The address that names this node's online-user list (C{mp:oul:<ip>}).
    """
    return net.public_ip or local_ip(net)
