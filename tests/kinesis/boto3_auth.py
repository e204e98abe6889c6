"""SigV4 verification with boto3: spate started with [auth] keys accepts the right key and
rejects a wrong secret, an unknown key and unsigned or half-signed requests with the AWS
error names. Usage: python boto3_auth.py http://127.0.0.1:PORT
"""
import sys
import unittest
import urllib.request

import boto3
import botocore.config
import botocore.exceptions

ENDPOINT = sys.argv.pop(1)


def client(key, secret):
    return boto3.client(
        "kinesis", endpoint_url=ENDPOINT, region_name="us-east-1",
        aws_access_key_id=key, aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"total_max_attempts": 1}),
    )


def code_of(call):
    try:
        call()
    except botocore.exceptions.ClientError as error:
        return error.response["Error"]["Code"]
    raise AssertionError("expected an error")


def raw(headers):
    request = urllib.request.Request(ENDPOINT, data=b"{}", method="POST", headers={
        "Content-Type": "application/x-amz-json-1.1",
        "X-Amz-Target": "Kinesis_20131202.ListStreams", **headers})
    try:
        urllib.request.urlopen(request)
    except urllib.error.HTTPError as error:
        return error.headers["x-amzn-ErrorType"]
    raise AssertionError("expected an error")


class Auth(unittest.TestCase):
    def test_the_right_key_is_accepted(self):
        kinesis = client("AKIDSPATE", "s3cr3t/key")
        kinesis.create_stream(StreamName="signed", ShardCount=1)
        kinesis.put_record(StreamName="signed", Data=b"x", PartitionKey="k")
        self.assertIn("signed", kinesis.list_streams()["StreamNames"])

    def test_a_wrong_secret_is_rejected(self):
        self.assertEqual(code_of(lambda: client("AKIDSPATE", "wrong").list_streams()), "InvalidSignatureException")

    def test_an_unknown_key_is_rejected(self):
        self.assertEqual(code_of(lambda: client("AKIDOTHER", "s3cr3t/key").list_streams()), "UnrecognizedClientException")

    def test_unsigned_and_half_signed_requests_are_rejected(self):
        self.assertEqual(raw({}), "MissingAuthenticationTokenException")
        half = "AWS4-HMAC-SHA256 Credential=AKIDSPATE/20261123/us-east-1/kinesis/aws4_request"
        self.assertEqual(raw({"Authorization": half, "X-Amz-Date": "20261123T000000Z"}), "IncompleteSignatureException")
        old = ("AWS4-HMAC-SHA256 Credential=AKIDSPATE/20200101/us-east-1/kinesis/aws4_request, "
               "SignedHeaders=host;x-amz-date, Signature=00")
        self.assertEqual(raw({"Authorization": old, "X-Amz-Date": "20200101T000000Z"}), "InvalidSignatureException")


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)
