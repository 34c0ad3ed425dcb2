/* Shared by the files of the sync server (sync-server*.c, sync-flag-merge.c):
 * the server's state and the merge's, which every piece reads, and the
 * functions one piece calls in another.  Only those files include it. */
#ifndef SYNC_SYNC_SERVER_PRIVATE_H
#define SYNC_SYNC_SERVER_PRIVATE_H

#include "sync/sync-private.h"
#include "storage/storage-pseen.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>


struct srv_mbox_id {
	uint32_t id;
	struct guid guid;
};

/* A message the client sent with SAVE during a sync. */
struct srv_save {
	uint32_t uid;
	uint64_t modseq;
	struct guid guid;
	struct sync_flags f;
	stor_stamp_list stamps; /* as sent, or legacy (sync_stamps_legacy()) */
	int64_t date;
	int tz;
	/* Filled by the merge. */
	enum { SAVE_APPEND, SAVE_RENUMBER, SAVE_MERGE, SAVE_DROP } action;
	uint32_t new_uid;
	uint32_t drop_into; /* SAVE_DROP of a copy we hold at this UID: flags merge there */
};

typedef sync_guid_list srv_guid_list;


/* A flag change the client sent with STORE during a sync. */
struct srv_store {
	uint32_t uid;
	uint64_t modseq;
	struct sync_flags f;
	stor_stamp_list stamps;
};

enum merge_stage {
	MS_FIX,      /* the client's UIDFIX lines, then our changes since M */
	MS_CLASSIFY, /* the client's new messages: append, merge, move, drop */
	MS_RENUMBER, /* our messages at conflicting UIDs move */
	MS_SAVES,    /* the client's new messages, applied */
	MS_EXPUNGE,  /* the client's expunges below L */
	MS_STORES,   /* the client's flag changes, applied */
	MS_OWN,      /* our changes the client has not seen */
	MS_WR_SAVE,  /* answer: SAVE lines (EXPUNGE lines were written before) */
	MS_WR_FLAGS, /* answer: FLAGS lines */
	MS_WR_END,   /* answer: UIDFIX lines and the completion */
};

/* A SYNC-END under way (see merge_step()). */
struct srv_merge {
	enum merge_stage stage;
	size_t pos;
	uint32_t id; /* of the SYNC-END */
	uint64_t M, cm, sm, base, N;
	uint32_t L, cu, su, next;
	uint32_t first;             /* where conflicts start to move to */
	bool touched;
	stor_msg_list smsgs;        /* our changes since M, kept exact or marked dirty */
	stor_tombstone_list stombs;
	bool *handled, *dirty;      /* per smsgs item */
	stor_uid_list sr, exp_client, flags_client, save_client, cexp_low;
	/* The client's copies and our tombstones the client learns as a
	 * user's expunges (EXPUNGE ... GUIDS), and what finds them. */
	sync_uexp_list uexp_client;
	srv_guid_list utombs;     /* GUIDs of our user tombstones since M, sorted */
	srv_guid_list save_guids; /* GUIDs of the client's SAVEs, sorted */
	/* Our GUID tombstones since M of GUIDs we do not hold: GONE lines. */
	srv_guid_list gone_out;
	uint64_t exp_modseq;
	uint32_t final_uidnext;
	uint64_t final_modseq;
	/* Copies this merge dropped (merge_log_drop()), and how many of
	 * them were logged one by one. */
	unsigned drops, drops_logged;
};

/* A FETCH under way. */
struct srv_fetch {
	uint32_t id; /* of the FETCH */
	stor_uid_list uids, missing;
	size_t pos;
	struct buf text;
};

enum srv_job { JOB_NONE, JOB_MERGE, JOB_FETCH };

/* A line of the answer in out: from start (after its name) to the CRLF
 * before the next line's start, or before the end of out. */
struct srv_line {
	uint32_t id;
	const char *name; /* a string literal */
	size_t start;
};

/* A message of the last SYNC-END answer: the client FETCHes the texts of
 * its SAVE lines next, and this saves a lookup per text. */
struct srv_text_ref {
	uint32_t uid;
	struct guid guid;
	uint64_t size;
};

struct sync_server {
	struct stor_db *db;
	uint32_t peer;
	bool no_rename_stamps;
	struct sync_transport t;
	struct proto_parser *parser;
	struct buf out;

	ARRAY(struct srv_mbox_id) ids;
	bool selected;
	struct guid sel;

	bool in_sync;
	uint64_t last_modseq, client_modseq;
	uint32_t last_uidnext, client_uidnext;
	ARRAY(struct srv_save) saves;
	ARRAY(struct srv_store) stores;
	stor_uid_list expunges;
	/* Those of the client's expunges that a user made (GUIDS): by UID, and
	 * their GUIDs, each sorted at SYNC-END. */
	sync_uexp_list uexp;
	srv_guid_list uexp_guids;
	/* GUIDs of the client's GONE lines (also in uexp_guids): at most
	 * SYNC_MAX_GONE_PER_SYNC. */
	srv_guid_list gone_in;
	/* The client's PSEEN lines, and those of the answer (sync-pseen.c). */
	stor_pseen_list pseen_in, pseen_out;
	stor_uid_list fix_old, fix_new;

	/* The command being answered in steps, and the commands that came
	 * meanwhile, kept parsed (proto_cmd_keep()), in order from held_pos;
	 * held_bytes is what they hold, bounded by SYNC_MAX_HELD_INPUT. */
	enum srv_job job;
	struct srv_merge merge;
	struct srv_fetch fetch;
	unsigned budget;
	ARRAY(struct proto_cmd *) held;
	ARRAY(uint32_t) held_ids; /* the numbers of the held commands */
	size_t held_pos, held_bytes;
	/* The command being run (srv_dispatch()): what its answers name. */
	uint32_t cur_id;
	/* The lines written to out since the last srv_flush(), each handed
	 * to the link with the number of the command it answers. */
	ARRAY(struct srv_line) lines;
	struct sync_server_link link;
	/* The built-in link of a byte transport (sync_server_input()): the
	 * tags of the commands not completed yet, and the line it writes. */
	struct sync_tags wire_tags;
	struct buf wire;
	ARRAY(struct srv_text_ref) text_refs; /* sorted by UID; of s->sel */

	unsigned examined;
	char *error;
};

/* What the three-way flag merge decided for one message (sync-flag-merge.c). */
struct flag_merge {
	uint32_t flags;
	stor_string_list keywords;
	stor_stamp_list times;  /* the decided flags with the time of the change kept */
};

/* sync-pseen.c: private \Seen records (SPEC.md 7.7).  over_limit sorts
 * the client's records and says whether a message has too many; merge
 * runs in merge_final, write after the FLAGS lines. */
int sync_pseen_srv_cmd(struct sync_server *s, const struct proto_cmd *cmd);
void sync_pseen_srv_reset(struct sync_server *s);
bool sync_pseen_srv_over_limit(struct sync_server *s);
int sync_pseen_srv_merge(struct sync_server *s, const char **err);
void sync_pseen_srv_write(struct sync_server *s, uint32_t id);

/* sync-server.c */
/* Hands the lines written since the last call to the link. */
void srv_flush(struct sync_server *s);
/* Starts a line of the answer to command id; w writes its arguments, and
 * proto_wr_end() ends it.  name is a string literal. */
void srv_line_begin(struct sync_server *s, struct proto_wr *w, uint32_t id, const char *name);
/* The completion of command id, written (srv_status) or written and
 * handed to the link (srv_reply). */
void srv_status(struct sync_server *s, uint32_t id, const char *status, const char *code,
		const char *text);
void srv_reply(struct sync_server *s, uint32_t id, const char *status,
	       const char *code, const char *text);
int srv_fail(struct sync_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void srv_sync_reset(struct sync_server *s);

/* sync-server-list.c */
int cmd_list(struct sync_server *s, const struct proto_cmd *cmd);
int cmd_create(struct sync_server *s, const struct proto_cmd *cmd);
int cmd_delete(struct sync_server *s, const struct proto_cmd *cmd);
int cmd_rename(struct sync_server *s, const struct proto_cmd *cmd);
int cmd_subscribe(struct sync_server *s, const struct proto_cmd *cmd, bool subscribe);
int cmd_acl_put(struct sync_server *s, const struct proto_cmd *cmd);
int cmd_mbox(struct sync_server *s, const struct proto_cmd *cmd);
int cmd_select(struct sync_server *s, const struct proto_cmd *cmd);

/* sync-server-changes.c */
int cmd_sync_begin(struct sync_server *s, const struct proto_cmd *cmd);
int cmd_save(struct sync_server *s, const struct proto_cmd *cmd);
int cmd_store(struct sync_server *s, const struct proto_cmd *cmd);
int cmd_expunge(struct sync_server *s, const struct proto_cmd *cmd);
int cmd_uidfix(struct sync_server *s, const struct proto_cmd *cmd);
int cmd_expunged(struct sync_server *s, const struct proto_cmd *cmd);

/* sync-server-merge-util.c */
int cmp_save(const void *a, const void *b);
ssize_t find_msg(const stor_msg_list *l, uint32_t uid);
ssize_t find_tomb(const stor_tombstone_list *l, uint32_t uid);
bool uid_in(const stor_uid_list *l, uint32_t uid);
bool guid_in(const srv_guid_list *l, const struct guid *g);
void guids_sort(srv_guid_list *l);
void uexp_push(struct srv_merge *m, uint32_t uid, const struct guid *g);
bool client_moved_from(struct sync_server *s, uint32_t uid, const struct guid *g);
int held_elsewhere(struct sync_server *s, const struct srv_save *cs, uint32_t *uid_r,
		   const char **err);
void uids_sort_unique(stor_uid_list *l);
int set_flags(struct sync_server *s, uint32_t uid, uint32_t flags,
	      const stor_string_list *kws, const stor_stamp_list *stamps, uint64_t modseq,
	      const char **error_r);
void wr_uid_lines(struct sync_server *s, uint32_t id, const char *name,
		  const stor_uid_list *uids, uint64_t modseq);
void wr_uexp_lines(struct sync_server *s, uint32_t id, const struct sync_uexp *u,
		   size_t count, uint64_t modseq);
void merge_log_drop(struct sync_server *s, uint32_t uid, const struct guid *g,
		    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void merge_log_drops_end(struct sync_server *s);

/* sync-flag-merge.c */
void flag_merge_free(struct flag_merge *fm);
void flag_merge_run(const struct stor_msg *cur, uint32_t cflags, const stor_string_list *ckws,
		    const stor_stamp_list *cstamps, uint64_t M, struct flag_merge *fm_r);

/* sync-server-merge.c */
void job_end(struct sync_server *s);
int merge_start(struct sync_server *s, uint32_t id);
int merge_step(struct sync_server *s);
void merge_mark_dirty(struct srv_merge *m, uint32_t uid);

/* sync-server-merge-client.c: the steps MS_CLASSIFY, MS_SAVES (-2: no UID
 * is left to renumber a message to) and MS_STORES, one change a call. */
int merge_classify(struct sync_server *s, struct srv_save *cs, const char **err);
int merge_apply_save(struct sync_server *s, struct srv_save *cs, const char **err);
int merge_apply_store(struct sync_server *s, const struct srv_store *st, const char **err);

#endif
