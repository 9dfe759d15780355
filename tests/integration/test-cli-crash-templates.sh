#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Crash injection for template promote / import / create / delete and clone delete: the same
# loop as test-cli-crash.sh (see there), on the other group of operations.
CRASH_GROUP=templates
source "$(dirname "$0")/test-cli-crash.sh"
