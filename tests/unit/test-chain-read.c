/* SPDX-License-Identifier: BSD-3-Clause */
/* chain/: the read path's edges, with io_uring and with pread.
 *
 * - A read made of thousands of pieces (more than the ring's 64 entries), alternating between
 *   layers, returns the same bytes on both paths.
 * - A file truncated under an open chain: end of file inside data the index says exists is
 *   -EIO with a message naming the file, never zeroes (and every SQE was reaped: the buffer is
 *   not written after the call returns, checked by reading it again later).
 * - Many threads reading and writing one chain at once (multi-conn) on disjoint ranges.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "common/error.h"
#include "tests/unit/util-chain.h"
#include "tests/unit/util-overlay.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

TestSuite(chain_read, .init = otu_dir_init, .fini = otu_dir_fini, .timeout = 60);

/* raw (all data) <- even.cow (every even 512-byte sub-cluster) <- odd.cow (every 4th odd one)
 * <- top.cow (writable, a few): with 16 KiB clusters a 2 MiB read is ~4000 pieces. */
static void
build_striped(struct ctu_model *m, const char *top_name)
{
  char *raw = otu_join(otu_dir, "t.raw"), *even = otu_join(otu_dir, "even.cow");
  char *odd = otu_join(otu_dir, "odd.cow"), *top = otu_join(otu_dir, top_name);
  uint8_t ue[OVL_UUID_LEN], uo[OVL_UUID_LEN], buf[512];
  uint64_t rng = otu_seed("chain_read/striped");
  struct cc_chain *c;

  ctu_model_init(m, 2 * MiB, 512);
  for (uint64_t b = 0; b < m->size; b += 4096) {
    uint8_t blk[4096];

    for (int i = 0; i < 4096; i++)
      blk[i] = (uint8_t)otu_rand(&rng);
    ctu_model_write(m, blk, 4096, b);
  }
  ctu_write_raw(raw, m);
  ctu_layer(even, m->size, 16384, OVL_PARENT_RAW, "t.raw", NULL, m->size, ue);
  c = ctu_open(even, CC_RDWR | CC_IO_SYNC);
  for (uint64_t off = 0; off < m->size; off += 1024) {
    memset(buf, (int)(off >> 10) | 1, sizeof buf);
    cr_assert_eq(cc_chain_pwrite(c, buf, 512, off, 0), 0, "%s", cc_error_get());
    ctu_model_write(m, buf, 512, off);
  }
  cc_chain_close(c);
  ctu_layer(odd, m->size, 16384, OVL_PARENT_LAYER, "even.cow", ue, m->size, uo);
  c = ctu_open(odd, CC_RDWR | CC_IO_SYNC);
  for (uint64_t off = 512; off < m->size; off += 2048) {
    memset(buf, 0x81, sizeof buf);
    cr_assert_eq(cc_chain_pwrite(c, buf, 512, off, 0), 0, "%s", cc_error_get());
    ctu_model_write(m, buf, 512, off);
  }
  cr_assert_eq(cc_chain_zero(c, 3 * 512, 1536, 0), 0);
  ctu_model_zero(m, 3 * 512, 1536);
  cc_chain_close(c);
  ctu_layer(top, m->size, 16384, OVL_PARENT_LAYER, "odd.cow", uo, m->size, NULL);
  free(raw);
  free(even);
  free(odd);
  free(top);
}

Test(chain_read, thousands_of_pieces)
{
  struct ctu_model m;
  char *top = otu_join(otu_dir, "top.cow");

  build_striped(&m, "top.cow");
  for (int pass = 0; pass < 2; pass++) {
    struct cc_chain *c = ctu_open(top, CC_RDWR | (pass ? CC_IO_SYNC : 0));
    uint8_t buf[3000];

    cr_assert_eq(cc_chain_depth(c), 4);
    ctu_check_all(c, &m, 2 * MiB);              /* one read, ~4000 pieces */
    ctu_check_all(c, &m, 64 * 512 + 100);       /* pieces about the ring size */
    ctu_check_read(c, &m, 333, 2 * MiB - 1000); /* unaligned ends */
    memset(buf, 0x42, sizeof buf);
    cr_assert_eq(cc_chain_pwrite(c, buf, sizeof buf, 100000 + (uint64_t)pass, 0), 0);
    ctu_model_write(&m, buf, sizeof buf, 100000 + (uint64_t)pass);
    ctu_check_all(c, &m, 2 * MiB);
    cc_chain_close(c);
  }
  ctu_model_free(&m);
  free(top);
}

/* Truncate `victim` while a chain on it is open: reads of the lost data fail with EIO. */
static void
truncated_under(unsigned io)
{
  struct ctu_model m;
  char *top = otu_join(otu_dir, "top.cow"), *victim = otu_join(otu_dir, "even.cow");
  struct cc_chain *c;
  uint8_t *buf = malloc(2 * MiB);
  int r;

  build_striped(&m, "top.cow");
  c = ctu_open(top, CC_RDWR | io);
  ctu_check_all(c, &m, 2 * MiB);
  cr_assert_eq(truncate(victim, 64 * KiB), 0);
  memset(buf, 0x99, 2 * MiB);
  r = cc_chain_pread(c, buf, 2 * MiB, 0);
  cr_assert_eq(r, -EIO, "got %d: %s", r, cc_error_get());
  cr_assert_not_null(strstr(cc_error_get(), "even.cow"), "%s", cc_error_get());
  cr_assert_not_null(strstr(cc_error_get(), "end of file"), "%s", cc_error_get());
  /* Nothing may land in the buffer after the call returned. */
  {
    uint8_t *copy = malloc(2 * MiB);

    memcpy(copy, buf, 2 * MiB);
    usleep(20000);
    cr_assert_eq(memcmp(copy, buf, 2 * MiB), 0, "the buffer changed after pread returned");
    free(copy);
  }
  /* The chain still works where the data is intact. */
  ctu_check_read(c, &m, 1536, 1536);
  cc_chain_close(c);
  free(buf);
  ctu_model_free(&m);
  free(top);
  free(victim);
}

Test(chain_read, truncated_layer_uring)
{
  truncated_under(0);
}

Test(chain_read, truncated_layer_sync)
{
  truncated_under(CC_IO_SYNC);
}

Test(chain_read, truncated_raw_template)
{
  char *raw = otu_join(otu_dir, "t.raw");
  struct ctu_model m;
  uint8_t *buf = malloc(MiB);

  ctu_model_init(&m, MiB, 4096);
  memset(buf, 0x3c, MiB);
  ctu_model_write(&m, buf, MiB, 0);
  ctu_write_raw(raw, &m);
  for (int sync = 0; sync < 2; sync++) {
    struct cc_chain *c = ctu_open(raw, CC_RAW | (sync ? CC_IO_SYNC : 0));

    ctu_check_all(c, &m, 256 * KiB);
    cr_assert_eq(truncate(raw, MiB / 2), 0);
    cr_assert_eq(cc_chain_pread(c, buf, MiB, 0), -EIO, "%s", cc_error_get());
    cr_assert_not_null(strstr(cc_error_get(), "t.raw"), "%s", cc_error_get());
    cc_chain_close(c);
    cr_assert_eq(truncate(raw, MiB), 0);
    {
      int fd = open(raw, O_WRONLY);
      memset(buf, 0x3c, MiB);
      cr_assert_eq(pwrite(fd, buf, MiB, 0), MiB);
      close(fd);
    }
  }
  ctu_model_free(&m);
  free(buf);
  free(raw);
}

struct conn {
  struct cc_chain *c;
  struct ctu_model *m;
  uint64_t base, span; /* this thread's own range */
  uint64_t rng;
  int failed;
  char msg[256];
};

/* One "connection": random writes, zeroes and reads in its own range. */
static void *
conn_thread(void *arg)
{
  struct conn *t = arg;
  uint8_t *buf = malloc(64 * KiB), *rd = malloc(64 * KiB);

  for (int k = 0; k < 200 && !t->failed; k++) {
    uint64_t len = 1 + otu_rand_below(&t->rng, 64 * KiB);
    uint64_t off = t->base + otu_rand_below(&t->rng, t->span - len);
    unsigned op = (unsigned)otu_rand_below(&t->rng, 4);
    int r;

    if (op == 0) {
      for (uint64_t i = 0; i < len; i++)
        buf[i] = (uint8_t)otu_rand(&t->rng);
      r = cc_chain_pwrite(t->c, buf, len, off, 0);
      if (r == 0)
        memcpy(t->m->data + off, buf, len);
    } else if (op == 1) {
      r = cc_chain_zero(t->c, len, off, CC_MAY_TRIM);
      if (r == 0)
        memset(t->m->data + off, 0, len);
    } else {
      r = cc_chain_pread(t->c, rd, len, off);
      if (r == 0 && memcmp(rd, t->m->data + off, len) != 0) {
        snprintf(t->msg, sizeof t->msg, "read %lu+%lu differs", (unsigned long)off,
                 (unsigned long)len);
        t->failed = 1;
      }
    }
    if (r != 0) {
      snprintf(t->msg, sizeof t->msg, "op %u at %lu+%lu: %s", op, (unsigned long)off,
               (unsigned long)len, cc_error_get());
      t->failed = 1;
    }
  }
  free(buf);
  free(rd);
  return NULL;
}

Test(chain_read, concurrent_connections)
{
  struct ctu_model m;
  char *top = otu_join(otu_dir, "top.cow");
  struct cc_chain *c;
  struct conn t[4];
  pthread_t th[4];
  uint64_t seed = otu_seed("chain_read/concurrent_connections");

  build_striped(&m, "top.cow");
  c = ctu_open(top, CC_RDWR);
  for (int i = 0; i < 4; i++) {
    t[i] = (struct conn){.c = c,
                         .m = &m,
                         .base = (uint64_t)i * 512 * KiB,
                         .span = 512 * KiB,
                         .rng = seed + (uint64_t)i};
    cr_assert_eq(pthread_create(&th[i], NULL, conn_thread, &t[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    cr_assert_eq(t[i].failed, 0, "thread %d: %s", i, t[i].msg);
  }
  ctu_check_all(c, &m, 256 * KiB);
  cr_assert_eq(cc_chain_flush(c), 0);
  cc_chain_close(c);
  c = ctu_open(top, CC_IO_SYNC);
  ctu_check_all(c, &m, 2 * MiB);
  cc_chain_close(c);
  ctu_model_free(&m);
  free(top);
}

static int log_calls;
static char log_last[256];

static void
log_hook(const char *msg)
{
  log_calls++;
  snprintf(log_last, sizeof log_last, "%s", msg);
}

/* cc_set_log is accepted and NULL restores the default; nothing logs on a healthy machine. */
Test(chain_read, log_hook)
{
  struct ctu_model m;
  char *top = otu_join(otu_dir, "top.cow");
  struct cc_chain *c;

  cc_set_log(log_hook);
  build_striped(&m, "top.cow");
  c = ctu_open(top, CC_RDWR);
  ctu_check_all(c, &m, MiB);
  cc_chain_close(c);
  /* the only line a read may log is the io_uring fallback */
  cr_assert(log_calls == 0 || strstr(log_last, "io_uring"), "unexpected log: %s", log_last);
  cc_set_log(NULL);
  ctu_model_free(&m);
  free(top);
}

/* A ring made by one task cannot be used by a forked child (single-issuer rings refuse with
 * EEXIST; nbdkit forks after loading plugins).  The child's read must still succeed: the ring
 * is dropped, the request finishes with pread, and the next read gets a fresh ring. */
Test(chain_read, forked_child_reads)
{
  struct ctu_model m;
  char *top = otu_join(otu_dir, "top.cow");
  struct cc_chain *c;
  pid_t pid;
  int status;

  build_striped(&m, "top.cow");
  c = ctu_open(top, 0);
  ctu_check_all(c, &m, MiB); /* this thread's ring exists now */
  fflush(NULL);
  pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    uint8_t *buf = malloc(2 * MiB);
    int bad = 0;

    for (int k = 0; k < 3; k++) {
      memset(buf, 0xAB, 2 * MiB);
      if (cc_chain_pread(c, buf, 2 * MiB, 0) != 0) {
        fprintf(stderr, "child read %d: %s\n", k, cc_error_get());
        bad = 1;
      } else if (memcmp(buf, m.data, 2 * MiB) != 0) {
        fprintf(stderr, "child read %d: wrong data\n", k);
        bad = 1;
      }
    }
    _exit(bad);
  }
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the forked child's reads failed");
  ctu_check_all(c, &m, MiB); /* the parent's ring is unharmed */
  cc_chain_close(c);
  ctu_model_free(&m);
  free(top);
}

/* io_uring disabled (as by the io_uring_disabled sysctl or a seccomp policy): the first read
 * says so once through the log hook and every read works through pread.  The child process
 * refuses io_uring_setup with EPERM through a seccomp filter. */
Test(chain_read, io_uring_disabled_falls_back)
{
  struct ctu_model m;
  char *top = otu_join(otu_dir, "top.cow");
  pid_t pid;
  int status;

  build_striped(&m, "top.cow");
  fflush(NULL);
  pid = fork();
  cr_assert_geq(pid, 0);
  if (pid == 0) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
    struct cc_chain *c = NULL;
    uint8_t *buf = malloc(2 * MiB);
    int bad = 0;

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
      _exit(77);
    cc_set_log(log_hook);
    if (cc_chain_open(top, CC_RDWR, &c) != 0)
      _exit(2);
    for (int k = 0; k < 3; k++) {
      memset(buf, 0xAB, 2 * MiB);
      if (cc_chain_pread(c, buf, 2 * MiB, 0) != 0 || memcmp(buf, m.data, 2 * MiB) != 0)
        bad = 3;
    }
    if (log_calls != 1 || !strstr(log_last, "io_uring unavailable")) {
      fprintf(stderr, "log: %d calls, last \"%s\"\n", log_calls, log_last);
      bad = 4;
    }
    if (cc_chain_uses_uring(c))
      bad = 5;
    cc_chain_close(c);
    _exit(bad);
  }
  ctu_model_free(&m);
  free(top);
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77)
    cr_skip_test("cannot install a seccomp filter here");
  cr_assert_eq(WEXITSTATUS(status), 0, "child failed with %d", WEXITSTATUS(status));
}
