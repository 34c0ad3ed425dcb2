/* The server end of the sync engine on each link: peer sync commands fed
 * to a sync server, answers held until the loop turn's changes are
 * durable (the group commit in storage's helper thread), long answers
 * stepped.  Apart from the client end because the two
 * share a link but no state. */
#include "replicator/repl-sync-private.h"

#include <assert.h>
#include <ev.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "lib/str.h"
#include "lib/xalloc.h"
#include "protocol/protocol.h"
#include "replicator/repl-private.h"
#include "storage/storage.h"
#include "sync/sync.h"

/* ------------------------------------------------------------------ */
/* Server end */

struct srv_link *srv_find(struct repl_sync *rs, uint32_t sid)
{
	for (struct srv_link *l = rs->links; l != NULL; l = l->next)
		if (l->sid == sid)
			return l;
	return NULL;
}

/* A frame of tx: the sizes of the tag, the name and the rest (size_t
 * each), then their bytes. */
static void srv_send_line(void *ctx, uint32_t id, const char *name, const void *rest,
			  size_t rest_len)
{
	struct srv_link *l = ctx;
	const char *tag = sync_tags_get(&l->tags, id);
	/* The engine answers only commands srv_command() gave it, each
	 * completed once. */
	if (tag == NULL) {
		log_errorx("sync with %u: an answer to no pending command (%u %s)", l->sid, id, name);
		return;
	}
	size_t sizes[3] = { strlen(tag), strlen(name), rest_len };
	buf_append(&l->tx, sizes, sizeof(sizes));
	buf_append(&l->tx, tag, sizes[0]);
	buf_append(&l->tx, name, sizes[1]);
	buf_append(&l->tx, rest, rest_len);
	sync_tags_answered(&l->tags, id, name);
}

static struct srv_link *srv_get(struct repl_sync *rs, uint32_t sid)
{
	struct srv_link *l = srv_find(rs, sid);
	if (l != NULL)
		return l;
	l = xcalloc(1, sizeof(*l));
	l->sid = sid;
	l->gen = ++rs->link_gen;
	l->selected = -1;
	struct sync_server_link sl = { srv_send_line, l };
	l->server = sync_server_create_linked(repl_db(rs->repl), sid, &sl);
	l->next = rs->links;
	rs->links = l;
	return l;
}

/* Whether the server of l holds a mailbox now (as repl_sync_holds() sees
 * it); when it stopped holding the one it held, the changes held for it
 * are woken. */
static void srv_hold_update(struct repl_sync *rs, struct srv_link *l)
{
	struct guid g;
	bool holding = (sync_server_in_sync(l->server) || sync_server_busy(l->server)) &&
		       sync_server_selected(l->server, &g);
	bool released = l->holding && (!holding || !guid_equal(&g, &l->held));
	l->holding = holding;
	if (holding)
		l->held = g;
	if (released)
		sync_released(rs);
}

void srv_free(struct repl_sync *rs, uint32_t sid)
{
	for (struct srv_link **lp = &rs->links; *lp != NULL; lp = &(*lp)->next) {
		if ((*lp)->sid != sid)
			continue;
		struct srv_link *l = *lp;
		*lp = l->next;
		if (l->holding)
			sync_released(rs);
		sync_server_destroy(&l->server);
		buf_free(&l->tx);
		sync_tags_free(&l->tags);
		ARRAY_FREE(&l->notes);
		free(l);
		return;
	}
}

/* Remembers MBOX bindings and the SELECT, so that the mailbox a message
 * command changed can be named to the watchers. */
static void srv_track(struct srv_link *l, const struct proto_cmd *cmd)
{
	uint32_t id;
	if (proto_cmd_is(cmd, "MBOX") && cmd->arg_count >= 5 &&
	    proto_arg_u32(&cmd->args[0], &id) == 0) {
		const char *user;
		size_t ulen;
		struct guid g;
		if (proto_arg_str(&cmd->args[1], &user, &ulen) < 0 || ulen >= sizeof(l->ids[0].user) ||
		    proto_arg_guid(&cmd->args[4], &g) < 0)
			return;
		int slot = -1;
		for (int i = 0; i < SRV_IDS; i++)
			if (l->ids[i].used && l->ids[i].id == id)
				slot = i;
		if (slot < 0) {
			slot = (int)(l->ids_next++ % SRV_IDS);
			if (l->selected == slot)
				l->selected = -1;
		}
		l->ids[slot].used = true;
		l->ids[slot].id = id;
		memcpy(l->ids[slot].user, user, ulen + 1);
		l->ids[slot].guid = g;
	} else if (proto_cmd_is(cmd, "SELECT") && cmd->arg_count >= 1) {
		l->selected = -1;
		if (proto_arg_u32(&cmd->args[0], &id) < 0)
			return;
		for (int i = 0; i < SRV_IDS; i++)
			if (l->ids[i].used && l->ids[i].id == id)
				l->selected = i;
	}
}

/* The mailbox a command changed, for the watchers: the selected one for
 * message commands, the named GUID for CREATE, DELETE and RENAME. */
static bool srv_changed(const struct srv_link *l, const struct proto_cmd *cmd, char *user,
			size_t user_size, struct guid *g_r)
{
	size_t gpos = 0;
	if (proto_cmd_is(cmd, "CREATE") || proto_cmd_is(cmd, "DELETE"))
		gpos = 2;
	else if (proto_cmd_is(cmd, "RENAME"))
		gpos = 3;
	if (gpos != 0) {
		const char *u;
		size_t ulen;
		if (cmd->arg_count <= gpos || proto_arg_str(&cmd->args[0], &u, &ulen) < 0 ||
		    ulen >= user_size || proto_arg_guid(&cmd->args[gpos], g_r) < 0)
			return false;
		memcpy(user, u, ulen + 1);
		return true;
	}
	if (l->selected < 0)
		return false;
	snprintf(user, user_size, "%s", l->ids[l->selected].user);
	*g_r = l->ids[l->selected].guid;
	return true;
}

/* The mailbox selected on the link (what a SYNC-END or FETCH step works
 * on). */
static bool srv_changed_selected(const struct srv_link *l, char *user, size_t user_size,
				 struct guid *g_r)
{
	if (l->selected < 0)
		return false;
	snprintf(user, user_size, "%s", l->ids[l->selected].user);
	*g_r = l->ids[l->selected].guid;
	return true;
}

/* Live replication rather than a sync: a change its origin already made
 * (option ORIGIN), or a message command outside SYNC-BEGIN ... SYNC-END
 * (a request to this node as master).  ORIGIN counts only as an option,
 * after the positional arguments: a user or mailbox may be named so. */
static bool is_live(const struct srv_link *l, const struct proto_cmd *cmd)
{
	size_t npos;
	const char *verr;
	if (proto_cmd_validate(cmd, &npos, &verr) == 0 &&
	    proto_cmd_option(cmd, npos, "ORIGIN") != NULL)
		return true;
	if (sync_server_in_sync(l->server))
		return false;
	return proto_cmd_is(cmd, "SAVE") || proto_cmd_is(cmd, "STORE") ||
	       proto_cmd_is(cmd, "EXPUNGE") || proto_cmd_is(cmd, "COPY");
}

static void srv_note_add(struct srv_link *l, const char *user, const struct guid *g)
{
	for (size_t i = 0; i < l->notes.count; i++) {
		if (guid_cmp(&l->notes.items[i].guid, g) == 0 &&
		    strcmp(l->notes.items[i].user, user) == 0)
			return;
	}
	struct srv_note n;
	snprintf(n.user, sizeof(n.user), "%s", user);
	n.guid = *g;
	ARRAY_PUSH(&l->notes, n);
}

/* Sends the frames of tx (srv_send_line()) as lines of the link. */
static void srv_relay(struct buf *tx, struct proto_conn *conn)
{
	while (buf_avail(tx) > 0) {
		const unsigned char *d = buf_rptr(tx);
		size_t sizes[3];
		/* Frames are whole: srv_send_line() writes each at once. */
		assert(buf_avail(tx) >= sizeof(sizes));
		memcpy(sizes, d, sizeof(sizes));
		size_t n = sizeof(sizes) + sizes[0] + sizes[1] + sizes[2];
		assert(buf_avail(tx) >= n && sizes[0] <= PROTO_MAX_TAG && sizes[1] <= PROTO_MAX_NAME);
		char tag[PROTO_MAX_TAG + 1], name[PROTO_MAX_NAME + 1];
		const unsigned char *p = d + sizeof(sizes);
		memcpy(tag, p, sizes[0]);
		tag[sizes[0]] = '\0';
		memcpy(name, p + sizes[0], sizes[1]);
		name[sizes[1]] = '\0';
		struct proto_wr *w = proto_conn_line_begin(conn, tag, name);
		buf_append(w->out, p + sizes[0] + sizes[1], sizes[2]);
		proto_conn_line_end(conn);
		buf_consume(tx, n);
	}
	buf_reset(tx);
}

static bool srv_has_output(const struct srv_link *l)
{
	return buf_avail(&l->tx) > 0 || l->notes.count > 0 || l->closing;
}

/* The changes a batch answers for are durable (ok), or cannot be: its
 * answers leave, on the link they were written for if it is still the
 * same, and the IMAP watchers of the changed mailboxes are told. */
static void srv_batch_durable(void *ctx, bool ok)
{
	struct srv_batch *b = ctx;
	struct repl_sync *rs = b->rs;
	if (rs != NULL) {
		struct srv_batch **bp = &rs->batches;
		while (*bp != b)
			bp = &(*bp)->next;
		*bp = b->next;
	}
	if (!ok && rs != NULL)
		log_errorx("sync: storing failed: the answers of the sync servers are not sent");
	for (size_t i = 0; i < b->outs.count; i++) {
		struct srv_out *o = &b->outs.items[i];
		struct srv_link *l = rs != NULL ? srv_find(rs, o->sid) : NULL;
		if (l != NULL && l->gen != o->gen)
			l = NULL;
		struct proto_conn *conn = l != NULL && rs->peers != NULL ?
			repl_peers_conn(rs->peers, o->sid) : NULL;
		if (l != NULL)
			l->unsent -= buf_avail(&o->tx) < l->unsent ? buf_avail(&o->tx) : l->unsent;
		if (conn != NULL && !ok) {
			proto_conn_bye(conn, "SERVERBUG", "storage failed");
		} else if (conn != NULL) {
			srv_relay(&o->tx, conn);
			if (o->closing) {
				const char *why = sync_server_error(l->server);
				log_warnx("sync with %u: closing the link: %s", o->sid,
					  why != NULL ? why : "error");
				proto_conn_bye(conn, "PROTOCOL", "sync failed");
			}
		}
		for (size_t j = 0; ok && rs != NULL && j < o->notes.count; j++) {
			repl_notify(rs->repl, o->notes.items[j].user, &o->notes.items[j].guid);
			if (rs->peer_cb != NULL &&
			    (j == 0 || strcmp(o->notes.items[j - 1].user, o->notes.items[j].user) != 0))
				rs->peer_cb(rs->peer_ctx, REPL_SYNC_PEER_CHANGED, o->notes.items[j].user,
					    o->sid);
		}
		buf_free(&o->tx);
		ARRAY_FREE(&o->notes);
	}
	ARRAY_FREE(&b->outs);
	free(b);
	/* A server stopped for its unsent answers may step again. */
	if (rs != NULL && !rs->destroying && !ev_is_active(&rs->srv_idle)) {
		for (struct srv_link *l = rs->links; l != NULL; l = l->next) {
			if (sync_server_busy(l->server) && l->unsent <= REPL_SYNC_SERVER_OUT_MAX) {
				ev_idle_start(rs->loop, &rs->srv_idle);
				break;
			}
		}
	}
}

/* The end of a loop iteration: the answers of every sync server leave
 * once the changes of the iteration's commands are durable.  The group
 * commit (repl-local.c, a prepare watcher of lower priority than flush_w)
 * syncs in storage's helper thread, so a big merge does not hold the loop
 * for its fsync; answers that need nothing synced leave at once. */
static void srv_flush_all(struct repl_sync *rs)
{
	struct stor_db *db = repl_db(rs->repl);
	ev_prepare_stop(rs->loop, &rs->flush_w);
	struct srv_batch *b = NULL;
	for (struct srv_link *l = rs->links; l != NULL; l = l->next) {
		if (!srv_has_output(l))
			continue;
		if (b == NULL) {
			b = xcalloc(1, sizeof(*b));
			b->rs = rs;
		}
		struct srv_out o = { .sid = l->sid, .gen = l->gen, .tx = l->tx, .notes = l->notes,
				     .closing = l->closing };
		buf_init(&l->tx);
		memset(&l->notes, 0, sizeof(l->notes));
		l->closing = false;
		l->unsent += buf_avail(&o.tx);
		ARRAY_PUSH(&b->outs, o);
	}
	if (b == NULL)
		return;
	struct srv_batch **bp = &rs->batches;
	while (*bp != NULL)
		bp = &(*bp)->next;
	*bp = b;
	if (rs->batches == b && !stor_sync_pending(db))
		srv_batch_durable(b, true);
	else
		stor_on_durable(db, srv_batch_durable, b);
}

void srv_orphan_batches(struct repl_sync *rs)
{
	for (struct srv_batch *b = rs->batches; b != NULL; b = b->next)
		b->rs = NULL;
	rs->batches = NULL;
}

void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	struct repl_sync *rs = (struct repl_sync *)((char *)w - offsetof(struct repl_sync, flush_w));
	(void)loop;
	(void)revents;
	srv_flush_all(rs);
}

static void srv_want_flush(struct repl_sync *rs)
{
	if (!ev_is_active(&rs->flush_w))
		ev_prepare_start(rs->loop, &rs->flush_w);
}

/* Notes what the engine did for a command or a step: the mailbox it
 * changed, and a failure that closes the link after the answers. */
static void srv_after(struct repl_sync *rs, struct srv_link *l, const struct proto_cmd *cmd, int r)
{
	char user[256];
	struct guid g;
	if (stor_sync_pending(repl_db(rs->repl))) {
		if (cmd != NULL ? srv_changed(l, cmd, user, sizeof(user), &g) :
				  srv_changed_selected(l, user, sizeof(user), &g))
			srv_note_add(l, user, &g);
	}
	if (r < 0)
		l->closing = true;
	if (srv_has_output(l) || stor_sync_pending(repl_db(rs->repl)))
		srv_want_flush(rs);
	if (r >= 0 && sync_server_busy(l->server) && !ev_is_active(&rs->srv_idle))
		ev_idle_start(rs->loop, &rs->srv_idle);
	srv_hold_update(rs, l);
}

/* Steps the sync servers that answer SYNC-END or FETCH in parts, each for
 * a bounded time, while their links take output. */
void srv_idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	struct repl_sync *rs = (struct repl_sync *)((char *)w - offsetof(struct repl_sync, srv_idle));
	(void)revents;
	bool more = false;
	for (struct srv_link *l = rs->links; l != NULL; l = l->next) {
		if (!sync_server_busy(l->server) || l->closing ||
		    l->unsent > REPL_SYNC_SERVER_OUT_MAX)
			continue;
		struct proto_conn *conn = rs->peers != NULL ? repl_peers_conn(rs->peers, l->sid) : NULL;
		if (conn == NULL)
			continue;
		ev_tstamp start = ev_time();
		int r = 1;
		for (int i = 0; i < MAX_STEPS_PER_TURN && r > 0; i++) {
			r = sync_server_step(l->server);
			/* The answers go to the link (durable first) once they
			 * are worth a write, so that its high water, which
			 * stops the steps, sees them. */
			if (r < 0 || buf_avail(&l->tx) > REPL_SYNC_SERVER_OUT_MAX) {
				srv_after(rs, l, NULL, r);
				srv_flush_all(rs);
			}
			if (r < 0 || proto_conn_is_congested(conn) ||
			    l->unsent > REPL_SYNC_SERVER_OUT_MAX || ev_time() - start > TURN_SECONDS)
				break;
		}
		srv_after(rs, l, NULL, r);
		/* The rest of the answers leave at the end of the iteration
		 * (flush_w); a congested link calls repl_sync_link_drained,
		 * answers waiting for durability restart us when they leave
		 * (srv_batch_durable()). */
		if (r > 0 && !proto_conn_is_congested(conn) && l->unsent <= REPL_SYNC_SERVER_OUT_MAX)
			more = true;
	}
	if (!more)
		ev_idle_stop(loop, w);
}

/* Two resyncs of one user crossing between two nodes (each the client of
 * the other) would merge the same mailboxes twice at once.  A node whose
 * own run works on the user refuses the peer's (TRYLATER); the refused
 * run fails and a background one is tried again after a random delay. */
/* Whether a server link other than l is merging a mailbox of user (or
 * mailbox itself, when given). */
bool other_server_busy(const struct repl_sync *rs, const struct srv_link *l,
		       const char *user, const struct guid *mailbox)
{
	for (const struct srv_link *o = rs->links; o != NULL; o = o->next) {
		struct guid g;
		if (o == l || o->selected < 0 ||
		    !(sync_server_in_sync(o->server) || sync_server_busy(o->server)) ||
		    !sync_server_selected(o->server, &g))
			continue;
		if (mailbox != NULL ? guid_equal(&g, mailbox) :
				      strcmp(o->ids[o->selected].user, user) == 0)
			return true;
	}
	return false;
}

static bool refuse_crossing(struct repl_sync *rs, struct srv_link *l, struct proto_conn *conn,
			    const struct proto_cmd *cmd)
{
	/* Two peers merging one mailbox here at once would each work on a
	 * snapshot the other changes. */
	struct guid sel;
	if (proto_cmd_is(cmd, "SYNC-BEGIN") && sync_server_selected(l->server, &sel) &&
	    other_server_busy(rs, l, NULL, &sel)) {
		proto_conn_reply(conn, cmd->tag, "NO", "TRYLATER",
				 "another node resyncs this mailbox here");
		return true;
	}
	if (rs->run == NULL)
		return false;
	const char *user = NULL;
	size_t ulen = 0;
	if (proto_cmd_is(cmd, "LIST") && cmd->arg_count >= 1) {
		if (proto_arg_str(&cmd->args[0], &user, &ulen) < 0)
			return false;
	} else if (proto_cmd_is(cmd, "SYNC-BEGIN") && l->selected >= 0) {
		user = l->ids[l->selected].user;
		ulen = strlen(user);
	} else {
		return false;
	}
	if (strlen(rs->run->user) != ulen || memcmp(rs->run->user, user, ulen) != 0)
		return false;
	proto_conn_reply(conn, cmd->tag, "NO", "TRYLATER", "a resync of this user runs here");
	return true;
}

void srv_command(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn,
		 const struct proto_cmd *cmd, void *ctx)
{
	struct repl_sync *rs = ctx;
	(void)peers;
	struct srv_link *l = srv_get(rs, sid);
	/* Per command: a link that comes back may be to an upgraded peer. */
	sync_server_set_no_rename_stamps(l->server,
					 proto_conn_minor(conn) < PROTO_MIN_MINOR_RSTAMP);
	srv_track(l, cmd);
	if (rs->live_cb != NULL && is_live(l, cmd)) {
		struct guid g;
		bool sel = sync_server_selected(l->server, &g);
		rs->live_cb(rs->live_ctx, sid, conn, cmd, sel ? &g : NULL);
		return;
	}
	if (refuse_crossing(rs, l, conn, cmd))
		return;
	int r = 0;
	if (!proto_cmd_is_status(cmd) && strcmp(cmd->tag, "*") != 0) {
		uint32_t id = sync_tags_add(&l->tags, cmd->tag);
		r = sync_server_command(l->server, id, cmd, proto_conn_parser(conn));
	}
	srv_after(rs, l, cmd, r);
}
