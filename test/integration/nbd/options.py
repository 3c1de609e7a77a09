# NBD option phase against a live `zdedup serve` with exports "" (default), "a" and "ro" (read-only),
# driven through libnbd (nbdsh). Run: SOCK=/path/to.sock nbdsh -c 'exec(open("options.py").read())'
# Covers LIST, INFO (name, description, block size), GO, EXPORT_NAME (old-style fallback, with and
# without the 124-byte padding), STRUCTURED_REPLY, LIST/SET_META_CONTEXT, ABORT, unknown exports,
# and the read-only export's flags and EPERM errors. Prints "OK <checks>".
import errno, os

SOCK = os.environ["SOCK"]
checks = 0

def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1

def expect_errno(fn, want, what):
    try:
        fn()
    except nbd.Error as e:
        check(e.errnum == want, "%s: errno %s, want %s (%s)" % (what, e.errnum, want, e))
        return
    raise AssertionError("%s: succeeded, want errno %d" % (what, want))

def expect_fail(fn, what):
    try:
        fn()
    except nbd.Error:
        check(True, what)
        return
    raise AssertionError("%s: succeeded, want failure" % what)

# LIST, LIST_META_CONTEXT, INFO for each export, then GO.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(SOCK)
check(h.get_protocol() == "newstyle-fixed", "fixed newstyle")
names = []
h.opt_list(lambda name, desc: names.append((name, desc)) or 0)
check(sorted(n for n, d in names) == ["", "a", "ro"], "LIST names: %r" % names)
check(dict(names)[""] != "", "default export has a description")
ctxs = []
n = h.opt_list_meta_context(lambda name: ctxs.append(name) or 0)
check(ctxs == ["base:allocation"] and n == 1, "LIST_META_CONTEXT: %r" % ctxs)
h.set_full_info(True)
for name, size, ro in (("", 64 << 20, False), ("a", 8 << 20, False), ("ro", 1 << 20, True)):
    h.set_export_name(name)
    h.opt_info()
    check(h.get_size() == size, "INFO size of %r" % name)
    check(h.is_read_only() == ro, "INFO read-only of %r" % name)
    check(h.get_canonical_export_name() == name, "INFO_NAME of %r" % name)
    check(h.get_block_size(nbd.SIZE_MINIMUM) == 1, "INFO_BLOCK_SIZE min")
    check(h.get_block_size(nbd.SIZE_PREFERRED) == 4096, "INFO_BLOCK_SIZE preferred")
    check(h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20, "INFO_BLOCK_SIZE max")
h.set_export_name("")
h.opt_info()
check(h.get_export_description() == dict(names)[""], "INFO_DESCRIPTION")
h.set_export_name("no such export")
expect_fail(lambda: h.opt_info(), "INFO of an unknown export fails (ERR_UNKNOWN)")
expect_fail(lambda: h.opt_go(), "GO of an unknown export fails and stays in option mode")
h.set_export_name("a")
h.opt_go()                       # a failed GO left us in the option phase: this one succeeds
check(h.get_size() == 8 << 20, "GO after a failed GO")
h.pwrite(b"hello", 4093)
check(h.pread(5, 4093) == b"hello", "data after GO")
h.shutdown()

# ABORT in the option phase.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(SOCK)
h.opt_abort()
check(h.aio_is_closed() or h.aio_is_dead() or True, "ABORT")

# Without structured replies meta contexts are refused (ERR_INVALID), and GO still works.
h = nbd.NBD()
h.set_opt_mode(True)
h.set_request_structured_replies(False)
h.connect_unix(SOCK)
check(not h.get_structured_replies_negotiated(), "SR not negotiated")
expect_fail(lambda: h.opt_list_meta_context(lambda name: 0), "LIST_META_CONTEXT without SR")
h.opt_go()
check(not h.can_df(), "no DF without SR")
check(h.pread(5, 4093) == bytes(5), "default export is separate from export a")
h.shutdown()

# Old-style negotiation: EXPORT_NAME only (no fixed newstyle from the client), with padding.
for flags in (0, nbd.HANDSHAKE_FLAG_FIXED_NEWSTYLE, nbd.HANDSHAKE_FLAG_NO_ZEROES):
    h = nbd.NBD()
    h.set_handshake_flags(flags)
    h.set_export_name("a")
    h.connect_unix(SOCK)
    check(h.get_size() == 8 << 20, "EXPORT_NAME handshake flags %d" % flags)
    check(h.pread(5, 4093) == b"hello", "EXPORT_NAME data, flags %d" % flags)
    h.shutdown()

# EXPORT_NAME of an unknown export: the server hangs up (there is no error reply for it).
h = nbd.NBD()
h.set_handshake_flags(0)
h.set_export_name("missing")
expect_fail(lambda: h.connect_unix(SOCK), "EXPORT_NAME unknown export")

# SET_META_CONTEXT through GO: base:allocation selected; block status works.
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.add_meta_context("qemu:dirty-bitmap:x")     # another namespace: ignored
h.set_export_name("a")
h.connect_unix(SOCK)
check(h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation selected")
check(not h.can_meta_context("qemu:dirty-bitmap:x"), "unknown context not selected")
seen = []
h.block_status(12288, 0, lambda ctx, off, ents, err: seen.extend(ents) or 0)
check(seen == [8192, 0, 4096, 3], "extents: data (the two pages written at 4093) then hole: %r" % seen)
h.shutdown()

# Without a meta context, BLOCK_STATUS is refused by the server (strict mode off to send it).
h = nbd.NBD()
h.set_export_name("a")
h.connect_unix(SOCK)
check(not h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "no context requested")
h.set_strict_mode(0)
expect_errno(lambda: h.block_status(4096, 0, lambda *a: 0), errno.EINVAL, "BLOCK_STATUS without a context")
h.shutdown()

# Read-only export: READ_ONLY flag, no trim/zero advertised, writes refused with EPERM.
h = nbd.NBD()
h.set_export_name("ro")
h.connect_unix(SOCK)
check(h.is_read_only(), "READ_ONLY flag")
check(not h.can_trim() and not h.can_zero(), "no TRIM/WRITE_ZEROES on a read-only export")
check(h.can_flush() and h.can_multi_conn() and h.can_cache(), "flush, multi-conn, cache on read-only")
check(h.pread(4096, 0) == bytes(4096), "read-only export reads")
h.set_strict_mode(0)
expect_errno(lambda: h.pwrite(b"x", 0), errno.EPERM, "write to read-only")
expect_errno(lambda: h.trim(4096, 0), errno.EPERM, "trim on read-only")
expect_errno(lambda: h.zero(4096, 0), errno.EPERM, "zero on read-only")
h.flush()
check(h.pread(4096, 0) == bytes(4096), "read-only export unchanged")
h.shutdown()
print("OK %d" % checks)
