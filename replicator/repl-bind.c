/* Mailbox bindings per link (MBOX ids), shared by the streamer and by
 * forwards; apart so that both use one table and one rule for when a
 * binding is settled. */
#include "replicator/repl-stream-private.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "replicator/repl-mm.h"
#include "replicator/repl-peer.h"
#include "replicator/repl-sync.h"

/* ---- Bindings ---- */

void binds_clear(struct cl_peer *p, bool keep_pending)
{
	size_t kept = 0;
	for (size_t i = 0; i < p->binds.count; i++) {
		struct cl_bind *b = p->binds.items[i];
		if (keep_pending &&
		    (b->state == CL_BIND_PENDING || b->waiting != NULL || b->relays != NULL)) {
			p->binds.items[kept++] = b;
			continue;
		}
		free(b);
	}
	p->binds.count = kept;
}

struct cl_bind *cl_bind_get(struct cl_peer *p, const struct guid *mailbox)
{
	for (size_t i = 0; i < p->binds.count; i++)
		if (guid_equal(&p->binds.items[i]->guid, mailbox))
			return p->binds.items[i];
	if (p->binds.count >= CL_MAX_BINDINGS) {
		/* Ids are cheap to rebind; forget the settled ones. */
		binds_clear(p, true);
		p->selected_id = 0;
	}
	struct cl_bind *b = xcalloc(1, sizeof(*b));
	b->guid = *mailbox;
	b->id = CL_ID_BASE + p->next_id++ % CL_ID_BASE;
	ARRAY_PUSH(&p->binds, b);
	return b;
}

struct bind_ctx {
	struct cl_peer *p;
	struct cl_bind *b;
	char user[STOR_MAX_USER_LEN + 1];
};

static void bind_cb(struct proto_conn *conn, enum proto_reply_kind kind,
		    const struct proto_cmd *line, void *ctx)
{
	struct bind_ctx *bc = ctx;
	if (kind == PROTO_REPLY_DATA)
		return;
	struct cl_peer *p = bc->p;
	struct cl_bind *b = bc->b;
	if (kind != PROTO_REPLY_DONE) {
		/* The link is going down: link_down resets everything. */
		free(bc);
		return;
	}
	if (strcmp(line->name, "OK") == 0) {
		const struct proto_arg *a;
		b->state = CL_BIND_BOUND;
		if ((a = proto_code_value(line, "UIDNEXT")) != NULL)
			(void)proto_arg_u32(a, &b->peer_uidnext);
		if ((a = proto_code_value(line, "HIGHESTMODSEQ")) != NULL)
			(void)proto_arg_u64(a, INT64_MAX, &b->peer_modseq);
		if (b->stream_wants) {
			b->stream_wants = false;
			struct stor_mailbox mb;
			const char *err;
			int r = stor_mailbox_get_by_guid(p->cl->repl.db, &b->guid, &mb, &err);
			if (r > 0 && b->peer_modseq > mb.highestmodseq) {
				/* The peer has changes we never made: two
				 * masters wrote (a partition, a failover). */
				log_info("replication: %s mailbox %s is ahead on %u: resync",
					 bc->user, mb.name, p->sid);
				b->state = CL_BIND_FAILED;
				cl_mark_dirty(p, bc->user);
			} else {
				b->sent_modseq = b->peer_modseq;
				b->stream_ready = true;
			}
			if (r > 0)
				stor_mailbox_free(&mb);
		}
	} else {
		log_info("replication: binding a mailbox of %s on %u: %s %s: resync", bc->user,
			 p->sid, line->name, line->text != NULL ? line->text : "");
		b->state = CL_BIND_FAILED;
		cl_mark_dirty(p, bc->user);
	}
	p->blocked = false;
	cl_fwd_bind_settled(p, b);
	free(bc);
}

void cl_bind_send(struct cl_peer *p, struct cl_bind *b, const struct stor_mailbox *mb,
		  bool for_stream)
{
	struct bind_ctx *bc = xcalloc(1, sizeof(*bc));
	bc->p = p;
	bc->b = b;
	snprintf(bc->user, sizeof(bc->user), "%s", mb->user);
	b->state = CL_BIND_PENDING;
	b->stream_wants = for_stream;
	b->stream_ready = false;
	if (p->selected_id == b->id)
		p->selected_id = 0; /* MBOX replaces the mapping (SPEC 6.1) */
	struct proto_wr *w = proto_conn_cmd_begin(p->conn, "MBOX");
	proto_wr_u64(w, b->id);
	proto_wr_cstr(w, mb->user);
	proto_wr_cstr(w, mb->name);
	proto_wr_u64(w, mb->uidvalidity);
	proto_wr_guid(w, &mb->guid);
	proto_conn_cmd_send(p->conn, CL_STREAM_TIMEOUT_MS, bind_cb, bc);
}

static void select_cb(struct proto_conn *conn, enum proto_reply_kind kind,
		      const struct proto_cmd *line, void *ctx)
{
	struct cl_peer *p = ctx;
	if (kind == PROTO_REPLY_DONE && strcmp(line->name, "OK") != 0) {
		log_warnx("replication: SELECT refused by %u: %s", p->sid,
			  line->text != NULL ? line->text : "");
		p->selected_id = 0;
	}
}

void cl_select(struct cl_peer *p, const struct cl_bind *b)
{
	if (p->selected_id == b->id)
		return;
	struct proto_wr *w = proto_conn_cmd_begin(p->conn, "SELECT");
	proto_wr_u64(w, b->id);
	proto_conn_cmd_send(p->conn, CL_STREAM_TIMEOUT_MS, select_cb, p);
	p->selected_id = b->id;
}
