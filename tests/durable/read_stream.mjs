// Read a Durable Stream to its end with the official TypeScript client
// (@durable-streams/client), printing one JSON line per chunk and one at the end.
// Usage: node read_stream.mjs URL LIVE   (LIVE: long-poll or sse)
// The client retries failed requests by itself (backoff); onError asks it to go on
// after any other error too, from the offset it reached.
import { stream } from "@durable-streams/client"

const [url, live] = process.argv.slice(2)
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n")
const deadline = setTimeout(() => {
  print({ timeout: true })
  process.exit(2)
}, 30000)

const res = await stream({
  url,
  offset: "-1",
  live,
  backoffOptions: { initialDelay: 20, maxDelay: 200, multiplier: 2 },
  onError: (error) => {
    print({ error: String(error) })
    return {}
  },
})
let finish
const finished = new Promise((resolve) => (finish = resolve))
res.subscribeText((chunk) => {
  print({ text: chunk.text, offset: chunk.offset, closed: chunk.streamClosed })
  if (chunk.streamClosed) finish()
})
// The session may settle before its last chunk reaches the subscriber: wait for that
// chunk (the one that says the stream is closed), a bounded while after it settles.
await Promise.race([
  finished,
  res.closed.then(() => new Promise((resolve) => setTimeout(resolve, 5000))),
])
clearTimeout(deadline)
print({ end: true, offset: res.offset, closed: res.streamClosed })
process.exit(0)
