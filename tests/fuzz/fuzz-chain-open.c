/* SPDX-License-Identifier: BSD-3-Clause */
/* libFuzzer target: opening a chain of 1 to 3 attacker-controlled layer files.
 *
 * fuzz-layer-open.c covers one file's header and map; this covers what only chain/ checks: the
 * parent links between files (a link to itself or to a child: a cycle; a missing parent; a
 * uuid or size that does not match; a raw parent; a parent bigger than its child) and the reads
 * and writes that fall through the layers.  The promise under test (docs/RELIABILITY.md section 1):
 * a malformed chain is a clear error naming the file and the fault, never a crash, never an
 * out-of-bounds access, never a leaked index or descriptor.
 *
 * Input layout (every field is clamped, so any byte string is a valid input):
 *   byte 0       flags: bit 0 open the top CC_RDWR (and write to it), bit 1 read with io_uring
 *                (default preadv: io_uring setup per input is slow), bits 2-3 number of files - 1
 *                (3 means 3 as well)
 *   then, for each file but the last, a 4-byte little-endian length and that many bytes; the
 *   last file takes the rest.  The files are named "a", "b", "c" in a private directory; the top
 *   is "a".  Seeds (tests/fuzz/corpus-chain/, written by this file built with -DMAKE_SEEDS) are
 *   real layers linking a -> b -> c, so the fuzzer starts from chains that open.
 *
 * Parent paths are bytes from the input and may be absolute: the target can be made to open any
 * readable file as a raw parent (read-only, never written: only the top "a" is ever opened for
 * writing).  A device that blocks on read would stall an input (libFuzzer's -timeout=10 then
 * reports it); none was hit in the documented run.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain/chain.h"
#include "chain/testing.h"
#include "common/error.h"
#include "overlay/overlay.h"

static char dir[64];
static const char *const names[3] = {"a", "b", "c"};

static void remove_files(void);

/* At exit: the private directory goes (libFuzzer ends a run with exit()). */
static void
remove_dir(void)
{
  remove_files();
  rmdir(dir);
}

static void
setup_dir(void)
{
  /* tmpfs when there is one: every input rewrites the files, and a writable top is flushed
   * (fdatasync) at close. */
  const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

  if (dir[0])
    return;
  snprintf(dir, sizeof dir, "%s/fuzz-chain.XXXXXX", base);
  if (mkdtemp(dir) == NULL)
    abort();
  atexit(remove_dir);
}

static void
put_file(int i, const uint8_t *p, size_t n)
{
  char path[128];
  int fd;

  snprintf(path, sizeof path, "%s/%s", dir, names[i]);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0)
    abort();
  if (n && write(fd, p, n) != (ssize_t)n)
    abort();
  close(fd);
}

static void
remove_files(void)
{
  char path[128];

  for (int i = 0; i < 3; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    unlink(path);
  }
}

static int
count_extent(void *opaque, uint64_t offset, uint64_t length, uint32_t type)
{
  uint64_t *n = opaque;

  (void)offset;
  (void)type;
  if (length == 0)
    abort();           /* an empty extent would make an NBD client loop */
  return ++*n >= 4096; /* bounded: stop early */
}

/* Descriptors open now, not counting the calling thread's io_uring ring (uring.c keeps one per
 * thread on purpose, for the thread's life). */
static int
open_fds(void)
{
  char link[64], target[64];
  int n = 0;

  for (int fd = 0; fd < 1024; fd++) {
    ssize_t len;

    if (fcntl(fd, F_GETFD) == -1)
      continue;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    len = readlink(link, target, sizeof target - 1);
    if (len > 0 && (target[len] = '\0', strstr(target, "io_uring") != NULL))
      continue;
    n++;
  }
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static uint8_t buf[256 * 1024];
  int fds_before;
  char top[128];
  struct cc_chain *c;
  unsigned flags, nfiles;
  size_t pos = 1;

  if (size < 1)
    return 0;
  setup_dir();
  fds_before = open_fds();
  remove_files();
  flags = data[0];
  nfiles = ((flags >> 2) & 3) + 1;
  if (nfiles > 3)
    nfiles = 3;
  for (unsigned i = 0; i < nfiles; i++) {
    size_t len = size - pos;

    if (i + 1 < nfiles) {
      uint32_t l32 = 0;

      if (size - pos >= 4) {
        memcpy(&l32, data + pos, 4); /* little-endian hosts only; any value is fine */
        pos += 4;
      }
      len = l32 < size - pos ? l32 : size - pos;
    }
    put_file(i, data + pos, len);
    pos += len;
  }

  snprintf(top, sizeof top, "%s/a", dir);
  cc_error_clear();
  if (cc_chain_open(top, (flags & 1 ? CC_RDWR : 0) | (flags & 2 ? 0 : CC_IO_SYNC), &c) == 0) {
    uint64_t vsize = cc_chain_size(c), n = 0;

    if (cc_chain_depth(c) < 1 || cc_chain_depth(c) > 3)
      abort(); /* three files can make a chain of at most three layers */
    /* Every byte of small disks; the first and last 256 KiB of big ones (the map of a big
     * sparse disk is walked by the extents call instead). */
    if (vsize <= 4u << 20) {
      for (uint64_t off = 0; off < vsize; off += sizeof buf) {
        uint64_t len = vsize - off < sizeof buf ? vsize - off : sizeof buf;
        (void)cc_chain_pread(c, buf, len, off);
      }
    } else {
      (void)cc_chain_pread(c, buf, sizeof buf, 0);
      (void)cc_chain_pread(c, buf, sizeof buf, vsize - sizeof buf);
    }
    (void)cc_chain_extents(c, vsize, 0, count_extent, &n);
    if (cc_chain_writable(c)) {
      /* A write that needs copy-up from below (unaligned, across sub-clusters), then zero. */
      uint64_t len = vsize < 9000 ? vsize : 9000;
      uint64_t off = vsize > 2 * len ? vsize / 3 : 0;

      memset(buf, 0x5c, len);
      if (cc_chain_pwrite(c, buf, len, off, 0) == 0 && vsize > 1) {
        uint8_t back[9000];

        if (cc_chain_pread(c, back, len, off) != 0 || memcmp(back, buf, len) != 0)
          abort(); /* a write that succeeded reads back, whatever the layers below hold */
      }
      (void)cc_chain_zero(c, len / 2, off, CC_MAY_TRIM);
      (void)cc_chain_flush(c);
    }
    cc_chain_close(c);
  } else if (cc_error_get()[0] == '\0') {
    abort(); /* every refusal must say why */
  }
  if (cc_chain_index_count() != 0)
    abort(); /* a closed (or refused) chain left its shared index behind */
  if (open_fds() != fds_before)
    abort(); /* a descriptor leaked on some path */
  cc_error_clear();
  return 0;
}

#ifdef MAKE_SEEDS
/* Seed generator: fuzz-chain-open-seeds DIR writes one input file per chain shape. */
#include <errno.h>

static size_t
slurp(const char *path, uint8_t *out, size_t max)
{
  FILE *f = fopen(path, "rb");
  size_t n;

  if (f == NULL) {
    perror(path);
    exit(1);
  }
  n = fread(out, 1, max, f);
  fclose(f);
  return n;
}

static void
layer(const char *d, const char *name, uint64_t vsize, enum ovl_parent_kind kind, const char *ppath,
      const uint8_t *puuid, uint64_t psize, int writes, uint8_t uuid[OVL_UUID_LEN])
{
  char path[4096];
  struct ovl_create_opts o = {.virtual_size = vsize, .cluster_size = 16384};
  struct ovl_layer *l;
  uint8_t b[5000];

  snprintf(path, sizeof path, "%s/%s", d, name);
  unlink(path);
  o.parent.kind = kind;
  o.parent.path = ppath;
  if (puuid)
    memcpy(o.parent.uuid, puuid, OVL_UUID_LEN);
  o.parent.size = psize;
  if (ovl_create(path, &o, uuid) < 0 || ovl_open(path, OVL_RDWR, &l) < 0) {
    fprintf(stderr, "seeds: %s\n", cc_error_get());
    exit(1);
  }
  for (int i = 0; i < writes; i++) {
    memset(b, name[0] + i, sizeof b);
    /* all in the first 16 KiB cluster: each layer costs one cluster of data in the seed */
    ovl_pwrite(l, b, 1000 + 500 * (unsigned)i, (uint64_t)(i * 3000 + 512), 0, NULL, NULL);
  }
  if (writes > 1)
    ovl_zero(l, 6000, 4096, OVL_MAY_TRIM, NULL, NULL);
  if (ovl_close(l) < 0) {
    fprintf(stderr, "seeds: %s\n", cc_error_get());
    exit(1);
  }
}

static void
emit(const char *d, const char *seed, unsigned flags, unsigned nfiles)
{
  static uint8_t out[1 << 20], f[1 << 19];
  char path[4096];
  size_t n = 0;
  FILE *o;

  out[n++] = (uint8_t)(flags | ((nfiles - 1) << 2));
  for (unsigned i = 0; i < nfiles; i++) {
    snprintf(path, sizeof path, "%s/%s", d, names[i]);
    size_t len = slurp(path, f, sizeof f);
    if (i + 1 < nfiles) {
      uint32_t l32 = (uint32_t)len;
      memcpy(out + n, &l32, 4);
      n += 4;
    }
    memcpy(out + n, f, len);
    n += len;
  }
  snprintf(path, sizeof path, "%s/%s", d, seed);
  o = fopen(path, "wb");
  if (o == NULL || fwrite(out, 1, n, o) != n || fclose(o) != 0) {
    perror(path);
    exit(1);
  }
}

int
main(int argc, char **argv)
{
  const char *d;
  uint8_t ua[OVL_UUID_LEN], ub[OVL_UUID_LEN], uc[OVL_UUID_LEN], other[OVL_UUID_LEN];
  const uint64_t S = 256 * 1024;

  if (argc != 2) {
    fprintf(stderr, "usage: fuzz-chain-open-seeds DIR\n");
    return 2;
  }
  d = argv[1];
  memset(other, 0x42, sizeof other);
  /* a -> b -> c, all valid, data in every layer; read-only, writable, io_uring */
  layer(d, "c", S, OVL_PARENT_NONE, NULL, NULL, 0, 3, uc);
  layer(d, "b", S, OVL_PARENT_LAYER, "c", uc, S, 2, ub);
  layer(d, "a", S, OVL_PARENT_LAYER, "b", ub, S, 2, ua);
  emit(d, "chain3-uring", 2, 3);
  emit(d, "chain3-rw", 1, 3);
  /* a -> b (b has no parent); the child bigger than its parent */
  layer(d, "b", S / 2, OVL_PARENT_NONE, NULL, NULL, 0, 2, ub);
  layer(d, "a", S, OVL_PARENT_LAYER, "b", ub, S / 2, 1, ua);
  emit(d, "chain2-grow", 1, 2);
  /* a -> raw b */
  layer(d, "a", S, OVL_PARENT_RAW, "b", NULL, S / 2, 1, ua);
  emit(d, "raw-parent", 0, 2);
  /* a -> a: a cycle of one */
  layer(d, "a", S, OVL_PARENT_LAYER, "a", other, S, 1, ua);
  emit(d, "self-cycle", 1, 1);
  /* a -> b -> a: b names a by a's real uuid */
  layer(d, "a", S, OVL_PARENT_LAYER, "b", other, S, 1, ua);
  layer(d, "b", S, OVL_PARENT_LAYER, "a", ua, S, 1, ub);
  layer(d, "a", S, OVL_PARENT_LAYER, "b", ub, S, 1, ua); /* new uuid for a: b's link is stale */
  emit(d, "cycle2", 0, 2);
  /* a -> b -> c -> a */
  layer(d, "c", S, OVL_PARENT_LAYER, "a", other, S, 0, uc);
  layer(d, "b", S, OVL_PARENT_LAYER, "c", uc, S, 1, ub);
  layer(d, "a", S, OVL_PARENT_LAYER, "b", ub, S, 1, ua);
  emit(d, "cycle3", 1, 3);
  /* a -> missing file; a -> b with the wrong uuid; a -> b with the wrong size */
  layer(d, "a", S, OVL_PARENT_LAYER, "missing", other, S, 1, ua);
  emit(d, "missing-parent", 0, 1);
  layer(d, "b", S, OVL_PARENT_NONE, NULL, NULL, 0, 1, ub);
  layer(d, "a", S, OVL_PARENT_LAYER, "b", other, S, 1, ua);
  emit(d, "uuid-mismatch", 0, 2);
  layer(d, "a", S, OVL_PARENT_LAYER, "b", ub, S / 2, 1, ua);
  emit(d, "size-mismatch", 0, 2);
  /* a -> ../b: a relative path leaving the directory */
  layer(d, "a", S, OVL_PARENT_LAYER, "../b", ub, S, 1, ua);
  emit(d, "dotdot-parent", 0, 2);
  for (int i = 0; i < 3; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", d, names[i]);
    if (unlink(path) < 0 && errno != ENOENT)
      perror(path);
  }
  return 0;
}
#endif
