# Compatibility shim for tests written against the old path (tests/lib/functions.sh is the library).
source "$(dirname "${BASH_SOURCE[0]}")/../lib/functions.sh"
