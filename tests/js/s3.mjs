// Sluice's S3 API through @aws-sdk/client-s3 (AWS SDK for JavaScript v3, its default
// checksum settings): node s3.mjs ENDPOINT [ACCESS_KEY SECRET]. Exits non-zero on the
// first failure.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { Readable } from "node:stream";
import {
  S3Client, CreateBucketCommand, HeadBucketCommand, ListBucketsCommand, GetBucketLocationCommand,
  PutObjectCommand, GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, ListObjectsCommand,
  DeleteObjectCommand, DeleteObjectsCommand, DeleteBucketCommand, CopyObjectCommand,
  CreateMultipartUploadCommand, UploadPartCommand, CompleteMultipartUploadCommand,
  AbortMultipartUploadCommand, ListPartsCommand, NoSuchKey,
} from "@aws-sdk/client-s3";

const [endpoint, accessKeyId = "test", secretAccessKey = "test"] = process.argv.slice(2);
const s3 = new S3Client({
  endpoint, region: "us-east-1", forcePathStyle: true, credentials: { accessKeyId, secretAccessKey },
});
const Bucket = "js-bucket";

await s3.send(new CreateBucketCommand({ Bucket }));
await s3.send(new HeadBucketCommand({ Bucket }));
assert.deepEqual((await s3.send(new ListBucketsCommand({}))).Buckets.map((b) => b.Name), [Bucket]);
assert.ok([undefined, ""].includes((await s3.send(new GetBucketLocationCommand({ Bucket }))).LocationConstraint));

const body = Buffer.alloc(300_000, "sluice ");
const put = await s3.send(new PutObjectCommand({ Bucket, Key: "a/b.txt", Body: body, ContentType: "text/plain" }));
assert.equal(put.ETag, `"${createHash("md5").update(body).digest("hex")}"`);
// A stream: the SDK frames it aws-chunked with a trailing checksum.
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
await assert.rejects(s3.send(new GetObjectCommand({ Bucket, Key: "a/b.txt", IfMatch: '"0000"' })),
  (e) => e.$metadata.httpStatusCode === 412);
await s3.send(new CopyObjectCommand({ Bucket, Key: "copy.txt", CopySource: `${Bucket}/a/b.txt` }));
const head = await s3.send(new HeadObjectCommand({ Bucket, Key: "copy.txt" }));
assert.equal(head.ContentLength, body.length);

// 20 MiB in four parts, listed before completion; another upload aborted.
const upload = await s3.send(new CreateMultipartUploadCommand({ Bucket, Key: "multi.bin" }));
const whole = Buffer.alloc(20 << 20);
for (let i = 0; i < whole.length; i += 4) whole.writeUInt32LE(i, i);
const done = [];
for (let part = 0; part < 4; part++) {
  const sent = await s3.send(new UploadPartCommand({
    Bucket, Key: "multi.bin", UploadId: upload.UploadId, PartNumber: part + 1,
    Body: whole.subarray(part * (5 << 20), (part + 1) * (5 << 20)),
  }));
  done.push({ PartNumber: part + 1, ETag: sent.ETag });
}
const parts = await s3.send(new ListPartsCommand({ Bucket, Key: "multi.bin", UploadId: upload.UploadId }));
assert.deepEqual(parts.Parts.map((p) => p.PartNumber), [1, 2, 3, 4]);
await s3.send(new CompleteMultipartUploadCommand({
  Bucket, Key: "multi.bin", UploadId: upload.UploadId, MultipartUpload: { Parts: done },
}));
const tail = await s3.send(new GetObjectCommand({ Bucket, Key: "multi.bin", Range: `bytes=${(20 << 20) - 8}-` }));
assert.deepEqual(Buffer.from(await tail.Body.transformToByteArray()), whole.subarray((20 << 20) - 8));
const aborted = await s3.send(new CreateMultipartUploadCommand({ Bucket, Key: "aborted.bin" }));
await s3.send(new AbortMultipartUploadCommand({ Bucket, Key: "aborted.bin", UploadId: aborted.UploadId }));

const listed = await s3.send(new ListObjectsV2Command({ Bucket, Delimiter: "/" }));
assert.deepEqual(listed.CommonPrefixes.map((p) => p.Prefix), ["a/"]);
assert.deepEqual(listed.Contents.map((o) => o.Key), ["copy.txt", "multi.bin"]);
const v1 = await s3.send(new ListObjectsCommand({ Bucket, Prefix: "a/", MaxKeys: 1 }));
assert.equal(v1.IsTruncated, true);
assert.deepEqual(v1.Contents.map((o) => o.Key), ["a/b.txt"]);
await assert.rejects(s3.send(new GetObjectCommand({ Bucket, Key: "nothing" })), NoSuchKey);
await s3.send(new DeleteObjectCommand({ Bucket, Key: "copy.txt" }));
const all = await s3.send(new ListObjectsV2Command({ Bucket }));
await s3.send(new DeleteObjectsCommand({ Bucket, Delete: { Objects: all.Contents.map((o) => ({ Key: o.Key })) } }));
await s3.send(new DeleteBucketCommand({ Bucket }));
console.log("ok");
