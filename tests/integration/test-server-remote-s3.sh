#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# A remote template read from an S3 bucket (issue 17): s3rver (a local S3 server, from the npm
# registry, installed by scripts/setup) on 127.0.0.1, the template uploaded with boto3, nbdkit's
# S3 plugin (read-only) in front of it on a unix socket, and cowchain reading that export as a
# template: a clone reads identical to the image, and its writes stay local.
source "$(dirname "$0")/../lib/functions.sh"
requires_plugin
requires_cowchain
requires qemu-img
requires qemu-io
S3RVER=${S3RVER:-/usr/local/lib/cowchain-s3rver/node_modules/.bin/s3rver}
[ -x "$S3RVER" ] || fail "s3rver not installed: run scripts/setup"
[ -e /usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-S3-plugin ] ||
  fail "nbdkit's S3 plugin is missing: run scripts/setup (nbdkit-plugin-python)"
/usr/bin/python3 -c 'import boto3' || fail "python3-boto3 is missing: run scripts/setup"

make_template_file "$WORK/base.raw"
mkdir "$WORK/s3"
: >"$WORK/s3rver.log"
# Port 0: the kernel picks a free port, s3rver says which.
timeout "$SERVER_TIMEOUT" "$S3RVER" -d "$WORK/s3" -a 127.0.0.1 -p 0 --configure-bucket tmpl \
  >"$WORK/s3rver.log" 2>&1 &
S3PID=$!
SERVER_PIDS+=("$S3PID")
for i in $(seq 200); do
  PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/s3rver.log" || true)
  [ -n "$PORT" ] && break
  sleep 0.1
done
[ -n "$PORT" ] || { cat "$WORK/s3rver.log" >&2; fail "s3rver did not start"; }
say "s3rver on 127.0.0.1:$PORT"
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER AWS_DEFAULT_REGION=us-east-1
/usr/bin/python3 - "$PORT" "$WORK/base.raw" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:" + sys.argv[1])
s3.upload_file(sys.argv[2], "tmpl", "base.raw")
assert s3.head_object(Bucket="tmpl", Key="base.raw")["ContentLength"] == 64 << 20
PY

rm -f "$WORK/s3.sock"
timeout "$SERVER_TIMEOUT" nbdkit -f -r -U "$WORK/s3.sock" -P "$WORK/s3nbd.pid" S3 \
  endpoint-url="http://127.0.0.1:$PORT" bucket=tmpl key=base.raw \
  access-key=S3RVER secret-key=S3RVER 2>"$WORK/s3nbd.log" &
for i in $(seq 300); do [ -s "$WORK/s3nbd.pid" ] && break; sleep 0.1; done
[ -s "$WORK/s3nbd.pid" ] || { cat "$WORK/s3nbd.log" >&2; fail "nbdkit S3 did not start"; }
SERVER_PIDS+=("$(cat "$WORK/s3nbd.pid")")

cc pool init
cc template add s3base --uri "nbd+unix:///?socket=$WORK/s3.sock"
has '^s3base +remote' cc template list || fail "template list: kind remote"
cc clone create vm1 --from s3base
start_server
qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/base.raw" || fail "vm1 differs from the image"
qemu-io -f raw -c 'write -P 0x5c 8M 1M' "$(uri vm1)" >/dev/null
cp "$WORK/base.raw" "$WORK/ref.raw"
qemu-io -f raw -c 'write -P 0x5c 8M 1M' "$WORK/ref.raw" >/dev/null
qemu-img compare -f raw -F raw "$(uri vm1)" "$WORK/ref.raw" || fail "vm1 after a write"
/usr/bin/python3 - "$PORT" "$WORK/base.raw" <<'PY' || fail "the S3 object changed"
import sys, boto3, hashlib
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:" + sys.argv[1])
body = s3.get_object(Bucket="tmpl", Key="base.raw")["Body"].read()
assert hashlib.sha256(body).digest() == hashlib.sha256(open(sys.argv[2], "rb").read()).digest()
PY
say "ok"
