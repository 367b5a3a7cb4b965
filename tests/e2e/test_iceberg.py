"""The Iceberg destination (issue 14): records appended to a table that pyiceberg created in a
SQL catalog on SQLite, read back by pyiceberg; records that do not fit the table under the error
prefix; what Sluice does not do refused at create; and kill -9 during commits, after which every
acknowledged record is in the table exactly once."""

import base64
import json
import random
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import BooleanType, LongType, NestedField, StringType, TimestamptzType

from conftest import S3_CONFIG, Server, free_port, wait_active
from test_controls import call
from test_delivery import bucket, hints, objects


def catalog(root):
    return SqlCatalog("sluice", uri=f"sqlite:///{root}/catalog.db", warehouse=f"file://{root}/warehouse")


def make_table(root, name="events"):
    c = catalog(root)
    if ("lake",) not in c.list_namespaces():
        c.create_namespace("lake")
    return c.create_table(f"lake.{name}", schema=Schema(
        NestedField(1, "id", LongType(), required=True),
        NestedField(2, "user", StringType()),
        NestedField(3, "at", TimestamptzType()),
        NestedField(4, "ok", BooleanType()),
    ))


def iceberg_config(root):
    return f'[iceberg]\nuri = "sqlite:///{root}/catalog.db"\nwarehouse = "file://{root}/warehouse"\n'


def destination(table="events", **extra):
    return dict(
        RoleARN="arn:aws:iam::000000000000:role/firehose",
        CatalogConfiguration={"CatalogARN": "arn:aws:glue:us-east-1:000000000000:catalog"},
        S3Configuration=S3_CONFIG,
        DestinationTableConfigurationList=[{"DestinationDatabaseName": "lake", "DestinationTableName": table}],
        BufferingHints=hints(1, 0),
        **extra,
    )


def rows(root, name="events"):
    return catalog(root).load_table(f"lake.{name}").scan().to_arrow().to_pylist()


@pytest.fixture
def lake(tmp_path):
    root = tmp_path / "lake"
    root.mkdir()
    make_table(root)
    server = Server(tmp_path / "data", extra_config=iceberg_config(root)).start()
    yield root, server
    if server.proc.poll() is None:
        assert server.stop() == 0, server.log.read_text()


def test_records_are_appended_and_misfits_go_to_the_error_prefix(lake):
    root, server = lake
    out = bucket(server)
    fh = server.client()
    fh.create_delivery_stream(DeliveryStreamName="events", IcebergDestinationConfiguration=destination())
    wait_active(fh, "events")
    d = fh.describe_delivery_stream(DeliveryStreamName="events")["DeliveryStreamDescription"]
    described = d["Destinations"][0]["IcebergDestinationDescription"]
    assert described["CatalogConfiguration"]["CatalogARN"] == "arn:aws:glue:us-east-1:000000000000:catalog"
    assert described["S3DestinationDescription"]["BucketARN"] == "arn:aws:s3:::bucket"
    assert described["S3BackupMode"] == "FailedDataOnly"
    good = [{"id": i, "User": f"u{i}", "at": "2024-05-01T10:00:00Z", "ok": i % 2 == 0} for i in range(5)]
    bad = [b"not json", b'{"user": "no id"}']
    fh.put_record_batch(DeliveryStreamName="events",
                        Records=[{"Data": json.dumps(r).encode()} for r in good] + [{"Data": b} for b in bad])
    status, body = call(server, "POST", "/_sluice/flush")
    assert status == 200 and body["Delivered"], body
    got = sorted(rows(root), key=lambda r: r["id"])
    assert [r["id"] for r in got] == list(range(5))
    assert got[1]["user"] == "u1" and got[1]["ok"] is False and got[1]["at"].isoformat() == "2024-05-01T10:00:00+00:00"
    [error_key] = [k for k in objects(out) if k.startswith("iceberg-failed/")]
    lines = [json.loads(line) for line in (out / error_key).read_text().splitlines()]
    assert sorted(base64.b64decode(line["rawData"]) for line in lines) == sorted(bad)
    assert {line["errorCode"] for line in lines} == {"DataFormatConversion.ParseError",
                                                      "DataFormatConversion.MalformedData"}
    snapshots = catalog(root).load_table("lake.events").snapshots()
    assert len(snapshots) == 1 and "sluice.batch-id" in snapshots[0].summary.additional_properties
    metrics = urllib.request.urlopen(server.endpoint + "/metrics").read().decode()
    for name, n in [("IncomingRowCount", 7), ("SuccessfulRowCount", 5), ("FailedRowCount", 2), ("Success", 1)]:
        assert f'DeliveryToIceberg_{name}{{DeliveryStreamName="events"}} {n}\n' in metrics, (name, metrics)


def test_what_sluice_cannot_do_is_refused_at_create(lake):
    _, server = lake
    fh = server.client()
    cases = [
        (destination(table="missing"), "lake.missing does not exist"),
        (dict(destination(), DestinationTableConfigurationList=[
            {"DestinationDatabaseName": "lake", "DestinationTableName": "events", "UniqueKeys": ["id"]}]),
         "UniqueKeys"),
        (dict(destination(), DestinationTableConfigurationList=[]), "at least one table"),
        (dict(destination(), DestinationTableConfigurationList=[
            {"DestinationDatabaseName": "lake", "DestinationTableName": "events"},
            {"DestinationDatabaseName": "lake", "DestinationTableName": "other"}]), "lake.other does not exist"),
    ]
    for config, needle in cases:
        with pytest.raises(fh.exceptions.InvalidArgumentException) as e:
            fh.create_delivery_stream(DeliveryStreamName="refused", IcebergDestinationConfiguration=config)
        assert needle in e.value.response["Error"]["Message"], e.value.response["Error"]


def test_records_are_routed_to_the_tables_their_metadata_names(lake):
    """Firehose's routing: the MetadataExtraction query (or a Lambda function's
    otfMetadata) names each record's database, table and operation."""
    root, server = lake
    make_table(root, "audit")
    out = bucket(server)
    fh = server.client()
    query = '{destinationTableName: .table, operation: (.op // "insert")}'
    fh.create_delivery_stream(DeliveryStreamName="routed", IcebergDestinationConfiguration=dict(
        destination(),
        DestinationTableConfigurationList=[{"DestinationDatabaseName": "lake", "DestinationTableName": "events"},
                                           {"DestinationDatabaseName": "lake", "DestinationTableName": "audit"}],
        ProcessingConfiguration={"Enabled": True, "Processors": [{"Type": "MetadataExtraction", "Parameters": [
            {"ParameterName": "MetadataExtractionQuery", "ParameterValue": query},
            {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]}]}))
    wait_active(fh, "routed")
    records = [
        {"id": 1, "table": "events"}, {"id": 2, "table": "audit"}, {"id": 3, "table": "events", "op": "INSERT"},
        {"id": 4, "table": "audit"},
        # Nowhere to go: no table named with two listed, a table that does not
        # exist, and an operation that needs a row-level change.
        {"id": 5}, {"id": 6, "table": "nope"}, {"id": 7, "table": "audit", "op": "delete"},
    ]
    fh.put_record_batch(DeliveryStreamName="routed", Records=[{"Data": json.dumps(r).encode()} for r in records])
    status, body = call(server, "POST", "/_sluice/flush")
    assert status == 200 and body["Delivered"], body
    assert sorted(r["id"] for r in rows(root, "events")) == [1, 3]
    assert sorted(r["id"] for r in rows(root, "audit")) == [2, 4]
    [error_key] = [k for k in objects(out) if k.startswith("iceberg-failed/")]
    lines = [json.loads(line) for line in (out / error_key).read_text().splitlines()]
    codes = {json.loads(base64.b64decode(line["rawData"]))["id"]: line["errorCode"] for line in lines}
    assert codes == {5: "Iceberg.NoDestinationTable", 6: "Iceberg.TableNotFound", 7: "Iceberg.UnsupportedOperation"}
    # One snapshot per table, each carrying the batch's id.
    for name in ("events", "audit"):
        [snapshot] = catalog(root).load_table(f"lake.{name}").snapshots()
        assert "sluice.batch-id" in snapshot.summary.additional_properties


def test_a_partitioned_table_in_an_s3_bucket_gets_each_row_in_its_partition(tmp_path, monkeypatch):
    """A table pyiceberg created at an s3:// location (moto's S3), partitioned by identity and
    day: Sluice writes its data and metadata files to the bucket `[s3]` names, each row under its
    partition's path, and pyiceberg reads every record once (a scan filtered by partition too)."""
    from pyiceberg.expressions import EqualTo
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import DayTransform, IdentityTransform
    from test_s3 import moto_server, retry_until_up
    import boto3

    import pyarrow.fs

    # pyarrow's S3 client uploads even a small file in parts, and moto fails the completion
    # of pyarrow's uploads (INTERNAL_FAILURE): pyiceberg's table creation here writes its
    # metadata with one PUT instead (allow_delayed_open, which pyiceberg does not expose).
    plain = pyarrow.fs.S3FileSystem
    monkeypatch.setattr(pyarrow.fs, "S3FileSystem", lambda **kw: plain(allow_delayed_open=True, **kw))
    root = tmp_path / "lake"
    root.mkdir()
    with moto_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        retry_until_up(lambda: s3.create_bucket(Bucket="lake"))
        s3.create_bucket(Bucket="bucket")  # S3Configuration's, for what fails
        s3_props = {"s3.endpoint": endpoint, "s3.access-key-id": "test", "s3.secret-access-key": "test",
                    "s3.region": "us-east-1"}
        c = SqlCatalog("sluice", uri=f"sqlite:///{root}/catalog.db", warehouse="s3://lake/warehouse", **s3_props)
        c.create_namespace("lake")
        c.create_table("lake.clicks", schema=Schema(
            NestedField(1, "id", LongType(), required=True),
            NestedField(2, "user", StringType()),
            NestedField(3, "at", TimestamptzType()),
        ), partition_spec=PartitionSpec(
            PartitionField(source_id=2, field_id=1000, transform=IdentityTransform(), name="user"),
            PartitionField(source_id=3, field_id=1001, transform=DayTransform(), name="at_day"),
        ))
        server = Server(tmp_path / "data", extra_config=(
            f'[s3]\nendpoint = "{endpoint}"\n'
            f'[iceberg]\nuri = "sqlite:///{root}/catalog.db"\nwarehouse = "s3://lake/warehouse"\n'),
            env={"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}).start()
        try:
            fh = server.client()
            fh.create_delivery_stream(DeliveryStreamName="clicks",
                                      IcebergDestinationConfiguration=destination(table="clicks"))
            wait_active(fh, "clicks")
            users = ["ada", "bo", "cy"]
            records = [{"id": i, "user": users[i % 3], "at": f"2024-05-0{1 + i % 2}T10:00:00Z"} for i in range(30)]
            records.append({"id": 30})  # no user, no time: the null partition
            fh.put_record_batch(DeliveryStreamName="clicks",
                                Records=[{"Data": json.dumps(r).encode()} for r in records])
            status, body = call(server, "POST", "/_sluice/flush")
            assert status == 200 and body["Delivered"], body
        finally:
            assert server.stop() == 0, server.log.read_text()
        table = c.load_table("lake.clicks")
        got = table.scan().to_arrow().to_pylist()
        assert sorted(r["id"] for r in got) == list(range(31))
        ada = table.scan(row_filter=EqualTo("user", "ada")).to_arrow().to_pylist()
        assert sorted(r["id"] for r in ada) == list(range(0, 30, 3))
        files = table.inspect.files().to_pylist()
        # 3 users x 2 days, and the null partition.
        assert len({(f["partition"]["user"], f["partition"]["at_day"]) for f in files}) == 7, files
        for f in files:
            assert f["file_path"].startswith("s3://lake/warehouse/lake/clicks/data/user="), f["file_path"]
        stored = {o["Key"] for o in s3.list_objects_v2(Bucket="lake")["Contents"]}
        assert {f["file_path"].removeprefix("s3://lake/") for f in files} <= stored
        assert table.metadata_location.removeprefix("s3://lake/") in stored
        [snapshot] = table.snapshots()
        assert "sluice.batch-id" in snapshot.summary.additional_properties


@contextmanager
def rest_catalog(root, token):
    """The test REST catalog (iceberg_rest.py: pyiceberg's SQL catalog on `root`'s SQLite file,
    served over the REST protocol), on a free port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "iceberg_rest.py"), str(port),
                             f"{root}/catalog.db", f"file://{root}/warehouse", "--token", token],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout.readline().startswith("listening"), proc.stdout.read()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


def test_records_are_appended_through_a_rest_catalog(tmp_path):
    """`catalog = "rest"`: Sluice loads and commits through the Iceberg REST protocol with a
    bearer token; pyiceberg's REST client reads the table back through the same server."""
    from pyiceberg.catalog.rest import RestCatalog

    root = tmp_path / "lake"
    root.mkdir()
    make_table(root)
    with rest_catalog(root, "s3cr3t") as uri:
        server = Server(tmp_path / "data", extra_config=(
            f'[iceberg]\ncatalog = "rest"\nuri = "{uri}"\ntoken = "s3cr3t"\n')).start()
        try:
            fh = server.client()
            with pytest.raises(fh.exceptions.InvalidArgumentException) as e:
                fh.create_delivery_stream(DeliveryStreamName="nope",
                                          IcebergDestinationConfiguration=destination(table="missing"))
            assert "lake.missing does not exist" in e.value.response["Error"]["Message"]
            fh.create_delivery_stream(DeliveryStreamName="events", IcebergDestinationConfiguration=destination())
            wait_active(fh, "events")
            for batch in range(3):
                fh.put_record_batch(DeliveryStreamName="events", Records=[
                    {"Data": json.dumps({"id": batch * 10 + i, "user": f"u{i}"}).encode()} for i in range(10)])
                status, body = call(server, "POST", "/_sluice/flush")
                assert status == 200 and body["Delivered"], body
        finally:
            assert server.stop() == 0, server.log.read_text()
        table = RestCatalog("rest", uri=uri, token="s3cr3t").load_table("lake.events")
        assert sorted(r["id"] for r in table.scan().to_arrow().to_pylist()) == list(range(30))
        assert len(table.snapshots()) == 3
        assert all("sluice.batch-id" in s.summary.additional_properties for s in table.snapshots())


def test_a_rest_catalog_that_refuses_sluice_keeps_the_records_until_it_accepts(tmp_path):
    """A token the REST catalog no longer takes (401): the batch is retried, nothing appended
    and nothing dropped; the same records are appended once Sluice restarts with the right one."""
    root = tmp_path / "lake"
    root.mkdir()
    make_table(root)
    with rest_catalog(root, "right") as uri:
        config = f'[iceberg]\ncatalog = "rest"\nuri = "{uri}"\ntoken = "right"\n'
        server = Server(tmp_path / "data", extra_config=config).start()
        fh = server.client()
        fh.create_delivery_stream(DeliveryStreamName="events", IcebergDestinationConfiguration=destination())
        wait_active(fh, "events")
        assert server.stop() == 0, server.log.read_text()
        server = Server(tmp_path / "data", extra_config=config.replace("right", "wrong")).start()
        server.client().put_record_batch(DeliveryStreamName="events",
                                         Records=[{"Data": json.dumps({"id": i}).encode()} for i in range(5)])
        time.sleep(2)
        assert rows(root) == []
        assert server.stop() == 0, server.log.read_text()
        server = Server(tmp_path / "data", extra_config=config).start()
        try:
            status, body = call(server, "POST", "/_sluice/flush")
            assert status == 200 and body["Delivered"], body
        finally:
            assert server.stop() == 0, server.log.read_text()
        assert sorted(r["id"] for r in rows(root)) == list(range(5))


def test_three_nodes_append_to_one_table_each_record_once(request, tmp_path):
    """Cluster mode: three nodes with one `[iceberg]` (a SQLite catalog and a warehouse all of
    them reach), puts spread over the nodes; the node that owns the stream's delivery appends,
    and every record is in the table once."""
    from cluster import SluiceCluster

    root = tmp_path / "lake"
    root.mkdir()
    make_table(root)
    cluster = SluiceCluster(tmp_path / "cluster", request.getfixturevalue("nats"),
                            extra_config=iceberg_config(root)).start()
    request.addfinalizer(cluster.close)
    fh = cluster.client()
    fh.create_delivery_stream(DeliveryStreamName="events", IcebergDestinationConfiguration=destination())
    wait_active(fh, "events")
    for batch in range(12):
        fh.put_record_batch(DeliveryStreamName="events", Records=[
            {"Data": json.dumps({"id": batch * 25 + i, "user": f"n{batch % 3}"}).encode()} for i in range(25)])
    deadline = time.time() + 60
    while len(got := rows(root)) < 300:
        assert time.time() < deadline, f"{len(got)} of 300 rows appended"
        time.sleep(0.5)
    assert sorted(r["id"] for r in got) == list(range(300)), "each record once"
    snapshots = catalog(root).load_table("lake.events").snapshots()
    ids = [s.summary.additional_properties["sluice.batch-id"] for s in snapshots]
    assert len(ids) == len(set(ids)), "one snapshot per batch"
    assert cluster.stop() == 0, cluster.logs()


def test_a_server_without_an_iceberg_catalog_refuses_iceberg_streams(tmp_path):
    server = Server(tmp_path / "data").start()
    try:
        fh = server.client()
        with pytest.raises(fh.exceptions.InvalidArgumentException) as e:
            fh.create_delivery_stream(DeliveryStreamName="x", IcebergDestinationConfiguration=destination())
        assert "[iceberg]" in e.value.response["Error"]["Message"]
    finally:
        assert server.stop() == 0


def test_kill_9_during_commits_leaves_every_acknowledged_record_once(tmp_path):
    """Sluice is killed at random moments while batches are committed (interval 0, small
    batches: commits all the time), each batch routed over two tables (two commits); after
    each restart the batch in flight is redone, and a table whose snapshot already carries
    its id appends nothing again."""
    root = tmp_path / "lake"
    root.mkdir()
    make_table(root)
    make_table(root, "audit")
    server = Server(tmp_path / "data", extra_config=iceberg_config(root)).start()
    fh = server.client()
    fh.create_delivery_stream(DeliveryStreamName="events", IcebergDestinationConfiguration=dict(
        destination(),
        DestinationTableConfigurationList=[{"DestinationDatabaseName": "lake", "DestinationTableName": "events"},
                                           {"DestinationDatabaseName": "lake", "DestinationTableName": "audit"}],
        ProcessingConfiguration={"Enabled": True, "Processors": [{"Type": "MetadataExtraction", "Parameters": [
            {"ParameterName": "MetadataExtractionQuery", "ParameterValue": "{destinationTableName: .table}"},
            {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]}]}))
    wait_active(fh, "events")
    acked, next_id, kills = set(), 0, int(__import__("os").environ.get("SLUICE_ICEBERG_KILLS", "10"))
    rng = random.Random(14)
    try:
        for kill in range(kills):
            stop = threading.Event()

            def produce():
                nonlocal next_id
                client = server.client()
                while not stop.is_set():
                    ids = list(range(next_id, next_id + 50))
                    next_id += 50
                    try:
                        client.put_record_batch(DeliveryStreamName="events", Records=[
                            {"Data": json.dumps({"id": i, "user": "k", "table": ("events", "audit")[i % 2]}).encode()}
                            for i in ids])
                    except Exception:
                        return  # killed mid-request: not acknowledged
                    acked.update(ids)

            producer = threading.Thread(target=produce)
            producer.start()
            time.sleep(rng.uniform(0.3, 1.5))
            server.kill()
            stop.set()
            producer.join()
            server.start()
        status, body = call(server, "POST", "/_sluice/flush")
        assert status == 200 and body["Delivered"], body
        events, audit = [r["id"] for r in rows(root)], [r["id"] for r in rows(root, "audit")]
        assert all(i % 2 == 0 for i in events) and all(i % 2 == 1 for i in audit), "each in its table"
        ids = events + audit
        assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} records appended twice"
        missing = acked - set(ids)
        assert not missing, f"{len(missing)} acknowledged records not in the table"
        print(f"\niceberg kill -9: {kills} kills, {len(acked)} acknowledged over two tables, each in its table once")
        assert len(acked) > 0
    finally:
        if server.proc.poll() is None:
            assert server.stop() == 0, server.log.read_text()
