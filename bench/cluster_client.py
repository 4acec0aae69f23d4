"""
10,000 GETs on a throw-away Redis Cluster (three masters, three replicas on
loopback), two ways, as a node would send them from its reactor:

- mpush's L{RedisClusterClient} (txredisapi pools, in the reactor), and
  for scale its plain pool on one Redis;
- redis-py's C{RedisCluster}, each command through C{deferToThread}.

Each way runs one GET at a time (latency) and then all 10,000 at once
(throughput, the reconnect-storm shape); wall time and the process's CPU
time are printed.  redis-py is not a dependency of mpush: run this with an
interpreter that has it, e.g.

    python3 -m venv /tmp/rp && /tmp/rp/bin/pip install redis twisted txredisapi
    PYTHONPATH=. /tmp/rp/bin/python bench/cluster_client.py
"""

from __future__ import annotations

import sys
import time

from twisted.internet import defer, reactor, threads

from mpush.store.redis_connection import connect_redis
from tests.redis_cluster import RedisCluster
from tests.redis_server import RedisServer

COUNT = 10_000


@defer.inlineCallbacks
def measure(name: str, get, keys: list[str]):
    for shape in ("one at a time", "all at once"):
        wall, cpu = time.perf_counter(), time.process_time()
        if shape == "one at a time":
            for key in keys:
                yield get(key)
        else:
            yield defer.gatherResults([get(key) for key in keys])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{name:34} {shape:14} {COUNT / wall:9,.0f} GET/s  {cpu / COUNT * 1e6:6.1f} µs CPU per GET")


@defer.inlineCallbacks
def main():
    cluster = RedisCluster()
    cluster.start()
    try:
        keys = [f"bench:{i}" for i in range(COUNT)]
        client = connect_redis(cluster.url, reactor, poolsize=2)
        yield defer.gatherResults([client.redis.set(key, "x" * 100) for key in keys])
        yield measure("mpush RedisClusterClient", client.redis.get, keys)
        yield client.disconnect()
        with RedisServer() as single:
            client = connect_redis(single.url, reactor, poolsize=2)
            yield defer.gatherResults([client.redis.set(key, "x" * 100) for key in keys])
            yield measure("mpush RedisClient, one Redis", client.redis.get, keys)
            yield client.disconnect()
        try:
            from redis.cluster import ClusterNode, RedisCluster as PyRedisCluster
        except ImportError:
            print("redis-py not installed here: its rows are left out")
            return
        host, port = cluster.nodes[0].split(":")
        pyredis = PyRedisCluster(startup_nodes=[ClusterNode(host, int(port))])
        yield measure("redis-py RedisCluster, threads", lambda key: threads.deferToThread(pyredis.get, key), keys)
        pyredis.close()
    finally:
        cluster.stop()


if __name__ == "__main__":
    reactor.suggestThreadPoolSize(10)
    done = main()
    done.addErrback(lambda failure: failure.printTraceback(file=sys.stderr))
    done.addBoth(lambda _: reactor.stop())
    reactor.run()
