"""Enhanced fan-out with boto3 against a spate started with [kinesis]
subscription_lifetime = "15 s": consumer registration, SubscribeToShard event streams
receiving every record put during the subscription in order and byte for byte, the
5-second takeover rule, the end of a subscription's life, and ChildShards when the shard
closes.
Usage: python boto3_fanout.py http://127.0.0.1:PORT
"""
import sys
import threading
import time
import unittest

import boto3
import botocore.config
import botocore.exceptions

ENDPOINT = sys.argv.pop(1)


def client():
    return boto3.client(
        "kinesis", endpoint_url=ENDPOINT, region_name="us-east-1",
        aws_access_key_id="a", aws_secret_access_key="b",
        config=botocore.config.Config(retries={"total_max_attempts": 1}, read_timeout=20))


k = client()


def code_of(call):
    try:
        call()
    except botocore.exceptions.ClientError as error:
        return error.response["Error"]["Code"]
    raise AssertionError("expected an error")


def stream_arn(name):
    return k.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamARN"]


def register(name, consumer):
    arn = k.register_stream_consumer(StreamARN=stream_arn(name), ConsumerName=consumer)["Consumer"]["ConsumerARN"]
    deadline = time.time() + 10
    while time.time() < deadline:
        status = k.describe_stream_consumer(ConsumerARN=arn)["ConsumerDescription"]["ConsumerStatus"]
        if status == "ACTIVE":
            return arn
        time.sleep(0.05)
    raise AssertionError("consumer never became ACTIVE")


class Reader(threading.Thread):
    """Reads a subscription's events until told to stop or the stream ends; a slow one
    stops reading after its first event until `hold` is set."""

    def __init__(self, arn, shard, position, want=None, hold=None, resubscribe=False):
        super().__init__(daemon=True)
        self.arn, self.shard, self.position, self.want = arn, shard, position, want
        self.hold, self.held, self.resubscribe = hold, False, resubscribe
        self.records, self.events, self.child_shards = [], [], None
        self.subscribed = threading.Event()
        self.ended = threading.Event()
        self.error = None

    def run(self):
        try:
            position = self.position
            while True:
                out = client().subscribe_to_shard(
                    ConsumerARN=self.arn, ShardId=self.shard, StartingPosition=position)
                self.subscribed.set()
                if self.read(out["EventStream"]) or not self.resubscribe or not self.events:
                    break
                # The subscription's life ended first: go on from where it stopped, as
                # clients do.
                position = {"Type": "AFTER_SEQUENCE_NUMBER",
                            "SequenceNumber": self.events[-1]["ContinuationSequenceNumber"]}
        except Exception as error:  # reported by the test
            self.error = error
            self.subscribed.set()
        self.ended.set()

    def read(self, stream):
        """Reads one subscription; True once `want` records have arrived."""
        for event in stream:
            if self.hold is not None and not self.held:
                self.held = True
                self.hold.wait(60)
            body = event["SubscribeToShardEvent"]
            self.events.append(body)
            self.records += body["Records"]
            if body.get("ChildShards"):
                self.child_shards = body["ChildShards"]
            if self.want is not None and len(self.records) >= self.want:
                stream.close()
                return True
        return False


def same_data(a, b):
    """Whether two record lists carry the same data, without printing megabytes."""
    return len(a) == len(b) and all(x["Data"] == y["Data"] for x, y in zip(a, b))


class FanOut(unittest.TestCase):
    def test_consumers_register_describe_list_and_deregister(self):
        k.create_stream(StreamName="fan-admin", ShardCount=1)
        arn = register("fan-admin", "dashboard")
        self.assertIn(":stream/fan-admin/consumer/dashboard:", arn)
        register("fan-admin", "archiver")
        listed = k.list_stream_consumers(StreamARN=stream_arn("fan-admin"))["Consumers"]
        self.assertEqual(sorted(c["ConsumerName"] for c in listed), ["archiver", "dashboard"])
        page = k.list_stream_consumers(StreamARN=stream_arn("fan-admin"), MaxResults=1)
        self.assertEqual(len(page["Consumers"]), 1)
        rest = k.list_stream_consumers(StreamARN=stream_arn("fan-admin"), NextToken=page["NextToken"])
        self.assertEqual(len(rest["Consumers"]), 1)
        summary = k.describe_stream_summary(StreamName="fan-admin")["StreamDescriptionSummary"]
        self.assertEqual(summary["ConsumerCount"], 2)
        described = k.describe_stream_consumer(
            StreamARN=stream_arn("fan-admin"), ConsumerName="dashboard")["ConsumerDescription"]
        self.assertEqual(described["ConsumerARN"], arn)
        self.assertEqual(described["StreamARN"], stream_arn("fan-admin"))
        self.assertEqual(code_of(lambda: k.register_stream_consumer(
            StreamARN=stream_arn("fan-admin"), ConsumerName="dashboard")), "ResourceInUseException")
        self.assertEqual(code_of(lambda: k.register_stream_consumer(
            StreamARN=stream_arn("fan-admin"), ConsumerName="bad name")), "ValidationException")
        self.assertEqual(code_of(lambda: k.describe_stream_consumer(
            StreamARN=stream_arn("fan-admin"), ConsumerName="nobody")), "ResourceNotFoundException")
        self.assertEqual(code_of(lambda: k.delete_stream(StreamName="fan-admin")),
                         "ResourceInUseException")
        k.deregister_stream_consumer(ConsumerARN=arn)
        self.assertEqual(code_of(lambda: k.describe_stream_consumer(ConsumerARN=arn)),
                         "ResourceNotFoundException")
        k.delete_stream(StreamName="fan-admin", EnforceConsumerDeletion=True)

    def test_subscribers_receive_every_record_put_during_the_subscription_in_order(self):
        k.create_stream(StreamName="fan", ShardCount=2)
        arn = register("fan", "live")
        shard = "shardId-000000000000"
        k.put_record(StreamName="fan", PartitionKey="before", Data=b"before", ExplicitHashKey="1")
        reader = Reader(arn, shard, {"Type": "LATEST"}, want=300)
        reader.start()
        self.assertTrue(reader.subscribed.wait(10))
        self.assertIsNone(reader.error)
        sent = []
        for batch in range(3):
            records = [{"PartitionKey": "key-%d" % (i % 7), "ExplicitHashKey": str(i + 2),
                        "Data": bytes([batch, i % 256]) + b"\x00\xff" * (i % 50)}
                       for i in range(100)]
            out = k.put_records(StreamName="fan", Records=records)
            self.assertEqual(out["FailedRecordCount"], 0)
            sent += records
            time.sleep(0.05)
        self.assertTrue(reader.ended.wait(15), "the subscriber did not receive 300 records")
        self.assertIsNone(reader.error)
        got = [(r["PartitionKey"], r["Data"]) for r in reader.records]
        self.assertEqual(got, [(r["PartitionKey"], r["Data"]) for r in sent])
        numbers = [int(r["SequenceNumber"]) for r in reader.records]
        self.assertEqual(numbers, sorted(numbers))
        last = reader.events[-1]
        self.assertEqual(last["ContinuationSequenceNumber"], reader.records[-1]["SequenceNumber"])
        self.assertIn("MillisBehindLatest", last)

        # A second subscription from the continuation point, while the first is young,
        # is refused; a new consumer may read the same shard from the trim horizon.
        self.assertEqual(code_of(lambda: client().subscribe_to_shard(
            ConsumerARN=arn, ShardId=shard, StartingPosition={"Type": "LATEST"})),
            "ResourceInUseException")
        other = register("fan", "archive")
        archive = Reader(other, shard, {"Type": "TRIM_HORIZON"}, want=301)
        archive.start()
        self.assertTrue(archive.ended.wait(15))
        self.assertIsNone(archive.error)
        self.assertEqual(archive.records[0]["Data"], b"before")
        self.assertEqual([r["Data"] for r in archive.records[1:]], [r["Data"] for r in sent])

    def test_a_slow_subscriber_holds_back_neither_producers_nor_other_subscribers(self):
        k.create_stream(StreamName="fan-slow", ShardCount=1)
        fast_arn = register("fan-slow", "fast")
        slow_arn = register("fan-slow", "slow")
        shard = "shardId-000000000000"
        records = 97  # one for the slow one to hold on, then 96 of 256 KiB
        fast = Reader(fast_arn, shard, {"Type": "LATEST"}, want=records, resubscribe=True)
        release = threading.Event()
        slow = Reader(slow_arn, shard, {"Type": "LATEST"}, want=records, hold=release,
                      resubscribe=True)
        fast.start()
        slow.start()
        self.assertTrue(fast.subscribed.wait(10) and slow.subscribed.wait(10))
        k.put_record(StreamName="fan-slow", PartitionKey="k", Data=b"hold the slow one")
        # 24 MiB while the slow subscriber reads nothing after its first event: several
        # times what its queue and socket buffers hold, so its server task has to stop and
        # wait for it. Were producers or subscriptions coupled to it, the puts or the fast
        # subscriber would stall at about that much.
        blob = b"z" * (256 * 1024)
        started = time.time()
        for batch in range(24):
            entries = [{"PartitionKey": "k", "Data": blob + bytes([batch, i])} for i in range(4)]
            self.assertEqual(k.put_records(StreamName="fan-slow", Records=entries)["FailedRecordCount"], 0)
        produced = time.time() - started
        self.assertTrue(fast.ended.wait(40), "the fast subscriber stalled while the slow one slept")
        self.assertIsNone(fast.error)
        self.assertEqual(len(fast.records), records)
        self.assertTrue(slow.held and not slow.ended.is_set())
        self.assertEqual(len(slow.records), 0, "the slow subscriber was not holding")
        release.set()
        self.assertTrue(slow.ended.wait(40), "the slow subscriber never caught up")
        self.assertIsNone(slow.error)
        self.assertTrue(same_data(slow.records, fast.records),
                        "the slow subscriber got %d records, the fast %d"
                        % (len(slow.records), len(fast.records)))
        print("24 MiB put in %.2f s and all of it read by one subscriber while another read "
              "nothing; the other then caught up from the log" % produced, file=sys.stderr)

    def test_a_subscription_ends_after_its_lifetime_and_resumes_from_its_continuation(self):
        k.create_stream(StreamName="fan-life", ShardCount=1)
        arn = register("fan-life", "resumer")
        shard = "shardId-000000000000"
        k.put_records(StreamName="fan-life", Records=[
            {"PartitionKey": "k", "Data": b"%d" % i} for i in range(10)])
        started = time.time()
        reader = Reader(arn, shard, {"Type": "TRIM_HORIZON"})
        reader.start()
        self.assertTrue(reader.ended.wait(25), "the subscription outlived its lifetime")
        self.assertIsNone(reader.error)
        self.assertGreaterEqual(time.time() - started, 14.5)
        self.assertEqual([r["Data"] for r in reader.records], [b"%d" % i for i in range(10)])
        continuation = reader.events[-1]["ContinuationSequenceNumber"]
        k.put_records(StreamName="fan-life", Records=[
            {"PartitionKey": "k", "Data": b"%d" % i} for i in range(10, 15)])
        time.sleep(0.6)  # past the 5 s takeover window of the first subscription
        again = Reader(arn, shard, {"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": continuation}, want=5)
        again.start()
        self.assertTrue(again.ended.wait(15))
        self.assertIsNone(again.error)
        self.assertEqual([r["Data"] for r in again.records], [b"%d" % i for i in range(10, 15)])

    def test_a_subscription_to_a_shard_that_closes_ends_with_its_child_shards(self):
        k.create_stream(StreamName="fan-split", ShardCount=1)
        arn = register("fan-split", "follower")
        shard = "shardId-000000000000"
        reader = Reader(arn, shard, {"Type": "LATEST"})
        reader.start()
        self.assertTrue(reader.subscribed.wait(10))
        k.put_record(StreamName="fan-split", PartitionKey="k", Data=b"last words")
        time.sleep(0.2)
        k.split_shard(StreamName="fan-split", ShardToSplit=shard, NewStartingHashKey=str(2 ** 127))
        self.assertTrue(reader.ended.wait(10), "the subscription did not end with its shard")
        self.assertIsNone(reader.error)
        self.assertEqual([r["Data"] for r in reader.records], [b"last words"])
        self.assertEqual(sorted(c["ShardId"] for c in reader.child_shards),
                         ["shardId-000000000001", "shardId-000000000002"])
        self.assertEqual(reader.child_shards[0]["ParentShards"], [shard])


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)
