#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# `cowchain disk-xml` (issue 18 item 1) without libvirt: the element parses as XML and says
# what libvirt needs (network disk, protocol nbd, the export name, the pool's socket or a TCP
# host, raw, the target and its bus, read-only exactly for snapshots and templates); values are
# XML-escaped; bad input is one error line.  test-e2e-libvirt boots a guest from it.
source "$(dirname "$0")/../lib/functions.sh"
requires python3
setup_pool
cc snapshot create vm1 s1

# field XPATH-ish: python prints what the test compares.
xml() {
  python3 -c '
import sys, xml.etree.ElementTree as ET
d = ET.parse(sys.stdin).getroot()
s, h, t = d.find("source"), d.find("source/host"), d.find("target")
print(d.tag, d.get("type"), d.get("device"), d.find("driver").get("type"), s.get("protocol"),
      s.get("name"), h.get("transport"), h.get("socket"), h.get("name"), h.get("port"),
      t.get("dev"), t.get("bus"), "ro" if d.find("readonly") is not None else "rw")'
}
real=$(realpath "$POOL")
[ "$(cc disk-xml vm1 | xml)" = "disk network disk raw nbd vm1 unix $real/cowchain.sock None None vda virtio rw" ] ||
  fail "vm1: $(cc disk-xml vm1)"
[ "$(cc disk-xml vm1@s1 --dev sdb | xml)" = "disk network disk raw nbd vm1@s1 unix $real/cowchain.sock None None sdb scsi ro" ] ||
  fail "vm1@s1: $(cc disk-xml vm1@s1 --dev sdb)"
[ "$(cc disk-xml base --tcp 127.0.0.1:10809 | xml)" = "disk network disk raw nbd base None None 127.0.0.1 10809 vda virtio ro" ] ||
  fail "base --tcp: $(cc disk-xml base --tcp 127.0.0.1:10809)"
[ "$(cc disk-xml vm1 --tcp '[::1]:7000' | xml)" = "disk network disk raw nbd vm1 None None ::1 7000 vda virtio rw" ] ||
  fail "IPv6 --tcp"
[ "$(cc disk-xml vm1 --socket "/tmp/a&b'<c>.sock" | xml)" = "disk network disk raw nbd vm1 unix /tmp/a&b'<c>.sock None None vda virtio rw" ] ||
  fail "escaping: $(cc disk-xml vm1 --socket "/tmp/a&b'<c>.sock")"
expect_fail cc disk-xml nosuch
grep -q "nosuch" "$WORK/expect_fail.out" || fail "unknown export not named"
for bad in "--dev xyz" "--dev vd1" "--tcp host" "--tcp host:0" "--tcp host:99999" "--socket /s --tcp h:1"; do
  # shellcheck disable=SC2086
  expect_fail cc disk-xml vm1 $bad
  [ "$(wc -l <"$WORK/expect_fail.out")" = 1 ] || fail "disk-xml $bad: not one line: $(cat "$WORK/expect_fail.out")"
done
