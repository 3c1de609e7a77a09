#!/usr/bin/env -S node --max-semi-space-size=1 --initial-old-space-size=64
// Thin launcher: the CLI is compiled TypeScript in dist/ (run `npm run build` after changing src/).
// --max-semi-space-size=1: a 1 MiB young generation. The server's JS heap is tiny (pages live in
// arenas and typed arrays); V8's default young generation only holds socket-chunk garbage longer.
// Measured on the process-image corpus through NBD (zstd): RSS growth 113 -> 93 MiB, write speed
// unchanged.
// --initial-old-space-size=64: V8 sizes its collection trigger from the old generation, and
// counts the ArrayBuffers outside the heap (pool arenas, socket chunks) against it. With the
// default (a trigger near the ~10 MB heap) a store writing 661 MB ran 49-60 full collections;
// with 64 it ran 1-3, and wrote 15-30% faster (lz4 322-362 -> 421-460 MB/s, zstd 183-187 ->
// 237-252 MB/s through nbdcopy) at the same peak RSS: it is a trigger, not a reservation.
// V8 reads these flags only at start, so run this file directly (./bin/zdedup.js, the npm bin
// link) or pass the flags to node yourself (the systemd units do).
//
// No debugger by signal: Node opens its inspector (127.0.0.1:9229, full control of the process)
// when it receives SIGUSR1, and Node 20 has no flag to turn that off (--disable-sigusr1 came in
// Node 22.14). A JS listener for SIGUSR1 replaces the inspector's handler, so one is installed
// here, first, before the CLI is even loaded, and never removed (removing the last listener
// would restore the default action: exit). `serve` adds a log line on top of it.
process.on('SIGUSR1', () => {});
const { main } = await import('../dist/src/frontends/cli/main.js');
main(process.argv.slice(2)).then((code) => { if (typeof code === 'number') process.exitCode = code; });
