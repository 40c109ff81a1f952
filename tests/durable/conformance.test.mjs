// The official Durable Streams conformance suite, against the server at
// DURABLE_STREAMS_URL (tests/test_durable_conformance.py starts it and runs this).
import { runConformanceTests } from "@durable-streams/server-conformance-tests"

const baseUrl = process.env.DURABLE_STREAMS_URL
if (!baseUrl) throw new Error("DURABLE_STREAMS_URL is not set")

runConformanceTests({
  baseUrl,
  longPollTimeoutMs: Number(process.env.DURABLE_STREAMS_LONG_POLL_MS ?? "20000"),
})
