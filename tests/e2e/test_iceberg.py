"""The Iceberg destination (issue 14): records appended to a table that pyiceberg created in a
SQL catalog on SQLite, read back by pyiceberg; records that do not fit the table under the error
prefix; what Sluice does not do refused at create; and kill -9 during commits, after which every
acknowledged record is in the table exactly once."""

import base64
import json
import random
import threading
import time

import pytest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.schema import Schema
from pyiceberg.types import BooleanType, LongType, NestedField, StringType, TimestamptzType

from conftest import S3_CONFIG, Server, wait_active
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
