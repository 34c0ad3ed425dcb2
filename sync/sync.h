/* Mailbox synchronisation (SPEC.md section 10): brings one user's mail on two
 * nodes to the same state after they were apart, without losing or
 * duplicating a message and without ever letting one UID name two messages.
 *
 * A sync has two ends.  The client (the link's initiator, or the node where
 * `starling resync` runs) drives it: it lists the server's mailboxes, merges
 * the mailbox lists and subscriptions, then syncs every mailbox whose state
 * differs with SYNC-BEGIN ... SYNC-END.  The server answers commands.  The
 * client keeps, per peer and mailbox, the last seen state of the server's copy
 * (stor_sync_state_*), and per peer and user the last common mailbox list
 * (stor_meta "sync.list.<peer>.<user>").
 *
 * The engine knows nothing of sockets, and writes no tag: the link does.
 * The client numbers its commands and hands each to a link that sends it
 * under a tag of its own (struct sync_client_link: a peer link) and gives
 * the answer back with the number (sync_client_answer()); the server
 * answers command number id (sync_server_command()) with lines handed to
 * its link with that id (struct sync_server_link).  The rest of each line
 * is exactly the SPEC's wire text, made with proto_wr_*.  On a byte
 * transport (struct sync_transport) each end is its own link: the client
 * tags command n "C<n>", the server answers under the command's tag, and
 * both are fed the peer's lines parsed (sync_*_input) or as raw bytes in
 * any split (sync_*_feed).  sync_pipe joins a client and a server in one
 * process with no sockets (tests, local repair).
 *
 * Neither end blocks: sync_client_step() does a bounded amount of work and
 * says whether to call it again, to wait for the peer's lines, or that the
 * sync finished; the server answers most commands in the input call, and
 * SYNC-END (the merge of a mailbox of any size) and FETCH in bounded steps
 * (sync_server_step()). */
#ifndef SYNC_SYNC_H
#define SYNC_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/guid.h"
#include "protocol/protocol.h"
#include "storage/storage.h"

struct stor_db;
struct proto_cmd;
struct proto_parser;
struct proto_arg;
struct proto_wr;

/* The flag stamps of SPEC.md 10.3 "Flags", which the replicator's live
 * changes carry too.  sync_wr_stamps() writes " STAMPS (<name> <modseq>
 * <time-ms> ...)" (nothing for an empty list); sync_arg_stamps() parses
 * the value: triplets, at most STOR_MAX_STAMPS, names a system flag, "\*"
 * or a keyword, each once; -1 otherwise. */
void sync_wr_stamps(struct proto_wr *w, const stor_stamp_list *stamps);
int sync_arg_stamps(const struct proto_arg *a, stor_stamp_list *out);

/* Where an end's output goes.  send() queues len bytes (one or more whole
 * lines) for the peer; it must not call back into the engine. */
struct sync_transport {
	void (*send)(void *ctx, const void *data, size_t len);
	void *ctx;
};

struct sync_settings {
	uint32_t peer_sid;     /* key of the per-peer state (the server's SID) */
	const char *user;      /* the user to sync, copied */
	bool full;             /* compare every message of every mailbox */
	unsigned step_budget;  /* messages handled per step; 0 = 256 */
	/* The peer is of protocol 1.0 (SPEC.md 2.2): no RSTAMP on RENAME,
	 * whose merge then judges names alone (SPEC.md 10.5). */
	bool no_rename_stamps;
};

/* What a sync did, for logs and `starling resync`.  Counts are from the
 * client's point of view: "sent" went to the server, "fetched" came back. */
struct sync_report {
	unsigned mailboxes_checked;   /* mailboxes compared */
	unsigned mailboxes_synced;    /* mailboxes that needed SYNC-BEGIN */
	unsigned mailboxes_full;      /* of those, compared message by message */
	unsigned mailboxes_created;   /* on either side */
	unsigned mailboxes_renamed;
	unsigned mailboxes_deleted;
	unsigned subscriptions_changed;
	unsigned acls_changed;      /* ACL records taken or sent (SPEC.md 7.6) */
	unsigned messages_examined;   /* client messages and tombstones looked at */
	unsigned messages_sent;       /* SAVEs the server took from us (new there) */
	unsigned messages_present;    /* SAVEs of a full compare the server held
				       * already at that UID (nothing moved) */
	unsigned texts_sent;          /* of those, with their text */
	unsigned messages_received;   /* SAVE lines applied here */
	unsigned texts_fetched;       /* texts that came with FETCH */
	unsigned messages_renumbered; /* our messages moved by UIDFIX, and the server's we
				       * placed at fresh UIDs (the server's own moves
				       * arrive as messages_received) */
	unsigned messages_expunged;   /* expunged here (ours reach the server as
				       * EXPUNGE: see messages_examined) */
	unsigned flags_changed;       /* FLAGS lines applied here plus STOREs sent */
};

enum sync_step_result {
	SYNC_STEP_AGAIN,  /* more work: call sync_client_step() again */
	SYNC_STEP_WAIT,   /* waiting for the peer's lines */
	SYNC_STEP_DONE,   /* finished: both sides hold the same state */
	SYNC_STEP_ERROR,  /* failed: see sync_client_error(); destroy it */
};

struct sync_client;

/* A sync of set->user against the peer set->peer_sid.  Nothing is sent
 * until the first step. */
struct sync_client *sync_client_create(struct stor_db *db, const struct sync_settings *set,
				       const struct sync_transport *t);
void sync_client_destroy(struct sync_client **cp);
enum sync_step_result sync_client_step(struct sync_client *c);
/* The client numbers its commands (1, 2, ...); it writes no tag.  A link
 * that owns the wire tags (a peer link, SPEC.md 3) takes each command as
 * its name, the number and the bytes of its arguments (" arg ..." with any
 * literals, no CRLF; empty when there are none), sends it under a tag of
 * its own and hands every line of the answer back with the number
 * (sync_client_answer()).  send_cmd() must not call back into the engine. */
struct sync_client_link {
	void (*send_cmd)(void *ctx, uint32_t id, const char *name, const void *args,
			 size_t args_len);
	void *ctx;
};

/* A sync whose commands go through such a link. */
struct sync_client *sync_client_create_linked(struct stor_db *db, const struct sync_settings *set,
					      const struct sync_client_link *l);
/* A line of the answer to command id (a data line or its completion; the
 * line's own tag is not looked at).  Returns 0, or -1 when the line is
 * wrong (the sync has then failed: the next step returns
 * SYNC_STEP_ERROR). */
int sync_client_answer(struct sync_client *c, uint32_t id, const struct proto_cmd *line);
/* A client made by sync_client_create() is its own link for a byte
 * transport: command n goes out tagged "C<n>", and a line from the server
 * given parsed (input) or as raw bytes in any split (feed) is the answer to
 * the command its tag names.  Returns as sync_client_answer(). */
int sync_client_input(struct sync_client *c, const struct proto_cmd *line);
int sync_client_feed(struct sync_client *c, const void *data, size_t len);
const struct sync_report *sync_client_report(const struct sync_client *c);
/* The reason of the failure (valid while c lives), or NULL. */
const char *sync_client_error(const struct sync_client *c);

struct sync_server;

/* The server writes no tag either: every line of its answers goes to a
 * link with the number the link gave the command it answers
 * (sync_server_command()), as its name and the bytes after the name
 * (" arg ..." with any literals, or " [CODE] text" of a completion; no
 * CRLF).  The link writes its lines under the command's tag.  send_line()
 * must not call back into the engine. */
struct sync_server_link {
	void (*send_line)(void *ctx, uint32_t id, const char *name, const void *rest,
			  size_t rest_len);
	void *ctx;
};

/* What a link of a server keeps to put each answer under the tag of the
 * command it answers: the commands given to the engine and not yet
 * completed, by number.  Commands complete mostly in order. */
struct sync_tag {
	uint32_t id; /* 0 once completed */
	char tag[PROTO_MAX_TAG + 1];
};
struct sync_tags {
	ARRAY(struct sync_tag) pending; /* from head */
	size_t head;
	uint32_t last_id;
};
/* Numbers a command of this tag (never 0) and keeps the tag. */
uint32_t sync_tags_add(struct sync_tags *t, const char *tag);
/* The tag of command id, or NULL when it is not pending. */
const char *sync_tags_get(const struct sync_tags *t, uint32_t id);
/* A line named name answered command id: a completion (OK, NO, BAD) ends
 * the command. */
void sync_tags_answered(struct sync_tags *t, uint32_t id, const char *name);
void sync_tags_free(struct sync_tags *t);

/* The answering end of syncs on one link from the peer peer_sid; its
 * answers go out through l. */
struct sync_server *sync_server_create_linked(struct stor_db *db, uint32_t peer_sid,
					      const struct sync_server_link *l);
/* Handles command number id (the link's numbering: each command its own,
 * never 0; its tag is not looked at) and answers it, as sync_server_input()
 * does. */
int sync_server_command(struct sync_server *s, uint32_t id, const struct proto_cmd *cmd,
			struct proto_parser *parser);
/* A server on a byte transport: its built-in link numbers the commands
 * given parsed (input) or as raw bytes (feed) and writes each answer line
 * under the tag of the command it answers. */
struct sync_server *sync_server_create(struct stor_db *db, uint32_t peer_sid,
				       const struct sync_transport *t);
void sync_server_destroy(struct sync_server **sp);
/* The client is of protocol 1.0 (SPEC.md 2.2): LIST sends no RSTAMP. */
void sync_server_set_no_rename_stamps(struct sync_server *s, bool none);
/* Handles one command from the client and sends its answer.  Returns 0, or
 * -1 when the link must close (the storage failed or the peer broke the
 * protocol badly); bad arguments only get BAD and return 0.  parser is the
 * one that returned cmd, or NULL: a command held while the server is busy
 * keeps its message text by taking it from there (proto_cmd_keep()). */
int sync_server_input(struct sync_server *s, const struct proto_cmd *cmd,
		      struct proto_parser *parser);
/* Raw bytes from the client, in any split. */
int sync_server_feed(struct sync_server *s, const void *data, size_t len);
/* SYNC-END and FETCH are answered in steps: sync_server_input() does the
 * first step, and while sync_server_busy() the caller calls
 * sync_server_step() again (from its loop, for example when the link's
 * output has drained), each doing about the step budget's messages and
 * sending what it made.  Commands that arrive while busy are held and run,
 * in order, by later steps.  step returns 1 while busy, 0 when idle, -1
 * when the link must close (as for input). */
bool sync_server_busy(const struct sync_server *s);
int sync_server_step(struct sync_server *s);
/* Messages per step; 0 = the default (256). */
void sync_server_set_budget(struct sync_server *s, unsigned budget);
/* Whether a SYNC-BEGIN ... SYNC-END is under way (message commands belong
 * to the sync then, and are live replication otherwise). */
bool sync_server_in_sync(const struct sync_server *s);
/* The mailbox selected in this direction: true with *guid_r, or false. */
bool sync_server_selected(const struct sync_server *s, struct guid *guid_r);
/* Messages the server looked at (for tests of the no-change cost). */
unsigned sync_server_messages_examined(const struct sync_server *s);
const char *sync_server_error(const struct sync_server *s);

/* ---- In-memory transport ---- */

struct sync_pipe;

/* Joins a client and a server: bytes each end sends are fed to the other in
 * pseudo-random splits of 1..max_chunk bytes (0 = everything at once),
 * drawn from seed. */
struct sync_pipe *sync_pipe_create(uint32_t seed, size_t max_chunk);
void sync_pipe_destroy(struct sync_pipe **pp);
/* The transports to give the client and the server. */
const struct sync_transport *sync_pipe_client_transport(struct sync_pipe *p);
const struct sync_transport *sync_pipe_server_transport(struct sync_pipe *p);
/* Runs the client to the end, moving bytes both ways; at most max_steps
 * steps.  Returns the last step result (SYNC_STEP_WAIT if the steps ran
 * out or nothing moved while the client waited). */
enum sync_step_result sync_pipe_run(struct sync_pipe *p, struct sync_client *c,
				    struct sync_server *s, unsigned max_steps);
/* Bytes carried so far in each direction. */
void sync_pipe_bytes(const struct sync_pipe *p, uint64_t *to_server_r, uint64_t *to_client_r);

#endif
