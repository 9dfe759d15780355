#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""The QEMU side of scripts/bench/live: a minimal QMP client for qemu-storage-daemon.

  qmp.py SOCK snapshots N INTERVAL_MS NODE DIR
      N times, every INTERVAL_MS: blockdev-snapshot-sync of the current top (NODE first) onto a
      new qcow2 overlay DIR/snap-I.qcow2 (node s-I), as `virsh snapshot-create-as --disk-only`
      does.  Prints one line per snapshot: "I MS" (the command's round trip, in ms, timed
      inside this process: no process start counted).
  qmp.py SOCK snapshot NODE FILE NEW_NODE
      One blockdev-snapshot-sync of NODE onto a new qcow2 overlay FILE (node NEW_NODE).
  qmp.py SOCK commit TOP_NODE BASE_NODE
      block-commit of the active layer TOP_NODE into BASE_NODE (virsh blockcommit --active
      --pivot): job started, waited for READY, completed (pivot), waited for COMPLETED.
      Prints "MS" for the whole job.

Events QEMU sends between replies are skipped (job events are what commit waits for).
"""
import json
import socket
import sys
import time


class QMP:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(300)
        self.s.connect(path)
        self.f = self.s.makefile("rwb", buffering=0)
        self.events = []
        self.read()  # greeting
        self.cmd("qmp_capabilities")

    def read(self):
        line = self.f.readline()
        if not line:
            sys.exit("qmp: connection closed")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        while True:
            r = self.read()
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                sys.exit("qmp: %s: %s" % (name, r["error"].get("desc")))
            return r["return"]

    def wait_event(self, name, pred=lambda e: True):
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == name and pred(e):
                    del self.events[: i + 1]
                    return e
            self.events.append(self.read())


def main():
    a = sys.argv[1:]
    q = QMP(a[0])
    if a[1] == "snapshots":
        n, interval, node, d = int(a[2]), int(a[3]) / 1000.0, a[4], a[5]
        for i in range(1, n + 1):
            time.sleep(interval)
            t0 = time.monotonic()
            q.cmd("blockdev-snapshot-sync", **{"node-name": node,
                                                "snapshot-file": "%s/snap-%d.qcow2" % (d, i),
                                                "snapshot-node-name": "s-%d" % i,
                                                "format": "qcow2"})
            print(i, "%.3f" % ((time.monotonic() - t0) * 1000), flush=True)
            node = "s-%d" % i
    elif a[1] == "snapshot":
        q.cmd("blockdev-snapshot-sync", **{"node-name": a[2], "snapshot-file": a[3],
                                            "snapshot-node-name": a[4], "format": "qcow2"})
    elif a[1] == "commit":
        top, base = a[2], a[3]
        t0 = time.monotonic()
        q.cmd("block-commit", **{"job-id": "c", "device": top, "top-node": top,
                                 "base-node": base, "auto-finalize": True})
        q.wait_event("BLOCK_JOB_READY")
        q.cmd("job-complete", id="c")
        q.wait_event("BLOCK_JOB_COMPLETED")
        print("%.3f" % ((time.monotonic() - t0) * 1000), flush=True)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
