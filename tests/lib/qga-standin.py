#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""A stand-in for the QEMU guest agent on a unix socket, for the --quiesce tests.

usage: qga-standin.py SOCKET LOG MODE [--watch FILE] [--hang SECONDS] [--stale]

It speaks what pool/qga.c asks (guest-sync-delimited, guest-fsfreeze-freeze,
guest-fsfreeze-thaw), one client at a time, and appends to LOG one line per command it got:
"COMMAND" and, with --watch, " FILE=<the first line of FILE that starts with 'top '>" read at
that moment (the test watches a clone record: the commit point of a snapshot must fall
between freeze and thaw).

MODE:
  ok      freeze answers {"return": 2}, thaw {"return": 2}
  refuse  freeze answers an error (class GenericError)
  hang    freeze is answered only after --hang SECONDS (default 60), then the rest in order
  mute    reads everything, answers nothing (an agent that is not running in the guest)
  garbage the sync is answered with a line that is not JSON
--stale: before answering the sync, send two replies no one asked for (an earlier client's).
"""
import json
import os
import signal
import socket
import sys
import time


def main():
    args = sys.argv[1:]
    if len(args) < 3:
        sys.exit(__doc__)
    path, log, mode = args[:3]
    watch, hang, stale = None, 60.0, False
    rest = args[3:]
    while rest:
        a = rest.pop(0)
        if a == "--watch":
            watch = rest.pop(0)
        elif a == "--hang":
            hang = float(rest.pop(0))
        elif a == "--stale":
            stale = True
        else:
            sys.exit("qga-standin: unknown option " + a)

    def record(cmd):
        line = cmd
        if watch:
            top = "-"
            try:
                with open(watch) as f:
                    for ln in f:
                        if ln.startswith("top "):
                            top = ln.split()[1]
                            break
            except OSError:
                top = "(missing)"
            line += " FILE=" + top
        with open(log, "a") as f:
            f.write(line + "\n")

    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bind and listen under a temporary name, then rename: the tests wait for `path` to exist
    # and connect at once, and a socket file that exists before listen() refuses them.
    tmp = path + ".tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    srv.bind(tmp)
    os.chmod(tmp, 0o600)
    srv.listen(1)
    os.rename(tmp, path)
    # Bounded in time whatever the test does: gone after 5 minutes.
    signal.signal(signal.SIGALRM, lambda *_: os._exit(0))
    signal.alarm(300)
    while True:
        conn, _ = srv.accept()
        buf = b""
        frozen = False
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    raw = raw.split(b"\xff")[-1].strip()
                    if not raw:
                        continue
                    try:
                        req = json.loads(raw)
                    except ValueError:
                        record("(bad json)")
                        continue
                    cmd = req.get("execute", "?")
                    record(cmd)
                    if mode == "mute":
                        continue
                    if cmd == "guest-sync-delimited":
                        if mode == "garbage":
                            conn.sendall(b"\xffthis is not json\n")
                            continue
                        if stale:
                            conn.sendall(b'{"return": 7}\n{"return": {}}\n')
                        reply = {"return": req["arguments"]["id"]}
                        conn.sendall(b"\xff" + json.dumps(reply).encode() + b"\n")
                    elif cmd == "guest-fsfreeze-freeze":
                        if mode == "refuse":
                            reply = {"error": {"class": "GenericError",
                                               "desc": "stand-in refuses \"freeze\""}}
                        else:
                            if mode == "hang":
                                time.sleep(hang)
                            frozen = True
                            reply = {"return": 2}
                        conn.sendall(json.dumps(reply).encode() + b"\n")
                    elif cmd == "guest-fsfreeze-thaw":
                        reply = {"return": 2 if frozen else 0}
                        frozen = False
                        conn.sendall(json.dumps(reply).encode() + b"\n")
                    else:
                        reply = {"error": {"class": "CommandNotFound",
                                           "desc": "The command %s has not been found" % cmd}}
                        conn.sendall(json.dumps(reply).encode() + b"\n")


if __name__ == "__main__":
    main()
