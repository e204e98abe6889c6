// The AWS SDK for JavaScript v3 against spate. Its Kinesis client sends every call over
// HTTP/2 with prior knowledge on http:// (NodeHttp2Handler), so this checks spate's h2c.
// Usage: node compat.mjs http://127.0.0.1:PORT ; exits non-zero on any failure.
import assert from "node:assert/strict";
import {
  KinesisClient, CreateStreamCommand, DescribeStreamSummaryCommand, PutRecordCommand,
  PutRecordsCommand, GetShardIteratorCommand, GetRecordsCommand, ListShardsCommand,
  DescribeStreamCommand, RegisterStreamConsumerCommand, DescribeStreamConsumerCommand,
  SubscribeToShardCommand,
} from "@aws-sdk/client-kinesis";

const endpoint = process.argv[2];
const kinesis = new KinesisClient({
  endpoint, region: "us-east-1", maxAttempts: 1,
  credentials: { accessKeyId: "AKIDEXAMPLE", secretAccessKey: "secret" },
});
const encode = (text) => new TextEncoder().encode(text);
const decode = (bytes) => new TextDecoder().decode(bytes);

let passed = 0;
async function check(name, body) {
  await body();
  passed += 1;
  console.log(`ok - ${name}`);
}

try {
  await check("create and describe over HTTP/2", async () => {
    await kinesis.send(new CreateStreamCommand({ StreamName: "js", ShardCount: 2 }));
    const summary = await kinesis.send(new DescribeStreamSummaryCommand({ StreamName: "js" }));
    assert.equal(summary.StreamDescriptionSummary.StreamStatus, "ACTIVE");
    assert.equal(summary.StreamDescriptionSummary.OpenShardCount, 2);
    const shards = await kinesis.send(new ListShardsCommand({ StreamName: "js" }));
    assert.equal(shards.Shards.length, 2);
  });
  await check("put_record and put_records, read back byte for byte", async () => {
    const one = await kinesis.send(new PutRecordCommand({
      StreamName: "js", Data: encode("single"), PartitionKey: "p", ExplicitHashKey: "0" }));
    assert.equal(one.ShardId, "shardId-000000000000");
    const entries = Array.from({ length: 500 }, (_, i) => ({
      Data: encode(`record-${i}`), PartitionKey: "p", ExplicitHashKey: "1" }));
    const put = await kinesis.send(new PutRecordsCommand({ StreamName: "js", Records: entries }));
    assert.equal(put.FailedRecordCount, 0);
    assert.equal(put.Records.length, 500);
    const { ShardIterator } = await kinesis.send(new GetShardIteratorCommand({
      StreamName: "js", ShardId: "shardId-000000000000",
      ShardIteratorType: "AT_SEQUENCE_NUMBER", StartingSequenceNumber: one.SequenceNumber }));
    let iterator = ShardIterator;
    const seen = [];
    while (true) {
      const page = await kinesis.send(new GetRecordsCommand({ ShardIterator: iterator, Limit: 200 }));
      if (page.Records.length === 0) break;
      seen.push(...page.Records);
      iterator = page.NextShardIterator;
    }
    assert.equal(seen.length, 501);
    assert.equal(decode(seen[0].Data), "single");
    seen.slice(1).forEach((record, i) => {
      assert.equal(decode(record.Data), `record-${i}`);
      assert.equal(record.SequenceNumber, put.Records[i].SequenceNumber);
      assert.ok(record.ApproximateArrivalTimestamp instanceof Date);
    });
  });
  await check("errors arrive as typed exceptions", async () => {
    await assert.rejects(
      kinesis.send(new DescribeStreamCommand({ StreamName: "missing" })),
      (error) => error.name === "ResourceNotFoundException" && error.$metadata.httpStatusCode === 400,
    );
  });
  await check("SubscribeToShard streams every record put during it, over HTTP/2", async () => {
    const summary = await kinesis.send(new DescribeStreamSummaryCommand({ StreamName: "js" }));
    const { Consumer } = await kinesis.send(new RegisterStreamConsumerCommand({
      StreamARN: summary.StreamDescriptionSummary.StreamARN, ConsumerName: "js-fanout" }));
    for (let i = 0; i < 100; i += 1) {
      const { ConsumerDescription } = await kinesis.send(
        new DescribeStreamConsumerCommand({ ConsumerARN: Consumer.ConsumerARN }));
      if (ConsumerDescription.ConsumerStatus === "ACTIVE") break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    // The SDK sends GOAWAY once the response headers arrive; events must keep coming.
    const abort = new AbortController();
    const subscription = await kinesis.send(new SubscribeToShardCommand({
      ConsumerARN: Consumer.ConsumerARN, ShardId: "shardId-000000000001",
      StartingPosition: { Type: "LATEST" } }), { abortSignal: abort.signal });
    const sent = Array.from({ length: 200 }, (_, i) => `fan-${i}-${"x".repeat(i)}`);
    const producer = (async () => {
      for (let batch = 0; batch < 4; batch += 1) {
        const entries = sent.slice(batch * 50, batch * 50 + 50).map((text) => ({
          Data: encode(text), PartitionKey: "fan", ExplicitHashKey: "340282366920938463463374607431768211455" }));
        const put = await kinesis.send(new PutRecordsCommand({ StreamName: "js", Records: entries }));
        assert.equal(put.FailedRecordCount, 0);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    })();
    const received = [];
    for await (const event of subscription.EventStream) {
      if (event.SubscribeToShardEvent) {
        for (const record of event.SubscribeToShardEvent.Records) received.push(decode(record.Data));
        assert.ok(event.SubscribeToShardEvent.ContinuationSequenceNumber);
      }
      if (received.length >= sent.length) break;
    }
    // Done reading: end the subscription instead of waiting out its 5 minutes.
    abort.abort();
    await producer;
    assert.deepEqual(received, sent);
  });
  console.log(`${passed} passed, 0 failed`);
  kinesis.destroy();
} catch (error) {
  console.log(`not ok - ${error.stack || error}`);
  console.log(`${passed} passed, 1 failed`);
  kinesis.destroy();
  process.exit(1);
}
