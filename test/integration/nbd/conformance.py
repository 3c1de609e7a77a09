# NBD transmission-phase conformance against a live `zdedup serve`, driven through libnbd (nbdsh).
# Run: SOCK=/path/to.sock EXPORT=name SR=1|0 SEED=n nbdsh -c 'exec(open("conformance.py").read())'
# Every command and command flag at odd offsets and lengths, checked byte for byte against a model
# (a bytearray of the export), with structured replies (SR=1) or simple replies only (SR=0).
# Prints "OK <checks>" at the end; any failure raises (nbdsh exits non-zero).
import errno, os, random

SOCK = os.environ["SOCK"]
EXPORT = os.environ.get("EXPORT", "")
SR = os.environ.get("SR", "1") == "1"
rng = random.Random(int(os.environ.get("SEED", "1")))
checks = 0

def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1

def connect():
    h = nbd.NBD()
    h.set_request_structured_replies(SR)
    if SR:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.set_export_name(EXPORT)
    h.connect_unix(SOCK)
    return h

def expect_errno(fn, want, what):
    try:
        fn()
    except nbd.Error as e:
        check(e.errnum == want, "%s: errno %s, want %s (%s)" % (what, e.errnum, want, e))
        return
    raise AssertionError("%s: succeeded, want errno %d" % (what, want))

h = connect()
size = h.get_size()
PS = h.get_block_size(nbd.SIZE_PREFERRED)
check(size >= 4 * 1024 * 1024, "export big enough for the test (%d)" % size)
check(h.get_structured_replies_negotiated() == SR, "structured replies negotiated iff requested")
for name in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_cache", "can_multi_conn"):
    check(getattr(h, name)(), name)
check(h.can_df() == SR, "can_df only with structured replies")
check(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION) == SR, "base:allocation only with structured replies")
check(not h.is_read_only(), "export is writable")
check(not h.is_rotational(), "not rotational")
check(h.get_block_size(nbd.SIZE_MINIMUM) == 1, "minimum block size 1")
check(PS == 4096, "preferred block size = page size")
check(h.get_block_size(nbd.SIZE_MAXIMUM) == 32 * 1024 * 1024, "maximum payload 32 MiB")

# The model covers the first REGION bytes; the export is fresh (all zero) when the test starts.
REGION = 4 * 1024 * 1024
model = bytearray(REGION)
check(h.pread(REGION, 0) == bytes(REGION), "fresh export reads as zeroes")

def rand_range(maxlen):
    length = rng.randint(1, maxlen)
    off = rng.randint(0, REGION - length)
    return off, length

def verify(off, length, what):
    got = h.pread(length, off)
    check(got == bytes(model[off:off + length]), "%s: read back %d@%d differs" % (what, length, off))

# Writes at odd offsets and lengths, some FUA, each read back (partial pages are read-modify-write).
for i in range(300):
    off, length = rand_range(rng.choice([1, 7, 4095, 4097, 12289, 65537, 300000]))
    kind = rng.randrange(4)
    if kind == 0:
        data = bytes([rng.randrange(256)]) * length                     # same-filled
    elif kind == 1:
        data = os.urandom(length)                                      # incompressible
    elif kind == 2:
        data = (b"zdedup page %08d " % i) * (length // 20 + 1)         # compressible text
        data = data[:length]
    else:
        data = bytes(length)                                           # zeroes
    flags = nbd.CMD_FLAG_FUA if rng.random() < 0.3 else 0
    h.pwrite(data, off, flags)
    model[off:off + length] = data
    if i % 10 == 0:
        verify(off, length, "write %d" % i)
    if i % 50 == 0:
        h.flush()
verify(0, REGION, "after writes")

# Duplicate pages (same content at many page offsets) read back independently.
page = os.urandom(PS)
for p in range(64, 96):
    h.pwrite(page, p * PS)
    model[p * PS:(p + 1) * PS] = page
h.pwrite(b"\x01", 70 * PS + 5)          # changing one copy must not change the others
model[70 * PS + 5] = 1
verify(64 * PS, 32 * PS, "duplicates")

# WRITE_ZEROES with and without NO_HOLE, and FAST_ZERO (zeroing here is always cheap).
for i in range(60):
    off, length = rand_range(rng.choice([1, 100, 4096, 5000, 70000, 1000000]))
    f = rng.choice([0, nbd.CMD_FLAG_NO_HOLE, nbd.CMD_FLAG_FAST_ZERO, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FAST_ZERO, nbd.CMD_FLAG_FUA])
    h.zero(length, off, f)
    model[off:off + length] = bytes(length)
    verify(max(0, off - 10), min(REGION, off + length + 10) - max(0, off - 10), "zero %d flags %d" % (i, f))

# TRIM: whole pages inside the range are dropped (read as zeroes); partial edge pages are kept.
for i in range(40):
    off, length = rand_range(rng.choice([100, 4096, 9000, 200000]))
    h.trim(length, off, nbd.CMD_FLAG_FUA if i % 2 else 0)
    first = -(-off // PS)
    last = (off + length) // PS
    if last > first:
        model[first * PS:last * PS] = bytes((last - first) * PS)
    verify(max(0, off - PS), min(REGION, off + length + PS) - max(0, off - PS), "trim %d" % i)

# CACHE is a no-op that succeeds.
h.cache(12345, 777)
h.flush()
verify(0, REGION, "after zero/trim/cache")

if SR:
    # Structured reads: chunks cover the request exactly once; with DF exactly one data chunk.
    for i in range(30):
        off, length = rand_range(rng.choice([1, 4096, 100000]))
        for flags in (0, nbd.CMD_FLAG_DF):
            seen = []
            def chunk(buf, offset, status, err):
                seen.append((offset, len(buf), status))
                if status == nbd.READ_DATA:
                    check(bytes(buf) == bytes(model[offset:offset + len(buf)]), "structured chunk content")
                elif status == nbd.READ_HOLE:
                    check(bytes(model[offset:offset + len(buf)]) == bytes(len(buf)), "hole chunk over zeroes")
                return 0
            got = h.pread_structured(length, off, chunk, flags)
            check(bytes(got) == bytes(model[off:off + length]), "pread_structured result")
            seen.sort()
            pos = off
            for (o, n, st) in seen:
                check(o == pos, "chunks contiguous, no overlap")
                pos += n
            check(pos == off + length, "chunks cover the request")
            if flags & nbd.CMD_FLAG_DF:
                check(len(seen) == 1 and seen[0][2] == nbd.READ_DATA, "DF: one data chunk")

    # BLOCK_STATUS (base:allocation): never says ZERO over non-zero bytes; HOLE implies ZERO;
    # a fresh region is reported as a hole; REQ_ONE gives one extent within the request.
    def extents(length, off, flags=0):
        out = []
        def cb(metacontext, offset, entries, err):
            check(metacontext == nbd.CONTEXT_BASE_ALLOCATION, "context name")
            out.extend(zip(entries[0::2], entries[1::2]))
            return 0
        h.block_status(length, off, cb, flags)
        return out
    for i in range(40):
        off, length = rand_range(rng.choice([1, 4096, 50000, 1000000]))
        ex = extents(length, off)
        check(len(ex) >= 1, "at least one extent")
        pos = off
        for (n, fl) in ex:
            check(n > 0, "extent length > 0")
            end = min(pos + n, off + length)
            if fl & nbd.STATE_HOLE:
                check(fl & nbd.STATE_ZERO, "hole implies zero")
            if fl & nbd.STATE_ZERO:
                check(bytes(model[pos:end]) == bytes(end - pos), "ZERO extent over zero bytes")
            pos += n
        one = extents(length, off, nbd.CMD_FLAG_REQ_ONE)
        check(len(one) == 1 and one[0][0] <= length, "REQ_ONE: one extent within the request")
    far = size - 8 * PS
    ex = extents(8 * PS, far)
    check(ex == [(8 * PS, nbd.STATE_HOLE | nbd.STATE_ZERO)], "untouched tail is one hole: %r" % ex)
    h.pwrite(b"x" * PS, far + PS)
    h.zero(PS, far + 3 * PS, nbd.CMD_FLAG_NO_HOLE)
    ex = extents(8 * PS, far)
    check(ex == [(PS, 3), (PS, 0), (PS, 3), (PS, 2), (4 * PS, 3)], "hole/data/hole/zero/hole: %r" % ex)
    h.trim(8 * PS, far)

# Errors past the end of the export (strict mode off so libnbd sends them).
h.set_strict_mode(0)
expect_errno(lambda: h.pread(2, size - 1), errno.EINVAL, "read past EOF")
expect_errno(lambda: h.pread(1, size), errno.EINVAL, "read at EOF")
expect_errno(lambda: h.pwrite(b"ab", size - 1), errno.ENOSPC, "write past EOF")
expect_errno(lambda: h.trim(4096, size), errno.EINVAL, "trim past EOF")
expect_errno(lambda: h.zero(2, size - 1), errno.ENOSPC, "zero past EOF")
expect_errno(lambda: h.cache(2, size - 1), errno.EINVAL, "cache past EOF")
expect_errno(lambda: h.pread(1, 2 ** 63), errno.EINVAL, "read at offset 2^63")
expect_errno(lambda: h.pread(1, 0, 1 << 7), errno.EINVAL, "unknown command flag")
expect_errno(lambda: h.pwrite(b"abc", 10, nbd.CMD_FLAG_NO_HOLE), errno.EINVAL, "NO_HOLE on WRITE")
if not SR:
    expect_errno(lambda: h.pread(4, 0, nbd.CMD_FLAG_DF), errno.EINVAL, "DF without structured replies")
if SR:
    expect_errno(lambda: h.block_status(1, size, lambda *a: 0), errno.EINVAL, "block status past EOF")
# The connection still works after every error, and the data is intact.
verify(0, REGION, "after errors")
h.set_strict_mode(nbd.STRICT_MASK)

# Multi-conn: a write acknowledged on one connection is visible on another.
h2 = connect()
data = os.urandom(10000)
h2.pwrite(data, 12345, nbd.CMD_FLAG_FUA)
model[12345:12345 + len(data)] = data
verify(12000, 11000, "written on the second connection")
h.pwrite(b"back", 3)
model[3:7] = b"back"
check(h2.pread(10, 0) == bytes(model[0:10]), "written on the first, read on the second")
h2.shutdown()

# Pipelining: many requests in flight at once, completed in any order.
cookies = []
bufs = []
for i in range(64):
    off = rng.randrange(0, REGION - 8192)
    data = os.urandom(rng.randint(1, 8192))
    model[off:off + len(data)] = data
    cookies.append(h.aio_pwrite(data, off))
pending = set(cookies)
while pending:
    h.poll(-1)
    pending = set(c for c in pending if not h.aio_command_completed(c))
for i in range(64):
    off = rng.randrange(0, REGION - 8192)
    b = nbd.Buffer(8192)
    bufs.append((off, b, h.aio_pread(b, off)))
for (off, b, c) in bufs:
    while not h.aio_command_completed(c):
        h.poll(-1)
    check(b.to_bytearray() == model[off:off + 8192], "pipelined read %d" % off)
verify(0, REGION, "final")
h.shutdown()
print("OK %d" % checks)
