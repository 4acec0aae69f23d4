"""
Routing of users to connections and nodes: binds, unbinds, kicks and the
online/offline events that follow a connection's life.
"""
