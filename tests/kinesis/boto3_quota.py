"""Per-shard quotas and on-demand scaling with boto3, against a spate started with
[quota] enabled = true, write_records_per_second = 10, read_calls_per_second = 1,
read_bytes_per_second = "100 KiB", on_demand_split_percent = 1 and on_demand_window =
"2 s" (the other rates at Kinesis's defaults).
Usage: python boto3_quota.py http://127.0.0.1:PORT
"""
import sys
import time
import unittest

import boto3
import botocore.config
import botocore.exceptions

ENDPOINT = sys.argv.pop(1)
# No retries: botocore would retry throttling away, and the test must see it
# (max_attempts counts retries, total_max_attempts counts attempts).
k = boto3.client(
    "kinesis", endpoint_url=ENDPOINT, region_name="us-east-1",
    aws_access_key_id="a", aws_secret_access_key="b",
    config=botocore.config.Config(retries={"total_max_attempts": 1}),
)
THROTTLED = "ProvisionedThroughputExceededException"


def code_of(call):
    try:
        call()
    except botocore.exceptions.ClientError as error:
        return error.response["Error"]["Code"]
    return None


def wait_for(predicate, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


class Quota(unittest.TestCase):
    def test_puts_past_the_record_rate_are_throttled_per_record(self):
        k.create_stream(StreamName="quota-put", ShardCount=1)
        records = [{"PartitionKey": "k", "Data": b"x" * 10} for _ in range(500)]
        started = time.time()
        out = k.put_records(StreamName="quota-put", Records=records)
        elapsed = time.time() - started
        accepted = 500 - out["FailedRecordCount"]
        self.assertGreaterEqual(accepted, 10)
        self.assertLessEqual(accepted, 10 + int(elapsed * 10) + 1)
        failed = [r for r in out["Records"] if "ErrorCode" in r]
        self.assertEqual({r["ErrorCode"] for r in failed}, {THROTTLED})
        self.assertIn("Rate exceeded for shard shardId-000000000000 in stream quota-put",
                      failed[0]["ErrorMessage"])
        # Accepted records come first: a shard's quota admits a prefix of its records.
        self.assertTrue(all("SequenceNumber" in r for r in out["Records"][:accepted]))
        # A single PutRecord over the budget fails as a whole.
        codes = [code_of(lambda: k.put_record(StreamName="quota-put", PartitionKey="k", Data=b"y"))
                 for _ in range(30)]
        self.assertIn(THROTTLED, codes)
        time.sleep(1.1)
        k.put_record(StreamName="quota-put", PartitionKey="k", Data=b"after a second")

    def test_reads_past_the_call_rate_are_throttled(self):
        k.create_stream(StreamName="quota-get", ShardCount=1)
        k.put_record(StreamName="quota-get", PartitionKey="k", Data=b"x")
        iterator = k.get_shard_iterator(StreamName="quota-get", ShardId="shardId-000000000000",
                                        ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        codes = [code_of(lambda: k.get_records(ShardIterator=iterator)) for _ in range(2)]
        self.assertEqual(codes, [None, THROTTLED])
        time.sleep(1.1)
        self.assertEqual(len(k.get_records(ShardIterator=iterator)["Records"]), 1)

    def test_fan_out_is_held_to_the_read_rate_per_consumer_and_shard(self):
        k.create_stream(StreamName="quota-fan", ShardCount=1)
        arn = k.describe_stream_summary(StreamName="quota-fan")["StreamDescriptionSummary"]["StreamARN"]
        consumer = k.register_stream_consumer(StreamARN=arn, ConsumerName="c")["Consumer"]["ConsumerARN"]
        records = [{"PartitionKey": "k", "Data": bytes([i]) * (100 * 1024)} for i in range(4)]
        self.assertEqual(k.put_records(StreamName="quota-fan", Records=records)["FailedRecordCount"], 0)
        started = time.time()
        out = k.subscribe_to_shard(ConsumerARN=consumer, ShardId="shardId-000000000000",
                                   StartingPosition={"Type": "TRIM_HORIZON"})
        got = []
        for event in out["EventStream"]:
            got += event["SubscribeToShardEvent"]["Records"]
            if len(got) >= 4:
                break
        elapsed = time.time() - started
        out["EventStream"].close()
        self.assertEqual([r["Data"][0] for r in got], [0, 1, 2, 3])
        # 400 KiB at 100 KiB/s, with one second's worth to start from and one record let
        # through on credit (an event carries at least one record): about 2 s; unthrottled
        # it takes a tenth of that.
        self.assertGreater(elapsed, 1.5, "fan-out ran past its read rate")
        self.assertLess(elapsed, 10)

    def test_on_demand_streams_split_their_hot_shards(self):
        k.create_stream(StreamName="auto", StreamModeDetails={"StreamMode": "ON_DEMAND"})
        summary = k.describe_stream_summary(StreamName="auto")["StreamDescriptionSummary"]
        self.assertEqual(summary["StreamModeDetails"]["StreamMode"], "ON_DEMAND")
        self.assertEqual(summary["OpenShardCount"], 4)
        # 10 records of 5,000 bytes a second into one shard: past 1 % of its 1 MiB/s.
        records = [{"PartitionKey": "hot", "Data": b"z" * 5000} for _ in range(50)]

        def open_shards():
            k.put_records(StreamName="auto", Records=records)
            time.sleep(0.1)
            summary = k.describe_stream_summary(StreamName="auto")["StreamDescriptionSummary"]
            return summary["OpenShardCount"]
        self.assertTrue(wait_for(lambda: open_shards() == 5, 15), "the hot shard was not split")
        arn = summary["StreamARN"]
        k.update_stream_mode(StreamARN=arn, StreamModeDetails={"StreamMode": "PROVISIONED"})
        summary = k.describe_stream_summary(StreamName="auto")["StreamDescriptionSummary"]
        self.assertEqual(summary["StreamModeDetails"]["StreamMode"], "PROVISIONED")
        self.assertEqual(code_of(lambda: k.update_stream_mode(
            StreamARN=arn, StreamModeDetails={"StreamMode": "SOMETIMES"})), "ValidationException")


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)
