/* Mailbox masters: who is the master of each granule (mailbox, user, domain
 * or the whole cluster), negotiated with a root node, with root failover
 * fenced by epochs and MASTER-MOVE with forwarding.
 *
 * This module is a pure state machine: no sockets, no clocks, no logging.
 * One struct mm_node is one cluster node's view.  The caller (the network
 * layer, or a simulator in the tests) feeds it inputs:
 *   - link events: mm_link_up() / mm_link_down() for a directly connected peer;
 *   - messages received from a directly connected peer: mm_receive();
 *   - local requests: mm_request_master(), mm_request_mastership(),
 *     mm_note_write();
 *   - the passing of time: mm_tick(), with "now" in milliseconds from any
 *     monotonic clock (every input carries it; the node never reads a clock).
 * After every input the caller drains the outputs with mm_next_output():
 * messages to hand to a directly connected peer, and events for the local
 * node.  Forwarding of messages to non-neighbours, flooding of link state,
 * retries and timeouts all happen inside, driven by those inputs.
 *
 * Driving it from the network layer (one node, one loop):
 *
 *   node = mm_node_create(&set, clock_mono_ms());
 *   link handshake done with peer P:   mm_link_up(node, P, now);
 *   link closed / keepalive timeout:   mm_link_down(node, P, now);
 *   a line L arrived from P:           if (mm_msg_parse(L, len, &m, &err) == 0)
 *                                              mm_receive(node, P, &m, now);
 *   every 100 ms or so:                mm_tick(node, now);
 *   after each of these:               while (mm_next_output(node, &o))
 *       MM_OUT_SEND:  mm_msg_write(&o.msg, &line) and send it to o.peer
 *                     (a message to a peer whose link just died is lost:
 *                     the protocol retries);
 *       MM_OUT_EVENT: act on o.event (see enum mm_event_type).
 *
 * Messages from a peer must not be passed in before mm_link_up() for it.
 * mailbox-master/PROTOCOL.md specifies the messages, rules and invariants. */
#ifndef MAILBOX_MASTER_MM_H
#define MAILBOX_MASTER_MM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* SIDs are 1..MM_SID_MAX (SPEC.md "sid"); 0 means "none". */
#define MM_SID_MAX 0xffffffffu
/* Most nodes a cluster may have (size of neighbour lists in messages). */
#define MM_MAX_NODES 64
/* Longest path a MASTER-MOVE may take before it is failed. */
#define MM_MOVE_MAX_HOPS 16
/* Longest granule key, without the NUL. */
#define MM_GKEY_MAX 400
/* Hop limit of routed messages. */
#define MM_TTL_DEFAULT 32

/* Epochs are 64-bit: the counter in the high 32 bits, the SID of the root
 * that minted it in the low 32 bits, so that two partitions never mint the
 * same epoch and integer order is the order of epochs (counter first, then
 * root SID).  Humans see them as "counter.root". */
#define MM_EPOCH_COUNTER(e) ((uint64_t)(e) >> 32)
#define MM_EPOCH_ROOT(e) ((uint32_t)((e) & 0xffffffffu))
#define MM_EPOCH_MAKE(counter, root) (((uint64_t)(counter) << 32) | (uint32_t)(root))

enum mm_granularity {
	MM_GRAN_MAILBOX = 0,
	MM_GRAN_USER,
	MM_GRAN_DOMAIN,
	MM_GRAN_GLOBAL,
};

/* Parses "mailbox", "user", "domain" or "global".  Returns 0 or -1. */
int mm_granularity_parse(const char *s, enum mm_granularity *gran_r);

/* Writes the granule key of (user, mailbox GUID in hex) for the granularity
 * into out (size bytes):  "m:USER/GUIDHEX", "u:USER", "d:DOMAIN" (the part
 * of USER after the last '@', or "" when there is none) or "g".  The GUID,
 * not the name, so that a renamed mailbox keeps its master.  mailbox_guid
 * may be NULL except for MM_GRAN_MAILBOX.  Returns 0, or -1 when an argument
 * is missing, contains a control character or space, or the key would not
 * fit in out or in MM_GKEY_MAX. */
int mm_granule_key(enum mm_granularity gran, const char *user,
		   const char *mailbox_guid, char *out, size_t size);

enum mm_msg_type {
	MM_MSG_LINKS = 1,    /* link state of one node, flooded hop by hop */
	MM_MSG_ANNOUNCE,     /* root -> member: the new epoch, drop your masters */
	MM_MSG_DROPPED,      /* member -> root: I flushed and dropped for this epoch */
	MM_MSG_STALE,        /* your message was from an older epoch; here is mine */
	MM_MSG_WHO,          /* -> root: who is the master of gkey? */
	MM_MSG_IS,           /* root -> node: master of gkey is `master` at gen */
	MM_MSG_MOVE,         /* requester -> (last known) master, forwarded */
	MM_MSG_RELEASE,      /* old master -> root: I gave gkey up for `requester` */
	MM_MSG_MOVE_FAIL,    /* -> requester and path: the move did not happen */
};

enum mm_move_fail_reason {
	MM_FAIL_REFUSED = 1, /* soft move refused by hysteresis */
	MM_FAIL_LOOP,        /* the forwarding path came back on itself */
	MM_FAIL_HOPS,        /* more than MM_MOVE_MAX_HOPS */
};

/* One message between nodes.  Plain data: copy it freely.  Which fields a
 * type uses is listed in PROTOCOL.md; unused ones are zero. */
struct mm_msg {
	enum mm_msg_type type;
	uint32_t src;     /* originating node */
	uint32_t dst;     /* final destination; 0 for hop-by-hop LINKS */
	uint64_t epoch;   /* the sender's epoch */
	uint32_t ttl;     /* hops left for routed messages */

	/* LINKS */
	uint64_t version;
	uint32_t nbrs[MM_MAX_NODES];
	uint32_t n_nbrs;

	/* WHO, IS, MOVE, RELEASE, MOVE_FAIL */
	char gkey[MM_GKEY_MAX + 1];
	uint32_t master;  /* IS, MOVE_FAIL: the master as known; 0 = none */
	uint64_t gen;     /* IS, RELEASE: assignment generation in this epoch */
	uint32_t requester;   /* MOVE, RELEASE, MOVE_FAIL */
	uint32_t path[MM_MOVE_MAX_HOPS];  /* MOVE, RELEASE: nodes passed */
	uint32_t n_path;
	bool soft;        /* MOVE: follows-writes move, subject to hysteresis */
	uint32_t rate;    /* MOVE: writes the requester forwarded in its window */
	enum mm_move_fail_reason reason; /* MOVE_FAIL */
};

/* Checks a message received from the network: known type, SIDs in range,
 * counts within their arrays, NUL-terminated key without spaces or control
 * characters.  mm_receive() calls it and ignores invalid messages; parsers
 * may call it to answer with an error.  Returns 0 or -1 with *error_r set
 * to a static string. */
int mm_msg_validate(const struct mm_msg *msg, const char **error_r);
/* The wire name of a type ("LINKS", "MASTER-WHO", ...), or "?" */
const char *mm_msg_type_name(enum mm_msg_type type);

/* Wire form (PROTOCOL.md "Wire form"): one line of SP-separated atoms and
 * quoted strings in SPEC.md's argument syntax, without tag or CRLF.  The
 * longest line mm_msg_write() can produce is below MM_WIRE_MAX_LINE. */
#define MM_WIRE_MAX_LINE 2048
struct buf;
/* Appends the message's line to out. */
void mm_msg_write(const struct mm_msg *msg, struct buf *out);
/* Parses one line (len bytes, not NUL-terminated, may hold anything).
 * Returns 0 with *msg_r filled and valid (mm_msg_validate), or -1 with
 * *error_r set to a static string. */
int mm_msg_parse(const char *line, size_t len, struct mm_msg *msg_r, const char **error_r);

/* The same message as its arguments, as the replicator carries it in a
 * `<tag> MM` command: SPEC.md's writer and parser do the quoting, so
 * nothing is written to text and lexed again.  str is not NUL-terminated;
 * quoted tells a quoted string (only a key may be one) from an atom, and
 * its bytes are unescaped. */
#define MM_MSG_MAX_ARGS 16
struct mm_arg {
	const char *str;
	size_t len;
	bool quoted;
};
/* The arguments of msg; their bytes are appended to out, which must not
 * change while args are used.  Returns their count. */
size_t mm_msg_args(const struct mm_msg *msg, struct buf *out, struct mm_arg args[MM_MSG_MAX_ARGS]);
/* Reads a message from n arguments (hostile: bounded and checked like a
 * line).  Returns 0 with *msg_r filled and valid, or -1 with *error_r set
 * to a static string. */
int mm_msg_from_args(const struct mm_arg *args, size_t n, struct mm_msg *msg_r,
		     const char **error_r);

enum mm_event_type {
	MM_EV_ROOT = 1,        /* root is now `sid` at `epoch` (this node joined it) */
	MM_EV_MASTER,          /* master of gkey is now `sid` at `epoch` */
	MM_EV_MASTER_GAINED,   /* this node is now master of gkey at `epoch` */
	MM_EV_MASTER_LOST,     /* this node is no longer master of gkey */
	MM_EV_REQUEST_DONE,    /* request `req_id` for gkey: send it to master `sid` */
	MM_EV_MOVE_FAILED,     /* mm_request_mastership(gkey) failed: `reason` */
};

struct mm_event {
	enum mm_event_type type;
	uint32_t sid;
	uint64_t epoch;
	uint64_t req_id;
	enum mm_move_fail_reason reason;
	char gkey[MM_GKEY_MAX + 1];
};

enum mm_output_kind {
	MM_OUT_SEND = 1,  /* send `msg` to the directly connected peer `peer` */
	MM_OUT_EVENT,     /* `event` happened on this node */
};

struct mm_output {
	enum mm_output_kind kind;
	uint32_t peer;
	struct mm_msg msg;
	struct mm_event event;
};

struct mm_settings {
	uint32_t sid;                 /* this node, 1..MM_SID_MAX */
	uint32_t retry_ms;            /* resend unanswered WHO/MOVE/ANNOUNCE (default 500) */
	uint32_t hold_timeout_ms;     /* give up waiting for a move's end (default 5000) */
	uint32_t follow_writes_count; /* decaying write count that triggers a soft move (default 8) */
	uint32_t follow_writes_half_life_ms; /* the count halves in this time (default 2500) */
	uint32_t hold_down_ms;        /* no soft move this soon after a master change (default 2000) */
	uint32_t backoff_ms;          /* no soft move asked this soon after a refusal (default 1000) */
	uint32_t follow_quiet_ms;     /* a master that made no write for this long grants a soft move (default 1500) */
	uint32_t cache_ttl_ms;        /* answer from an older cache entry, but re-ask the root (default 60000) */
};

/* Fills the defaults for everything but sid. */
void mm_settings_default(struct mm_settings *set, uint32_t sid);

struct mm_node;

/* A node alone, with no links, at epoch 0 (no root yet: it becomes its own
 * root on the first mm_tick() or link event).  The caller frees it with
 * mm_node_destroy().  Returns NULL if set->sid is out of range. */
struct mm_node *mm_node_create(const struct mm_settings *set, uint64_t now);
void mm_node_destroy(struct mm_node **nodep);

/* A direct link to peer came up or went down.  Up sends this node's link
 * state database to the peer; both floods the new link state. */
void mm_link_up(struct mm_node *node, uint32_t peer, uint64_t now);
void mm_link_down(struct mm_node *node, uint32_t peer, uint64_t now);

/* A message arrived from the directly connected peer `from`.  Invalid
 * messages and messages from a peer with no link up are ignored (and
 * counted in mm_node_stats). */
void mm_receive(struct mm_node *node, uint32_t from, const struct mm_msg *msg,
		uint64_t now);

/* Time passed: retries, hold timeouts, write windows. */
void mm_tick(struct mm_node *node, uint64_t now);

/* Asks for the master of gkey on behalf of request req_id (any number the
 * caller picks).  The answer is always one MM_EV_REQUEST_DONE event for
 * req_id, at once when the master is known and no move is under way, else
 * later: requests for one granule are answered in the order they were made.
 * Returns 0, or -1 when gkey is invalid. */
int mm_request_master(struct mm_node *node, const char *gkey, uint64_t req_id,
		      uint64_t now);

/* This node wants to become master of gkey (forced MASTER-MOVE).  Ends in
 * MM_EV_MASTER_GAINED, or MM_EV_MOVE_FAILED after repeated loops/hop
 * overflows.  Returns 0, or -1 when gkey is invalid. */
int mm_request_mastership(struct mm_node *node, const char *gkey, uint64_t now);

/* One write for gkey was made at this node by one of its clients, locally
 * as master or forwarded to the master (not a write it serves for a peer).
 * Writes are counted in a count that halves every
 * follow_writes_half_life_ms.  Past follow_writes_count, no master change
 * for hold_down_ms and no refusal for backoff_ms, a non-master asks for a
 * soft MASTER-MOVE with its count as the rate; the master refuses it when
 * its own clients wrote within follow_quiet_ms and its own count is at
 * least half the requester's, or it got the mastership less than
 * hold_down_ms ago.  Returns 0, or -1 when gkey is invalid. */
int mm_note_write(struct mm_node *node, const char *gkey, uint64_t now);

/* The caller learnt that stale_master is not the master of gkey (it
 * answered a forwarded write with another master's SID, or refused it):
 * the cache entry is forgotten if it still names stale_master, so the next
 * mm_request_master() asks the root.  Never makes anyone master.  Returns
 * 0, or -1 when gkey is invalid. */
int mm_forget_master(struct mm_node *node, const char *gkey, uint32_t stale_master);

/* Takes the next output, oldest first.  Returns false when there is none.
 * The output is copied into *out. */
bool mm_next_output(struct mm_node *node, struct mm_output *out);

/* Queries, for `starling master show` / `status` and for the tests. */
uint32_t mm_node_sid(const struct mm_node *node);
/* The root this node computes from its link state (lowest SID of its
 * connected component) and its current epoch.  *settled_r is true when the
 * epoch was minted by that root, i.e. the node takes part in it. */
void mm_node_root(const struct mm_node *node, uint32_t *root_r, uint64_t *epoch_r,
		  bool *settled_r);
/* True if this node is the root of its epoch and every member has said
 * DROPPED: it answers requests. */
bool mm_node_serving(const struct mm_node *node);
/* True if this node is master of gkey at its current epoch. */
bool mm_is_master(const struct mm_node *node, const char *gkey);
/* The cached master of gkey: 1 with *master_r set, 0 when unknown. */
int mm_cached_master(const struct mm_node *node, const char *gkey, uint32_t *master_r);
/* The serving root's record of gkey, read only (a read must not make
 * anyone master): 1 with *master_r set (0: no master recorded at this
 * epoch), 0 when this node is not the serving root. */
int mm_root_record(const struct mm_node *node, const char *gkey, uint32_t *master_r);
/* What this node knows of gkey, for `starling master show` and for the
 * `MASTER sid EPOCH e GEN g` response codes of SPEC.md 1.5. */
struct mm_master_info {
	uint32_t master;   /* 0 = unknown */
	uint64_t epoch;    /* this node's epoch */
	uint64_t gen;      /* generation of the cached assignment, 0 = none */
	bool am_master;
	bool moving;       /* a move of gkey is under way through this node */
	bool settled;      /* false: the node waits for its root's epoch */
};
void mm_master_info(const struct mm_node *node, const char *gkey,
		    struct mm_master_info *info_r);

/* The members of this node's connected component, ascending; returns the
 * count, writes at most max into sids. */
size_t mm_node_component(struct mm_node *node, uint32_t *sids, size_t max);

/* The neighbour of this node on the breadth-first path to dst, from the
 * link state (the hop routed MM messages take); 0 when dst is this node or
 * not in its component.  The replicator routes forwarded changes with it. */
uint32_t mm_next_hop(const struct mm_node *node, uint32_t dst);
/* True when the link state has the edge a-b (both list each other). */
bool mm_linked(struct mm_node *node, uint32_t a, uint32_t b);
/* The parent of v in the breadth-first tree of the link state rooted at
 * root: the lowest SID one hop nearer to root with an edge to v; 0 when v
 * is root or not reachable from it.  Nodes with the same link state agree
 * on it, so a change spread along this tree reaches each node once. */
uint32_t mm_tree_parent(struct mm_node *node, uint32_t root, uint32_t v);

struct mm_stats {
	uint64_t msgs_in, msgs_out, forwarded, dropped_no_route, dropped_ttl,
		 dropped_invalid, refused_stale, epochs_minted, moves_done,
		 soft_moves_asked, soft_moves_refused;
};
void mm_node_stats(const struct mm_node *node, struct mm_stats *stats_r);

#endif
