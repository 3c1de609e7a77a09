# The client of `npm run bench:durable`: writes a corpus file into an NBD export sequentially in
# 1 MiB requests (QD 1, libnbd), with a FLUSH every FLUSH_MIB MiB and one at the end, and prints
# {"seconds": ..., "bytes": ..., "flushes": ...}. The same client and data for every server.
import json
import os
import sys
import time

import nbd

uri, corpus, flush_mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
CHUNK = 1 << 20
h = nbd.NBD()
h.connect_uri(uri)
size = os.path.getsize(corpus)
flushes = 0
with open(corpus, "rb") as f:
    data = f.read()
t0 = time.perf_counter()
for off in range(0, size, CHUNK):
    h.pwrite(data[off:off + CHUNK], off)
    if ((off + CHUNK) // CHUNK) % flush_mib == 0:
        h.flush()
        flushes += 1
h.flush()
flushes += 1
t = time.perf_counter() - t0
h.shutdown()
print(json.dumps({"seconds": t, "bytes": size, "flushes": flushes}))
