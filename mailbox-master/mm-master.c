/* Granule mastership within one epoch: the master cache, local requests
 * and their holding during moves, MASTER-WHO/IS at the root, MASTER-MOVE
 * forwarding, RELEASE, and mastership following writes with hysteresis.
 *
 * The safety argument (PROTOCOL.md, "Invariants"): within an epoch only
 * the root grants, every grant has a new generation, a new grant happens
 * only after the previous master released (or in a new epoch), and a node
 * never becomes master from a MASTER-IS whose generation it has already
 * seen. */
#include <string.h>

#include "mailbox-master/mm-private.h"

#define MM_MOVE_MAX_TRIES 5

/* Puts g on the list mm_master_tick() visits, so that a tick costs the
 * granules with something under way, not the whole table. */
static void mark_busy(struct mm_node *node, struct mm_gran *g)
{
	if (g->in_busy)
		return;
	g->in_busy = true;
	g->busy_next = node->busy;
	node->busy = g;
}

static bool is_busy(const struct mm_gran *g)
{
	return g->reqs.count > 0 || g->who_pending || g->holding || g->want || g->released;
}

static void answer_requests(struct mm_node *node, struct mm_gran *g, uint32_t master)
{
	for (size_t i = 0; i < g->reqs.count; i++)
		mm_event(node, MM_EV_REQUEST_DONE, g->key, master, g->reqs.items[i]);
	g->reqs.count = 0;
}

static void reset_writes(struct mm_gran *g, uint64_t now)
{
	g->rate_at = now;
	g->rate = 0;
}

/* One write in the decaying count; fixed point, so that a count that
 * halves keeps its fractions. */
#define MM_RATE_ONE 1024u
/* A bound far above any real rate: keeps rate * half_life in 64 bits. */
#define MM_RATE_MAX ((uint64_t)MM_RATE_ONE << 20)

/* The write count of g as of now: halved for every half life since
 * rate_at, and linearly in between (2^-f taken as 1 - f/2, within 6%).
 * A decaying count rather than fixed windows: it forgets a writer that
 * stopped within a few half lives, whenever it stopped, which is what
 * lets a sole writer get the mailbox within seconds of the other writer
 * going quiet (issue 19). */
static uint64_t rate_now(const struct mm_node *node, const struct mm_gran *g)
{
	uint64_t half = node->set.follow_writes_half_life_ms;
	uint64_t dt = node->now > g->rate_at ? node->now - g->rate_at : 0;
	if (half == 0)
		return 0;
	uint64_t n = dt / half;
	if (n >= 32)
		return 0;
	uint64_t r = g->rate >> n;
	return r - r * (dt % half) / (2 * half);
}

static void count_write(const struct mm_node *node, struct mm_gran *g)
{
	uint64_t r = rate_now(node, g) + MM_RATE_ONE;
	g->rate = r < MM_RATE_MAX ? r : MM_RATE_MAX;
	g->rate_at = node->now;
}

static void send_move(struct mm_node *node, struct mm_gran *g)
{
	struct mm_msg msg;
	uint32_t dst = g->applied && g->master != 0 ? g->master : node->root;

	mm_msg_init(node, &msg, MM_MSG_MOVE, dst);
	strcpy(msg.gkey, g->key);
	msg.requester = node->sid;
	msg.path[0] = node->sid;
	msg.n_path = 1;
	msg.soft = g->want_soft;
	msg.rate = (uint32_t)((rate_now(node, g) + MM_RATE_ONE / 2) / MM_RATE_ONE);
	g->want_sent = true;
	g->want_sent_at = node->now;
	mm_route(node, &msg);
}

static void send_who(struct mm_node *node, struct mm_gran *g)
{
	struct mm_msg msg;
	mm_msg_init(node, &msg, MM_MSG_WHO, node->root);
	strcpy(msg.gkey, g->key);
	g->who_pending = true;
	g->who_sent_at = node->now;
	mark_busy(node, g);
	mm_route(node, &msg);
}

/* Moves a granule's pending work on as far as the current state allows. */
static void kick(struct mm_node *node, struct mm_gran *g)
{
	if (!mm_settled(node) || g->holding)
		return;
	if (g->am_master) {
		if (g->want) {
			g->want = false;
			mm_event(node, MM_EV_MASTER_GAINED, g->key, node->sid, 0);
		}
		answer_requests(node, g, node->sid);
		return;
	}
	if (g->want) {
		/* Our own move is under way: hold requests until it ends. */
		if (!g->want_sent)
			send_move(node, g);
		return;
	}
	if (g->applied && g->master != 0 && g->master != node->sid) {
		/* A broadcast MASTER-IS may have been lost on a cut link:
		 * old entries are used, and checked with the root meanwhile. */
		if (g->reqs.count > 0 && !g->who_pending &&
		    node->now - g->verified_at >= node->set.cache_ttl_ms)
			send_who(node, g);
		answer_requests(node, g, g->master);
		return;
	}
	if (g->reqs.count > 0 && !g->who_pending)
		send_who(node, g);
}

static void send_is(struct mm_node *node, struct mm_gran *g, uint32_t dst)
{
	struct mm_msg msg;
	mm_msg_init(node, &msg, MM_MSG_IS, dst);
	strcpy(msg.gkey, g->key);
	msg.master = g->rec_master;
	msg.gen = g->rec_gen;
	mm_route(node, &msg);
}

/* Sends the root's record to dst and every node of a move's path, once. */
static void notify_is(struct mm_node *node, struct mm_gran *g, uint32_t dst,
		      const uint32_t *path, uint32_t n_path)
{
	uint32_t done[MM_MOVE_MAX_HOPS + 2];
	uint32_t n = 0;

	done[n++] = dst;
	send_is(node, g, dst);
	for (uint32_t i = 0; i < n_path; i++) {
		if (mm_sids_contains(done, n, path[i]))
			continue;
		done[n++] = path[i];
		send_is(node, g, path[i]);
	}
}

static void move_fail(struct mm_node *node, const struct mm_msg *move,
		      enum mm_move_fail_reason reason, uint32_t master)
{
	struct mm_msg msg;
	uint32_t done[MM_MOVE_MAX_HOPS + 1];
	uint32_t n = 0;

	done[n++] = move->requester;
	for (uint32_t i = 0; i < move->n_path; i++) {
		if (!mm_sids_contains(done, n, move->path[i]))
			done[n++] = move->path[i];
	}
	for (uint32_t i = 0; i < n; i++) {
		mm_msg_init(node, &msg, MM_MSG_MOVE_FAIL, done[i]);
		strcpy(msg.gkey, move->gkey);
		msg.requester = move->requester;
		msg.master = master;
		msg.reason = reason;
		mm_route(node, &msg);
	}
}

/* The root hands an unmastered granule to `to`. */
static void root_assign(struct mm_gran *g, uint32_t to)
{
	g->rec = true;
	g->rec_master = to;
	g->rec_gen++;
}

static void handle_who(struct mm_node *node, const struct mm_msg *msg)
{
	if (!mm_is_root(node))
		return; /* the sender's root moved on; it retries */
	struct mm_gran *g = mm_gran_get(node, msg->gkey);
	if (!g->rec || g->rec_master == 0)
		root_assign(g, msg->src);
	send_is(node, g, msg->src);
}

static void apply_is(struct mm_node *node, struct mm_gran *g, uint32_t master,
		     uint64_t gen)
{
	if (g->applied && gen < g->gen)
		return;
	if (g->applied && gen == g->gen && master == g->master) {
		g->verified_at = node->now;
		g->who_pending = false;
	}
	if (g->applied && gen == g->gen) {
		/* A repeat: it may fill in a master we forgot, but never makes
		 * this node master again after it released at this gen. */
		if (g->master != 0 || g->am_master || master == node->sid || master == 0)
			return;
	}
	if (g->released && gen > g->rel_gen)
		g->released = false;
	bool was = g->am_master;
	bool first = !g->applied;
	bool changed = first || g->master != master;
	g->applied = true;
	g->gen = gen;
	g->master = master;
	g->holding = false;
	g->who_pending = false;
	g->verified_at = node->now;
	if (changed) {
		/* Learning the master for the first time (a node whose client
		 * just started writing) is no change of master: holding its
		 * soft move down would keep a sole writer waiting for nothing.
		 * A master that just got the granule refuses on its own. */
		g->learned_at = first ? 0 : node->now;
		reset_writes(g, node->now);
	}
	if (master == node->sid) {
		g->am_master = true;
		if (!was) {
			g->master_since = node->now;
			mm_event(node, MM_EV_MASTER_GAINED, g->key, node->sid, 0);
			if (g->want)
				node->stats.moves_done++;
		}
		g->want = false;
	} else {
		g->am_master = false;
		if (was)
			mm_event(node, MM_EV_MASTER_LOST, g->key, master, 0);
		if (g->want)
			g->want_sent = false; /* re-aim the move at the new master */
	}
	if (changed && master != 0 && master != node->sid)
		mm_event(node, MM_EV_MASTER, g->key, master, 0);
	kick(node, g);
}

static bool refuse_soft(struct mm_node *node, struct mm_gran *g, uint32_t rate)
{
	if (node->now - g->master_since < node->set.hold_down_ms)
		return true;
	/* A master whose clients stopped writing a while ago gives way to
	 * one that writes, whatever its count still remembers: the count
	 * fades too slowly for a sole writer to wait for it. */
	if (node->now - g->rate_at >= node->set.follow_quiet_ms)
		return false;
	return rate_now(node, g) * 2 >= (uint64_t)rate * MM_RATE_ONE;
}

static void forward_move(struct mm_node *node, struct mm_gran *g,
			 const struct mm_msg *msg, uint32_t next)
{
	if (next == 0 || mm_sids_contains(msg->path, msg->n_path, next) ||
	    next == node->sid) {
		move_fail(node, msg, MM_FAIL_LOOP, g->master);
		return;
	}
	if (msg->n_path >= MM_MOVE_MAX_HOPS) {
		move_fail(node, msg, MM_FAIL_HOPS, g->master);
		return;
	}
	struct mm_msg fwd = *msg;
	fwd.dst = next;
	fwd.ttl = MM_TTL_DEFAULT;
	fwd.epoch = node->epoch;
	if (msg->requester != node->sid) {
		fwd.path[fwd.n_path++] = node->sid;
		if (!g->holding) {
			g->holding = true;
			g->hold_since = node->now;
			mark_busy(node, g);
		}
	}
	mm_route(node, &fwd);
}

/* Repeats a RELEASE whose answer did not come. */
static void send_release(struct mm_node *node, struct mm_gran *g)
{
	struct mm_msg msg;
	mm_msg_init(node, &msg, MM_MSG_RELEASE, node->root);
	strcpy(msg.gkey, g->key);
	msg.requester = g->rel_requester;
	msg.gen = g->rel_gen;
	msg.path[0] = node->sid;
	msg.n_path = 1;
	g->rel_sent_at = node->now;
	mm_route(node, &msg);
}

static void handle_move(struct mm_node *node, const struct mm_msg *msg)
{
	struct mm_gran *g = mm_gran_get(node, msg->gkey);

	if (g->am_master) {
		if (msg->requester == node->sid) {
			/* A retried move that found us already master: free
			 * whoever held for it. */
			if (msg->n_path > 1)
				move_fail(node, msg, MM_FAIL_LOOP, node->sid);
			return;
		}
		if (msg->soft && refuse_soft(node, g, msg->rate)) {
			node->stats.soft_moves_refused++;
			move_fail(node, msg, MM_FAIL_REFUSED, node->sid);
			return;
		}
		/* Give it up first: from here until the root's MASTER-IS the
		 * granule has no master, never two. */
		struct mm_msg rel = *msg;
		rel.type = MM_MSG_RELEASE;
		rel.src = node->sid;
		rel.dst = node->root;
		rel.ttl = MM_TTL_DEFAULT;
		rel.epoch = node->epoch;
		rel.gen = g->gen;
		if (rel.n_path < MM_MOVE_MAX_HOPS &&
		    !mm_sids_contains(rel.path, rel.n_path, node->sid))
			rel.path[rel.n_path++] = node->sid;
		g->am_master = false;
		g->master = 0;
		g->holding = true;
		g->hold_since = node->now;
		g->released = true;
		mark_busy(node, g);
		g->rel_requester = msg->requester;
		g->rel_gen = g->gen;
		g->rel_sent_at = node->now;
		mm_event(node, MM_EV_MASTER_LOST, g->key, msg->requester, 0);
		mm_route(node, &rel);
		return;
	}
	if (mm_is_root(node)) {
		if (!g->rec || g->rec_master == 0) {
			root_assign(g, msg->requester);
			notify_is(node, g, msg->requester, msg->path, msg->n_path);
			return;
		}
		forward_move(node, g, msg, g->rec_master);
		return;
	}
	uint32_t next = node->root;
	if (g->applied && g->master != 0 && g->master != node->sid &&
	    !mm_sids_contains(msg->path, msg->n_path, g->master))
		next = g->master;
	forward_move(node, g, msg, next);
}

static void handle_release(struct mm_node *node, const struct mm_msg *msg)
{
	if (!mm_is_root(node))
		return;
	struct mm_gran *g = mm_gran_get(node, msg->gkey);
	if (!g->rec || g->rec_master != msg->src || g->rec_gen != msg->gen) {
		/* Not what we recorded: tell the sender what we have. */
		if (g->rec)
			send_is(node, g, msg->src);
		return;
	}
	g->rec_gen++;
	g->rec_master = mm_sids_contains(node->members, node->n_members, msg->requester) ?
		msg->requester : 0;
	notify_is(node, g, msg->requester, msg->path, msg->n_path);
	/* Everyone else may have cached the old master: moves are rare
	 * (hysteresis), so tell every member rather than let caches lag. */
	for (uint32_t i = 0; i < node->n_members; i++) {
		uint32_t m = node->members[i];
		if (m != msg->requester && !mm_sids_contains(msg->path, msg->n_path, m))
			send_is(node, g, m);
	}
}

static void handle_move_fail(struct mm_node *node, const struct mm_msg *msg)
{
	struct mm_gran *g = mm_gran_get(node, msg->gkey);

	if (msg->requester == node->sid && g->want) {
		g->want_sent = false;
		if (msg->reason == MM_FAIL_REFUSED) {
			g->want = false;
			g->backoff_until = node->now + node->set.backoff_ms;
		} else if (++g->want_tries >= MM_MOVE_MAX_TRIES) {
			g->want = false;
			mm_event(node, MM_EV_MOVE_FAILED, g->key, msg->master, 0);
			/* the event just queued carries the reason too */
			node->out.items[node->out.count - 1].event.reason = msg->reason;
		} else {
			/* Retry from the root on the next tick: the loop was a
			 * stale cache somewhere on the way. */
			g->want_sent = true;
			g->want_sent_at = node->now;
			g->master = 0;
		}
	}
	if (msg->requester != node->sid && g->holding && !g->released) {
		g->holding = false;
		/* A hint only: never names this node, which became master
		 * through MASTER-IS alone. */
		if (!g->am_master && g->master == 0 && msg->master != 0 &&
		    msg->master != node->sid && g->applied)
			g->master = msg->master;
	}
	kick(node, g);
}

void mm_master_dispatch(struct mm_node *node, const struct mm_msg *msg)
{
	switch (msg->type) {
	case MM_MSG_WHO:
		handle_who(node, msg);
		break;
	case MM_MSG_IS:
		apply_is(node, mm_gran_get(node, msg->gkey), msg->master, msg->gen);
		break;
	case MM_MSG_MOVE:
		handle_move(node, msg);
		break;
	case MM_MSG_RELEASE:
		handle_release(node, msg);
		break;
	case MM_MSG_MOVE_FAIL:
		handle_move_fail(node, msg);
		break;
	default:
		break;
	}
}

void mm_master_flush(struct mm_node *node)
{
	/* Rebuilt below from the entries that survive. */
	node->busy = NULL;
	for (size_t i = 0; i < node->n_buckets; i++) {
		struct mm_gran **gp = &node->buckets[i];
		while (*gp != NULL) {
			struct mm_gran *g = *gp;
			if (g->am_master)
				mm_event(node, MM_EV_MASTER_LOST, g->key, 0, 0);
			if (g->reqs.count == 0 && !g->want) {
				/* Nothing left of it in the new epoch: the table
				 * holds only granules used since the last one. */
				*gp = g->next;
				mm_gran_free(node, g);
				continue;
			}
			g->am_master = false;
			g->applied = false;
			g->gen = 0;
			g->master = 0;
			g->holding = false;
			g->who_pending = false;
			g->want_sent = false;
			g->released = false;
			g->rec = false;
			g->rec_master = 0;
			g->rec_gen = 0;
			reset_writes(g, node->now);
			g->in_busy = false;
			mark_busy(node, g);
			gp = &g->next;
		}
	}
}

void mm_master_invalidate(struct mm_node *node)
{
	for (size_t i = 0; i < node->n_buckets; i++) {
		for (struct mm_gran *g = node->buckets[i]; g != NULL; g = g->next) {
			if (g->master != 0 && g->master != node->sid &&
			    !mm_sids_contains(node->comp, node->n_comp, g->master))
				g->master = 0;
		}
	}
}

void mm_master_kick_all(struct mm_node *node)
{
	for (size_t i = 0; i < node->n_buckets; i++) {
		for (struct mm_gran *g = node->buckets[i]; g != NULL; g = g->next)
			kick(node, g);
	}
}

void mm_master_tick(struct mm_node *node)
{
	uint64_t now = node->now;
	struct mm_gran **gp = &node->busy;

	while (*gp != NULL) {
		struct mm_gran *g = *gp;
		if (!is_busy(g)) {
			*gp = g->busy_next;
			g->in_busy = false;
			continue;
		}
		if (g->released && mm_settled(node) &&
		    now - g->rel_sent_at >= node->set.retry_ms)
			send_release(node, g);
		if (g->holding && !g->released &&
		    now - g->hold_since >= node->set.hold_timeout_ms) {
			/* The move's end never reached us: ask again. */
			g->holding = false;
			g->master = 0;
		}
		if (g->who_pending && now - g->who_sent_at >= node->set.retry_ms)
			g->who_pending = false;
		if (g->want && g->want_sent &&
		    now - g->want_sent_at >= node->set.retry_ms)
			g->want_sent = false;
		kick(node, g);
		gp = &g->busy_next;
	}
}

/* ---- local requests ---- */

int mm_request_master(struct mm_node *node, const char *gkey, uint64_t req_id,
		      uint64_t now)
{
	if (!mm_gkey_valid(gkey))
		return -1;
	node->now = now;
	struct mm_gran *g = mm_gran_get(node, gkey);
	ARRAY_PUSH(&g->reqs, req_id);
	mark_busy(node, g);
	kick(node, g);
	mm_drain_self(node);
	return 0;
}

int mm_request_mastership(struct mm_node *node, const char *gkey, uint64_t now)
{
	if (!mm_gkey_valid(gkey))
		return -1;
	node->now = now;
	struct mm_gran *g = mm_gran_get(node, gkey);
	if (g->am_master) {
		mm_event(node, MM_EV_MASTER_GAINED, g->key, node->sid, 0);
		return 0;
	}
	if (!g->want || g->want_soft) {
		g->want = true;
		g->want_soft = false;
		mark_busy(node, g);
		g->want_sent = false;
		g->want_tries = 0;
	}
	kick(node, g);
	mm_drain_self(node);
	return 0;
}

int mm_note_write(struct mm_node *node, const char *gkey, uint64_t now)
{
	if (!mm_gkey_valid(gkey))
		return -1;
	node->now = now;
	struct mm_gran *g = mm_gran_get(node, gkey);
	count_write(node, g);
	if (!g->am_master && !g->want && mm_settled(node) && g->applied &&
	    g->master != 0 && now >= g->backoff_until &&
	    now - g->learned_at >= node->set.hold_down_ms &&
	    g->rate >= (uint64_t)node->set.follow_writes_count * MM_RATE_ONE) {
		g->want = true;
		g->want_soft = true;
		mark_busy(node, g);
		g->want_sent = false;
		g->want_tries = 0;
		node->stats.soft_moves_asked++;
		kick(node, g);
		mm_drain_self(node);
	}
	return 0;
}

int mm_forget_master(struct mm_node *node, const char *gkey, uint32_t stale_master)
{
	if (!mm_gkey_valid(gkey))
		return -1;
	struct mm_gran *g = mm_gran_lookup(node, gkey);
	if (g != NULL && !g->am_master && g->master == stale_master)
		g->master = 0;
	return 0;
}

bool mm_is_master(const struct mm_node *node, const char *gkey)
{
	const struct mm_gran *g = mm_gran_lookup(node, gkey);
	return g != NULL && g->am_master && mm_settled(node);
}

int mm_cached_master(const struct mm_node *node, const char *gkey, uint32_t *master_r)
{
	const struct mm_gran *g = mm_gran_lookup(node, gkey);
	if (g == NULL || !mm_settled(node))
		return 0;
	if (g->am_master) {
		*master_r = node->sid;
		return 1;
	}
	if (!g->applied || g->master == 0)
		return 0;
	*master_r = g->master;
	return 1;
}

int mm_root_record(const struct mm_node *node, const char *gkey, uint32_t *master_r)
{
	if (!mm_node_serving(node))
		return 0;
	const struct mm_gran *g = mm_gran_lookup(node, gkey);
	*master_r = g != NULL && g->rec ? g->rec_master : 0;
	return 1;
}

void mm_master_info(const struct mm_node *node, const char *gkey,
		    struct mm_master_info *info_r)
{
	const struct mm_gran *g = mm_gran_lookup(node, gkey);

	memset(info_r, 0, sizeof(*info_r));
	info_r->epoch = node->epoch;
	info_r->settled = mm_settled(node);
	if (g == NULL || !info_r->settled)
		return;
	info_r->am_master = g->am_master;
	info_r->master = g->am_master ? node->sid : g->master;
	info_r->gen = g->applied ? g->gen : 0;
	info_r->moving = g->holding || g->want || g->released;
}
