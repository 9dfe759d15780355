#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Power loss in the middle of a pool operation, replayed from an strace of the CLI.

    powerloss.py COWCHAIN ORIG-POOL TRACE WORKDIR -- OP...
    powerloss.py --live COWCHAIN ORIG-POOL POOL TRACE JOURNAL WORKDIR CLONES SNAP [options]
    powerloss.py --live-merge COWCHAIN ORIG-POOL POOL TRACE JOURNAL WORKDIR CLONE SNAP
                 --position top|frozen [options]

The second form replays a live `snapshot create` of served clones: the server, the CLI and a
client traced together (see "Live mode" below and test-powerloss-live.sh); the third a live
`snapshot delete` (a merge) of a served clone's snapshot, traced the same way ("Live merge
mode" below, test-powerloss-live-merge.sh).  The first:

TRACE is `strace -f -qq -X raw -xx -s 2^26` of `cowchain --pool POOL OP...` run on a copy of
ORIG-POOL at the path POOL (the path is read from the trace).  Every call that changes the
pool's files (openat with O_CREAT/O_TRUNC, write, pwrite64, ftruncate, fallocate, rename,
unlink, mkdir, copy_file_range, ioctl FICLONERANGE) is applied to a model of the pool that keeps, per file, its
current bytes and its *durable* bytes (as of its last fsync/fdatasync), and per directory its
current entries and its durable entries (as of the directory's last fsync).  The CLI's threads
(one batch's syncs run at once, pool/durable.c) are followed as in live mode (below): each call
takes effect when it returns, and threads share one descriptor table.  After every such call
(every cut point) the pool a power loss would leave is written out in three ways:

  drop   durable entries, durable bytes: every un-synced write and rename is lost;
  meta   current entries, durable bytes: renames and creates survive, un-synced data does not
         (ext4 data=writeback; the classic "renamed before its data was synced" file);
  data   durable entries, current bytes: data survives, un-synced directory changes do not.

Each distinct state must satisfy the promise of every pool operation (docs/POOL.md section 4): `check` finds no
errors, the pool is exactly "before" or "after" (every export's name and bytes), `check
--repair` leaves no leaks, and from "before" the operation runs again and reaches "after".
One last cut follows the last call (the power fails as the command returns): its three states
must be "after", so a commit whose directory was never synced is caught too.
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
        # Versions of cur and dur (live mode names states by them instead of hashing bytes)
        self.ver = self.dver = 0


class Model:
    def __init__(self, root):
        self.root = root.rstrip('/')
        self.cur = {}   # dir path -> {name: Inode or None for a subdirectory}
        self.dur = {}
        for d, dirs, files in os.walk(self.root):
            ents = {n: None for n in dirs}
            for n in files:
                if not os.path.isfile(os.path.join(d, n)):
                    continue  # a server's control socket (live mode): not data
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
                ino.ver += 1
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
            ino.ver += 1
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
            ino.ver += 1
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
        if name == 'ioctl':
            # FICLONERANGE (bulk fills that bridge gaps, overlay/bulk.c): the shared bytes are
            # the source's, as for copy_file_range.  Other ioctls change no file.
            if a[1] not in ('0x4020940d', 'BTRFS_IOC_CLONE_RANGE or FICLONERANGE') or not f:
                return False
            m = re.fullmatch(r'\{src_fd=(\d+), src_offset=(\d+), src_length=(\d+), '
                             r'dest_offset=(\d+)\}', a[2])
            if not m or f[0] != 'file':
                raise SystemExit(f'powerloss: cannot model ioctl {a}')
            sfd, soff, ln, doff = map(int, m.groups())
            src = self.fds.get(sfd)
            if not src:
                raise SystemExit('powerloss: FICLONERANGE from an unknown descriptor')
            if src[0] == 'file':
                data = bytes(src[1].cur[soff:soff + ln])
            else:
                with open(src[1], 'rb') as sf:
                    sf.seek(soff)
                    data = sf.read(ln)
            self.put(f[1], doff, data)
            return ln > 0
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
                if f[1].dver != f[1].ver:
                    f[1].dur, f[1].dver = bytes(f[1].cur), f[1].ver
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
        ino.ver += 1
        if off > len(ino.cur):
            ino.cur.extend(bytes(off - len(ino.cur)))
        ino.cur[off:off + len(data)] = data

    def key(self, entries, content):
        """A name of the state that state() would write, from versions, not bytes."""
        out = []

        def walk(d, rel):
            for n, ino in sorted((entries.get(d) or {}).items()):
                p, r = os.path.join(d, n), os.path.join(rel, n)
                if ino is None:
                    out.append((r,))
                    walk(p, r)
                else:
                    out.append((r, id(ino), ino.dver if content == 'dur' else ino.ver, ino.mode))
        walk(self.root, '')
        return tuple(out)

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


# ---- Live mode: a served clone, its client and `snapshot create` traced together ----------
#
# One strace (`-f -p NBDKIT-PID -- bash DRIVER`) traces the running server (every thread) and
# a driver that starts the writer below, runs the CLI and waits for the writer.  One tracer
# prints every call when it handles the call's exit stop, before it lets that thread go on, so
# the order of the lines is one linearization of all the processes' calls that respects
# causality: a call the server makes after reading the CLI's `quiesce` comes after the CLI's
# write of it, the writer's "flushed" journal line comes after the server's fdatasync that
# answered the flush, and so on.  Each call is applied when its result line is printed (a call
# split into "<unfinished ...>" and "<... resumed>" takes effect at the resumed line): a call
# in progress at a cut has not happened, which a power cut allows.  Threads share one
# descriptor table (clone with CLONE_FILES), processes get a copy (fork) or a fresh one (exec).

BS = 65536             # one write of live-writer.c: one cluster, at BASE + i * BS
BASE = 4 << 20
NBLOCKS = 128          # 4 MiB + 128 * 64 KiB = 12 MiB < 16 MiB, the clones' size in the test
CLONE_FILES = 0x400


def pattern(i):
    return bytes([(i % 250) + 1]) * BS


class Tasks:
    """Descriptor tables per traced task: threads share one (clone with CLONE_FILES: the CLI's
    sync threads, pool/durable.c; the server's workers), processes get a copy (fork) or a
    fresh one (exec)."""

    def __init__(self, tabs=None):
        self.tabs = tabs if tabs is not None else {}  # tid -> its descriptor table

    def table(self, tid):
        return self.tabs.setdefault(tid, {})

    def event(self, tid, name, raw, ret):
        """Apply a clone, fork or exec to the tables; True if the call was one of them."""
        tab = self.table(tid)
        if name in ('clone', 'clone3', 'fork', 'vfork'):
            if ret != '?' and int(ret) > 0:
                m = re.search(r'flags=(0x[0-9a-f]+|\d+)', raw)
                flags = int(m.group(1), 0) if m else 0
                early = self.tabs.get(ret)  # the child's lines printed before its parent's result
                if name in ('clone', 'clone3') and flags & CLONE_FILES:
                    self.tabs[ret] = tab
                else:
                    self.tabs[ret] = dict(tab)
                if early:
                    self.tabs[ret].update(early)
            return True
        if name == 'execve':
            if ret == '0':
                self.tabs[tid] = {}
            return True
        return False


def read_live_trace(path):
    """(tid, name, raw args, ret) per finished call, in the order strace printed the results."""
    calls, pending = [], {}
    res = re.compile(r'^(\d+) +<\.\.\. (\w+) resumed>(.*)$')
    with open(path, errors='replace') as f:
        for line in f:
            line = line.rstrip('\n')
            if line.endswith('<unfinished ...>'):
                tid = line.split(None, 1)[0]
                pending[tid] = line[:-len('<unfinished ...>')].rstrip()
                continue
            m = res.match(line)
            if m:
                head = pending.pop(m.group(1), None)
                if head is None:
                    continue  # begun before strace attached: nothing of it is known
                line = head + m.group(3)
            m = LINE.match(line)
            if m:
                calls.append((line.split(None, 1)[0], m.group(1), m.group(2), m.group(3)))
    return calls


def live_replay(a, calls, server_tids, visit):
    """Replay the trace into a fresh model; call visit(cut, where, mode, key, model, entries,
    content, facts) for each of the three crash states after every changing call."""
    model = Model(a.orig)
    old_root = model.root
    model.root = a.pool.rstrip('/')
    model.cur = {model.root + d[len(old_root):]: e for d, e in model.cur.items()}
    model.dur = {model.root + d[len(old_root):]: e for d, e in model.dur.items()}
    clones, journal = a.clones.split(','), os.path.normpath(a.journal)
    server = {}
    tasks = Tasks({t: server for t in server_tids})
    tabs = tasks.tabs
    jr = {w: {c: -1 for c in clones} for w in ('issue', 'wrote', 'flushed')}
    at = {'start': None, 'done': None}
    cli, cut, dropped = set(), 0, 0
    for tid, name, raw, ret in calls:
        args = args_of(raw)
        if name == 'execve' and ret == '0' and args[0].endswith(b'/cowchain'):
            cli.add(tid)
        if tasks.event(tid, name, raw, ret):
            continue
        model.fds = tabs[tid]
        if name == 'write' and re.fullmatch(r'\d+', args[0]):
            f = model.fds.get(int(args[0]))
            if f and f[0] == 'ext' and os.path.normpath(f[1]) == journal:
                for ln in args[1].decode().split('\n'):
                    w = ln.split()
                    if len(w) == 1 and w[0] in at:
                        at[w[0]] = {k: dict(v) for k, v in jr.items()}
                    elif len(w) == 3 and w[0] in jr and w[1] in jr[w[0]]:
                        jr[w[0]][w[1]] = max(jr[w[0]][w[1]], int(w[2]))
                continue
        if (a.drop_server_syncs and name in ('fsync', 'fdatasync') and tabs[tid] is server
                and at['start'] is not None and at['done'] is None):
            dropped += 1
            continue
        if not model.apply(name, args, ret):
            continue
        cut += 1
        who = 'cli' if tid in cli else 'server' if tabs[tid] is server else 'pid ' + tid
        facts = ({k: dict(v) for k, v in jr.items()}, at['start'], at['done'])
        for mode, entries, content in (('drop', model.dur, 'dur'), ('meta', model.cur, 'dur'),
                                       ('data', model.dur, 'cur')):
            visit(cut, f'{name} by {who}', mode, model.key(entries, content), model, entries,
                  content, facts)
    if at['start'] is None or at['done'] is None:
        raise SystemExit('powerloss: the journal has no start/done: the command did not run')
    if not cli:
        raise SystemExit('powerloss: no traced cowchain in the trace')
    if not any(t is server for t in tabs.values()) or not server:
        raise SystemExit('powerloss: no traced server file (was strace attached?)')
    if a.drop_server_syncs and not dropped:
        raise SystemExit('powerloss: no server sync inside the command to drop')
    if a.final and not a.drop_server_syncs:
        # Every change must have been seen: the replay's current state is the pool's.
        end = Model(a.final).state(Model(a.final).cur, 'cur')
        now = model.state(model.cur, 'cur')
        now = {k: v for k, v in now.items() if not k.startswith('run/')}
        end = {k: v for k, v in end.items() if not k.startswith('run/')}
        if now != end:
            diff = sorted(k for k in set(now) | set(end) if now.get(k) != end.get(k))
            raise SystemExit(f'powerloss: the replay does not reach the traced pool: {diff}')
    return cut


def live_main(argv):
    import argparse
    import random
    ap = argparse.ArgumentParser(prog='powerloss.py --live')
    ap.add_argument('cowchain')
    ap.add_argument('orig')      # the pool as it was when tracing began (all of it durable)
    ap.add_argument('pool')      # the traced pool's path
    ap.add_argument('trace')
    ap.add_argument('journal')   # live-writer's and the driver's journal
    ap.add_argument('work')
    ap.add_argument('clones')    # CLONE[,CLONE...]
    ap.add_argument('snap')
    ap.add_argument('--server-tids', default='')  # the server's threads when strace attached
    ap.add_argument('--max-states', type=int, default=0)
    ap.add_argument('--seed', type=int, default=1)
    # A copy of the pool taken as tracing ended: the replay must reach it (nothing untraced)
    ap.add_argument('--final')
    # Print every cut point (its phase: before the command, during it, after it returned)
    ap.add_argument('--list', action='store_true')
    # Self-test: leave out the server's syncs made while the command ran.
    ap.add_argument('--drop-server-syncs', action='store_true')
    a = ap.parse_args(argv)
    cc, clones, snap = a.cowchain, a.clones.split(','), a.snap
    calls = read_live_trace(a.trace)
    tids = [t for t in a.server_tids.split(',') if t]

    # Pass 1: name the distinct states (by file versions: cheap), and choose those to check.
    seen, order = set(), []

    def count(cut, where, mode, key, model, entries, content, facts):
        if a.list and mode == 'drop':
            phase = 'before' if facts[1] is None else 'during' if facts[2] is None else 'after'
            print(f'cut {cut}: {phase} the command, after {where}')
        if key not in seen:
            seen.add(key)
            order.append((cut, mode))
    cuts = live_replay(a, calls, tids, count)
    total = len(order)
    chosen = order
    if a.max_states and total > a.max_states:
        chosen = random.Random(a.seed).sample(order, a.max_states)
    chosen = set(chosen)

    # Pass 2: replay again, write out and check each chosen state.
    dest = os.path.join(a.work, 'state')
    tmp = os.path.join(a.work, 'sig.raw')
    tally = {'before': 0, 'after': 0}

    def check(cut, who, mode, key, model, entries, content, facts):
        if (cut, mode) not in chosen:
            return
        chosen.discard((cut, mode))
        now, start, done = facts
        where = f'live snapshot create {a.clones} {snap}: cut {cut} of {cuts} (after {who}), ' \
                f'model {mode}'

        def bad(msg):
            print(f'powerloss: {where}: {msg}\nstate kept in {dest}', file=sys.stderr)
            sys.exit(1)

        def blocks(export, rnd):
            img = export_bytes(cc, dest, export, tmp)
            for b in range(NBLOCKS):
                blk = img[BASE + b * BS:BASE + (b + 1) * BS]
                if blk != pattern(b) and blk.count(0) != BS:
                    bad(f'{export}: block {b} is torn or foreign ({rnd})')
                yield b, blk == pattern(b)
        write_state(model.state(entries, content), dest)
        reidentify(cc, dest)
        r = run(cc, dest, 'check', check=False)
        if r.returncode != 0 or b', 0 errors' not in r.stdout:
            bad(f'check finds errors:\n{r.stdout.decode()}{r.stderr.decode()}')
        for rnd in ('as left', 'after check --repair'):
            has = [snap in names(cc, dest, 'snapshot', 'list', c) for c in clones]
            if any(has) and not all(has):
                bad(f'{snap} exists on some of {a.clones} only ({rnd})')
            after = all(has)
            if done is not None and not after:
                bad(f'the command had returned, yet the pool is "before" ({rnd})')
            for c in clones:
                for b, there in blocks(c, rnd):
                    if not there and b <= now['flushed'][c]:
                        bad(f'{c}: write {b}, flushed before the cut, is lost ({rnd})')
                    # Once the command has returned, its old top is settled (POOL.md 6.1):
                    # every write completed before the command is durable, flushed or not.
                    # During it, an unflushed one may still be lost, as on any disk.
                    if not there and done is not None and b <= start['wrote'][c]:
                        bad(f'{c}: write {b}, completed before the command, is lost ({rnd})')
                if not after:
                    continue
                for b, there in blocks(f'{c}@{snap}', rnd):
                    if not there and b <= min(start['wrote'][c], now['flushed'][c]):
                        bad(f'{c}@{snap}: write {b}, completed before the command and flushed '
                            f'before the cut, is not in it ({rnd})')
                    if not there and done is not None and b <= start['wrote'][c]:
                        bad(f'{c}@{snap}: write {b}, completed before the command, is not in '
                            f'it ({rnd})')
                    if there and done is not None and b > done['issue'][c]:
                        bad(f'{c}@{snap}: write {b}, issued after the command returned, is in '
                            f'it ({rnd})')
                    if there and b > now['issue'][c]:
                        bad(f'{c}@{snap}: write {b} was never issued ({rnd})')
            if rnd == 'as left':
                run(cc, dest, 'check', '--repair')
                r = run(cc, dest, 'check')
                if b', 0 errors, 0 leaks' not in r.stdout:
                    bad(f'leaks remain after check --repair:\n{r.stdout.decode()}')
        tally['after' if after else 'before'] += 1
    live_replay(a, calls, tids, check)
    shutil.rmtree(dest, ignore_errors=True)
    checked = tally['before'] + tally['after']
    sampled = f', {checked} checked (sampled, seed {a.seed})' if checked < total else ''
    print(f'powerloss: live snapshot create {a.clones} {snap}: {cuts} cut points, {total} '
          f'distinct states{sampled}, {tally["before"]} before, {tally["after"]} after, all safe')


def export_bytes(cc, pool, export, tmp):
    if os.path.exists(tmp):
        os.unlink(tmp)
    run(cc, pool, 'export', export, tmp)
    with open(tmp, 'rb') as f:
        return f.read()


# ---- Live merge mode: `snapshot delete` of a served clone's snapshot (POOL.md 6.2) ---------
#
# Traced as live mode is, with the CLI running `snapshot delete CLONE SNAP` while live-writer
# writes the clone ("during"), and replayed by live_replay.  The control requests (`send`,
# traced as sendto) change no file; they are read from the trace only to learn what the CLI had
# asked when: the journal as of its `relink-top` request (every write completed by then was
# drained and then flushed by the relink, before the record could drop the snapshot).  The
# expected bytes of every export come from ORIG-POOL: a block the client issued reads its
# pattern or what the clone read before; every other byte reads as before, whatever the state.

JLINE = re.compile(rb'(issue|wrote|flushed) (\S+) (\d+)\n')
MERGE_VERBS = ('merge-top', 'relink-top', 'forget')


def merge_marks(calls, clone):
    """What the CLI asked, when, from the trace: a dict with the journal of CLONE as of the
    first relink-top request ('relink', None if none) and that request's index in calls
    ('where'), the requests per verb ('verbs'), the threads that answered requests during the
    command ('session'), the CLI's threads ('cli'), and per block the client wrote over a
    merge-top piece, whether it wrote it before that piece was copied ('order')."""
    jr = {w: -1 for w in ('issue', 'wrote', 'flushed')}
    relink, where, verbs, session, inside = None, None, dict.fromkeys(MERGE_VERBS, 0), set(), 0
    cli, wrote_at, pieces = set(), {}, []
    for i, (tid, name, raw, ret) in enumerate(calls):
        if name == 'execve' and ret == '0' and args_of(raw)[0].endswith(b'/cowchain'):
            cli.add(tid)
        if name not in ('write', 'sendto') or ret == '?' or int(ret) <= 0:
            continue
        a = args_of(raw)
        if len(a) < 2 or not isinstance(a[1], bytes):
            continue
        data = a[1][:int(ret)]
        m = JLINE.fullmatch(data)
        if name == 'write' and m and m.group(2).decode() == clone:
            w = m.group(1).decode()
            jr[w] = max(jr[w], int(m.group(3)))
            if w == 'wrote':
                wrote_at.setdefault(int(m.group(3)), i)
        elif name == 'write' and data in (b'start\n', b'done\n'):
            inside = data == b'start\n'
        elif name == 'sendto':
            verb = data.split(b' ', 1)[0].decode(errors='replace')
            if verb in verbs:
                verbs[verb] += 1
            if verb == 'relink-top' and relink is None:
                relink, where = dict(jr), i
            if verb == 'merge-top':
                w = data.split()
                pieces.append((int(w[3]), int(w[4]), i))
            if inside and data.startswith(b'ok'):
                session.add(tid)
    order = {}
    for off, ln, i in pieces:
        for b in range(NBLOCKS):
            if off < BASE + (b + 1) * BS and BASE + b * BS < off + ln and b in wrote_at:
                order[b] = wrote_at[b] < i
    return {'relink': relink, 'where': where, 'verbs': verbs, 'session': session, 'cli': cli,
            'order': order}


def merge_self_test(calls, where, session):
    """The self-test's trace: the relink's header write (the last write at a header slot by the
    thread that answers `relink-top`, before its reply) moved to just after the request, before
    the flush that should come first.  None if there is no such write."""
    if where is None:
        return None
    for j in range(where + 1, len(calls)):
        tid, name, raw, ret = calls[j]
        if name == 'sendto' and tid in session:
            break  # the reply
    head = None
    for k in range(where + 1, j):
        tid, name, raw, ret = calls[k]
        if tid in session and name == 'pwrite64' and int(args_of(raw)[3]) in (0, 4096):
            head = k
    if head is None:
        return None
    out = list(calls)
    out.insert(where + 1, out.pop(head))
    return out, where + 1, j


def listing(out):
    """The findings of `check --json`, one line each."""
    return '\n'.join(f"{x['severity']}: {x['message']}" for x in out['findings'])


def looks(blk):
    """A block's bytes in a few words: 'all 0xfb', or the runs of its first bytes."""
    runs, i = [], 0
    while i < len(blk) and len(runs) < 4:
        j = i
        while j < len(blk) and blk[j] == blk[i]:
            j += 1
        runs.append(f'{j - i} x 0x{blk[i]:02x}')
        i = j
    if len(runs) == 1:
        return f'all 0x{blk[0]:02x}'
    return ', '.join(runs) + (', ...' if i < len(blk) else '')


def layer_of(record, key):
    """The uuid a clone record names for `top` or for snapshot `key`."""
    for ln in record.splitlines():
        w = ln.split()
        if w[:1] == ['top'] and key is None or len(w) >= 3 and w[0] == 'snapshot' and w[1] == key:
            return w[1] if key is None else w[2]
    raise SystemExit(f'powerloss: no {key or "top"} in the clone record')


def live_merge_main(argv):
    import argparse
    import random
    ap = argparse.ArgumentParser(prog='powerloss.py --live-merge')
    ap.add_argument('cowchain')
    ap.add_argument('orig')      # the pool as it was when tracing began (all of it durable)
    ap.add_argument('pool')      # the traced pool's path
    ap.add_argument('trace')
    ap.add_argument('journal')   # live-writer's and the driver's journal
    ap.add_argument('work')
    ap.add_argument('clone')
    ap.add_argument('snap')
    ap.add_argument('--position', choices=('top', 'frozen'), required=True)
    ap.add_argument('--server-tids', default='')
    ap.add_argument('--max-states', type=int, default=0)
    ap.add_argument('--seed', type=int, default=1)
    ap.add_argument('--final')
    ap.add_argument('--list', action='store_true')
    # Self-test (top position): the relink's header written before the flush of what the
    # merge copied into the top; only the states inside `relink-top` are checked.
    ap.add_argument('--relink-first', action='store_true')
    a = ap.parse_args(argv)
    a.clones, a.drop_server_syncs = a.clone, False
    cc, clone, snap = a.cowchain, a.clone, a.snap
    calls = read_live_trace(a.trace)
    tids = [t for t in a.server_tids.split(',') if t]
    marks = merge_marks(calls, clone)
    relink, verbs, session, where = marks['relink'], marks['verbs'], marks['session'], \
        marks['where']
    own_tids = marks['cli'] | session  # the merge's own calls: the CLI's, the control session's
    if a.position == 'top' and (relink is None or not verbs['merge-top']):
        raise SystemExit('powerloss: no merge-top and relink-top requests in the trace (is '
                         'sendto traced? was the snapshot right below the served top?)')
    if a.position == 'frozen' and (verbs['merge-top'] or relink is not None):
        raise SystemExit('powerloss: merge-top or relink-top in a merge into a frozen layer')
    if not verbs['forget']:
        raise SystemExit('powerloss: no forget request: not a live merge')
    window, pos = None, [0]
    if a.relink_first:
        st = merge_self_test(calls, where, session)
        if st is None:
            raise SystemExit('powerloss: no header write inside relink-top to move')
        calls, lo, hi = st
        a.final = None
        window = (lo, hi)

    def indexed(cs):
        """The calls, noting in pos which one live_replay is at (a visit is of its result)."""
        for i, c in enumerate(cs):
            pos[0] = i
            yield c

    # What every export read before the command (a copy of ORIG: its templates re-identified).
    tmp = os.path.join(a.work, 'sig.raw')
    ref = os.path.join(a.work, 'ref')
    shutil.rmtree(ref, ignore_errors=True)
    shutil.copytree(a.orig, ref, symlinks=True)
    reidentify(cc, ref)
    snaps = names(cc, ref, 'snapshot', 'list', clone)
    if snap not in snaps:
        raise SystemExit(f'powerloss: {clone}@{snap} is not in the original pool')
    old = {e: export_bytes(cc, ref, e, tmp) for e in [clone] + [f'{clone}@{s}' for s in snaps]}
    with open(os.path.join(ref, 'clones', clone)) as f:
        record = f.read()
    suuid = layer_of(record, snap)
    later = snaps[snaps.index(snap) + 1:]
    child = layer_of(record, later[0]) if a.position == 'frozen' else layer_of(record, None)
    if a.position == 'frozen' and not later:
        raise SystemExit(f'powerloss: no snapshot above {snap}: not the frozen position')
    written = {layer_of(record, None), child}  # the layers written while the command runs
    shutil.rmtree(ref, ignore_errors=True)

    seen = set()

    # Pass 1: the distinct states.  Those made by the merge's own calls are all checked (up
    # to MAX_STATES); the client's writes (before, during and after the command) fill the rest
    # of MAX_STATES, sampled with the seed.
    def count(cut, who, mode, key, model, entries, content, facts):
        if window and not window[0] <= pos[0] < window[1]:
            return
        if a.list and mode == 'drop':
            phase = 'before' if facts[1] is None else 'during' if facts[2] is None else 'after'
            print(f'cut {cut}: {phase} the command, after {who}')
        if key not in seen:
            seen.add(key)
            (own if calls[pos[0]][0] in own_tids else other).append((cut, mode))
    own, other = [], []
    cuts = live_replay(a, indexed(calls), tids, count)
    total = len(own) + len(other)
    rng = random.Random(a.seed)
    if a.max_states and total > a.max_states and not window:
        if len(own) >= a.max_states:
            chosen = rng.sample(own, a.max_states)
        else:
            chosen = own + rng.sample(other, a.max_states - len(own))
    else:
        chosen = own + other
    chosen = set(chosen)
    nown = len(own)

    dest = os.path.join(a.work, 'state')
    tally = {'before': 0, 'after': 0}
    leaks = dict.fromkeys(('S left over', 'dirty or leaked space', 'stale tmp/ file'), 0)
    desc = f'live merge {clone}@{snap} ({a.position})'

    def check(cut, who, mode, key, model, entries, content, facts):
        if (cut, mode) not in chosen:
            return
        chosen.discard((cut, mode))
        now, start, done = facts
        at = f'{desc}: cut {cut} of {cuts} (after {who}), model {mode}'

        def bad(msg):
            print(f'powerloss: {at}: {msg}\nstate kept in {dest}', file=sys.stderr)
            sys.exit(1)

        def findings():
            r = run(cc, dest, 'check', '--json', check=False)
            try:
                out = json.loads(r.stdout)
            except ValueError:
                bad(f'check --json: exit {r.returncode}: {r.stdout.decode()}{r.stderr.decode()}')
            return out
        write_state(model.state(entries, content), dest)
        reidentify(cc, dest)
        out = findings()
        if out['errors']:
            bad('check finds errors:\n' + listing(out))
        have = names(cc, dest, 'snapshot', 'list', clone)
        if have == snaps:
            after = False
        elif have == [s for s in snaps if s != snap]:
            after = True
        else:
            bad(f'snapshots {have}: neither before {snaps} nor after')
        # Only the leaks POOL.md names for a crash in this operation.
        for x in out['findings']:
            msg, m = x['message'], re.match(r'layer (\S+): ', x['message'])
            if x['severity'] != 'leak':
                continue
            if m and 'no record reaches it' in msg and m.group(1) == suuid and after:
                leaks['S left over'] += 1  # 6.2 step 6: after + leftover S
            elif m and ('dirty' in msg or 'leaked bytes' in msg) and m.group(1) in written:
                leaks['dirty or leaked space'] += 1  # section 7: a layer being written
            elif msg.startswith('tmp/') and 'stale file' in msg:
                leaks['stale tmp/ file'] += 1  # section 2: a tmp/ file of the dead CLI
            else:
                bad(f'a leak POOL.md does not name for this operation: {msg}')

        def verify(rnd):
            has = names(cc, dest, 'snapshot', 'list', clone)
            if has != ([s for s in snaps if s != snap] if after else snaps):
                bad(f'snapshots {has} ({rnd})')
            if done is not None and not after:
                bad(f'the command had returned, yet the pool is "before" ({rnd})')
            for s in has:
                if export_bytes(cc, dest, f'{clone}@{s}', tmp) != old[f'{clone}@{s}']:
                    bad(f'{clone}@{s} does not read as before the command ({rnd})')
            img, was = export_bytes(cc, dest, clone, tmp), old[clone]
            if len(img) != len(was):
                bad(f'{clone}: size {len(img)}, was {len(was)} ({rnd})')
            for off in range(0, len(was), BS):
                blk, prev = img[off:off + BS], was[off:off + BS]
                b = (off - BASE) // BS if BASE <= off < BASE + NBLOCKS * BS else None
                if b is None or blk != pattern(b):
                    if blk != prev:
                        bad(f'{clone}: 64 KiB at {off} read {looks(blk)}: neither what the clone '
                            f'read before ({looks(prev)}) nor a write of the client (torn or '
                            f'foreign) ({rnd})')
                    if b is not None and b <= now['flushed'][clone]:
                        bad(f'{clone}: write {b}, flushed before the cut, is lost ({rnd})')
                    if b is not None and after and relink and b <= relink['wrote']:
                        bad(f'{clone}: write {b}, completed before relink-top, is lost: the '
                            f'merged layer\'s block won over it ({rnd})')
                elif b > now['issue'][clone]:
                    bad(f'{clone}: write {b} was never issued ({rnd})')
            return img
        img = verify('as left')
        run(cc, dest, 'check', '--repair')
        out = findings()
        if out['errors'] or out['leaks']:
            bad('check --repair leaves:\n' + listing(out))
        if verify('after check --repair') != img:
            bad(f'{clone}: check --repair changed its bytes')
        if not after:
            # From "before", the delete runs again (offline) and reaches "after".
            run(cc, dest, 'snapshot', 'delete', clone, snap)
            after_run = names(cc, dest, 'snapshot', 'list', clone)
            if after_run != [s for s in snaps if s != snap]:
                bad(f'the rerun of the delete leaves snapshots {after_run}')
            if export_bytes(cc, dest, clone, tmp) != img:
                bad(f'{clone}: the rerun of the delete changed its bytes')
            for s in after_run:
                if export_bytes(cc, dest, f'{clone}@{s}', tmp) != old[f'{clone}@{s}']:
                    bad(f'{clone}@{s}: the rerun of the delete changed it')
            out = findings()
            if out['errors'] or out['leaks']:
                bad('check after the rerun:\n' + listing(out))
        tally['after' if after else 'before'] += 1
    live_replay(a, indexed(calls), tids, check)
    shutil.rmtree(dest, ignore_errors=True)
    checked = tally['before'] + tally['after']
    sampled = f', {checked} checked (sampled, seed {a.seed})' if checked < total else ''
    scope = ' inside relink-top (self-test: relink first)' if window else ''
    first = sum(marks['order'].values())
    race = (f'; of the blocks of S the client wrote, {first} before their piece was copied, '
            f'{len(marks["order"]) - first} after' if marks['order'] else '')
    print(f'powerloss: {desc}: {cuts} cut points, {total} distinct states{scope} ({nown} of the '
          f'merge\'s own calls, {total - nown} of the client\'s){sampled}, {tally["before"]} '
          f'before, {tally["after"]} after; requests: '
          + ', '.join(f'{v} {n}' for v, n in verbs.items()) + f'{race}; leaks: '
          + ', '.join(f'{k} {n}' for k, n in leaks.items()) + '; all safe')


def main():
    if sys.argv[1:2] == ['--live']:
        return live_main(sys.argv[2:])
    if sys.argv[1:2] == ['--live-merge']:
        return live_merge_main(sys.argv[2:])
    cc, orig, trace, work = sys.argv[1:5]
    assert sys.argv[5] == '--'
    op = sys.argv[6:]
    tmp = os.path.join(work, 'sig.raw')
    before = signature(cc, orig, tmp)

    # The traced run's pool path: the first pool file the CLI opened.  Its threads (the syncs
    # of one batch run at once, pool/durable.c) print interleaved lines: each call is applied
    # when it returns, as in live mode.
    calls = read_live_trace(trace)
    pool = None
    for _, name, raw, _ in calls:
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

    seen, cuts = {}, 0  # state key -> its signature
    dest = os.path.join(work, 'state')

    def examine(where, st):
        """Check one crash state (once per distinct state); its signature."""
        key = hashlib.sha256(repr(sorted((k, v) for k, v in st.items())).encode()).hexdigest()
        if key in seen:
            return seen[key]
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
        seen[key] = now
        return now

    models = (('drop', 'dur', 'dur'), ('meta', 'cur', 'dur'), ('data', 'dur', 'cur'))
    tasks = Tasks()
    for tid, name, raw, ret in calls:
        if tasks.event(tid, name, raw, ret):
            continue
        model.fds = tasks.table(tid)
        if not model.apply(name, args_of(raw), ret):
            continue
        cuts += 1
        for mode, entries, content in models:
            st = model.state(model.dur if entries == 'dur' else model.cur, content)
            examine(f'{" ".join(op)}: cut {cuts} (after {name}), model {mode}', st)
    # One more cut after the last call: the power fails right after the command returned, before
    # anything else reaches the disk.  The syncs after the last change (the commit's directory
    # fsync) are only judged here, and the command said it succeeded: the pool must be "after".
    for mode, entries, content in models:
        st = model.state(model.dur if entries == 'dur' else model.cur, content)
        where = f'{" ".join(op)}: after the command returned, model {mode}'
        if examine(where, st) != after:
            write_state(st, dest)
            print(f'powerloss: {where}: the command returned, yet the pool is "before" (an un-synced '
                  f'commit)\nstate kept in {dest}', file=sys.stderr)
            sys.exit(1)
    shutil.rmtree(dest, ignore_errors=True)
    print(f'powerloss: {" ".join(op)}: {cuts} cut points, {len(seen)} distinct states, all safe')


if __name__ == '__main__':
    main()
