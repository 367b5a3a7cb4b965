"""NATS alone, without Sluice: does a three-server JetStream cluster (replicas 3,
`sync_interval: always`) keep every acknowledged message while its servers' disks
are replaced one after another? The cluster fault test lost acknowledged records
with its `nats_disk_lost` kind (docs/cluster.md); this takes Sluice out of the
question and compares the ways an operator can bring a server back. Not a CI test:

    python3 tests/e2e/nats_disk_loss.py --mode MODE [--replacements N] [--seed S] [--then kill-other|all-down]

MODE is how each replaced server comes back:
  same-name          killed, store wiped, restarted under its old name at once
  same-name-planned  its stream leaderships handed over and every replica current
                     first (what docs/cluster.md used to recommend), then as above
  new-name           killed, store wiped, the old peer removed from the cluster
                     (`$JS.API.SERVER.REMOVE`, system account), restarted under a
                     new server_name (NatsCluster.replace_disk, as docs/cluster.md
                     says); every replica current before the next one

Publishers keep a bounded number of publishes in flight at a bounded rate (each
with a Nats-Msg-Id, retried with that id after a timeout, as Sluice does), and a
reader takes the stream in order (with --purge purging what it read, as Sluice does
after each delivery) until it has read the last message: an acknowledged id it never
saw is a lost write. Prints one JSON line with the counts; exits 1 on a loss.
"""

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cluster import NatsCluster  # noqa: E402

STREAM = "LOSS"
PAYLOAD_BYTES = 1024


def step_down(servers: NatsCluster, name: str, timeout=60):
    """Moves the stream's leadership off server `name`."""

    async def still_leads(nc):
        if (await nc.jetstream(timeout=5).stream_info(STREAM)).cluster.leader not in (name, None):
            return None
        await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}", b"", timeout=5)
        return f"{name} leads {STREAM}"

    servers.until(still_leads, timeout, f"moving {STREAM}'s leadership off {name}")


class Publishers(threading.Thread):
    def __init__(self, servers: NatsCluster, in_flight: int, rate: float, purge: bool):
        super().__init__(daemon=True)
        self.servers, self.in_flight, self.rate, self.purge = servers, in_flight, rate, purge
        self.acked, self.unknown, self.seen, self.purged_below = {}, set(), {}, 0
        self.stopping, self.published = threading.Event(), threading.Event()

    def run(self):
        asyncio.run(self.main())

    async def main(self):
        import nats
        nc = await nats.connect(self.servers.urls, connect_timeout=5, max_reconnect_attempts=-1,
                                reconnect_time_wait=0.2)
        js = nc.jetstream(timeout=2)
        ids = iter(range(10 ** 12))

        async def one():
            while not self.stopping.is_set():
                due = time.monotonic() + self.in_flight / self.rate
                n = next(ids)
                payload = n.to_bytes(8, "big") * (PAYLOAD_BYTES // 8)
                for _attempt in range(5):
                    try:
                        ack = await js.publish("loss.x", payload, headers={"Nats-Msg-Id": str(n)})
                        self.acked[n] = ack.seq
                        break
                    except Exception:
                        await asyncio.sleep(0.2)
                else:
                    self.unknown.add(n)
                await asyncio.sleep(max(0.0, due - time.monotonic()))

        deliverer = asyncio.create_task(self.deliver(js))
        await asyncio.gather(*(one() for _ in range(self.in_flight)))
        self.published.set()
        await deliverer
        await nc.close()

    async def deliver(self, js):
        """Reads the stream in order, as a Sluice lane does, and with `purge`
        purges what it read (as Sluice does once a batch is delivered); after the
        publishers stop, reads on up to the stream's last message."""
        sub = await js.subscribe("loss.>", ordered_consumer=True, idle_heartbeat=1.0)
        last_read, last_purge = 0, time.monotonic()
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except Exception:
                msg = None
            if msg is not None:
                last_read = msg.metadata.sequence.stream
                self.seen[int.from_bytes(msg.data[:8], "big")] = last_read
            if self.purge and last_read and time.monotonic() - last_purge > 0.5:
                try:
                    await js.purge_stream(STREAM, seq=last_read + 1)
                    self.purged_below = last_read + 1
                    last_purge = time.monotonic()
                except Exception:
                    pass
            if self.published.is_set() and msg is None:
                try:
                    if last_read >= (await js.stream_info(STREAM)).state.last_seq:
                        return
                except Exception:
                    pass


async def leader_of(servers: NatsCluster):
    """The stream's leader now, or None while it has none (or cannot say)."""
    import nats
    try:
        nc = await nats.connect(servers.urls, connect_timeout=2)
        try:
            return (await nc.jetstream(timeout=2).stream_info(STREAM)).cluster.leader
        finally:
            await nc.close()
    except Exception:
        return None


async def create_stream(servers: NatsCluster):
    import nats
    from nats.js.api import StorageType, StreamConfig
    nc = await nats.connect(servers.urls, connect_timeout=5)
    try:
        await nc.jetstream(timeout=10).add_stream(StreamConfig(
            name=STREAM, subjects=["loss.>"], num_replicas=3, storage=StorageType.FILE,
            duplicate_window=120.0))
    finally:
        await nc.close()


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--mode", choices=["same-name", "same-name-planned", "new-name"], required=True)
    args.add_argument("--replacements", type=int, default=6)
    args.add_argument("--seed", type=int, default=1)
    args.add_argument("--in-flight", type=int, default=16)
    # Bounded, so that a wiped server copies the stream back in seconds (Sluice's log
    # streams stay small too: delivered records are purged).
    args.add_argument("--rate", type=float, default=300, help="publishes per second, at most")
    args.add_argument("--purge", action="store_true", help="purge what was read, as Sluice does")
    args.add_argument("--keep", action="store_true", help="keep the servers' logs and stores")
    args.add_argument("--then", choices=["kill-other", "all-down"],
                      help="after each replacement (and its replicas current), kill -9 one of the other "
                           "servers or all three, then restart them, as the fault test's kill_nats or "
                           "all_nats_down may do next")
    opts = args.parse_args()
    rng = random.Random(opts.seed)
    root = Path(tempfile.mkdtemp(prefix="nats-disk-loss-"))
    servers = NatsCluster(root)
    events = []
    try:
        servers.start()
        asyncio.run(create_stream(servers))
        servers.wait_current()
        pubs = Publishers(servers, opts.in_flight, opts.rate, opts.purge)
        pubs.start()
        for _ in range(opts.replacements):
            time.sleep(rng.uniform(1.0, 3.0))
            i = rng.randrange(3)
            old = servers.names[i]
            leader = asyncio.run(leader_of(servers))
            if opts.mode == "new-name":
                servers.replace_disk(i)
            else:
                if opts.mode == "same-name-planned":
                    step_down(servers, old)
                    servers.wait_current()
                servers.kill(i)
                shutil.rmtree(servers.store_dir(i))
                servers.start(i)
                if opts.mode == "same-name-planned":
                    servers.wait_current()
            event = {"at": round(time.time(), 1), "replaced": old, "as": servers.names[i],
                     "leader_before": leader, "acked_so_far": len(pubs.acked)}
            if opts.then:
                time.sleep(rng.uniform(0.0, 2.0))
                killed = ([rng.choice([j for j in range(3) if j != i])] if opts.then == "kill-other"
                          else [0, 1, 2])
                event["then_killed"] = [servers.names[j] for j in killed]
                for j in killed:
                    servers.kill(j)
                time.sleep(rng.uniform(0.5, 3.0))
                # Together: a server waits for a meta leader, which needs a quorum.
                servers.start(killed[0] if len(killed) == 1 else None)
                servers.wait_current()
            events.append(event)
        time.sleep(2)
        pubs.stopping.set()
        pubs.join(180)
        if pubs.is_alive():
            raise RuntimeError("the reader never read the whole stream")
        lost = sorted(n for n in pubs.acked if n not in pubs.seen)
        result = {"mode": opts.mode, "seed": opts.seed, "replacements": opts.replacements, "purge": opts.purge,
                  "acknowledged": len(pubs.acked), "unknown": len(pubs.unknown), "read": len(pubs.seen),
                  "purged_below": pubs.purged_below, "lost": len(lost),
                  "lost_first": [(n, pubs.acked[n]) for n in lost[:5]], "events": events}
        print(json.dumps(result))
        return 1 if lost else 0
    finally:
        servers.stop()
        if opts.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
