/* Shared by the files of repl-sync (repl-sync*.c): the limits of a turn,
 * the state of the server end per link, of a run and of the queue, which
 * more than one of them reads.  Only those files include it. */
#ifndef REPLICATOR_REPL_SYNC_PRIVATE_H
#define REPLICATOR_REPL_SYNC_PRIVATE_H

#include "replicator/repl-sync.h"

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/buf.h"
#include "protocol/protocol.h"
#include "replicator/repl-private.h"
#include "storage/storage.h"
#include "sync/sync.h"

#define MAX_RUN_PEERS 64
/* A resync toward several peers syncs each again while another one brought
 * changes, at most this many times per peer. */
#define RUN_MAX_SYNCS_PER_PEER 3
/* Work per loop turn of a sync end (client or server): steps until this
 * much time has passed, so that the loop (keepalive, other links, IMAP)
 * always runs soon again. */
#define TURN_SECONDS 0.010
#define RUN_SYNC_INTERVAL 0.25
#define MAX_STEPS_PER_TURN 4096
/* MBOX ids remembered per link to name the selected mailbox (the client
 * rebinds id 1 for every mailbox, so a few are plenty). */
#define SRV_IDS 8

struct srv_id {
	uint32_t id;
	char user[256];
	struct guid guid;
	bool used;
};

/* A mailbox whose IMAP watchers are told once the changes are durable. */
struct srv_note {
	char user[256];
	struct guid guid;
};
typedef ARRAY(struct srv_note) srv_note_list;

/* A peer's command given to the sync server: the engine answers by the
 * number, the link writes the tag. */
/* The server end of one link.  Its answers wait in tx until the end of the
 * loop iteration (srv_flush_all), then for the group commit of the changes
 * of every command of the iteration, in storage's helper thread
 * (struct srv_batch); then they leave.  tx holds them as frames
 * (srv_send_line()), each a line's tag, name and the bytes after the
 * name, so that relaying them reads no protocol text. */
struct srv_link {
	struct srv_link *next;
	uint32_t sid;
	uint64_t gen;   /* tells this link's batches from a former link's */
	struct sync_server *server;
	struct buf tx;
	/* The tags of the commands given to the server and not completed. */
	struct sync_tags tags;
	srv_note_list notes;
	bool closing; /* the engine failed: BYE once the answers are out */
	size_t unsent;  /* bytes of its answers waiting for durability */
	struct srv_id ids[SRV_IDS];
	unsigned ids_next;
	int selected; /* index into ids, or -1 */
	/* The mailbox repl_sync_holds() last saw this server merge: when it
	 * stops, the changes held for it are woken (srv_hold_update()). */
	bool holding;
	struct guid held;
};

/* One link's part of a batch. */
struct srv_out {
	uint32_t sid;
	uint64_t gen;
	struct buf tx;
	srv_note_list notes;
	bool closing;
};

/* The answers of the sync servers of one loop iteration, waiting for the
 * group commit that makes their changes durable (stor_on_durable()).
 * Batches complete in order, as storage's durable callbacks do. */
struct srv_batch {
	struct srv_batch *next;
	struct repl_sync *rs; /* NULL once repl-sync is gone: only freed */
	ARRAY(struct srv_out) outs;
};

/* A resync changed these mailboxes: their IMAP watchers are told once the
 * changes are durable (run_notify_all()).  With run_id, the run of that id
 * is done and reports once what it stored is durable
 * (run_finish_durable()). */
struct run_note {
	struct run_note *next;
	struct repl_sync *rs; /* NULL once repl-sync is gone */
	char *user;
	uint64_t run_id;
};

struct run;

/* A client command waiting for its answers on the link. */
struct pcmd {
	struct pcmd *prev, *next;
	struct run *run; /* NULL once the client it belonged to is gone */
	uint32_t id;     /* the engine's number of the command */
};

struct run {
	struct repl_sync *rs;
	uint64_t id;
	char *user;
	bool full;
	uint32_t peers[MAX_RUN_PEERS];
	size_t npeers, cur;
	bool verifying;
	struct sync_client *client;
	struct pcmd *pcmds;
	char *failure; /* set by the link side, seen by the next step */
	uint32_t refused_by; /* a peer that answered TRYLATER: its own run of the user */
	unsigned refusals;   /* TRYLATERs an asked run waited out (REPL_SYNC_REFUSED_MAX) */
	ev_timer refused_timer; /* an asked run's next try of the refusing peer */
	struct buf report;
	struct sync_report first;
	char *not_converged;
	bool due[MAX_RUN_PEERS]; /* peers to sync (again) */
	bool full_done[MAX_RUN_PEERS];
	unsigned syncs;          /* syncs done (verifications not counted) */
	ev_idle idle;
	ev_timer timer;
	ev_timer sync_timer; /* makes what the run stored durable, bit by bit */
	repl_sync_done_cb *cb;
	void *ctx;
};

struct chk;
struct chk_job;

/* An asked resync waiting for a background one to end. */
struct waiting {
	char *user;
	uint32_t peer;
	bool full;
	repl_sync_done_cb *cb;
	void *ctx;
};

/* A user whose background resyncs failed lately (REPL_SYNC_BACKOFF_MIN_S). */
struct backoff {
	char *user;
	double delay;      /* the last wait given; 0 before any failure */
	ev_tstamp next_at; /* no background resync of the user starts before */
	unsigned failures; /* since the last success */
};

/* A background resync waiting for its turn (repl_sync_enqueue). */
struct queued {
	struct queued *next;
	struct repl_sync *rs;
	char *user;
	uint32_t peer;
	unsigned attempts;  /* runs that did not converge so far */
	ev_timer retry;     /* a failed one is queued again after it */
};

struct repl_sync {
	struct ev_loop *loop;
	/* Background resyncs waiting to be tried again (queued.retry). */
	struct queued *retry_list;
	ARRAY(struct backoff) backoffs;
	/* Set by run_finish() for the done callback: the peer whose TRYLATER
	 * ended the run (its own run of the user), else 0. */
	uint32_t finished_refused_by;
	bool destroying;
	struct repl *repl;
	struct repl_peers *peers;
	struct srv_link *links;
	struct run *run;
	repl_sync_live_cb *live_cb;
	void *live_ctx;
	repl_sync_peer_cb *peer_cb;
	void *peer_ctx;
	repl_sync_idle_cb *idle_cb;
	void *idle_ctx;
	repl_sync_released_cb *released_cb;
	void *released_ctx;
	struct waiting *waiting;
	struct queued *queue, **queue_tail;
	size_t queue_len;
	ev_timer queue_timer;
	ev_prepare flush_w; /* answers of the sync servers leave here */
	ev_idle srv_idle;   /* steps the sync servers with long answers */
	struct srv_batch *batches; /* waiting for durability, oldest first */
	struct run_note *run_notes; /* likewise */
	uint64_t link_gen;
	uint64_t run_ids;

	/* The periodic check (see check_timer_cb()). */
	ev_timer check_timer;
	double check_interval;
	ARRAY(struct chk_job) check_jobs; /* this round's (peer, user) pairs */
	size_t check_pos;
	struct chk *chks;                 /* LISTs waiting for answers */
	unsigned chk_inflight;
	stor_string_list suspects_prev, suspects_cur; /* "sid user" that differed */
	unsigned long check_rounds, check_compared, check_differed;
	uint64_t syncs_run, uids_renumbered; /* since start, for status/metrics */
};

/* repl-sync.c */
void queued_done(void *ctx, bool converged, const char *report, size_t report_len,
		 const char *text);
void queue_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
void sync_released(struct repl_sync *rs);

/* repl-sync-server.c */
struct srv_link *srv_find(struct repl_sync *rs, uint32_t sid);
void srv_free(struct repl_sync *rs, uint32_t sid);
/* repl-sync is going: batches still waiting for durability are only freed
 * when their callback runs (the final stor_sync of the node). */
void srv_orphan_batches(struct repl_sync *rs);
void run_orphan_notes(struct repl_sync *rs);
void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents);
void srv_idle_cb(struct ev_loop *loop, ev_idle *w, int revents);
bool other_server_busy(const struct repl_sync *rs, const struct srv_link *l,
		       const char *user, const struct guid *mailbox);
void srv_command(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn,
		 const struct proto_cmd *cmd, void *ctx);

/* repl-sync-run.c */
void run_kick(struct run *run);
void run_set_failure(struct run *run, const char *why);
void run_finish(struct run *run, bool converged, const char *text);

/* repl-sync-check.c */
double check_interval_default(void);
void check_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
void check_stop(struct repl_sync *rs);

#endif
