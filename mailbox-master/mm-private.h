/* Internals of mailbox-master/ shared by its files; nobody else includes
 * this.  See mm.h for the contract and PROTOCOL.md for the rules. */
#ifndef MAILBOX_MASTER_MM_PRIVATE_H
#define MAILBOX_MASTER_MM_PRIVATE_H

#include "lib/arr.h"
#include "mailbox-master/mm.h"

/* A node's link state: whom it has a direct link to, and its epoch. */
struct mm_lsa {
	uint32_t sid;
	uint64_t version;
	uint64_t epoch;
	uint32_t nbrs[MM_MAX_NODES];
	uint32_t n_nbrs;
};

/* Everything this node knows about one granule.  The cache part is the
 * view of every node; the rec_ part is used only while this node is root. */
struct mm_gran {
	struct mm_gran *next; /* hash chain */
	struct mm_gran *busy_next; /* list of granules with timers to run */
	bool in_busy;
	char *key;

	/* cache, valid for the current epoch */
	bool applied;        /* an IS for this epoch was applied */
	uint64_t gen;        /* generation of the last applied IS */
	uint32_t master;     /* 0 = unknown */
	bool am_master;
	uint64_t master_since; /* when this node became master */
	uint64_t learned_at; /* when the master last changed, as seen here */
	uint64_t verified_at; /* when the root last confirmed the entry */

	/* local requests waiting for an answer, FIFO */
	ARRAY(uint64_t) reqs;
	bool who_pending;
	uint64_t who_sent_at;
	/* this node forwarded or gave up the granule in a move: hold requests */
	bool holding;
	uint64_t hold_since;
	/* this node gave the mastership up and waits for the root's answer;
	 * the RELEASE is repeated until it comes (it may have been lost) */
	bool released;
	uint32_t rel_requester;
	uint64_t rel_gen, rel_sent_at;
	/* this node wants the mastership */
	bool want, want_soft, want_sent;
	uint64_t want_sent_at;
	uint32_t want_tries;
	uint64_t backoff_until;

	/* writes made here: a count that halves every
	 * follow_writes_half_life_ms (MM_RATE_ONE per write), as of rate_at */
	uint64_t rate_at;
	uint64_t rate;

	/* the root's record */
	bool rec;
	uint32_t rec_master; /* 0 = none */
	uint64_t rec_gen;
};

struct mm_node {
	struct mm_settings set;
	uint32_t sid;
	uint64_t now;

	/* direct links that are up */
	uint32_t links[MM_MAX_NODES];
	uint32_t n_links;

	/* link state database, one entry per SID ever heard of (self included) */
	ARRAY(struct mm_lsa) lsdb;
	uint64_t my_version;

	/* derived from the database: my component (ascending) and, for each
	 * member, the neighbour to send through */
	uint32_t comp[MM_MAX_NODES];
	uint32_t next_hop[MM_MAX_NODES];
	uint32_t n_comp;
	uint32_t root;

	uint64_t epoch;
	uint64_t max_counter;

	/* root state, for the current epoch */
	uint32_t members[MM_MAX_NODES];
	uint32_t n_members;
	uint32_t waiting[MM_MAX_NODES];
	uint32_t n_waiting;
	bool serving;
	uint64_t announce_at;
	ARRAY(struct mm_msg) queued;

	/* granules; busy: those waiting on something, visited by ticks */
	struct mm_gran **buckets;
	size_t n_buckets, n_gran;
	struct mm_gran *busy;

	/* outputs for the caller, and messages to this node itself */
	ARRAY(struct mm_output) out;
	size_t out_pos;
	ARRAY(struct mm_msg) selfq;
	size_t selfq_pos;

	struct mm_stats stats;
};

/* mm-gran.c */
bool mm_gkey_valid(const char *gkey);
struct mm_gran *mm_gran_get(struct mm_node *node, const char *gkey);
struct mm_gran *mm_gran_lookup(const struct mm_node *node, const char *gkey);
/* Frees g, already unlinked from its hash chain. */
void mm_gran_free(struct mm_node *node, struct mm_gran *g);
void mm_gran_free_all(struct mm_node *node);

/* mm-topo.c */
bool mm_sids_contains(const uint32_t *sids, uint32_t n, uint32_t sid);
/* Recomputes comp, next_hop and root from links and the database. */
void mm_topo_compute(struct mm_node *node);
/* The neighbour to send a message for dst through, or 0 if unreachable. */
uint32_t mm_topo_next_hop(const struct mm_node *node, uint32_t dst);
struct mm_lsa *mm_lsdb_find(struct mm_node *node, uint32_t sid);

/* mm-node.c */
/* True when this node takes part in the epoch of its computed root. */
bool mm_settled(const struct mm_node *node);
bool mm_is_root(const struct mm_node *node);
/* A zeroed message of type for dst, from this node at its epoch. */
void mm_msg_init(const struct mm_node *node, struct mm_msg *msg,
		 enum mm_msg_type type, uint32_t dst);
/* Sends a routed message towards msg->dst (to itself through the self
 * queue); drops it when dst is unreachable. */
void mm_route(struct mm_node *node, const struct mm_msg *msg);
/* Delivers what the node sent itself; called at the end of every input. */
void mm_drain_self(struct mm_node *node);
void mm_event(struct mm_node *node, enum mm_event_type type, const char *gkey,
	      uint32_t sid, uint64_t req_id);

/* mm-master.c */
/* WHO, IS, MOVE, RELEASE, MOVE_FAIL for this node at its epoch. */
void mm_master_dispatch(struct mm_node *node, const struct mm_msg *msg);
/* New epoch: drop own masters (with events), forget the cache and the
 * root's records, keep local requests and wishes for later. */
void mm_master_flush(struct mm_node *node);
/* Forget cached masters that left the component. */
void mm_master_invalidate(struct mm_node *node);
/* Settled in an epoch (or root started serving): send what waits. */
void mm_master_kick_all(struct mm_node *node);
void mm_master_tick(struct mm_node *node);

#endif
