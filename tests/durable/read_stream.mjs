// Read a Durable Stream to its end with the official TypeScript client
// (@durable-streams/client), printing one JSON line per chunk and one at the end.
// Usage: node read_stream.mjs URL LIVE   (LIVE: long-poll or sse)
//
// Within a session the client retries failed requests by itself (backoff), and onError
// asks it to go on after any other error that ends a request before its response. A
// break in the middle of a response body is different: the client (0.2.x) ends the
// session with that error (`closed` rejects) instead of reconnecting, so this reader
// does what an application would: it opens a new session from the offset it reached.
import { stream } from "@durable-streams/client"

const [url, live] = process.argv.slice(2)
const print = (line) => process.stdout.write(JSON.stringify(line) + "\n")
const MAX_SESSIONS = 10
const deadline = setTimeout(() => {
  print({ timeout: true })
  process.exit(2)
}, 30000)

// One session from `offset`: the offset reached, whether the stream's closure was
// seen, and the error that ended the session if one did. Rejects only if the
// session's first request fails for good.
async function session(offset) {
  const res = await stream({
    url,
    offset,
    live,
    backoffOptions: { initialDelay: 20, maxDelay: 200, multiplier: 2 },
    onError: (error) => {
      print({ error: String(error) })
      return {}
    },
  })
  let reached = offset
  let finish
  const finished = new Promise((resolve) => (finish = resolve))
  res.subscribeText((chunk) => {
    print({ text: chunk.text, offset: chunk.offset, closed: chunk.streamClosed })
    reached = chunk.offset
    if (chunk.streamClosed) finish()
  })
  // The session may settle before its last chunk reaches the subscriber: wait for that
  // chunk (the one that says the stream is closed), a bounded while after it settles.
  const settled = res.closed.then(
    () => new Promise((resolve) => setTimeout(resolve, 5000)),
    (error) => ({ error }),
  )
  const outcome = await Promise.race([finished.then(() => ({ closed: true })), settled])
  return { reached, closed: outcome?.closed === true, error: outcome?.error }
}

let offset = "-1"
let closed = false
for (let n = 0; n < MAX_SESSIONS && !closed; n++) {
  try {
    const outcome = await session(offset)
    offset = outcome.reached
    closed = outcome.closed
    if (outcome.error !== undefined) print({ session_error: String(outcome.error) })
    else if (!closed) break // settled without the closure: report what we have
  } catch (error) {
    print({ session_error: String(error) }) // the session's first request failed for good
  }
}
clearTimeout(deadline)
print({ end: true, offset, closed })
process.exit(0)
