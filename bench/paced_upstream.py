"""paced_upstream — the bench's upstream for the paced-stream scenarios.

A model writes its answer a token or two at a time, tens of milliseconds
apart, so a proxy in front of it reads one event per socket read and cannot
spread its per-read and per-event costs over a batch the way it does when
nginx hands it a whole 12 KB stream at once. This server answers every POST
with the events of a fixed SSE body (bench/bodies/, by path, as the nginx
upstream does), chunked, one event every --interval milliseconds.

nginx cannot do this (`limit_rate` paces bytes per second, and sent the
stream in two reads); a Python pacer shares the load generator's core, which
is fine here: the figure that matters is the proxy's CPU, and at a model's
pace the whole load is a few thousand small writes a second.

usage: paced_upstream.py --port P --bodies DIR [--interval MS]
"""

import argparse
import asyncio
import os

PATHS = {"/v1/messages": "anthropic.sse", "/v1/chat/completions": "openai-chat.sse"}


def events_of(path):
    """The body's events as HTTP chunks, each a whole event with its blank line."""
    text = open(path, "rb").read()
    chunks = []
    for ev in text.split(b"\n\n"):
        if ev.strip():
            ev += b"\n\n"
            chunks.append(b"%x\r\n%s\r\n" % (len(ev), ev))
    return chunks


async def serve(reader, writer, bodies, interval):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1].split("?")[0]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            chunks = bodies.get(path)
            if chunks is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                continue
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(interval)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, IndexError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bodies", required=True)
    ap.add_argument("--interval", type=float, default=20.0, help="milliseconds between events")
    args = ap.parse_args()
    bodies = {p: events_of(os.path.join(args.bodies, f)) for p, f in PATHS.items()}
    interval = args.interval / 1000.0
    server = await asyncio.start_server(lambda r, w: serve(r, w, bodies, interval),
                                        "127.0.0.1", args.port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
