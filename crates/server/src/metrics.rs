//! Metrics with Firehose's CloudWatch names (dots become underscores in the
//! Prometheus text served at `GET /metrics`), labelled by `DeliveryStreamName`.
//! Handles are created once per stream so the put path does no label allocation.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The ingest metrics of one stream.
pub struct StreamMetrics {
    /// `IncomingBytes`.
    pub incoming_bytes: Counter,
    /// `IncomingRecords`.
    pub incoming_records: Counter,
    /// `IncomingPutRequests`.
    pub incoming_put_requests: Counter,
    /// `PutRecord.Bytes`.
    pub put_record_bytes: Counter,
    /// `PutRecord.Requests`.
    pub put_record_requests: Counter,
    /// `PutRecord.Latency`, milliseconds.
    pub put_record_latency: Histogram,
    /// `PutRecordBatch.Bytes`.
    pub put_record_batch_bytes: Counter,
    /// `PutRecordBatch.Records`.
    pub put_record_batch_records: Counter,
    /// `PutRecordBatch.Requests`.
    pub put_record_batch_requests: Counter,
    /// `PutRecordBatch.Latency`, milliseconds.
    pub put_record_batch_latency: Histogram,
    /// `ThrottledRecords`.
    pub throttled_records: Counter,
}

impl StreamMetrics {
    fn new(name: &str) -> StreamMetrics {
        let label = || [("DeliveryStreamName", name.to_string())];
        StreamMetrics {
            incoming_bytes: metrics::counter!("IncomingBytes", &label()),
            incoming_records: metrics::counter!("IncomingRecords", &label()),
            incoming_put_requests: metrics::counter!("IncomingPutRequests", &label()),
            put_record_bytes: metrics::counter!("PutRecord.Bytes", &label()),
            put_record_requests: metrics::counter!("PutRecord.Requests", &label()),
            put_record_latency: metrics::histogram!("PutRecord.Latency", &label()),
            put_record_batch_bytes: metrics::counter!("PutRecordBatch.Bytes", &label()),
            put_record_batch_records: metrics::counter!("PutRecordBatch.Records", &label()),
            put_record_batch_requests: metrics::counter!("PutRecordBatch.Requests", &label()),
            put_record_batch_latency: metrics::histogram!("PutRecordBatch.Latency", &label()),
            throttled_records: metrics::counter!("ThrottledRecords", &label()),
        }
    }
}

/// The process's metrics.
pub struct Metrics {
    prometheus: Option<PrometheusHandle>,
    /// By stream id, so the put path looks handles up without allocating.
    streams: RwLock<HashMap<u64, Arc<StreamMetrics>>>,
    names: RwLock<HashMap<u64, String>>,
    /// By stream id and metric prefix (`DeliveryToS3`, `BackupToS3`).
    oldest_undelivered_ms: RwLock<HashMap<(u64, &'static str), Option<u64>>>,
    /// Kinesis-sourced streams: how far behind each shard's last read was.
    kinesis_behind_ms: RwLock<HashMap<u64, HashMap<String, u64>>>,
}

impl Metrics {
    /// Installs the Prometheus recorder. Only one per process can be installed; a
    /// second call (in tests) records into the first.
    pub fn install() -> Metrics {
        let prometheus = PrometheusBuilder::new().install_recorder().ok();
        Metrics {
            prometheus,
            streams: RwLock::new(HashMap::new()),
            names: RwLock::new(HashMap::new()),
            oldest_undelivered_ms: RwLock::new(HashMap::new()),
            kinesis_behind_ms: RwLock::new(HashMap::new()),
        }
    }

    /// The handles of stream `id`, named `name`.
    pub fn stream(&self, id: u64, name: &str) -> Arc<StreamMetrics> {
        if let Some(m) = self.streams.read().expect("lock").get(&id) {
            return m.clone();
        }
        self.streams.write().expect("lock").entry(id).or_insert_with(|| Arc::new(StreamMetrics::new(name))).clone()
    }

    /// Records one upload attempt of a batch (`DeliveryToS3.*` or `BackupToS3.*`,
    /// as `prefix` says; `Success` counts successful attempts and `Attempts` all of
    /// them, so their ratio is Firehose's `Success`).
    pub fn delivery(&self, stream_id: u64, prefix: &str, ok: bool, n_records: u64, n_bytes: u64) {
        let Some(name) = self.names.read().expect("lock").get(&stream_id).cloned() else { return };
        let labels = [("DeliveryStreamName", name)];
        metrics::counter!(format!("{prefix}.Attempts"), &labels).increment(1);
        if ok {
            metrics::counter!(format!("{prefix}.Success"), &labels).increment(1);
            metrics::counter!(format!("{prefix}.Records"), &labels).increment(n_records);
            metrics::counter!(format!("{prefix}.Bytes"), &labels).increment(n_bytes);
        }
    }

    /// Records a batch appended to Iceberg tables, counted per record after
    /// processing (`DeliveryToIceberg.IncomingRowCount`, `.SuccessfulRowCount`,
    /// `.FailedRowCount`: appended, and sent to the error prefix).
    pub fn iceberg_rows(&self, stream_id: u64, incoming: u64, failed: u64) {
        let Some(name) = self.names.read().expect("lock").get(&stream_id).cloned() else { return };
        let labels = [("DeliveryStreamName", name)];
        metrics::counter!("DeliveryToIceberg.IncomingRowCount", &labels).increment(incoming);
        metrics::counter!("DeliveryToIceberg.SuccessfulRowCount", &labels).increment(incoming - failed);
        metrics::counter!("DeliveryToIceberg.FailedRowCount", &labels).increment(failed);
    }

    /// Notes the arrival time of the oldest record of a stream not yet delivered
    /// by one lane (`None` when nothing waits). `<prefix>.DataFreshness`, its age in
    /// seconds, is computed when metrics are rendered, so it keeps growing while a
    /// batch waits.
    pub fn oldest_undelivered(&self, stream_id: u64, prefix: &'static str, arrival_ms: Option<u64>) {
        self.oldest_undelivered_ms.write().expect("lock").insert((stream_id, prefix), arrival_ms);
    }

    fn refresh_data_freshness(&self) {
        let now_ms = crate::api::now_ms();
        let names = self.names.read().expect("lock");
        for ((id, prefix), arrival_ms) in self.oldest_undelivered_ms.read().expect("lock").iter() {
            let Some(name) = names.get(id) else { continue };
            let seconds = arrival_ms.map_or(0.0, |t| now_ms.saturating_sub(t) as f64 / 1000.0);
            metrics::gauge!(format!("{prefix}.DataFreshness"), &[("DeliveryStreamName", name.clone())]).set(seconds);
        }
    }

    /// Records sent to an HTTP endpoint in one request, retries included
    /// (`DeliveryToHttpEndpoint.ProcessedRecords` / `.ProcessedBytes`).
    pub fn http_processed(&self, stream_id: u64, n_records: u64, n_bytes: u64) {
        let Some(name) = self.names.read().expect("lock").get(&stream_id).cloned() else { return };
        let labels = [("DeliveryStreamName", name)];
        metrics::counter!("DeliveryToHttpEndpoint.ProcessedRecords", &labels).increment(n_records);
        metrics::counter!("DeliveryToHttpEndpoint.ProcessedBytes", &labels).increment(n_bytes);
    }

    /// Records a batch's Lambda invocations (`ExecuteProcessing.Duration` in
    /// milliseconds, `ExecuteProcessing.Success` and `.Attempts`).
    pub fn lambda(&self, stream_id: u64, attempts: u64, successes: u64, duration_ms: f64) {
        let Some(name) = self.names.read().expect("lock").get(&stream_id).cloned() else { return };
        let labels = [("DeliveryStreamName", name)];
        metrics::histogram!("ExecuteProcessing.Duration", &labels).record(duration_ms);
        metrics::counter!("ExecuteProcessing.Attempts", &labels).increment(attempts);
        metrics::counter!("ExecuteProcessing.Success", &labels).increment(successes);
    }

    /// Records the function returned `Ok` (`SucceedProcessing.Records` / `.Bytes`).
    pub fn succeed_processing(&self, stream_id: u64, record_bytes: impl Iterator<Item = u64>) {
        let Some(name) = self.names.read().expect("lock").get(&stream_id).cloned() else { return };
        let labels = [("DeliveryStreamName", name)];
        let (n, bytes) = record_bytes.fold((0, 0), |(n, total), b| (n + 1, total + b));
        metrics::counter!("SucceedProcessing.Records", &labels).increment(n);
        metrics::counter!("SucceedProcessing.Bytes", &labels).increment(bytes);
    }

    /// Records a converted batch (`SucceedConversion.Records` / `.Bytes`,
    /// `FailedConversion.Records` / `.Bytes`: the records' JSON bytes).
    pub fn conversion(&self, stream_id: u64, ok: (u64, u64), failed: (u64, u64)) {
        let Some(name) = self.names.read().expect("lock").get(&stream_id).cloned() else { return };
        let labels = [("DeliveryStreamName", name)];
        metrics::counter!("SucceedConversion.Records", &labels).increment(ok.0);
        metrics::counter!("SucceedConversion.Bytes", &labels).increment(ok.1);
        metrics::counter!("FailedConversion.Records", &labels).increment(failed.0);
        metrics::counter!("FailedConversion.Bytes", &labels).increment(failed.1);
    }

    /// Records the time the metadata extraction query took on a batch
    /// (`JQProcessing.Duration`, milliseconds).
    pub fn jq(&self, stream_id: u64, duration_ms: f64) {
        let Some(name) = self.names.read().expect("lock").get(&stream_id).cloned() else { return };
        metrics::histogram!("JQProcessing.Duration", &[("DeliveryStreamName", name)]).record(duration_ms);
    }

    /// Records a partitioned batch: its partitions (`PartitionCount`), whether some
    /// were over the limit (`PartitionCountExceeded`, 0 or 1) and the objects written
    /// (`DeliveryToS3.ObjectCount`).
    pub fn partitions(&self, stream_id: u64, n_partitions: u64, exceeded: bool, n_objects: u64) {
        let Some(name) = self.names.read().expect("lock").get(&stream_id).cloned() else { return };
        let labels = [("DeliveryStreamName", name)];
        metrics::gauge!("PartitionCount", &labels).set(n_partitions as f64);
        metrics::gauge!("PartitionCountExceeded", &labels).set(if exceeded { 1.0 } else { 0.0 });
        metrics::counter!("DeliveryToS3.ObjectCount", &labels).increment(n_objects);
    }

    /// Records what the processing chain did with a delivered batch.
    pub fn processing(&self, stream_id: u64, stats: &sluice_processing::Stats) {
        if *stats == sluice_processing::Stats::default() {
            return;
        }
        let Some(name) = self.names.read().expect("lock").get(&stream_id).cloned() else { return };
        let labels = [("DeliveryStreamName", name)];
        metrics::counter!("OutputDecompressedRecords.Success", &labels).increment(stats.decompressed_records);
        metrics::counter!("OutputDecompressedBytes.Success", &labels).increment(stats.decompressed_bytes);
        metrics::counter!("OutputDecompressedRecords.Failed", &labels).increment(stats.decompression_failures);
        metrics::counter!("sluice_cloudwatch_control_messages_dropped", &labels)
            .increment(stats.control_messages_dropped);
    }

    /// Records that gave up after the retention period (`sluice_records_expired`).
    pub fn records_expired(&self, stream_id: u64, n_records: u64) {
        let Some(name) = self.names.read().expect("lock").get(&stream_id).cloned() else { return };
        metrics::counter!("sluice_records_expired", &[("DeliveryStreamName", name)]).increment(n_records);
    }

    /// Records read from a stream's Kinesis data stream
    /// (`DataReadFromKinesisStream.Records` / `.Bytes`).
    pub fn kinesis_read(&self, stream_id: u64, n_records: u64, n_bytes: u64) {
        let Some(name) = self.names.read().expect("lock").get(&stream_id).cloned() else { return };
        let labels = [("DeliveryStreamName", name)];
        metrics::counter!("DataReadFromKinesisStream.Records", &labels).increment(n_records);
        metrics::counter!("DataReadFromKinesisStream.Bytes", &labels).increment(n_bytes);
    }

    /// How far behind its shard's tip a read was; `KinesisMillisBehindLatest` is the
    /// most any shard of the stream is behind.
    pub fn kinesis_behind(&self, stream_id: u64, shard_id: &str, millis: u64) {
        let Some(name) = self.names.read().expect("lock").get(&stream_id).cloned() else { return };
        let mut behind = self.kinesis_behind_ms.write().expect("lock");
        let shards = behind.entry(stream_id).or_default();
        shards.insert(shard_id.to_string(), millis);
        let most = shards.values().copied().max().unwrap_or(0);
        metrics::gauge!("KinesisMillisBehindLatest", &[("DeliveryStreamName", name)]).set(most as f64);
    }

    /// A shard read to its end no longer counts for `KinesisMillisBehindLatest`.
    pub fn kinesis_shard_ended(&self, stream_id: u64, shard_id: &str) {
        if let Some(shards) = self.kinesis_behind_ms.write().expect("lock").get_mut(&stream_id) {
            shards.remove(shard_id);
        }
    }

    /// A throttled Kinesis call (`ThrottledGetRecords`, `ThrottledGetShardIterator`,
    /// `ThrottledDescribeStream`).
    pub fn kinesis_throttled(&self, stream_id: u64, metric: &'static str) {
        let Some(name) = self.names.read().expect("lock").get(&stream_id).cloned() else { return };
        metrics::counter!(metric, &[("DeliveryStreamName", name)]).increment(1);
    }

    /// Registers every series a stream has, at zero where nothing happened yet, so a
    /// stream's metrics exist from its creation (and from start-up for existing
    /// streams) rather than from its first put or delivery.
    pub fn register_stream(&self, stream: &crate::catalog::StreamRecord) {
        self.name_stream(stream.id, &stream.name);
        self.stream(stream.id, &stream.name);
        let destination = &stream.destination;
        let prefixes = [
            destination.s3_settings().map(|_| "DeliveryToS3"),
            destination.http_settings().map(|_| "DeliveryToHttpEndpoint"),
            destination.backup_s3_settings().map(|_| "BackupToS3"),
        ];
        let labels = [("DeliveryStreamName", stream.name.clone())];
        if stream.reads_kinesis() {
            for series in [
                "DataReadFromKinesisStream.Records",
                "DataReadFromKinesisStream.Bytes",
                "ThrottledGetRecords",
                "ThrottledGetShardIterator",
                "ThrottledDescribeStream",
            ] {
                metrics::counter!(series, &labels).increment(0);
            }
            metrics::gauge!("KinesisMillisBehindLatest", &labels).set(0.0);
        }
        for prefix in prefixes.into_iter().flatten() {
            for series in ["Attempts", "Success", "Records", "Bytes"] {
                metrics::counter!(format!("{prefix}.{series}"), &labels).increment(0);
            }
            let mut oldest = self.oldest_undelivered_ms.write().expect("lock");
            oldest.entry((stream.id, prefix)).or_insert(None);
        }
    }

    /// Records the name of stream `id` for metrics reported by id.
    pub fn name_stream(&self, id: u64, name: &str) {
        self.names.write().expect("lock").insert(id, name.to_string());
    }

    /// Records one control-plane call.
    pub fn control_plane(&self, operation: &str, name: Option<&str>, latency_ms: f64) {
        let metric = match operation {
            "UpdateDestination" => "UpdateDeliveryStream",
            other => other,
        };
        let labels: Vec<(&str, String)> = name.map(|n| vec![("DeliveryStreamName", n.to_string())]).unwrap_or_default();
        metrics::counter!(format!("{metric}.Requests"), &labels).increment(1);
        metrics::histogram!(format!("{metric}.Latency"), &labels).record(latency_ms);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        self.refresh_data_freshness();
        self.prometheus.as_ref().map(|p| p.render()).unwrap_or_default()
    }

    /// Housekeeping the exporter needs now and then (histogram buckets).
    pub fn upkeep(&self) {
        if let Some(p) = &self.prometheus {
            p.run_upkeep();
        }
    }
}
