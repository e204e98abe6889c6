"""Resharding with boto3 against a real spate: SplitShard under continuous put load with a
checker that every acknowledged record is read exactly once through the lineage and in
order per partition key; MergeShards; UpdateShardCount 1 -> 2 -> 4 -> 2; ShardFilter; the
errors AWS names for invalid splits, merges and scalings.
Usage: python boto3_reshard.py http://127.0.0.1:PORT
"""
import sys
import threading
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
MAX = 2 ** 128 - 1


def code_of(call):
    try:
        call()
    except botocore.exceptions.ClientError as error:
        return error.response["Error"]["Code"]
    raise AssertionError("expected an error")


def shards_of(name, **filters):
    shards, token = [], None
    while True:
        page = k.list_shards(NextToken=token) if token else k.list_shards(StreamName=name, **filters)
        shards += page["Shards"]
        token = page.get("NextToken")
        if not token:
            return shards


def read_shard(name, shard_id):
    """Every record of a shard from the trim horizon. For a closed shard, reads until the
    service says it ended (no NextShardIterator); for an open one, until it is caught up.
    Returns (records, child shard ids or None)."""
    iterator = k.get_shard_iterator(
        StreamName=name, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    records = []
    for _ in range(10000):
        out = k.get_records(ShardIterator=iterator, Limit=1000)
        records += out["Records"]
        iterator = out.get("NextShardIterator")
        if iterator is None:
            return records, [c["ShardId"] for c in out.get("ChildShards", [])]
        if not out["Records"] and out["MillisBehindLatest"] == 0:
            return records, None
    raise AssertionError("shard %s never ended" % shard_id)


def read_through_lineage(name):
    """Reads every shard, each only after its parents, as the KCL does; returns the
    records in that order, and each closed shard's reported children."""
    shards = {s["ShardId"]: s for s in shards_of(name)}
    done, ordered, children = set(), [], {}
    while len(done) < len(shards):
        ready = [sid for sid, s in sorted(shards.items()) if sid not in done and all(
            p in done or p not in shards
            for p in (s.get("ParentShardId"), s.get("AdjacentParentShardId")) if p)]
        assert ready, "lineage has a cycle"
        for sid in ready:
            records, kids = read_shard(name, sid)
            ordered += [(sid, r) for r in records]
            children[sid] = kids
            done.add(sid)
    return shards, ordered, children


def check_lineage(test, name, acknowledged):
    shards, ordered, children = read_through_lineage(name)
    seen = {}
    for sid, record in ordered:
        key = record["PartitionKey"]
        counter = int(record["Data"].decode().split(":")[1])
        seen.setdefault(key, []).append(counter)
    for key, counters in acknowledged.items():
        got = seen.get(key, [])
        test.assertEqual(sorted(got), sorted(set(got)), "duplicates for key %s" % key)
        test.assertEqual(got, sorted(got), "records of key %s out of order" % key)
        missing = set(counters) - set(got)
        test.assertFalse(missing, "acknowledged records of %s not read: %s" % (key, sorted(missing)[:5]))
    for sid, shard in shards.items():
        closed = "EndingSequenceNumber" in shard["SequenceNumberRange"]
        if closed:
            expected = sorted(c for c, s in shards.items()
                              if sid in (s.get("ParentShardId"), s.get("AdjacentParentShardId")))
            test.assertEqual(sorted(children[sid] or []), expected, "ChildShards of %s" % sid)
        else:
            test.assertIsNone(children[sid], "open shard %s reported an end" % sid)
    return shards


class Producer(threading.Thread):
    """Puts batches with per-key counters until stopped; keeps what was acknowledged."""

    def __init__(self, name, keys=16):
        super().__init__(daemon=True)
        self.name, self.keys = name, keys
        self.counter = [0] * keys
        self.acknowledged = {}
        self.failed = 0
        self.batches = 0
        self.stop = threading.Event()
        self.error = None

    def run(self):
        client = boto3.client(
            "kinesis", endpoint_url=ENDPOINT, region_name="us-east-1",
            aws_access_key_id="a", aws_secret_access_key="b",
            config=botocore.config.Config(retries={"total_max_attempts": 1}))
        try:
            while not self.stop.is_set():
                # Each batch holds one record per key, so a key's records are put one
                # batch after another and their order is the order of acknowledgement.
                batch = []
                for key in range(self.keys):
                    self.counter[key] += 1
                    batch.append({"PartitionKey": "key-%d" % key,
                                  "Data": b"key-%d:%d" % (key, self.counter[key])})
                out = client.put_records(StreamName=self.name, Records=batch)
                self.batches += 1
                for entry, result in zip(batch, out["Records"]):
                    if "SequenceNumber" in result:
                        key = entry["PartitionKey"]
                        counter = int(entry["Data"].decode().split(":")[1])
                        self.acknowledged.setdefault(key, []).append(counter)
                    else:
                        self.failed += 1
        except Exception as error:  # reported by the test
            self.error = error


def wait_active(name, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        summary = k.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        if summary["StreamStatus"] == "ACTIVE":
            return summary
        time.sleep(0.05)
    raise AssertionError("%s did not become ACTIVE" % name)


class Reshard(unittest.TestCase):
    def test_split_under_continuous_puts_loses_and_repeats_nothing(self):
        k.create_stream(StreamName="split-load", ShardCount=2)
        wait_active("split-load")
        producer = Producer("split-load")
        producer.start()
        time.sleep(0.7)
        before = producer.batches
        shard = k.list_shards(StreamName="split-load")["Shards"][0]
        start = int(shard["HashKeyRange"]["StartingHashKey"])
        end = int(shard["HashKeyRange"]["EndingHashKey"])
        k.split_shard(StreamName="split-load", ShardToSplit=shard["ShardId"],
                      NewStartingHashKey=str((start + end) // 2))
        wait_active("split-load")
        # And split a child while puts keep coming.
        time.sleep(0.5)
        child = [s for s in shards_of("split-load", ShardFilter={"Type": "AT_LATEST"})
                 if s.get("ParentShardId") == shard["ShardId"]][0]
        c_start = int(child["HashKeyRange"]["StartingHashKey"])
        c_end = int(child["HashKeyRange"]["EndingHashKey"])
        k.split_shard(StreamName="split-load", ShardToSplit=child["ShardId"],
                      NewStartingHashKey=str((c_start + c_end) // 2))
        wait_active("split-load")
        time.sleep(0.7)
        producer.stop.set()
        producer.join(30)
        self.assertIsNone(producer.error)
        self.assertEqual(producer.failed, 0)
        self.assertGreater(producer.batches - before, 5, "puts did not run during the splits")
        shards = check_lineage(self, "split-load", producer.acknowledged)
        self.assertEqual(len(shards), 6)
        parent = shards[shard["ShardId"]]
        self.assertIn("EndingSequenceNumber", parent["SequenceNumberRange"])
        total = sum(len(v) for v in producer.acknowledged.values())
        print("split under load: %d records acknowledged, %d batches, all read once in order"
              % (total, producer.batches), file=sys.stderr)

    def test_merge_closes_both_parents_and_lists_lineage_by_filter(self):
        k.create_stream(StreamName="merge", ShardCount=3)
        wait_active("merge")
        for i in range(60):
            k.put_record(StreamName="merge", PartitionKey="k%d" % i, Data=b"before:%d" % i)
        a, b, _ = [s["ShardId"] for s in shards_of("merge")]
        self.assertEqual(code_of(lambda: k.merge_shards(
            StreamName="merge", ShardToMerge=a, AdjacentShardToMerge="shardId-000000000002")),
            "InvalidArgumentException")
        k.merge_shards(StreamName="merge", ShardToMerge=a, AdjacentShardToMerge=b)
        wait_active("merge")
        for i in range(60):
            k.put_record(StreamName="merge", PartitionKey="k%d" % i, Data=b"after:%d" % i)
        shards = {s["ShardId"]: s for s in shards_of("merge")}
        child = shards["shardId-000000000003"]
        self.assertEqual(child["ParentShardId"], a)
        self.assertEqual(child["AdjacentParentShardId"], b)
        self.assertEqual(child["HashKeyRange"]["StartingHashKey"],
                         shards[a]["HashKeyRange"]["StartingHashKey"])
        self.assertEqual(child["HashKeyRange"]["EndingHashKey"],
                         shards[b]["HashKeyRange"]["EndingHashKey"])
        for parent in (a, b):
            self.assertIn("EndingSequenceNumber", shards[parent]["SequenceNumberRange"])
        latest = [s["ShardId"] for s in shards_of("merge", ShardFilter={"Type": "AT_LATEST"})]
        self.assertEqual(sorted(latest), ["shardId-000000000002", "shardId-000000000003"])
        roots = [s["ShardId"] for s in shards_of("merge", ShardFilter={"Type": "AT_TRIM_HORIZON"})]
        self.assertEqual(sorted(roots), [a, b, "shardId-000000000002"])
        every = shards_of("merge", ShardFilter={"Type": "FROM_TRIM_HORIZON"})
        self.assertEqual(len(every), 4)
        after = shards_of("merge", ShardFilter={"Type": "AFTER_SHARD_ID", "ShardId": b})
        self.assertEqual([s["ShardId"] for s in after], ["shardId-000000000002", "shardId-000000000003"])
        summary = k.describe_stream_summary(StreamName="merge")["StreamDescriptionSummary"]
        self.assertEqual(summary["OpenShardCount"], 2)
        described = k.describe_stream(StreamName="merge")["StreamDescription"]["Shards"]
        self.assertEqual(len(described), 4)
        # Closed shards stay readable; merging one again is refused as AWS refuses it.
        records, kids = read_shard("merge", a)
        self.assertTrue(all(r["Data"].startswith(b"before") for r in records))
        self.assertEqual(kids, ["shardId-000000000003"])
        self.assertEqual(code_of(lambda: k.merge_shards(
            StreamName="merge", ShardToMerge=a, AdjacentShardToMerge=b)),
            "InvalidArgumentException")
        acknowledged = {"k%d" % i: [i] for i in range(60)}
        check_lineage(self, "merge", {})
        merged_records, _ = read_shard("merge", "shardId-000000000003")
        self.assertTrue(all(r["Data"].startswith(b"after") for r in merged_records))
        self.assertTrue(acknowledged)

    def test_update_shard_count_one_two_four_two_with_uniform_ranges(self):
        k.create_stream(StreamName="scale", ShardCount=1)
        wait_active("scale")
        # Kinesis scales at most to double and at least to half the open shards per call.
        self.assertEqual(code_of(lambda: k.update_shard_count(
            StreamName="scale", TargetShardCount=4, ScalingType="UNIFORM_SCALING")),
            "LimitExceededException")
        self.assertEqual(code_of(lambda: k.update_shard_count(
            StreamName="scale", TargetShardCount=2, ScalingType="BY_MAGIC")),
            "ValidationException")
        producer = Producer("scale", keys=8)
        producer.start()
        for target in (2, 4, 2):
            time.sleep(0.3)
            out = k.update_shard_count(StreamName="scale", TargetShardCount=target,
                                       ScalingType="UNIFORM_SCALING")
            self.assertEqual(out["TargetShardCount"], target)
            wait_active("scale")
            open_shards = shards_of("scale", ShardFilter={"Type": "AT_LATEST"})
            self.assertEqual(len(open_shards), target)
            step = (MAX + 1) // target
            starts = sorted(int(s["HashKeyRange"]["StartingHashKey"]) for s in open_shards)
            self.assertEqual(starts, [i * step for i in range(target)])
        time.sleep(0.3)
        producer.stop.set()
        producer.join(30)
        self.assertIsNone(producer.error)
        self.assertEqual(producer.failed, 0)
        self.assertEqual(code_of(lambda: k.update_shard_count(
            StreamName="scale", TargetShardCount=5, ScalingType="UNIFORM_SCALING")),
            "LimitExceededException")
        check_lineage(self, "scale", producer.acknowledged)

    def test_invalid_splits_get_the_aws_errors_and_change_nothing(self):
        k.create_stream(StreamName="bad-split", ShardCount=1)
        wait_active("bad-split")
        sid = "shardId-000000000000"
        for key in ("0", "1", str(MAX)):
            self.assertEqual(code_of(lambda: k.split_shard(
                StreamName="bad-split", ShardToSplit=sid, NewStartingHashKey=key)),
                "InvalidArgumentException", key)
        self.assertEqual(code_of(lambda: k.split_shard(
            StreamName="bad-split", ShardToSplit=sid, NewStartingHashKey="12ab")),
            "ValidationException")
        self.assertEqual(code_of(lambda: k.split_shard(
            StreamName="bad-split", ShardToSplit="shardId-000000000009", NewStartingHashKey="99")),
            "ResourceNotFoundException")
        self.assertEqual(code_of(lambda: k.split_shard(
            StreamName="no-such-stream", ShardToSplit=sid, NewStartingHashKey="99")),
            "ResourceNotFoundException")
        self.assertEqual(len(shards_of("bad-split")), 1)
        k.split_shard(StreamName="bad-split", ShardToSplit=sid, NewStartingHashKey=str(2 ** 127))
        wait_active("bad-split")
        self.assertEqual(code_of(lambda: k.split_shard(
            StreamName="bad-split", ShardToSplit=sid, NewStartingHashKey=str(2 ** 126))),
            "InvalidArgumentException")
        self.assertEqual(len(shards_of("bad-split")), 3)


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)
