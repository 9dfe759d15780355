/* SPDX-License-Identifier: BSD-3-Clause */
/* cowchain pool: a client of the QEMU guest agent, for application-consistent snapshots
 * (`snapshot create ... --quiesce SOCKET`, docs/POOL.md section 6.3).
 *
 * The agent listens on a QEMU chardev socket (AF_UNIX; `-chardev socket,path=S,server=on,
 * wait=off -device virtserialport,chardev=...,name=org.qemu.guest_agent.0`).  We speak three
 * commands of its protocol (JSON objects, one per line): guest-sync-delimited, to learn that
 * the agent answers and to drop any stale reply; guest-fsfreeze-freeze before the snapshot;
 * guest-fsfreeze-thaw after it.  Every wait is bounded.  A guest left frozen stops writing,
 * so thaw is sent whatever happened to the freeze (a refused or timed-out freeze included),
 * and a thaw that gets no answer is an error that says the guest may still be frozen.
 *
 * Functions return 0 (freeze: the number of file systems the agent froze) or a negative errno
 * after cc_error_set(), with a message naming the socket.
 */
#ifndef COWCHAIN_POOL_QGA_H
#define COWCHAIN_POOL_QGA_H

/* How long each step may take, in milliseconds (the sync is short: an agent that does not
 * answer it is not running; a freeze flushes the guest's dirty pages, which can take long). */
#define CC_QGA_SYNC_MS 5000
#define CC_QGA_FREEZE_MS 30000
#define CC_QGA_THAW_MS 10000

struct cc_qga;

/* Connect to the agent at path and synchronise with it (guest-sync-delimited). */
int cc_qga_open(const char *path, int timeout_ms, struct cc_qga **out);
/* guest-fsfreeze-freeze.  On any failure the guest is thawed before returning (the error is
 * the freeze's; a thaw that fails too is added to the message). */
int cc_qga_freeze(struct cc_qga *q, int timeout_ms);
/* guest-fsfreeze-thaw: the number of file systems thawed. */
int cc_qga_thaw(struct cc_qga *q, int timeout_ms);
void cc_qga_close(struct cc_qga *q);

#endif
