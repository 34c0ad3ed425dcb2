/* The node: inputs and outputs, link state flooding, routing of messages to
 * non-neighbours, and the epoch rules (who is root, when an epoch is minted
 * or adopted, DROPPED gating).  Granule logic is in mm-master.c. */
#include <string.h>

#include "lib/xalloc.h"
#include "mailbox-master/mm-private.h"

/* Bound on messages a node sends itself within one input; reaching it is a
 * bug in this module, not something the network can cause. */
#define MM_SELFQ_MAX 100000
/* Nodes remembered in the link state database, dead ones included. */
#define MM_LSDB_MAX (4 * MM_MAX_NODES)

void mm_settings_default(struct mm_settings *set, uint32_t sid)
{
	memset(set, 0, sizeof(*set));
	set->sid = sid;
	set->retry_ms = 500;
	set->hold_timeout_ms = 5000;
	/* Tuned for data centres 50 ms apart (issue 19), in the simulator
	 * with a 25 ms one-way delay (tests/mm "wan: ...").  A client writing
	 * alone on a non-master makes a write per round trip or two, so its
	 * count passes 8 within a second; a master that wrote as often is
	 * forgotten a second or two after it stopped; a refused node asks
	 * again a second later.  A 2.5 s half life is what keeps two nodes
	 * writing one mailbox at random from moving it on every short run of
	 * one of them (1 s: 15 moves in 10 minutes; 2.5 s: at most 2). */
	set->follow_writes_count = 8;
	set->follow_writes_half_life_ms = 2500;
	set->hold_down_ms = 2000;
	set->backoff_ms = 1000;
	set->follow_quiet_ms = 1500;
	set->cache_ttl_ms = 60000;
}

bool mm_is_root(const struct mm_node *node)
{
	return node->root == node->sid;
}

bool mm_settled(const struct mm_node *node)
{
	return node->epoch != 0 && MM_EPOCH_ROOT(node->epoch) == node->root;
}

void mm_msg_init(const struct mm_node *node, struct mm_msg *msg,
		 enum mm_msg_type type, uint32_t dst)
{
	memset(msg, 0, sizeof(*msg));
	msg->type = type;
	msg->src = node->sid;
	msg->dst = dst;
	msg->epoch = node->epoch;
	msg->ttl = MM_TTL_DEFAULT;
}

static void emit_send(struct mm_node *node, uint32_t peer, const struct mm_msg *msg)
{
	struct mm_output o;
	memset(&o, 0, sizeof(o));
	o.kind = MM_OUT_SEND;
	o.peer = peer;
	o.msg = *msg;
	ARRAY_PUSH(&node->out, o);
	node->stats.msgs_out++;
}

void mm_event(struct mm_node *node, enum mm_event_type type, const char *gkey,
	      uint32_t sid, uint64_t req_id)
{
	struct mm_output o;
	memset(&o, 0, sizeof(o));
	o.kind = MM_OUT_EVENT;
	o.event.type = type;
	o.event.sid = sid;
	o.event.epoch = node->epoch;
	o.event.req_id = req_id;
	if (gkey != NULL)
		strcpy(o.event.gkey, gkey); /* keys are validated to fit */
	ARRAY_PUSH(&node->out, o);
}

void mm_route(struct mm_node *node, const struct mm_msg *msg)
{
	if (msg->dst == node->sid) {
		ARRAY_PUSH(&node->selfq, *msg);
		return;
	}
	uint32_t hop = mm_topo_next_hop(node, msg->dst);
	if (hop == 0) {
		node->stats.dropped_no_route++;
		return;
	}
	emit_send(node, hop, msg);
}

/* ---- link state ---- */

static void lsa_store(struct mm_node *node, const struct mm_lsa *lsa)
{
	struct mm_lsa *l = mm_lsdb_find(node, lsa->sid);
	if (l == NULL)
		ARRAY_PUSH(&node->lsdb, *lsa);
	else
		*l = *lsa;
}

static void lsa_to_msg(const struct mm_lsa *l, struct mm_msg *msg)
{
	memset(msg, 0, sizeof(*msg));
	msg->type = MM_MSG_LINKS;
	msg->src = l->sid;
	msg->epoch = l->epoch;
	msg->version = l->version;
	msg->n_nbrs = l->n_nbrs;
	memcpy(msg->nbrs, l->nbrs, l->n_nbrs * sizeof(l->nbrs[0]));
}

static void flood(struct mm_node *node, const struct mm_msg *msg, uint32_t except)
{
	for (uint32_t i = 0; i < node->n_links; i++) {
		if (node->links[i] != except)
			emit_send(node, node->links[i], msg);
	}
}

/* A new version of this node's own link state, flooded to every link. */
static void originate(struct mm_node *node)
{
	struct mm_lsa l;
	struct mm_msg msg;

	memset(&l, 0, sizeof(l));
	l.sid = node->sid;
	l.version = ++node->my_version;
	l.epoch = node->epoch;
	l.n_nbrs = node->n_links;
	memcpy(l.nbrs, node->links, node->n_links * sizeof(node->links[0]));
	lsa_store(node, &l);
	lsa_to_msg(&l, &msg);
	flood(node, &msg, 0);
}

static bool sids_equal(const uint32_t *a, uint32_t na, const uint32_t *b, uint32_t nb)
{
	if (na != nb)
		return false;
	for (uint32_t i = 0; i < na; i++) {
		if (!mm_sids_contains(b, nb, a[i]))
			return false;
	}
	return true;
}

/* ---- epochs ---- */

static void root_check_serving(struct mm_node *node)
{
	if (node->serving || node->n_waiting > 0 || !mm_is_root(node))
		return;
	node->serving = true;
	/* Requests queued while members were dropping, in arrival order. */
	for (size_t i = 0; i < node->queued.count; i++)
		ARRAY_PUSH(&node->selfq, node->queued.items[i]);
	node->queued.count = 0;
	mm_master_kick_all(node);
}

static void send_announce(struct mm_node *node)
{
	struct mm_msg msg;
	for (uint32_t i = 0; i < node->n_waiting; i++) {
		mm_msg_init(node, &msg, MM_MSG_ANNOUNCE, node->waiting[i]);
		mm_route(node, &msg);
	}
	node->announce_at = node->now;
}

/* Starts a new epoch minted by this node: a real one if it is root, else a
 * placeholder that only says "I dropped everything and wait for my root's
 * next epoch" (its counter forces the root to mint a newer one). */
static void mint(struct mm_node *node)
{
	node->max_counter++;
	node->epoch = MM_EPOCH_MAKE(node->max_counter, node->sid);
	node->stats.epochs_minted++;
	mm_master_flush(node);
	node->queued.count = 0;
	node->n_members = node->n_waiting = 0;
	node->serving = false;
	if (mm_is_root(node)) {
		memcpy(node->members, node->comp, node->n_comp * sizeof(node->comp[0]));
		node->n_members = node->n_comp;
		for (uint32_t i = 0; i < node->n_comp; i++) {
			if (node->comp[i] != node->sid)
				node->waiting[node->n_waiting++] = node->comp[i];
		}
		mm_event(node, MM_EV_ROOT, NULL, node->sid, 0);
		send_announce(node);
	}
	originate(node);
	root_check_serving(node);
}

static void adopt(struct mm_node *node, uint64_t epoch)
{
	struct mm_msg msg;

	node->epoch = epoch;
	mm_master_flush(node);
	node->queued.count = 0;
	node->n_members = node->n_waiting = 0;
	node->serving = false;
	mm_event(node, MM_EV_ROOT, NULL, node->root, 0);
	mm_msg_init(node, &msg, MM_MSG_DROPPED, node->root);
	mm_route(node, &msg);
	originate(node);
	mm_master_kick_all(node);
}

/* Joins epoch if it was minted by this node's root and is newer than what
 * the node takes part in.  An unsettled node (placeholder epoch) accepts
 * any epoch of its root whose counter is not older. */
static void try_adopt(struct mm_node *node, uint64_t epoch)
{
	if (mm_is_root(node) || MM_EPOCH_ROOT(epoch) != node->root)
		return;
	if (epoch > node->epoch ||
	    (!mm_settled(node) && MM_EPOCH_COUNTER(epoch) >= MM_EPOCH_COUNTER(node->epoch)))
		adopt(node, epoch);
}

static void see_epoch(struct mm_node *node, uint64_t epoch)
{
	if (MM_EPOCH_COUNTER(epoch) > node->max_counter)
		node->max_counter = MM_EPOCH_COUNTER(epoch);
}

/* Called after anything that may change the component or the root. */
static void topology_changed(struct mm_node *node)
{
	uint32_t old_root = node->root;

	mm_topo_compute(node);
	if (node->root != old_root) {
		/* Every root change drops everything (a placeholder epoch when
		 * the new root is another node). */
		mint(node);
		old_root = 0;
	}
	if (!mm_is_root(node)) {
		if (mm_settled(node))
			mm_master_invalidate(node);
		struct mm_lsa *l = mm_lsdb_find(node, node->root);
		if (l != NULL)
			try_adopt(node, l->epoch);
		return;
	}
	if (old_root == 0)
		return;
	bool same = sids_equal(node->comp, node->n_comp, node->members, node->n_members);
	for (uint32_t i = 0; i < node->n_comp && same; i++) {
		struct mm_lsa *l = mm_lsdb_find(node, node->comp[i]);
		if (l != NULL && MM_EPOCH_COUNTER(l->epoch) > MM_EPOCH_COUNTER(node->epoch))
			same = false;
	}
	/* Any change of membership is a new epoch: a master that left may not
	 * know it yet, and the epoch is what fences it off. */
	if (!same)
		mint(node);
}

/* ---- lifecycle ---- */

struct mm_node *mm_node_create(const struct mm_settings *set, uint64_t now)
{
	if (set->sid < 1)
		return NULL;
	struct mm_node *node = xcalloc(1, sizeof(*node));
	node->set = *set;
	node->sid = set->sid;
	node->now = now;
	mm_topo_compute(node);
	mint(node);
	return node;
}

void mm_node_destroy(struct mm_node **nodep)
{
	struct mm_node *node = *nodep;
	if (node == NULL)
		return;
	mm_gran_free_all(node);
	ARRAY_FREE(&node->lsdb);
	ARRAY_FREE(&node->queued);
	ARRAY_FREE(&node->out);
	ARRAY_FREE(&node->selfq);
	free(node);
	*nodep = NULL;
}

/* ---- message handling ---- */

static void root_queue(struct mm_node *node, const struct mm_msg *msg)
{
	ARRAY_PUSH(&node->queued, *msg);
}

/* A routed message that reached this node. */
static void deliver(struct mm_node *node, const struct mm_msg *msg)
{
	struct mm_msg reply;

	see_epoch(node, msg->epoch);
	switch (msg->type) {
	case MM_MSG_ANNOUNCE:
		try_adopt(node, msg->epoch);
		if (!mm_is_root(node) && mm_settled(node) && node->epoch == msg->epoch) {
			/* A repeated announce: our DROPPED may have been lost. */
			mm_msg_init(node, &reply, MM_MSG_DROPPED, node->root);
			mm_route(node, &reply);
		}
		return;
	case MM_MSG_STALE:
		try_adopt(node, msg->epoch);
		return;
	case MM_MSG_DROPPED:
		if (mm_is_root(node) && msg->epoch == node->epoch) {
			for (uint32_t i = 0; i < node->n_waiting; i++) {
				if (node->waiting[i] == msg->src) {
					node->waiting[i] = node->waiting[--node->n_waiting];
					break;
				}
			}
			root_check_serving(node);
		}
		return;
	default:
		break;
	}
	if (!mm_settled(node))
		return; /* dropped everything; the sender retries later */
	if (msg->epoch < node->epoch) {
		node->stats.refused_stale++;
		if (msg->type != MM_MSG_MOVE_FAIL && msg->type != MM_MSG_IS) {
			mm_msg_init(node, &reply, MM_MSG_STALE, msg->src);
			mm_route(node, &reply);
		}
		return;
	}
	if (msg->epoch > node->epoch) {
		try_adopt(node, msg->epoch);
		if (msg->epoch != node->epoch)
			return;
	}
	if (mm_is_root(node) && !node->serving &&
	    (msg->type == MM_MSG_WHO || msg->type == MM_MSG_MOVE ||
	     msg->type == MM_MSG_RELEASE)) {
		root_queue(node, msg);
		return;
	}
	mm_master_dispatch(node, msg);
}

void mm_drain_self(struct mm_node *node)
{
	size_t n = 0;
	while (node->selfq_pos < node->selfq.count) {
		struct mm_msg msg = node->selfq.items[node->selfq_pos++];
		deliver(node, &msg);
		if (++n > MM_SELFQ_MAX)
			abort();
	}
	node->selfq.count = node->selfq_pos = 0;
}

static void receive_links(struct mm_node *node, uint32_t from, const struct mm_msg *msg)
{
	see_epoch(node, msg->epoch);
	if (msg->src == node->sid) {
		/* Our own state from before a restart: outdo it.  An echo
		 * of the current version is normal flooding. */
		struct mm_lsa *own = mm_lsdb_find(node, node->sid);
		bool same = own != NULL && own->version == msg->version &&
			own->epoch == msg->epoch && own->n_nbrs == msg->n_nbrs &&
			memcmp(own->nbrs, msg->nbrs, own->n_nbrs * sizeof(own->nbrs[0])) == 0;
		if (msg->version > node->my_version ||
		    (msg->version == node->my_version && !same)) {
			node->my_version = msg->version;
			originate(node);
		}
		return;
	}
	struct mm_lsa *l = mm_lsdb_find(node, msg->src);
	if (l != NULL && l->version >= msg->version)
		return;
	if (l == NULL && node->lsdb.count >= MM_LSDB_MAX) {
		node->stats.dropped_invalid++;
		return;
	}
	struct mm_lsa n;
	memset(&n, 0, sizeof(n));
	n.sid = msg->src;
	n.version = msg->version;
	n.epoch = msg->epoch;
	n.n_nbrs = msg->n_nbrs;
	memcpy(n.nbrs, msg->nbrs, msg->n_nbrs * sizeof(msg->nbrs[0]));
	lsa_store(node, &n);
	flood(node, msg, from);
	topology_changed(node);
}

void mm_receive(struct mm_node *node, uint32_t from, const struct mm_msg *msg,
		uint64_t now)
{
	const char *error;

	node->now = now;
	node->stats.msgs_in++;
	if (!mm_sids_contains(node->links, node->n_links, from) ||
	    mm_msg_validate(msg, &error) < 0) {
		node->stats.dropped_invalid++;
		return;
	}
	if (msg->type == MM_MSG_LINKS) {
		receive_links(node, from, msg);
	} else if (msg->dst != node->sid) {
		if (msg->ttl <= 1) {
			node->stats.dropped_ttl++;
			return;
		}
		struct mm_msg fwd = *msg;
		fwd.ttl--;
		node->stats.forwarded++;
		mm_route(node, &fwd);
	} else {
		deliver(node, msg);
	}
	mm_drain_self(node);
}

void mm_link_up(struct mm_node *node, uint32_t peer, uint64_t now)
{
	node->now = now;
	if (peer == node->sid || peer < 1 ||
	    mm_sids_contains(node->links, node->n_links, peer) ||
	    node->n_links >= MM_MAX_NODES)
		return;
	node->links[node->n_links++] = peer;
	originate(node);
	/* The new peer learns everything we know (our own state went above). */
	for (size_t i = 0; i < node->lsdb.count; i++) {
		struct mm_msg msg;
		if (node->lsdb.items[i].sid == node->sid)
			continue;
		lsa_to_msg(&node->lsdb.items[i], &msg);
		emit_send(node, peer, &msg);
	}
	topology_changed(node);
	mm_drain_self(node);
}

void mm_link_down(struct mm_node *node, uint32_t peer, uint64_t now)
{
	node->now = now;
	for (uint32_t i = 0; i < node->n_links; i++) {
		if (node->links[i] == peer) {
			node->links[i] = node->links[--node->n_links];
			originate(node);
			topology_changed(node);
			break;
		}
	}
	mm_drain_self(node);
}

void mm_tick(struct mm_node *node, uint64_t now)
{
	node->now = now;
	if (mm_is_root(node) && !node->serving &&
	    now - node->announce_at >= node->set.retry_ms)
		send_announce(node);
	mm_master_tick(node);
	mm_drain_self(node);
}

bool mm_next_output(struct mm_node *node, struct mm_output *out)
{
	if (node->out_pos >= node->out.count)
		return false;
	*out = node->out.items[node->out_pos++];
	if (node->out_pos == node->out.count)
		node->out.count = node->out_pos = 0;
	return true;
}

/* ---- queries ---- */

uint32_t mm_node_sid(const struct mm_node *node)
{
	return node->sid;
}

void mm_node_root(const struct mm_node *node, uint32_t *root_r, uint64_t *epoch_r,
		  bool *settled_r)
{
	*root_r = node->root;
	*epoch_r = node->epoch;
	*settled_r = mm_settled(node);
}

bool mm_node_serving(const struct mm_node *node)
{
	return mm_is_root(node) && node->serving;
}

void mm_node_stats(const struct mm_node *node, struct mm_stats *stats_r)
{
	*stats_r = node->stats;
}
