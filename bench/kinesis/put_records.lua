-- wrk script: PutRecords of 500 records of 100 bytes each to one stream, with a fixed
-- well-formed SigV4 header (spate and kinesalite check its shape, not its signature).
-- Environment: STREAM (default "bench").
local stream = os.getenv("STREAM") or "bench"
-- base64 of 100 'x' bytes
local b64 = "eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eA=="
local records = {}
for i = 1, 500 do
  records[i] = string.format('{"Data":"%s","PartitionKey":"key-%d"}', b64, i % 100)
end
wrk.method = "POST"
wrk.path = "/"
wrk.body = string.format('{"StreamName":"%s","Records":[%s]}', stream, table.concat(records, ","))
wrk.headers["Content-Type"] = "application/x-amz-json-1.1"
wrk.headers["X-Amz-Target"] = "Kinesis_20131202.PutRecords"
wrk.headers["X-Amz-Date"] = "20261123T000000Z"
wrk.headers["Authorization"] = "AWS4-HMAC-SHA256 Credential=AKID/20261123/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature=00"

done = function(summary, latency, requests)
  io.write(string.format("requests %d errors_status %d errors_socket %d p50_us %d p99_us %d\n",
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
