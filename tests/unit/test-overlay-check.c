/* SPDX-License-Identifier: BSD-3-Clause */
/* overlay/: ovl_check, the offline validator and repairer (FORMAT.md 4.2 dirty bit, 6 frontier).
 * Malformed files are test-overlay-malformed.c's; this is about leaked space and repair.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "overlay/overlay.h"
#include "tests/unit/util-overlay.h"

TestSuite(overlay_check, .timeout = 60);

#define K 1024u
#define M (1024u * 1024u)

/* A closed layer with data in clusters 0, 1 and 40. */
static char *
mk_layer(const char *dir, uint8_t **content, uint64_t vsize)
{
  char *path = otu_join(dir, "l.cow");
  uint8_t *c = malloc(vsize);
  memset(c, 0, vsize);
  otu_create(path, vsize, 0);
  struct ovl_layer *l = otu_open(path, OVL_RDWR);
  otu_pattern(5, c, 200 * K, 10 * K);
  cr_assert_eq(ovl_pwrite(l, c, 200 * K, 10 * K, 0, NULL, NULL), 0);
  memmove(c + 10 * K, c, 200 * K);
  memset(c, 0, 10 * K);
  otu_pattern(6, c + 40 * 128 * K, 4 * K, 40 * 128 * K);
  cr_assert_eq(ovl_pwrite(l, c + 40 * 128 * K, 4 * K, 40 * 128 * K, 0, NULL, NULL), 0);
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  *content = c;
  return path;
}

static void
expect_content(const char *path, const uint8_t *c, uint64_t vsize)
{
  struct ovl_layer *l = otu_open(path, OVL_RDONLY);
  uint8_t *buf = malloc(vsize);
  cr_assert_eq(ovl_pread(l, buf, vsize, 0, NULL, NULL), 0, "%s", cc_error_get());
  long d = otu_first_diff(buf, c, vsize);
  cr_assert_eq(d, -1, "content differs at byte %ld", d);
  free(buf);
  ovl_close(l);
}

Test(overlay_check, clean_layer)
{
  char *dir = otu_tmpdir();
  uint8_t *c;
  char *path = mk_layer(dir, &c, 8 * M);
  struct ovl_check_result res;
  memset(&res, 0xFF, sizeof res);
  cr_assert_eq(ovl_check(path, 0, &res), 0, "%s", cc_error_get());
  cr_assert_eq(res.dirty, 0);
  cr_assert_eq(res.corrupt, 0);
  cr_assert_eq(res.leaked_bytes, 0u, "a cleanly closed layer has %" PRIu64 " leaked bytes",
               res.leaked_bytes);
  cr_assert_eq(res.repaired, 0);
  /* repair of a clean layer changes nothing */
  size_t n0, n1;
  uint8_t *before = otu_slurp(path, &n0);
  cr_assert_eq(ovl_check(path, 1, &res), 0, "%s", cc_error_get());
  uint8_t *after = otu_slurp(path, &n1);
  cr_assert(n0 == n1 && memcmp(before, after, n0) == 0, "repair of a clean layer changed it");
  free(before);
  free(after);
  free(c);
  free(path);
  otu_rmtree(dir);
}

/* What a crash leaves: dirty set, bytes past the frontier.  check reports, repair reclaims. */
Test(overlay_check, dirty_with_leak)
{
  char *dir = otu_tmpdir();
  uint8_t *c;
  const uint64_t vsize = 8 * M;
  char *path = mk_layer(dir, &c, vsize);

  struct ovl_layer *l = otu_open(path, OVL_RDONLY);
  struct ovl_info in;
  ovl_get_info(l, &in);
  ovl_close(l);
  uint64_t frontier = in.frontier;
  cr_assert_geq(frontier, 12288u + 4096u + 3 * 128 * K, "frontier %" PRIu64, frontier);

  otu_patch_header64(path, OTU_H_INCOMPAT, 1);
  uint8_t junk[20000];
  otu_pattern(9, junk, sizeof junk, 0);
  uint64_t end = otu_file_size(path) > frontier ? otu_file_size(path) : frontier;
  otu_write_at(path, junk, sizeof junk, end + 3000);
  uint64_t fsize = otu_file_size(path);

  struct ovl_check_result res;
  memset(&res, 0, sizeof res);
  cr_assert_eq(ovl_check(path, 0, &res), 0, "%s", cc_error_get());
  cr_assert_eq(res.dirty, 1);
  cr_assert_eq(res.leaked_bytes, fsize - frontier, "leaked %" PRIu64 ", expected %" PRIu64,
               res.leaked_bytes, fsize - frontier);
  cr_assert_eq(res.repaired, 0);
  cr_assert_eq(otu_file_size(path), fsize, "check without repair changed the file");

  memset(&res, 0, sizeof res);
  cr_assert_eq(ovl_check(path, 1, &res), 0, "%s", cc_error_get());
  cr_assert_eq(res.repaired, 1);
  cr_assert_eq(otu_file_size(path), frontier, "repair did not truncate to the frontier");
  int cur = otu_current_slot(path);
  uint8_t s[OTU_SLOT_SIZE];
  otu_read_slot(path, cur, s);
  cr_assert_eq(otu_le64(s + OTU_H_INCOMPAT) & 1, 0u, "repair did not clear dirty");
  expect_content(path, c, vsize);

  memset(&res, 0xFF, sizeof res);
  cr_assert_eq(ovl_check(path, 0, &res), 0);
  cr_assert_eq(res.dirty, 0);
  cr_assert_eq(res.leaked_bytes, 0u);
  free(c);
  free(path);
  otu_rmtree(dir);
}

/* A dirty file opened for writing keeps working and closes clean. */
Test(overlay_check, dirty_reopened_for_writing)
{
  char *dir = otu_tmpdir();
  uint8_t *c;
  const uint64_t vsize = 8 * M;
  char *path = mk_layer(dir, &c, vsize);
  otu_patch_header64(path, OTU_H_INCOMPAT, 1);
  uint8_t junk[70000];
  otu_pattern(10, junk, sizeof junk, 0);
  otu_write_at(path, junk, sizeof junk, otu_file_size(path));

  struct ovl_layer *l = otu_open(path, OVL_RDWR);
  otu_pattern(11, c + 6 * M, 64 * K, 6 * M);
  cr_assert_eq(ovl_pwrite(l, c + 6 * M, 64 * K, 6 * M, 0, NULL, NULL), 0);
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  expect_content(path, c, vsize);
  struct ovl_check_result res;
  memset(&res, 0xFF, sizeof res);
  cr_assert_eq(ovl_check(path, 0, &res), 0);
  cr_assert_eq(res.dirty, 0, "dirty after a clean close");
  cr_assert_eq(res.leaked_bytes, 0u);
  free(c);
  free(path);
  otu_rmtree(dir);
}

static uint64_t
disk_bytes(const char *path)
{
  struct stat st;
  cr_assert_eq(stat(path, &st), 0, "stat %s", path);
  return (uint64_t)st.st_blocks * 512;
}

/* First writes preallocate space past the end of the file (write.c, FORMAT.md section 6):
 * the file's size does not change, a clean close gives the space back, and so does repair
 * after a writer that never closed. */
Test(overlay_check, preallocation_given_back)
{
  char *dir = otu_tmpdir();
  char *probe = otu_join(dir, "probe");
  int pfd = open(probe, O_CREAT | O_RDWR, 0644);
  cr_assert_geq(pfd, 0);
  int refused = fallocate(pfd, FALLOC_FL_KEEP_SIZE, 0, 4096) != 0 ? errno : 0;
  close(pfd);
  unlink(probe);
  if (refused)
    cr_skip_test("machine limit: the file system of %s refuses fallocate (%s)", dir,
                 strerror(refused));

  const uint64_t vsize = 8 * M;
  char *path = otu_join(dir, "l.cow");
  uint8_t *c = calloc(1, vsize);
  otu_create(path, vsize, 0);
  otu_pattern(21, c + 3 * M, 4 * K, 3 * M);

  struct ovl_layer *l = otu_open(path, OVL_RDWR);
  cr_assert_eq(ovl_pwrite(l, c + 3 * M, 4 * K, 3 * M, 0, NULL, NULL), 0, "%s", cc_error_get());
  uint64_t size = otu_file_size(path);
  cr_assert_geq(disk_bytes(path), size + 3 * M, "nothing preallocated: %" PRIu64 " bytes on disk",
                disk_bytes(path));
  cr_assert_eq(ovl_close(l), 0, "%s", cc_error_get());
  cr_assert_eq(otu_file_size(path), size, "the clean close changed the file's size");
  cr_assert_lt(disk_bytes(path), 1 * M, "the clean close kept %" PRIu64 " bytes on disk",
               disk_bytes(path));
  expect_content(path, c, vsize);

  /* A writer that stops without closing: its preallocation stays until repair. */
  pid_t pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    struct ovl_layer *w;
    if (ovl_open(path, OVL_RDWR, &w) < 0 ||
        ovl_pwrite(w, c + 3 * M, 4 * K, 5 * M, 0, NULL, NULL) < 0 || ovl_flush(w) < 0)
      _exit(1);
    _exit(0);
  }
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the writer failed");
  memcpy(c + 5 * M, c + 3 * M, 4 * K);
  cr_assert_geq(disk_bytes(path), otu_file_size(path) + 3 * M, "nothing preallocated");
  struct ovl_check_result res;
  memset(&res, 0, sizeof res);
  cr_assert_eq(ovl_check(path, 1, &res), 0, "%s", cc_error_get());
  cr_assert_eq(res.dirty, 1);
  cr_assert_eq(res.repaired, 1);
  cr_assert_lt(disk_bytes(path), 1 * M, "repair kept %" PRIu64 " bytes on disk", disk_bytes(path));
  expect_content(path, c, vsize);
  free(c);
  free(probe);
  free(path);
  otu_rmtree(dir);
}

Test(overlay_check, corrupt_bit_reported)
{
  char *dir = otu_tmpdir();
  uint8_t *c;
  char *path = mk_layer(dir, &c, 8 * M);
  otu_patch_header64(path, OTU_H_INCOMPAT, 2);
  struct ovl_check_result res;
  memset(&res, 0, sizeof res);
  int r = ovl_check(path, 0, &res);
  if (r == 0) /* valid but flagged, or refused: both are honest */
    cr_assert_eq(res.corrupt, 1, "the corrupt bit was not reported");
  /* repair must not "fix" a file marked corrupt by clearing the bit */
  (void)ovl_check(path, 1, &res);
  int cur = otu_current_slot(path);
  uint8_t s[OTU_SLOT_SIZE];
  otu_read_slot(path, cur, s);
  cr_assert_eq(otu_le64(s + OTU_H_INCOMPAT) & 2, 2u, "repair cleared the corrupt bit");
  free(c);
  free(path);
  otu_rmtree(dir);
}

Test(overlay_check, missing_file)
{
  char *dir = otu_tmpdir();
  char *path = otu_join(dir, "nope.cow");
  struct ovl_check_result res;
  cc_error_clear();
  cr_assert_eq(ovl_check(path, 0, &res), -ENOENT);
  cr_assert(strstr(cc_error_get(), path) != NULL, "message: %s", cc_error_get());
  struct ovl_layer *l = NULL;
  cc_error_clear();
  cr_assert_eq(ovl_open(path, OVL_RDONLY, &l), -ENOENT);
  cr_assert(strstr(cc_error_get(), path) != NULL, "message: %s", cc_error_get());
  free(path);
  otu_rmtree(dir);
}
