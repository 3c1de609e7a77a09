# Crash test of durable mode (run by test/integration/durable.test.ts with /usr/bin/python3 and
# the libnbd bindings). Each round: start `zdedup serve --persist` on the same backing, read the
# whole export back and check every page against the model, then let two client connections
# (threads, one libnbd handle each) do random writes (512 B .. 1 MiB, unaligned, overlapping,
# some with FUA), trims, write-zeroes, flushes and reads, and kill -9 the server at a random moment.
#
# Model, per 4 KiB page: the list of contents the page has had (digests) since the last check, and
# the index of the newest one that is durable (acknowledged FLUSH after it, or its write had FUA).
# After the restart the page must hold that version or a later one: a write acknowledged by a FLUSH
# reads back intact, an unflushed one may be old or new, and nothing else (no garbage, no EIO).
# Each connection owns half of the export (writes overlap within it), so its model is exact.
#
# Environment: ZDEDUP (bin/zdedup.js), NODE, DIR (a scratch directory), ROUNDS, SEED. Prints one
# JSON line of totals; exits 1 with a message on the first violation.
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import nbd

P = 4096
MiB = 1 << 20
SIZE = 32 * MiB
HALF = SIZE // 2
ROUNDS = int(os.environ.get("ROUNDS", "50"))
SEED = int(os.environ.get("SEED", str(int(time.time()))))
DIR = os.environ["DIR"]
BACKING = os.path.join(DIR, "b.img")
SOCK = os.path.join(DIR, "nbd.sock")
rng = random.Random(SEED)
ZERO = hashlib.blake2b(bytes(P), digest_size=16).digest()
PATTERNS = [bytes([i * 37 % 256]) * 512 + os.urandom(64) * 56 for i in range(8)]  # dedup-friendly blocks of 4096

totals = {"rounds": 0, "pages_checked": 0, "durable_pages_checked": 0, "ops": 0, "writes": 0, "flushes": 0,
          "fua_writes": 0, "trims": 0, "zeroes": 0, "reads": 0, "seed": SEED, "recovery_seconds_max": 0.0,
          "recovery_discarded_bytes": 0, "killed_mid_op": 0}


def fail(msg):
    print(json.dumps({"error": msg, **totals}))
    sys.stdout.flush()
    os._exit(1)


def dig(b):
    return hashlib.blake2b(b, digest_size=16).digest()


class Region:
    """One connection's half of the export and its model."""

    def __init__(self, base):
        self.base = base
        self.npages = HALF // P
        self.img = bytearray(HALF)
        self.versions = [[ZERO] for _ in range(self.npages)]
        self.durable = [0] * self.npages

    def pages(self, off, end):
        return range(off // P, (end + P - 1) // P)

    def note(self, first_page, last_page_excl):
        for p in range(first_page, last_page_excl):
            self.versions[p].append(dig(bytes(self.img[p * P:(p + 1) * P])))

    def make_durable(self, pages):
        for p in pages:
            self.durable[p] = len(self.versions[p]) - 1

    def flushed(self):
        for p in range(self.npages):
            v = self.versions[p]
            self.versions[p] = v[-1:]
            self.durable[p] = 0

    def rebase(self, data):
        self.img[:] = data
        for p in range(self.npages):
            self.versions[p] = [dig(bytes(data[p * P:(p + 1) * P]))]
            self.durable[p] = 0

    def check(self, data):
        for p in range(self.npages):
            d = dig(bytes(data[p * P:(p + 1) * P]))
            allowed = self.versions[p][self.durable[p]:]
            if d not in allowed:
                known = d in self.versions[p]
                fail(f"page {(self.base // P) + p}: content is {'an older version than the last durable one' if known else 'none of the versions written'} "
                     f"({len(self.versions[p])} versions, durable index {self.durable[p]})")
            totals["pages_checked"] += 1
            if len(allowed) == 1:
                totals["durable_pages_checked"] += 1


def payload(n):
    k = rng.random()
    if k < 0.4:
        return os.urandom(n)
    if k < 0.5:
        return bytes(n)
    out = bytearray()
    while len(out) < n:
        out += PATTERNS[rng.randrange(len(PATTERNS))]
    return bytes(out[:n])


def worker(h, reg, r, stop):
    try:
        while not stop.is_set():
            k = r.random()
            totals["ops"] += 1
            if k < 0.55:
                n = int(2 ** r.uniform(9, 20))  # 512 B .. 1 MiB, log-uniform
                n = min(n, HALF)
                off = r.randrange(0, HALF - n + 1)
                if r.random() < 0.5:
                    off -= off % 512
                data = payload(n)
                fua = r.random() < 0.1
                reg.img[off:off + n] = data
                first, last = off // P, (off + n + P - 1) // P
                reg.note(first, last)
                h.pwrite(data, reg.base + off, nbd.CMD_FLAG_FUA if fua else 0)
                totals["writes"] += 1
                if fua:
                    reg.make_durable(range(first, last))
                    totals["fua_writes"] += 1
            elif k < 0.65:
                n = r.randrange(1, MiB)
                off = r.randrange(0, HALF - n + 1)
                first, last = (off + P - 1) // P, (off + n) // P
                if last > first:
                    reg.img[first * P:last * P] = bytes((last - first) * P)
                    reg.note(first, last)
                h.trim(n, reg.base + off)
                totals["trims"] += 1
            elif k < 0.75:
                n = r.randrange(1, MiB)
                off = r.randrange(0, HALF - n + 1)
                reg.img[off:off + n] = bytes(n)
                first, last = off // P, (off + n + P - 1) // P
                reg.note(first, last)
                fua = r.random() < 0.1
                h.zero(n, reg.base + off, (nbd.CMD_FLAG_FUA if fua else 0) | (nbd.CMD_FLAG_NO_HOLE if r.random() < 0.5 else 0))
                totals["zeroes"] += 1
                if fua:
                    reg.make_durable(range(first, last))
            elif k < 0.9:
                h.flush()
                reg.flushed()
                totals["flushes"] += 1
            else:
                n = r.randrange(1, MiB)
                off = r.randrange(0, HALF - n + 1)
                got = h.pread(n, reg.base + off)
                if got != bytes(reg.img[off:off + n]):
                    fail(f"live read at {reg.base + off}+{n} differs from what was written")
                totals["reads"] += 1
    except nbd.Error:
        totals["killed_mid_op"] += 1


def start_server():
    log = open(os.path.join(DIR, "server.log"), "ab")
    args = [os.environ.get("NODE", "node"), os.environ["ZDEDUP"], "serve", "--socket", SOCK, "--http", "off",
            "--backing", BACKING, "--backing-size", "96M", "--segment-size", "1M", "--persist", "--size", str(SIZE),
            "--max-pool", "4M", "--checkpoint-interval", "64K", "--log-level", "info"]
    mark = os.path.getsize(os.path.join(DIR, "server.log")) if os.path.exists(os.path.join(DIR, "server.log")) else 0
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 60
    while time.time() < deadline:
        if p.poll() is not None:
            fail(f"server exited {p.returncode} at start: " + open(os.path.join(DIR, "server.log"), "rb").read()[-3000:].decode(errors="replace"))
        with open(os.path.join(DIR, "server.log"), "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        if '"msg":"ready"' in text:
            for line in text.splitlines():
                if '"recovered the store' in line:
                    rec = json.loads(line)
                    totals["recovery_seconds_max"] = max(totals["recovery_seconds_max"], rec.get("recovery_seconds", 0))
                    totals["recovery_discarded_bytes"] += rec.get("recovery_discarded_bytes", 0)
                    if rec.get("recovery_lost_pages", 0) != 0 or rec.get("recovery_damaged_records", 0) != 0:
                        fail(f"recovery after a plain kill -9 reported lost pages or damage: {line}")
            return p
        time.sleep(0.02)
    fail("server not ready after 60 s")


def connect():
    h = nbd.NBD()
    h.connect_unix(SOCK)
    return h


regions = [Region(0), Region(HALF)]
for rnd in range(ROUNDS):
    srv = start_server()
    hs = [connect(), connect()]
    # Everything the model allows must be there; then the recovered state is the new baseline.
    for h, reg in zip(hs, regions):
        data = bytearray()
        for off in range(0, HALF, 4 * MiB):
            try:
                data += h.pread(4 * MiB, reg.base + off)
            except nbd.Error as e:
                fail(f"round {rnd}: read at {reg.base + off} failed after restart: {e}")
        reg.check(data)
        reg.rebase(data)
    stop = threading.Event()
    ths = [threading.Thread(target=worker, args=(h, reg, random.Random(rng.random()), stop)) for h, reg in zip(hs, regions)]
    for t in ths:
        t.start()
    time.sleep(rng.uniform(0.05, 1.0))
    srv.send_signal(signal.SIGKILL)
    srv.wait()
    stop.set()
    for t in ths:
        t.join()
    for h in hs:
        try:
            h.shutdown()
        except nbd.Error:
            pass
    totals["rounds"] += 1

# A last restart checks the last round's kill.
srv = start_server()
hs = [connect(), connect()]
for h, reg in zip(hs, regions):
    data = bytearray()
    for off in range(0, HALF, 4 * MiB):
        data += h.pread(4 * MiB, reg.base + off)
    reg.check(data)
srv.send_signal(signal.SIGTERM)
srv.wait()
print(json.dumps(totals))
