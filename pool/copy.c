/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: sparse data copies (template import, full clone, export) and running helpers.
 *
 * Design notes
 * ------------
 * Copies move only data: a raw source is walked with SEEK_DATA/SEEK_HOLE and its data extents
 * copied with copy_file_range (which may share blocks on reflink file systems), falling back to
 * read/write; a chain is walked with cc_chain_runs and only its data runs are copied, file to
 * file.  Inside data extents, blocks of zeroes are not written by the read/write fallback
 * either, so a guest disk that was zero-filled still copies sparse.  The destination is always
 * a fresh file in tmp/ (or the user's output file), made durable by the caller, so a copy that
 * dies half-way leaves only a file that no record names.
 *
 * Into a layer (full clone, POOL.md 5.4) the data runs are gathered, FILL_WINDOW at a time, and
 * handed to ovl_copy_in_fills ordered by (source file, source offset): the new layer's clusters
 * are laid out in the order they have in the source files, so one copy_file_range (one remap on
 * XFS) moves each run that is contiguous in a source file, however scattered its clusters are
 * in the virtual disk.  Where it is safe to share the bytes between two runs of one file along
 * with them (mark_bridges: map tables of a source layer, and up to BRIDGE_MAX of the template's
 * own bytes that upper layers hide, never more than the data around them), the runs and the gap
 * are one clone on a file system that shares extents; elsewhere the gap is simply not copied.
 */
#include "pool/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define COPY_CHUNK (1u << 20)   /* bytes read per request (pread + pwrite fallback) */
#define COPY_STEP (64ull << 20) /* bytes per copy call between two progress reports */
#define PROGRESS_STEP (8ull << 20)
#define FILL_WINDOW 65536u      /* data runs gathered before a layer copy sorts and copies them */
#define BRIDGE_MAX (1ull << 20) /* the longest gap of a template shared along with its data */

static int
is_zero(const char *buf, size_t len)
{
  return len == 0 || (buf[0] == 0 && memcmp(buf, buf + 1, len - 1) == 0);
}

static void
report(cc_progress_fn progress, void *opaque, uint64_t done, uint64_t total, uint64_t *last)
{
  if (progress && done >= *last && (done - *last >= PROGRESS_STEP || done == total)) {
    *last = done;
    progress(opaque, done, total);
  }
}

/* Copy with pread + pwrite where copy_file_range cannot (another file system, a kernel without
 * it); zero blocks are skipped, the destination is a fresh sparse file. */
static int
copy_range_rw(int in, uint64_t ioff, int out, uint64_t ooff, uint64_t len, const char *src)
{
  char *buf = malloc(COPY_CHUNK);
  int r = 0;

  if (buf == NULL)
    return cc_error_set(ENOMEM, "copy: %s: out of memory", src);
  while (len > 0) {
    size_t n = len < COPY_CHUNK ? (size_t)len : COPY_CHUNK;
    ssize_t got = pread(in, buf, n, (off_t)ioff);
    if (got <= 0) {
      r = cc_error_set(got < 0 ? errno : EIO, "copy: %s: read: %s", src,
                       got < 0 ? strerror(errno) : "unexpected end of file");
      break;
    }
    if (!is_zero(buf, (size_t)got) && pwrite(out, buf, (size_t)got, (off_t)ooff) != got) {
      r = cc_error_set(errno ? errno : EIO, "copy: write: %s", strerror(errno ? errno : EIO));
      break;
    }
    ioff += (uint64_t)got;
    ooff += (uint64_t)got;
    len -= (uint64_t)got;
  }
  free(buf);
  return r;
}

/* Copy len bytes from in at ioff to out at ooff: copy_file_range (in the kernel; extents shared
 * on XFS with reflink and btrfs), or copy_range_rw where the kernel says it cannot (*use_cfr
 * is then cleared for the rest of the copy). */
static int
copy_range(int in, uint64_t ioff, int out, uint64_t ooff, uint64_t len, const char *src,
           int *use_cfr)
{
  while (len > 0 && *use_cfr) {
    loff_t io = (loff_t)ioff, oo = (loff_t)ooff;
    size_t n = len < (1ull << 30) ? (size_t)len : (size_t)1 << 30;
    ssize_t c = copy_file_range(in, &io, out, &oo, n, 0);
    if (c > 0) {
      ioff += (uint64_t)c;
      ooff += (uint64_t)c;
      len -= (uint64_t)c;
      continue;
    }
    if (c == 0)
      return cc_error_set(EIO, "copy: %s: file shrank while copying", src);
    if (errno == EINTR)
      continue;
    if (errno != EXDEV && errno != ENOSYS && errno != EINVAL && errno != EOPNOTSUPP)
      return cc_error_set(errno, "copy: %s: %s", src, strerror(errno));
    *use_cfr = 0;
  }
  return len > 0 ? copy_range_rw(in, ioff, out, ooff, len, src) : 0;
}

int
pool_copy_raw_sparse(const char *src, int dst_fd, uint64_t *size_out, cc_progress_fn progress,
                     void *opaque)
{
  return pool_copy_raw_sparse_hash(src, dst_fd, size_out, NULL, progress, opaque);
}

/* With a hash (template import, POOL.md 3.1.1): each piece is read once into memory and
 * hashed, then copied as before (copy_file_range finds it in the page cache, and still shares
 * blocks on a reflink file system); holes are hashed as zeroes without reading anything. */
static int
copy_hashed(int in, uint64_t off, int out, uint64_t len, const char *src, int *use_cfr,
            struct pool_hash *h, char *buf)
{
  while (len > 0) {
    size_t n = len < COPY_CHUNK ? (size_t)len : COPY_CHUNK;
    ssize_t got = pread(in, buf, n, (off_t)off);
    int r;

    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0)
      return cc_error_set(got < 0 ? errno : EIO, "copy: %s: read at %llu: %s", src,
                          (unsigned long long)off, got < 0 ? strerror(errno) : "end of file");
    pool_hash_feed(h, buf, (size_t)got);
    if ((r = copy_range(in, off, out, off, (uint64_t)got, src, use_cfr)) < 0)
      return r;
    off += (uint64_t)got;
    len -= (uint64_t)got;
  }
  return 0;
}

int
pool_copy_raw_sparse_hash(const char *src, int dst_fd, uint64_t *size_out, struct pool_hash *h,
                          cc_progress_fn progress, void *opaque)
{
  struct stat st;
  uint64_t size, off = 0, last = 0;
  int in, r = 0, use_cfr = 1;
  char *hbuf = NULL;

  in = open(src, O_RDONLY | O_CLOEXEC);
  if (in == -1)
    return cc_error_set(errno, "template import: %s: %s", src, strerror(errno));
  if (fstat(in, &st) == -1 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
    close(in);
    return cc_error_set(EINVAL, "template import: %s: not a regular file or block device", src);
  }
  size = (uint64_t)st.st_size;
  if (S_ISBLK(st.st_mode) && ioctl(in, BLKGETSIZE64, &size) == -1) {
    r = cc_error_set(errno, "template import: %s: device size: %s", src, strerror(errno));
    close(in);
    return r;
  }
  if (h && (hbuf = malloc(COPY_CHUNK)) == NULL) {
    r = cc_error_set(ENOMEM, "copy: %s: out of memory", src);
    goto out;
  }
  /* The size first: holes at the end must be part of the copy too. */
  if (ftruncate(dst_fd, (off_t)size) == -1) {
    r = cc_error_set(errno, "template import: %s: %s", src, strerror(errno));
    goto out;
  }
  while (off < size) {
    off_t data = lseek(in, (off_t)off, SEEK_DATA), hole;
    if (data == -1) {
      if (errno == ENXIO)
        break;           /* only a hole up to EOF */
      data = (off_t)off; /* no SEEK_DATA here: treat everything as data */
      hole = (off_t)size;
    } else {
      hole = lseek(in, data, SEEK_HOLE);
      if (hole == -1)
        hole = (off_t)size;
    }
    if (h)
      pool_hash_zero(h, (uint64_t)data - off);
    off = (uint64_t)data;
    while (off < (uint64_t)hole) {
      uint64_t n = (uint64_t)hole - off;
      if (n > 64 * COPY_CHUNK)
        n = 64 * COPY_CHUNK;
      r = h ? copy_hashed(in, off, dst_fd, n, src, &use_cfr, h, hbuf)
            : copy_range(in, off, dst_fd, off, n, src, &use_cfr);
      if (r < 0)
        goto out;
      off += n;
      report(progress, opaque, off, size, &last);
    }
  }
  if (h && off < size)
    pool_hash_zero(h, size - off); /* the hole up to EOF */
  report(progress, opaque, size, size, &last);
  *size_out = size;
out:
  free(hbuf);
  close(in);
  return r;
}

/* A data run waiting for its window's copy (layer sink): the fill, and the cluster size of the
 * file it comes from (cc_chain_run.cluster_size). */
struct pend {
  struct ovl_fill f;
  uint32_t cluster;
};

/* Output of a chain copy: a fresh layer (full clone) or a fresh file (export). */
struct sink {
  struct cc_chain *c;
  struct ovl_layer *layer;
  int fd;
  const char *name;
  uint64_t size, done_to; /* layer: sub-clusters before done_to are written or pending */
  uint64_t last;
  int use_cfr;
  char *buf; /* one sub-cluster, for the partial ones at a run's ends */
  cc_progress_fn progress;
  void *opaque;
  /* layer: the window of pending fills, and for progress the virtual range they come from
   * (win_from to done_to) and their bytes */
  struct pend *pend;
  struct ovl_fill *fills;
  size_t npend;
  uint64_t win_from, win_bytes;
};

/* Write the sub-cluster of the layer that holds byte `off` whole, read through the chain: the
 * end of a run that does not fall on a sub-cluster boundary (a raw image's last sector, a
 * source layer with smaller sub-clusters).  Returns the end of that sub-cluster. */
static int
sink_partial(struct sink *s, uint64_t off, uint64_t *end)
{
  uint64_t sc = ovl_sc_size(s->layer), a = off / sc * sc, z = a + sc < s->size ? a + sc : s->size;
  int r;

  if (s->buf == NULL && (s->buf = malloc(sc)) == NULL)
    return cc_error_set(ENOMEM, "copy: out of memory");
  if ((r = cc_chain_pread(s->c, s->buf, z - a, a)) < 0 ||
      (r = ovl_pwrite(s->layer, s->buf, z - a, a, 0, NULL, NULL)) < 0)
    return r;
  *end = z;
  return 0;
}

/* A data run with no file behind it (a remote template's bottom): read through the chain,
 * write what was read. */
static int
sink_read(struct sink *s, const struct cc_chain_run *run)
{
  uint64_t a = run->offset, z = run->offset + run->length;
  char *buf;
  int r = 0;

  if (s->layer && a < s->done_to)
    a = s->done_to;
  if (a >= z)
    return 0;
  if ((buf = malloc(COPY_CHUNK)) == NULL)
    return cc_error_set(ENOMEM, "copy: out of memory");
  while (a < z && r == 0) {
    uint64_t n = z - a < COPY_CHUNK ? z - a : COPY_CHUNK;

    if ((r = cc_chain_pread(s->c, buf, n, a)) < 0)
      break;
    if (s->layer) {
      r = ovl_pwrite(s->layer, buf, n, a, 0, NULL, NULL);
      s->done_to = a + n;
    } else {
      for (uint64_t o = 0; o < n && r == 0;) {
        ssize_t w = pwrite(s->fd, buf + o, n - o, (off_t)(a + o));
        if (w < 0 && errno != EINTR)
          r = cc_error_set(errno, "copy: %s: %s", s->name, strerror(errno));
        else if (w > 0)
          o += (uint64_t)w;
      }
    }
    a += n;
    report(s->progress, s->opaque, a, s->size, &s->last);
  }
  free(buf);
  return r < 0 ? r : 0;
}

static int
pend_cmp(const void *pa, const void *pb)
{
  const struct pend *a = pa, *b = pb;

  if (a->f.src_fd != b->f.src_fd)
    return a->f.src_fd < b->f.src_fd ? -1 : 1;
  return a->f.src_offset < b->f.src_offset ? -1 : a->f.src_offset > b->f.src_offset;
}

/* Which gaps between two runs of one source file (p sorted by file and offset) may be shared
 * into the new layer with them (OVL_FILL_BRIDGE, POOL.md 5.4), so that on a file system that
 * shares extents the runs and the gap are one clone:
 *   - a layer file: a gap shorter than its cluster between the end of one physical cluster and
 *     the start of another holds no cluster, only map tables (FORMAT.md 6);
 *   - a raw image (the template): its own bytes that upper layers hide, every clone of it can
 *     read them anyway; at most BRIDGE_MAX per gap, and never more gap than data in a row of
 *     bridged runs, so the new layer holds at most twice the data it names.
 * A layer's hidden clusters (what a snapshot overwrote or zeroed) are never bridged. */
static void
mark_bridges(struct pend *p, size_t n)
{
  uint64_t data = 0, gaps = 0;

  for (size_t i = 0; i < n; i++) {
    int go_on = 0;

    if (i > 0 && p[i].f.src_fd == p[i - 1].f.src_fd) {
      const struct pend *q = &p[i - 1];
      uint64_t g = p[i].f.src_offset - (q->f.src_offset + q->f.length);
      uint32_t cl = p[i].cluster;

      if (g == 0)
        go_on = 1;
      else if (cl == 0)
        go_on = g <= BRIDGE_MAX && gaps + g <= data + p[i].f.length;
      else
        go_on = g < cl && (q->f.offset + q->f.length) % cl == 0 && p[i].f.offset % cl == 0;
      if (go_on && g > 0) {
        p[i].f.flags |= OVL_FILL_BRIDGE;
        gaps += g;
      }
    }
    if (!go_on)
      data = gaps = 0;
    data += p[i].f.length;
  }
}

/* ovl_copy_in_fills' progress: data bytes of the window -> position in the virtual disk. */
static void
fill_progress(void *opaque, uint64_t done)
{
  struct sink *s = opaque;
  double part = s->win_bytes ? (double)done / (double)s->win_bytes : 1.0;

  report(s->progress, s->opaque,
         s->win_from + (uint64_t)(part * (double)(s->done_to - s->win_from)), s->size, &s->last);
}

/* Copy the pending window into the layer, in source order. */
static int
sink_flush(struct sink *s)
{
  int r;

  if (s->npend == 0)
    return 0;
  qsort(s->pend, s->npend, sizeof *s->pend, pend_cmp);
  mark_bridges(s->pend, s->npend);
  for (size_t i = 0; i < s->npend; i++)
    s->fills[i] = s->pend[i].f;
  r = ovl_copy_in_fills(s->layer, s->fills, s->npend, fill_progress, s);
  s->npend = 0;
  s->win_from = s->done_to;
  s->win_bytes = 0;
  return r;
}

/* One run of the source: data goes file to file, zeroes and holes stay unallocated (a layer
 * without parent, or a sparse file, reads them as zero). */
static int
sink_run(void *opaque, const struct cc_chain_run *run)
{
  struct sink *s = opaque;
  uint64_t a = run->offset, z = run->offset + run->length;
  int r;

  if (run->type & CC_EXTENT_ZERO)
    return 0;
  if (run->fd < 0)
    return sink_read(s, run);
  if (s->layer == NULL) {
    while (a < z) {
      uint64_t n = z - a < COPY_STEP ? z - a : COPY_STEP;
      if ((r = copy_range(run->fd, run->phys + (a - run->offset), s->fd, a, n, run->path,
                          &s->use_cfr)) < 0)
        return r;
      a += n;
      report(s->progress, s->opaque, a, s->size, &s->last);
    }
    return 0;
  }
  {
    /* A run may end inside a sub-cluster only at the layer's own end (a bigger layer reads
     * zero past the chain: sink_partial completes that sub-cluster). */
    uint64_t sc = ovl_sc_size(s->layer);
    uint64_t zdown = z == ovl_virtual_size(s->layer) ? z : z / sc * sc;
    if (a < s->done_to)
      a = s->done_to;
    if (a < z && a % sc != 0) {
      if ((r = sink_partial(s, a, &s->done_to)) < 0)
        return r;
      a = s->done_to;
    }
    if (a < zdown) {
      if (s->npend == FILL_WINDOW && (r = sink_flush(s)) < 0)
        return r;
      s->pend[s->npend++] =
          (struct pend){.f = {a, zdown - a, run->fd, run->phys + (a - run->offset), run->path, 0},
                        .cluster = run->cluster_size};
      s->win_bytes += zdown - a;
      a = s->done_to = zdown;
    }
    if (a < z && (r = sink_partial(s, a, &s->done_to)) < 0)
      return r;
  }
  return 0;
}

static int
copy_chain(struct cc_chain *c, struct sink *s, cc_progress_fn progress, void *opaque)
{
  int r;

  s->c = c;
  s->size = cc_chain_size(c);
  s->use_cfr = 1;
  s->progress = progress;
  s->opaque = opaque;
  if (s->layer && (!(s->pend = malloc(FILL_WINDOW * sizeof *s->pend)) ||
                   !(s->fills = malloc(FILL_WINDOW * sizeof *s->fills)))) {
    free(s->pend);
    return cc_error_set(ENOMEM, "copy: %s: out of memory", s->name);
  }
  r = cc_chain_runs(c, s->size, 0, sink_run, s);
  if (r == 0 && s->layer)
    r = sink_flush(s); /* the runs' files stay open as long as the chain (chain.h) */
  free(s->pend);
  free(s->fills);
  free(s->buf);
  if (r == 0)
    report(progress, opaque, s->size, s->size, &s->last);
  return r;
}

int
pool_copy_chain_to_layer(struct cc_chain *c, struct ovl_layer *dst, cc_progress_fn progress,
                         void *opaque)
{
  struct sink s = {.layer = dst, .fd = -1, .name = ovl_path(dst)};
  int r = copy_chain(c, &s, progress, opaque);

  /* The map is written once, here, after the data is durable (FORMAT.md 7.2, 7.6). */
  return r < 0 ? r : ovl_flush(dst);
}

int
pool_copy_chain_to_fd(struct cc_chain *c, int fd, const char *file, cc_progress_fn progress,
                      void *opaque)
{
  struct sink s = {.layer = NULL, .fd = fd, .name = file};
  int r;

  if (ftruncate(fd, (off_t)cc_chain_size(c)) == -1)
    return cc_error_set(errno, "export: %s: %s", file, strerror(errno));
  if ((r = copy_chain(c, &s, progress, opaque)) < 0)
    return r;
  if (fsync(fd) == -1)
    return cc_error_set(errno, "export: %s: fsync: %s", file, strerror(errno));
  return 0;
}

int
pool_run(const char *what, char *const argv[])
{
  return pool_run_output(what, argv, NULL, 0, NULL);
}

int
pool_run_output(const char *what, char *const argv[], char **out_stdout, size_t max,
                int *exit_status)
{
  char err[4096], *obuf = NULL;
  size_t len = 0, olen = 0;
  int pfd[2], ofd[2] = {-1, -1}, status, too_big = 0;
  pid_t pid;

  if (out_stdout) {
    *out_stdout = NULL;
    if ((obuf = malloc(max + 1)) == NULL)
      return cc_error_set(ENOMEM, "%s: out of memory", what);
    if (pipe2(ofd, O_CLOEXEC) == -1) {
      free(obuf);
      return cc_error_set(errno, "%s: pipe: %s", what, strerror(errno));
    }
  }
  if (pipe2(pfd, O_CLOEXEC) == -1) {
    int e = errno;
    free(obuf);
    if (ofd[0] != -1)
      close(ofd[0]), close(ofd[1]);
    return cc_error_set(e, "%s: pipe: %s", what, strerror(e));
  }
  pid = fork();
  if (pid == -1) {
    int e = errno;
    close(pfd[0]);
    close(pfd[1]);
    if (ofd[0] != -1)
      close(ofd[0]), close(ofd[1]);
    free(obuf);
    return cc_error_set(e, "%s: fork: %s", what, strerror(e));
  }
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    dup2(pfd[1], 2);
    if (devnull >= 0) {
      dup2(devnull, 0);
      dup2(ofd[1] != -1 ? ofd[1] : devnull, 1);
    }
    execvp(argv[0], argv);
    fprintf(stderr, "%s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(pfd[1]);
  if (ofd[1] != -1)
    close(ofd[1]);
  /* Both pipes until both reach EOF; stdout is kept up to `max` bytes, stderr's tail. */
  for (;;) {
    struct pollfd pf[2] = {{.fd = pfd[0], .events = POLLIN}, {.fd = ofd[0], .events = POLLIN}};
    ssize_t n;

    if (pf[0].fd == -1 && pf[1].fd == -1)
      break;
    if (poll(pf, 2, -1) == -1) {
      if (errno == EINTR)
        continue;
      break;
    }
    if (pf[0].revents) {
      n = read(pfd[0], err + len, sizeof err - 1 - len);
      if (n <= 0) {
        close(pfd[0]);
        pfd[0] = -1;
      } else {
        len += (size_t)n;
        if (len == sizeof err - 1) { /* keep the tail: the last line says what failed */
          memmove(err, err + 2048, len - 2048);
          len -= 2048;
        }
      }
    }
    if (pf[1].revents) {
      char sink[4096];
      n = read(ofd[0], olen < max ? obuf + olen : sink, olen < max ? max - olen : sizeof sink);
      if (n <= 0) {
        close(ofd[0]);
        ofd[0] = -1;
      } else if (olen < max) {
        olen += (size_t)n;
      } else {
        too_big = 1;
      }
    }
  }
  err[len] = '\0';
  while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
    ;
  if (WIFEXITED(status) &&
      (WEXITSTATUS(status) == 0 || (exit_status && WEXITSTATUS(status) != 124 &&
                                    WEXITSTATUS(status) != 125 && WEXITSTATUS(status) != 127))) {
    if (exit_status)
      *exit_status = WEXITSTATUS(status);
    if (too_big) {
      free(obuf);
      return cc_error_set(EFBIG, "%s: %s: output larger than %zu bytes", what, argv[0], max);
    }
    if (out_stdout) {
      obuf[olen] = '\0';
      *out_stdout = obuf;
    }
    return 0;
  }
  free(obuf);
  while (len > 0 && (err[len - 1] == '\n' || err[len - 1] == '\r'))
    err[--len] = '\0';
  {
    char *nl = strrchr(err, '\n');
    const char *lastline = nl ? nl + 1 : err;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
      return cc_error_set(ENOENT, "%s: %s", what, lastline[0] ? lastline : "command not found");
    /* timeout(1) exits 124 when the time ran out. */
    if (WIFEXITED(status) && WEXITSTATUS(status) == 124 && strcmp(argv[0], "timeout") == 0)
      return cc_error_set(ETIMEDOUT, "%s: %s took longer than %s seconds", what, argv[2], argv[1]);
    return cc_error_set(EIO, "%s: %s failed: %s", what,
                        strcmp(argv[0], "timeout") == 0 ? argv[2] : argv[0],
                        lastline[0] ? lastline : "no message");
  }
}

/* Refuse an output file inside the pool: as root, O_TRUNC would happily empty a read-only template
 * image or a layer. */
static int
outside_pool(struct cc_pool *p, const char *file)
{
  char *pool = realpath(cc_pool_dir(p), NULL), *dir, *slash, *copy = strdup(file);
  int r = 0;

  if (pool == NULL || copy == NULL) {
    free(pool);
    free(copy);
    return 0; /* cannot tell; the open below reports real errors */
  }
  slash = strrchr(copy, '/');
  if (slash == copy)
    copy[1] = '\0';
  else if (slash)
    *slash = '\0';
  dir = realpath(slash ? copy : ".", NULL);
  if (dir && (strcmp(dir, pool) == 0 ||
              (strncmp(dir, pool, strlen(pool)) == 0 && dir[strlen(pool)] == '/')))
    r = cc_error_set(EINVAL, "export: %s: inside the pool %s; write it somewhere else", file,
                     cc_pool_dir(p));
  free(dir);
  free(pool);
  free(copy);
  return r;
}

int
cc_pool_export_file(struct cc_pool *p, const char *name, const char *file, const char *format,
                    cc_progress_fn progress, void *opaque)
{
  char rawpath[PATH_MAX];
  struct cc_chain *c;
  int fd, r, qcow2;

  if (format == NULL || strcmp(format, "raw") == 0)
    qcow2 = 0;
  else if (strcmp(format, "qcow2") == 0)
    qcow2 = 1;
  else
    return cc_error_set(EINVAL, "export: unknown format '%.32s' (raw or qcow2)", format);
  if ((r = outside_pool(p, file)) < 0)
    return r;
  /* Read-only: a clone a server is writing is refused by its lock rather than copied in the
   * middle of the guest's writes. */
  if ((r = cc_pool_open_export(p, name, 1, 0, &c, NULL)) < 0)
    return r;
  if (qcow2) {
    /* qemu-img converts from a sparse raw file next to the output, then it goes. */
    if ((size_t)snprintf(rawpath, sizeof rawpath, "%s.cowchain-export-%ld.raw", file,
                         (long)getpid()) >= sizeof rawpath) {
      cc_chain_close(c);
      return cc_error_set(ENAMETOOLONG, "export: %s: path too long", file);
    }
  } else {
    snprintf(rawpath, sizeof rawpath, "%s", file);
  }
  fd = open(rawpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd == -1) {
    r = cc_error_set(errno, "export: %s: %s", rawpath, strerror(errno));
    cc_chain_close(c);
    return r;
  }
  r = pool_copy_chain_to_fd(c, fd, rawpath, progress, opaque);
  close(fd);
  cc_chain_close(c);
  if (r == 0 && qcow2) {
    char *argv[] = {"qemu-img", "convert", "-f", "raw", "-O", "qcow2", rawpath, (char *)file, NULL};
    r = pool_run("export: qemu-img convert", argv);
  }
  if (qcow2)
    unlink(rawpath);
  return r;
}
