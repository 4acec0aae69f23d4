"""
What operators touch: the admin console (L{admin}) and the node's life after
start, one job a module: pushes in flight (L{push_tracking}), the drain on
SIGTERM (L{drain}), the run-time log level (L{log_gate}), the reload on SIGHUP
(L{reload}) and the signal handlers themselves (L{signals}).
"""
