/*
 * Workload for test/integration/kernel-swap.test.ts: fills MiB of anonymous memory with pages of
 * known content, waits (so the test can read the server's /stats while the pages sit in swap),
 * then reads every page back and compares every byte against a regenerated copy.
 *
 *   usage: kernel-swap-workload MIB SEED
 *   stdout: "written pages=N swap_kib=K"   after the write phase; then it waits for a line on stdin
 *           "verified pages=N bad=B"       after the read phase; exit 0 iff B == 0
 *
 * Page kinds, by page index i (k = mix(i) % 8, so kinds interleave and neighbours differ):
 *   k=0    zero                       (kernels >= 6.12 keep these in the swap zeromap; never sent)
 *   k=1    same-filled, non-zero word (one of 16 words: the store keeps no object for them)
 *   k=2,3  duplicate                  (one of 16 random templates: the store keeps each once)
 *   k=4,5  compressible text          (JSON-like lines carrying i: unique but compressible)
 *   k=6,7  random                     (xorshift from SEED and i: unique and incompressible)
 * Run inside a memory cgroup whose limit is well below MIB, so most pages must go to swap.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE 4096

static uint64_t seed;

static uint64_t mix(uint64_t x) { /* splitmix64 finaliser */
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

static void fill_random(uint8_t *p, uint64_t s) {
  uint64_t x = mix(s) | 1;
  for (int off = 0; off < PAGE; off += 8) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    memcpy(p + off, &x, 8);
  }
}

static void fill_page(uint8_t *p, uint64_t i) {
  switch (mix(i ^ seed) % 8) {
  case 0:
    memset(p, 0, PAGE);
    break;
  case 1: {
    uint64_t w = mix(seed + (i % 16)) | 1; /* non-zero */
    for (int off = 0; off < PAGE; off += 8) memcpy(p + off, &w, 8);
    break;
  }
  case 2: case 3:
    fill_random(p, seed * 1000003ULL + (i % 16) + 0x1000);
    break;
  case 4: case 5: {
    int off = 0;
    char line[128];
    uint64_t n = i;
    while (off < PAGE) {
      int len = snprintf(line, sizeof line, "{\"page\":%llu,\"user\":\"user%llu\",\"tags\":[\"swap\",\"dedup\"]}\n",
                         (unsigned long long)i, (unsigned long long)(n++ % 997));
      int take = len < PAGE - off ? len : PAGE - off;
      memcpy(p + off, line, (size_t)take);
      off += take;
    }
    break;
  }
  default:
    fill_random(p, seed ^ (i * 0x2545f4914f6cdd1dULL));
    break;
  }
}

static long vm_swap_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kib = -1;
  if (!f) return -1;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "VmSwap:", 7) == 0) kib = strtol(line + 7, NULL, 10);
  }
  fclose(f);
  return kib;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s MIB SEED\n", argv[0]);
    return 2;
  }
  size_t pages = (size_t)strtoull(argv[1], NULL, 10) * (1024 * 1024 / PAGE);
  seed = strtoull(argv[2], NULL, 10);
  uint8_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) { perror("mmap"); return 2; }
  /* base pages, so the swap device sees 4 KiB pages as on most servers (THP swap-out splits anyway) */
  madvise(mem, pages * PAGE, MADV_NOHUGEPAGE);

  for (size_t i = 0; i < pages; i++) fill_page(mem + i * PAGE, i);
  printf("written pages=%zu swap_kib=%ld\n", pages, vm_swap_kib());
  fflush(stdout);

  char go[16];
  if (!fgets(go, sizeof go, stdin)) { /* stdin closed: carry on */ }

  uint8_t expect[PAGE];
  size_t bad = 0;
  for (size_t i = 0; i < pages; i++) {
    fill_page(expect, i);
    if (memcmp(mem + i * PAGE, expect, PAGE) != 0) {
      if (bad < 5) {
        size_t off = 0;
        while (mem[i * PAGE + off] == expect[off]) off++;
        fprintf(stderr, "page %zu differs at byte %zu: got 0x%02x want 0x%02x\n", i, off, mem[i * PAGE + off], expect[off]);
      }
      bad++;
    }
  }
  printf("verified pages=%zu bad=%zu swap_kib=%ld\n", pages, bad, vm_swap_kib());
  fflush(stdout);
  return bad == 0 ? 0 : 1;
}
