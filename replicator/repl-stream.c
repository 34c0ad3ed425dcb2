/* The persistent replication log and its streaming to each peer.
 *
 * The log (stor_log_*) holds one small entry per change this node made as
 * master or origin: "the messages of mailbox G changed", or a mailbox-list
 * change (CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE) with its
 * arguments.  Message entries carry no UIDs, flags or texts: the streamer
 * of a peer derives what to send from the store, as the changes of the
 * mailbox above the modseq the peer already has (stor_changes_since), in
 * modseq order, as SAVE (new to the peer, with the text), STORE (whole
 * flag state) and EXPUNGE commands with ORIGIN.  So entries can be
 * written before the change they announce (a crash between the two leaves
 * an entry that derives nothing), replaying an entry twice sends nothing
 * new, and a backlog of a thousand changes to one mailbox collapses into
 * one pass.  Sending in modseq order keeps what a replica holds a prefix of
 * the master's history, so the replica's HIGHESTMODSEQ (told by MBOX when a
 * link comes up) is exactly where to resume.
 *
 * Per peer, the cursor is the last entry whose commands were all answered;
 * it is stored lazily (a lost update only resends).  A peer further behind
 * than repl_log_max entries gets a full resync of every user instead and
 * no longer holds the log back: at once when it is linked (streaming goes
 * on with the new entries), when it comes back otherwise.
 *
 * Acknowledgements (SPEC.md 8.6).  An answered entry is not necessarily
 * held: the peer may have refused it (a conflict, a full disk).  The
 * stream goes on past a refusal (the user gets a resync, which settles
 * it), and what the peer really holds is tracked apart, for the waiters:
 * a peer holds entry S of user U when S <= cursor (every command up to S
 * answered) and U is not "unheld" there from an entry <= S on.  A user is
 * unheld from the first entry the peer refused (NO, BAD, a failed
 * binding), or from the cursor on for every user when the peer fell off
 * the log, until a resync of U with the peer, started after that, finds
 * both sides equal.  Per user, because each entry is one user's and a
 * resync settles a user as a whole: one user's conflict does not hold
 * back the acknowledgement of the others' changes.  A waiter completes
 * once sync_replicas peers hold its entry; when fewer healthy peers can,
 * it completes degraded (accept: OK, counted in under_replicated until
 * enough peers hold it; refuse: NO [UNAVAILABLE], the change stays).
 *
 * This file: streaming one entry, and links coming up and going down.
 * The log itself (its entries, appending with the repl_log_max bound,
 * stored cursors and trimming, the cluster's timers) is repl-log.c's;
 * what a peer holds (repl-peer-holds.c), bindings (repl-bind.c) and the
 * waiters (repl-waiters.c) have files of their own. */
#include "replicator/repl-stream-private.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "replicator/repl-sync.h"
#include "storage/storage-acl.h"
#include "storage/storage-pseen.h"
#include "sync/sync.h"

/* ---- Streaming one entry ---- */

/* ENTRY_REFUSED: done, but the peer does not hold it (a failed binding, a
 * local error): a resync of the user settles it. */
enum entry_result { ENTRY_DONE, ENTRY_BLOCKED, ENTRY_ERROR, ENTRY_REFUSED };

static int cmp_by_modseq(const void *a, const void *b)
{
	const struct stor_msg *x = a, *y = b;
	return x->modseq < y->modseq ? -1 : x->modseq > y->modseq;
}

static int cmp_tomb_modseq(const void *a, const void *b)
{
	const struct stor_tombstone *x = a, *y = b;
	if (x->modseq != y->modseq)
		return x->modseq < y->modseq ? -1 : 1;
	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

/* The tombstones up to modseq upto, as EXPUNGE lines of one modseq each.
 * GUIDS names the message each UID held: a replica whose UID holds another
 * message (the two copies were apart, and a resync renumbered one side)
 * keeps it.  BY USER marks a user's expunges, which a replica keeps as
 * such (SPEC.md 10.3, "A user's expunge"); the others are a sync's. */
static void send_expunges(struct cl_peer *p, uint64_t seq, const char *user,
			  const stor_tombstone_list *tombs, size_t *ti, uint64_t upto)
{
	while (*ti < tombs->count && tombs->items[*ti].modseq <= upto) {
		uint64_t m = tombs->items[*ti].modseq;
		bool by_user = tombs->items[*ti].user;
		size_t start = *ti;
		stor_uid_list uids = ARRAY_INIT;
		while (*ti < tombs->count && tombs->items[*ti].modseq == m &&
		       tombs->items[*ti].user == by_user && uids.count < CL_EXPUNGE_BATCH) {
			ARRAY_PUSH(&uids, tombs->items[*ti].uid);
			(*ti)++;
		}
		struct proto_expunge ex = { uids.items, uids.count, m };
		struct proto_wr *w = proto_conn_cmd_begin(p->conn, "EXPUNGE");
		proto_wr_expunge(w, &ex);
		wr_origin(p, w);
		/* The uidset lists UIDs in ascending order, as tombs are. */
		proto_wr_atom(w, "GUIDS");
		proto_wr_list_begin(w);
		for (size_t i = start; i < *ti; i++)
			proto_wr_guid(w, &tombs->items[i].guid);
		proto_wr_list_end(w);
		if (by_user) {
			proto_wr_atom(w, "BY");
			proto_wr_atom(w, "USER");
		}
		send_stream_cmd(p, seq, user);
		ARRAY_FREE(&uids);
	}
}

/* The private \Seen records with a modseq up to upto, one PSEEN line each
 * (SPEC.md 7.7 "Streaming"); acknowledged like any streamed change. */
static void send_pseens(struct cl_peer *p, uint64_t seq, const char *user,
			const stor_pseen_list *recs, size_t *ri, uint64_t upto)
{
	for (; *ri < recs->count && recs->items[*ri].modseq <= upto; (*ri)++) {
		const struct stor_pseen *r = &recs->items[*ri];
		struct proto_pseen ps;
		memset(&ps, 0, sizeof(ps));
		snprintf(ps.user, sizeof(ps.user), "%s", r->user);
		ps.guid = r->guid;
		ps.seen = r->seen;
		ps.modseq = r->modseq;
		ps.time_ms = r->time_ms;
		struct proto_wr *w = proto_conn_cmd_begin(p->conn, "PSEEN");
		proto_wr_pseen(w, &ps);
		wr_origin(p, w);
		send_stream_cmd(p, seq, user);
	}
}

/* Expunges and records up to upto, in modseq order between them, so that
 * what a replica holds stays a prefix of the master's history. */
static void send_upto(struct cl_peer *p, uint64_t seq, const char *user,
		      const stor_tombstone_list *tombs, size_t *ti, const stor_pseen_list *recs,
		      size_t *ri, uint64_t upto)
{
	for (;;) {
		uint64_t t = *ti < tombs->count ? tombs->items[*ti].modseq : UINT64_MAX;
		uint64_t r = *ri < recs->count ? recs->items[*ri].modseq : UINT64_MAX;
		uint64_t next = t < r ? t : r;
		if (next > upto || next == UINT64_MAX)
			return;
		if (t < r)
			send_expunges(p, seq, user, tombs, ti, t);
		else
			send_pseens(p, seq, user, recs, ri, r);
	}
}

static enum entry_result stream_mailbox(struct cl_peer *p, uint64_t seq, const struct cl_entry *e)
{
	struct stor_db *db = p->cl->repl.db;
	struct stor_mailbox mb;
	const char *err;
	int r = stor_mailbox_get_by_guid(db, &e->guid, &mb, &err);
	if (r < 0) {
		log_errorx("replication: %s", err);
		return ENTRY_ERROR;
	}
	if (r == 0)
		return ENTRY_DONE; /* deleted since: the DELETE entry follows */
	struct cl_bind *b = cl_bind_get(p, &e->guid);
	enum entry_result res = ENTRY_DONE;
	if (b->state == CL_BIND_PENDING) {
		res = ENTRY_BLOCKED;
	} else if (b->state == CL_BIND_FAILED) {
		res = ENTRY_REFUSED;
	} else if (b->state == CL_BIND_NONE || !b->stream_ready) {
		cl_bind_send(p, b, &mb, true);
		res = ENTRY_BLOCKED;
	} else if (mb.highestmodseq > b->sent_modseq) {
		stor_msg_list msgs;
		stor_tombstone_list tombs;
		if (stor_changes_since(db, &e->guid, b->sent_modseq, &msgs, &tombs, &err) < 0) {
			log_errorx("replication: %s", err);
			stor_mailbox_free(&mb);
			return ENTRY_ERROR;
		}
		if (msgs.count > 1)
			qsort(msgs.items, msgs.count, sizeof(msgs.items[0]), cmp_by_modseq);
		if (tombs.count > 1)
			qsort(tombs.items, tombs.count, sizeof(tombs.items[0]), cmp_tomb_modseq);
		stor_pseen_list recs;
		if (stor_pseen_since(db, &e->guid, b->sent_modseq, &recs, &err) < 0) {
			log_errorx("replication: %s", err);
			stor_msg_list_free(&msgs);
			ARRAY_FREE(&tombs);
			stor_mailbox_free(&mb);
			return ENTRY_ERROR;
		}
		cl_select(p, b);
		size_t ti = 0, ri = 0;
		struct buf text;
		buf_init(&text);
		for (size_t i = 0; i < msgs.count; i++) {
			const struct stor_msg *m = &msgs.items[i];
			send_upto(p, seq, e->user, &tombs, &ti, &recs, &ri, m->modseq);
			struct proto_wr *w;
			if (m->uid >= b->peer_uidnext) {
				buf_reset(&text);
				if (stor_text_read(db, &m->guid, 0, m->size, &text, &err) < 0) {
					log_errorx("replication: text of a message: %s", err);
					continue;
				}
				struct proto_save sv = {
					.date = m->internaldate, .tz = m->internaldate_tz,
					.uid = m->uid, .modseq = m->modseq, .guid = m->guid,
					.f = { m->flags, { m->keywords.items, m->keywords.count,
							   m->keywords.cap } },
					.text = text.data != NULL ? (const char *)text.data : "",
					.text_len = text.len,
				};
				w = proto_conn_cmd_begin(p->conn, "SAVE");
				proto_wr_save(w, &sv);
				sync_wr_stamps(w, &m->stamps);
				b->peer_uidnext = m->uid + 1;
			} else {
				uint32_t uid = m->uid;
				struct proto_store st = {
					.uids = &uid, .uid_count = 1, .modseq = m->modseq,
					.add = { m->flags, { m->keywords.items, m->keywords.count,
							     m->keywords.cap } },
					.replace = true,
				};
				w = proto_conn_cmd_begin(p->conn, "STORE");
				proto_wr_store(w, &st);
				sync_wr_stamps(w, &m->stamps);
				wr_origin(p, w);
				proto_wr_atom(w, "GUIDS");
				proto_wr_list_begin(w);
				proto_wr_guid(w, &m->guid);
				proto_wr_list_end(w);
				send_stream_cmd(p, seq, e->user);
				continue;
			}
			wr_origin(p, w);
			send_stream_cmd(p, seq, e->user);
		}
		send_upto(p, seq, e->user, &tombs, &ti, &recs, &ri, UINT64_MAX);
		stor_pseen_list_free(&recs);
		for (size_t i = 0; i < tombs.count; i++) {
			if (tombs.items[i].uid >= b->peer_uidnext)
				b->peer_uidnext = tombs.items[i].uid + 1;
		}
		buf_free(&text);
		stor_msg_list_free(&msgs);
		ARRAY_FREE(&tombs);
		b->sent_modseq = mb.highestmodseq;
	}
	stor_mailbox_free(&mb);
	return res;
}

static void stream_list_change(struct cl_peer *p, uint64_t seq, const struct cl_entry *e)
{
	struct proto_wr *w = NULL;
	switch (e->kind) {
	case CL_ENTRY_CREATE:
		w = proto_conn_cmd_begin(p->conn, "CREATE");
		proto_wr_cstr(w, e->user);
		proto_wr_cstr(w, e->name);
		proto_wr_guid(w, &e->guid);
		proto_wr_u64(w, e->uidvalidity);
		if (e->special_use[0] != '\0') {
			proto_wr_atom(w, "SPECIAL-USE");
			proto_wr_list_begin(w);
			proto_wr_atom(w, e->special_use);
			proto_wr_list_end(w);
		}
		break;
	case CL_ENTRY_DELETE: {
		struct stor_mailbox mb;
		const char *err;
		if (stor_mailbox_get_by_guid(p->cl->repl.db, &e->guid, &mb, &err) > 0) {
			/* Here again since: a resync found it changed elsewhere
			 * after the delete and brought it back (a change beats a
			 * delete, SPEC.md 10.5).  Sent now, the delete would
			 * take that change from the peer, and the peer's
			 * tombstone would then take the mailbox from here. */
			stor_mailbox_free(&mb);
			return;
		}
		w = proto_conn_cmd_begin(p->conn, "DELETE");
		proto_wr_cstr(w, e->user);
		proto_wr_cstr(w, e->name);
		proto_wr_guid(w, &e->guid);
		if (proto_conn_minor(p->conn) >= PROTO_MIN_MINOR_DELETE_UIDNEXT) {
			/* What the mailbox held here when it was deleted: a
			 * copy with messages beyond it took mail this node
			 * never saw (the two were apart), and deleting it
			 * would lose acknowledged messages (SPEC.md 7.3). */
			uint32_t uidnext = 0;
			if (stor_mailbox_tomb_get(p->cl->repl.db, e->user, &e->guid, &uidnext, NULL,
						  &err) > 0 &&
			    uidnext > 0) {
				proto_wr_atom(w, "UIDNEXT");
				proto_wr_u64(w, uidnext);
			}
		}
		/* Our id for it names nothing now. */
		for (size_t i = 0; i < p->binds.count; i++) {
			if (guid_equal(&p->binds.items[i]->guid, &e->guid) &&
			    p->binds.items[i]->state != CL_BIND_PENDING)
				p->binds.items[i]->state = CL_BIND_NONE;
		}
		break;
	}
	case CL_ENTRY_RENAME:
		w = proto_conn_cmd_begin(p->conn, "RENAME");
		proto_wr_cstr(w, e->user);
		proto_wr_cstr(w, e->name);
		proto_wr_cstr(w, e->new_name);
		proto_wr_guid(w, &e->guid);
		if (proto_conn_minor(p->conn) >= PROTO_MIN_MINOR_RSTAMP) {
			/* The entry keeps no stamp: the mailbox's is this
			 * rename's only while the mailbox still has the new
			 * name.  Renamed again since, the receiver keeps the
			 * stamp it has (lower), so a merge still prefers the
			 * later name it meets elsewhere (SPEC.md 7.3). */
			struct stor_mailbox mb;
			const char *err;
			uint64_t rs;
			if (stor_mailbox_get_by_guid(p->cl->repl.db, &e->guid, &mb, &err) > 0) {
				if (strcmp(mb.name, e->new_name) == 0 &&
				    stor_mailbox_rename_stamp(p->cl->repl.db, &e->guid, &rs, &err) == 0) {
					proto_wr_atom(w, "RSTAMP");
					proto_wr_u64(w, rs);
				}
				stor_mailbox_free(&mb);
			}
		}
		break;
	case CL_ENTRY_SUBSCRIBE:
	case CL_ENTRY_UNSUBSCRIBE:
		w = proto_conn_cmd_begin(p->conn, e->kind == CL_ENTRY_SUBSCRIBE ? "SUBSCRIBE"
										: "UNSUBSCRIBE");
		proto_wr_cstr(w, e->user);
		proto_wr_cstr(w, e->name);
		break;
	case CL_ENTRY_ACL: {
		/* The record as it is now: a later change of it is sent again
		 * by its own entry, and the receiver keeps the newer. */
		stor_acl_list acl;
		const char *err;
		if (stor_acl_get(p->cl->repl.db, &e->guid, &acl, &err) < 0) {
			log_errorx("replication: %s", err);
			return;
		}
		for (size_t i = 0; i < acl.count; i++) {
			if (strcmp(acl.items[i].identifier, e->name) != 0)
				continue;
			w = proto_conn_cmd_begin(p->conn, "ACL-PUT");
			proto_wr_cstr(w, e->user);
			proto_wr_guid(w, &e->guid);
			proto_wr_cstr(w, acl.items[i].identifier);
			proto_wr_cstr(w, acl.items[i].rights);
			proto_wr_u64(w, (uint64_t)acl.items[i].time_ms);
		}
		stor_acl_list_free(&acl);
		if (w == NULL)
			return; /* the mailbox was deleted since, and its ACL */
		break;
	}
	case CL_ENTRY_MAILBOX:
		return;
	}
	wr_origin(p, w);
	send_stream_cmd(p, seq, e->user);
}

static bool peer_can_stream(struct cl_peer *p)
{
	struct repl_cluster *cl = p->cl;
	return p->conn != NULL && !p->blocked && !p->full_sync &&
	       !(cl->sync != NULL && repl_sync_busy_with(cl->sync, p->sid)) &&
	       !proto_conn_is_congested(p->conn) &&
	       (p->retry_at == 0 || clock_mono_ms() >= p->retry_at);
}

static void stream_pump(struct cl_peer *p)
{
	struct repl_cluster *cl = p->cl;
	while (peer_can_stream(p) && p->next_seq <= cl->log_last) {
		stor_log_list list = ARRAY_INIT;
		const char *err;
		if (stor_log_read(cl->repl.db, p->next_seq - 1, CL_STREAM_BATCH, &list, &err) < 0) {
			log_errorx("replication: reading the log: %s", err);
			return;
		}
		if (list.count == 0 || list.items[0].seq != p->next_seq) {
			/* Trimmed past what this peer had: it fell off. */
			if (list.count == 0 || list.items[0].seq > p->next_seq) {
				log_warnx("replication: peer %u is behind the log: full resync",
					  p->sid);
				unheld_all(p);
				p->full_sync = true;
				full_sync_store(p);
			}
			stor_log_list_free(&list);
			return;
		}
		for (size_t i = 0; i < list.count && peer_can_stream(p); i++) {
			struct stor_log_entry *le = &list.items[i];
			struct cl_entry e;
			struct cl_inflight f = { le->seq, 0 };
			ARRAY_PUSH(&p->inflight, f);
			enum entry_result res = ENTRY_DONE;
			if (cl_entry_decode(le->data.data, le->data.len, &e) < 0) {
				log_errorx("replication: log entry %" PRIu64 " is malformed; skipped",
					   le->seq);
			} else {
				if (e.kind == CL_ENTRY_MAILBOX)
					res = stream_mailbox(p, le->seq, &e);
				else
					stream_list_change(p, le->seq, &e);
				if (res == ENTRY_REFUSED || res == ENTRY_ERROR) {
					unheld_add(p, e.user, le->seq, le->seq);
					if (res == ENTRY_ERROR)
						cl_mark_dirty(p, e.user);
				}
				cl_entry_free(&e);
			}
			if (res == ENTRY_BLOCKED) {
				/* Nothing was sent for it; it is redone once the
				 * MBOX answer is in. */
				p->inflight.count--;
				p->blocked = true;
				break;
			}
			p->next_seq = le->seq + 1;
		}
		stor_log_list_free(&list);
		advance(p);
	}
}

void cl_stream_pump_all(struct repl_cluster *cl)
{
	for (size_t i = 0; i < cl->peer_list.count; i++)
		stream_pump(cl->peer_list.items[i]);
}

/* ---- Links ---- */

void cl_stream_link_up(struct cl_peer *p, struct proto_conn *conn)
{
	struct repl_cluster *cl = p->cl;
	p->conn = conn;
	p->link_gen++;
	p->stream_gen++;
	p->retry_at = 0;
	p->selected_id = 0;
	p->blocked = false;
	p->inflight.count = 0;
	p->next_seq = p->cursor + 1;
	p->progress_ms = clock_mono_ms();
	/* A new link, maybe a restarted node: its store is tried again. */
	p->store_failed = false;
	bool did_full = false;
	binds_clear(p, false);
	if (p->full_sync && cl->sync != NULL) {
		stor_string_list users = ARRAY_INIT;
		const char *err;
		unheld_all(p);
		did_full = true;
		if (stor_user_list(cl->repl.db, &users, &err) == 0) {
			log_info("replication: full resync of %zu users with %u", users.count, p->sid);
			for (size_t i = 0; i < users.count; i++)
				repl_sync_enqueue(cl->sync, users.items[i], p->sid);
			p->full_sync = false;
			full_sync_store(p);
			p->cursor = cl->log_last;
			p->next_seq = cl->log_last + 1;
			p->cursor_dirty = true;
		}
		stor_string_list_free(&users);
	}
	/* Users with changes in the backlog get a resync once it is sent. */
	stor_string_list_free(&p->catchup_users);
	p->catchup_until = 0;
	if (cl->log_last > p->cursor) {
		stor_log_list list = ARRAY_INIT;
		const char *err;
		uint64_t after = p->cursor;
		while (stor_log_read(cl->repl.db, after, 1024, &list, &err) == 0 && list.count > 0) {
			for (size_t i = 0; i < list.count; i++) {
				struct cl_entry e;
				if (cl_entry_decode(list.items[i].data.data, list.items[i].data.len,
						    &e) == 0) {
					list_add(&p->catchup_users, e.user);
					cl_entry_free(&e);
				}
				after = list.items[i].seq;
			}
			stor_log_list_free(&list);
			if (p->catchup_users.count > 1000)
				break; /* enough to know; the periodic check does the rest */
		}
		stor_log_list_free(&list);
		p->catchup_until = cl->log_last;
	}
	for (size_t i = 0; i < p->dirty_users.count && cl->sync != NULL; i++)
		repl_sync_enqueue(cl->sync, p->dirty_users.items[i], 0);
	/* Users whose changes it refused or missed: a resync settles them. */
	for (size_t i = 0; i < p->unheld.count && cl->sync != NULL && !did_full; i++)
		repl_sync_enqueue(cl->sync, p->unheld.items[i].user, p->sid);
	p->unheld_backoff_s = CL_UNHELD_RETRY_S;
	p->unheld_retry_at = clock_mono_ms() + CL_UNHELD_RETRY_S * 1000u;
	if (p->dirty_users.count > 0) {
		stor_string_list_free(&p->dirty_users);
		dirty_store(p);
	}
	cl_waiters_check(cl);
}

void cl_stream_link_down(struct cl_peer *p)
{
	p->conn = NULL;
	p->blocked = false;
	p->inflight.count = 0;
	p->next_seq = p->cursor + 1;
	p->selected_id = 0;
	stor_string_list_free(&p->catchup_users);
	p->catchup_until = 0;
	cl_fwd_link_down(p);
	binds_clear(p, false);
	cl_waiters_check(p->cl);
}

void cl_stream_after_resync(struct cl_peer *p)
{
	/* The sync client selected its own mailboxes and may have changed
	 * the peer's: bind afresh. */
	p->selected_id = 0;
	binds_clear(p, true);
	for (size_t i = 0; i < p->binds.count; i++)
		p->binds.items[i]->stream_ready = false;
}
