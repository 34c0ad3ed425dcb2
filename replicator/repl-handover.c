/* Safe handovers of mastership (SPEC.md 9.8, REPLICATION.md "Handovers").
 *
 * A node that gains mastership of a granule cannot know what the previous
 * master streamed to whom before it died or let go: a replica may hold a
 * change the old master acknowledged that this node lacks (a whole-state
 * STORE made here would overwrite its flags, a UID assigned here would
 * collide with one it holds).  So the new master first catches up: the
 * granule's user is resynced with every peer that was up at the gain, and
 * until each of those resyncs, started after the gain, found both sides
 * equal (or the peer's link went down, or CL_CATCHUP_MAX_MS passed), the
 * node serves no write of that user as master: forwarded ones get
 * NO [TRYLATER] (the sender asks again shortly), local ones wait.
 *
 * Also here: the epoch checks of forwarded requests and of changes with
 * ORIGIN. */
#include "replicator/repl-cluster-private.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "replicator/repl-mm.h"
#include "replicator/repl-sync.h"

struct cl_catchup {
	char *user;
	uint64_t deadline;            /* clock_mono_ms() */
	size_t npeers;                /* peers still to be found equal */
	uint32_t peers[CONFIG_MAX_PEERS];
	bool started[CONFIG_MAX_PEERS]; /* a resync with it started after the gain */
};

static struct cl_catchup *catchup_find(struct repl_cluster *cl, const char *user, size_t *i_r)
{
	for (size_t i = 0; i < cl->catchups.count; i++) {
		if (strcmp(cl->catchups.items[i].user, user) == 0) {
			if (i_r != NULL)
				*i_r = i;
			return &cl->catchups.items[i];
		}
	}
	return NULL;
}

static void catchup_remove(struct repl_cluster *cl, size_t i)
{
	free(cl->catchups.items[i].user);
	cl->catchups.items[i] = cl->catchups.items[cl->catchups.count - 1];
	cl->catchups.count--;
	/* The user's forwards that wait for it go on now. */
	cl_fwd_wake_held(cl);
}

static void catchup_drop_peer(struct cl_catchup *c, size_t j)
{
	c->npeers--;
	c->peers[j] = c->peers[c->npeers];
	c->started[j] = c->started[c->npeers];
}

void cl_handover_gained(struct repl_cluster *cl, const char *user)
{
	if (cl->sync == NULL || cl->destroying)
		return;
	struct cl_catchup fresh;
	memset(&fresh, 0, sizeof(fresh));
	for (size_t i = 0; i < cl->peer_list.count && fresh.npeers < CONFIG_MAX_PEERS; i++) {
		struct cl_peer *p = cl->peer_list.items[i];
		if (p->conn != NULL)
			fresh.peers[fresh.npeers++] = p->sid;
	}
	/* Alone: nobody reachable holds anything to catch up with; what the
	 * others wrote meanwhile is reconciled by sync when they are back. */
	if (fresh.npeers == 0)
		return;
	fresh.deadline = clock_mono_ms() + CL_CATCHUP_MAX_MS;
	/* A second gain (another granule of the user, or a new epoch) needs
	 * a resync started after it: the wait starts over. */
	struct cl_catchup *c = catchup_find(cl, user, NULL);
	if (c != NULL) {
		fresh.user = c->user;
		*c = fresh;
	} else if (cl->catchups.count < CL_CATCHUP_MAX) {
		fresh.user = xstrdup(user);
		ARRAY_PUSH(&cl->catchups, fresh);
	} else {
		log_warnx("replication: %s: too many new masterships catching up at once; this "
			  "one serves without waiting for its resync", user);
	}
	log_info("replication: %s: new master here, catching up with %zu peers before serving "
		 "writes", user, fresh.npeers);
	repl_sync_enqueue(cl->sync, user, 0);
}

bool cl_handover_waiting(struct repl_cluster *cl, const char *user, uint64_t *left_ms)
{
	size_t i;
	struct cl_catchup *c = catchup_find(cl, user, &i);
	if (c == NULL)
		return false;
	uint64_t now = clock_mono_ms();
	if (now < c->deadline && !cl->destroying) {
		if (left_ms != NULL)
			*left_ms = c->deadline - now;
		return true;
	}
	log_warnx("replication: %s: catching up as new master took over %u ms; serving writes "
		  "(a resync stays queued)", user, CL_CATCHUP_MAX_MS);
	catchup_remove(cl, i);
	return false;
}

void cl_handover_sync_event(struct repl_cluster *cl, enum repl_sync_peer_event ev,
			    const char *user, uint32_t sid)
{
	size_t i;
	struct cl_catchup *c = catchup_find(cl, user, &i);
	if (c == NULL || ev == REPL_SYNC_PEER_CHANGED)
		return;
	for (size_t j = 0; j < c->npeers; j++) {
		if (c->peers[j] != sid)
			continue;
		if (ev == REPL_SYNC_PEER_START)
			c->started[j] = true;
		else if (c->started[j])
			catchup_drop_peer(c, j);
		break;
	}
	if (c->npeers == 0) {
		log_info("replication: %s: caught up as new master", user);
		catchup_remove(cl, i);
	}
}

void cl_handover_link_down(struct repl_cluster *cl, uint32_t sid)
{
	for (size_t i = 0; i < cl->catchups.count;) {
		struct cl_catchup *c = &cl->catchups.items[i];
		for (size_t j = 0; j < c->npeers; j++) {
			if (c->peers[j] == sid) {
				catchup_drop_peer(c, j);
				break;
			}
		}
		if (c->npeers == 0)
			catchup_remove(cl, i);
		else
			i++;
	}
}

size_t cl_handover_count(const struct repl_cluster *cl)
{
	return cl->catchups.count;
}

void cl_handover_free(struct repl_cluster *cl)
{
	for (size_t i = 0; i < cl->catchups.count; i++)
		free(cl->catchups.items[i].user);
	ARRAY_FREE(&cl->catchups);
}

/* ---- Epochs on the wire ---- */

static int option_epoch(const struct proto_cmd *cmd, size_t npos, uint64_t *epoch_r)
{
	const struct proto_arg *a = proto_cmd_option(cmd, npos, "EPOCH");
	if (a == NULL)
		return 0;
	return proto_arg_u64(a, UINT64_MAX, epoch_r) == 0 && *epoch_r != 0 ? 1 : -1;
}

void cl_handover_wr_epoch(struct repl_cluster *cl, struct proto_wr *w, uint64_t epoch)
{
	if (epoch == 0 && cl->mm != NULL)
		epoch = repl_mm_epoch(cl->mm, NULL);
	if (epoch == 0)
		return;
	proto_wr_atom(w, "EPOCH");
	proto_wr_u64(w, epoch);
}

/* Compares a request's epoch with ours: 0 when equal, else the refusal. */
static int epoch_refusal(struct repl_cluster *cl, uint64_t theirs, struct cl_refusal *r)
{
	bool settled;
	uint64_t mine = cl->mm != NULL ? repl_mm_epoch(cl->mm, &settled) : 0;
	if (cl->mm == NULL || !settled || theirs > mine) {
		/* We have not adopted the sender's epoch (yet): soon. */
		r->status = "NO";
		snprintf(r->code, sizeof(r->code), "TRYLATER");
		snprintf(r->text, sizeof(r->text), "this node is not settled in epoch %" PRIu64,
			 theirs);
		return -1;
	}
	if (theirs < mine) {
		r->status = "NO";
		snprintf(r->code, sizeof(r->code), "STALE EPOCH %" PRIu64, mine);
		snprintf(r->text, sizeof(r->text), "epoch %" PRIu64 " is over", theirs);
		return -1;
	}
	return 0;
}

int cl_handover_check_forward(struct repl_cluster *cl, const struct proto_cmd *cmd, size_t npos,
			      const char *user, struct cl_refusal *r)
{
	uint64_t theirs;
	int have = option_epoch(cmd, npos, &theirs);
	if (have < 0) {
		r->status = "BAD";
		snprintf(r->code, sizeof(r->code), "ARGS");
		snprintf(r->text, sizeof(r->text), "EPOCH must be a nonzero number");
		return -1;
	}
	/* A request without EPOCH comes from an earlier build: served as
	 * before (mastership alone decides). */
	if (have == 1 && epoch_refusal(cl, theirs, r) < 0)
		return -1;
	if (cl_handover_waiting(cl, user, NULL)) {
		r->status = "NO";
		snprintf(r->code, sizeof(r->code), "TRYLATER");
		snprintf(r->text, sizeof(r->text), "the new master is catching up");
		return -1;
	}
	return 0;
}

int cl_handover_check_origin(struct repl_cluster *cl, const struct proto_cmd *cmd, size_t npos,
			     uint32_t origin, const char *user, const struct guid *mailbox,
			     struct cl_refusal *r)
{
	uint64_t theirs;
	int have = option_epoch(cmd, npos, &theirs);
	if (have <= 0) {
		r->status = have < 0 ? "BAD" : "NO";
		snprintf(r->code, sizeof(r->code), have < 0 ? "ARGS" : "STALE");
		snprintf(r->text, sizeof(r->text), "a change with ORIGIN needs its master's EPOCH");
		return -1;
	}
	if (epoch_refusal(cl, theirs, r) < 0)
		return -1;
	char gkey[MM_GKEY_MAX + 1];
	if (repl_mm_granule_key(cl->mm, user, mailbox, gkey, sizeof(gkey)) < 0) {
		r->status = "BAD";
		snprintf(r->code, sizeof(r->code), "ARGS");
		snprintf(r->text, sizeof(r->text), "no granule for this user");
		return -1;
	}
	/* The master of the granule at this epoch, as far as this node knows:
	 * itself, or its cache (filled by MASTER-IS, which the root sends to
	 * every member when a master moves).  Unknown: the epoch check alone. */
	uint32_t master = repl_mm_is_master(cl->mm, gkey) ? cl->cfg->node_id
							   : repl_mm_cached_master(cl->mm, gkey);
	if (master != 0 && master != origin) {
		r->status = "NO";
		snprintf(r->code, sizeof(r->code), "NOTMASTER MASTER %u EPOCH %" PRIu64, master,
			 theirs);
		snprintf(r->text, sizeof(r->text), "%u is not the master of this mailbox", origin);
		return -1;
	}
	return 0;
}
