// The real AI SDK client (`ai`, pinned in package.json) against a Python backend, for
// tests/test_ai_sdk.py: one scenario per run, its config as JSON in argv[2], its result as
// JSON on stdout.
//
// The chat is the SDK's own AbstractChat (what useChat's Chat class extends) with an
// in-memory state shaped like @ai-sdk/react's, and the stock DefaultChatTransport. The
// only stand-in is `fetch`: it records every response's SSE events and, when asked, cuts
// a POST's body after N events the way a dropped connection does in a browser (the body
// errors with a TypeError "network error"; the SDK then keeps the message for a resume).
import { AbstractChat, DefaultChatTransport } from "ai";

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
    // A copy, as React's state does: the SDK keeps mutating the message it streams into.
    this.messages = [
      ...this.messages.slice(0, index),
      this.snapshot(message),
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
const log = []; // one entry per HTTP response: method, path, status, events (data lines)
let nextEventHook = null;

function recordingFetch({ cutAfter = null } = {}) {
  return async (url, init = {}) => {
    const method = init.method ?? "GET";
    const controller = new AbortController();
    const outer = init.signal;
    if (outer) {
      if (outer.aborted) controller.abort(outer.reason);
      else outer.addEventListener("abort", () => controller.abort(outer.reason), { once: true });
    }
    const response = await fetch(url, { ...init, signal: controller.signal });
    const entry = { method, path: new URL(url).pathname, status: response.status, events: [] };
    log.push(entry);
    if (!response.body) return response;
    const cut = method === "POST" ? cutAfter : null;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    const encoder = new TextEncoder();
    let buffer = "";
    const body = new ReadableStream({
      async pull(out) {
        for (;;) {
          if (cut != null && entry.events.length >= cut) {
            entry.cut = true;
            controller.abort(); // the real connection goes too
            out.error(new TypeError("network error"));
            return;
          }
          const boundary = buffer.indexOf("\n\n");
          if (boundary !== -1) {
            const event = buffer.slice(0, boundary + 2);
            buffer = buffer.slice(boundary + 2);
            const data = event.split("\n").filter((l) => l.startsWith("data:"));
            if (data.length) {
              entry.events.push(data.map((l) => l.slice(5).trimStart()).join("\n"));
              if (nextEventHook) nextEventHook(entry);
            } else if (event.startsWith(":")) {
              entry.comments = (entry.comments ?? 0) + 1;
            }
            out.enqueue(encoder.encode(event));
            return;
          }
          let chunk;
          try {
            chunk = await reader.read();
          } catch (error) {
            out.error(error);
            return;
          }
          if (chunk.done) {
            entry.ended = true;
            if (buffer) out.enqueue(encoder.encode(buffer));
            out.close();
            return;
          }
          buffer += decoder.decode(chunk.value, { stream: true });
        }
      },
      cancel(reason) {
        controller.abort();
        return reader.cancel(reason).catch(() => {});
      },
    });
    return new Response(body, { status: response.status, headers: response.headers });
  };
}

function makeChat({ id, messages = [], cutAfter = null }) {
  const errors = [];
  const finishes = [];
  const chat = new TestChat({
    id,
    messages,
    transport: new DefaultChatTransport({
      api: `${config.send}/api/chat`,
      fetch: recordingFetch({ cutAfter }),
      // Resume from another process than the one that took the POST (no sticky routing).
      prepareReconnectToStreamRequest: ({ id: chatId }) => ({
        api: `${config.resume}/api/chat/${encodeURIComponent(chatId)}/stream`,
      }),
    }),
    onError: (error) => errors.push(String(error.message ?? error)),
    onFinish: ({ isAbort, isDisconnect, isError, finishReason }) =>
      finishes.push({ isAbort, isDisconnect, isError, finishReason: finishReason ?? null }),
  });
  return { chat, errors, finishes };
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

const userMessage = (text) => ({
  id: `user-${Math.random().toString(36).slice(2)}`,
  role: "user",
  parts: [{ type: "text", text }],
});

// The stop: `DELETE .../stream` (its status), or with `stopVia: "post"` the AI SDK docs'
// route, `POST .../stop` with the partial message (its status and JSON body).
async function stopChat(chatId, assistantMessage) {
  const base = `${config.stop}/api/chat/${encodeURIComponent(chatId)}`;
  if (config.stopVia === "post") {
    const response = await fetch(`${base}/stop`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(assistantMessage ? { assistantMessage } : {}),
    });
    return { status: response.status, ...(await response.json()) };
  }
  const response = await fetch(`${base}/stream`, { method: "DELETE" });
  await response.text();
  return response.status;
}

const scenarios = {
  // A chat that never streamed: the resume gets 204, and the chat stays ready, no error.
  async unknown() {
    const tab = makeChat({ id: config.chatId });
    await tab.chat.resumeStream();
    return { tab: view(tab) };
  },

  // The reference: one answer, never interrupted.
  async send() {
    const tab = makeChat({ id: config.chatId });
    await tab.chat.sendMessage(userMessage(config.text));
    return { tab: view(tab) };
  },

  // The connection drops after `cutAfter` events; the same chat resumes (the SDK's
  // disconnect path), or a reloaded page does: with `reload: "user"` its messages are the
  // user message only, with `reload: "partial"` the partial answer too (as an app that
  // saves messages as they change restores them).
  async cut() {
    const tab = makeChat({ id: config.chatId, cutAfter: config.cutAfter });
    const message = userMessage(config.text);
    await tab.chat.sendMessage(message);
    const atCut = view(tab);
    let resumed = tab;
    if (config.reload === "user") resumed = makeChat({ id: config.chatId, messages: [message] });
    if (config.reload === "partial") {
      resumed = makeChat({ id: config.chatId, messages: structuredClone(tab.chat.messages) });
    }
    await resumed.chat.resumeStream();
    return { atCut, tab: view(resumed) };
  },

  // The answer finishes; a reloaded page then resumes: 204, nothing changes.
  async finished() {
    const first = makeChat({ id: config.chatId });
    await first.chat.sendMessage(userMessage(config.text));
    const messages = structuredClone(first.chat.messages);
    const reloaded = makeChat({ id: config.chatId, messages });
    await reloaded.chat.resumeStream();
    return { first: view(first), tab: view(reloaded) };
  },

  // A cut, then two tabs resume the same chat at once: both get the whole answer.
  async concurrent() {
    const first = makeChat({ id: config.chatId, cutAfter: config.cutAfter });
    const message = userMessage(config.text);
    await first.chat.sendMessage(message);
    const tabs = [0, 1].map(() => makeChat({ id: config.chatId, messages: [message] }));
    await Promise.all(tabs.map((tab) => tab.chat.resumeStream()));
    return { tabs: tabs.map(view) };
  },

  // Stop (DELETE, or with `stopVia: "post"` the stop route; from the resume process)
  // after `stopAfter` events: the answer ends cleanly for the tab streaming it, and a
  // reloaded page finds nothing to resume.
  async stop() {
    const tab = makeChat({ id: config.chatId });
    let stopped = null;
    nextEventHook = (entry) => {
      if (entry.method === "POST" && entry.events.length === config.stopAfter && !stopped) {
        stopped = stopChat(config.chatId, tab.chat.messages.at(-1));
      }
    };
    const message = userMessage(config.text);
    await tab.chat.sendMessage(message);
    nextEventHook = null;
    const stopStatus = await stopped;
    const reloaded = makeChat({ id: config.chatId, messages: structuredClone(tab.chat.messages) });
    await reloaded.chat.resumeStream();
    const again = await stopChat(config.chatId);
    return { stopStatus, again, first: view(tab), tab: view(reloaded) };
  },

  // The model raises mid-answer: the client gets an `error` chunk; a resume then: 204.
  async error() {
    const tab = makeChat({ id: config.chatId });
    const message = userMessage(config.text);
    await tab.chat.sendMessage(message);
    const reloaded = makeChat({ id: config.chatId, messages: [message] });
    await reloaded.chat.resumeStream();
    return { first: view(tab), tab: view(reloaded) };
  },
};

const run = scenarios[config.scenario];
if (!run) throw new Error(`no scenario ${config.scenario}`);
const timer = setTimeout(() => {
  console.log(JSON.stringify({ timeout: true, log }));
  process.exit(2);
}, config.timeoutMs ?? 20000);
const result = await run();
clearTimeout(timer);
console.log(JSON.stringify({ ...result, log }));
