"""Damaged and restored data directories (issue 10): a deleted or older catalog.json,
a segment file deleted from the middle of a log, one stream's unreadable checkpoint,
a missing or exposed master key, and metrics after a restart. In every case
acknowledged records are kept (or the loss is reported by stream and range), and
start-up says what happened."""

import base64
import os
import re
import shutil
import stat
import urllib.request

import pytest
from botocore.exceptions import ClientError

from conftest import S3_CONFIG, Server, make_stream, wait_active
from test_delivery import KEY, bucket, hints, objects

LATER = dict(S3_CONFIG, BucketARN="arn:aws:s3:::later", BufferingHints=hints(1, 0))


def put_numbered(fh, stream, n, batch=500, size=40, tag=None):
    """Puts `n` records `TAG:i|padding\n` (TAG: the stream's name) and returns their
    ids (all acknowledged) and the first record's RecordId."""
    ids, record_id = [], None
    for start in range(0, n, batch):
        names = [f"{tag or stream}:{i}" for i in range(start, min(n, start + batch))]
        out = fh.put_record_batch(DeliveryStreamName=stream,
                                  Records=[{"Data": f"{name}|{'x' * size}\n".encode()} for name in names])
        assert out["FailedPutCount"] == 0
        record_id = out["RequestResponses"][0]["RecordId"]
        ids.extend(names)
    return ids, record_id


def delivered(bucket_dir):
    """How many times each record id was delivered."""
    seen = {}
    for key in objects(bucket_dir):
        assert KEY.match(key), f"not an object: {key}"
        for line in (bucket_dir / key).read_bytes().decode().splitlines():
            name = line.split("|")[0]
            seen[name] = seen.get(name, 0) + 1
    return seen


def wait_delivered(bucket_dir, ids, timeout=60):
    import time
    deadline = time.time() + timeout
    while True:
        seen = delivered(bucket_dir)
        if all(i in seen for i in ids) or time.time() > deadline:
            break
        time.sleep(0.2)
    missing = [i for i in ids if i not in seen]
    twice = [i for i, n in seen.items() if n > 1]
    assert not missing, f"{len(missing)} acknowledged records not delivered: {missing[:5]}"
    assert not twice, f"records delivered twice: {twice[:5]}"
    return seen


def metrics(server):
    with urllib.request.urlopen(server.endpoint + "/metrics") as r:
        return r.read().decode()


def metric(text, name):
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\d+)", text, re.M)
    return int(m.group(1)) if m else None


def log_dir(server, record_id):
    """A stream's log directory: a RecordId starts with the stream's log id."""
    return server.data_dir / "wal" / record_id[:16]


def test_a_deleted_catalog_loses_no_acknowledged_record(tmp_path):
    server = Server(tmp_path / "data").start()
    fh = server.client()
    acked = []
    for name in ("lost-a", "lost-b", "lost-c"):
        make_stream(fh, name, ExtendedS3DestinationConfiguration=LATER)
        acked += put_numbered(fh, name, 4000)[0]
    assert len(acked) == 12_000
    server.kill()
    (server.data_dir / "catalog.json").unlink()
    server.start()
    log = server.log.read_text()
    assert "catalog.json is missing" in log and "rebuilt from the definitions kept beside their logs" in log, log[-3000:]
    for name in ("lost-a", "lost-b", "lost-c"):
        d = wait_active(fh, name)
        assert d["Destinations"][0]["ExtendedS3DestinationDescription"]["BucketARN"] == "arn:aws:s3:::later"
    wait_delivered(bucket(server, "later"), acked)
    # Stream ids are never reused after the rebuild: a new stream gets a new log.
    make_stream(fh, "after", ExtendedS3DestinationConfiguration=LATER)
    _, record_id = put_numbered(fh, "after", 1)
    assert int(record_id[:16], 16) == 4
    assert server.stop() == 0


def test_a_catalog_restored_from_an_older_copy_keeps_newer_streams_and_settings(tmp_path):
    server = Server(tmp_path / "data").start()
    fh = server.client()
    make_stream(fh, "old", ExtendedS3DestinationConfiguration=dict(LATER, Prefix="v1/"))
    shutil.copy(server.data_dir / "catalog.json", tmp_path / "catalog-backup.json")
    make_stream(fh, "new", ExtendedS3DestinationConfiguration=LATER)
    fh.update_destination(DeliveryStreamName="old", CurrentDeliveryStreamVersionId="1",
                          DestinationId="destinationId-000000000001", ExtendedS3DestinationUpdate={"Prefix": "v2/"})
    fh.tag_delivery_stream(DeliveryStreamName="new", Tags=[{"Key": "team", "Value": "data"}])
    acked = put_numbered(fh, "old", 3000)[0] + put_numbered(fh, "new", 3000)[0]
    server.kill()
    shutil.copy(tmp_path / "catalog-backup.json", server.data_dir / "catalog.json")
    server.start()
    log = server.log.read_text()
    assert "catalog.json was restored from an older copy" in log, log[-3000:]
    assert "older definition of this stream" in log
    old = wait_active(fh, "old")
    assert old["VersionId"] == "2"
    assert old["Destinations"][0]["ExtendedS3DestinationDescription"]["Prefix"] == "v2/"
    assert fh.list_tags_for_delivery_stream(DeliveryStreamName="new")["Tags"] == [{"Key": "team", "Value": "data"}]
    out = bucket(server, "later")
    wait_delivered(out, acked)
    assert all(k.startswith("v2/") for k in objects(out) if KEY.match(k)["stream"] == "old")
    assert server.stop() == 0


def test_a_segment_deleted_from_the_middle_is_reported_by_stream_and_range(tmp_path):
    server = Server(tmp_path / "data", segment_mib=1).start()
    fh = server.client()
    make_stream(fh, "holed", ExtendedS3DestinationConfiguration=LATER)
    acked, record_id = put_numbered(fh, "holed", 6000, size=1000)
    assert server.stop() == 0
    segments = sorted(p for p in log_dir(server, record_id).iterdir() if p.suffix == ".seg")
    assert len(segments) >= 4, segments
    first_lost, next_base = int(segments[1].stem), int(segments[2].stem)
    segments[1].unlink()
    server.start()
    n_lost = next_base - first_lost
    log = server.log.read_text()
    assert re.search(rf"ERROR.*missing.*stream=holed.*first_seq={first_lost}.*last_seq={next_base - 1}", log), log[-3000:]
    text = metrics(server)
    assert metric(text, "sluice_wal_missing_records") == n_lost
    assert metric(text, "sluice_wal_missing_ranges") == 1
    assert server.stop() == 0
    assert len(server.dump("holed")) == len(acked) - n_lost


def test_one_unreadable_checkpoint_makes_only_its_stream_unavailable(tmp_path):
    server = Server(tmp_path / "data").start()
    fh = server.client()
    make_stream(fh, "good", ExtendedS3DestinationConfiguration=LATER)
    make_stream(fh, "bad", ExtendedS3DestinationConfiguration=LATER)
    good_ids, _ = put_numbered(fh, "good", 500)
    _, bad_record = put_numbered(fh, "bad", 500)
    assert server.stop() == 0
    checkpoint = log_dir(server, bad_record) / "checkpoint"
    assert checkpoint.exists()
    checkpoint.write_bytes(b"\x00garbage\xff" * 1000)
    server.start()
    log = server.log.read_text()
    assert re.search(r"ERROR.*could not be recovered.*stream=bad", log), log[-3000:]
    assert metric(metrics(server), "sluice_wal_unavailable_streams") == 1
    with pytest.raises(ClientError) as refused:
        fh.put_record(DeliveryStreamName="bad", Record={"Data": b"x"})
    assert refused.value.response["Error"]["Code"] == "ServiceUnavailableException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    more, _ = put_numbered(fh, "good", 10, tag="more")
    wait_delivered(bucket(server, "later"), good_ids + more)
    assert wait_active(fh, "bad")["DeliveryStreamName"] == "bad", "still described"
    log = server.log.read_text()
    assert log.count("Nothing is delivered from this stream") == 1, "said once, not retried in a loop"
    assert "Cannot read the stream's log" not in log
    assert server.stop() == 0
    assert checkpoint.read_bytes() == b"\x00garbage\xff" * 1000, "its files are left as they are"


def encrypted_stream_with_records(tmp_path):
    server = Server(tmp_path / "data").start()
    fh = server.client()
    make_stream(fh, "secret", ExtendedS3DestinationConfiguration=LATER,
                DeliveryStreamEncryptionConfigurationInput={"KeyType": "AWS_OWNED_CMK"})
    out = fh.put_record_batch(DeliveryStreamName="secret", Records=[{"Data": f"s:{i}|\n".encode()} for i in range(50)])
    assert out["Encrypted"] is True
    assert server.stop() == 0
    return server


def test_a_missing_master_key_with_encrypted_records_is_a_refusal_not_a_new_key(tmp_path):
    server = encrypted_stream_with_records(tmp_path)
    key = server.data_dir / "master.key"
    key.rename(tmp_path / "master.key.backup")
    with pytest.raises(RuntimeError):
        server.start()
    assert server.proc.returncode != 0
    log = server.log.read_text()
    assert "master.key does not exist" in log and "Restore that file from a backup" in log, log[-2000:]
    assert not key.exists(), "no key was generated over the encrypted records"
    (tmp_path / "master.key.backup").rename(key)
    server.start()
    wait_delivered(bucket(server, "later"), [f"s:{i}" for i in range(50)])
    assert server.stop() == 0
    # Everything delivered: a lost key no longer matters, and a new one is made.
    key.unlink()
    server.start()
    assert key.exists() and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert server.stop() == 0


def test_a_master_key_others_can_read_is_refused(tmp_path):
    server = encrypted_stream_with_records(tmp_path)
    key = server.data_dir / "master.key"
    key.chmod(0o644)
    with pytest.raises(RuntimeError):
        server.start()
    assert "accessible to other users (mode 644)" in server.log.read_text()
    assert f"chmod 600 {key}" in server.log.read_text()
    key.chmod(0o600)
    server.start()
    assert server.stop() == 0


def test_every_existing_streams_metrics_are_exposed_after_a_restart(tmp_path):
    server = Server(tmp_path / "data").start()
    fh = server.client()
    make_stream(fh, "quiet", ExtendedS3DestinationConfiguration=LATER)
    make_stream(fh, "busy", ExtendedS3DestinationConfiguration=dict(S3_CONFIG, BufferingHints=hints(1, 0)),
                )
    bucket(server)
    put_numbered(fh, "busy", 10)
    assert server.stop() == 0
    server.start()
    text = metrics(server)
    for name in ("quiet", "busy"):
        for series in ("IncomingRecords", "IncomingBytes", "PutRecordBatch_Records", "DeliveryToS3_Records",
                       "DeliveryToS3_Success", "DeliveryToS3_DataFreshness"):
            assert re.search(rf'^{series}{{DeliveryStreamName="{name}"}} 0$', text, re.M), (series, name)
    assert server.stop() == 0


def test_a_set_aside_log_can_be_dumped(tmp_path):
    """A log start-up cannot attribute to any stream is moved aside, never deleted,
    and `sluice dump --log` reads it."""
    server = Server(tmp_path / "data").start()
    fh = server.client()
    make_stream(fh, "orphan", ExtendedS3DestinationConfiguration=LATER)
    acked, record_id = put_numbered(fh, "orphan", 100)
    assert server.stop() == 0
    # As a log written by a version of Sluice that kept no definition beside it.
    (log_dir(server, record_id) / "meta").unlink()
    (server.data_dir / "catalog.json").unlink()
    server.start()
    assert "moved aside, not deleted" in server.log.read_text()
    assert server.stop() == 0
    [aside] = list((server.data_dir / "wal" / "set-aside").iterdir())
    dumped = [base64.b64decode(r["data"]).decode().split("|")[0] for r in server.dump(log=aside)]
    assert dumped == acked
    assert os.path.isdir(aside), "dumping keeps the log"


def test_a_damaged_catalog_is_refused_with_the_way_out(tmp_path):
    server = Server(tmp_path / "data").start()
    make_stream(server.client(), "kept", ExtendedS3DestinationConfiguration=LATER)
    acked, _ = put_numbered(server.client(), "kept", 100)
    assert server.stop() == 0
    catalog = server.data_dir / "catalog.json"
    catalog.write_text(catalog.read_text()[:40])
    with pytest.raises(RuntimeError):
        server.start()
    assert "move the damaged file aside and start again" in server.log.read_text()
    catalog.rename(tmp_path / "catalog.json.damaged")
    server.start()
    wait_delivered(bucket(server, "later"), acked)
    assert server.stop() == 0
