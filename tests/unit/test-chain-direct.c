/* SPDX-License-Identifier: BSD-3-Clause */
/* chain/: cache=none (CC_DIRECT), reads of the frozen part with O_DIRECT.
 *
 * - Every read, at any offset and length and into buffers at any address (so almost all go
 *   through the bounce buffer), returns the same bytes as a buffered chain, in the three I/O
 *   modes; a raw template whose size is not a multiple of the block size ends inside a block
 *   (the widened read stops at end of file, the optional tail).
 * - The reads really bypass the page cache: after the template's pages are dropped, reading
 *   all of it through a CC_DIRECT chain leaves none of them resident (mincore), while a
 *   buffered chain brings them back.
 * /tmp must support O_DIRECT (ext4, xfs, btrfs do; tmpfs does not): checked first, and a file
 * system that refuses it fails the test with that reason.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "tests/unit/util-chain.h"
#include "tests/unit/util-overlay.h"

#define SIZE (2u * 1024u * 1024u)
#define RAW_SIZE (SIZE - 1536u) /* ends inside a 4 KiB block */

static char *live_dir;

static void
cleanup(void)
{
  cc_set_index_cache(0);
  otu_rmtree(live_dir);
  live_dir = NULL;
}

TestSuite(chain_direct, .fini = cleanup, .timeout = 120);

/* How many pages of `path` are in the page cache. */
static size_t
resident_pages(const char *path)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  unsigned char *vec;
  size_t pages, n = 0;
  void *m;

  cr_assert(fd >= 0);
  cr_assert_eq(fstat(fd, &st), 0);
  pages = ((size_t)st.st_size + 4095) / 4096;
  m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
  cr_assert_neq(m, MAP_FAILED);
  vec = malloc(pages);
  cr_assert_eq(mincore(m, (size_t)st.st_size, vec), 0, "mincore: %s", strerror(errno));
  for (size_t i = 0; i < pages; i++)
    n += vec[i] & 1;
  free(vec);
  munmap(m, (size_t)st.st_size);
  close(fd);
  return n;
}

static void
drop_pages(const char *path)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC);

  cr_assert(fd >= 0);
  cr_assert_eq(fdatasync(fd), 0);
  cr_assert_eq(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  close(fd);
}

Test(chain_direct, same_bytes_and_no_page_cache)
{
  uint64_t rng = otu_seed("chain_direct");
  char *dir = otu_tmpdir(), *raw, *l1, *l2, *top;
  uint8_t u1[OVL_UUID_LEN], u2[OVL_UUID_LEN];
  struct ctu_model m;
  uint8_t *big = malloc(SIZE + 8192), *want = malloc(SIZE);
  int fd;

  live_dir = dir;
  otu_io_nosync();
  raw = otu_join(dir, "t.raw");
  l1 = otu_join(dir, "l1.cow");
  l2 = otu_join(dir, "l2.cow");
  top = otu_join(dir, "top.cow");

  fd = open(dir, O_RDONLY | O_DIRECTORY);
  cr_assert(fd >= 0);
  close(fd);
  {
    char *probe = otu_join(dir, "probe");
    int p = open(probe, O_RDWR | O_CREAT | O_DIRECT, 0600);

    cr_assert(p >= 0,
              "%s: O_DIRECT not supported by this file system (%s): cache=none cannot be "
              "tested here; point TMPDIR-less /tmp at ext4/xfs",
              dir, strerror(errno));
    close(p);
    unlink(probe);
    free(probe);
  }

  /* A raw template of RAW_SIZE random bytes (not block-aligned at the end). */
  ctu_model_init(&m, SIZE, 4096);
  for (uint64_t i = 0; i < RAW_SIZE; i++)
    big[i] = (uint8_t)otu_rand(&rng);
  ctu_model_write(&m, big, RAW_SIZE, 0);
  fd = open(raw, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  cr_assert(fd >= 0);
  cr_assert_eq(pwrite(fd, big, RAW_SIZE, 0), (ssize_t)RAW_SIZE);
  close(fd);

  /* Two layers with scattered writes, unaligned ones too, and an empty writable top. */
  ctu_layer(l1, SIZE, 0, OVL_PARENT_RAW, "t.raw", NULL, RAW_SIZE, u1);
  ctu_layer(l2, SIZE, 0, OVL_PARENT_LAYER, "l1.cow", u1, SIZE, u2);
  for (int li = 0; li < 2; li++) {
    struct cc_chain *c = ctu_open(li ? l2 : l1, CC_RDWR | CC_IO_SYNC);

    for (int k = 0; k < 20; k++) {
      uint64_t len = 1 + otu_rand_below(&rng, 20000);
      uint64_t off = otu_rand_below(&rng, SIZE - len);

      for (uint64_t j = 0; j < len; j++)
        big[j] = (uint8_t)otu_rand(&rng);
      cr_assert_eq(cc_chain_pwrite(c, big, len, off, 0), 0, "%s", cc_error_get());
      ctu_model_write(&m, big, len, off);
    }
    cr_assert_eq(cc_chain_close(c), 0);
  }
  ctu_layer(top, SIZE, 0, OVL_PARENT_LAYER, "l2.cow", u2, SIZE, NULL);

  /* Bytes: every mode, random ranges into buffers at random addresses. */
  const unsigned modes[] = {CC_DIRECT | CC_IO_SYNC, CC_DIRECT | CC_IO_AUTO, CC_DIRECT};
  for (size_t mi = 0; mi < 3; mi++) {
    struct cc_chain *c = ctu_open(top, CC_RDWR | modes[mi]);

    for (int k = 0; k < 300; k++) {
      uint64_t len = 1 + otu_rand_below(&rng, k % 3 == 0 ? 300000 : 9000);
      uint64_t off = k % 10 == 0 ? SIZE - len : otu_rand_below(&rng, SIZE - len);
      size_t mis = k % 4 == 0 ? 0 : otu_rand_below(&rng, 4096);

      if (k % 5 == 0) { /* aligned: the direct path without a bounce */
        off &= ~(uint64_t)4095;
        len = (len + 4095) & ~(uint64_t)4095;
        if (off + len > SIZE)
          off = SIZE - len;
        mis = 4096 - ((uintptr_t)big % 4096);
      }
      cr_assert_eq(cc_chain_pread(c, big + mis, len, off), 0, "mode %zu: %s", mi, cc_error_get());
      cr_assert_eq(memcmp(big + mis, m.data + off, len), 0, "mode %zu: %llu+%llu differs", mi,
                   (unsigned long long)off, (unsigned long long)len);
    }
    ctu_check_all(c, &m, 65536 + 512);
    cr_assert_eq(cc_chain_close(c), 0);
  }

  /* The page cache: dropped template pages stay dropped under CC_DIRECT. */
  drop_pages(raw);
  cr_assert_lt(resident_pages(raw), 8, "the template's pages could not be dropped");
  {
    struct cc_chain *c = ctu_open(top, CC_DIRECT | CC_IO_AUTO);

    cr_assert_eq(cc_chain_pread(c, want, SIZE, 0), 0, "%s", cc_error_get());
    cr_assert_eq(memcmp(want, m.data, SIZE), 0);
    cr_assert_lt(resident_pages(raw), 8, "a CC_DIRECT read filled the page cache (%zu pages)",
                 resident_pages(raw));
    cr_assert_eq(cc_chain_close(c), 0);
    c = ctu_open(top, CC_IO_SYNC);
    cr_assert_eq(cc_chain_pread(c, want, SIZE, 0), 0);
    cr_assert_gt(resident_pages(raw), 64, "a buffered read goes through the page cache");
    cr_assert_eq(cc_chain_close(c), 0);
  }
  free(big);
  free(want);
  free(raw);
  free(l1);
  free(l2);
  free(top);
  ctu_model_free(&m);
  otu_rmtree(dir);
  live_dir = NULL;
}
