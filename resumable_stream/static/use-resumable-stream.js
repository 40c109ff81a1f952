/**
 * React hook over `ResumableStreamClient`: an ES module that imports "react" by name.
 *
 * The host supplies React. With a bundler (Vite, webpack, esbuild, Next.js) copy this
 * file and `resumable-stream.js` into the app (or import them from where the Python
 * package serves them) and "react" resolves as usual. Without a bundler, map the bare
 * name with an import map before the first module script, to any ES-module build of
 * React, e.g. one of your own or the one your build emits:
 *
 *     <script type="importmap">
 *       { "imports": { "react": "/static/react.mjs" } }
 *     </script>
 *     <script type="module">
 *       import { useResumableStream } from "/_resumable/use-resumable-stream.js";
 *     </script>
 *
 * `resumable_stream.browser.browser_client_app()` serves both files (mount it at
 * `/_resumable`); this one imports the client as "./resumable-stream.js", next to it.
 *
 *     function Chat({ threadId }) {
 *       const [text, setText] = useState("");
 *       const { startStream, resume, abort, isStreaming, error, streamId } =
 *         useResumableStream({
 *           onMessage: (data) => {
 *             if (data !== "[DONE]") setText((t) => t + JSON.parse(data).delta);
 *           },
 *           maxRetries: 5,
 *         });
 *       // After a reload mid-answer: continue the saved stream (sessionStorage).
 *       useEffect(() => { resume(); }, [resume]);
 *       const send = (content) =>
 *         startStream(`/api/chat/agent/${threadId}`, {
 *           messages: [{ role: "user", content }], threadId,
 *         });
 *       ...
 *     }
 *
 * The hook keeps one client for the component's life. Callbacks and options may change
 * between renders: the latest ones are used. Unmounting stops reading but keeps the
 * sessionStorage entry, so a remount (or React's StrictMode double mount) can `resume()`.
 *
 * @module use-resumable-stream
 */

import { useCallback, useEffect, useRef, useState } from "react";
import { ResumableStreamClient } from "./resumable-stream.js";

/**
 * @typedef {import("./resumable-stream.js").ResumableStreamError} ResumableStreamError
 * @typedef {import("./resumable-stream.js").StreamResult} StreamResult
 * @typedef {import("./resumable-stream.js").SSEEvent} SSEEvent
 */

/**
 * @typedef {object} UseResumableStreamOptions
 * @property {(data: any, event?: SSEEvent) => void} [onMessage]
 * @property {(error: ResumableStreamError) => void} [onError]
 * @property {() => void} [onComplete]
 * @property {number} [maxRetries=5]
 * @property {number} [retryDelay=2000]
 * @property {(streamId: string) => string} [resumeUrl]
 * @property {string | null} [storageKey]  sessionStorage key (default "resumable-stream")
 */

/**
 * @typedef {object} UseResumableStream
 * @property {(url: string, body: unknown, init?: RequestInit) => Promise<StreamResult>} startStream
 * @property {(streamId?: string, lastEventId?: string | number | null)
 *   => Promise<StreamResult>} resume
 *   with no stream id, resumes the unfinished stream saved in sessionStorage, if any
 * @property {() => void} abort
 * @property {boolean} isStreaming
 * @property {ResumableStreamError | null} error  the last final error (cleared by a new
 *   start); a `StreamFailedError` when the stream failed on the server (its `reason` says
 *   how), never a normal end
 * @property {string | null} streamId
 */

/**
 * @param {UseResumableStreamOptions} [options]
 * @returns {UseResumableStream}
 */
export function useResumableStream(options = {}) {
  const [isStreaming, setIsStreaming] = useState(false);
  const [error, setError] = useState(/** @type {ResumableStreamError | null} */ (null));
  const [streamId, setStreamId] = useState(/** @type {string | null} */ (null));

  const latest = useRef(options);
  latest.current = options;
  const mounted = useRef(false);
  const runs = useRef(0); // which startStream/resume call is the current one

  const clientRef = useRef(/** @type {ResumableStreamClient | null} */ (null));
  if (clientRef.current === null) {
    clientRef.current = new ResumableStreamClient({
      onMessage: (data, event) => latest.current.onMessage?.(data, event),
      onError: (err) => {
        if (mounted.current) setError(err);
        latest.current.onError?.(err);
      },
      onComplete: () => latest.current.onComplete?.(),
      onStreamId: (id) => {
        if (mounted.current) setStreamId(id);
      },
      resumeUrl: (id) =>
        (latest.current.resumeUrl ?? ((x) => "/api/chat/resume/" + encodeURIComponent(x)))(id),
      storageKey: options.storageKey,
    });
  }
  const client = clientRef.current;
  client.maxRetries = options.maxRetries ?? 5;
  client.retryDelay = options.retryDelay ?? 2000;

  useEffect(() => {
    mounted.current = true;
    return () => {
      mounted.current = false;
      client.abort({ forget: false });
    };
  }, [client]);

  const track = useCallback(
    /**
     * @param {() => Promise<StreamResult>} begin
     * @returns {Promise<StreamResult>}
     */
    async (begin) => {
      const mine = ++runs.current;
      setError(null);
      setIsStreaming(true);
      try {
        return await begin();
      } finally {
        if (mounted.current && runs.current === mine) setIsStreaming(client.isStreaming);
      }
    },
    [client]
  );

  const startStream = useCallback(
    /** @type {UseResumableStream["startStream"]} */
    (url, body, init) => track(() => client.start(url, body, init)),
    [client, track]
  );

  const resume = useCallback(
    /** @type {UseResumableStream["resume"]} */
    (id, lastEventId) => {
      const key = client.storageKey;
      if (id === undefined && (!key || ResumableStreamClient.saved(key) === null)) {
        return Promise.resolve(/** @type {StreamResult} */ ({ streamId: null, status: "none" }));
      }
      return track(() => client.resume(id, lastEventId));
    },
    [client, track]
  );

  const abort = useCallback(() => {
    runs.current++;
    client.abort();
    setIsStreaming(false);
  }, [client]);

  return { startStream, resume, abort, isStreaming, error, streamId };
}
