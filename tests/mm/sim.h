/* A deterministic simulator of a mailbox-master cluster in one process.
 *
 * N nodes (SIDs 1..N) joined by wires.  Each direction of a live link is a
 * FIFO queue; a step delivers the head of one non-empty queue chosen by a
 * seeded PRNG, so links reorder against each other but never within
 * themselves.  Every delivered message costs 1 ms of simulated time (and,
 * with latency_ms set, waits that long on its wire first); all
 * nodes tick every SIM_TICK_MS.  Cutting a wire or crashing a node loses
 * what was queued on its links.  After every delivery the safety invariant
 * is checked: no two nodes of one connected component are master of one
 * watched granule at the same epoch. */
#ifndef TESTS_MM_SIM_H
#define TESTS_MM_SIM_H

#include <stdbool.h>
#include <stdint.h>

#include "lib/arr.h"
#include "mailbox-master/mm.h"

#define SIM_MAX 8
#define SIM_TICK_MS 10
#define SIM_MAX_GKEYS 8

struct sim_queue {
	ARRAY(struct mm_msg) q;
	ARRAY(uint64_t) due; /* when each message may be delivered */
	size_t pos;
};

struct sim_answer {
	uint64_t req_id;
	uint32_t master;
	uint64_t epoch;
	uint64_t at;      /* simulated time of the answer */
};

struct sim {
	int n;
	uint64_t rng;
	uint64_t now, next_tick;
	uint64_t steps;
	/* one-way delay of every wire (0: a message costs 1 ms of delivery,
	 * as before); set it after sim_init() to model a WAN */
	uint64_t latency_ms;
	uint64_t wire_msgs; /* deliveries that went through write + parse */
	struct mm_settings set;
	struct mm_node *node[SIM_MAX + 1];
	bool alive[SIM_MAX + 1];
	bool wired[SIM_MAX + 1][SIM_MAX + 1];
	/* node i was told its link to p is up (lags behind the wire when a
	 * failure is detected late) */
	bool believes[SIM_MAX + 1][SIM_MAX + 1];
	struct sim_queue q[SIM_MAX + 1][SIM_MAX + 1];

	/* per node: request answers and notable events, in order */
	ARRAY(struct sim_answer) answers[SIM_MAX + 1];
	uint32_t gained[SIM_MAX + 1];    /* MM_EV_MASTER_GAINED count */
	uint32_t move_failed[SIM_MAX + 1];
	uint32_t gains_total;

	const char *gkeys[SIM_MAX_GKEYS];
	int n_gkeys;
	uint64_t violations;
	uint64_t invariant_checks;
};

/* Creates n nodes, every pair wired (full mesh) unless mesh is false. */
void sim_init(struct sim *s, int n, uint64_t seed, bool mesh,
	      const struct mm_settings *tmpl);
void sim_free(struct sim *s);
uint64_t sim_rand(struct sim *s, uint64_t bound);

/* Adds a granule whose masters the invariant check watches. */
void sim_watch(struct sim *s, const char *gkey);

void sim_wire(struct sim *s, int a, int b, bool up);
void sim_crash(struct sim *s, int i);
/* Like sim_wire(down) and sim_crash(), but the far side (b, or the crashed
 * node's peers) notices only at a later tick, as with keepalive timeouts;
 * until then what it sends on the dead link is lost. */
void sim_cut_late(struct sim *s, int a, int b);
void sim_crash_late(struct sim *s, int i);
void sim_restart(struct sim *s, int i);

/* Delivers one message; false when nothing is queued. */
bool sim_step(struct sim *s);
/* Runs for ms of simulated time. */
void sim_run(struct sim *s, uint64_t ms);
/* Runs until pred holds with no message in flight; returns the simulated
 * ms that took, or -1 after max_ms. */
int64_t sim_run_until(struct sim *s, bool (*pred)(struct sim *s, void *ctx),
		      void *ctx, uint64_t max_ms);

/* Collects outputs of node i after a direct call into it. */
void sim_drain(struct sim *s, int i);

/* Nodes i and j are alive and connected through live links. */
bool sim_connected(struct sim *s, int i, int j);
/* Every alive node computes the same root (the lowest alive SID of its
 * component), is settled in that root's epoch, and the root serves. */
bool sim_roots_agreed(struct sim *s, void *ctx);

/* The answer to req_id at node i, or NULL. */
const struct sim_answer *sim_answer(struct sim *s, int i, uint64_t req_id);

/* Asks node i for gkey's master as req_id and runs until it is answered
 * (max_ms); returns the answer's master or 0. */
uint32_t sim_request(struct sim *s, int i, const char *gkey, uint64_t req_id,
		     uint64_t max_ms);

/* Asks every alive node connected to `from` for gkey's master and runs
 * until all answered (max_ms).  Returns the master all agree on and that
 * itself says it is master, or 0 when they disagree or time ran out. */
uint32_t sim_ask_all(struct sim *s, int from, const char *gkey, uint64_t max_ms);

#endif
