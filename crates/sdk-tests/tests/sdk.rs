//! The official AWS SDK for Rust against the real `sluice` binary: create, describe,
//! put, batch put, list, tag, update and delete, and typed errors.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use aws_sdk_firehose::config::{Credentials, Region};
use aws_sdk_firehose::error::ProvideErrorMetadata;
use aws_sdk_firehose::primitives::Blob;
use aws_sdk_firehose::types::{ExtendedS3DestinationConfiguration, Record};
use aws_sdk_firehose::Client;

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_BIN") {
        return path.into();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    ["release", "debug"]
        .iter()
        .map(|p| root.join("target").join(p).join("sluice"))
        .find(|p| p.exists())
        .expect("build the sluice binary first (cargo build --release -p sluice-server)")
}

/// The SDKs' hyper client for plain HTTP (Sluice listens on 127.0.0.1 without TLS):
/// the same client the SDKs build by default, minus the TLS connector.
fn plain_http() -> aws_sdk_firehose::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new().build_http()
}

struct Server {
    child: Child,
    endpoint: String,
    _data: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        Server::start_with("")
    }

    /// With `config` appended to the server's config file.
    fn start_with(extra: &str) -> Server {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("sluice.toml");
        std::fs::write(&config, format!("transition_ms = 50\n{extra}")).unwrap();
        let child = Command::new(binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(data.path().join("data"))
            .spawn()
            .expect("start sluice");
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sluice did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, endpoint, _data: data }
    }

    fn client(&self) -> Client {
        self.client_with("AKIDEXAMPLE", "secret")
    }

    fn client_with(&self, key: &str, secret: &str) -> Client {
        let config = aws_sdk_firehose::Config::builder()
            .http_client(plain_http())
            .endpoint_url(&self.endpoint)
            .region(Region::new("eu-west-1"))
            .credentials_provider(Credentials::new(key, secret, None, None, "test"))
            .build();
        Client::from_conf(config)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_sdk_drives_every_common_operation() {
    let server = Server::start();
    let client = server.client();
    let destination = ExtendedS3DestinationConfiguration::builder()
        .role_arn("arn:aws:iam::000000000000:role/firehose")
        .bucket_arn("arn:aws:s3:::bucket")
        .build()
        .unwrap();
    let created = client
        .create_delivery_stream()
        .delivery_stream_name("rust")
        .extended_s3_destination_configuration(destination)
        .send()
        .await
        .unwrap();
    assert_eq!(created.delivery_stream_arn(), Some("arn:aws:firehose:eu-west-1:000000000000:deliverystream/rust"));

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let d = client.describe_delivery_stream().delivery_stream_name("rust").send().await.unwrap();
        let d = d.delivery_stream_description().unwrap();
        if d.delivery_stream_status().as_str() == "ACTIVE" {
            assert_eq!(d.version_id(), "1");
            assert_eq!(d.destinations()[0].destination_id(), "destinationId-000000000001");
            break;
        }
        assert!(Instant::now() < deadline, "stream never became ACTIVE");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let one = client
        .put_record()
        .delivery_stream_name("rust")
        .record(Record::builder().data(Blob::new("hello")).build().unwrap())
        .send()
        .await
        .unwrap();
    assert!(!one.record_id().is_empty());
    assert_eq!(one.encrypted(), Some(false));

    let records: Vec<Record> =
        (0..100).map(|i| Record::builder().data(Blob::new(format!("r{i}"))).build().unwrap()).collect();
    let batch = client.put_record_batch().delivery_stream_name("rust").set_records(Some(records)).send().await.unwrap();
    assert_eq!(batch.failed_put_count(), 0);
    assert_eq!(batch.request_responses().len(), 100);
    assert!(batch.request_responses().iter().all(|r| r.record_id().is_some() && r.error_code().is_none()));

    let listed = client.list_delivery_streams().send().await.unwrap();
    assert_eq!(listed.delivery_stream_names(), ["rust"]);
    assert!(!listed.has_more_delivery_streams());

    let missing = client
        .put_record()
        .delivery_stream_name("absent")
        .record(Record::builder().data(Blob::new("x")).build().unwrap())
        .send()
        .await
        .unwrap_err();
    let service = missing.into_service_error();
    assert!(service.is_resource_not_found_exception(), "{service:?}");
    assert_eq!(service.message(), Some("Firehose absent under account 000000000000 not found."));

    let too_big = client
        .put_record()
        .delivery_stream_name("rust")
        .record(Record::builder().data(Blob::new(vec![0u8; 1_024_001])).build().unwrap())
        .send()
        .await
        .unwrap_err();
    assert_eq!(too_big.into_service_error().code(), Some("ValidationException"));

    client.delete_delivery_stream().delivery_stream_name("rust").send().await.unwrap();
    assert!(client.list_delivery_streams().send().await.unwrap().delivery_stream_names().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_sdk_signs_requests_sluice_verifies() {
    let server =
        Server::start_with("[[auth.keys]]\naccess_key_id = \"AKIDRUST\"\nsecret_access_key = \"rust-secret\"\n");
    let names = server.client_with("AKIDRUST", "rust-secret").list_delivery_streams().send().await.unwrap();
    assert!(names.delivery_stream_names().is_empty());
    let wrong = server.client_with("AKIDRUST", "not-the-secret").list_delivery_streams().send().await.unwrap_err();
    assert_eq!(wrong.code(), Some("InvalidSignatureException"), "{wrong:?}");
    let unknown = server.client_with("AKIDNOBODY", "rust-secret").list_delivery_streams().send().await.unwrap_err();
    assert_eq!(unknown.code(), Some("UnrecognizedClientException"), "{unknown:?}");
}

impl Server {
    fn s3(&self, key: &str, secret: &str) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .http_client(plain_http())
            .endpoint_url(&self.endpoint)
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(key, secret, None, None, "test"))
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

/// The S3 API on Sluice's port (issue 12) through the Rust SDK, whose uploads are
/// `aws-chunked` with a trailing checksum by default: without keys (signatures
/// removed, the framing undone by Sluice) and with keys (verified by chunk).
#[tokio::test(flavor = "multi_thread")]
async fn the_rust_s3_client_stores_lists_and_reads_objects() {
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};

    for auth in ["", "[[auth.keys]]\naccess_key_id = \"AKIDS3\"\nsecret_access_key = \"s3-secret\"\n"] {
        let server = Server::start_with(auth);
        let s3 = server.s3("AKIDS3", "s3-secret");
        s3.create_bucket().bucket("rust-bucket").send().await.unwrap();
        s3.head_bucket().bucket("rust-bucket").send().await.unwrap();
        let location = s3.get_bucket_location().bucket("rust-bucket").send().await.unwrap();
        assert!(location.location_constraint().is_none_or(|c| c.as_str().is_empty()), "{location:?}");
        let body: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        s3.put_object()
            .bucket("rust-bucket")
            .key("data/one.bin")
            .content_type("application/x-test")
            .body(ByteStream::from(body.clone()))
            .send()
            .await
            .unwrap();
        // From a file: a streaming body.
        let file = server._data.path().join("upload.bin");
        std::fs::write(&file, &body).unwrap();
        s3.put_object()
            .bucket("rust-bucket")
            .key("data/from-file.bin")
            .body(ByteStream::from_path(&file).await.unwrap())
            .send()
            .await
            .unwrap();
        let got = s3.get_object().bucket("rust-bucket").key("data/from-file.bin").send().await.unwrap();
        assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), &body[..]);
        s3.delete_object().bucket("rust-bucket").key("data/from-file.bin").send().await.unwrap();
        let got = s3.get_object().bucket("rust-bucket").key("data/one.bin").send().await.unwrap();
        assert_eq!(got.content_type(), Some("application/x-test"));
        assert_eq!(got.body.collect().await.unwrap().into_bytes().as_ref(), &body[..]);
        let range = s3.get_object().bucket("rust-bucket").key("data/one.bin").range("bytes=4-7").send().await.unwrap();
        assert_eq!(range.body.collect().await.unwrap().into_bytes().as_ref(), &1u32.to_le_bytes());

        // A multipart upload of two parts (the first at S3's 5 MiB minimum).
        let upload = s3.create_multipart_upload().bucket("rust-bucket").key("data/two.bin").send().await.unwrap();
        let id = upload.upload_id().unwrap();
        let parts = [vec![1u8; 5 << 20], vec![2u8; 1000]];
        let mut completed = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let number = i as i32 + 1;
            let sent = s3
                .upload_part()
                .bucket("rust-bucket")
                .key("data/two.bin")
                .upload_id(id)
                .part_number(number)
                .body(ByteStream::from(part.clone()))
                .send()
                .await
                .unwrap();
            completed.push(CompletedPart::builder().part_number(number).e_tag(sent.e_tag().unwrap()).build());
        }
        s3.complete_multipart_upload()
            .bucket("rust-bucket")
            .key("data/two.bin")
            .upload_id(id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build())
            .send()
            .await
            .unwrap();
        let head = s3.head_object().bucket("rust-bucket").key("data/two.bin").send().await.unwrap();
        assert_eq!(head.content_length(), Some((5 << 20) + 1000));
        assert!(head.e_tag().unwrap().ends_with("-2\""), "{:?}", head.e_tag());

        // Copied, listed with version 1, and an upload listed then aborted.
        s3.copy_object()
            .bucket("rust-bucket")
            .key("copy.bin")
            .copy_source("rust-bucket/data/one.bin")
            .send()
            .await
            .unwrap();
        let copy = s3.head_object().bucket("rust-bucket").key("copy.bin").send().await.unwrap();
        assert_eq!(copy.content_length(), Some(body.len() as i64));
        let v1 = s3.list_objects().bucket("rust-bucket").prefix("copy").send().await.unwrap();
        assert_eq!(v1.contents().iter().filter_map(|o| o.key()).collect::<Vec<_>>(), ["copy.bin"]);
        s3.delete_object().bucket("rust-bucket").key("copy.bin").send().await.unwrap();
        let aborted = s3.create_multipart_upload().bucket("rust-bucket").key("aborted").send().await.unwrap();
        let aborted_id = aborted.upload_id().unwrap();
        s3.upload_part()
            .bucket("rust-bucket")
            .key("aborted")
            .upload_id(aborted_id)
            .part_number(1)
            .body(ByteStream::from_static(b"part"))
            .send()
            .await
            .unwrap();
        let parts = s3.list_parts().bucket("rust-bucket").key("aborted").upload_id(aborted_id).send().await.unwrap();
        assert_eq!(parts.parts().iter().filter_map(|p| p.part_number()).collect::<Vec<_>>(), [1]);
        s3.abort_multipart_upload().bucket("rust-bucket").key("aborted").upload_id(aborted_id).send().await.unwrap();

        let listed = s3.list_objects_v2().bucket("rust-bucket").prefix("data/").send().await.unwrap();
        let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
        assert_eq!(keys, ["data/one.bin", "data/two.bin"]);
        let missing = s3.get_object().bucket("rust-bucket").key("nothing").send().await.unwrap_err();
        assert!(missing.into_service_error().is_no_such_key());
        let delete = Delete::builder()
            .objects(ObjectIdentifier::builder().key("data/one.bin").build().unwrap())
            .objects(ObjectIdentifier::builder().key("data/two.bin").build().unwrap())
            .build()
            .unwrap();
        s3.delete_objects().bucket("rust-bucket").delete(delete).send().await.unwrap();
        s3.delete_bucket().bucket("rust-bucket").send().await.unwrap();
        assert!(s3.list_buckets().send().await.unwrap().buckets().is_empty());
        if !auth.is_empty() {
            let wrong = server.s3("AKIDS3", "not-it").list_buckets().send().await.unwrap_err();
            assert_eq!(wrong.code(), Some("SignatureDoesNotMatch"), "{wrong:?}");
        }
    }
}
