/* What peers send this node outside a sync (SPEC.md 7.3 and 8):
 *  - changes their origin already made (option ORIGIN): the master's
 *    SAVE, STORE and EXPUNGE with UIDs and modseqs, and mailbox-list
 *    changes.  Applied as given, idempotently; a change that does not fit
 *    (a UID holding another message, or below UIDNEXT where a client may
 *    have seen the gap) is refused with UIDCONFLICT and the origin queues a
 *    resync.  Answered once durable here.
 *  - requests to this node as master (SAVE with UID 0, STORE, EXPUNGE from
 *    a node whose client asked): served like a local change when this node
 *    is the master of the granule at its epoch, else refused NOTMASTER so
 *    the sender asks the root again.
 *
 * This file: the answers (sent once the change is durable) and the
 * dispatch; the changes are applied in repl-replica-apply.c and the
 * requests served in repl-replica-serve.c. */
#include "replicator/repl-replica-private.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/log.h"
#include "lib/mail-limits.h"
#include "lib/xalloc.h"
#include "replicator/repl-mm.h"
#include "replicator/repl-sync.h"
#include "storage/acl-rights.h"
#include "storage/storage-acl.h"
#include "sync/sync.h"

struct answer *answer_new(struct repl_cluster *cl, struct cl_peer *p,
			  const struct proto_cmd *cmd)
{
	struct answer *a = xcalloc(1, sizeof(*a));
	a->cl = cl;
	a->sid = p->sid;
	a->gen = p->link_gen;
	snprintf(a->tag, sizeof(a->tag), "%s", cmd->tag);
	return a;
}

void answer_drop(struct answer *a)
{
	ARRAY_FREE(&a->uids);
	stor_string_list_free(&a->keywords);
	free(a->text);
	free(a->user);
	free(a->seen_of);
	free(a);
}

/* The link the command came on, if it is still the same one. */
struct proto_conn *answer_conn(const struct answer *a)
{
	struct cl_peer *p = cl_peer_find(a->cl, a->sid);
	if (p == NULL || p->conn == NULL || p->link_gen != a->gen)
		return NULL;
	return p->conn;
}

static void answer_send(struct answer *a)
{
	struct proto_conn *conn = answer_conn(a);
	if (conn != NULL)
		proto_conn_reply(conn, a->tag, a->status, a->code[0] != '\0' ? a->code : NULL,
				 a->text != NULL ? a->text : "done");
	answer_drop(a);
}

static void answer_durable(void *ctx, bool ok)
{
	struct answer *a = ctx;
	if (!ok) {
		snprintf(a->status, sizeof(a->status), "NO");
		snprintf(a->code, sizeof(a->code), "SERVERBUG");
		free(a->text);
		a->text = xstrdup("could not make the change durable");
	}
	answer_send(a);
}

/* Answers after the next group commit: whatever this command wrote is
 * durable then. */
void answer_later(struct answer *a, const char *status, const char *code,
		  const char *text)
{
	snprintf(a->status, sizeof(a->status), "%s", status);
	snprintf(a->code, sizeof(a->code), "%s", code != NULL ? code : "");
	a->text = xstrdup(text);
	stor_on_durable(a->cl->repl.db, answer_durable, a);
}

/* ---- Dispatch ---- */

void cl_replica_command(void *ctx, uint32_t sid, struct proto_conn *conn,
			const struct proto_cmd *cmd, const struct guid *selected)
{
	struct repl_cluster *cl = ctx;
	struct cl_peer *p = cl_peer_find(cl, sid);
	size_t npos;
	const char *verr;
	if (p == NULL || p->conn != conn) {
		proto_conn_reply(conn, cmd->tag, "NO", "TRYLATER", "link not ready");
		return;
	}
	bool message_cmd = proto_cmd_is(cmd, "SAVE") || proto_cmd_is(cmd, "STORE") ||
			   proto_cmd_is(cmd, "EXPUNGE") || proto_cmd_is(cmd, "COPY") ||
			   proto_cmd_is(cmd, "PSEEN");
	if (message_cmd && selected == NULL) {
		proto_conn_reply(conn, cmd->tag, "BAD", "NOSELECT", "no mailbox selected");
		return;
	}
	if (proto_cmd_validate(cmd, &npos, &verr) < 0) {
		proto_conn_reply(conn, cmd->tag, "BAD", "ARGS", verr);
		return;
	}
	if (cl_relay_command(cl, p, cmd, npos, selected))
		return;
	struct answer *a = answer_new(cl, p, cmd);
	const struct proto_arg *origin_arg = proto_cmd_option(cmd, npos, "ORIGIN");
	bool origin = origin_arg != NULL;
	uint32_t origin_sid = 0;
	if (origin)
		(void)proto_arg_u32(origin_arg, &origin_sid);
	if (proto_cmd_is(cmd, "CREATE") || proto_cmd_is(cmd, "DELETE") ||
	    proto_cmd_is(cmd, "RENAME") || proto_cmd_is(cmd, "SUBSCRIBE") ||
	    proto_cmd_is(cmd, "UNSUBSCRIBE") || proto_cmd_is(cmd, "ACL-PUT")) {
		const char *user;
		size_t ulen;
		if (cl->sync != NULL && proto_arg_str(&cmd->args[0], &user, &ulen) == 0 &&
		    repl_sync_holds(cl->sync, user, NULL)) {
			answer_later(a, "NO", "TRYLATER", "a resync of this user is running");
			return;
		}
		if (origin && proto_arg_str(&cmd->args[0], &user, &ulen) == 0)
			cl_relay_origin(cl, p, cmd, npos, origin_sid, user, NULL);
		if (proto_cmd_is(cmd, "ACL-PUT"))
			apply_acl_put(cl, a, cmd);
		else
			apply_list_change(cl, a, cmd, npos);
		return;
	}
	if (proto_cmd_is(cmd, "COPY")) {
		answer_later(a, "NO", "UNKNOWN-COMMAND", "send SAVE with the GUID instead");
		return;
	}
	if (selected == NULL) {
		answer_later(a, "BAD", "NOSELECT", "no mailbox selected");
		return;
	}
	struct stor_mailbox mb;
	struct cl_refusal refusal;
	const char *err;
	int r = stor_mailbox_get_by_guid(cl->repl.db, selected, &mb, &err);
	if (r <= 0) {
		answer_later(a, "NO", r < 0 ? "SERVERBUG" : "NONEXISTENT",
			     r < 0 ? err : "the selected mailbox is gone");
		return;
	}
	if (cl->sync != NULL && repl_sync_holds(cl->sync, mb.user, &mb.guid)) {
		/* The resync compares snapshots of this mailbox: the
		 * change comes again once it is done. */
		answer_later(a, "NO", "TRYLATER", "a resync of this mailbox is running");
	} else if (origin && cl_handover_check_origin(cl, cmd, npos, origin_sid, mb.user, &mb.guid,
						      &refusal) < 0) {
		/* Not its master's at our epoch: a resync settles it (any NO
		 * makes the sender queue one), nothing is passed on. */
		log_info("replication: %s: change from %u refused: %s %s", mb.user, origin_sid,
			 refusal.code, refusal.text);
		answer_later(a, refusal.status, refusal.code, refusal.text);
	} else if (origin) {
		cl_relay_origin(cl, p, cmd, npos, origin_sid, mb.user, &mb);
		if (proto_cmd_is(cmd, "SAVE"))
			apply_save(cl, a, cmd, &mb);
		else if (proto_cmd_is(cmd, "STORE"))
			apply_store(cl, a, cmd, npos, &mb);
		else if (proto_cmd_is(cmd, "PSEEN"))
			apply_pseen(cl, a, cmd, &mb);
		else
			apply_expunge(cl, a, cmd, npos, &mb);
	} else if (proto_cmd_is(cmd, "PSEEN")) {
		/* Outside a sync a record only travels as a change made. */
		answer_later(a, "BAD", "ARGS", "PSEEN outside a sync needs ORIGIN");
	} else if (!cl_is_master(cl, mb.user, &mb.guid)) {
		answer_later(a, "NO", "NOTMASTER", "not the master of this mailbox");
	} else if (repl_mm_stalled(cl->mm)) {
		/* A request read right after a stall was likely sent before
		 * it, and its sender has since asked the master that took
		 * over: made here too, the message would be at two UIDs, one
		 * of them taken from another message (acked-append 9706). */
		answer_later(a, "NO", "TRYLATER", "this node did not run for a while: its "
			     "mastership is being checked");
	} else if (cl_handover_check_forward(cl, cmd, npos, mb.user, &refusal) < 0) {
		answer_later(a, refusal.status, refusal.code, refusal.text);
	} else if (proto_cmd_is(cmd, "SAVE")) {
		serve_save(cl, a, cmd, npos, &mb);
	} else if (proto_cmd_is(cmd, "STORE")) {
		serve_store(cl, a, cmd, npos, &mb);
	} else {
		serve_expunge(cl, a, cmd, npos, &mb);
	}
	stor_mailbox_free(&mb);
}
