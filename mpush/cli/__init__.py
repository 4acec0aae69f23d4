"""
The C{mpush} operator command: a thin client of the node's HTTP API (push,
show and kick users) plus offline helpers (C{keygen}).
"""
