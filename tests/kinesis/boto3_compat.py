"""Kinesis compatibility with a real AWS client: boto3 against a running spate server.

Run by tests/kinesis.rs (which starts the server) as:
    python boto3_compat.py http://127.0.0.1:PORT
Every check is a unittest test; the process exits non-zero when any fails.
"""
import base64
import datetime
import hashlib
import sys
import time
import unittest

import boto3
import botocore.config
import botocore.exceptions

ENDPOINT = sys.argv.pop(1) if len(sys.argv) > 1 else "http://127.0.0.1:4567"
MAX_HASH = 2**128 - 1


def client(validate=True):
    return boto3.client(
        "kinesis",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=botocore.config.Config(
            parameter_validation=validate, retries={"total_max_attempts": 1}
        ),
    )


def error_code(call):
    try:
        call()
    except botocore.exceptions.ClientError as error:
        return error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError("the call succeeded; an error was expected")


def read_shard(kinesis, stream, shard_id, iterator_type="TRIM_HORIZON", **extra):
    iterator = kinesis.get_shard_iterator(
        StreamName=stream, ShardId=shard_id, ShardIteratorType=iterator_type, **extra
    )["ShardIterator"]
    records = []
    while True:
        page = kinesis.get_records(ShardIterator=iterator, Limit=1000)
        records.extend(page["Records"])
        if not page["Records"]:
            return records
        iterator = page["NextShardIterator"]


class Boto3Compat(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.k = client()
        cls.raw = client(validate=False)
        cls.k.create_stream(StreamName="compat", ShardCount=4)
        cls.shards = cls.k.list_shards(StreamName="compat")["Shards"]

    def test_create_describe_list(self):
        description = self.k.describe_stream(StreamName="compat")["StreamDescription"]
        self.assertEqual(description["StreamStatus"], "ACTIVE")
        self.assertEqual(description["RetentionPeriodHours"], 24)
        self.assertEqual(len(description["Shards"]), 4)
        self.assertFalse(description["HasMoreShards"])
        self.assertEqual(
            description["StreamARN"], "arn:aws:kinesis:us-east-1:000000000000:stream/compat"
        )
        summary = self.k.describe_stream_summary(StreamName="compat")["StreamDescriptionSummary"]
        self.assertEqual(summary["OpenShardCount"], 4)
        self.assertNotIn("StreamId", summary)
        self.assertIn("compat", self.k.list_streams()["StreamNames"])
        by_arn = self.k.describe_stream_summary(StreamARN=description["StreamARN"])
        self.assertEqual(by_arn["StreamDescriptionSummary"]["StreamName"], "compat")
        # Hash ranges cover 0..2^128-1 exactly as Kinesis splits them.
        ranges = [
            (int(s["HashKeyRange"]["StartingHashKey"]), int(s["HashKeyRange"]["EndingHashKey"]))
            for s in self.shards
        ]
        self.assertEqual(ranges[0][0], 0)
        self.assertEqual(ranges[-1][1], MAX_HASH)
        self.assertEqual(ranges[0][1], 2**128 // 4 - 1)
        for (_, end), (start, _) in zip(ranges, ranges[1:]):
            self.assertEqual(end + 1, start)
        page = self.k.list_shards(StreamName="compat", MaxResults=3)
        self.assertEqual(len(page["Shards"]), 3)
        rest = self.k.list_shards(NextToken=page["NextToken"])
        self.assertEqual([s["ShardId"] for s in rest["Shards"]], ["shardId-000000000003"])
        after = self.k.list_shards(
            StreamName="compat",
            ShardFilter={"Type": "AFTER_SHARD_ID", "ShardId": "shardId-000000000001"},
        )
        self.assertEqual(len(after["Shards"]), 2)
        limits = self.k.describe_limits()
        self.assertGreaterEqual(limits["OpenShardCount"], 4)

    def shard_for(self, hash_key):
        for shard in self.shards:
            low = int(shard["HashKeyRange"]["StartingHashKey"])
            high = int(shard["HashKeyRange"]["EndingHashKey"])
            if low <= hash_key <= high:
                return shard["ShardId"]
        raise AssertionError(f"no shard holds {hash_key}")

    def test_put_record_routes_by_md5_and_reads_back(self):
        key = "user-42"
        result = self.k.put_record(StreamName="compat", Data=b"\x00\xffhello", PartitionKey=key)
        md5 = int.from_bytes(hashlib.md5(key.encode()).digest(), "big")
        self.assertEqual(result["ShardId"], self.shard_for(md5))
        records = read_shard(
            self.k,
            "compat",
            result["ShardId"],
            "AT_SEQUENCE_NUMBER",
            StartingSequenceNumber=result["SequenceNumber"],
        )
        self.assertEqual(records[0]["Data"], b"\x00\xffhello")
        self.assertEqual(records[0]["PartitionKey"], key)
        self.assertEqual(records[0]["SequenceNumber"], result["SequenceNumber"])
        arrival = records[0]["ApproximateArrivalTimestamp"]
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertLess(abs((now - arrival).total_seconds()), 60)

    def test_put_records_of_500_in_order_and_byte_for_byte(self):
        self.k.create_stream(StreamName="batch", ShardCount=3)
        entries = [
            {"Data": bytes([i % 256]) * (i % 50 + 1), "PartitionKey": f"key-{i % 7}"}
            for i in range(500)
        ]
        entries[10]["ExplicitHashKey"] = str(MAX_HASH)
        result = self.k.put_records(StreamName="batch", Records=entries)
        self.assertEqual(result["FailedRecordCount"], 0)
        self.assertEqual(len(result["Records"]), 500)
        self.assertEqual(result["Records"][10]["ShardId"], "shardId-000000000002")
        stored = {}
        for shard in self.k.list_shards(StreamName="batch")["Shards"]:
            records = read_shard(self.k, "batch", shard["ShardId"])
            sequence = [int(r["SequenceNumber"]) for r in records]
            self.assertEqual(sequence, sorted(sequence), "order within a shard")
            for record in records:
                stored[record["SequenceNumber"]] = record
        for entry, answer in zip(entries, result["Records"]):
            record = stored[answer["SequenceNumber"]]
            self.assertEqual(record["Data"], entry["Data"])
            self.assertEqual(record["PartitionKey"], entry["PartitionKey"])
        # Per partition key, records keep their request order.
        last = {}
        for entry, answer in zip(entries, result["Records"]):
            if "ExplicitHashKey" in entry:
                continue
            key = entry["PartitionKey"]
            number = int(answer["SequenceNumber"])
            self.assertGreater(number, last.get(key, -1))
            last[key] = number

    def test_every_iterator_type(self):
        self.k.create_stream(StreamName="iterators", ShardCount=1)
        shard = "shardId-000000000000"
        first = [
            self.k.put_record(StreamName="iterators", Data=f"r{i}".encode(), PartitionKey="p")
            for i in range(5)
        ]
        self.assertEqual(len(read_shard(self.k, "iterators", shard)), 5)
        at = read_shard(
            self.k, "iterators", shard, "AT_SEQUENCE_NUMBER",
            StartingSequenceNumber=first[2]["SequenceNumber"],
        )
        self.assertEqual([r["Data"] for r in at], [b"r2", b"r3", b"r4"])
        after = read_shard(
            self.k, "iterators", shard, "AFTER_SEQUENCE_NUMBER",
            StartingSequenceNumber=first[2]["SequenceNumber"],
        )
        self.assertEqual([r["Data"] for r in after], [b"r3", b"r4"])
        latest = self.k.get_shard_iterator(
            StreamName="iterators", ShardId=shard, ShardIteratorType="LATEST"
        )["ShardIterator"]
        self.assertEqual(self.k.get_records(ShardIterator=latest)["Records"], [])
        time.sleep(0.05)
        middle = datetime.datetime.now(datetime.timezone.utc)
        time.sleep(0.05)
        self.k.put_record(StreamName="iterators", Data=b"new", PartitionKey="p")
        page = self.k.get_records(ShardIterator=latest)
        self.assertEqual([r["Data"] for r in page["Records"]], [b"new"])
        self.assertEqual(page["MillisBehindLatest"], 0)
        by_time = read_shard(self.k, "iterators", shard, "AT_TIMESTAMP", Timestamp=middle)
        self.assertEqual([r["Data"] for r in by_time], [b"new"])
        # The next iterator after the last record returns nothing more, and never repeats.
        again = self.k.get_records(ShardIterator=page["NextShardIterator"])
        self.assertEqual(again["Records"], [])

    def test_each_limit_gets_its_error_and_appends_nothing(self):
        self.k.create_stream(StreamName="limits", ShardCount=1)
        raw = self.raw
        code = lambda call: error_code(call)[0]
        too_many = [{"Data": b"x", "PartitionKey": "k"}] * 501
        self.assertEqual(code(lambda: raw.put_records(StreamName="limits", Records=too_many)), "ValidationException")
        big = b"x" * (1024 * 1024)
        heavy = [{"Data": big, "PartitionKey": "k"}] * 5 + [{"Data": b"xy", "PartitionKey": "k"}]
        self.assertEqual(code(lambda: raw.put_records(StreamName="limits", Records=heavy)), "InvalidArgumentException")
        self.assertEqual(
            code(lambda: raw.put_record(StreamName="limits", Data=big + b"x", PartitionKey="k")),
            "ValidationException",
        )
        self.assertEqual(
            code(lambda: raw.put_record(StreamName="limits", Data=b"x", PartitionKey="")),
            "ValidationException",
        )
        self.assertEqual(
            code(lambda: raw.put_record(StreamName="limits", Data=b"x", PartitionKey="k" * 257)),
            "ValidationException",
        )
        self.assertEqual(
            code(lambda: raw.put_record(StreamName="limits", Data=b"x", PartitionKey="k", ExplicitHashKey=str(2**128))),
            "InvalidArgumentException",
        )
        self.assertEqual(code(lambda: raw.describe_stream(StreamName="bad name!")), "ValidationException")
        self.assertEqual(code(lambda: raw.describe_stream(StreamName="x" * 129)), "ValidationException")
        self.assertEqual(code(lambda: self.k.describe_stream(StreamName="missing")), "ResourceNotFoundException")
        self.assertEqual(
            code(lambda: self.k.put_record(StreamName="missing", Data=b"x", PartitionKey="k")),
            "ResourceNotFoundException",
        )
        self.assertEqual(code(lambda: self.k.create_stream(StreamName="limits", ShardCount=1)), "ResourceInUseException")
        self.assertEqual(read_shard(self.k, "limits", "shardId-000000000000"), [])

    def test_forged_iterators_are_rejected(self):
        iterator = self.k.get_shard_iterator(
            StreamName="compat", ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        edited = ("A" if iterator[3] != "A" else "B").join([iterator[:3], iterator[4:]])
        self.assertEqual(error_code(lambda: self.k.get_records(ShardIterator=edited)), ("InvalidArgumentException", 400))
        forged = base64.urlsafe_b64encode(b"\x00" * 44).decode().rstrip("=")
        self.assertEqual(error_code(lambda: self.k.get_records(ShardIterator=forged))[0], "InvalidArgumentException")

    def test_unimplemented_operations_answer_with_a_shaped_error(self):
        code, status = error_code(lambda: self.k.start_stream_encryption(
            StreamName="compat", EncryptionType="KMS", KeyId="alias/aws/kinesis"))
        self.assertEqual((code, status), ("UnknownOperationException", 400))

    def test_retention_periods(self):
        self.k.create_stream(StreamName="kept", ShardCount=1)
        self.k.increase_stream_retention_period(StreamName="kept", RetentionPeriodHours=48)
        summary = self.k.describe_stream_summary(StreamName="kept")["StreamDescriptionSummary"]
        self.assertEqual(summary["RetentionPeriodHours"], 48)
        code = lambda call: error_code(call)[0]
        self.assertEqual(code(lambda: self.k.increase_stream_retention_period(StreamName="kept", RetentionPeriodHours=30)), "InvalidArgumentException")
        self.assertEqual(code(lambda: self.k.decrease_stream_retention_period(StreamName="kept", RetentionPeriodHours=72)), "InvalidArgumentException")
        self.assertEqual(code(lambda: self.k.increase_stream_retention_period(StreamName="kept", RetentionPeriodHours=9000)), "InvalidArgumentException")
        self.assertEqual(code(lambda: self.k.decrease_stream_retention_period(StreamName="kept", RetentionPeriodHours=12)), "InvalidArgumentException")
        self.k.decrease_stream_retention_period(StreamName="kept", RetentionPeriodHours=24)
        description = self.k.describe_stream(StreamName="kept")["StreamDescription"]
        self.assertEqual(description["RetentionPeriodHours"], 24)

    def test_tags(self):
        self.k.create_stream(StreamName="tagged", ShardCount=1, Tags={"team": "data"})
        self.k.add_tags_to_stream(StreamName="tagged", Tags={"env": "test", "owner": "me"})
        tags = self.k.list_tags_for_stream(StreamName="tagged")
        self.assertEqual({t["Key"]: t["Value"] for t in tags["Tags"]}, {"team": "data", "env": "test", "owner": "me"})
        self.assertFalse(tags["HasMoreTags"])
        page = self.k.list_tags_for_stream(StreamName="tagged", Limit=1)
        self.assertEqual([t["Key"] for t in page["Tags"]], ["env"])
        self.assertTrue(page["HasMoreTags"])
        self.k.remove_tags_from_stream(StreamName="tagged", TagKeys=["env", "unknown"])
        tags = self.k.list_tags_for_stream(StreamName="tagged", ExclusiveStartTagKey="owner")
        self.assertEqual([t["Key"] for t in tags["Tags"]], ["team"])
        many = {f"k{i}": "v" for i in range(60)}
        self.assertEqual(error_code(lambda: self.k.add_tags_to_stream(StreamName="tagged", Tags=many))[0], "InvalidArgumentException")

    def test_delete_stream(self):
        self.k.create_stream(StreamName="doomed", ShardCount=1)
        self.k.delete_stream(StreamName="doomed")
        self.assertNotIn("doomed", self.k.list_streams()["StreamNames"])


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)
