"""
The HTTP proxy command: a device asks the node to fetch a URL for it, within
limits and SSRF rules.
"""
