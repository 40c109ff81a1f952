"""A private Redis Cluster and a private Sentinel setup on loopback, for tests and benchmarks.

Both are made of ``redis-server`` processes we own (see `servers.RedisServer`), on free
ports, in temporary directories removed by ``close()``. Readiness is polled (the
servers offer no event to wait on) with a bound on every wait.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from .servers import RedisServer, free_port

_NODE_TIMEOUT_MS = 2000
# A replica that must resync in full (a demoted primary) does so at once, not after 5 s.
_FAST_SYNC = ("--repl-diskless-sync-delay", "0")


def _cli(port: int, *args: str, timeout: float = 10.0) -> str:
    """Run ``redis-cli`` against a loopback port and return its output."""
    proc = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"redis-cli -p {port} {' '.join(args)}: {proc.stderr or proc.stdout}")
    return proc.stdout


def _pong(port: int) -> bool:
    return _cli(port, "PING").strip() == "PONG"


def _info(port: int, *args: str) -> dict[str, str]:
    """``INFO``-style ``key:value`` lines as a dict."""
    fields: dict[str, str] = {}
    for line in _cli(port, *args).splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            fields[key] = value
    return fields


def config_set(port: int, *pairs: str) -> None:
    _cli(port, "CONFIG", "SET", *pairs)


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll ``check`` until it holds; raise after ``timeout`` seconds.

    Only for server state that announces nothing (cluster formation, replica links).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # a node that is restarting or busy: ask again
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class PrivateCluster:
    """``masters`` masters with one replica each, formed by ``redis-cli --cluster create``."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(
                "--cluster-enabled", "yes",
                "--cluster-port", str(free_port()),
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(_NODE_TIMEOUT_MS),
                *_FAST_SYNC,
            )
            for _ in range(2 * masters)
        ]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    def start(self, timeout: float = 60.0) -> None:
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{port}" for port in self.ports]
            _cli(
                self.ports[0], "--cluster", "create", *addresses,
                "--cluster-replicas", "1", "--cluster-yes",
                timeout=timeout,
            )
            self.wait_healthy(timeout)
        except BaseException:
            self.close()
            raise

    def _healthy(self) -> bool:
        half = len(self.nodes) // 2
        for port in self.ports:
            if _info(port, "CLUSTER", "INFO").get("cluster_state") != "ok":
                return False
            replication = _info(port, "INFO", "replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
            # Every node knows every other one in its role (gossip has settled): a
            # client asking any node for the slot map sees the replicas too.
            rows = self.cluster_nodes(port)
            if any(flag in row["flags"] for row in rows for flag in ("fail", "handshake")):
                return False
            masters = [row for row in rows if "master" in row["flags"] and row["slots"]]
            replicas = [row for row in rows if "slave" in row["flags"]]
            if len(masters) != half or len(replicas) != half:
                return False
        return len(self.masters()) == half

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every node says ``cluster_state:ok`` and every replica's link is up."""
        wait_until("the cluster to be healthy", self._healthy, timeout)

    def cluster_nodes(self, port: int | None = None) -> list[dict[str, str]]:
        """``CLUSTER NODES`` as seen from ``port`` (the first node by default)."""
        rows = []
        for line in _cli(port or self.ports[0], "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            rows.append({
                "id": parts[0],
                "port": parts[1].split("@")[0].rsplit(":", 1)[1],
                "flags": parts[2],
                "master": parts[3],
                "slots": " ".join(parts[8:]),
            })
        return rows

    def masters(self) -> list[int]:
        """Ports of the masters, as every node agrees."""
        views = []
        for port in self.ports:
            views.append(sorted(
                int(row["port"]) for row in self.cluster_nodes(port)
                if "master" in row["flags"] and "fail" not in row["flags"] and row["slots"]
            ))
        return views[0] if all(view == views[0] for view in views) else []

    def node_id(self, port: int) -> str:
        return _cli(port, "CLUSTER", "MYID").strip()

    def owner(self, slot: int) -> int:
        """Port of the master that serves ``slot``, as the first node sees it."""
        port = self._owner_seen_by(self.ports[0], slot)
        if port is None:
            raise RuntimeError(f"no master serves slot {slot}")
        return port

    def replica_of(self, master_port: int) -> int:
        master_id = self.node_id(master_port)
        for row in self.cluster_nodes(master_port):
            if row["master"] == master_id:
                return int(row["port"])
        raise RuntimeError(f"master {master_port} has no replica")

    def failover(self, replica_port: int, timeout: float = 15.0) -> None:
        """``CLUSTER FAILOVER`` on a replica; returns once every node sees it as a master."""
        _cli(replica_port, "CLUSTER", "FAILOVER")

        def promoted() -> bool:
            return replica_port in self.masters()

        wait_until(f"{replica_port} to become a master", promoted, timeout)
        self.wait_healthy(timeout)

    def migrate_slot(
        self, slot: int, target_port: int, *, before_final: Callable[[], None] | None = None
    ) -> None:
        """Move ``slot`` to ``target_port`` by hand: SETSLOT IMPORTING/MIGRATING, MIGRATE
        every key, then SETSLOT NODE on both sides and the other masters.

        ``before_final`` runs once the keys have moved and before ownership changes.
        """
        source_port = self.owner(slot)
        if source_port == target_port:
            raise ValueError(f"slot {slot} is already on {target_port}")
        source_id, target_id = self.node_id(source_port), self.node_id(target_port)
        _cli(target_port, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        _cli(source_port, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        while True:
            keys = _cli(source_port, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split()
            if not keys:
                break
            _cli(
                source_port, "MIGRATE", "127.0.0.1", str(target_port), "", "0", "5000",
                "KEYS", *keys,
            )
        if before_final is not None:
            before_final()
        # The target first, then the source (the order redis-cli uses), then the rest.
        _cli(target_port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
        _cli(source_port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
        for port in self.masters():
            if port not in (source_port, target_port):
                _cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)

        def everyone_agrees() -> bool:
            return all(self._owner_seen_by(port, slot) == target_port for port in self.ports)

        wait_until(f"slot {slot} to be owned by {target_port} everywhere", everyone_agrees, 15.0)

    def _owner_seen_by(self, port: int, slot: int) -> int | None:
        for row in self.cluster_nodes(port):
            if "master" not in row["flags"]:
                continue
            for part in row["slots"].split():
                if part.startswith("["):
                    continue
                low, _, high = part.partition("-")
                if int(low) <= slot <= int(high or low):
                    return int(row["port"])
        return None

    def commandstats(self) -> dict[int, dict[str, int]]:
        """Calls per command on every node: ``{port: {command: calls}}``."""
        stats: dict[int, dict[str, int]] = {}
        for port in self.ports:
            calls: dict[str, int] = {}
            for key, value in _info(port, "INFO", "commandstats").items():
                if key.startswith("cmdstat_"):
                    fields = dict(f.split("=", 1) for f in value.split(","))
                    calls[key[len("cmdstat_") :]] = int(fields["calls"])
            stats[port] = calls
        return stats

    def close(self) -> None:
        for node in self.nodes:
            node.close()


class PrivateSentinels:
    """One primary, one replica and ``count`` sentinels watching them as ``service``."""

    def __init__(self, count: int = 3, service: str = "resumable") -> None:
        self.service = service
        self.primary = RedisServer(*_FAST_SYNC)
        self.replica = RedisServer(
            "--replicaof", "127.0.0.1", str(self.primary.port), *_FAST_SYNC
        )
        self.ports = [free_port() for _ in range(count)]
        self.dir = Path(tempfile.mkdtemp(prefix="rs-sentinel-"))
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.ports]

    def start(self, timeout: float = 30.0) -> None:
        try:
            self.primary.start()
            self.replica.start()
            wait_until("the replica's link", self._replica_linked, timeout)
            for port in self.ports:
                config = self.dir / f"sentinel-{port}.conf"
                config.write_text(
                    f"port {port}\n"
                    "bind 127.0.0.1\n"
                    f"dir {self.dir}\n"
                    f"logfile {self.dir / f'sentinel-{port}.log'}\n"
                    f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 2\n"
                    f"sentinel down-after-milliseconds {self.service} 1000\n"
                    f"sentinel failover-timeout {self.service} 5000\n"
                    f"sentinel parallel-syncs {self.service} 1\n"
                )
                self.processes.append(
                    subprocess.Popen(
                        ["redis-server", str(config), "--sentinel"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            for port in self.ports:
                wait_until(f"sentinel {port}", partial(_pong, port), timeout)
                # Test pace: INFO every second (a demoted primary is reconfigured
                # within about 1 s instead of 10 s) and hellos every 0.5 s (the
                # sentinels find each other sooner).
                _cli(port, "SENTINEL", "DEBUG", "info-period", "1000", "publish-period", "500")
            wait_until("the sentinels to agree", self._sentinels_ready, timeout)
        except BaseException:
            self.close()
            raise

    def _replica_linked(self) -> bool:
        replication = _info(self.replica.port, "INFO", "replication")
        return replication.get("master_link_status") == "up"

    def _sentinels_ready(self) -> bool:
        """Every sentinel knows the primary, the replica and the other sentinels."""
        for port in self.ports:
            fields = _info(port, "INFO", "sentinel")
            master = fields.get("master0", "")
            want = f"address=127.0.0.1:{self.primary.port}"
            sentinels = f"sentinels={len(self.ports)}"
            if "status=ok" not in master or want not in master or sentinels not in master:
                return False
            if "slaves=1" not in master:
                return False
        return True

    def _primary_seen_by(self, sentinel_port: int) -> int:
        reply = _cli(sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return int(reply.split()[1])

    def primary_port(self) -> int:
        """The primary's port as the first sentinel reports it."""
        return self._primary_seen_by(self.ports[0])

    def failover(self, timeout: float = 30.0) -> int:
        """``SENTINEL FAILOVER``; returns the new primary's port once it serves writes
        and its replica (the old primary) is linked to it."""
        old = self.primary_port()
        _cli(self.ports[0], "SENTINEL", "FAILOVER", self.service)
        servers = {self.primary.port: self.primary, self.replica.port: self.replica}
        new = next(port for port in servers if port != old)

        def switched() -> bool:
            if _info(new, "INFO", "replication").get("role") != "master":
                return False
            if any(self._primary_seen_by(port) != new for port in self.ports):
                return False
            old_view = _info(old, "INFO", "replication")
            return old_view.get("role") == "slave" and old_view.get("master_link_status") == "up"

        wait_until("the sentinel failover", switched, timeout)
        return new

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                process.wait(10)
        self.processes.clear()
        self.replica.close()
        self.primary.close()
        shutil.rmtree(self.dir, ignore_errors=True)

