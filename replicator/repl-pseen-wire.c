/* Private \Seen on the wire between nodes (repl-pseen.h): a streamed
 * PSEEN applied by a replica, a forwarded SEEN-OF STORE's answer.  Apart
 * from repl-pseen.c so that the change seam needs nothing of protocol/. */
#include "replicator/repl-pseen.h"

#include <string.h>

#include "storage/storage-pseen.h"

void repl_pseen_apply_streamed(struct stor_db *db, const struct guid *mailbox,
			       const struct proto_cmd *cmd, repl_pseen_fits_fn *fits, void *ctx,
			       struct repl_pseen_reply *reply_r)
{
	struct proto_pseen p;
	const char *err;
	memset(reply_r, 0, sizeof(*reply_r));
	int cr = proto_read_pseen(cmd, PROTO_PSEEN_GIVEN, &p, &err);
	if (cr != PROTO_CODEC_OK) {
		reply_r->status = cr == PROTO_CODEC_LIMIT ? "NO" : "BAD";
		reply_r->code = cr == PROTO_CODEC_LIMIT ? "LIMIT" : "ARGS";
		reply_r->text = err;
		return;
	}
	reply_r->modseq = p.modseq;
	struct stor_pseen old;
	int have = stor_pseen_get(db, mailbox, &p.guid, p.user, &old, &err);
	if (have < 0) {
		reply_r->status = "NO";
		reply_r->code = "SERVERBUG";
		reply_r->text = err;
		return;
	}
	/* The test stor_pseen_put's replica mode makes: would it write? */
	bool changes = have == 0 || (old.modseq < p.modseq && old.time_ms <= p.time_ms);
	if (changes && !fits(ctx, p.modseq)) {
		reply_r->status = "NO";
		reply_r->text = "this copy spent the modseq itself: the mailboxes need a sync";
		reply_r->spent = true;
		return;
	}
	struct stor_pseen_change c = { p.guid, p.seen, p.modseq, p.time_ms };
	stor_pseen_list written = ARRAY_INIT;
	if (stor_pseen_put(db, mailbox, p.user, STOR_PSEEN_REPLICA, &c, 1, NULL, &written,
			   &err) < 0) {
		reply_r->status = "NO";
		reply_r->code = "SERVERBUG";
		reply_r->text = err;
		return;
	}
	reply_r->changed = written.count > 0;
	stor_pseen_list_free(&written);
	reply_r->status = "OK";
	reply_r->text = reply_r->changed ? "applied" : "already held";
}

void repl_pseen_forwarded_view(stor_msg_list *lines, const stor_uid_list *refused,
			       stor_msg_list *changed_r)
{
	for (size_t i = 0; i < lines->count; i++) {
		bool was_refused = false;
		for (size_t j = 0; j < refused->count && !was_refused; j++)
			was_refused = refused->items[j] == lines->items[i].uid;
		if (was_refused)
			stor_msg_free(&lines->items[i]);
		else
			ARRAY_PUSH(changed_r, lines->items[i]);
	}
	lines->count = 0;
}
