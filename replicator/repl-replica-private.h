/* Shared by the files of the replica side (repl-replica*.c): the answer
 * to a peer's command and the functions the dispatch calls.  Only those
 * files include it. */
#ifndef REPLICATOR_REPL_REPLICA_PRIVATE_H
#define REPLICATOR_REPL_REPLICA_PRIVATE_H

#include "replicator/repl-cluster-private.h"

/* An answer to send once the change is durable (or replicated). */
struct answer {
	struct repl_cluster *cl;
	uint32_t sid;
	uint64_t gen;
	char tag[PROTO_MAX_TAG + 1];
	char status[4];
	char code[128];
	char *text;
	/* STORE as master */
	stor_uid_list uids;
	stor_string_list keywords;
	struct stor_store store;
	struct guid mailbox;
	char *user;
	char *seen_of; /* STORE SEEN-OF: the user whose private \Seen it changes */
	/* STORE with REQ: its identity and its slot in cl->store_reqs, where
	 * its outcome is kept (SPEC 6.4); sid 0 without. */
	struct cl_req_id store_req;
	size_t store_req_slot;
	/* SAVE with REQ: the GUID asked for; the answer names the one made
	 * when the master gave the copy another (SPEC 6.4). */
	struct guid save_guid;
	bool save_req;
	/* SAVE with HOLDER: the master counted the holder (SPEC 8.8). */
	bool held;
};

/* repl-replica.c */
struct answer *answer_new(struct repl_cluster *cl, struct cl_peer *p,
			  const struct proto_cmd *cmd);
void answer_drop(struct answer *a);
/* The link the command came on, if it is still the same one. */
struct proto_conn *answer_conn(const struct answer *a);
/* Answers after the next group commit: whatever this command wrote is
 * durable then. */
void answer_later(struct answer *a, const char *status, const char *code,
		  const char *text);

/* repl-replica-apply.c */
/* The text argument of a SAVE: a literal (*text_r set), or NIL for a text
 * this node holds under guid (*text_r NULL).  Otherwise answers a and
 * returns -1. */
int save_text(struct stor_db *db, struct answer *a, const struct proto_save *sv,
	      const void **text_r, size_t *len_r);
void apply_save(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
		const struct stor_mailbox *mb);
void apply_store(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
		 size_t npos, const struct stor_mailbox *mb);
void apply_expunge(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
		   size_t npos, const struct stor_mailbox *mb);
/* ACL-PUT (SPEC.md 7.6): the newer record is kept, an older one is not an
 * error (idempotent). */
void apply_acl_put(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd);
/* PSEEN from the mailbox's master (SPEC.md 7.7 "Streaming"). */
void apply_pseen(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
		 const struct stor_mailbox *mb);
void apply_list_change(struct repl_cluster *cl, struct answer *a,
		       const struct proto_cmd *cmd, size_t npos);

/* repl-replica-serve.c */
void serve_save(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
		size_t npos, const struct stor_mailbox *mb);
void serve_store(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
		 size_t npos, const struct stor_mailbox *mb);
void serve_expunge(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
		   size_t npos, const struct stor_mailbox *mb);

#endif
