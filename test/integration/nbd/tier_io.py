# Page- and chunk-level I/O against a live `zdedup serve`, for the disk-tier integration tests
# (tier-*.test.ts). Unlike nbdcopy, it keeps going after an error and reports which requests failed
# and with which errno, so a test can tell "this page is EIO, its neighbours are fine".
# Run: SOCK=... MODE=... nbdsh -c 'exec(open("tier_io.py").read())'
# Prints one line "RESULT <json>" at the end.
#
# MODE=read    read [OFF, OFF+LEN) in CHUNK-byte requests; compare each with the same range of the
#              file EXPECT. Result: {"ok": n, "bad": [chunk...], "errors": {"EIO": [chunk...], ...}}
#              (chunk = index from OFF; "bad" = read succeeded but returned wrong bytes)
# MODE=write   write [OFF, OFF+LEN) of the file SRC (at the same offsets) in CHUNK-byte requests.
#              Result: {"acked": [chunk...], "errors": {"ENOSPC": [chunk...], ...}}
#              STOP_AFTER=n stops after n consecutive failed writes (0 = never).
# MODE=ranges  write the ranges of the JSON file RANGES ([[off, len], ...]) from SRC; fails on error.
import errno, json, os

SOCK = os.environ["SOCK"]
MODE = os.environ["MODE"]
EXPORT = os.environ.get("EXPORT", "")
CHUNK = int(os.environ.get("CHUNK", "4096"))

h = nbd.NBD()
h.set_export_name(EXPORT)
h.connect_unix(SOCK)
size = h.get_size()
OFF = int(os.environ.get("OFF", "0"))
LEN = int(os.environ.get("LEN", str(size - OFF)))


def ename(e):
    return errno.errorcode.get(e.errnum, str(e.errnum))


def chunks(path):
    """(chunk index, offset, length, the file's bytes there) for each CHUNK of [OFF, OFF+LEN)."""
    with open(path, "rb") as f:
        for i in range(0, (LEN + CHUNK - 1) // CHUNK):
            off = OFF + i * CHUNK
            n = min(CHUNK, OFF + LEN - off)
            f.seek(off)
            yield i, off, n, f.read(n)


result = {}
if MODE == "read":
    ok, bad, errors = 0, [], {}
    for i, off, n, want in chunks(os.environ["EXPECT"]):
        try:
            got = h.pread(n, off)
        except nbd.Error as e:
            errors.setdefault(ename(e), []).append(i)
            continue
        if bytes(got) == want:
            ok += 1
        else:
            bad.append(i)
    result = {"ok": ok, "bad": bad, "errors": errors}
elif MODE == "write":
    stop_after = int(os.environ.get("STOP_AFTER", "0"))
    acked, errors, run = [], {}, 0
    for i, off, _n, buf in chunks(os.environ["SRC"]):
        try:
            h.pwrite(buf, off)
        except nbd.Error as e:
            errors.setdefault(ename(e), []).append(i)
            run += 1
            if stop_after and run >= stop_after:
                break
            continue
        run = 0
        acked.append(i)
    result = {"acked": acked, "errors": errors}
elif MODE == "ranges":
    with open(os.environ["RANGES"]) as rf:
        ranges = json.load(rf)
    with open(os.environ["SRC"], "rb") as f:
        for off, n in ranges:
            f.seek(off)
            h.pwrite(f.read(n), off)
    h.flush()
    result = {"written": len(ranges)}
else:
    raise ValueError("unknown MODE " + MODE)

h.shutdown()
print("RESULT " + json.dumps(result))
