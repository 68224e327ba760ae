"""A TCP relay that delays every byte: how the test bed makes a host slow.

The kernel of the test machines has no ``netem`` qdisc, so latency cannot be
added to a link; instead ``Testbed.slow`` moves sshd to 127.0.0.1 inside the
host's namespace and runs this relay on the host's address.  Each direction
holds every chunk for ``--delay-ms`` before passing it on, preserving order,
so each round trip through the relay gains twice the delay.  Standard library
only; run as ``python3 relay.py --listen ADDR:PORT --target ADDR:PORT --delay-ms MS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal


def _split(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each chunk released ``delay`` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            await asyncio.sleep(max(0.0, due - loop.time()))
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await reader.read(65536)
            await queue.put((loop.time() + delay, data))
            if not data:
                break
        await sender
    except (OSError, asyncio.CancelledError):
        sender.cancel()
        raise


async def _serve(listen: str, target: str, delay: float) -> None:
    t_host, t_port = _split(target)

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(t_host, t_port)
        except OSError:
            c_writer.close()
            return
        try:
            await asyncio.gather(_pump(c_reader, s_writer, delay), _pump(s_reader, c_writer, delay))
        except OSError:
            pass
        finally:
            for w in (c_writer, s_writer):
                w.close()

    host, port = _split(listen)
    server = await asyncio.start_server(handle, host, port, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--delay-ms", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(_serve(args.listen, args.target, args.delay_ms / 1000.0))


if __name__ == "__main__":
    main()
