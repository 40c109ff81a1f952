// The Durable Streams Node reference server (@durable-streams/server, pinned in
// package.json), in memory, on 127.0.0.1:PORT: `node server.mjs PORT`.
// Prints READY <url> once it listens; stops on SIGTERM.
import { DurableStreamTestServer } from "@durable-streams/server"

const port = Number(process.argv[2] ?? "0")
const server = new DurableStreamTestServer({ port, host: "127.0.0.1", compression: false })
const url = await server.start()
process.stdout.write(`READY ${url}\n`)
process.on("SIGTERM", async () => {
  await server.stop()
  process.exit(0)
})
