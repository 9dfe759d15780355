#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Power loss in the middle of a pool operation, replayed from an strace of the CLI.

    powerloss.py COWCHAIN ORIG-POOL TRACE WORKDIR -- OP...

TRACE is `strace -f -qq -X raw -xx -s 2^26` of `cowchain --pool POOL OP...` run on a copy of
ORIG-POOL at the path POOL (the path is read from the trace).  Every call that changes the
pool's files (openat with O_CREAT/O_TRUNC, write, pwrite64, ftruncate, fallocate, rename,
unlink, mkdir, copy_file_range) is applied to a model of the pool that keeps, per file, its
current bytes and its *durable* bytes (as of its last fsync/fdatasync), and per directory its
current entries and its durable entries (as of the directory's last fsync).  After every such
call (every cut point) the pool a power loss would leave is written out in three ways:

  drop   durable entries, durable bytes: every un-synced write and rename is lost;
  meta   current entries, durable bytes: renames and creates survive, un-synced data does not
         (ext4 data=writeback; the classic "renamed before its data was synced" file);
  data   durable entries, current bytes: data survives, un-synced directory changes do not.

Each distinct state must satisfy the promise of every pool operation (docs/POOL.md section 4): `check` finds no
errors, the pool is exactly "before" or "after" (every export's name and bytes), `check
--repair` leaves no leaks, and from "before" the operation runs again and reaches "after".
Prints one summary line: "powerloss: OP: K cut points, S distinct states, all safe".
Exit 1 on the first unsafe state (its directory is kept in WORKDIR and named).
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

O_CREAT, O_TRUNC, O_APPEND, O_DIRECTORY = 0o100, 0o1000, 0o2000, 0o200000
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
AT_FDCWD = -100
UMASK = os.umask(0o022)
os.umask(UMASK)

LINE = re.compile(r'^(?:\d+ +)?(\w+)\((.*)\) += (-?\d+|\?)')
STR = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')


def unhex(s):
    return bytes.fromhex(s.replace('\\x', ''))


def args_of(raw):
    """Split strace's argument list: strings (hex-escaped) become bytes, the rest stays text."""
    out, i = [], 0
    while i < len(raw):
        if raw[i] == '"':
            m = STR.match(raw, i)
            out.append(unhex(m.group(1)))
            i = m.end()
        elif raw[i] in '[{':
            depth, j = 0, i
            while True:
                depth += raw[j] in '[{'
                depth -= raw[j] in ']}'
                j += 1
                if depth == 0:
                    break
            out.append(raw[i:j])
            i = j
        else:
            j = raw.find(',', i)
            j = len(raw) if j < 0 else j
            out.append(raw[i:j].strip())
            i = j
        while i < len(raw) and raw[i] in ', ':
            i += 1
    return out


class Inode:
    def __init__(self, data=b'', mode=0o644):
        self.cur = bytearray(data)
        self.dur = bytes(data)
        self.mode = mode  # permission bits (templates must stay read-only); not versioned


class Model:
    def __init__(self, root):
        self.root = root.rstrip('/')
        self.cur = {}   # dir path -> {name: Inode or None for a subdirectory}
        self.dur = {}
        for d, dirs, files in os.walk(self.root):
            ents = {n: None for n in dirs}
            for n in files:
                with open(os.path.join(d, n), 'rb') as f:
                    ents[n] = Inode(f.read(), os.stat(f.fileno()).st_mode & 0o7777)
            self.cur[d] = ents
            self.dur[d] = dict(ents)
        self.fds = {}   # fd -> ('file', Inode, offset) | ('dir', path)

    def inside(self, p):
        return p == self.root or p.startswith(self.root + '/')

    def lookup(self, p):
        d, n = os.path.split(p)
        return self.cur.get(d, {}).get(n)

    def apply(self, name, a, ret):
        """Apply one call; True if it changed file or directory state."""
        if ret == '?' or int(ret) < 0:
            return False
        ret = int(ret)
        if name in ('openat', 'open'):
            path = a[1] if name == 'openat' else a[0]
            flags = int((a[2] if name == 'openat' else a[1]), 0)
            if name == 'openat' and int(a[0]) != AT_FDCWD:
                base = self.fds.get(int(a[0]))
                if base is None or base[0] != 'dir':
                    return False
                path = os.path.join(base[1].encode(), path)
            path = os.path.normpath(path.decode())
            if not self.inside(path):
                self.fds[ret] = ['ext', path, 0]  # a source file (template import)
                return False
            if path in self.cur:
                self.fds[ret] = ('dir', path)
                return False
            d, n = os.path.split(path)
            ino = self.cur[d].get(n)
            changed = False
            if ino is None:
                ino = Inode(mode=int(a[3] if name == 'openat' else a[2], 8) & ~UMASK)
                self.cur[d][n] = ino
                changed = True
            if flags & O_TRUNC and ino.cur:
                del ino.cur[:]
                changed = True
            self.fds[ret] = ['file', ino, len(ino.cur) if flags & O_APPEND else 0]
            return changed
        if name == 'close':
            self.fds.pop(int(a[0]), None)
            return False
        if name in ('dup', 'dup2', 'dup3'):
            if int(a[0]) in self.fds:
                self.fds[ret] = self.fds[int(a[0])]
            return False
        f = self.fds.get(int(a[0])) if a and re.fullmatch(r'-?\d+', str(a[0])) else None
        if name == 'lseek':
            if f and f[0] == 'file':
                f[2] = ret
            return False
        if name in ('write', 'pwrite64'):
            if not f or f[0] != 'file':
                return False
            off = int(a[3]) if name == 'pwrite64' else f[2]
            self.put(f[1], off, a[1][:ret])
            if name == 'write':
                f[2] = off + ret
            return ret > 0
        if name in ('pwritev', 'writev'):
            raise SystemExit(f'powerloss: {name} is not modelled; extend powerloss.py')
        if name == 'ftruncate':
            if not f or f[0] != 'file':
                return False
            size = int(a[1])
            ino = f[1]
            if size < len(ino.cur):
                del ino.cur[size:]
            else:
                ino.cur.extend(bytes(size - len(ino.cur)))
            return True
        if name == 'fallocate':
            if not f or f[0] != 'file':
                return False
            mode, off, ln = int(a[1], 0), int(a[2]), int(a[3])
            ino = f[1]
            if mode & FALLOC_FL_PUNCH_HOLE:
                end = min(off + ln, len(ino.cur))
                if off < end:
                    ino.cur[off:end] = bytes(end - off)
            elif not mode & FALLOC_FL_KEEP_SIZE and off + ln > len(ino.cur):
                ino.cur.extend(bytes(off + ln - len(ino.cur)))
            return True
        if name == 'copy_file_range':
            src, dst = self.fds.get(int(a[0])), self.fds.get(int(a[2]))
            if not dst or dst[0] != 'file':
                return False
            if not src:
                raise SystemExit('powerloss: copy_file_range from an unknown descriptor')
            # "[OFF]" or "[OFF => NEWOFF]": the offset the copy started at
            first = lambda x: int(re.match(r'\[(-?\d+)', x).group(1))
            soff = first(a[1]) if a[1] != 'NULL' else src[2]
            doff = first(a[3]) if a[3] != 'NULL' else dst[2]
            if src[0] == 'file':
                data = bytes(src[1].cur[soff:soff + ret])
            else:  # outside the pool: never written by the operation, read it now
                with open(src[1], 'rb') as sf:
                    sf.seek(soff)
                    data = sf.read(ret)
            if a[1] == 'NULL':
                src[2] += ret
            self.put(dst[1], doff, data)
            if a[3] == 'NULL':
                dst[2] += ret
            return ret > 0
        if name == 'fchmod':
            if f and f[0] == 'file':
                f[1].mode = int(a[1], 8)
            return bool(f)
        if name in ('chmod', 'fchmodat'):
            p = os.path.normpath((a[0] if name == 'chmod' else a[1]).decode())
            ino = self.lookup(p) if self.inside(p) else None
            if ino is not None:
                ino.mode = int(a[1] if name == 'chmod' else a[2], 8)
            return ino is not None
        if name in ('fsync', 'fdatasync'):
            if not f:
                return False
            if f[0] == 'file':
                f[1].dur = bytes(f[1].cur)
            else:
                self.dur[f[1]] = dict(self.cur[f[1]])
            return False
        if name in ('rename', 'renameat', 'renameat2'):
            old, new = (a[0], a[1]) if name == 'rename' else (a[1], a[3])
            old, new = os.path.normpath(old.decode()), os.path.normpath(new.decode())
            if not self.inside(old) and not self.inside(new):
                return False
            od, on = os.path.split(old)
            nd, nn = os.path.split(new)
            ino = self.cur[od].pop(on)
            self.cur[nd][nn] = ino
            if ino is None:  # a directory: move its entries along
                for tbl in (self.cur, self.dur):
                    if old in tbl:
                        tbl[new] = tbl.pop(old)
            return True
        if name in ('unlink', 'unlinkat', 'rmdir'):
            p = a[0] if name != 'unlinkat' else a[1]
            p = os.path.normpath(p.decode())
            if not self.inside(p):
                return False
            d, n = os.path.split(p)
            self.cur[d].pop(n, None)
            return True
        if name in ('mkdir', 'mkdirat'):
            p = a[0] if name == 'mkdir' else a[1]
            p = os.path.normpath(p.decode())
            if not self.inside(p):
                return False
            d, n = os.path.split(p)
            self.cur[d][n] = None
            self.cur[p], self.dur[p] = {}, {}
            return True
        if name in ('link', 'linkat', 'symlink', 'sendfile', 'splice'):
            raise SystemExit(f'powerloss: {name} is not modelled; extend powerloss.py')
        return False

    @staticmethod
    def put(ino, off, data):
        if off > len(ino.cur):
            ino.cur.extend(bytes(off - len(ino.cur)))
        ino.cur[off:off + len(data)] = data

    def state(self, entries, content):
        """{relative path: bytes or None (directory)} of a crash state."""
        out = {}

        def walk(d, rel):
            for n, ino in (entries.get(d) or {}).items():
                p, r = os.path.join(d, n), os.path.join(rel, n)
                if ino is None:
                    out[r] = None
                    walk(p, r)
                else:
                    out[r] = (ino.dur if content == 'dur' else bytes(ino.cur), ino.mode)
        walk(self.root, '')
        return out


def write_state(st, dest):
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    for r in sorted(st, key=lambda r: r.count('/')):
        p = os.path.join(dest, r)
        if st[r] is None:
            os.makedirs(p, exist_ok=True)
            continue
        data, mode = st[r]
        with open(p, 'wb') as f:
            os.fchmod(f.fileno(), mode)
            # sparse: skip all-zero 64 KiB chunks, then set the size
            for i in range(0, len(data), 65536):
                chunk = data[i:i + 65536]
                if chunk.count(0) != len(chunk):
                    f.seek(i)
                    f.write(chunk)
            f.truncate(len(data))


def run(cc, pool, *args, check=True):
    r = subprocess.run([cc, '--pool', pool, *args], capture_output=True, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"cowchain {' '.join(args)}: exit {r.returncode}: {r.stderr.decode()}")
    return r


def names(cc, pool, *args):
    out = run(cc, pool, *args, '--json').stdout.decode()
    return [e['name'] for e in json.loads(out)] if out.strip() else []


def reidentify(cc, pool):
    # Every pool here is a copy (cp -a, or files written anew by write_state): its template
    # images have new inodes and mtimes, which opens refuse until `template verify` re-hashes
    # them and records the new identity (POOL.md 3.1.1).  Template contents never change.
    images = os.path.join(pool, 'images')
    for f in sorted(os.listdir(images)) if os.path.isdir(images) else []:
        if f.endswith('.raw') and os.path.exists(os.path.join(pool, 'templates', f[:-4])):
            run(cc, pool, 'template', 'verify', f[:-4])


def signature(cc, pool, tmp):
    reidentify(cc, pool)
    sig = []
    exports = [('template', t) for t in names(cc, pool, 'template', 'list')]
    for c in names(cc, pool, 'clone', 'list'):
        exports.append(('clone', c))
        exports += [('snapshot', f'{c}@{s}') for s in names(cc, pool, 'snapshot', 'list', c)]
    for kind, e in exports:
        if os.path.exists(tmp):
            os.unlink(tmp)
        run(cc, pool, 'export', e, tmp)
        with open(tmp, 'rb') as f:
            sig.append(f'{kind} {e} {hashlib.sha256(f.read()).hexdigest()[:16]}')
    return '\n'.join(sorted(sig))


def main():
    cc, orig, trace, work = sys.argv[1:5]
    assert sys.argv[5] == '--'
    op = sys.argv[6:]
    tmp = os.path.join(work, 'sig.raw')
    before = signature(cc, orig, tmp)

    # The traced run's pool path: the first pool file the CLI opened.
    calls = []
    with open(trace, errors='replace') as f:
        for line in f:
            m = LINE.match(line)
            if m:
                calls.append((m.group(1), m.group(2), m.group(3)))
            elif 'unfinished' in line or 'resumed' in line:
                raise SystemExit('powerloss: interleaved threads in the trace are not modelled')
    pool = None
    for name, raw, _ in calls:
        if name == 'openat':
            p = args_of(raw)[1].decode(errors='replace')
            if p.endswith('/cowchain-pool'):
                pool = os.path.dirname(p)
                break
    if pool is None:
        raise SystemExit('powerloss: no pool in the trace')
    after = signature(cc, pool, tmp)
    if before == after:
        raise SystemExit('powerloss: the operation changed nothing visible')

    # The model starts from ORIG's contents, placed at the traced pool's path.
    model = Model(orig)
    old_root = model.root
    model.root = pool
    model.cur = {pool + d[len(old_root):]: e for d, e in model.cur.items()}
    model.dur = {pool + d[len(old_root):]: e for d, e in model.dur.items()}

    seen, cuts, states = set(), 0, 0
    dest = os.path.join(work, 'state')
    for name, raw, ret in calls:
        if not model.apply(name, args_of(raw), ret):
            continue
        cuts += 1
        for mode, entries, content in (('drop', model.dur, 'dur'), ('meta', model.cur, 'dur'),
                                       ('data', model.dur, 'cur')):
            st = model.state(entries, content)
            key = hashlib.sha256(repr(sorted((k, v) for k, v in st.items())).encode()).hexdigest()
            if key in seen:
                continue
            seen.add(key)
            states += 1
            where = f'{" ".join(op)}: cut {cuts} (after {name}), model {mode}'
            write_state(st, dest)
            reidentify(cc, dest)
            r = run(cc, dest, 'check', check=False)
            if r.returncode != 0 or b', 0 errors' not in r.stdout:
                print(f'powerloss: {where}: check finds errors:\n{r.stdout.decode()}{r.stderr.decode()}'
                      f'state kept in {dest}', file=sys.stderr)
                sys.exit(1)
            now = signature(cc, dest, tmp)
            if now not in (before, after):
                print(f'powerloss: {where}: the pool is neither before nor after:\n{now}\n'
                      f'--- before:\n{before}\n--- after:\n{after}\nstate kept in {dest}',
                      file=sys.stderr)
                sys.exit(1)
            run(cc, dest, 'check', '--repair')
            r = run(cc, dest, 'check')
            if b', 0 errors, 0 leaks' not in r.stdout:
                print(f'powerloss: {where}: leaks remain after check --repair:\n{r.stdout.decode()}',
                      file=sys.stderr)
                sys.exit(1)
            if now == before:
                run(cc, dest, *op)
                if signature(cc, dest, tmp) != after:
                    print(f'powerloss: {where}: a rerun from "before" does not reach "after"',
                          file=sys.stderr)
                    sys.exit(1)
    shutil.rmtree(dest, ignore_errors=True)
    print(f'powerloss: {" ".join(op)}: {cuts} cut points, {states} distinct states, all safe')


if __name__ == '__main__':
    main()
