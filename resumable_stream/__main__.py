"""``python -m resumable_stream``: follow or resume a stream by URL and print it.

For people debugging a deployment::

    python -m resumable_stream http://127.0.0.1:8000/api/chat/a/t --json '{"messages": []}'
    python -m resumable_stream http://127.0.0.1:8000 --stream-id=ID --last-event-id 12
    python -m resumable_stream http://127.0.0.1:8000 --stream-id=ID --resume-at 300

(write ``--stream-id=ID``: a random id may start with ``-``).

It reconnects by itself, logging each attempt to stderr, and exits 0 at the end of the
stream, 1 if it cannot get the stream.

For operators, what Redis holds (`resumable_stream._inspect`; the ``redis`` extra)::

    python -m resumable_stream inspect ID [--redis-url URL] [--key-prefix P] [--json]
    python -m resumable_stream list [--redis-url URL] [--key-prefix P] [--json] [--limit N]

(a Redis Cluster node's URL works too: detected with ``INFO cluster``, or ``--cluster``).

The first argument picks: ``inspect`` or ``list`` (never a URL), else a URL.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

import anyio


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m resumable_stream",
        description="Start, follow or resume a resumable stream and print it.",
        epilog="Also: 'inspect ID' and 'list' read what Redis holds (see 'inspect --help').",
    )
    parser.add_argument("url", help="the stream's URL, or the server's base URL with --stream-id")
    parser.add_argument("-X", "--method", help="HTTP method (default POST with a body, else GET)")
    parser.add_argument("--json", help="a JSON request body")
    parser.add_argument("-d", "--data", help="a raw request body")
    parser.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    parser.add_argument("--stream-id", help="resume this stream instead of starting one")
    parser.add_argument("--last-event-id", help="with --stream-id: resume after this SSE id")
    parser.add_argument("--resume-at", type=int, help="with --stream-id: skip these characters")
    parser.add_argument("--resume-path", default="/api/chat/resume/{stream_id}")
    parser.add_argument("--max-retries", type=int, default=5)
    parser.add_argument("--retry-delay", type=float, default=1.0)
    parser.add_argument("--events", action="store_true", help="print SSE ids and event types")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not log retries")
    return parser


async def _main(args: argparse.Namespace) -> int:
    from .client import ResumableStreamClient, ResumeFailed

    headers = {}
    for line in args.header:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    parts = urlsplit(args.url)
    base = f"{parts.scheme}://{parts.netloc}"
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    client = ResumableStreamClient(
        base_url=base, headers=headers, max_retries=args.max_retries,
        retry_delay=args.retry_delay, resume_path=args.resume_path, timeout=None,
    )
    if args.stream_id:
        form = client.follow(
            args.stream_id, last_event_id=args.last_event_id, resume_at=args.resume_at
        )
    else:
        request: dict[str, object] = {}
        if args.json is not None:
            request["json"] = json.loads(args.json)
        elif args.data is not None:
            request["content"] = args.data.encode()
        method = args.method or ("POST" if request else "GET")
        form = client.stream(method, path or "/", **request)
    out = sys.stdout
    try:
        async with form as messages:
            async for message in messages:
                if message.event is not None:
                    if args.events:
                        out.write(f"[{message.id}] {message.event}: {message.data}\n")
                    else:
                        out.write(message.data + "\n")
                else:
                    out.write(message.data)
                out.flush()
    except ResumeFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if client.stream_id:
        print(f"\n(stream {client.stream_id} complete)", file=sys.stderr)
    return 0


COMMANDS = ("inspect", "list")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        from ._inspect import main as inspect_main

        return inspect_main(argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(name)s: %(message)s", stream=sys.stderr,
    )
    return anyio.run(_main, args)


if __name__ == "__main__":
    sys.exit(main())
