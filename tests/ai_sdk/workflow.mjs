// The AI SDK's WorkflowChatTransport (`@ai-sdk/workflow`, pinned in package.json) under
// the SDK's own AbstractChat, against a Python backend, for tests/test_ai_sdk_workflow.py:
// one scenario per run, its config as JSON in argv[2], its result as JSON on stdout.
//
// Nothing is stood in for: the transport uses the global fetch, through a proxy that the
// test runs and that cuts connections mid-body. `fetch` is only wrapped to record each
// response (status, run id, tail index, the data lines it carried and how it ended), and
// the transport is only subclassed to record the chunks it hands the chat.
import { AbstractChat } from "ai";
import { WorkflowChatTransport } from "@ai-sdk/workflow/client";

class MemoryChatState {
  constructor(messages = []) {
    this.messages = messages;
    this.status = "ready";
    this.error = undefined;
  }
  pushMessage = (message) => {
    this.messages = this.messages.concat(message);
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, message) => {
    this.messages = [
      ...this.messages.slice(0, index),
      structuredClone(message),
      ...this.messages.slice(index + 1),
    ];
  };
  snapshot = (value) => structuredClone(value);
}

class TestChat extends AbstractChat {
  constructor({ messages, ...init }) {
    super({ ...init, state: new MemoryChatState(messages) });
  }
}

const config = JSON.parse(process.argv[2]);
const log = []; // one entry per response
const reading = []; // the log's readers, awaited before the result is printed
let onChunk = null;

async function recordingFetch(url, init = {}) {
  const response = await fetch(url, init);
  const parsed = new URL(url);
  const entry = {
    method: init.method ?? "GET",
    path: parsed.pathname + parsed.search,
    status: response.status,
    runId: response.headers.get("x-workflow-run-id"),
    tailIndex: response.headers.get("x-workflow-stream-tail-index"),
    events: [],
    end: null,
  };
  log.push(entry);
  if (!response.body) return response;
  const [forTransport, forLog] = response.body.tee();
  const readLog = (async () => {
    const reader = forLog.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let boundary;
        while ((boundary = buffer.indexOf("\n\n")) !== -1) {
          const event = buffer.slice(0, boundary);
          buffer = buffer.slice(boundary + 2);
          const data = event.split("\n").filter((l) => l.startsWith("data:"));
          if (data.length) entry.events.push(data.map((l) => l.slice(5).trimStart()).join("\n"));
        }
      }
      entry.end = "complete";
    } catch (error) {
      entry.end = `broken: ${error?.cause?.code ?? error?.message ?? error}`;
    }
  })();
  reading.push(readLog);
  return new Response(forTransport, { status: response.status, headers: response.headers });
}

class RecordingTransport extends WorkflowChatTransport {
  seen = []; // the chunks handed to the chat, in order

  tap(stream) {
    const seen = this.seen;
    return stream.pipeThrough(
      new TransformStream({
        transform(chunk, controller) {
          seen.push(chunk);
          if (onChunk) onChunk(chunk, seen);
          controller.enqueue(chunk);
        },
      }),
    );
  }
  async sendMessages(options) {
    return this.tap(await super.sendMessages(options));
  }
  async reconnectToStream(options) {
    const stream = await super.reconnectToStream(options);
    return stream == null ? stream : this.tap(stream);
  }
}

function makeChat({ id, messages = [], initialStartIndex }) {
  const errors = [];
  const finishes = [];
  const transport = new RecordingTransport({
    api: `${config.send}/api/chat`,
    fetch: recordingFetch,
    // The chat id goes in the body only when asked: by default the transport sends none.
    ...(config.sendChatId
      ? { prepareSendMessagesRequest: ({ id: chatId, messages: all }) => ({
          body: { id: chatId, messages: all },
        }) }
      : {}),
    // Reconnect to another process than the one that took the POST (no sticky routing).
    prepareReconnectToStreamRequest: ({ api }) => ({
      api: api.replace(config.send, config.resume),
    }),
    ...(initialStartIndex != null ? { initialStartIndex } : {}),
  });
  const chat = new TestChat({
    id,
    messages,
    transport,
    onError: (error) => errors.push(String(error.message ?? error)),
    onFinish: ({ isAbort, isDisconnect, isError, finishReason }) =>
      finishes.push({ isAbort, isDisconnect, isError, finishReason: finishReason ?? null }),
  });
  return { chat, errors, finishes, transport };
}

function view({ chat, errors, finishes }) {
  return {
    status: chat.status,
    error: chat.error ? String(chat.error.message) : null,
    messages: structuredClone(chat.messages),
    errors: [...errors],
    finishes: [...finishes],
  };
}

const seenBy = (tab) => tab.transport.seen;

const userMessage = (text) => ({
  id: `user-${Math.random().toString(36).slice(2)}`,
  role: "user",
  parts: [{ type: "text", text }],
});

async function postStop(id, body) {
  const response = await fetch(`${config.resume}/api/chat/${encodeURIComponent(id)}/stop`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}

const scenarios = {
  // One answer; the proxy cuts the POST and the reconnects where the test says.
  async send() {
    const tab = makeChat({ id: config.chatId });
    await tab.chat.sendMessage(userMessage(config.text));
    return { tab: view(tab), seen: seenBy(tab) };
  },

  // A page closes mid-answer (its chat's stop(): a disconnect, the answer goes on) and a
  // new page of the same chat resumes it: GET /api/chat/{chatId}/stream?startIndex=0.
  async reload() {
    const first = makeChat({ id: config.chatId });
    const message = userMessage(config.text);
    onChunk = (chunk, seen) => {
      if (seen.length === config.closeAfter) first.chat.stop();
    };
    await first.chat.sendMessage(message);
    onChunk = null;
    const tab = makeChat({ id: config.chatId, messages: [message] });
    await tab.chat.resumeStream();
    return { first: view(first), firstSeen: seenBy(first), tab: view(tab), seen: seenBy(tab) };
  },

  // A page that kept the run id reads the last chunks of a finished answer by it
  // (initialStartIndex < 0: the transport reads x-workflow-stream-tail-index), through
  // whatever cuts the proxy makes.
  async tail() {
    const first = makeChat({ id: config.chatId });
    await first.chat.sendMessage(userMessage(config.text));
    const runId = log[0].runId;
    const tab = makeChat({ id: runId, initialStartIndex: config.initialStartIndex });
    await tab.chat.resumeStream();
    return { first: view(first), firstSeen: seenBy(first), tab: view(tab), seen: seenBy(tab) };
  },

  // After `stopAfter` chunks, the stop route (as the AI SDK docs' stop button calls it,
  // with the partial message and the run id) stops the answer; the tab keeps reading,
  // and the transport must end on the answer's own ending, not reconnect for ever.
  async stop() {
    const tab = makeChat({ id: config.chatId });
    let stopped = null;
    onChunk = (chunk, seen) => {
      if (seen.length === config.stopAfter && !stopped) {
        const runId = log[0].runId;
        const stopId = config.sendChatId ? config.chatId : runId;
        const partial = tab.chat.messages.at(-1);
        stopped = postStop(stopId, { activeStreamId: runId, assistantMessage: partial });
      }
    };
    await tab.chat.sendMessage(userMessage(config.text));
    onChunk = null;
    const stop = await stopped;
    const again = await postStop(config.sendChatId ? config.chatId : log[0].runId, {});
    return { tab: view(tab), seen: seenBy(tab), stop, again };
  },
};

const run = scenarios[config.scenario];
if (!run) throw new Error(`no scenario ${config.scenario}`);
const timer = setTimeout(() => {
  console.log(JSON.stringify({ timeout: true, log }));
  process.exit(2);
}, config.timeoutMs ?? 20000);
const result = await run();
await Promise.all(reading);
clearTimeout(timer);
console.log(JSON.stringify({ ...result, chatId: config.chatId, log }));
