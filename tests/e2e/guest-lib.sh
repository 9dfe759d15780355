# SPDX-License-Identifier: BSD-3-Clause
# shellcheck shell=bash
# Shell helpers to build and boot tiny Linux guests from cowchain exports.  Sourced by
# tests/e2e/test-e2e-guest-boot.sh and scripts/lab; needs bash, no root-only tricks (no loop
# mounts, no /dev/nbd, no mknod):
#
#   guest_check_tools         say what is missing (non-zero) or nothing (zero)
#   guest_requires            the tests' check: fail if a tool is missing (see below)
#   guest_find_kernel         set GUEST_KERNEL, GUEST_KVER, GUEST_MODDIR (a Debian kernel)
#   guest_make_initramfs OUT  busybox + the virtio modules; mounts root= and switch_root's
#   guest_make_rootfs OUT [SIZE]
#                             an ext4 image (mke2fs -d) with busybox, /sbin/init (below) and
#                             template data the guest verifies
#   guest_qemu_argv NAME DRIVE CONSOLE ARGS...
#                             set the array GUEST_QEMU to a qemu-system-x86_64 command line
#   guest_libvirt_xml NAME DISK-XML CONSOLE ARGS...
#                             print the same guest as a libvirt domain (direct kernel boot)
#                             whose disk is DISK-XML (`cowchain disk-xml` output)
#
# The guest's /sbin/init reads its orders from the kernel command line:
#   cowchain.id=NAME      write NAME to /id and create /owners/NAME
#   cowchain.write=TEXT   write TEXT to /state (after printing the old /state), and new random
#                         data to /data.bin (cowchain.data=MiB, default 2) with its checksum in
#                         /data.sha256
#   cowchain.mode=lab     stay up with a shell on the serial console instead of powering off
#   cowchain.mode=hold    stay up, idle, with / read-only (the disk stays open in qemu)
#   cowchain.marker=TOKEN write TOKEN to /marker, sync, print MARKER-SYNCED
#   cowchain.mode=busy    stay up writing, / read-write, until killed: round K creates
#                         /busy/r.K holding "round K", deletes /busy/r.(K-8), rewrites
#                         /busy/big (1 MiB), syncs, prints BUSY-SYNCED=K
#   cowchain.expect=TOKEN print MARKER-OK if /marker holds TOKEN, else MARKER-BAD=what it holds
#   cowchain.synced=K     print BUSY-LAST= (the highest K of the /busy/r.K found, 0 if none) and
#                         BUSY-BAD= (how many /busy/r.J with J <= K do not hold "round J")
# and prints, on the serial console, lines starting "GUEST: ": TEMPLATE-OK (or TEMPLATE-BAD),
# JOURNAL-REPLAYED (only when the kernel recovered the root file system's journal at mount, as
# after a power cut), PREV-ID=, STATE=, OWNERS=, DATA-OK (or DATA-BAD) and DATA-SHA= (of the
# data found), WROTE-*=, REMOUNT-RO-OK, DONE (or HOLDING, LAB-READY, BUSY-SYNCED=).  Before
# powering off it remounts / read-only, so the file system on the disk is clean and debugfs
# reads it without a journal replay.
#
# Environment: GUEST_KERNEL (a vmlinuz; its modules must be in /lib/modules/VERSION),
# GUEST_BUSYBOX (a static busybox), GUEST_ACCEL (qemu accelerator, default tcg),
# GUEST_MEM (MiB, default 256).

GUEST_TEMPLATE_MARK=cowchain-e2e-template-v1
# Modules the guest needs before it can mount /dev/vda (ext4 is built into Debian's kernels;
# modules.dep supplies the dependencies, built-in ones are skipped).
GUEST_MODULES=(virtio_pci virtio_blk ext4)

guest_msg() {
  echo "guest-lib: $*" >&2
}

# guest_busybox: print the path of a statically linked busybox (an initramfs has no libc).
guest_busybox() {
  local bb
  for bb in ${GUEST_BUSYBOX:-} /bin/busybox /usr/bin/busybox; do
    [ -x "$bb" ] || continue
    # ldd exits non-zero on a static executable.
    if ! ldd "$bb" >/dev/null 2>&1; then
      echo "$bb"
      return 0
    fi
  done
  return 1
}

# guest_find_kernel: the newest /boot/vmlinuz-* that has a readable module tree.
guest_find_kernel() {
  local k ver
  if [ -n "${GUEST_KERNEL:-}" ]; then
    k=$GUEST_KERNEL
    ver=${GUEST_KVER:-$(basename "$k" | sed 's/^vmlinuz-//')}
  else
    k=
    for k in $(printf '%s\n' /boot/vmlinuz-* | sort -V -r); do
      ver=${k#/boot/vmlinuz-}
      [ -r "$k" ] && [ -f "/lib/modules/$ver/modules.dep" ] && break
      k=
    done
  fi
  [ -n "$k" ] && [ -r "$k" ] || return 1
  [ -f "/lib/modules/$ver/modules.dep" ] || return 1
  GUEST_KERNEL=$k
  GUEST_KVER=$ver
  GUEST_MODDIR=/lib/modules/$ver
}

guest_check_tools() {
  local missing=() t
  for t in qemu-system-x86_64 mke2fs debugfs cpio gzip; do
    command -v "$t" >/dev/null 2>&1 || missing+=("$t")
  done
  guest_busybox >/dev/null || missing+=("busybox (static: busybox-static)")
  guest_find_kernel || missing+=("a kernel: /boot/vmlinuz-* with /lib/modules (linux-image-cloud-amd64)")
  if [ ${#missing[@]} -gt 0 ]; then
    echo "missing: ${missing[*]}"
    return 1
  fi
}

# guest_requires: for the e2e tests (needs tests/lib/functions.sh): fail unless every tool
# above is there (scripts/setup installs them all) and set GUEST_KERNEL; skip, naming the
# limit, only when KVM was asked for (GUEST_ACCEL=kvm) and this machine has no usable /dev/kvm.
guest_requires() {
  local why
  why=$(guest_check_tools) || fail "$why (scripts/setup installs them)"
  guest_find_kernel
  case "${GUEST_ACCEL:-tcg}" in
    *kvm*)
      [ -r /dev/kvm ] && [ -w /dev/kvm ] ||
        machine_limit "no usable /dev/kvm" "GUEST_ACCEL=$GUEST_ACCEL asks for KVM; unset it for TCG"
      ;;
  esac
}

# guest_module_order: print the module files (relative to GUEST_MODDIR) to load, in load
# order: dependencies first, each once.  Modules built into the kernel print nothing.
guest_module_order() {
  local dep=$GUEST_MODDIR/modules.dep m line path deps i seen=" "
  local -a list
  for m in "${GUEST_MODULES[@]}"; do
    # modules.dep names files with '-' or '_' as the source had them; match both.
    line=$(grep -E "/${m//_/[-_]}\.ko(\.xz|\.zst|\.gz)?:" "$dep" | head -n 1) || true
    [ -n "$line" ] || continue
    path=${line%%:*}
    read -r -a deps <<<"${line#*:}"
    # modules.dep lists the deepest dependency last: load in reverse.
    list=()
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
      list+=("${deps[i]}")
    done
    list+=("$path")
    for path in "${list[@]}"; do
      case "$seen" in
        *" $path "*) ;;
        *)
          seen="$seen$path "
          echo "$path"
          ;;
      esac
    done
  done
}

# guest_busybox_links DIR BUSYBOX-PATH-IN-IMAGE: one symlink per applet in DIR/bin and
# DIR/sbin (init and linuxrc excepted: we bring our own init).
guest_busybox_links() {
  local dir=$1 target=$2 bb applet
  bb=$(guest_busybox)
  for applet in $("$bb" --list); do
    case "$applet" in
      init | linuxrc | busybox) continue ;;
    esac
    ln -sf "$target" "$dir/bin/$applet"
  done
}

# guest_make_initramfs OUT: a gzip'd newc cpio with busybox, the modules and an /init that
# loads them, waits (bounded) for root=, mounts it and switch_root's to its /sbin/init.
guest_make_initramfs() {
  local out=$1 dir m f n=0
  guest_find_kernel || {
    guest_msg "no kernel found"
    return 1
  }
  dir=$(mktemp -d "${TMPDIR:-/tmp}/cowchain-initramfs.XXXXXX")
  mkdir -p "$dir"/{bin,dev,proc,sys,newroot,lib/modules}
  ln -s bin "$dir/sbin"
  cp "$(guest_busybox)" "$dir/bin/busybox"
  guest_busybox_links "$dir" /bin/busybox
  : >"$dir/modules.order"
  for m in $(guest_module_order); do
    n=$((n + 1))
    f=$(basename "$m")
    case "$f" in
      *.ko) cp "$GUEST_MODDIR/$m" "$dir/lib/modules/$f" ;;
      *.ko.xz) xz -dc "$GUEST_MODDIR/$m" >"$dir/lib/modules/${f%.xz}" ;;
      *.ko.zst) zstd -qdc "$GUEST_MODDIR/$m" >"$dir/lib/modules/${f%.zst}" ;;
      *.ko.gz) gzip -dc "$GUEST_MODDIR/$m" >"$dir/lib/modules/${f%.gz}" ;;
    esac
    f=${f%.xz}
    f=${f%.zst}
    echo "${f%.gz}" >>"$dir/modules.order"
  done
  cat >"$dir/init" <<'EOF'
#!/bin/sh
# cowchain e2e initramfs: load the virtio modules, mount root=, switch_root.
export PATH=/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
fail() {
  echo "INITRAMFS-FAIL: $*"
  sync
  poweroff -f
  echo o >/proc/sysrq-trigger
  sleep 10
}
for m in $(cat /modules.order); do
  insmod "/lib/modules/$m" || fail "insmod $m"
done
root=/dev/vda
for w in $(cat /proc/cmdline); do
  case "$w" in
    root=/dev/*) root=${w#root=} ;;
  esac
done
i=0
while [ ! -b "$root" ]; do
  i=$((i + 1))
  [ $i -le 300 ] || fail "$root did not appear within 30 s"
  sleep 0.1
done
mount -t ext4 -o rw "$root" /newroot || fail "mount $root"
umount /proc /sys
mount -o move /dev /newroot/dev || fail "move /dev"
exec switch_root /newroot /sbin/init
fail "switch_root"
EOF
  chmod 755 "$dir/init"
  (cd "$dir" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) >"$out"
  local rc=$?
  rm -rf "$dir"
  return $rc
}

# guest_make_rootfs OUT [SIZE]: the template's root file system (ext4, default 48M) with
# busybox, /sbin/init, /etc/cowchain-template and 4 MiB of random data the guest checks.
guest_make_rootfs() {
  local out=$1 size=${2:-48M} dir rc
  dir=$(mktemp -d "${TMPDIR:-/tmp}/cowchain-rootfs.XXXXXX")
  mkdir -p "$dir"/{bin,sbin,dev,proc,sys,tmp,etc,owners,usr/share/cowchain}
  cp "$(guest_busybox)" "$dir/bin/busybox"
  guest_busybox_links "$dir" /bin/busybox
  echo "$GUEST_TEMPLATE_MARK" >"$dir/etc/cowchain-template"
  head -c 4M /dev/urandom >"$dir/usr/share/cowchain/blob"
  (cd "$dir/usr/share/cowchain" && sha256sum blob >blob.sha256)
  cat >"$dir/sbin/init" <<'EOF'
#!/bin/sh
# cowchain e2e guest: check the template's data, record who booted, power off.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
say() { echo "GUEST: $*"; }
id= write= mode=test data=2 marker= expect= synced=
for w in $(cat /proc/cmdline); do
  case "$w" in
    cowchain.id=*) id=${w#*=} ;;
    cowchain.write=*) write=${w#*=} ;;
    cowchain.mode=*) mode=${w#*=} ;;
    cowchain.data=*) data=${w#*=} ;;
    cowchain.marker=*) marker=${w#*=} ;;
    cowchain.expect=*) expect=${w#*=} ;;
    cowchain.synced=*) synced=${w#*=} ;;
  esac
done
if [ "$(cat /etc/cowchain-template 2>/dev/null)" = "@MARK@" ] &&
  (cd /usr/share/cowchain && sha256sum -c -s blob.sha256); then
  say TEMPLATE-OK
else
  say TEMPLATE-BAD
fi
# ext4 logs this (KERN_INFO: in the ring buffer, not on a quiet console) when the journal
# needed recovery at mount.
if dmesg | grep -q 'EXT4-fs (vda): recovery complete'; then say JOURNAL-REPLAYED; fi
if [ -n "$expect" ]; then
  got=$(cat /marker 2>/dev/null || echo none)
  if [ "$got" = "$expect" ]; then say MARKER-OK; else say "MARKER-BAD=$got"; fi
fi
if [ -n "$synced" ]; then
  last=0 bad=0
  for f in /busy/r.*; do
    [ -e "$f" ] || continue
    k=${f#/busy/r.}
    [ "$k" -le "$last" ] || last=$k
    if [ "$k" -le "$synced" ] && [ "$(cat "$f")" != "round $k" ]; then bad=$((bad + 1)); fi
  done
  say "BUSY-LAST=$last"
  say "BUSY-BAD=$bad"
fi
say "PREV-ID=$(cat /id 2>/dev/null || echo none)"
say "STATE=$(cat /state 2>/dev/null || echo none)"
say "OWNERS=$(ls /owners | tr '\n' ' ')"
if [ -f /data.bin ]; then
  if sha256sum -c -s /data.sha256; then say DATA-OK; else say DATA-BAD; fi
  say "DATA-SHA=$(cut -d' ' -f1 /data.sha256)"
else
  say "DATA-SHA=none"
fi
[ -z "$id" ] || { echo "$id" >/id && touch "/owners/$id" && say "WROTE-ID=$id"; }
if [ -n "$write" ]; then
  echo "$write" >/state && say "WROTE-STATE=$write"
  # Data spread over many clusters, new with every write.
  dd if=/dev/urandom of=/data.bin bs=64k count=$((data * 16)) 2>/dev/null &&
    sha256sum /data.bin >/data.sha256 && say "WROTE-DATA-SHA=$(cut -d' ' -f1 /data.sha256)"
fi
if [ -n "$marker" ]; then
  echo "$marker" >/marker && sync && say MARKER-SYNCED
fi
sync
if [ "$mode" = busy ]; then
  # A writer that never stops: every round changes metadata (a new file, a deleted one) and
  # data, then syncs, so the journal always holds commits and the disk always has writes.
  mkdir -p /busy
  k=0
  while :; do
    k=$((k + 1))
    echo "round $k" >"/busy/r.$k"
    rm -f "/busy/r.$((k - 8))"
    dd if=/dev/zero of=/busy/big bs=64k count=16 2>/dev/null
    sync
    say "BUSY-SYNCED=$k"
  done
fi
if [ "$mode" = lab ]; then
  say "LAB-READY id=$id (poweroff -f to stop)"
  while :; do
    setsid cttyhack sh -l
  done
fi
mount -o remount,ro / && say REMOUNT-RO-OK
if [ "$mode" = hold ]; then
  say "HOLDING id=$id"
  while :; do
    sleep 60
  done
fi
say "DONE id=$id"
poweroff -f
echo o >/proc/sysrq-trigger
sleep 10
EOF
  sed -i "s/@MARK@/$GUEST_TEMPLATE_MARK/" "$dir/sbin/init"
  chmod 755 "$dir/sbin/init"
  rm -f "$out"
  mke2fs -q -F -t ext4 -L cowchain-e2e -E root_owner=0:0 -d "$dir" "$out" "$size" >/dev/null
  rc=$?
  rm -rf "$dir"
  return $rc
}

# guest_qemu_argv NAME DRIVE CONSOLE [EXTRA-APPEND...]: set GUEST_QEMU to the command line
# of a guest called NAME booting GUEST_KERNEL + GUEST_INITRD with root disk DRIVE (an NBD URI
# or a file; raw), serial console to the file CONSOLE (or, with GUEST_CONSOLE_SOCKET set, to
# that unix socket too), kernel arguments EXTRA-APPEND.  GUEST_PIDFILE, if set, is passed to
# qemu as -pidfile.
guest_qemu_argv() {
  local name=$1 drive=$2 console=$3
  shift 3
  # no_timer_check: on a loaded host a TCG guest can fail the IO-APIC timer check and panic
  # ("IO-APIC + timer doesn't work!"), seen with load 9 on 2 cores.
  local append="console=ttyS0 root=/dev/vda rw panic=-1 quiet loglevel=3 mitigations=off no_timer_check"
  append+=" i8042.noaux i8042.nokbd i8042.nopnp $*"
  GUEST_QEMU=(qemu-system-x86_64
    -name "$name"
    -machine "accel=${GUEST_ACCEL:-tcg}"
    -m "${GUEST_MEM:-256}"
    -nodefaults -no-user-config -display none -monitor none -net none -no-reboot
    -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" -append "$append"
    -drive "file=${drive//,/,,},format=raw,if=virtio,cache=none")
  if [ -n "${GUEST_CONSOLE_SOCKET:-}" ]; then
    GUEST_QEMU+=(-chardev "socket,id=con0,path=$GUEST_CONSOLE_SOCKET,server=on,wait=off,logfile=$console"
      -serial chardev:con0)
  else
    GUEST_QEMU+=(-serial "file:$console")
  fi
  if [ -n "${GUEST_PIDFILE:-}" ]; then
    GUEST_QEMU+=(-pidfile "$GUEST_PIDFILE")
  fi
}

# guest_xml_escape TEXT: TEXT with & < > ' " escaped for XML.
guest_xml_escape() {
  local t=${1//&/&amp;}
  t=${t//</&lt;}
  t=${t//>/&gt;}
  t=${t//\'/&apos;}
  echo "${t//\"/&quot;}"
}

# guest_libvirt_xml NAME DISK-XML CONSOLE [EXTRA-APPEND...]: print a libvirt domain called NAME
# that boots GUEST_KERNEL + GUEST_INITRD with the kernel arguments of guest_qemu_argv, TCG
# (type 'qemu'; GUEST_ACCEL=kvm gives type 'kvm'), GUEST_MEM MiB, the disk element read from the
# file DISK-XML (as `cowchain disk-xml` prints it) and the serial console logged to the file
# CONSOLE (with GUEST_CONSOLE_SOCKET set, also on that unix socket).  Powering off ends it
# (ACPI on: without it libvirt passes -no-acpi and the guest's poweroff only halts).
guest_libvirt_xml() {
  local name=$1 disk=$2 console=$3
  shift 3
  local append="console=ttyS0 root=/dev/vda rw panic=-1 quiet loglevel=3 mitigations=off no_timer_check"
  append+=" i8042.noaux i8042.nokbd i8042.nopnp $*"
  local type=qemu
  [ "${GUEST_ACCEL:-tcg}" = kvm ] && type=kvm
  cat <<EOF
<domain type='$type'>
  <name>$(guest_xml_escape "$name")</name>
  <memory unit='MiB'>${GUEST_MEM:-256}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$(guest_xml_escape "$GUEST_KERNEL")</kernel>
    <initrd>$(guest_xml_escape "$GUEST_INITRD")</initrd>
    <cmdline>$(guest_xml_escape "$append")</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
$(sed 's/^/    /' "$disk")
EOF
  if [ -n "${GUEST_CONSOLE_SOCKET:-}" ]; then
    cat <<EOF
    <serial type='unix'>
      <source mode='bind' path='$(guest_xml_escape "$GUEST_CONSOLE_SOCKET")'/>
      <log file='$(guest_xml_escape "$console")'/>
      <target port='0'/>
    </serial>
EOF
  else
    cat <<EOF
    <serial type='file'>
      <source path='$(guest_xml_escape "$console")'/>
      <target port='0'/>
    </serial>
EOF
  fi
  cat <<EOF
    <memballoon model='none'/>
  </devices>
</domain>
EOF
}
