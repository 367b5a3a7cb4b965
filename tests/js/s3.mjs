// Sluice's S3 API through @aws-sdk/client-s3 (AWS SDK for JavaScript v3):
// node s3.mjs ENDPOINT [ACCESS_KEY SECRET]. Exits non-zero on the first failure.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import {
  S3Client, CreateBucketCommand, PutObjectCommand, GetObjectCommand, HeadObjectCommand,
  ListObjectsV2Command, DeleteObjectsCommand, DeleteBucketCommand, CopyObjectCommand,
  CreateMultipartUploadCommand, UploadPartCommand, CompleteMultipartUploadCommand, NoSuchKey,
} from "@aws-sdk/client-s3";

const [endpoint, accessKeyId = "test", secretAccessKey = "test"] = process.argv.slice(2);
const s3 = new S3Client({
  endpoint, region: "us-east-1", forcePathStyle: true, credentials: { accessKeyId, secretAccessKey },
});
const Bucket = "js-bucket";

await s3.send(new CreateBucketCommand({ Bucket }));
const body = Buffer.alloc(300_000, "sluice ");
const put = await s3.send(new PutObjectCommand({ Bucket, Key: "a/b.txt", Body: body, ContentType: "text/plain" }));
assert.equal(put.ETag, `"${createHash("md5").update(body).digest("hex")}"`);
// A stream of unknown length: the SDK frames it aws-chunked with a trailing checksum.
const streamed = Buffer.alloc(70_000, "streamed ");
await s3.send(new PutObjectCommand({
  Bucket, Key: "a/stream.txt", Body: Readable.from([streamed.subarray(0, 30_000), streamed.subarray(30_000)]),
  ContentLength: streamed.length,
}));
const got = await s3.send(new GetObjectCommand({ Bucket, Key: "a/stream.txt" }));
assert.deepEqual(Buffer.from(await got.Body.transformToByteArray()), streamed);
const text = await s3.send(new GetObjectCommand({ Bucket, Key: "a/b.txt", Range: "bytes=0-5" }));
assert.equal(await text.Body.transformToString(), "sluice");
assert.equal(text.ContentType, "text/plain");
await s3.send(new CopyObjectCommand({ Bucket, Key: "copy.txt", CopySource: `${Bucket}/a/b.txt` }));
const head = await s3.send(new HeadObjectCommand({ Bucket, Key: "copy.txt" }));
assert.equal(head.ContentLength, body.length);

const upload = await s3.send(new CreateMultipartUploadCommand({ Bucket, Key: "multi.bin" }));
const parts = [Buffer.alloc(5 << 20, 1), Buffer.alloc(10, 2)];
const done = [];
for (const [i, part] of parts.entries()) {
  const sent = await s3.send(new UploadPartCommand({
    Bucket, Key: "multi.bin", UploadId: upload.UploadId, PartNumber: i + 1, Body: part,
  }));
  done.push({ PartNumber: i + 1, ETag: sent.ETag });
}
await s3.send(new CompleteMultipartUploadCommand({
  Bucket, Key: "multi.bin", UploadId: upload.UploadId, MultipartUpload: { Parts: done },
}));

const listed = await s3.send(new ListObjectsV2Command({ Bucket, Delimiter: "/" }));
assert.deepEqual(listed.CommonPrefixes.map((p) => p.Prefix), ["a/"]);
assert.deepEqual(listed.Contents.map((o) => o.Key), ["copy.txt", "multi.bin"]);
await assert.rejects(s3.send(new GetObjectCommand({ Bucket, Key: "nothing" })), NoSuchKey);
const all = await s3.send(new ListObjectsV2Command({ Bucket }));
await s3.send(new DeleteObjectsCommand({ Bucket, Delete: { Objects: all.Contents.map((o) => ({ Key: o.Key })) } }));
await s3.send(new DeleteBucketCommand({ Bucket }));
console.log("ok");
