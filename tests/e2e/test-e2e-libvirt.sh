#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# End to end through libvirt (issue 18 item 1): libvirt's own daemon, from Debian's packages,
# boots a guest whose disk is the element `cowchain disk-xml` printed.
#
#   1. a tiny guest image (tests/e2e/guest-lib.sh) imported as template "base" of a pool made
#      with `pool init --group G`; clone vm1; the plugin serves it on POOL/cowchain.sock (0660,
#      group G), as root
#   2. libvirtd in session mode as an unprivileged user in G (the user QEMU runs as): private
#      configuration, runtime and state directories under $WORK (XDG_*), the qemu driver, TCG
#      (domain type 'qemu'), bounded by timeout and stopped by PID
#   3. virsh define + start a domain (direct kernel boot) whose disk is `disk-xml vm1`; the
#      guest powers off; its console and then its disk (nbdcopy + debugfs, as
#      test-e2e-guest-boot checks them) show it booted from the clone and wrote to it
#   4. `disk-xml vm1@s1 --dev vdb` attached with virsh attach-device --config: libvirt keeps it
#      read-only; the guest boots again from vm1 and finds what it wrote the first time
#   5. `scripts/lab 1 --libvirt`, as that user on its own pool: the lab's guest is defined and
#      started through virsh, reaches its shell, shows in --status, and --down removes it
#
# A daemon that cannot run on this machine is a machine limit, named with its exact error.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST_TIMEOUT=${GUEST_TIMEOUT:-120}
SERVER_TIMEOUT=${SERVER_TIMEOUT:-600}
# shellcheck source=tests/lib/functions.sh
source "$HERE/../lib/functions.sh"
# shellcheck source=tests/e2e/guest-lib.sh
source "$HERE/guest-lib.sh"

guest_requires
for t in libvirtd virsh setpriv useradd groupadd nbdcopy debugfs e2fsck; do
  requires "$t"
done
requires_plugin
requires_cowchain
[ "$(id -u)" = 0 ] || machine_limit "not root" "the test makes a user for the libvirt session daemon"

# --- a user for libvirt's session daemon, in the pool's group -----------------------------------
LVUSER=cclv$$
LVGROUP=cclvg$$
groupadd "$LVGROUP"
on_exit "groupdel '$LVGROUP' 2>/dev/null"
useradd -M -N -G "$LVGROUP" -s /bin/sh -d "$WORK/lv/home" "$LVUSER"
# At exit: whatever still runs as this test's own user (a guest libvirt left running,
# virtlogd), by PID, then the user.
reap_user() {
  local p pids _
  for _ in 1 2; do
    pids=$(pgrep -u "$LVUSER" || true)
    [ -n "$pids" ] || break
    for p in $pids; do
      kill "$p" 2>/dev/null || true
    done
    sleep 1
  done
  for p in $(pgrep -u "$LVUSER" || true); do
    kill -9 "$p" 2>/dev/null || true
  done
  userdel "$LVUSER" 2>/dev/null || true
}
on_exit reap_user
LVUID=$(id -u "$LVUSER")
LVGID=$(id -g "$LVUSER")
chmod 711 "$WORK" # the user reaches its own directories and the pool (which is 2750, group G)
mkdir -p "$WORK/lv/home" "$WORK/lv/run" "$WORK/guest"
chown "$LVUSER" "$WORK/lv/home" "$WORK/lv/run" "$WORK/guest"
chmod 700 "$WORK/lv/run"
chmod 755 "$WORK/lv"
# as_user CMD...: CMD as the libvirt user, with the daemon's private XDG directories; setpriv
# execs (no PAM session, no extra process), so a PID we start is the command's own.
LVENV=(env -i "PATH=/usr/sbin:/usr/bin:/sbin:/bin" "HOME=$WORK/lv/home" "USER=$LVUSER"
  "XDG_CONFIG_HOME=$WORK/lv/home/config" "XDG_CACHE_HOME=$WORK/lv/home/cache"
  "XDG_DATA_HOME=$WORK/lv/home/data" "XDG_STATE_HOME=$WORK/lv/home/state"
  "XDG_RUNTIME_DIR=$WORK/lv/run" "LIBVIRT_DEFAULT_URI=qemu:///session" "LIBVIRT_AUTOSTART=0")
as_user() {
  setpriv --reuid="$LVUID" --regid="$LVGID" --init-groups "${LVENV[@]}" "$@"
}
vsh() {
  timeout 120 setpriv --reuid="$LVUID" --regid="$LVGID" --init-groups "${LVENV[@]}" \
    virsh -c qemu:///session "$@"
}

# --- 1. guest image, pool, server -------------------------------------------------------------
say "kernel $GUEST_KERNEL; building the initramfs and the root image"
GUEST_INITRD=$WORK/guest/initrd.gz
guest_make_initramfs "$GUEST_INITRD" || fail "could not build the initramfs"
chmod 644 "$GUEST_INITRD"
guest_make_rootfs "$WORK/root.img" 48M || fail "could not build the root image"
[ -r "$GUEST_KERNEL" ] && setpriv --reuid="$LVUID" --regid="$LVGID" --init-groups test -r "$GUEST_KERNEL" ||
  fail "the kernel $GUEST_KERNEL is not readable by an unprivileged user"
cc pool init --group "$LVGROUP"
cc template import base "$WORK/root.img"
template_sum
cc clone create vm1 --from base
# The pool's own socket (the plugin gives it the pool's group), not the harness's $WORK/sockN.
SOCK=$POOL/cowchain.sock
timeout "$SERVER_TIMEOUT" "${SERVER_ENV[@]}" nbdkit -f -U "$SOCK" -P "$WORK/nbdkit.pid" "$PLUGIN" \
  pool="$POOL" 2>"$WORK/nbdkit.log" &
SERVER_LOGS+=("$WORK/nbdkit.log")
SERVER_LOG=$WORK/nbdkit.log
for _ in $(seq 300); do
  [ -s "$WORK/nbdkit.pid" ] && break
  sleep 0.1
done
[ -s "$WORK/nbdkit.pid" ] || fail "nbdkit did not start: $(cat "$WORK/nbdkit.log")"
SERVER_PID=$(cat "$WORK/nbdkit.pid")
SERVER_PIDS+=("$SERVER_PID")
[ "$(stat -c '%a %G' "$SOCK")" = "660 $LVGROUP" ] || fail "socket is $(stat -c '%a %G' "$SOCK")"

# --- 2. libvirt's daemon -------------------------------------------------------------------------
say "libvirtd (session, as $LVUSER)"
DAEMON_LOG=$WORK/libvirtd.log
timeout "$SERVER_TIMEOUT" setpriv --reuid="$LVUID" --regid="$LVGID" --init-groups "${LVENV[@]}" \
  libvirtd >"$DAEMON_LOG" 2>&1 &
DAEMON_WRAPPER=$!
stop_daemon() {
  local i
  [ -n "${DAEMON_PID:-}" ] || return 0
  vsh destroy cc-e2e-vm1 >/dev/null 2>&1 || true
  kill "$DAEMON_PID" 2>/dev/null || true
  for i in $(seq 100); do
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=
}
# Stop order: the lab (its domain, its server), our domain, then the daemon.
stop_all() {
  [ -z "${LABPOOL:-}" ] || lab_down
  stop_daemon
}
on_stop stop_all
print_logs() {
  local f
  [ "$TEST_RC" -ne 0 ] && [ "$TEST_RC" -ne 77 ] || return 0
  for f in "$DAEMON_LOG" "$WORK"/guest/*.console "$WORK"/lv/home/cache/libvirt/qemu/log/*.log \
    "$WORK"/lab.out; do
    [ -s "$f" ] || continue
    echo "--- $f"
    tail -n 40 "$f"
  done
}
on_exit print_logs
for _ in $(seq 300); do
  [ -S "$WORK/lv/run/libvirt/libvirt-sock" ] && break
  if ! kill -0 "$DAEMON_WRAPPER" 2>/dev/null; then
    err=$(grep -E ': error :' "$DAEMON_LOG" | tail -n 1 || true)
    [ -n "$err" ] || err=$(tail -n 1 "$DAEMON_LOG")
    machine_limit "libvirtd cannot run here" "$err"
  fi
  sleep 0.1
done
[ -S "$WORK/lv/run/libvirt/libvirt-sock" ] || fail "libvirtd did not open its socket in 30 s"
DAEMON_PID=$(pgrep -P "$DAEMON_WRAPPER" -x libvirtd) || fail "no libvirtd process"
vsh capabilities >"$WORK/caps.xml" || fail "virsh capabilities"
grep -q "<domain type='qemu'/>" "$WORK/caps.xml" || fail "libvirt's qemu driver offers no TCG domain"

# --- 3. a guest defined with disk-xml --------------------------------------------------------------
# boot_libvirt TAG [KERNEL-ARGS...]: start domain cc-e2e-vm1 and wait until it has powered off.
boot_libvirt() {
  local tag=$1 state i
  shift
  rm -f "$WORK/guest/$tag.console"
  guest_libvirt_xml cc-e2e-vm1 "$WORK/guest/vm1-disk.xml" "$WORK/guest/$tag.console" "$@" \
    >"$WORK/guest/$tag.xml"
  vsh undefine cc-e2e-vm1 >/dev/null 2>&1 || true # the previous boot's definition
  vsh define "$WORK/guest/$tag.xml" >/dev/null || fail "virsh define ($tag)"
  [ -z "${EXTRA_DISK:-}" ] || vsh attach-device cc-e2e-vm1 "$EXTRA_DISK" --config >/dev/null ||
    fail "virsh attach-device $EXTRA_DISK"
  vsh start cc-e2e-vm1 >/dev/null || fail "virsh start ($tag)"
  for i in $(seq $((GUEST_TIMEOUT * 5))); do
    state=$(vsh domstate cc-e2e-vm1 2>/dev/null) || state=gone
    [ "$state" = "shut off" ] && break
    sleep 0.2
  done
  [ "$state" = "shut off" ] || fail "guest $tag did not power off within $GUEST_TIMEOUT s ($state)"
}
console_has() {
  local tag=$1 line
  shift
  for line in "$@"; do
    tr -d '\r' <"$WORK/guest/$tag.console" | grep -qxF "GUEST: $line" ||
      fail "console of $tag lacks 'GUEST: $line'"
  done
}

say "booting vm1 through libvirt"
cc disk-xml vm1 >"$WORK/guest/vm1-disk.xml"
chmod 644 "$WORK/guest/vm1-disk.xml"
boot_libvirt first cowchain.id=vm1 cowchain.write=first-vm1
console_has first TEMPLATE-OK PREV-ID=none STATE=none "WROTE-ID=vm1" REMOUNT-RO-OK "DONE id=vm1"
vsh dumpxml cc-e2e-vm1 >"$WORK/dom.xml"
grep -q "<source protocol='nbd' name='vm1'[ >]" "$WORK/dom.xml" || fail "the domain's disk is not the NBD export"
grep -q "socket='$SOCK'" "$WORK/dom.xml" || fail "the domain's disk is not on the pool's socket"
# The disk itself, read through the server.
rm -f "$WORK/vm1.raw"
timeout 120 nbdcopy "$(uri vm1)" "$WORK/vm1.raw" || fail "nbdcopy vm1"
[ "$(debugfs -R 'cat /id' "$WORK/vm1.raw" 2>/dev/null)" = vm1 ] || fail "vm1's disk has no /id vm1"
[ "$(debugfs -R 'cat /state' "$WORK/vm1.raw" 2>/dev/null)" = first-vm1 ] || fail "vm1's disk: /state"
e2fsck -fn "$WORK/vm1.raw" >"$WORK/e2fsck.log" 2>&1 || fail "vm1's file system: $(cat "$WORK/e2fsck.log")"
[ -z "$(debugfs -R 'cat /id' "$WORK/root.img" 2>/dev/null)" ] || fail "the template image has an /id"
say "the guest booted from the clone and wrote to it; the template is unchanged"

# --- 4. a read-only snapshot attached as a second disk ---------------------------------------------
retry cc snapshot create vm1 s1
cc disk-xml vm1@s1 --dev vdb >"$WORK/guest/s1-disk.xml"
chmod 644 "$WORK/guest/s1-disk.xml"
EXTRA_DISK=$WORK/guest/s1-disk.xml boot_libvirt second cowchain.id=vm1 cowchain.write=second-vm1
console_has second TEMPLATE-OK PREV-ID=vm1 STATE=first-vm1 REMOUNT-RO-OK "DONE id=vm1"
vsh dumpxml cc-e2e-vm1 >"$WORK/dom2.xml"
python3 - "$WORK/dom2.xml" <<'PY' || fail "the snapshot disk is not a read-only NBD disk in the domain"
import sys, xml.etree.ElementTree as ET
d = ET.parse(sys.argv[1]).getroot()
disks = {x.find('target').get('dev'): x for x in d.findall('devices/disk')}
s = disks['vdb']
assert s.find('source').get('name') == 'vm1@s1' and s.find('readonly') is not None
assert disks['vda'].find('readonly') is None
PY
vsh undefine cc-e2e-vm1 >/dev/null || fail "virsh undefine"

# --- 5. scripts/lab --libvirt ------------------------------------------------------------------------
say "scripts/lab 1 --libvirt (as $LVUSER)"
LABPOOL=$WORK/guest/labpool
# The user may not reach the source or build tree (a checkout under /root is 0700): it runs
# copies of the lab, the guest library it sources, the CLI and the plugin.
LABTREE=$WORK/lv/tree
mkdir -p "$LABTREE/scripts" "$LABTREE/tests/e2e" "$LABTREE/bin"
cp "$SRCDIR/scripts/lab" "$LABTREE/scripts/"
cp "$SRCDIR/tests/e2e/guest-lib.sh" "$LABTREE/tests/e2e/"
cp "$COWCHAIN" "$PLUGIN" "$LABTREE/bin/"
chmod -R a+rX "$LABTREE"
lab() {
  timeout 300 setpriv --reuid="$LVUID" --regid="$LVGID" --init-groups "${LVENV[@]}" \
    "COWCHAIN=$LABTREE/bin/$(basename "$COWCHAIN")" "PLUGIN=$LABTREE/bin/$(basename "$PLUGIN")" \
    "GUEST_KERNEL=$GUEST_KERNEL" bash "$LABTREE/scripts/lab" "$@" --pool "$LABPOOL"
}
lab_down() {
  [ -d "$LABPOOL/lab" ] && lab --down >>"$WORK/lab.out" 2>&1
  return 0
}
lab 1 --libvirt --make-template >"$WORK/lab.out" 2>&1 || fail "scripts/lab 1 --libvirt: $(tail -n 5 "$WORK/lab.out")"
for _ in $(seq $((GUEST_TIMEOUT * 5))); do
  tr -d '\r' <"$LABPOOL/lab/lab1.console" 2>/dev/null | grep -q "GUEST: LAB-READY" && break
  sleep 0.2
done
tr -d '\r' <"$LABPOOL/lab/lab1.console" | grep -q "GUEST: LAB-READY" || fail "the lab guest did not come up"
[ "$(vsh domstate cowchain-lab1)" = running ] || fail "the lab guest is not a running libvirt domain"
[ -S "$LABPOOL/lab/lab1.console.sock" ] || fail "the lab guest has no console socket"
vsh dumpxml cowchain-lab1 >"$WORK/lab1.xml" || fail "virsh dumpxml cowchain-lab1"
grep -q "<source protocol='nbd' name='lab1'[ >]" "$WORK/lab1.xml" || fail "lab1's disk is not the NBD export: $(cat "$WORK/lab1.xml")"
lab --status >"$WORK/status.out" 2>&1 || fail "lab --status failed: $(cat "$WORK/status.out")"
grep -q "lab1: running (libvirt domain cowchain-lab1)" "$WORK/status.out" || fail "lab --status: $(cat "$WORK/status.out")"
lab --down >>"$WORK/lab.out" 2>&1 || fail "lab --down: $(tail -n 5 "$WORK/lab.out")"
vsh dominfo cowchain-lab1 >/dev/null 2>&1 && fail "lab --down left the domain defined"
pid=$DAEMON_PID
stop_daemon
! kill -0 "$pid" 2>/dev/null || fail "libvirtd $pid did not exit"
check_template_unchanged
