"""Kinesis Data Streams as a source (issue 13), against kinesalite (a real Kinesis API
server, see kinesis.py): records put with boto3's Kinesis client reach the bucket
each exactly once and in order per partition key, through processing, with two
delivery streams on one data stream, across a split and a merge, across repeated
kill -9 of Sluice, and across an outage of the Kinesis endpoint; KPL aggregates made
by aws-kinesis-agg come out as their user records. The control plane answers as
Firehose does for this source type."""

import base64
import json
import os
import random
import signal
import threading
import time
import urllib.request
from collections import Counter, defaultdict

import pytest
from aws_kinesis_agg.aggregator import RecordAggregator
from botocore.exceptions import ClientError

from conftest import S3_CONFIG, Server, wait_active
from kinesis import Kinesalite, arn
from lambda_server import LambdaServer
from test_lambda import FUNCTION, SECRET

ROLE = "arn:aws:iam::000000000000:role/firehose"
KILLS = int(os.environ.get("SLUICE_KINESIS_KILLS", "10"))
NOT_PERMITTED = "This operation is not permitted on KinesisStreamAsSource delivery stream type."


@pytest.fixture
def kinesalite(tmp_path):
    k = Kinesalite(tmp_path / "kinesalite").start()
    yield k
    k.stop()


def start_server(tmp_path, kinesalite, extra_config=""):
    server = Server(tmp_path / "data", extra_config=extra_config,
                    env={"SLUICE_KINESIS_ENDPOINT": kinesalite.endpoint, "SLUICE_BUFFER_INTERVAL_MAX": "1"}).start()
    (server.data_dir / "buckets" / "bucket").mkdir(parents=True)
    return server


@pytest.fixture
def server(tmp_path, kinesalite):
    s = start_server(tmp_path, kinesalite)
    yield s
    if s.proc.poll() is None:
        assert s.stop() == 0, s.logs()


def source_stream(fh, name, kinesis_stream, **destination):
    fh.create_delivery_stream(
        DeliveryStreamName=name, DeliveryStreamType="KinesisStreamAsSource",
        KinesisStreamSourceConfiguration={"KinesisStreamARN": arn(kinesis_stream), "RoleARN": ROLE},
        ExtendedS3DestinationConfiguration=dict(S3_CONFIG, **destination))
    return wait_active(fh, name)


def record(key, n):
    return json.dumps({"k": key, "n": n}).encode() + b"\n"


def put(kc, stream, records):
    """Puts `(partition key, data)` pairs in order, 500 per call."""
    for i in range(0, len(records), 500):
        chunk = records[i:i + 500]
        out = kc.put_records(StreamName=stream, Records=[{"PartitionKey": k, "Data": d} for k, d in chunk])
        assert out["FailedRecordCount"] == 0, out


def produce(kc, stream, n, keys=20, start=0):
    records = [(f"key-{i % keys}", record(f"key-{i % keys}", i)) for i in range(start, start + n)]
    put(kc, stream, records)
    return records


class Producer:
    """Puts batches of 100 records to a data stream from a thread while the `with`
    block runs; yields the list of what was put, complete once the block ends."""

    def __init__(self, kc, stream, pause):
        self.kc, self.stream, self.pause = kc, stream, pause
        self.records = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self):
        n = 0
        while not self.stop.is_set():
            self.records.extend(produce(self.kc, self.stream, 100, start=n))
            n += 100
            time.sleep(self.pause)

    def __enter__(self):
        self.thread.start()
        return self.records

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def delivered_objects(server, bucket="bucket", prefix=""):
    """The record lines of each object in the bucket."""
    root = server.data_dir / "buckets" / bucket / prefix
    return [p.read_bytes().splitlines(keepends=True) for p in sorted(root.rglob("*")) if p.is_file()]


def delivered(server, bucket="bucket", prefix=""):
    """Every record line in the bucket, objects in the order they were last written
    (a single node writes them one after another)."""
    root = server.data_dir / "buckets" / bucket / prefix
    files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime_ns)
    return [line for p in files for line in p.read_bytes().splitlines(keepends=True)]


def wait_delivered(server, n, bucket="bucket", timeout=90, prefix=""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = delivered(server, bucket, prefix)
        if len(found) >= n:
            # Anything more (a duplicate) would be in the log by now: one more flush.
            flush(server)
            return delivered(server, bucket, prefix)
        time.sleep(0.2)
    raise AssertionError(f"{len(delivered(server, bucket, prefix))} of {n} records delivered after {timeout}s:\n"
                         + server.logs()[-3000:])


def flush(server):
    request = urllib.request.Request(server.endpoint + "/_sluice/flush", method="POST")
    with urllib.request.urlopen(request, timeout=120) as r:
        assert r.status == 200


def assert_once_in_order(lines, records, objects=None):
    """Each record once; per partition key in order: in the given line order, or,
    with `objects` (each object's lines; their write order is unknown, e.g. in
    cluster mode, where a paused former owner may rewrite an object it was writing,
    with the same content, after later ones), within each object and with no two
    objects' ranges of one key interleaving."""
    counts = Counter(lines)
    expected = Counter(data for _, data in records)
    missing = expected - counts
    extra = counts - expected
    assert not missing and not extra, f"{sum(missing.values())} missing, {sum(extra.values())} extra: " \
                                      f"{list(missing)[:3]} {list(extra)[:3]}"
    for sequence in ([lines] if objects is None else objects):
        by_key = defaultdict(list)
        for line in sequence:
            value = json.loads(line)
            by_key[value["k"]].append(value["n"])
        for key, ns in by_key.items():
            assert ns == sorted(ns), f"{key} out of order: {ns[:20]}"
    if objects is not None:
        ranges = defaultdict(list)
        for sequence in objects:
            by_key = defaultdict(list)
            for line in sequence:
                value = json.loads(line)
                by_key[value["k"]].append(value["n"])
            for key, ns in by_key.items():
                ranges[key].append((ns[0], ns[-1]))
        for key, spans in ranges.items():
            spans.sort()
            for (_, last), (first, _) in zip(spans, spans[1:]):
                assert last < first, f"{key}: objects interleave ({last} after {first})"


def test_the_control_plane_answers_as_firehose_for_a_kinesis_source(server, kinesalite):
    kinesalite.create_stream("src", 1)
    fh = server.client()
    d = source_stream(fh, "from-kinesis", "src")
    assert d["DeliveryStreamType"] == "KinesisStreamAsSource"
    source = d["Source"]["KinesisStreamSourceDescription"]
    assert source["KinesisStreamARN"] == arn("src") and source["RoleARN"] == ROLE
    assert source["DeliveryStartTimestamp"] == d["CreateTimestamp"]
    assert "DeliveryStreamEncryptionConfiguration" not in d
    for call in (lambda: fh.put_record(DeliveryStreamName="from-kinesis", Record={"Data": b"x"}),
                 lambda: fh.put_record_batch(DeliveryStreamName="from-kinesis", Records=[{"Data": b"x"}]),
                 lambda: fh.start_delivery_stream_encryption(DeliveryStreamName="from-kinesis"),
                 lambda: fh.stop_delivery_stream_encryption(DeliveryStreamName="from-kinesis")):
        with pytest.raises(ClientError) as e:
            call()
        assert e.value.response["Error"] == {"Code": "InvalidArgumentException", "Message": NOT_PERMITTED}
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    fh.create_delivery_stream(DeliveryStreamName="direct", ExtendedS3DestinationConfiguration=S3_CONFIG)
    listed = lambda kind: fh.list_delivery_streams(DeliveryStreamType=kind)["DeliveryStreamNames"]
    assert listed("KinesisStreamAsSource") == ["from-kinesis"]
    assert listed("DirectPut") == ["direct"]
    assert sorted(fh.list_delivery_streams()["DeliveryStreamNames"]) == ["direct", "from-kinesis"]
    refusals = [
        (dict(DeliveryStreamType="KinesisStreamAsSource"), "KinesisStreamSourceConfiguration is required"),
        (dict(KinesisStreamSourceConfiguration={"KinesisStreamARN": arn("src"), "RoleARN": ROLE}),
         "KinesisStreamSourceConfiguration is not supported for a DirectPut delivery stream."),
        (dict(DeliveryStreamType="KinesisStreamAsSource",
              KinesisStreamSourceConfiguration={"KinesisStreamARN": arn("src"), "RoleARN": ROLE},
              DeliveryStreamEncryptionConfigurationInput={"KeyType": "AWS_OWNED_CMK"}),
         "DeliveryStreamEncryptionConfigurationInput is not supported for a KinesisStreamAsSource"),
    ]
    for args, message in refusals:
        with pytest.raises(ClientError) as e:
            fh.create_delivery_stream(DeliveryStreamName="refused", ExtendedS3DestinationConfiguration=S3_CONFIG,
                                      **args)
        assert e.value.response["Error"]["Code"] == "InvalidArgumentException"
        assert message in e.value.response["Error"]["Message"]
    # The ARN is checked against the model's pattern, as on AWS.
    with pytest.raises(ClientError) as e:
        server.client(validate=False).create_delivery_stream(
            DeliveryStreamName="bad-arn", DeliveryStreamType="KinesisStreamAsSource",
            KinesisStreamSourceConfiguration={"KinesisStreamARN": "arn:aws:s3:::nope", "RoleARN": ROLE},
            ExtendedS3DestinationConfiguration=S3_CONFIG)
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert "kinesisStreamARN" in e.value.response["Error"]["Message"]


def test_records_of_a_two_shard_stream_arrive_once_in_order_per_key(server, kinesalite):
    kc = kinesalite.create_stream("src", 2)
    fh = server.client()
    source_stream(fh, "from-kinesis", "src")
    # Put before creation: not read (delivery starts at DeliveryStartTimestamp).
    records = produce(kc, "src", 3000)
    assert_once_in_order(wait_delivered(server, len(records)), records)
    metrics = urllib.request.urlopen(server.endpoint + "/metrics").read().decode()
    read = [l for l in metrics.splitlines() if l.startswith("DataReadFromKinesisStream_Records{")]
    assert read and float(read[0].split()[-1]) == len(records), read
    assert any(l.startswith("KinesisMillisBehindLatest{") for l in metrics.splitlines())


def test_records_put_before_the_delivery_stream_existed_are_not_read(server, kinesalite):
    kc = kinesalite.create_stream("src", 1)
    produce(kc, "src", 50, start=0)
    time.sleep(0.05)
    fh = server.client()
    source_stream(fh, "from-kinesis", "src")
    later = produce(kc, "src", 50, start=1000)
    assert_once_in_order(wait_delivered(server, len(later)), later)


def test_a_data_stream_still_being_created_is_read_once_it_is_active(tmp_path):
    # A stream in CREATING lists no shards: the reader must look again soon, not
    # after its minute-long listing interval (found trying the README's example).
    kinesalite = Kinesalite(tmp_path / "slow-kinesalite", create_stream_ms=3000).start()
    try:
        server = start_server(tmp_path, kinesalite)
        kc = kinesalite.client()
        kc.create_stream(StreamName="src", ShardCount=1)
        source_stream(server.client(), "from-kinesis", "src")
        kc.get_waiter("stream_exists").wait(StreamName="src", WaiterConfig={"Delay": 0.2})
        records = produce(kc, "src", 20)
        assert_once_in_order(wait_delivered(server, len(records), timeout=30), records)
        assert server.stop() == 0
    finally:
        kinesalite.stop()


def test_two_delivery_streams_on_one_data_stream_both_receive_every_record(server, kinesalite):
    kc = kinesalite.create_stream("src", 2)
    (server.data_dir / "buckets" / "other").mkdir()
    fh = server.client()
    source_stream(fh, "first", "src")
    source_stream(fh, "second", "src", BucketARN="arn:aws:s3:::other")
    records = produce(kc, "src", 2000)
    assert_once_in_order(wait_delivered(server, len(records)), records)
    assert_once_in_order(wait_delivered(server, len(records), bucket="other"), records)


def test_a_split_and_a_merge_lose_nothing_and_keep_order_per_key(server, kinesalite):
    kc = kinesalite.create_stream("src", 2)
    fh = server.client()
    source_stream(fh, "from-kinesis", "src")
    records = produce(kc, "src", 1000)
    shard = kc.describe_stream(StreamName="src")["StreamDescription"]["Shards"][0]
    low, high = int(shard["HashKeyRange"]["StartingHashKey"]), int(shard["HashKeyRange"]["EndingHashKey"])
    kc.split_shard(StreamName="src", ShardToSplit=shard["ShardId"], NewStartingHashKey=str((low + high) // 2))
    records += produce(kc, "src", 1000, start=1000)
    shards = kc.describe_stream(StreamName="src")["StreamDescription"]["Shards"]
    children = [s for s in shards if s.get("ParentShardId") == shard["ShardId"]]
    assert len(children) == 2
    children.sort(key=lambda s: int(s["HashKeyRange"]["StartingHashKey"]))
    kc.merge_shards(StreamName="src", ShardToMerge=children[0]["ShardId"],
                    AdjacentShardToMerge=children[1]["ShardId"])
    records += produce(kc, "src", 1000, start=2000)
    shards = kc.describe_stream(StreamName="src")["StreamDescription"]["Shards"]
    assert len(shards) == 5, shards
    assert_once_in_order(wait_delivered(server, len(records)), records)


def test_kill_9_while_records_flow_delivers_each_record_exactly_once(tmp_path, kinesalite):
    rng = random.Random(int(os.environ.get("SLUICE_CRASH_SEED", "1")))
    kc = kinesalite.create_stream("src", 2)
    server = start_server(tmp_path, kinesalite)
    source_stream(server.client(), "from-kinesis", "src")
    with Producer(kc, "src", pause=0.02) as records:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.5))
            server.kill()
            server.start()
    lines = wait_delivered(server, len(records), timeout=120)
    assert_once_in_order(lines, records)
    print(f"\nKinesis source kill -9: {KILLS} kills, {len(records)} records, each delivered once; "
          f"kinesalite restarts (not counted as failures): {kinesalite.restarts}")
    assert server.stop() == 0


def test_reading_resumes_where_it_stopped_after_the_kinesis_endpoint_was_unreachable(server, kinesalite):
    kc = kinesalite.create_stream("src", 2)
    fh = server.client()
    source_stream(fh, "from-kinesis", "src")
    records = produce(kc, "src", 500)
    wait_delivered(server, len(records))
    kinesalite.down()
    time.sleep(4)  # several failed reads and back-offs
    assert "Cannot list the Kinesis stream's shards" in server.logs() or "GetRecords failed" in server.logs()
    kinesalite.up()
    kc = kinesalite.client()
    records += produce(kc, "src", 500, start=500)
    assert_once_in_order(wait_delivered(server, len(records)), records)


def test_kpl_aggregates_come_out_as_their_user_records(server, kinesalite):
    kc = kinesalite.create_stream("src", 1)
    fh = server.client()
    source_stream(fh, "from-kinesis", "src")
    users = [(f"key-{i % 5}", record(f"key-{i % 5}", i)) for i in range(600)]
    aggregator = RecordAggregator()
    aggregates = []
    for key, data in users:
        full = aggregator.add_user_record(key, data)
        if full is not None:
            aggregates.append(full.get_contents())
    aggregates.append(aggregator.clear_and_get().get_contents())
    assert all(data[:4] == b"\xf3\x89\x9a\xc2" for _, _, data in aggregates)
    kc.put_records(StreamName="src", Records=[{"PartitionKey": k, "Data": d} for k, _, d in aggregates])
    assert_once_in_order(wait_delivered(server, len(users)), users)


def test_processing_applies_as_for_direct_puts(tmp_path, kinesalite):
    fn = LambdaServer(SECRET)
    try:
        server = start_server(tmp_path, kinesalite, extra_config=(
            f'[lambda]\nendpoint = "{fn.endpoint}"\naccess_key_id = "k"\nsecret_access_key = "{SECRET}"\n'))
        kc = kinesalite.create_stream("src", 2)
        fh = server.client()
        jq = [{"Type": "MetadataExtraction", "Parameters": [
            {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{k: .k}"},
            {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]},
            {"Type": "AppendDelimiterToRecord", "Parameters": []}]
        source_stream(fh, "by-key", "src", Prefix="k=!{partitionKeyFromQuery:k}/",
                      ErrorOutputPrefix="errors/!{firehose:error-output-type}/",
                      DynamicPartitioningConfiguration={"Enabled": True},
                      ProcessingConfiguration={"Enabled": True, "Processors": jq})
        (server.data_dir / "buckets" / "upper").mkdir()
        upper = [{"Type": "Lambda", "Parameters": [{"ParameterName": "LambdaArn", "ParameterValue": FUNCTION}]}]
        source_stream(fh, "upper", "src", BucketARN="arn:aws:s3:::upper",
                      ProcessingConfiguration={"Enabled": True, "Processors": upper})
        records = [(f"key-{i % 3}", json.dumps({"k": f"key-{i % 3}", "n": i}).encode()) for i in range(300)]
        put(kc, "src", records)
        for key in ("key-0", "key-1", "key-2"):
            lines = wait_delivered(server, 100, prefix=f"k={key}")
            assert [json.loads(l)["n"] for l in lines] == [i for i in range(300) if f"key-{i % 3}" == key]
        # Lambda saw each record's data (no delimiter here: one run of JSON objects).
        deadline = time.time() + 60
        while b"".join(delivered(server, "upper")).count(b'{"K": "KEY-') < 300 and time.time() < deadline:
            time.sleep(0.2)
        flush(server)
        body = b"".join(delivered(server, "upper"))
        assert body.count(b'{"K": "KEY-') == 300, body[:200]
        # The event says where each record came from, as Firehose's does.
        shards = {s["ShardId"] for s in kc.describe_stream(StreamName="src")["StreamDescription"]["Shards"]}
        events = [i["event"] for i in fn.invocations]
        assert events and all(e["sourceKinesisStreamArn"] == arn("src") for e in events)
        seen = []
        for e in events:
            for r in e["records"]:
                meta = r["kinesisRecordMetadata"]
                assert meta["shardId"] in shards and meta["subsequenceNumber"] == 0
                assert meta["approximateArrivalTimestamp"] == r["approximateArrivalTimestamp"]
                assert meta["partitionKey"] == json.loads(base64.b64decode(r["data"]))["k"]
                seen.append(meta["sequenceNumber"])
        assert len(set(seen)) == 300
        assert server.stop() == 0
    finally:
        fn.close()


def test_cluster_mode_reads_on_the_owner_and_survives_node_kills(tmp_path, kinesalite, nats):
    """Three nodes on NATS JetStream: the node that owns the delivery reads the data
    stream; killing nodes, or pausing them past their lease (a former owner that
    wakes up mid-read and appends what it read), hands reading over with delivery,
    and each record still lands once."""
    from cluster import SluiceCluster
    rng = random.Random(int(os.environ.get("SLUICE_CRASH_SEED", "1")))
    kc = kinesalite.create_stream("src", 2)
    cluster = SluiceCluster(tmp_path / "cluster", nats, env={
        "SLUICE_KINESIS_ENDPOINT": kinesalite.endpoint, "SLUICE_BUFFER_INTERVAL_MAX": "1"}).start()
    (cluster.data_dir / "buckets" / "bucket").mkdir()
    try:
        source_stream(cluster.nodes[0].client(), "from-kinesis", "src")
        with Producer(kc, "src", pause=0.05) as records:
            for i in range(max(4, KILLS // 2)):
                time.sleep(rng.uniform(1.0, 3.0))
                node = rng.choice(cluster.nodes)
                if i % 2:
                    node.proc.send_signal(signal.SIGSTOP)
                    time.sleep(5)  # past the 2 s lease: another node takes over
                    node.proc.send_signal(signal.SIGCONT)
                else:
                    node.kill()
                    node.start()
        deadline = time.time() + 120
        while len(delivered(cluster)) < len(records) and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(3)  # a duplicate would have landed by now
        logs = "\n".join(n.logs()[-2000:] for n in cluster.nodes)
        lines = delivered(cluster)
        assert len(lines) >= len(records), f"{len(lines)} of {len(records)} delivered:\n{logs}"
        assert_once_in_order(lines, records, objects=delivered_objects(cluster))
        assert cluster.stop() == 0
    finally:
        cluster.kill()


def test_a_declared_kinesis_sourced_stream_reads_and_its_source_cannot_change(tmp_path, kinesalite):
    kc = kinesalite.create_stream("src", 1)
    kinesalite.create_stream("other", 1)
    declaration = tmp_path / "streams.json"

    def declare(source):
        declaration.write_text(json.dumps({"buckets": ["bucket"], "streams": [{
            "DeliveryStreamName": "declared", "DeliveryStreamType": "KinesisStreamAsSource",
            "KinesisStreamSourceConfiguration": {"KinesisStreamARN": arn(source), "RoleARN": ROLE},
            "ExtendedS3DestinationConfiguration": S3_CONFIG}]}))

    declare("src")
    env = {"SLUICE_KINESIS_ENDPOINT": kinesalite.endpoint, "SLUICE_BUFFER_INTERVAL_MAX": "1",
           "SLUICE_STREAMS": str(declaration)}
    server = Server(tmp_path / "data", env=env).start()
    records = produce(kc, "src", 100)
    assert_once_in_order(wait_delivered(server, len(records)), records)
    assert server.stop() == 0
    server.start()  # the same declaration: nothing changes, reading resumes
    records += produce(kc, "src", 100, start=100)
    assert_once_in_order(wait_delivered(server, len(records)), records)
    assert server.stop() == 0
    declare("other")
    with pytest.raises(RuntimeError) as e:
        server.start()
    assert "a stream's source cannot change" in str(e.value)


def test_an_http_endpoint_destination_receives_every_record_once(tmp_path, kinesalite):
    from receiver import Receiver
    endpoint = Receiver(mode="ok")  # plain http, allowed below
    try:
        server = start_server(tmp_path, kinesalite, extra_config="[http]\nallow_http = true\n")
        kc = kinesalite.create_stream("src", 2)
        fh = server.client()
        fh.create_delivery_stream(
            DeliveryStreamName="to-http", DeliveryStreamType="KinesisStreamAsSource",
            KinesisStreamSourceConfiguration={"KinesisStreamARN": arn("src"), "RoleARN": ROLE},
            HttpEndpointDestinationConfiguration={
                "EndpointConfiguration": {"Url": endpoint.url, "Name": "receiver"},
                "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 0},
                "S3Configuration": S3_CONFIG})
        wait_active(fh, "to-http")
        records = produce(kc, "src", 1000)
        deadline = time.time() + 60
        received = []
        while len(received) < len(records) and time.time() < deadline:
            time.sleep(0.2)
            with endpoint.lock:
                received = [base64.b64decode(r["data"]) for q in endpoint.requests for r in q["body"]["records"]]
        flush(server)
        with endpoint.lock:
            received = [base64.b64decode(r["data"]) for q in endpoint.requests for r in q["body"]["records"]]
        assert_once_in_order(received, records)
        assert server.stop() == 0
    finally:
        endpoint.close()
