"""
What operators touch: the admin console and the node's lifecycle (drain on
SIGTERM, reload on SIGHUP, push tracking for a graceful stop).
"""
