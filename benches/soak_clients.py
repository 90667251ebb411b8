"""Mixed PostgreSQL clients for the soak benchmark, on raw sockets (no driver to install).

    python3 soak_clients.py SECONDS DIRECT_PORT PORT [PORT...]

Runs, against each sidecar PORT, workers of four kinds until SECONDS have passed:
  short        connect, `select 1`, disconnect, again
  session      one long session running small queries, reconnecting when it is lost
  transaction  BEGIN; INSERT a (worker, n) row; COMMIT in one Query; a commit is acknowledged
               when its ReadyForQuery comes without an error
  copy         COPY FROM STDIN of 500 rows tagged with a batch number, acknowledged by
               CommandComplete
Every failure is counted by its SQLSTATE, or as "closed without an error" (a bare EOF or reset),
"timeout" (no answer within 60 s) or "refused". At the end it connects straight to PostgreSQL
(DIRECT_PORT, no TLS) and checks that every acknowledged commit and COPY batch is there.
Prints one JSON line with the counts.
"""
import json
import socket
import struct
import sys
import threading
import time
from collections import Counter

ANSWER_TIMEOUT = 60


class Lost(Exception):
    """The connection ended: with a SQLSTATE when the server said why."""

    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind


class Conn:
    def __init__(self, port):
        try:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            raise Lost("refused")
        self.sock.settimeout(ANSWER_TIMEOUT)
        body = struct.pack("!i", 196608) + b"user\0postgres\0database\0postgres\0\0"
        self.send(struct.pack("!i", len(body) + 4) + body)
        self.until_ready()

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError:
            raise Lost("closed without an error")

    def read_exact(self, n):
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                raise Lost("timeout")
            except OSError:
                raise Lost("closed without an error")
            if not chunk:
                raise Lost("closed without an error")
            buf += chunk
        return buf

    def message(self):
        kind, length = struct.unpack("!ci", self.read_exact(5))
        return kind, self.read_exact(length - 4)

    def until_ready(self):
        """Reads to ReadyForQuery; returns (error SQLSTATE or None, CommandComplete tags).
        A transaction left open or failed (status T or E) is rolled back first."""
        error, tags = None, []
        while True:
            kind, body = self.message()
            if kind == b"E":
                fields = dict((f[:1], f[1:]) for f in body.split(b"\0") if f)
                code = fields.get(b"C", b"?").decode()
                if fields.get(b"S") in (b"FATAL", b"PANIC"):
                    raise Lost(code)
                error = code
            elif kind == b"C":
                tags.append(body.rstrip(b"\0").decode())
            elif kind == b"G":  # CopyInResponse: the caller sends the data
                return "copy-in", tags
            elif kind == b"Z":
                if body[:1] in (b"T", b"E"):
                    self.query("ROLLBACK")
                return error, tags

    def query(self, sql):
        body = sql.encode() + b"\0"
        self.send(b"Q" + struct.pack("!i", len(body) + 4) + body)
        return self.until_ready()

    def close(self):
        try:
            self.sock.sendall(b"X\0\0\0\4")
        except OSError:
            pass
        self.sock.close()


class Soak:
    def __init__(self, seconds):
        self.until = time.monotonic() + seconds
        self.lock = threading.Lock()
        self.errors = Counter()
        self.ok = Counter()
        self.commits = []  # (worker, n) acknowledged
        self.batches = []  # acknowledged COPY batch numbers

    def running(self):
        return time.monotonic() < self.until

    def count(self, what, key):
        with self.lock:
            what[key] += 1


def guarded(kind, soak, port, worker):
    """A worker whose unexpected exception is counted, not lost with its thread."""
    try:
        kind(soak, port, worker)
    except Exception as error:  # noqa: BLE001 - counted and reported
        soak.count(soak.errors, f"worker crashed: {type(error).__name__}: {error}")


def short(soak, port, worker):
    while soak.running():
        try:
            conn = Conn(port)
            error, _ = conn.query("select 1")
            conn.close()
            soak.count(soak.errors if error else soak.ok, error or "short")
        except Lost as lost:
            soak.count(soak.errors, lost.kind)
            time.sleep(0.1)


def sessions(soak, port, worker, body):
    conn = None
    while soak.running():
        try:
            if conn is None:
                conn = Conn(port)
            body(conn)
        except Lost as lost:
            soak.count(soak.errors, lost.kind)
            conn = None
            time.sleep(0.1)
    if conn is not None:
        conn.close()


def session(soak, port, worker):
    def body(conn):
        error, _ = conn.query("select pg_sleep(0.02), count(*) from soak_commits")
        soak.count(soak.errors if error else soak.ok, error or "session")
    sessions(soak, port, worker, body)


def transaction(soak, port, worker):
    n = [0]

    def body(conn):
        n[0] += 1
        error, _ = conn.query(
            f"BEGIN; INSERT INTO soak_commits VALUES ({worker}, {n[0]}); COMMIT")
        if error:
            soak.count(soak.errors, error)
        else:
            with soak.lock:
                soak.commits.append((worker, n[0]))
            soak.count(soak.ok, "transaction")
    sessions(soak, port, worker, body)


def copy(soak, port, worker):
    batch = [worker * 1_000_000]

    def body(conn):
        batch[0] += 1
        state, _ = conn.query("COPY soak_copy FROM STDIN")
        if state != "copy-in":
            soak.count(soak.errors, state or "copy not started")
            return
        rows = "".join(f"{batch[0]}\t{i}\n" for i in range(500)).encode()
        conn.send(b"d" + struct.pack("!i", len(rows) + 4) + rows + b"c\0\0\0\4")
        error, tags = conn.until_ready()
        if error:
            soak.count(soak.errors, error)
        elif tags == ["COPY 500"]:
            with soak.lock:
                soak.batches.append(batch[0])
            soak.count(soak.ok, "copy")
        else:
            soak.count(soak.errors, f"unexpected tags {tags}")
    sessions(soak, port, worker, body)


def rows(conn, sql):
    """The text values of every row `sql` returns (an error stops the run)."""
    body = sql.encode() + b"\0"
    conn.send(b"Q" + struct.pack("!i", len(body) + 4) + body)
    result = []
    while True:
        kind, body = conn.message()
        if kind == b"D":
            fields, pos = [], 2
            for _ in range(struct.unpack("!h", body[:2])[0]):
                length = struct.unpack("!i", body[pos:pos + 4])[0]
                fields.append(body[pos + 4:pos + 4 + length].decode())
                pos += 4 + length
            result.append(fields)
        elif kind == b"E":
            raise SystemExit(f"the check query failed: {body!r}")
        elif kind == b"Z":
            return result


def check(direct_port, soak):
    """Acknowledged commits and COPY batches missing from the database."""
    conn = Conn(direct_port)
    present = {(int(w), int(n)) for w, n in rows(conn, "select worker, n from soak_commits")}
    duplicates = len(rows(conn, "select 1 from soak_commits group by worker, n having count(*) > 1"))
    full = {int(b): int(c) for b, c in rows(
        conn, "select batch, count(*) from soak_copy group by batch")}
    conn.close()
    missing_commits = sum(1 for c in soak.commits if c not in present)
    missing_batches = sum(1 for b in soak.batches if full.get(b) != 500)
    return missing_commits, missing_batches, duplicates


def main():
    seconds, direct_port = int(sys.argv[1]), int(sys.argv[2])
    ports = [int(p) for p in sys.argv[3:]]
    soak = Soak(seconds)
    threads = []
    worker = 0
    for port in ports:
        for kind, count in ((short, 2), (session, 2), (transaction, 3), (copy, 1)):
            for _ in range(count):
                worker += 1
                threads.append(threading.Thread(target=guarded, args=(kind, soak, port, worker)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    missing_commits, missing_batches, duplicates = check(direct_port, soak)
    print(json.dumps({
        "ok": dict(soak.ok),
        "errors": dict(soak.errors),
        "acknowledged_commits": len(soak.commits),
        "acknowledged_commits_lost": missing_commits,
        "commits_twice": duplicates,
        "acknowledged_copy_batches": len(soak.batches),
        "acknowledged_copy_batches_lost": missing_batches,
    }), flush=True)


main()
