"""Data format conversion (issue 14): JSON records in, Parquet and ORC objects out, read back
by independent readers (pyarrow, DuckDB, pyarrow's ORC reader); schemas from tables declared in the config file and
from moto's Glue server; records that do not fit go to `format-conversion-failed` while the
rest of the batch is delivered; Firehose's create-time rules, through boto3."""

import base64
import json
import time

import boto3
import botocore.exceptions
import pyarrow.parquet as pq
import pytest

from conftest import S3_CONFIG, make_stream, start_backend
from test_delivery import KEY, bucket, hints, objects
from test_s3 import moto_server, retry_until_up, wait_for_keys

BACKENDS = ("embedded", "cluster")

# A table declared in Sluice's config: a column of each kind, nested ones too.
EVENTS_TABLE = """
[[glue.tables]]
database = "lake"
name = "events"
columns = [
  { name = "id", type = "bigint" },
  { name = "user", type = "string" },
  { name = "amount", type = "decimal(12,2)" },
  { name = "at", type = "timestamp" },
  { name = "day", type = "date" },
  { name = "ok", type = "boolean" },
  { name = "tags", type = "array<string>" },
  { name = "attrs", type = "map<string,int>" },
  { name = "geo", type = "struct<city:string,lat:double>" },
]
"""


def conversion(database="lake", table="events", deserializer=None, serializer=None, **schema):
    return {
        "SchemaConfiguration": dict(RoleARN="arn:aws:iam::000000000000:role/glue", DatabaseName=database,
                                    TableName=table, **schema),
        "InputFormatConfiguration": {"Deserializer": deserializer or {"OpenXJsonSerDe": {}}},
        "OutputFormatConfiguration": {"Serializer": serializer or {"ParquetSerDe": {}}},
    }


def converting(**block):
    return dict(S3_CONFIG, BufferingHints=hints(64, 0), DataFormatConversionConfiguration=conversion(**block))


def wait_for(bucket_dir, predicate, timeout=15):
    deadline = time.time() + timeout
    while not predicate(found := objects(bucket_dir)):
        assert time.time() < deadline, f"not there in time: {found}"
        time.sleep(0.1)
    return found


@pytest.fixture
def lake(request, backend, tmp_path):
    server = start_backend(request, tmp_path, extra_config=EVENTS_TABLE)
    yield server
    try:
        if server.proc.poll() is None:
            assert server.stop() == 0, server.log.read_text()
    finally:
        if hasattr(server, "close"):
            server.close()


def test_records_become_parquet_rows_and_misfits_go_to_the_error_prefix(lake):
    out = bucket(lake)
    fh = lake.client()
    make_stream(fh, "events", ExtendedS3DestinationConfiguration=converting())
    good = [
        {"id": 1, "User": "ada", "amount": "12.50", "at": "2024-05-01T10:00:00Z", "day": "2024-05-01", "ok": True,
         "tags": ["a", "b"], "attrs": {"x": 1}, "geo": {"City": "Oslo", "lat": 59.9}, "dropped": "extra key"},
        {"id": 2, "at": 1714557600, "amount": 0.5},
    ]
    records = [json.dumps(r).encode() for r in good]
    # Two objects in one record are two rows.
    records.append(b'{"id": 3}{"id": 4, "user": "two in one"}')
    bad = [b"not json at all", b'{"id": "three"}', b'{"amount": 12345678901234}']
    fh.put_record_batch(DeliveryStreamName="events", Records=[{"Data": r} for r in records + bad])
    found = wait_for(out, lambda f: any(k.endswith(".parquet") for k in f)
                     and any(k.startswith("format-conversion-failed/") for k in f))
    [data_key] = [k for k in found if k.endswith(".parquet")]
    assert KEY.match(data_key.rsplit("/", 1)[-1])["ext"] == ".parquet", data_key
    table = pq.read_table(out / data_key)
    assert str(table.schema.field("amount").type) == "decimal128(12, 2)"
    assert str(table.schema.field("at").type) == "timestamp[ms, tz=UTC]"
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == [1, 2, 3, 4]
    first = rows[0]
    assert first["user"] == "ada" and str(first["amount"]) == "12.50" and first["ok"] is True
    assert first["at"].isoformat() == "2024-05-01T10:00:00+00:00"
    assert str(first["day"]) == "2024-05-01" and first["tags"] == ["a", "b"] and first["attrs"] == [("x", 1)]
    assert first["geo"] == {"city": "Oslo", "lat": 59.9}
    assert "dropped" not in table.column_names
    assert rows[1]["at"].isoformat() == "2024-05-01T10:00:00+00:00" and rows[1]["user"] is None
    assert rows[3]["user"] == "two in one"
    # The misfits, each as Firehose's error record, with the table.
    [error_key] = [k for k in found if k.startswith("format-conversion-failed/")]
    lines = [json.loads(line) for line in (out / error_key).read_text().splitlines()]
    assert sorted(base64.b64decode(line["rawData"]) for line in lines) == sorted(bad)
    codes = {base64.b64decode(line["rawData"]): line["lastErrorCode"] for line in lines}
    assert codes[b"not json at all"] == "DataFormatConversion.ParseError"
    assert codes[b'{"id": "three"}'] == "DataFormatConversion.MalformedData"
    for line in lines:
        assert line["dataCatalogTable"]["databaseName"] == "lake"
        assert line["dataCatalogTable"]["tableName"] == "events"
        assert line["lastErrorMessage"] and line["attemptsMade"] == 1 and line["arrivalTimestamp"] > 0


def test_duckdb_reads_what_each_serializer_option_wrote(lake):
    import duckdb
    out = bucket(lake)
    fh = lake.client()
    for compression in ("UNCOMPRESSED", "GZIP", "SNAPPY"):
        serializer = {"ParquetSerDe": {"Compression": compression, "EnableDictionaryCompression": True,
                                       "WriterVersion": "V2", "PageSizeBytes": 65536}}
        config = dict(converting(serializer=serializer), Prefix=f"{compression}/", FileExtension=".pq")
        make_stream(fh, compression.lower(), ExtendedS3DestinationConfiguration=config)
        fh.put_record_batch(DeliveryStreamName=compression.lower(),
                            Records=[{"Data": json.dumps({"id": i, "user": f"u{i % 3}"}).encode()} for i in range(500)])
    found = wait_for(out, lambda f: len(f) == 3)
    for key in found:
        assert key.endswith(".pq"), key
        path = str(out / key)
        [(n, total, users)] = duckdb.sql(f"select count(*), sum(id), count(distinct user) from read_parquet('{path}')").fetchall()
        assert (n, total, users) == (500, sum(range(500)), 3), key
        [(codec,)] = duckdb.sql(f"select distinct compression from parquet_metadata('{path}')").fetchall()
        assert codec == key.split("/")[0], key


def test_orc_objects_read_back_with_each_compression_and_misfits_go_to_the_error_prefix(lake):
    import pyarrow.orc as orc
    out = bucket(lake)
    fh = lake.client()
    for compression in ("NONE", "ZLIB", "SNAPPY"):
        serializer = {"OrcSerDe": {"Compression": compression, "StripeSizeBytes": 8388608, "RowIndexStride": 10000,
                                   "BloomFilterColumns": ["user"], "FormatVersion": "V0_11"}}
        config = dict(converting(serializer=serializer), Prefix=f"{compression}/")
        make_stream(fh, compression.lower(), ExtendedS3DestinationConfiguration=config)
        records = [{"id": i, "user": f"u{i % 3}", "amount": f"{i}.25", "at": 1714557600 + i, "tags": [str(i)],
                    "attrs": {"n": i}, "geo": {"city": "Oslo", "lat": i / 4}} for i in range(498)]
        # Not JSON; and a timestamp ORC readers would read a second off (ORC-763).
        bad = [b"not json", b'{"id": 1, "at": "1969-12-31T23:59:59.500Z"}']
        fh.put_record_batch(DeliveryStreamName=compression.lower(),
                            Records=[{"Data": json.dumps(r).encode()} for r in records] + [{"Data": b} for b in bad])
    found = wait_for(out, lambda f: sum(k.endswith(".orc") for k in f) == 3
                     and sum("/format-conversion-failed/" in k for k in f) == 3)
    for key in [k for k in found if k.endswith(".orc")]:
        assert KEY.match(key.rsplit("/", 1)[-1])["ext"] == ".orc", key
        f = orc.ORCFile(str(out / key))
        expected = key.split("/")[0]
        assert f.compression == ("UNCOMPRESSED" if expected == "NONE" else expected), (key, f.compression)
        assert str(f.file_version) == "0.11" and f.nrows == 498
        assert str(f.schema.field("amount").type) == "decimal128(12, 2)"
        rows = sorted(f.read().to_pylist(), key=lambda r: r["id"])
        assert [r["id"] for r in rows] == list(range(498))
        seventh = rows[7]
        assert seventh["user"] == "u1" and str(seventh["amount"]) == "7.25" and seventh["tags"] == ["7"]
        assert seventh["at"].isoformat() == "2024-05-01T10:00:07" and seventh["attrs"] == [("n", 7)]
        assert seventh["geo"] == {"city": "Oslo", "lat": 1.75} and seventh["ok"] is None
    for key in [k for k in found if "/format-conversion-failed/" in k]:
        lines = [json.loads(line) for line in (out / key).read_text().splitlines()]
        assert sorted(line["lastErrorCode"] for line in lines) == [
            "DataFormatConversion.MalformedData", "DataFormatConversion.ParseError"], lines
        assert any("ORC-763" in line["lastErrorMessage"] for line in lines), lines


def test_a_missing_table_is_refused_at_create_and_rules_are_checked_in_aws_order(lake):
    fh = lake.client()
    with pytest.raises(fh.exceptions.InvalidArgumentException) as e:
        fh.create_delivery_stream(DeliveryStreamName="nowhere",
                                  ExtendedS3DestinationConfiguration=converting(table="missing"))
    message = e.value.response["Error"]["Message"]
    assert "lake.missing" in message and "is not declared in Sluice's configuration ([[glue.tables]])" in message
    assert "nowhere" not in fh.list_delivery_streams()["DeliveryStreamNames"]
    cases = [
        (dict(converting(), CompressionFormat="GZIP", BufferingHints=hints(1, 0)),
         "The S3 destination's compression format must be set to UNCOMPRESSED"),
        (dict(converting(), BufferingHints=hints(5, 0)),
         "BufferingHints.SizeInMBs must be at least 64 when data format conversion is enabled."),
        (dict(S3_CONFIG, DataFormatConversionConfiguration={"Enabled": True}),
         "InputFormatConfiguration must not be null"),
        (dict(converting(deserializer={"OpenXJsonSerDe": {}, "HiveJsonSerDe": {}})),
         "More than one deserializer specified. Only one may be chosen."),
    ]
    for config, message in cases:
        with pytest.raises(fh.exceptions.InvalidArgumentException) as e:
            fh.create_delivery_stream(DeliveryStreamName="rules", ExtendedS3DestinationConfiguration=config)
        assert e.value.response["Error"]["Message"].startswith(message), e.value.response["Error"]
    # The model's own bounds come first, as botocore sends them (no client validation).
    raw = lake.client(validate=False)
    small = converting(serializer={"ParquetSerDe": {"BlockSizeBytes": 1024}})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        raw.create_delivery_stream(DeliveryStreamName="rules", ExtendedS3DestinationConfiguration=small)
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert "blockSizeBytes" in e.value.response["Error"]["Message"]
    # No hints: Firehose stores 128 MiB / 300 s for a converting stream.
    make_stream(fh, "defaults", ExtendedS3DestinationConfiguration=dict(
        S3_CONFIG, DataFormatConversionConfiguration=conversion()))
    d = fh.describe_delivery_stream(DeliveryStreamName="defaults")["DeliveryStreamDescription"]
    hints_described = d["Destinations"][0]["ExtendedS3DestinationDescription"]["BufferingHints"]
    assert hints_described == {"SizeInMBs": 128, "IntervalInSeconds": 300}


@pytest.mark.embedded_only(reason="the Glue lookups are the node's own; one node shows them")
def test_schemas_from_moto_glue_follow_the_latest_version_and_deliver_to_moto_s3(request, tmp_path):
    with moto_server() as endpoint:
        creds = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test")
        glue, s3 = boto3.client("glue", **creds), boto3.client("s3", **creds)
        retry_until_up(lambda: glue.create_database(DatabaseInput={"Name": "shop"}))
        s3.create_bucket(Bucket="lake")
        columns = [{"Name": "order_id", "Type": "bigint"}, {"Name": "price", "Type": "double"}]
        glue.create_table(DatabaseName="shop", TableInput={
            "Name": "orders", "StorageDescriptor": {"Columns": columns},
            "PartitionKeys": [{"Name": "dt", "Type": "string"}]})
        server = start_backend(request, tmp_path, extra_config=(
            f'[s3]\nendpoint = "{endpoint}"\n[glue]\nendpoint = "{endpoint}"\n'),
            env={"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
        request.addfinalizer(getattr(server, "close", lambda: None))
        fh = server.client()
        with pytest.raises(fh.exceptions.InvalidArgumentException) as e:
            fh.create_delivery_stream(DeliveryStreamName="orders", ExtendedS3DestinationConfiguration=dict(
                converting(database="shop", table="nope"), BucketARN="arn:aws:s3:::lake"))
        assert "EntityNotFoundException" in str(e.value), e.value
        make_stream(fh, "orders", ExtendedS3DestinationConfiguration=dict(
            converting(database="shop", table="orders"), BucketARN="arn:aws:s3:::lake"))
        fh.put_record(DeliveryStreamName="orders", Record={"Data": b'{"order_id": 1, "price": 9.5, "dt": "x"}'})
        [first] = wait_for_keys(s3, "lake")
        # The table gains a column: LATEST follows it for the next batch.
        glue.update_table(DatabaseName="shop", TableInput={
            "Name": "orders", "StorageDescriptor": {"Columns": columns + [{"Name": "note", "Type": "string"}]}})
        fh.put_record(DeliveryStreamName="orders", Record={"Data": b'{"order_id": 2, "note": "new column"}'})
        keys = wait_for_keys(s3, "lake", n=2)
        tables = {}
        for key in keys:
            body = s3.get_object(Bucket="lake", Key=key)["Body"].read()
            path = tmp_path / key.replace("/", "_")
            path.write_bytes(body)
            tables[key] = pq.read_table(path)
        assert tables[first].column_names == ["order_id", "price"], "partition keys are not columns"
        assert tables[first].to_pylist() == [{"order_id": 1, "price": 9.5}]
        [second] = [k for k in keys if k != first]
        assert tables[second].to_pylist() == [{"order_id": 2, "price": None, "note": "new column"}]
        assert server.stop() == 0
