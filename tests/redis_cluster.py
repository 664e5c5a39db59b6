"""A throwaway three-node Redis Cluster (no replicas) on free loopback ports."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

from tests.redis_servers import RedisServer, start_redis


@dataclass
class RedisCluster:
    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is a valid, free port too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        ok = True
        for p in (port, port + 10000):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free port pair for a cluster node")


def start_cluster(size: int = 3) -> RedisCluster:
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
    nodes = [start_redis("--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                         "--cluster-config-file", "nodes.conf", port=_cluster_port())
             for _ in range(size)]
    try:
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30)
        # Every node must agree the cluster is up: a client may start at any of them, and
        # one that still says CLUSTERDOWN makes a test flaky.
        deadline = time.monotonic() + 20
        waiting = list(nodes)
        while waiting and time.monotonic() < deadline:
            info = subprocess.run([cli, "-p", str(waiting[0].port), "cluster", "info"],
                                  capture_output=True, text=True, timeout=5).stdout
            if "cluster_state:ok" in info:
                waiting.pop(0)
            else:
                time.sleep(0.1)
        if waiting:
            raise RuntimeError("the cluster did not become ready")
        return RedisCluster(nodes)
    except BaseException:
        for n in nodes:
            n.stop()
        raise
