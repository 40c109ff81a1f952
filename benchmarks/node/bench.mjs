// The npm original (resumable-stream, pinned in package.json) in the shapes of the
// Python suite's W1, W2 and W3, against the same Redis. Run by `python -m benchmarks`:
//
//   node bench.mjs '<spec json>'
//
// Prints `READY` when a step that another process waits for is set up, then one line
// `RESULT <json>` with the same fields as the Python steps. Times are
// process.hrtime (CLOCK_MONOTONIC on Linux, as Python's time.monotonic_ns), so a
// time taken here can be subtracted from one taken in another process.
//
// Sources mirror the Python ones: a ReadableStream that yields to the event loop
// (setImmediate, as asyncio.sleep(0) does) between chunks.

import { createClient } from "redis";
import { createResumableStreamContext } from "resumable-stream";
import { createInterface } from "node:readline";
import { randomUUID } from "node:crypto";
import { writeFileSync } from "node:fs";

const now = () => Number(process.hrtime.bigint());
const immediate = () => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function makeChunk(stream, index, size) {
  const head = `${stream}:${index}:`;
  return head + ".".repeat(size - head.length);
}

function expectedText(stream, chunks, size) {
  let out = "";
  for (let i = 0; i < chunks; i++) out += makeChunk(stream, i, size);
  return out;
}

function makeSource(stream, chunks, size, stamps, opts = {}) {
  let i = 0;
  return new ReadableStream({
    async pull(controller) {
      if (i === 0 && opts.gate) await opts.gate;
      if (i >= chunks) {
        controller.close();
        return;
      }
      if (i === opts.holdAfter && opts.hold) await opts.hold;
      else if (i > 0) await (opts.delayMs ? sleep(opts.delayMs) : immediate());
      if (stamps) stamps.push(now());
      controller.enqueue(makeChunk(stream, i, size));
      i++;
    },
  });
}

function percentiles(values) {
  const sorted = Float64Array.from(values).sort();
  const n = sorted.length;
  if (!n) return { n: 0 };
  const rank = (p) => sorted[Math.min(n - 1, Math.max(0, Math.floor(p * n + 0.5) - 1))] / 1e6;
  return { n, p50: rank(0.5), p90: rank(0.9), p99: rank(0.99), max: sorted[n - 1] / 1e6 };
}

function deferred() {
  let resolve;
  const promise = new Promise((r) => (resolve = r));
  return { promise, resolve };
}

class Side {
  // One context with its own publisher and subscriber, like one process's.
  constructor(url, prefix) {
    this.url = url;
    this.prefix = prefix;
  }
  async open() {
    this.publisher = createClient({ url: this.url });
    this.subscriber = createClient({ url: this.url });
    await Promise.all([this.publisher.connect(), this.subscriber.connect()]);
    this.ctx = createResumableStreamContext({
      keyPrefix: this.prefix,
      waitUntil: null,
      publisher: this.publisher,
      subscriber: this.subscriber,
    });
    return this;
  }
  async close() {
    await Promise.all([this.publisher.quit(), this.subscriber.quit()]);
  }
}

class Probe {
  // INFO deltas around the measured section (commands, server CPU).
  constructor(url) {
    this.client = createClient({ url });
  }
  async read() {
    const stats = await this.client.sendCommand(["INFO", "commandstats"]);
    const cpu = await this.client.sendCommand(["INFO", "cpu"]);
    const calls = {};
    for (const line of stats.split("\r\n")) {
      const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line);
      if (m) calls[m[1]] = Number(m[2]);
    }
    const field = (name) => Number(new RegExp(`${name}:([0-9.]+)`).exec(cpu)[1]);
    return { calls, cpu: field("used_cpu_user") + field("used_cpu_sys") };
  }
  async start() {
    await this.client.connect();
    this.before = await this.read();
  }
  async stop() {
    const after = await this.read();
    const skip = new Set(["info", "hello", "client|setinfo", "client|setname", "select", "ping"]);
    this.commands = {};
    for (const [name, calls] of Object.entries(after.calls)) {
      const delta = calls - (this.before.calls[name] || 0);
      if (delta > 0 && !skip.has(name)) this.commands[name] = delta;
    }
    this.cpu = after.cpu - this.before.cpu;
    await this.client.quit();
  }
  report(chunks) {
    const total = Object.values(this.commands).reduce((a, b) => a + b, 0);
    return {
      commands: total,
      commands_per_chunk: total / chunks,
      scripts_per_chunk: 0,
      redis_cpu_s: this.cpu,
      redis_cpu_us_per_chunk: (this.cpu / chunks) * 1e6,
      commands_by_name: this.commands,
      round_trips_counted: "server: commands (upper bound: node-redis pipelines a tick's commands)",
      round_trips: total,
      round_trips_per_chunk: total / chunks,
    };
  }
}

function meter() {
  const cpu0 = process.cpuUsage();
  const t0 = now();
  return () => {
    const cpu = process.cpuUsage(cpu0);
    return { elapsed: (now() - t0) / 1e9, cpu: (cpu.user + cpu.system) / 1e6 };
  };
}

function throughput(chunks, bytes, m) {
  return {
    chunks,
    bytes,
    elapsed_s: m.elapsed,
    chunks_per_s: chunks / m.elapsed,
    bytes_per_s: bytes / m.elapsed,
    cpu_s: m.cpu,
    cpu_us_per_chunk: (m.cpu / chunks) * 1e6,
    peak_rss_mb: process.resourceUsage().maxRSS / 1024,
  };
}

// Read a stream of strings to its end; the npm original may join several chunks into
// one message (a resume gets the history as one string), so chunks are found by size.
async function readAll(stream, size, into) {
  let text = "";
  for await (const piece of stream) {
    const t = now();
    const before = Math.floor(text.length / size);
    text += piece;
    const after = Math.floor(text.length / size);
    for (let i = before; i < after; i++) into.push([i, t]);
  }
  return text;
}

// -- W1: fan-in ---------------------------------------------------------------------------

async function w1(spec) {
  const { impl, url, streams, chunks, chunk_bytes: size } = spec;
  const prefix = `bench-${randomUUID().slice(0, 8)}`;
  const stamps = Array.from({ length: streams }, () => []);
  const got = Array.from({ length: streams }, () => []);
  const texts = new Array(streams);
  let side = null;
  const probe = new Probe(url);
  if (impl === "npm") {
    side = await new Side(url, prefix).open();
    // Warm up: connections, as the Python steps do.
    const warm = await side.ctx.createNewResumableStream(`${prefix}-warm`, () =>
      makeSource(0, 20, size, null),
    );
    await readAll(warm, size, []);
  }
  const one = async (s) => {
    const make = () => makeSource(s, chunks, size, stamps[s]);
    const stream =
      impl === "npm" ? await side.ctx.createNewResumableStream(`${prefix}-${s}`, make) : make();
    texts[s] = await readAll(stream, size, got[s]);
  };
  await probe.start();
  const stop = meter();
  await Promise.all(Array.from({ length: streams }, (_, s) => one(s)));
  const m = stop();
  await probe.stop();
  if (side) await side.close();
  let exact = true;
  const latency = [];
  for (let s = 0; s < streams; s++) {
    if (texts[s] !== expectedText(s, chunks, size)) exact = false;
    for (const [i, t] of got[s]) latency.push(t - stamps[s][i]);
  }
  const total = streams * chunks;
  const result = {
    ...throughput(total, total * size, m),
    exact,
    latency_ms: percentiles(exact ? latency : []),
  };
  if (impl === "npm") result.redis = probe.report(total);
  return result;
}

// -- W2: followers ------------------------------------------------------------------------

async function w2(spec) {
  const { url, chunks, chunk_bytes: size, followers } = spec;
  const prefix = `bench-${randomUUID().slice(0, 8)}`;
  const producer = await new Side(url, prefix).open();
  // mode "context": the followers resume through the producer's own context.
  const shared = spec.mode === "context";
  const follower = shared ? producer : await new Side(url, prefix).open();
  const probe = new Probe(url);
  const stamps = [];
  const gate = deferred();
  const id = `${prefix}-w2`;
  const origin = await producer.ctx.createNewResumableStream(id, () =>
    makeSource(0, chunks, size, stamps, { gate: gate.promise }),
  );
  const readers = [];
  for (let f = 0; f < followers; f++) readers.push(await follower.ctx.resumeExistingStream(id));
  const got = readers.map(() => []);
  const originGot = [];
  await probe.start();
  const stop = meter();
  const tasks = [readAll(origin, size, originGot), ...readers.map((r, f) => readAll(r, size, got[f]))];
  gate.resolve();
  const texts = await Promise.all(tasks);
  const m = stop();
  await probe.stop();
  await producer.close();
  if (!shared) await follower.close();
  const want = expectedText(0, chunks, size);
  const exact = texts.every((t) => t === want);
  const lag = [];
  for (const g of got) for (const [i, t] of g) lag.push(t - stamps[i]);
  const delivered = chunks * (followers + 1);
  return {
    ...throughput(delivered, delivered * size, m),
    exact,
    lag_ms: percentiles(exact ? lag : []),
    origin_latency_ms: percentiles(exact ? originGot.map(([i, t]) => t - stamps[i]) : []),
    redis: probe.report(chunks),
  };
}

async function stdinLine() {
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    rl.close();
    return line;
  }
  return "";
}

async function w2_producer(spec) {
  const { url, chunks, chunk_bytes: size, prefix, stream_id: id } = spec;
  const side = await new Side(url, prefix).open();
  const stamps = [];
  const gate = deferred();
  const origin = await side.ctx.createNewResumableStream(id, () =>
    makeSource(0, chunks, size, stamps, { gate: gate.promise }),
  );
  console.log("READY");
  await stdinLine();
  const stop = meter();
  const reading = readAll(origin, size, []);
  gate.resolve();
  const text = await reading;
  const m = stop();
  await side.close();
  return {
    ...throughput(chunks, chunks * size, m),
    exact: text === expectedText(0, chunks, size),
    stamps,
  };
}

async function w2_followers(spec) {
  const { url, chunks, chunk_bytes: size, followers, prefix, stream_id: id } = spec;
  const side = await new Side(url, prefix).open();
  const readers = [];
  for (let f = 0; f < followers; f++) readers.push(await side.ctx.resumeExistingStream(id));
  const got = readers.map(() => []);
  console.log("READY");
  const stop = meter();
  const texts = await Promise.all(readers.map((r, f) => readAll(r, size, got[f])));
  const m = stop();
  await side.close();
  const want = expectedText(0, chunks, size);
  const exact = texts.every((t) => t === want);
  return {
    ...throughput(chunks * followers, chunks * followers * size, m),
    exact,
    received: exact ? got.map((g) => g.map(([, t]) => t)) : [],
  };
}

// -- W3: resume ---------------------------------------------------------------------------

async function w3(spec) {
  const { url, stored, chunk_bytes: size, singles, burst } = spec;
  const prefix = `bench-${randomUUID().slice(0, 8)}`;
  const producer = await new Side(url, prefix).open();
  const resumer = await new Side(url, prefix).open();
  const probe = new Probe(url);
  const hold = deferred();
  const id = `${prefix}-w3`;
  const origin = await producer.ctx.createNewResumableStream(id, () =>
    makeSource(0, stored + 1, size, null, { holdAfter: stored, hold: hold.promise }),
  );
  // The original reader takes the stored chunks; the producer holds them in memory.
  const originReader = origin.getReader();
  let originText = "";
  while (originText.length < stored * size) originText += (await originReader.read()).value;
  const want = expectedText(0, stored, size);

  const resumeOnce = async () => {
    const started = now();
    const stream = await resumer.ctx.resumeExistingStream(id);
    const reader = stream.getReader();
    let text = "";
    let first = null;
    while (text.length < stored * size) {
      const { value, done } = await reader.read();
      if (done) break;
      if (value && first === null) first = now();
      text += value;
    }
    const last = now();
    await reader.cancel();
    return [first - started, last - started, text === want];
  };

  await probe.start();
  const stop = meter();
  const single = [];
  for (let i = 0; i < singles; i++) single.push(await resumeOnce());
  const burstStarted = now();
  const bursts = await Promise.all(Array.from({ length: burst }, () => resumeOnce()));
  const burstWall = now() - burstStarted;
  const m = stop();
  await probe.stop();
  hold.resolve();
  for (;;) {
    const { value, done } = await originReader.read();
    if (done) break;
    originText += value;
  }
  await producer.close();
  await resumer.close();
  const resumes = singles + burst;
  const report = probe.report(resumes);
  return {
    ...throughput(resumes * stored, resumes * stored * size, m),
    exact: [...single, ...bursts].every((r) => r[2]) && originText === expectedText(0, stored + 1, size),
    ttfb_ms: percentiles(single.map((r) => r[0])),
    catch_up_ms: percentiles(single.map((r) => r[1])),
    burst_ttfb_ms: percentiles(bursts.map((r) => r[0])),
    burst_catch_up_ms: percentiles(bursts.map((r) => r[1])),
    burst_wall_ms: burstWall / 1e6,
    redis: report,
    round_trips_per_resume: report.round_trips_per_chunk,
    commands_per_resume: report.commands_per_chunk,
  };
}

const WORKLOADS = { w1, w2, w2_producer, w2_followers, w3 };

const spec = JSON.parse(process.argv[2]);
let result;
try {
  const budget = setTimeout(() => {
    console.log("RESULT " + JSON.stringify({ exact: false, error: "timed out" }));
    process.exit(0);
  }, (spec.budget || 300) * 1000);
  result = await WORKLOADS[spec.workload](spec);
  clearTimeout(budget);
} catch (error) {
  console.error(error);
  result = { exact: false, error: String(error) };
}
result.runtime = `node ${process.version}`;
if (spec.result_file) {
  // A file, not stdout: results carry up to megabytes of timestamps.
  writeFileSync(spec.result_file, JSON.stringify(result));
  console.log("RESULT in " + spec.result_file);
} else {
  console.log("RESULT " + JSON.stringify(result));
}
process.exit(0);
