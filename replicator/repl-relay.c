/* Routing through a partial mesh (SPEC.md 6.3, 8.6): a message command a
 * peer sends with `TO` another node is re-issued here on the link toward
 * that node -- its own tag, its own binding and SELECT of the mailbox on
 * that link, VIA with this node's SID appended -- and the answer (data
 * lines and the completion with its codes) goes back to the asking link
 * unchanged.  Nothing is stored: the command is held in memory only while
 * the binding on the outgoing link is being made, and every relay ends
 * with the answer, the outgoing command's timeout, or a link going down
 * (the asker then retries; SAVE is idempotent by GUID, SPEC.md 6.4).
 *
 * Also here: live changes with ORIGIN are passed on along the breadth-first
 * tree rooted at their origin to the peers the origin cannot stream to,
 * which would otherwise get them only from a resync (cl_relay_origin). */
#include "replicator/repl-cluster-private.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/log.h"
#include "lib/xalloc.h"
#include "replicator/repl-mm.h"
#include "replicator/repl-sync.h"

/* A relayed command. */
struct cl_relay {
	struct cl_relay *next;               /* in the binding's waiting list */
	struct cl_relay *all_prev, *all_next; /* in cl->relay_list */
	struct repl_cluster *cl;
	/* The asking link, and its tag; from_sid 0 for a change streamed on
	 * from its origin, which nobody waits for. */
	uint32_t from_sid;
	uint64_t from_gen;
	char tag[PROTO_MAX_TAG + 1];
	/* Where it goes. */
	uint32_t to;
	uint32_t out_sid;
	struct guid mailbox;
	char *user;                          /* streamed on: whose change */
	/* The command: name, arguments and options but VIA, copied while it
	 * waits for a binding (the parser reuses its buffers). */
	char name[PROTO_MAX_NAME + 1];
	struct proto_arg *args;
	size_t arg_count;
	uint32_t via[CL_RELAY_MAX_HOPS + 1];
	size_t n_via;
};

static void arg_copy(struct proto_arg *dst, const struct proto_arg *src)
{
	dst->type = src->type;
	dst->str = NULL;
	dst->len = 0;
	dst->list = NULL;
	dst->count = 0;
	if (src->type == PROTO_ARG_LIST) {
		struct proto_arg *l = src->count > 0 ? xcalloc(src->count, sizeof(*l)) : NULL;
		for (size_t i = 0; i < src->count; i++)
			arg_copy(&l[i], &src->list[i]);
		dst->list = l;
		dst->count = src->count;
		return;
	}
	char *s = xmalloc(src->len + 1);
	memcpy(s, src->str, src->len);
	s[src->len] = '\0';
	dst->str = s;
	dst->len = src->len;
}

static void arg_free(struct proto_arg *a)
{
	if (a->type == PROTO_ARG_LIST) {
		for (size_t i = 0; i < a->count; i++)
			arg_free((struct proto_arg *)&a->list[i]);
		free((void *)a->list);
	} else {
		free((void *)a->str);
	}
}

static void relay_free(struct cl_relay *r)
{
	struct repl_cluster *cl = r->cl;
	if (r->all_prev != NULL)
		r->all_prev->all_next = r->all_next;
	else
		cl->relay_list = r->all_next;
	if (r->all_next != NULL)
		r->all_next->all_prev = r->all_prev;
	cl->relay_count--;
	for (size_t i = 0; i < r->arg_count; i++)
		arg_free(&r->args[i]);
	free(r->args);
	free(r->user);
	free(r);
}

/* The asking link, if it is still the one the command came on. */
static struct proto_conn *relay_asker(const struct cl_relay *r)
{
	if (r->from_sid == 0)
		return NULL;
	struct cl_peer *p = cl_peer_find(r->cl, r->from_sid);
	if (p == NULL || p->conn == NULL || p->link_gen != r->from_gen)
		return NULL;
	return p->conn;
}

static void relay_answer(struct cl_relay *r, const char *status, const char *code,
			 const char *text)
{
	struct proto_conn *conn = relay_asker(r);
	if (conn != NULL)
		proto_conn_reply(conn, r->tag, status, code, text);
	relay_free(r);
}

static void relay_reply_cb(struct proto_conn *conn, enum proto_reply_kind kind,
			   const struct proto_cmd *line, void *ctx)
{
	struct cl_relay *r = ctx;
	struct proto_conn *asker = relay_asker(r);
	(void)conn;
	if (r->from_sid == 0) {
		if (kind == PROTO_REPLY_DATA)
			return;
		/* A change streamed on that the peer did not take: it gets the
		 * user by a resync, like any refused stream command (8.6). */
		struct cl_peer *out = cl_peer_find(r->cl, r->out_sid);
		if ((kind != PROTO_REPLY_DONE || !proto_cmd_is(line, "OK")) && out != NULL &&
		    !r->cl->destroying)
			cl_mark_dirty(out, r->user);
		else if (kind == PROTO_REPLY_DONE)
			r->cl->relayed_changes++;
		relay_free(r);
		return;
	}
	if (kind == PROTO_REPLY_DATA) {
		/* FLAGS lines of a STORE, as the master sent them. */
		if (asker != NULL) {
			struct proto_wr *w = proto_conn_line_begin(asker, r->tag, line->name);
			for (size_t i = 0; i < line->arg_count; i++)
				proto_wr_arg(w, &line->args[i]);
			proto_conn_line_end(asker);
		}
		return;
	}
	if (kind != PROTO_REPLY_DONE) {
		char text[96];
		snprintf(text, sizeof(text), "%s toward node %u",
			 kind == PROTO_REPLY_TIMEOUT ? "no answer in time" : "the link went down",
			 r->out_sid);
		relay_answer(r, "NO", "TRYLATER", text);
		return;
	}
	r->cl->relayed_commands++;
	if (asker == NULL) {
		relay_free(r);
		return;
	}
	struct buf code;
	struct proto_wr w;
	buf_init(&code);
	proto_wr_init(&w, &code);
	for (size_t i = 0; line->has_code && i < line->arg_count; i++)
		proto_wr_arg(&w, &line->args[i]);
	buf_append_byte(&code, '\0');
	const char *c = (const char *)code.data;
	const char *status = proto_cmd_is(line, "OK") ? "OK" : proto_cmd_is(line, "NO") ? "NO" : "BAD";
	if (strpbrk(c, "\r\n]{") != NULL)
		relay_answer(r, "NO", "TRYLATER", "the answer cannot be relayed");
	else
		relay_answer(r, status, c, line->text != NULL ? line->text : "");
	buf_free(&code);
}

/* Sends r on out, after SELECT of b (NULL: a mailbox-list change). */
static void relay_send(struct cl_relay *r, struct cl_peer *out, const struct cl_bind *b)
{
	if (r->from_sid != 0 && relay_asker(r) == NULL) {
		/* Nobody waits for the answer any more. */
		relay_free(r);
		return;
	}
	if (r->cl->sync != NULL && repl_sync_busy_with(r->cl->sync, out->sid)) {
		/* A resync started toward out since r was queued (its
		 * binding's answer comes any time): the run's SELECT would
		 * make r act on the run's mailbox. */
		if (r->from_sid == 0 && r->user != NULL)
			cl_mark_dirty(out, r->user);
		relay_answer(r, "NO", "TRYLATER", "a resync runs toward the next node");
		return;
	}
	if (b != NULL)
		cl_select(out, b);
	struct proto_wr *w = proto_conn_cmd_begin(out->conn, r->name);
	for (size_t i = 0; i < r->arg_count; i++)
		proto_wr_arg(w, &r->args[i]);
	if (r->n_via > 0) {
		proto_wr_atom(w, "VIA");
		proto_wr_list_begin(w);
		for (size_t i = 0; i < r->n_via; i++)
			proto_wr_u64(w, r->via[i]);
		proto_wr_list_end(w);
	}
	/* A request is answered a little before the asker gives up on us,
	 * so it hears TRYLATER rather than nothing. */
	proto_conn_cmd_send(out->conn,
			    r->from_sid != 0 ? CL_FORWARD_TIMEOUT_MS - 1000u : CL_STREAM_TIMEOUT_MS,
			    relay_reply_cb, r);
}

static struct cl_relay *relay_new(struct repl_cluster *cl, const struct proto_cmd *cmd,
				  size_t npos, bool drop_via)
{
	struct cl_relay *r = xcalloc(1, sizeof(*r));
	r->cl = cl;
	snprintf(r->tag, sizeof(r->tag), "%s", cmd->tag);
	snprintf(r->name, sizeof(r->name), "%s", cmd->name);
	r->args = xcalloc(cmd->arg_count > 0 ? cmd->arg_count : 1, sizeof(*r->args));
	for (size_t i = 0; i < cmd->arg_count; i++) {
		if (drop_via && i >= npos && (i - npos) % 2 == 0 && i + 1 < cmd->arg_count &&
		    cmd->args[i].type == PROTO_ARG_ATOM && strcasecmp(cmd->args[i].str, "VIA") == 0) {
			i++;
			continue;
		}
		arg_copy(&r->args[r->arg_count++], &cmd->args[i]);
	}
	r->all_next = cl->relay_list;
	if (r->all_next != NULL)
		r->all_next->all_prev = r;
	cl->relay_list = r;
	cl->relay_count++;
	return r;
}

/* Sends r once the mailbox is bound on out, in arrival order. */
static void relay_when_bound(struct cl_relay *r, struct cl_peer *out,
			     const struct stor_mailbox *mb)
{
	struct cl_bind *b = cl_bind_get(out, &mb->guid);
	switch (b->state) {
	case CL_BIND_BOUND:
		if (b->relays == NULL) {
			relay_send(r, out, b);
			return;
		}
		break;
	case CL_BIND_NONE:
	case CL_BIND_FAILED:
		cl_bind_send(out, b, mb, false);
		break;
	case CL_BIND_PENDING:
		break;
	}
	struct cl_relay **tail = &b->relays;
	while (*tail != NULL)
		tail = &(*tail)->next;
	r->next = NULL;
	*tail = r;
}

static void refuse(struct cl_peer *from, const struct proto_cmd *cmd, const char *status,
		   const char *code, const char *text)
{
	proto_conn_reply(from->conn, cmd->tag, status, code, text);
}

bool cl_relay_command(struct repl_cluster *cl, struct cl_peer *from, const struct proto_cmd *cmd,
		      size_t npos, const struct guid *selected)
{
	const struct proto_arg *to_arg = proto_cmd_option(cmd, npos, "TO");
	uint32_t to, me = cl->cfg->node_id;
	if (to_arg == NULL || proto_arg_u32(to_arg, &to) < 0 || to == me)
		return false;
	if (!proto_cmd_is(cmd, "SAVE") && !proto_cmd_is(cmd, "STORE") &&
	    !proto_cmd_is(cmd, "EXPUNGE")) {
		refuse(from, cmd, "NO", NULL, "only SAVE, STORE and EXPUNGE are routed");
		return true;
	}
	uint32_t via[CL_RELAY_MAX_HOPS + 1];
	size_t n_via = 0;
	const struct proto_arg *va = proto_cmd_option(cmd, npos, "VIA");
	if (va == NULL) {
		via[n_via++] = from->sid;
	} else {
		if (va->type != PROTO_ARG_LIST) {
			refuse(from, cmd, "BAD", "ARGS", "VIA is a list of SIDs");
			return true;
		}
		for (size_t i = 0; i < va->count; i++) {
			uint32_t s;
			if (proto_arg_u32(&va->list[i], &s) < 0) {
				refuse(from, cmd, "BAD", "ARGS", "VIA is a list of SIDs");
				return true;
			}
			if (s == me) {
				refuse(from, cmd, "NO", "LOOP", "the command came back to this node");
				return true;
			}
		}
		if (va->count >= CL_RELAY_MAX_HOPS) {
			refuse(from, cmd, "NO", "HOPLIMIT", "the command passed through too many nodes");
			return true;
		}
		for (size_t i = 0; i < va->count; i++)
			(void)proto_arg_u32(&va->list[i], &via[n_via++]);
	}
	via[n_via++] = me;
	/* The next hop: the node itself when linked, else the first hop of
	 * the breadth-first path of the link state (SPEC.md 9.3), never a node
	 * the command already passed. */
	struct cl_peer *out = cl_peer_find(cl, to);
	if (out == NULL || out->conn == NULL) {
		uint32_t hop = cl->mm != NULL ? repl_mm_next_hop(cl->mm, to) : 0;
		out = NULL;
		bool passed = false;
		for (size_t i = 0; i < n_via; i++)
			passed = passed || via[i] == hop;
		if (hop != 0 && !passed)
			out = cl_peer_find(cl, hop);
	}
	char text[96];
	if (out == NULL || out->conn == NULL) {
		snprintf(text, sizeof(text), "no route to node %u from here", to);
		refuse(from, cmd, "NO", "TRYLATER", text);
		return true;
	}
	if (cl->relay_count >= CL_RELAY_MAX) {
		refuse(from, cmd, "NO", "TRYLATER", "too many relayed commands");
		return true;
	}
	if (cl->sync != NULL && repl_sync_busy_with(cl->sync, out->sid)) {
		/* A resync owns our direction of that link (its MBOX, SELECT). */
		refuse(from, cmd, "NO", "TRYLATER", "a resync runs toward the next node");
		return true;
	}
	struct stor_mailbox mb;
	const char *err;
	int rc = stor_mailbox_get_by_guid(cl->repl.db, selected, &mb, &err);
	if (rc <= 0) {
		refuse(from, cmd, "NO", rc < 0 ? "SERVERBUG" : "NONEXISTENT",
		       rc < 0 ? err : "this node does not hold the mailbox to relay for");
		return true;
	}
	struct cl_relay *r = relay_new(cl, cmd, npos, true);
	r->from_sid = from->sid;
	r->from_gen = from->link_gen;
	r->to = to;
	r->out_sid = out->sid;
	r->mailbox = mb.guid;
	memcpy(r->via, via, n_via * sizeof(via[0]));
	r->n_via = n_via;
	relay_when_bound(r, out, &mb);
	stor_mailbox_free(&mb);
	return true;
}

void cl_relay_bind_settled(struct cl_peer *p, struct cl_bind *b)
{
	struct cl_relay *list = b->relays;
	b->relays = NULL;
	while (list != NULL) {
		struct cl_relay *r = list;
		list = r->next;
		r->next = NULL;
		if (b->state == CL_BIND_BOUND && p->conn != NULL)
			relay_send(r, p, b);
		else
			relay_answer(r, "NO", "TRYLATER", "the next node does not hold the mailbox");
	}
}

void cl_relay_link_down(struct cl_peer *p)
{
	for (size_t i = 0; i < p->binds.count; i++) {
		struct cl_bind *b = p->binds.items[i];
		struct cl_relay *list = b->relays;
		b->relays = NULL;
		while (list != NULL) {
			struct cl_relay *r = list;
			list = r->next;
			if (r->from_sid == 0 && !p->cl->destroying)
				/* A change passed on that never left: the peer
				 * gets the user by a resync when it is back. */
				cl_mark_dirty(p, r->user);
			relay_answer(r, "NO", "TRYLATER", "the link toward the master went down");
		}
	}
}

void cl_relay_deinit(struct repl_cluster *cl)
{
	for (size_t i = 0; i < cl->peer_list.count; i++) {
		struct cl_peer *p = cl->peer_list.items[i];
		for (size_t j = 0; j < p->binds.count; j++) {
			struct cl_relay *list = p->binds.items[j]->relays;
			p->binds.items[j]->relays = NULL;
			while (list != NULL) {
				struct cl_relay *r = list;
				list = r->next;
				relay_free(r);
			}
		}
	}
}

void cl_relay_origin(struct repl_cluster *cl, struct cl_peer *from, const struct proto_cmd *cmd,
		     size_t npos, uint32_t origin, const char *user, const struct stor_mailbox *mb)
{
	/* Changes spread along the breadth-first tree of the link state rooted
	 * at their origin: this node passes one on to each peer whose parent
	 * in that tree it is.  The origin streams to its neighbours itself;
	 * each hop goes one level further from the origin, so nothing loops,
	 * and nodes that agree on the link state pass each change to each
	 * node once.  A node that gets one twice anyway (the link state was
	 * changing, or the origin's link came back) applies it once (8.6: the
	 * same UID and GUID again is OK, a STORE or EXPUNGE at a modseq it
	 * holds changes nothing). */
	uint32_t me = cl->cfg->node_id;
	if (cl->mm == NULL || cl->destroying || origin == me)
		return;
	for (size_t i = 0; i < cl->peer_list.count; i++) {
		struct cl_peer *p = cl->peer_list.items[i];
		if (p == from || p->sid == origin || p->conn == NULL ||
		    repl_mm_tree_parent(cl->mm, origin, p->sid) != me)
			continue;
		if (cl->relay_count >= CL_RELAY_MAX ||
		    (cl->sync != NULL && repl_sync_busy_with(cl->sync, p->sid))) {
			/* Cannot pass it on now: a resync brings it. */
			cl_mark_dirty(p, user);
			continue;
		}
		struct cl_relay *r = relay_new(cl, cmd, npos, false);
		r->out_sid = p->sid;
		r->user = xstrdup(user);
		if (mb == NULL) {
			relay_send(r, p, NULL);
		} else {
			r->mailbox = mb->guid;
			relay_when_bound(r, p, mb);
		}
	}
}

void cl_relay_sync_changed(struct repl_cluster *cl, const char *user, uint32_t from)
{
	if (cl->mm == NULL || cl->sync == NULL || cl->destroying)
		return;
	for (size_t i = 0; i < cl->peer_list.count; i++) {
		struct cl_peer *p = cl->peer_list.items[i];
		/* A resync that changes nothing ends this: each one that
		 * changes something moves the user's state one hop on. */
		if (p->sid != from && p->conn != NULL && !repl_mm_linked(cl->mm, from, p->sid))
			repl_sync_enqueue(cl->sync, user, p->sid);
	}
}
