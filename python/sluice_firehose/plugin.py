"""The pytest plugin (entry point `pytest11`): the `sluice` fixture is a running
server, shared by the session and reset before each test (no streams, no local
buckets), so every test starts clean:

    def test_delivery(sluice):
        sluice.create_bucket("my-bucket")
        sluice.firehose.create_delivery_stream(DeliveryStreamName="events", ...)
        sluice.firehose.put_record(DeliveryStreamName="events", Record={"Data": b"x"})
        sluice.flush()
        assert list(sluice.objects("my-bucket").values()) == [b"x"]

The objects can also be read through the server's S3 API (`sluice.s3`, or the
`sluice_s3` fixture): the same endpoint serves S3 for its local buckets.
"""

import pytest

from sluice_firehose.server import SluiceServer


@pytest.fixture(scope="session")
def sluice_server():
    """The session's Sluice server, as it is (not reset)."""
    server = SluiceServer().start()
    yield server
    server.stop()


@pytest.fixture
def sluice(sluice_server):
    """The session's Sluice server, emptied before the test."""
    sluice_server.reset()
    return sluice_server


@pytest.fixture
def sluice_s3(sluice):
    """A boto3 S3 client for the (emptied) server's S3 API."""
    return sluice.s3
