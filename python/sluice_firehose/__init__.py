"""A running Sluice for tests: `SluiceServer` starts the `sluice` binary this wheel
put on the PATH (an ephemeral data directory, a free loopback port), and the pytest
plugin (`sluice_firehose.plugin`) offers it as the `sluice` fixture."""

from sluice_firehose.server import SluiceServer

__all__ = ["SluiceServer"]
