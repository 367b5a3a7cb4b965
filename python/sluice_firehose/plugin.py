"""The pytest plugin (entry point `pytest11`): the `sluice` fixture is a running
server, shared by the session and reset before each test (no streams, no local
buckets), so every test starts clean:

    def test_delivery(sluice):
        sluice.create_bucket("my-bucket")
        sluice.firehose.create_delivery_stream(DeliveryStreamName="events", ...)
        sluice.firehose.put_record(DeliveryStreamName="events", Record={"Data": b"x"})
        sluice.flush()
        assert list(sluice.objects("my-bucket").values()) == [b"x"]
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
