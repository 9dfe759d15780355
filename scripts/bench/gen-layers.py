#!/usr/bin/python3
# SPDX-License-Identifier: BSD-3-Clause
"""Write the qemu-io command files that fill the layers of the depth-series chains.

usage: gen-layers.py OUTDIR VIRTUAL_SIZE CLUSTER_SIZE LAYERS PERCENT SEED

For layer i (1..LAYERS) writes OUTDIR/layer-i.cmds: PERCENT % of the virtual disk's clusters,
chosen with random.Random(SEED + i) (so the same seed gives the same chains on any machine), each
written whole with the pattern byte 1 + (i - 1) % 255 in one `write -P` command.  The same file
is fed to qemu-io for the qcow2 chain and (through nbdkit) for the cowchain chain, so both chains
hold the same bytes at the same offsets.
"""
import os
import random
import sys


def main():
    outdir, vsize, csize, layers, pct, seed = sys.argv[1:7]
    vsize, csize, layers, seed = int(vsize), int(csize), int(layers), int(seed)
    nclusters = vsize // csize
    k = max(1, round(nclusters * float(pct) / 100))
    for i in range(1, layers + 1):
        rng = random.Random(seed + i)
        picks = sorted(rng.sample(range(nclusters), k))
        pat = 1 + (i - 1) % 255
        with open(os.path.join(outdir, f"layer-{i}.cmds"), "w") as f:
            for c in picks:
                f.write(f"write -q -P 0x{pat:02x} {c * csize} {csize}\n")
    print(k)


if __name__ == "__main__":
    main()
