/* SPDX-License-Identifier: BSD-3-Clause */
/* pool/hash.c: the content hash of template images (POOL.md 3.1.1).
 *
 * - pool_xxh64 equals `xxhsum -H1` (the reference implementation, Debian package xxhash) on
 *   random inputs of every length class (0-31, 32-byte stripes, tails of 8, 4 and 1 bytes).
 * - The chunked hash depends on the bytes only: any split of the feeding, holes fed as zeroes
 *   or as written zero bytes, and a sparse file hashed by pool_hash_fd all give one value; one
 *   changed byte or one more zero byte at the end changes it.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "pool/internal.h"
#include "tests/unit/util-overlay.h"

TestSuite(pool_hash, .init = otu_dir_init, .fini = otu_dir_fini, .timeout = 60);

static uint64_t
xxhsum(const void *buf, size_t len)
{
  char *path = otu_join(otu_dir, "x.bin"), cmd[4200], out[64] = "";
  unsigned long long v = 0;
  FILE *f = fopen(path, "wb"), *pf;

  cr_assert(f);
  cr_assert_eq(fwrite(buf, 1, len, f), len);
  fclose(f);
  snprintf(cmd, sizeof cmd, "xxhsum -H1 '%s'", path);
  pf = popen(cmd, "r");
  cr_assert(pf, "xxhsum (scripts/setup installs package xxhash)");
  cr_assert(fgets(out, sizeof out, pf), "no output from xxhsum");
  cr_assert_eq(pclose(pf), 0, "xxhsum failed (scripts/setup installs package xxhash)");
  cr_assert_eq(sscanf(out, "%llx", &v), 1, "%s", out);
  free(path);
  return v;
}

Test(pool_hash, xxh64_matches_xxhsum)
{
  static const size_t lens[] = {0, 1, 3, 4, 7, 8, 12, 31, 32, 33, 63, 64, 100, 1000, 65536, 200001};
  uint64_t rng = otu_seed("pool_hash");
  uint8_t *buf = malloc(200001);

  cr_assert(buf);
  for (size_t i = 0; i < 200001; i++)
    buf[i] = (uint8_t)otu_rand(&rng);
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
    cr_assert_eq(pool_xxh64(buf, lens[i], 0), xxhsum(buf, lens[i]), "length %zu", lens[i]);
  free(buf);
}

static void
whole(const uint8_t *buf, size_t len, char out[POOL_HASH_STR])
{
  struct pool_hash h;

  cr_assert_eq(pool_hash_init(&h), 0);
  pool_hash_feed(&h, buf, len);
  pool_hash_final(&h, out);
  pool_hash_free(&h);
}

Test(pool_hash, chunked_hash_depends_on_bytes_only)
{
  const size_t len = 5 * POOL_HASH_CHUNK + 4321;
  uint64_t rng = otu_seed("pool_hash/chunks");
  uint8_t *buf = calloc(1, len + 1);
  char ref[POOL_HASH_STR], got[POOL_HASH_STR];
  char *path = otu_join(otu_dir, "sparse.raw");
  int fd;

  cr_assert(buf);
  /* Data with zero runs: [0, 10000) data, zeroes up to 150000, data to 200000, zeroes after. */
  for (size_t i = 0; i < 10000; i++)
    buf[i] = (uint8_t)otu_rand(&rng);
  for (size_t i = 150000; i < 200000; i++)
    buf[i] = (uint8_t)otu_rand(&rng);
  whole(buf, len, ref);
  cr_assert_eq(strncmp(ref, "xxh64-64k:", 10), 0);

  for (int round = 0; round < 20; round++) {
    struct pool_hash h;
    size_t off = 0;

    cr_assert_eq(pool_hash_init(&h), 0);
    while (off < len) {
      size_t n = 1 + (size_t)(otu_rand(&rng) % (2 * POOL_HASH_CHUNK));
      int zero = 1;

      if (n > len - off)
        n = len - off;
      for (size_t i = off; i < off + n; i++)
        zero &= buf[i] == 0;
      if (zero && (otu_rand(&rng) & 1))
        pool_hash_zero(&h, n);
      else
        pool_hash_feed(&h, buf + off, n);
      off += n;
    }
    pool_hash_final(&h, got);
    pool_hash_free(&h);
    cr_assert_str_eq(got, ref, "round %d", round);
  }

  /* A sparse file: only the data written, holes elsewhere. */
  fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  cr_assert(fd >= 0);
  cr_assert_eq(ftruncate(fd, (off_t)len), 0);
  cr_assert_eq(pwrite(fd, buf, 10000, 0), 10000);
  cr_assert_eq(pwrite(fd, buf + 150000, 50000, 150000), 50000);
  cr_assert_eq(pool_hash_fd(fd, path, got, NULL, NULL), 0);
  cr_assert_str_eq(got, ref);
  close(fd);

  buf[170000] ^= 1;
  whole(buf, len, got);
  cr_assert_str_neq(got, ref, "one changed byte");
  buf[170000] ^= 1;
  whole(buf, len + 1, got);
  cr_assert_str_neq(got, ref, "one more zero byte");
  free(path);
  free(buf);
}
