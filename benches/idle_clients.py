"""Open N PostgreSQL client connections with raw sockets and keep them idle.

    python3 idle_clients.py PORT COUNT [CONCURRENCY]

Each connection sends a protocol 3.0 startup message (user postgres, database postgres) and
reads until ReadyForQuery. CONCURRENCY logins run at once (default 1: one after the other, the
gentle way; COUNT: a burst, as when a fleet of clients reconnects together). Prints
"READY <n> <seconds>" when all are logged in, then keeps them idle until it is killed (which
closes them all at once). On a failure it prints "FAILED after <n> clients: <reason>" and
exits 1.
"""
import asyncio
import struct
import sys
import time

STARTUP = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
STARTUP = struct.pack("!i", len(STARTUP) + 4) + STARTUP


async def login(port, number):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port), timeout=30)
    writer.write(STARTUP)
    await writer.drain()
    while True:
        header = await asyncio.wait_for(reader.readexactly(5), timeout=30)
        kind, length = struct.unpack("!ci", header)
        payload = await reader.readexactly(length - 4)
        if kind == b"E":
            fields = dict((f[:1], f[1:]) for f in payload.split(b"\0") if f)
            raise RuntimeError(f"client {number}: {fields.get(b'C', b'?').decode()} "
                               f"{fields.get(b'M', b'?').decode()}")
        if kind == b"Z":
            return writer


async def main():
    port, count = int(sys.argv[1]), int(sys.argv[2])
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    gate = asyncio.Semaphore(concurrency)
    writers = []

    async def one(number):
        async with gate:
            writers.append(await login(port, number))

    started = time.monotonic()
    try:
        await asyncio.gather(*(one(n) for n in range(count)))
    except Exception as error:  # report and let the caller decide
        print(f"FAILED after {len(writers)} clients: {error}", flush=True)
        sys.exit(1)
    print(f"READY {len(writers)} {time.monotonic() - started:.2f}", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
