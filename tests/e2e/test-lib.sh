# Shared by the e2e tests (not by scripts/lab): progress lines with elapsed time, skip (77) and
# fail.  Set TEST_NAME before sourcing.
T0=$(date +%s)
say() {
  echo "$TEST_NAME: [$(($(date +%s) - T0))s] $*"
}
skip() {
  echo "$TEST_NAME: SKIP: $*"
  exit 77
}
fail() {
  echo "$TEST_NAME: FAIL: $*" >&2
  exit 1
}
