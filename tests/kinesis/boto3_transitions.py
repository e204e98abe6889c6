"""Stream state transitions and iterator expiry with boto3, against a spate started with
[kinesis] stream_transition = "1 s" and iterator_ttl = "1 s".
Usage: python boto3_transitions.py http://127.0.0.1:PORT
"""
import sys
import time
import unittest

import boto3
import botocore.config
import botocore.exceptions

ENDPOINT = sys.argv.pop(1)
k = boto3.client(
    "kinesis", endpoint_url=ENDPOINT, region_name="us-east-1",
    aws_access_key_id="a", aws_secret_access_key="b",
    config=botocore.config.Config(retries={"total_max_attempts": 1}),
)


def status(name):
    return k.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"]


def wait_for(predicate, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def code_of(call):
    try:
        call()
    except botocore.exceptions.ClientError as error:
        return error.response["Error"]["Code"]
    raise AssertionError("expected an error")


class Transitions(unittest.TestCase):
    def test_creating_then_active(self):
        k.create_stream(StreamName="slow", ShardCount=1)
        self.assertEqual(status("slow"), "CREATING")
        self.assertEqual(code_of(lambda: k.put_record(StreamName="slow", Data=b"x", PartitionKey="k")), "ResourceNotFoundException")
        self.assertTrue(wait_for(lambda: status("slow") == "ACTIVE"))
        k.put_record(StreamName="slow", Data=b"x", PartitionKey="k")

    def test_deleting_then_gone(self):
        k.create_stream(StreamName="going", ShardCount=1)
        self.assertTrue(wait_for(lambda: status("going") == "ACTIVE"))
        k.delete_stream(StreamName="going")
        self.assertEqual(status("going"), "DELETING")
        self.assertTrue(wait_for(lambda: "going" not in k.list_streams()["StreamNames"]))
        self.assertEqual(code_of(lambda: status("going")), "ResourceNotFoundException")

    def test_updating_while_a_split_is_under_way_then_active(self):
        k.create_stream(StreamName="resplit", ShardCount=1)
        self.assertTrue(wait_for(lambda: status("resplit") == "ACTIVE"))
        k.split_shard(StreamName="resplit", ShardToSplit="shardId-000000000000",
                      NewStartingHashKey=str(2 ** 127))
        self.assertEqual(status("resplit"), "UPDATING")
        # Puts go on while UPDATING; another reshard waits until the stream is ACTIVE.
        k.put_record(StreamName="resplit", Data=b"during", PartitionKey="k")
        self.assertEqual(code_of(lambda: k.split_shard(
            StreamName="resplit", ShardToSplit="shardId-000000000000",
            NewStartingHashKey=str(2 ** 126))), "ResourceInUseException")
        self.assertEqual(code_of(lambda: k.update_shard_count(
            StreamName="resplit", TargetShardCount=2, ScalingType="UNIFORM_SCALING")),
            "ResourceInUseException")
        self.assertTrue(wait_for(lambda: status("resplit") == "ACTIVE"))
        shards = k.list_shards(StreamName="resplit")["Shards"]
        self.assertEqual(len(shards), 3)
        self.assertIn("EndingSequenceNumber", shards[0]["SequenceNumberRange"])

    def test_consumers_pass_through_creating_and_at_most_five_at_once(self):
        k.create_stream(StreamName="fans", ShardCount=1)
        self.assertTrue(wait_for(lambda: status("fans") == "ACTIVE"))
        arn = k.describe_stream_summary(StreamName="fans")["StreamDescriptionSummary"]["StreamARN"]
        first = k.register_stream_consumer(StreamARN=arn, ConsumerName="c0")["Consumer"]
        self.assertEqual(first["ConsumerStatus"], "CREATING")
        for i in range(1, 5):
            k.register_stream_consumer(StreamARN=arn, ConsumerName="c%d" % i)
        self.assertEqual(code_of(lambda: k.register_stream_consumer(StreamARN=arn, ConsumerName="c5")),
                         "LimitExceededException")
        # A subscription needs an ACTIVE consumer.
        self.assertEqual(code_of(lambda: k.subscribe_to_shard(
            ConsumerARN=first["ConsumerARN"], ShardId="shardId-000000000000",
            StartingPosition={"Type": "LATEST"})), "ResourceInUseException")
        consumer = lambda: k.describe_stream_consumer(ConsumerARN=first["ConsumerARN"])["ConsumerDescription"]
        self.assertTrue(wait_for(lambda: consumer()["ConsumerStatus"] == "ACTIVE"))
        k.register_stream_consumer(StreamARN=arn, ConsumerName="c5")
        k.deregister_stream_consumer(ConsumerARN=first["ConsumerARN"])
        self.assertEqual(consumer()["ConsumerStatus"], "DELETING")
        def gone():
            try:
                consumer()
            except botocore.exceptions.ClientError as error:
                return error.response["Error"]["Code"] == "ResourceNotFoundException"
            return False
        self.assertTrue(wait_for(gone))

    def test_iterators_expire(self):
        k.create_stream(StreamName="ttl", ShardCount=1)
        self.assertTrue(wait_for(lambda: status("ttl") == "ACTIVE"))
        iterator = k.get_shard_iterator(StreamName="ttl", ShardId="shardId-000000000000",
                                        ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        k.get_records(ShardIterator=iterator)
        time.sleep(1.5)
        self.assertEqual(code_of(lambda: k.get_records(ShardIterator=iterator)), "ExpiredIteratorException")


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)
