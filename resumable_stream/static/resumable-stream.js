/**
 * Browser client for resumable_stream's HTTP contract: a dependency-free ES module.
 *
 *     import { ResumableStreamClient } from "/_resumable/resumable-stream.js";
 *
 *     const client = new ResumableStreamClient({
 *       onMessage: (data, event) => render(data),   // one call per SSE event (or text chunk)
 *       onError: (error) => show(error),            // a ResumableStreamError subclass
 *       onComplete: () => done(),
 *       onStreamId: (id) => console.log("stream", id),
 *       maxRetries: 5,
 *       retryDelay: 2000,
 *     });
 *     await client.start("/api/chat/agent/thread", { messages: [...] });
 *
 * The contract (the server side is `resumable_stream.asgi`):
 *
 * - `start(url, body)` POSTs JSON. The response carries `X-Stream-Id`; its body is either
 *   an event stream (`text/event-stream`, every event has an `id:` injected by the
 *   server) or another body (text, counted in characters; or bytes).
 * - When the connection drops (a network error, or the body ends in the middle of an
 *   event) the client asks `GET resumeUrl(id)` for the rest: with
 *   `Last-Event-ID: <the last id received>` for an event stream, else
 *   `?resumeAt=<characters received>`; an event stream of which no event arrived yet
 *   resumes with `?resumeAt=0` ("from the start").
 * - Answers to a resume: 200 the rest; 404 unknown stream and 403 refused are final
 *   (`onError`); 410 means nothing is left: the stream is complete (`onComplete`),
 *   unless the answer carries `X-Stream-Status: failed`: the stream failed on the server
 *   (its source raised, its producer's process died, its storage was lost), which is a
 *   `StreamFailedError` (`onError`, status "error"), as is a 413 (the stream was cut at
 *   its size limit). A response cut by such a failure is aborted by the server, never
 *   ended, so the client resumes and gets the failure: a failed stream never reads as
 *   complete. 503, other 5xx,
 *   429 and network errors are retried: up to `maxRetries` times in a row, about
 *   `retryDelay` ms apart, doubling each time (with +-20% jitter, at most
 *   `maxRetryDelay`), where an SSE `retry:` field replaces `retryDelay` and a
 *   `Retry-After` header lengthens the wait. Any delivered data resets the count.
 * - Every resume is sent with the `credentials` and `headers` of the request that started
 *   the stream (`start`'s `init`, or `resume`'s), less its `content-type`: a server that
 *   binds streams to their owner (a session cookie, an `Authorization` header) answers
 *   a resume without them as it answers an unknown id (404).
 * - Delivery is exactly once: the client resumes after the last event it delivered and
 *   drops any event whose numeric id is not above the last one it delivered.
 *
 * Characters: the server counts Python code points (`len(str)`), JavaScript strings count
 * UTF-16 code units, which differ for astral characters (an emoji is 1 code point but 2
 * units). `resumeAt` is therefore counted in code points (`[...text].length`), so both
 * sides agree; a body that is not text (per its Content-Type, as the server decides) is
 * counted in bytes.
 *
 * A page that reloads mid-stream can resume: the client keeps the running stream in
 * `sessionStorage` under the key `storageKey` (default `"resumable-stream"`) as JSON
 * `{ v: 1, streamId, mode, lastEventId, position, updatedAt }` (mode `"sse"`, `"text"`,
 * `"bytes"` or null before the first response), updated after every delivered event, in
 * the same task as the `onMessage` call that delivered it, and removed when the stream
 * completes, fails for good, or is aborted. On load:
 *
 *     const saved = ResumableStreamClient.saved();      // null if nothing is unfinished
 *     if (saved) client.resume(saved.streamId);          // continues after the saved position
 *
 * Logs go to `console` (option `logger`): `console.info` for the stream id, each resume
 * attempt and each resume that worked; `console.warn` for lost connections and failed
 * attempts. Every line starts with `[resumable-stream]` and names the stream id.
 *
 * @module resumable-stream
 */

/** The sessionStorage key used when the `storageKey` option is not given. */
export const DEFAULT_STORAGE_KEY = "resumable-stream";

const LOG_PREFIX = "[resumable-stream]";

/**
 * @typedef {object} SSEEvent
 * @property {string} data      the data lines joined with "\n"
 * @property {string} event     the event type ("message" if not set)
 * @property {string} id        the last event id when it was dispatched ("" if none yet)
 * @property {boolean} hasId    true if this event's own block had an `id` field
 * @property {number | null} retry  the last `retry:` value seen on this connection (ms)
 */

/**
 * @typedef {object} SavedStream
 * @property {1} v
 * @property {string} streamId
 * @property {"sse" | "text" | "bytes" | null} mode
 * @property {string | null} lastEventId  for an event stream: the last id received
 * @property {number} position            for other bodies: code points (or bytes) received
 * @property {number} updatedAt           Date.now() of the last update
 */

/**
 * @typedef {object} StreamResult
 * @property {string | null} streamId
 * @property {"complete" | "error" | "aborted" | "none"} status
 *   "none": `resume()` was called with no stream id and nothing was saved
 * @property {Error} [error]
 */

/**
 * @typedef {object} RetryInfo
 * @property {string} streamId
 * @property {number} attempt      1 for the first retry after progress stopped
 * @property {number} maxRetries
 * @property {number} delay        ms until the attempt
 * @property {unknown} error       why the previous connection or attempt failed
 */

/**
 * @typedef {object} ResumableStreamOptions
 * @property {(data: any, event?: SSEEvent) => void} [onMessage]
 *   called once per event with its data string and the event; for other bodies once per
 *   chunk with a string (text) or a Uint8Array (bytes), and no event
 * @property {(error: ResumableStreamError) => void} [onError]   the stream failed for good
 * @property {() => void} [onComplete]                           the stream ended normally
 * @property {(streamId: string) => void} [onStreamId]           the stream id is known
 * @property {(retry: RetryInfo) => void} [onRetry]   a resume attempt is about to wait
 * @property {number} [maxRetries=5]      failed resume attempts in a row before giving up
 * @property {number} [retryDelay=2000]   ms before the first retry (doubles each attempt)
 * @property {number} [maxRetryDelay=30000]  ms, the longest wait between two attempts
 * @property {number} [idleTimeout=45000] ms without a byte (not even the server's
 *   `: ping`, sent every 15 s) after which an event stream's connection counts as lost;
 *   0 disables. Applies to event streams only.
 * @property {(streamId: string) => string} [resumeUrl]
 *   default `(id) => "/api/chat/resume/" + encodeURIComponent(id)`
 * @property {typeof fetch} [fetch]       default globalThis.fetch
 * @property {string | null} [storageKey="resumable-stream"]  sessionStorage key; null: none
 * @property {Pick<Console, "info" | "warn" | "debug" | "error"> | null} [logger=console]
 */

// -- errors ------------------------------------------------------------------------------

/** Base class of every error given to `onError`. */
export class ResumableStreamError extends Error {
  /**
   * @param {string} message
   * @param {{ status?: number | null, streamId?: string | null, cause?: unknown }} [info]
   */
  constructor(message, info = {}) {
    super(message, info.cause === undefined ? undefined : { cause: info.cause });
    this.name = new.target.name;
    /** @type {number | null} the HTTP status that ended the stream, if one did */
    this.status = info.status ?? null;
    /** @type {string | null} */
    this.streamId = info.streamId ?? null;
  }
}

/** 404: the stream is unknown or expired. Final. */
export class StreamNotFoundError extends ResumableStreamError {}

/** 403: the server refused to let this client read the stream. Final. */
export class StreamForbiddenError extends ResumableStreamError {}

/** Another final HTTP status: the start request failed, or a resume got 400 or 4xx. */
export class StreamRequestError extends ResumableStreamError {}

/** The connection dropped and `maxRetries` resume attempts in a row failed. */
export class RetriesExhaustedError extends ResumableStreamError {}

/** The connection dropped before the server named the stream (no `X-Stream-Id`). */
export class NotResumableError extends ResumableStreamError {}

/**
 * The stream failed on the server (a resume's 410 with `X-Stream-Status: failed`, or a
 * 413). Final. What was delivered before it is the stream's clean prefix.
 */
export class StreamFailedError extends ResumableStreamError {
  /**
   * @param {string} message
   * @param {{ status?: number | null, streamId?: string | null, reason?: string }} [info]
   */
  constructor(message, info = {}) {
    super(message, info);
    /**
     * The failure's kind (the server's `X-Stream-Error`): "StreamFailed" (the source
     * raised, storage was lost, or the server shut down first), "ProducerLost" (the
     * producer's process died) or "StreamTooLarge" (cut at its size limit; status 413).
     * @type {string}
     */
    this.reason = info.reason ?? "StreamFailed";
  }
}

// -- SSE parsing -------------------------------------------------------------------------

/**
 * Server-sent events parser (the WHATWG "event stream interpretation"), fed decoded text
 * in pieces of any size: lines end in CRLF, LF or CR (a CRLF may be split between two
 * pieces), one leading U+FEFF is dropped, comment lines (":...") are ignored, `data`
 * lines are joined with "\n", `event` sets the type, `id` (without NUL) sets the last
 * event id, `retry` (ASCII digits only) sets the reconnection time. An event with no data
 * is not dispatched (but a blank line still commits its id), and an event the stream ends
 * in the middle of is never dispatched.
 *
 * Feed it text from `new TextDecoder("utf-8", { ignoreBOM: true })` so that it, not the
 * decoder, drops the BOM (exactly one, as the spec says).
 */
export class SSEParser {
  /** @param {{ lastEventId?: string }} [options] the id a resumed connection starts from */
  constructor(options = {}) {
    /** @type {string} the last event id, committed at each blank line */
    this.lastEventId = options.lastEventId ?? "";
    /** @type {number | null} the last `retry:` value (ms) */
    this.retry = null;
    this._idBuffer = this.lastEventId;
    this._data = "";
    this._hasData = false;
    this._type = "";
    this._hasId = false;
    this._dirty = false; // a field was seen since the last blank line
    this._buf = ""; // an incomplete line
    this._started = false;
    this._pendingCR = false;
  }

  /**
   * Parse a piece of the stream.
   * @param {string} text
   * @returns {SSEEvent[]} the events it completes, in order
   */
  feed(text) {
    /** @type {SSEEvent[]} */
    const events = [];
    if (!text) return events;
    if (!this._started) {
      this._started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this._pendingCR) {
      this._pendingCR = false;
      if (text.charCodeAt(0) === 10) text = text.slice(1); // the LF of a split CRLF
    }
    const scanFrom = this._buf.length; // the kept partial line holds no CR or LF
    const buf = this._buf + text;
    const n = buf.length;
    let start = 0;
    let i = scanFrom;
    for (;;) {
      while (i < n) {
        const c = buf.charCodeAt(i);
        if (c === 10 || c === 13) break;
        i++;
      }
      if (i >= n) break;
      const line = buf.slice(start, i);
      if (buf.charCodeAt(i) === 13) {
        if (i + 1 === n) this._pendingCR = true; // maybe the first half of a CRLF
        start = i + 1 < n && buf.charCodeAt(i + 1) === 10 ? i + 2 : i + 1;
      } else {
        start = i + 1;
      }
      i = start;
      this._line(line, events);
    }
    this._buf = start < n ? buf.slice(start) : "";
    return events;
  }

  /**
   * The stream ended: true if it ended in the middle of an event (an incomplete line, or
   * fields not yet ended by a blank line), which is then dropped.
   * @returns {boolean}
   */
  end() {
    const incomplete = this._buf.length > 0 || this._dirty;
    this._buf = "";
    this._data = "";
    this._hasData = false;
    this._type = "";
    this._hasId = false;
    this._dirty = false;
    this._pendingCR = false;
    this._idBuffer = this.lastEventId;
    return incomplete;
  }

  /**
   * @param {string} line
   * @param {SSEEvent[]} events
   */
  _line(line, events) {
    if (line === "") {
      this._dispatch(events);
      return;
    }
    if (line.charCodeAt(0) === 58) return; // ":" comment, such as the server's ": ping"
    const colon = line.indexOf(":");
    let field = line;
    let value = "";
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.charCodeAt(0) === 32) value = value.slice(1);
    }
    this._dirty = true;
    switch (field) {
      case "data":
        this._data += this._hasData ? "\n" + value : value;
        this._hasData = true;
        break;
      case "event":
        this._type = value;
        break;
      case "id":
        if (!value.includes("\0")) {
          this._idBuffer = value;
          this._hasId = true;
        }
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.retry = Number(value);
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  /** @param {SSEEvent[]} events */
  _dispatch(events) {
    this.lastEventId = this._idBuffer;
    if (this._hasData) {
      events.push({
        data: this._data,
        event: this._type || "message",
        id: this.lastEventId,
        hasId: this._hasId,
        retry: this.retry,
      });
    }
    this._data = "";
    this._hasData = false;
    this._type = "";
    this._hasId = false;
    this._dirty = false;
  }
}

/**
 * Parse a whole event stream given as a list of pieces (a convenience for tests).
 * @param {string[]} pieces
 * @returns {{ events: SSEEvent[], lastEventId: string, retry: number | null, incomplete: boolean }}
 */
export function parseSSE(pieces) {
  const parser = new SSEParser();
  const events = [];
  for (const piece of pieces) events.push(...parser.feed(piece));
  const { lastEventId, retry } = parser;
  return { events, lastEventId, retry, incomplete: parser.end() };
}

// -- helpers -----------------------------------------------------------------------------

const TEXT_TYPES = new Set([
  "application/json",
  "application/x-ndjson",
  "application/ndjson",
  "application/jsonl",
  "application/javascript",
]);

/**
 * How the server stores a body of this Content-Type (as `resumable_stream._http` does):
 * "sse", "text" (resumed in code points) or "bytes".
 * @param {string | null} contentType
 * @returns {"sse" | "text" | "bytes"}
 */
export function bodyMode(contentType) {
  if (!contentType) return "bytes";
  const [kind, ...params] = contentType.split(";");
  const type = kind.trim().toLowerCase();
  if (type === "text/event-stream") return "sse";
  const [main, sub] = type.split("/");
  if (!main || !sub) return "bytes";
  if (!(main === "text" || TEXT_TYPES.has(type) || sub.endsWith("+json"))) return "bytes";
  for (const param of params) {
    const eq = param.indexOf("=");
    if (eq < 0 || param.slice(0, eq).trim().toLowerCase() !== "charset") continue;
    const charset = param.slice(eq + 1).trim().replace(/^"|"$/g, "").trim().toLowerCase();
    if (charset !== "utf-8" && charset !== "utf8") return "bytes";
  }
  return "text";
}

/**
 * Code points in a string: what Python's `len()` counts and the server's `resumeAt` means.
 * (`text.length` counts UTF-16 units: 2 for an astral character such as an emoji.)
 * @param {string} text
 */
export function codePointLength(text) {
  return [...text].length;
}

const NUMERIC_ID = /^[0-9]{1,20}$/;

/** @param {string} id */
function decodeHeaderId(value) {
  try {
    return decodeURIComponent(value);
  } catch {
    return value; // not percent-encoded by us (an app's own header): use it as is
  }
}

function numericId(id) {
  return NUMERIC_ID.test(id) ? BigInt(id) : null;
}

/** Statuses after which a resume is tried again. */
const RETRYABLE = new Set([408, 425, 429, 500, 502, 503, 504]);

/** @param {Response} res */
function retryAfterMs(res) {
  const value = res.headers.get("retry-after");
  if (!value) return 0;
  if (/^\s*[0-9]+\s*$/.test(value)) return Number(value) * 1000;
  const when = Date.parse(value);
  return Number.isNaN(when) ? 0 : Math.max(0, when - Date.now());
}

/** @param {Response} res */
async function bodyText(res) {
  try {
    return (await res.text()).slice(0, 200);
  } catch {
    return "";
  }
}

/** @param {unknown} error */
function describe(error) {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return String(error);
}

/** A reason for aborting a connection: not an abort by the caller. */
class ConnectionCut extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "ConnectionCut";
  }
}

/**
 * @typedef {object} RunState  one stream being read (internal)
 * @property {AbortController} controller   aborts the whole run (abort())
 * @property {AbortController | null} connection  aborts the current connection only
 * @property {string | null} streamId
 * @property {"sse" | "text" | "bytes" | null} mode
 * @property {string | null} lastEventId
 * @property {bigint | null} lastDelivered   highest numeric event id delivered
 * @property {number} position
 * @property {number} failures              failed attempts since the last progress
 * @property {number | null} serverRetry    the SSE retry: value (ms)
 * @property {number} retryAfter            ms the server asked to wait (Retry-After)
 * @property {unknown} lastError
 * @property {boolean} triedWithoutPosition  the 400 fallback for old servers was used
 * @property {number | null} [lastStatus]   the status of the last failed attempt
 * @property {boolean} forgetOnFinish       drop the sessionStorage entry when it ends
 * @property {Headers} [headers]            sent again with every resume
 * @property {RequestCredentials} [credentials]  used again for every resume
 */

// -- the client --------------------------------------------------------------------------

export class ResumableStreamClient {
  /** @param {ResumableStreamOptions} [options] */
  constructor(options = {}) {
    this.onMessage = options.onMessage;
    this.onError = options.onError;
    this.onComplete = options.onComplete;
    this.onStreamId = options.onStreamId;
    this.onRetry = options.onRetry;
    /** Read at each retry, so they may be changed between streams. */
    this.maxRetries = options.maxRetries ?? 5;
    this.retryDelay = options.retryDelay ?? 2000;
    this.maxRetryDelay = options.maxRetryDelay ?? 30000;
    this.idleTimeout = options.idleTimeout ?? 45000;
    this.resumeUrl =
      options.resumeUrl ?? ((id) => "/api/chat/resume/" + encodeURIComponent(id));
    this.storageKey =
      options.storageKey === undefined ? DEFAULT_STORAGE_KEY : options.storageKey;
    this.logger = options.logger === undefined ? console : options.logger;
    this._fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    /** @type {RunState | null} */
    this._run = null;
    /** @type {string | null} */
    this._lastStreamId = null;
  }

  /** True while a stream is being read or a resume is pending. */
  get isStreaming() {
    return this._run !== null;
  }

  /** The id of the current (or last) stream, or null. */
  get streamId() {
    return this._lastStreamId;
  }

  /**
   * The unfinished stream saved in sessionStorage, or null.
   * @param {string} [storageKey]
   * @returns {SavedStream | null}
   */
  static saved(storageKey = DEFAULT_STORAGE_KEY) {
    try {
      const raw = globalThis.sessionStorage?.getItem(storageKey);
      if (!raw) return null;
      const saved = JSON.parse(raw);
      return saved && saved.v === 1 && typeof saved.streamId === "string" ? saved : null;
    } catch {
      return null;
    }
  }

  /**
   * POST `body` (as JSON unless it is already a string, Blob, FormData, URLSearchParams or
   * buffer) to `url` and read the answer, resuming it if the connection drops. Any stream
   * this client was reading is aborted first.
   * @param {string} url
   * @param {unknown} body
   * @param {RequestInit} [init]  extra fetch options (headers, credentials, ...)
   * @returns {Promise<StreamResult>} settles when the stream is over; never rejects
   */
  async start(url, body, init = {}) {
    const run = this._begin(null);
    this._keepAuth(run, init);
    const userSignal = init.signal;
    if (userSignal) {
      // The caller's own signal aborts the whole stream, resumes included.
      if (userSignal.aborted) run.controller.abort(userSignal.reason);
      else {
        const stop = () => run.controller.abort(userSignal.reason);
        userSignal.addEventListener("abort", stop, { once: true });
      }
    }
    const headers = new Headers(init.headers);
    const raw =
      typeof body === "string" ||
      body instanceof Blob ||
      body instanceof FormData ||
      body instanceof URLSearchParams ||
      body instanceof ArrayBuffer ||
      ArrayBuffer.isView(body);
    if (!raw && !headers.has("content-type")) headers.set("content-type", "application/json");
    if (!headers.has("accept")) headers.set("accept", "text/event-stream, */*");
    const connection = this._connect(run);
    let res;
    try {
      res = await this._fetch(url, {
        method: "POST",
        ...init,
        headers,
        body: raw ? /** @type {BodyInit} */ (body) : JSON.stringify(body),
        signal: connection.signal,
      });
    } catch (error) {
      if (run.controller.signal.aborted) return this._finish(run, "aborted");
      // Nothing names the stream yet, and a POST must not be repeated: final.
      return this._fail(
        run,
        new NotResumableError(`the request failed before the stream started (${describe(error)})`, {
          cause: error,
        })
      );
    }
    if (!res.ok) {
      const text = await bodyText(res);
      return this._fail(
        run,
        new StreamRequestError(`${url} answered ${res.status}${text ? ": " + text : ""}`, {
          status: res.status,
        })
      );
    }
    const header = res.headers.get("x-stream-id");
    // The header holds the id percent-encoded (UTF-8): decode it once.
    const streamId = header ? decodeHeaderId(header) : header;
    if (streamId) {
      this._setStreamId(run, streamId);
      this._log("info", `stream ${streamId}: started (${url})`);
    } else {
      this._log("warn", `${url} sent no X-Stream-Id: this stream cannot be resumed`);
    }
    return this._drive(run, res);
  }

  /**
   * Resume a stream by id, e.g. after a page reload.
   *
   * `lastEventId` undefined: continue after the position saved in sessionStorage for this
   * stream (from the start if none is saved); null: from the start; a string or number:
   * after that event id (event streams).
   * @param {string} [streamId]  default: the saved unfinished stream
   * @param {string | number | null} [lastEventId]
   * @param {{ headers?: HeadersInit, credentials?: RequestCredentials }} [init]  sent with
   *   every resume request (say, an `Authorization` header)
   * @returns {Promise<StreamResult>}
   */
  async resume(streamId, lastEventId, init = {}) {
    const saved = this.storageKey ? ResumableStreamClient.saved(this.storageKey) : null;
    if (streamId === undefined || streamId === null) {
      if (!saved) return { streamId: null, status: "none" };
      streamId = saved.streamId;
    }
    const run = this._begin(streamId);
    this._keepAuth(run, init);
    if (lastEventId === undefined && saved && saved.streamId === streamId) {
      run.mode = saved.mode ?? null;
      run.lastEventId = saved.lastEventId ?? null;
      run.position = saved.position ?? 0;
    } else if (lastEventId !== undefined && lastEventId !== null) {
      run.mode = "sse";
      run.lastEventId = String(lastEventId);
    }
    run.lastDelivered = run.lastEventId === null ? null : numericId(run.lastEventId);
    this._setStreamId(run, streamId);
    this._log("info", `stream ${streamId}: resuming ${this._where(run)}`);
    return this._drive(run, null);
  }

  /**
   * Stop reading. No callback is called. The server's producer is not stopped (send a
   * DELETE to the resume URL for that).
   * @param {{ forget?: boolean }} [options]  forget: false keeps the sessionStorage entry
   *   so that a later `resume()` continues (React unmounts use this)
   */
  abort(options = {}) {
    const run = this._run;
    if (!run) return;
    if (options.forget !== false) this._clearSaved(run);
    run.forgetOnFinish = options.forget !== false;
    run.controller.abort();
  }

  /**
   * Cut the current connection as a network failure would: the client then resumes as
   * usual (this counts as a lost connection and is logged). For demos and tests.
   * @returns {boolean} true if there was a connection to cut
   */
  dropConnection() {
    const connection = this._run?.connection;
    if (!connection || connection.signal.aborted) return false;
    connection.abort(new ConnectionCut("connection cut by dropConnection()"));
    return true;
  }

  // -- internals ---------------------------------------------------------------------------

  /**
   * @param {string | null} streamId
   * @returns {RunState}
   */
  _begin(streamId) {
    if (this._run) {
      this._log("info", `stream ${this._run.streamId ?? "(no id)"}: aborted for a new stream`);
      this.abort({ forget: true });
    }
    /** @type {RunState} */
    const run = {
      controller: new AbortController(),
      connection: null,
      streamId,
      mode: null,
      lastEventId: null,
      lastDelivered: null,
      position: 0,
      failures: 0,
      serverRetry: null,
      retryAfter: 0,
      lastError: null,
      triedWithoutPosition: false,
      forgetOnFinish: true,
    };
    this._run = run;
    return run;
  }

  /**
   * Keep the credentials and headers of `init` for the run's resumes (a GET: no body,
   * so no content-type, which would also turn a cross-origin GET into a preflight).
   * @param {RunState} run
   * @param {RequestInit} init
   */
  _keepAuth(run, init) {
    if (init.credentials !== undefined) run.credentials = init.credentials;
    if (init.headers !== undefined) {
      const headers = new Headers(init.headers);
      headers.delete("content-type");
      headers.delete("content-length");
      run.headers = headers;
    }
  }

  /** @param {RunState} run */
  _connect(run) {
    const connection = new AbortController();
    run.connection = connection;
    const parent = run.controller.signal;
    if (parent.aborted) connection.abort(parent.reason);
    else parent.addEventListener("abort", () => connection.abort(parent.reason), { once: true });
    return connection;
  }

  /**
   * @param {RunState} run
   * @param {string} streamId
   */
  _setStreamId(run, streamId) {
    run.streamId = streamId;
    this._lastStreamId = streamId;
    this._save(run);
    this._call(this.onStreamId, streamId);
  }

  /**
   * Read responses and resume until the stream is over.
   * @param {RunState} run
   * @param {Response | null} res  the first response, or null to resume right away
   * @returns {Promise<StreamResult>}
   */
  async _drive(run, res) {
    const signal = run.controller.signal;
    let first = res === null; // a resume() with no response yet: no wait before it
    for (;;) {
      if (res !== null) {
        const outcome = await this._read(run, res);
        if (outcome === "complete") return this._complete(run);
        if (outcome === "aborted") return this._finish(run, "aborted");
        res = null;
        if (!run.streamId) {
          return this._fail(
            run,
            new NotResumableError("the connection dropped and the stream has no id", {
              cause: run.lastError,
            })
          );
        }
      }
      if (first) {
        first = false;
      } else {
        run.failures += 1;
        if (run.failures > this.maxRetries) {
          return this._fail(
            run,
            new RetriesExhaustedError(
              `stream ${run.streamId}: gave up after ${this.maxRetries} resume attempts ` +
                `(${describe(run.lastError)})`,
              { streamId: run.streamId, cause: run.lastError, status: run.lastStatus ?? null }
            )
          );
        }
        const delay = this._delay(run);
        this._log(
          "info",
          `stream ${run.streamId}: resume attempt ${run.failures}/${this.maxRetries} ` +
            `in ${delay} ms, ${this._where(run)}`
        );
        this._call(this.onRetry, {
          streamId: run.streamId,
          attempt: run.failures,
          maxRetries: this.maxRetries,
          delay,
          error: run.lastError,
        });
        if (!(await this._sleep(delay, signal))) return this._finish(run, "aborted");
      }
      let response;
      try {
        response = await this._resumeRequest(run, false);
      } catch (error) {
        if (signal.aborted) return this._finish(run, "aborted");
        run.lastError = error;
        run.lastStatus = null;
        this._log("warn", `stream ${run.streamId}: resume failed: ${describe(error)}`);
        continue;
      }
      if (response.status === 400 && run.mode !== "text" && run.mode !== "bytes" &&
          !run.lastEventId && !run.triedWithoutPosition) {
        // A server older than the resumeAt=0 rule for event streams: ask with no
        // position (which, for a finished stream, is a 410).
        run.triedWithoutPosition = true;
        try {
          response = await this._resumeRequest(run, true);
        } catch (error) {
          if (signal.aborted) return this._finish(run, "aborted");
          run.lastError = error;
          this._log("warn", `stream ${run.streamId}: resume failed: ${describe(error)}`);
          continue;
        }
      }
      const verdict = await this._judge(run, response);
      if (verdict === "read") {
        res = response;
      } else if (verdict === "complete") {
        return this._complete(run);
      } else if (verdict instanceof Error) {
        return this._fail(run, verdict);
      }
      // "retry": loop
    }
  }

  /**
   * @param {RunState} run
   * @param {boolean} noPosition
   */
  async _resumeRequest(run, noPosition) {
    let url = this.resumeUrl(/** @type {string} */ (run.streamId));
    const headers = new Headers(run.headers);
    if (!headers.has("accept")) headers.set("accept", "text/event-stream, */*");
    headers.delete("last-event-id");
    if (!noPosition) {
      if (run.mode !== "text" && run.mode !== "bytes" && run.lastEventId) {
        headers.set("last-event-id", run.lastEventId);
      } else {
        // An event stream with no event yet: resumeAt=0 means "from the start".
        const at = run.mode === "text" || run.mode === "bytes" ? run.position : 0;
        url += (url.includes("?") ? "&" : "?") + "resumeAt=" + at;
      }
    }
    const connection = this._connect(run);
    /** @type {RequestInit} */
    const init = { method: "GET", headers, cache: "no-store", signal: connection.signal };
    if (run.credentials !== undefined) init.credentials = run.credentials;
    return this._fetch(url, init);
  }

  /**
   * What a resume answer means.
   * @param {RunState} run
   * @param {Response} res
   * @returns {Promise<"read" | "complete" | "retry" | ResumableStreamError>}
   */
  async _judge(run, res) {
    const id = run.streamId;
    if (res.ok) {
      this._log("info", `stream ${id}: resumed ${this._where(run)} (status ${res.status})`);
      return "read";
    }
    const text = await bodyText(res);
    const detail = `stream ${id}: resume answered ${res.status}${text ? " (" + text + ")" : ""}`;
    const info = { status: res.status, streamId: id };
    if (res.status === 413 || (res.status === 410 &&
        res.headers.get("x-stream-status") === "failed")) {
      const reason = res.headers.get("x-stream-error") ||
        (res.status === 413 ? "StreamTooLarge" : "StreamFailed");
      return new StreamFailedError(`${detail}: the stream failed (${reason})`, { ...info, reason });
    }
    if (res.status === 410) {
      this._log("info", `stream ${id}: nothing left (410): complete`);
      return "complete";
    }
    if (res.status === 404) return new StreamNotFoundError(detail, info);
    if (res.status === 403) return new StreamForbiddenError(detail, info);
    if (RETRYABLE.has(res.status)) {
      run.lastError = new ResumableStreamError(detail, info);
      run.lastStatus = res.status;
      run.retryAfter = retryAfterMs(res);
      this._log("warn", detail);
      return "retry";
    }
    return new StreamRequestError(detail, info);
  }

  /**
   * Deliver a response body. "complete": it ended cleanly; "lost": the connection broke
   * (or the body ended inside an event); "aborted": abort() was called.
   * @param {RunState} run
   * @param {Response} res
   * @returns {Promise<"complete" | "lost" | "aborted">}
   */
  async _read(run, res) {
    const mode = bodyMode(res.headers.get("content-type"));
    if (run.mode !== mode) {
      run.mode = mode;
      this._save(run);
    }
    if (!res.body) return "complete";
    const connection = /** @type {AbortController} */ (run.connection);
    const reader = res.body.getReader();
    const decoder = mode === "bytes" ? null : new TextDecoder("utf-8", { ignoreBOM: true });
    const parser = mode === "sse" ? new SSEParser({ lastEventId: run.lastEventId ?? "" }) : null;
    const idle = mode === "sse" && this.idleTimeout > 0 ? this.idleTimeout : 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    const arm = () => {
      if (!idle) return;
      clearTimeout(timer);
      timer = setTimeout(
        () => connection.abort(new ConnectionCut(`no data for ${idle} ms`)),
        idle
      );
    };
    const onAbort = () => reader.cancel(connection.signal.reason).catch(() => {});
    if (connection.signal.aborted) onAbort();
    else connection.signal.addEventListener("abort", onAbort, { once: true });
    try {
      arm();
      for (;;) {
        const { value, done } = await reader.read();
        if (connection.signal.aborted) throw connection.signal.reason;
        if (done) break;
        arm();
        if (parser) {
          const text = /** @type {TextDecoder} */ (decoder).decode(value, { stream: true });
          this._events(run, parser, text);
        } else if (decoder) {
          this._text(run, decoder.decode(value, { stream: true }));
        } else if (value.byteLength) {
          run.position += value.byteLength;
          this._progress(run);
          this._call(this.onMessage, value);
        }
      }
      if (parser) {
        this._events(run, parser, /** @type {TextDecoder} */ (decoder).decode());
        if (parser.end()) {
          const error = new Error("the body ended in the middle of an event");
          run.lastError = error;
          run.lastStatus = null;
          this._log("warn", `stream ${run.streamId}: ${error.message}`);
          return "lost";
        }
      } else if (decoder) {
        this._text(run, decoder.decode());
      }
      return "complete";
    } catch (error) {
      if (run.controller.signal.aborted) return "aborted";
      const reason = connection.signal.aborted ? connection.signal.reason : error;
      run.lastError = reason;
      run.lastStatus = null;
      this._log(
        "warn",
        `stream ${run.streamId ?? "(no id)"}: connection lost ${this._where(run)}: ` +
          describe(reason)
      );
      return "lost";
    } finally {
      clearTimeout(timer);
      connection.signal.removeEventListener("abort", onAbort);
    }
  }

  /**
   * @param {RunState} run
   * @param {SSEParser} parser
   * @param {string} text
   */
  _events(run, parser, text) {
    for (const event of parser.feed(text)) {
      if (run.controller.signal.aborted || run.connection?.signal.aborted) return;
      if (parser.retry !== null) run.serverRetry = parser.retry;
      const number = event.hasId ? numericId(event.id) : null;
      if (number !== null && run.lastDelivered !== null && number <= run.lastDelivered) {
        this._log("debug", `stream ${run.streamId}: skipped event ${event.id}, already delivered`);
        continue;
      }
      if (number !== null) run.lastDelivered = number;
      run.lastEventId = event.id || run.lastEventId;
      this._progress(run);
      this._call(this.onMessage, event.data, event);
    }
    if (parser.retry !== null) run.serverRetry = parser.retry;
    if (parser.lastEventId && parser.lastEventId !== run.lastEventId) {
      // A blank line committed an id without an event (a block with no data), or the
      // last events were skipped as already delivered: move forward, never back.
      const number = numericId(parser.lastEventId);
      if (number === null || run.lastDelivered === null || number > run.lastDelivered) {
        run.lastEventId = parser.lastEventId;
        if (number !== null) run.lastDelivered = number;
        this._save(run);
      }
    }
  }

  /**
   * @param {RunState} run
   * @param {string} text
   */
  _text(run, text) {
    if (!text) return;
    run.position += codePointLength(text);
    this._progress(run);
    this._call(this.onMessage, text);
  }

  /**
   * Data was delivered: the retry budget starts again; the position is saved (in the same
   * task as the onMessage call that follows, so a reload sees both or neither).
   * @param {RunState} run
   */
  _progress(run) {
    if (run.failures) {
      const id = run.streamId;
      this._log("info", `stream ${id}: data is flowing again (resume attempt ${run.failures})`);
    }
    run.failures = 0;
    run.retryAfter = 0;
    this._save(run);
  }

  /** @param {RunState} run */
  _delay(run) {
    const base = run.serverRetry ?? this.retryDelay;
    const backoff = Math.min(base * 2 ** (run.failures - 1), this.maxRetryDelay);
    const jittered = backoff * (0.8 + 0.4 * Math.random());
    return Math.round(Math.max(jittered, Math.min(run.retryAfter, this.maxRetryDelay)));
  }

  /**
   * Wait `ms`, or less if the browser comes back online; false if aborted.
   * @param {number} ms
   * @param {AbortSignal} signal
   * @returns {Promise<boolean>}
   */
  _sleep(ms, signal) {
    return new Promise((resolve) => {
      if (signal.aborted) return resolve(false);
      const offline = globalThis.navigator?.onLine === false;
      const done = (/** @type {boolean} */ value) => {
        clearTimeout(timer);
        signal.removeEventListener("abort", onAbort);
        if (offline) globalThis.removeEventListener?.("online", onOnline);
        resolve(value);
      };
      const onAbort = () => done(false);
      const onOnline = () => done(true);
      const timer = setTimeout(() => done(true), ms);
      signal.addEventListener("abort", onAbort, { once: true });
      if (offline) globalThis.addEventListener?.("online", onOnline, { once: true });
    });
  }

  /** @param {RunState} run */
  _where(run) {
    if (run.mode === "text" || run.mode === "bytes") {
      return `at ${run.position} ${run.mode === "text" ? "characters" : "bytes"}`;
    }
    return run.lastEventId ? `after event ${run.lastEventId}` : "from the start";
  }

  /** @param {RunState} run */
  _complete(run) {
    this._log("info", `stream ${run.streamId ?? "(no id)"}: complete`);
    const result = this._finish(run, "complete");
    this._call(this.onComplete);
    return result;
  }

  /**
   * @param {RunState} run
   * @param {ResumableStreamError} error
   */
  _fail(run, error) {
    if (error.streamId === null) error.streamId = run.streamId;
    this._log("warn", `stream ${run.streamId ?? "(no id)"}: failed: ${error.message}`);
    const result = this._finish(run, "error", error);
    this._call(this.onError, error);
    return result;
  }

  /**
   * @param {RunState} run
   * @param {"complete" | "error" | "aborted"} status
   * @param {Error} [error]
   * @returns {StreamResult}
   */
  _finish(run, status, error) {
    if (status !== "aborted" || run.forgetOnFinish) this._clearSaved(run);
    run.connection?.abort();
    if (this._run === run) this._run = null;
    return error ? { streamId: run.streamId, status, error } : { streamId: run.streamId, status };
  }

  /** @param {RunState} run */
  _save(run) {
    if (!this.storageKey || !run.streamId || run.controller.signal.aborted) return;
    /** @type {SavedStream} */
    const saved = {
      v: 1,
      streamId: run.streamId,
      mode: run.mode,
      lastEventId: run.lastEventId,
      position: run.position,
      updatedAt: Date.now(),
    };
    try {
      globalThis.sessionStorage?.setItem(this.storageKey, JSON.stringify(saved));
    } catch {
      // storage full or disabled: resuming after a reload is lost, nothing else
    }
  }

  /** @param {RunState} run */
  _clearSaved(run) {
    if (!this.storageKey) return;
    try {
      const saved = ResumableStreamClient.saved(this.storageKey);
      if (saved && (run.streamId === null || saved.streamId === run.streamId)) {
        globalThis.sessionStorage?.removeItem(this.storageKey);
      }
    } catch {
      // nothing to do
    }
  }

  /**
   * Call a user callback; an exception in it is logged, not allowed to break the stream.
   * @param {Function | undefined} callback
   * @param {...unknown} args
   */
  _call(callback, ...args) {
    if (!callback) return;
    try {
      callback(...args);
    } catch (error) {
      this.logger?.error?.(LOG_PREFIX, "a callback threw:", error);
    }
  }

  /**
   * @param {"info" | "warn" | "debug"} level
   * @param {string} message
   */
  _log(level, message) {
    this.logger?.[level]?.(`${LOG_PREFIX} ${message}`);
  }
}
