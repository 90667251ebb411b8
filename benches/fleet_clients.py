"""One client per sidecar of a fleet, each running `select 1` every 100 ms (benches/fleet.sh).

    python3 fleet_clients.py SECONDS RESTART_AT EMULATOR_PID PORT...

Starts at once with the sidecars: each client connects to its port as soon as it listens
(refused connections before that are not errors), logs in (startup message, user and database
postgres) and queries every 100 ms over one connection, reconnecting if it is closed. At
RESTART_AT seconds it sends SIGUSR1 to the emulator (every upstream connection dropped at
once). Prints, at the end:
    SERVED <seconds until every client had its first answer>
    RESTART_SERVED <seconds after the restart until every client had an answer again>
    QUERIES <answered queries>
    ERRORS <phase: start|restart> <SQLSTATE or 'closed'> <count>     (one line per kind)
"""
import asyncio
import os
import signal
import struct
import sys
import time
from collections import Counter

STARTUP = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
STARTUP = struct.pack("!i", len(STARTUP) + 4) + STARTUP
QUERY = b"Q" + struct.pack("!i", len(b"select 1\0") + 4) + b"select 1\0"


class ServerError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


async def until_ready(reader):
    """Reads messages until ReadyForQuery; raises ServerError on an ErrorResponse."""
    error = None
    while True:
        kind, length = struct.unpack("!ci", await reader.readexactly(5))
        payload = await reader.readexactly(length - 4)
        if kind == b"E":
            fields = dict((f[:1], f[1:]) for f in payload.split(b"\0") if f)
            error = fields.get(b"C", b"?").decode()
            if fields.get(b"S", b"") == b"FATAL":
                raise ServerError(error)
        if kind == b"Z":
            if error:
                raise ServerError(error)
            return


class Fleet:
    def __init__(self, ports, restart_at):
        self.started = time.monotonic()
        self.restart_at = restart_at
        self.first_answer = {}
        self.answer_after_restart = {}
        self.errors = Counter()
        self.queries = 0
        self.ports = ports

    def now(self):
        return time.monotonic() - self.started

    def phase(self):
        return "restart" if self.now() >= self.restart_at else "start"

    def answered(self, port):
        self.queries += 1
        self.first_answer.setdefault(port, self.now())
        if self.now() >= self.restart_at:
            self.answer_after_restart.setdefault(port, self.now())

    async def connect(self, port, deadline):
        while True:
            try:
                return await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def client(self, port, seconds):
        deadline = self.started + seconds
        while time.monotonic() < deadline:
            writer = None
            try:
                reader, writer = await self.connect(port, deadline)
                writer.write(STARTUP)
                await asyncio.wait_for(until_ready(reader), timeout=60)
                while time.monotonic() < deadline:
                    writer.write(QUERY)
                    await asyncio.wait_for(until_ready(reader), timeout=60)
                    self.answered(port)
                    await asyncio.sleep(0.1)
            except ServerError as error:
                self.errors[(self.phase(), error.code)] += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                if time.monotonic() < deadline:
                    self.errors[(self.phase(), "closed")] += 1
            finally:
                if writer is not None:
                    writer.close()
            await asyncio.sleep(0.1)


async def main():
    seconds, restart_at, emulator = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    ports = [int(p) for p in sys.argv[4:]]
    fleet = Fleet(ports, restart_at)

    async def restart():
        await asyncio.sleep(restart_at)
        os.kill(emulator, signal.SIGUSR1)

    await asyncio.gather(restart(), *(fleet.client(p, seconds) for p in ports))
    served = max(fleet.first_answer.values()) if len(fleet.first_answer) == len(ports) else -1
    again = (max(fleet.answer_after_restart.values()) - restart_at
             if len(fleet.answer_after_restart) == len(ports) else -1)
    print(f"SERVED {served:.2f}")
    print(f"RESTART_SERVED {again:.2f}")
    print(f"QUERIES {fleet.queries}")
    for (phase, code), count in sorted(fleet.errors.items()):
        print(f"ERRORS {phase} {code} {count}")


asyncio.run(main())
