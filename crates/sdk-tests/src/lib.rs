//! Nothing here: the tests in `tests/` drive the `sluice` binary through aws-sdk-firehose.
