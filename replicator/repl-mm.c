/* Mailbox masters on a running node: see repl-mm.h.  This file is only
 * plumbing: every decision is the state machine's (mailbox-master/). */
#include "replicator/repl-mm.h"

#include <ev.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "lib/clock.h"
#include "lib/guid.h"
#include "lib/log.h"
#include "lib/xalloc.h"

struct mm_pending {
	struct mm_pending *next;
	uint64_t req_id;
	uint64_t deadline;
	repl_mm_answer_cb *cb;
	void *ctx;
	bool deferred;        /* not yet given to the machine (start-up hold) */
	unsigned timeout_ms;  /* ... and its whole timeout starts when it is */
	char gkey[MM_GKEY_MAX + 1];
};

struct repl_mm {
	struct ev_loop *loop;
	const struct config *cfg;
	struct repl_peers *peers;
	struct mm_node *node;
	enum mm_granularity gran;
	ev_timer tick;
	/* Requests waiting for their REQUEST_DONE, oldest first. */
	struct mm_pending *pending;
	uint64_t next_req_id;
	/* Answers to give from the loop (ready), not from inside the call. */
	ev_idle idle;
	bool draining;
	struct buf line;
	uint64_t sent, dropped_no_link, bad_in;
	repl_mm_gained_cb *gained_cb;
	void *gained_ctx;
	/* Start-up hold: until every configured peer is linked both ways in
	 * the link state (or the deadline passes), this node asks the
	 * machine for no master, so it cannot make itself root and master
	 * of its mailboxes before it knows the cluster (SPEC.md 9.4). */
	bool start_held;
	uint64_t start_hold_until;
	/* The stall detector (stall_seen()): when the loop last ran, to tell
	 * a node that was stopped (SIGSTOP, a hung disk) from one that was
	 * idle, and when it last found it had not run (0: never). */
	ev_check check;
	uint64_t last_run, stalled_at;
	/* After a stall, the SIDs of the peers not heard from since.  A link
	 * may still look up here while the peer closed it long ago; the hold
	 * ends only once each one came back (a new link) or spoke (an MM
	 * message: the link was never dropped). */
	ARRAY(uint32_t) unheard;
};

static bool unheard(const struct repl_mm *mm, uint32_t sid)
{
	for (size_t i = 0; i < mm->unheard.count; i++) {
		if (mm->unheard.items[i] == sid)
			return true;
	}
	return false;
}

static void heard_from(struct repl_mm *mm, uint32_t sid)
{
	for (size_t i = 0; i < mm->unheard.count; i++) {
		if (mm->unheard.items[i] == sid)
			mm->unheard.items[i--] = mm->unheard.items[--mm->unheard.count];
	}
}

static uint64_t mm_now(void)
{
	return clock_mono_ms();
}

void repl_mm_epoch_str(uint64_t epoch, char *out, size_t size)
{
	snprintf(out, size, "%" PRIu64 ".%" PRIu32, (uint64_t)MM_EPOCH_COUNTER(epoch),
		 MM_EPOCH_ROOT(epoch));
}

/* ---- sending ---- */

static void ack_cb(struct proto_conn *conn, enum proto_reply_kind kind,
		   const struct proto_cmd *line, void *ctx)
{
	/* ctx is NULL on purpose: this may run after repl_mm_destroy(), when
	 * the peer manager fails the commands still pending. */
	if (kind == PROTO_REPLY_DONE && !proto_cmd_is(line, "OK"))
		log_debug("mm: peer %u refused a message: %s %s", proto_conn_peer_sid(conn),
			  line->name, line->text);
	else if (kind == PROTO_REPLY_TIMEOUT)
		log_debug("mm: peer %u did not acknowledge a message", proto_conn_peer_sid(conn));
}

/* Sends one message as `TAG MM <its arguments>`. */
static void mm_send(struct repl_mm *mm, uint32_t peer, const struct mm_msg *msg)
{
	struct proto_conn *conn = mm->peers != NULL ? repl_peers_conn(mm->peers, peer) : NULL;
	if (conn == NULL) {
		mm->dropped_no_link++;
		return;
	}
	struct mm_arg args[MM_MSG_MAX_ARGS];
	buf_reset(&mm->line);
	size_t n = mm_msg_args(msg, &mm->line, args);
	struct proto_wr *w = proto_conn_cmd_begin(conn, "MM");
	for (size_t i = 0; i < n; i++)
		proto_wr_str(w, args[i].str, args[i].len);
	if (proto_conn_cmd_send(conn, REPL_MM_ACK_TIMEOUT_MS, ack_cb, NULL) != NULL)
		mm->sent++;
	else
		mm->dropped_no_link++;
}

/* ---- events and requests ---- */

static void answer_fill(struct repl_mm *mm, const char *gkey, uint32_t master,
			struct repl_mm_answer *ans)
{
	bool settled;
	memset(ans, 0, sizeof(*ans));
	ans->ok = true;
	ans->master = master;
	ans->am_master = mm_is_master(mm->node, gkey);
	mm_node_root(mm->node, &ans->root, &ans->epoch, &settled);
	ans->gkey = gkey;
}

static struct mm_pending *pending_take(struct repl_mm *mm, uint64_t req_id)
{
	for (struct mm_pending **pp = &mm->pending; *pp != NULL; pp = &(*pp)->next) {
		struct mm_pending *p = *pp;
		if (p->req_id == req_id) {
			*pp = p->next;
			return p;
		}
	}
	return NULL;
}

static void handle_event(struct repl_mm *mm, const struct mm_event *ev)
{
	char epoch[32];
	repl_mm_epoch_str(ev->epoch, epoch, sizeof(epoch));
	switch (ev->type) {
	case MM_EV_ROOT:
		log_info("mm: root is now %u at epoch %s", ev->sid, epoch);
		break;
	case MM_EV_MASTER:
		log_info("mm: master of %s is now %u (epoch %s)", ev->gkey, ev->sid, epoch);
		break;
	case MM_EV_MASTER_GAINED:
		log_info("mm: this node is now master of %s (epoch %s)", ev->gkey, epoch);
		if (mm->gained_cb != NULL)
			mm->gained_cb(mm->gained_ctx, ev->gkey);
		break;
	case MM_EV_MASTER_LOST:
		log_info("mm: this node is no longer master of %s", ev->gkey);
		break;
	case MM_EV_MOVE_FAILED:
		log_info("mm: move of %s failed (reason %d)", ev->gkey, (int)ev->reason);
		break;
	case MM_EV_REQUEST_DONE: {
		struct mm_pending *p = pending_take(mm, ev->req_id);
		if (p == NULL)
			break; /* timed out already */
		struct repl_mm_answer ans;
		answer_fill(mm, p->gkey, ev->sid, &ans);
		p->cb(p->ctx, &ans);
		free(p);
		break;
	}
	}
}

/* Drains the machine's outputs.  Sending may close a link, which feeds
 * mm_link_down() and lands here again: the outer call keeps draining. */
static void drain(struct repl_mm *mm)
{
	if (mm->draining)
		return;
	mm->draining = true;
	struct mm_output *o = xmalloc(sizeof(*o));
	while (mm_next_output(mm->node, o)) {
		if (o->kind == MM_OUT_SEND)
			mm_send(mm, o->peer, &o->msg);
		else
			handle_event(mm, &o->event);
	}
	free(o);
	mm->draining = false;
}

static void expire_requests(struct repl_mm *mm, uint64_t now)
{
	struct mm_pending **pp = &mm->pending;
	while (*pp != NULL) {
		struct mm_pending *p = *pp;
		if (p->deferred || p->deadline > now) {
			pp = &p->next;
			continue;
		}
		*pp = p->next;
		struct repl_mm_answer ans;
		memset(&ans, 0, sizeof(ans));
		ans.error = "timeout";
		ans.gkey = p->gkey;
		log_info("mm: no master of %s known after the request timeout", p->gkey);
		p->cb(p->ctx, &ans);
		free(p);
		/* The callback may not touch the list; restart to be safe. */
		pp = &mm->pending;
	}
}

/* The start-up hold ends once every configured peer lists this node and
 * this node lists it (so the root computed is the cluster's, not this
 * node alone) and the node is settled, or at the deadline (peers that are
 * down stay down: the node goes on with the ones it has).  Requests that
 * waited are given to the machine then, in order. */
static void start_hold_check(struct repl_mm *mm, uint64_t now)
{
	if (!mm->start_held)
		return;
	uint32_t self = mm_node_sid(mm->node);
	bool all = true;
	for (size_t i = 0; i < mm->cfg->peers.count && all; i++)
		all = !unheard(mm, mm->cfg->peers.items[i].sid) &&
		      mm_linked(mm->node, self, mm->cfg->peers.items[i].sid);
	uint32_t root;
	uint64_t epoch;
	bool settled;
	mm_node_root(mm->node, &root, &epoch, &settled);
	if (!(all && settled) && now < mm->start_hold_until)
		return;
	mm->start_held = false;
	mm->unheard.count = 0;
	log_info("mm: start-up hold over (%s)", all && settled ? "all peers linked" : "deadline");
	for (struct mm_pending *p = mm->pending; p != NULL; p = p->next) {
		if (!p->deferred)
			continue;
		p->deferred = false;
		p->deadline = now + p->timeout_ms;
		(void)mm_request_master(mm->node, p->gkey, p->req_id, now);
	}
	drain(mm);
}

/* The node's one stall detector.  A node that did not run for longer than
 * its peers wait for it finds its links timed out because IT stopped, not
 * they: alone in its own view, it would make itself root and master of its
 * mailboxes at once and take writes no replica holds (chaos seed 9747
 * flag-holds).  So it holds its master requests again, as at start-up,
 * until its links are back and settled, and for one dead timeout it
 * refuses requests to it as master (repl_mm_stalled()).  Both before a
 * request read at wake-up is served: stall_check() runs first in every
 * loop turn, and repl_mm_stalled() looks again for a turn that blocked (a
 * hung disk). */
static void stall_seen(struct repl_mm *mm, uint64_t now)
{
	if (mm->last_run == 0 || now - mm->last_run <= REPL_MM_STALL_MS ||
	    mm->cfg->peers.count == 0)
		return;
	log_warnx("mm: this node did not run for %" PRIu64 " ms (stopped?): no master asked for "
		  "until its links are back, no request served as master for %u ms",
		  now - mm->last_run, REPL_MM_STALL_MS);
	mm->last_run = now;
	mm->stalled_at = now;
	mm->start_held = true;
	mm->start_hold_until = now + REPL_MM_START_HOLD_MS;
	mm->unheard.count = 0;
	for (size_t i = 0; i < mm->cfg->peers.count; i++)
		ARRAY_PUSH(&mm->unheard, mm->cfg->peers.items[i].sid);
}

/* Highest priority: before the link and client events of its wake-up. */
static void stall_check(struct ev_loop *loop, ev_check *w, int revents)
{
	struct repl_mm *mm = w->data;
	uint64_t now = mm_now();
	stall_seen(mm, now);
	mm->last_run = now;
}

bool repl_mm_stalled(struct repl_mm *mm)
{
	uint64_t now = mm_now();
	stall_seen(mm, now);
	return mm->stalled_at != 0 && now - mm->stalled_at < REPL_MM_STALL_MS;
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct repl_mm *mm = w->data;
	uint64_t now = mm_now();
	mm_tick(mm->node, now);
	drain(mm);
	start_hold_check(mm, now);
	expire_requests(mm, now);
}

static void idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	struct repl_mm *mm = w->data;
	ev_idle_stop(loop, w);
	drain(mm);
}

/* What mm_request_master() would refuse, checked for a deferred request. */
static bool gkey_plausible(const char *gkey)
{
	if (*gkey == '\0')
		return false;
	for (const char *c = gkey; *c != '\0'; c++) {
		if ((unsigned char)*c <= 0x20 || (unsigned char)*c >= 0x7f)
			return false;
	}
	return true;
}

int repl_mm_request_master(struct repl_mm *mm, const char *gkey, unsigned timeout_ms,
			   repl_mm_answer_cb *cb, void *ctx)
{
	if (strlen(gkey) > MM_GKEY_MAX)
		return -1;
	uint64_t now = mm_now();
	struct mm_pending *p = xcalloc(1, sizeof(*p));
	p->req_id = ++mm->next_req_id;
	p->deadline = now + timeout_ms;
	p->cb = cb;
	p->ctx = ctx;
	strcpy(p->gkey, gkey);
	struct mm_pending **pp = &mm->pending;
	while (*pp != NULL)
		pp = &(*pp)->next;
	*pp = p;
	if (mm->start_held) {
		if (!gkey_plausible(gkey)) {
			*pp = NULL;
			free(p);
			return -1;
		}
		p->deferred = true;
		p->timeout_ms = timeout_ms;
		return 0;
	}
	if (mm_request_master(mm->node, gkey, p->req_id, now) < 0) {
		*pp = NULL;
		free(p);
		return -1;
	}
	/* An answer known at once is given from the loop, as promised. */
	ev_idle_start(mm->loop, &mm->idle);
	return 0;
}

void repl_mm_set_gained(struct repl_mm *mm, repl_mm_gained_cb *cb, void *ctx)
{
	mm->gained_cb = cb;
	mm->gained_ctx = ctx;
}

bool repl_mm_is_master(struct repl_mm *mm, const char *gkey)
{
	return !mm->start_held && mm_is_master(mm->node, gkey);
}

uint64_t repl_mm_epoch(struct repl_mm *mm, bool *settled_r)
{
	uint32_t root;
	uint64_t epoch;
	bool settled;
	mm_node_root(mm->node, &root, &epoch, &settled);
	if (settled_r != NULL)
		*settled_r = settled;
	return epoch;
}

uint32_t repl_mm_root(struct repl_mm *mm)
{
	uint32_t root;
	uint64_t epoch;
	bool settled;
	mm_node_root(mm->node, &root, &epoch, &settled);
	return root;
}

int repl_mm_root_record(struct repl_mm *mm, const char *gkey, uint32_t *master_r)
{
	return mm_root_record(mm->node, gkey, master_r);
}

uint32_t repl_mm_cached_master(struct repl_mm *mm, const char *gkey)
{
	uint32_t master = 0;
	if (mm_cached_master(mm->node, gkey, &master) != 1)
		return 0;
	return master;
}

uint32_t repl_mm_next_hop(struct repl_mm *mm, uint32_t sid)
{
	return mm_next_hop(mm->node, sid);
}

bool repl_mm_linked(struct repl_mm *mm, uint32_t a, uint32_t b)
{
	return mm_linked(mm->node, a, b);
}

uint32_t repl_mm_tree_parent(struct repl_mm *mm, uint32_t root, uint32_t v)
{
	return mm_tree_parent(mm->node, root, v);
}

void repl_mm_note_write(struct repl_mm *mm, const char *gkey)
{
	if (mm_note_write(mm->node, gkey, mm_now()) == 0)
		drain(mm);
}

void repl_mm_forget_master(struct repl_mm *mm, const char *gkey, uint32_t stale_master)
{
	if (mm_forget_master(mm->node, gkey, stale_master) == 0)
		drain(mm);
}

int repl_mm_granule_key(const struct repl_mm *mm, const char *user, const struct guid *mailbox,
			char *out, size_t size)
{
	char hex[GUID_HEX_SIZE];
	guid_to_hex(mailbox, hex);
	return mm_granule_key(mm->gran, user, hex, out, size);
}

void repl_mm_status(struct repl_mm *mm, struct buf *out)
{
	uint32_t root;
	uint64_t epoch;
	bool settled;
	char es[32];
	mm_node_root(mm->node, &root, &epoch, &settled);
	repl_mm_epoch_str(epoch, es, sizeof(es));
	buf_appendf(out, "root: %u\n", root);
	buf_appendf(out, "epoch: %s\n", es);
	buf_appendf(out, "root_settled: %s\n", settled ? "yes" : "no");
	buf_appendf(out, "root_serving: %s\n", mm_node_serving(mm->node) ? "yes" : "no");
	uint32_t sids[MM_MAX_NODES];
	size_t n = mm_node_component(mm->node, sids, MM_MAX_NODES);
	buf_append_str(out, "mm_component: ");
	for (size_t i = 0; i < n && i < MM_MAX_NODES; i++)
		buf_appendf(out, "%s%u", i > 0 ? "," : "", sids[i]);
	buf_append_str(out, "\n");
}

/* ---- links and incoming messages ---- */

static void link_up_cb(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn, void *ctx)
{
	struct repl_mm *mm = ctx;
	if (mm->peers == NULL)
		mm->peers = peers;
	heard_from(mm, sid);
	mm_link_up(mm->node, sid, mm_now());
	drain(mm);
}

static void link_down_cb(struct repl_peers *peers, uint32_t sid, const char *reason, void *ctx)
{
	struct repl_mm *mm = ctx;
	mm_link_down(mm->node, sid, mm_now());
	drain(mm);
}

static const struct repl_peers_callbacks mm_peer_callbacks = {
	.link_up = link_up_cb,
	.link_down = link_down_cb,
};

const struct repl_peers_callbacks *repl_mm_peer_callbacks(void)
{
	return &mm_peer_callbacks;
}

/* The command's arguments as mm's: atoms and quoted strings only, and no
 * more in all than a line of mm's could hold.  Returns n or -1. */
static int mm_args_of(const struct proto_cmd *cmd, struct mm_arg *args, const char **error_r)
{
	size_t total = 0;
	if (cmd->arg_count > MM_MSG_MAX_ARGS) {
		*error_r = "too many arguments";
		return -1;
	}
	for (size_t i = 0; i < cmd->arg_count; i++) {
		const struct proto_arg *a = &cmd->args[i];
		if (a->type != PROTO_ARG_ATOM && a->type != PROTO_ARG_QUOTED) {
			*error_r = "lists and literals are not part of MM messages";
			return -1;
		}
		total += a->len + 1;
		if (total >= MM_WIRE_MAX_LINE) {
			*error_r = "message too long";
			return -1;
		}
		args[i].str = a->str;
		args[i].len = a->len;
		args[i].quoted = a->type == PROTO_ARG_QUOTED;
	}
	return (int)cmd->arg_count;
}

static void mm_cmd(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn,
		   const struct proto_cmd *cmd, void *ctx)
{
	struct repl_mm *mm = ctx;
	struct mm_arg args[MM_MSG_MAX_ARGS];
	const char *err;
	struct mm_msg *msg = xmalloc(sizeof(*msg));
	int n = mm_args_of(cmd, args, &err);
	if (n < 0 || mm_msg_from_args(args, (size_t)n, msg, &err) < 0) {
		mm->bad_in++;
		log_debug("mm: bad message from peer %u: %s", sid, err);
		proto_conn_reply(conn, cmd->tag, "BAD", "ARGS", err);
	} else {
		proto_conn_reply(conn, cmd->tag, "OK", NULL, NULL);
		heard_from(mm, sid);
		mm_receive(mm->node, sid, msg, mm_now());
		drain(mm);
	}
	free(msg);
}

void repl_mm_attach(struct repl_mm *mm, struct repl_peers *peers)
{
	mm->peers = peers;
	repl_peers_register(peers, "MM", mm_cmd, mm);
}

/* ---- life cycle ---- */

static enum mm_granularity gran_of(enum config_granularity g)
{
	switch (g) {
	case CONFIG_GRAN_USER:
		return MM_GRAN_USER;
	case CONFIG_GRAN_DOMAIN:
		return MM_GRAN_DOMAIN;
	case CONFIG_GRAN_GLOBAL:
		return MM_GRAN_GLOBAL;
	case CONFIG_GRAN_MAILBOX:
		break;
	}
	return MM_GRAN_MAILBOX;
}

struct repl_mm *repl_mm_create(struct ev_loop *loop, const struct config *cfg)
{
	struct mm_settings set;
	mm_settings_default(&set, cfg->node_id);
	struct repl_mm *mm = xcalloc(1, sizeof(*mm));
	mm->loop = loop;
	mm->cfg = cfg;
	mm->gran = gran_of(cfg->master_granularity);
	mm->node = mm_node_create(&set, mm_now());
	if (mm->node == NULL)
		fatalx("mm: node_id %u out of range", cfg->node_id);
	buf_init(&mm->line);
	ev_timer_init(&mm->tick, tick_cb, REPL_MM_TICK_MS / 1000.0, REPL_MM_TICK_MS / 1000.0);
	mm->tick.data = mm;
	ev_timer_start(loop, &mm->tick);
	ev_idle_init(&mm->idle, idle_cb);
	mm->idle.data = mm;
	ev_check_init(&mm->check, stall_check);
	mm->check.data = mm;
	ev_set_priority(&mm->check, EV_MAXPRI);
	ev_check_start(loop, &mm->check);
	mm->start_held = cfg->peers.count > 0;
	mm->start_hold_until = mm_now() + REPL_MM_START_HOLD_MS;
	/* The first tick makes a lone node its own root. */
	mm_tick(mm->node, mm_now());
	drain(mm);
	return mm;
}

void repl_mm_destroy(struct repl_mm **mmp)
{
	struct repl_mm *mm = *mmp;
	if (mm == NULL)
		return;
	*mmp = NULL;
	ev_timer_stop(mm->loop, &mm->tick);
	ev_idle_stop(mm->loop, &mm->idle);
	ev_check_stop(mm->loop, &mm->check);
	while (mm->pending != NULL) {
		struct mm_pending *p = mm->pending;
		mm->pending = p->next;
		struct repl_mm_answer ans;
		memset(&ans, 0, sizeof(ans));
		ans.error = "shutting down";
		ans.gkey = p->gkey;
		p->cb(p->ctx, &ans);
		free(p);
	}
	mm_node_destroy(&mm->node);
	ARRAY_FREE(&mm->unheard);
	buf_free(&mm->line);
	free(mm);
}
