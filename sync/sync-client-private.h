/* Shared by the files of the sync client (sync-client*.c): the client's
 * state, which the list merge, the per-mailbox sync and the state machine
 * all read, and the functions one of them calls in another.  Only those
 * files include it. */
#ifndef SYNC_SYNC_CLIENT_PRIVATE_H
#define SYNC_SYNC_CLIENT_PRIVATE_H

#include "sync/sync-private.h"
#include "storage/storage-pseen.h"

#include <stdbool.h>
#include <stdint.h>


enum cl_phase {
	PH_START,
	PH_LIST_WAIT,
	PH_LIST_MERGE,
	PH_LISTOPS_WAIT,
	PH_RELIST_WAIT,
	PH_PLAN,
	PH_MBOX_NEXT,
	PH_MBOX_WAIT,
	PH_SEND,
	PH_SEND_WAIT,
	PH_RESEND,
	PH_RESEND_WAIT,
	PH_END_WAIT,
	PH_FETCH,
	PH_FETCH_WAIT,
	PH_APPLY,
	PH_FINISH,
	PH_DONE,
	PH_ERROR,
};

enum cl_kind {
	K_IGNORE,
	K_LIST,
	K_LISTOP,
	K_MBOX,
	K_SELECT,
	K_BEGIN,
	K_SAVE,
	K_OTHER,
	K_END,
	K_FETCH,
};

struct cl_pending {
	enum cl_kind kind;
	size_t idx;
	bool done;
};

struct cl_srv_tomb {
	struct guid guid;
	uint32_t uidnext;       /* what the deleted mailbox held; 0: not known */
	uint64_t hms;
};

/* An ACL record of the server's (an ACL line of its LIST answer). */
struct cl_srv_acl {
	struct guid guid;
	char *identifier;
	char *rights;
	int64_t time_ms;
};

struct cl_srv_mbox {
	char *name;
	struct guid guid;
	uint32_t uidvalidity, uidnext;
	uint64_t hms;
	unsigned char digest[16];
	char special[16];
	bool has_rstamp;   /* the line carried RSTAMP (a 1.1 server) */
	uint64_t rstamp;
};

struct cl_last_mbox {
	struct guid guid;
	uint32_t uidnext;
	uint64_t hms;
	char *name;
};

typedef ARRAY(struct cl_last_mbox) cl_last_list;

/* A SAVE line of the server's answer. */
struct cl_save {
	uint32_t uid;
	uint64_t modseq;
	struct guid guid;
	struct sync_flags f;
	bool stamped;
	stor_stamp_list stamps;
	int64_t date;
	int tz;
};

/* One FETCH command of texts: its first UID, and whether it completed. */
struct cl_chunk {
	uint32_t lo;
	bool done;
};

struct cl_flags {
	uint32_t uid;
	uint64_t modseq;
	struct sync_flags f;
	stor_stamp_list stamps;
};

struct sync_client {
	struct stor_db *db;
	uint32_t peer;
	char *user;
	bool full;
	bool no_rename_stamps;
	unsigned budget;
	/* Where commands go: the caller's link, or (sync_client_create())
	 * the built-in one that tags them for the byte transport t. */
	struct sync_client_link link;
	struct sync_transport t;
	struct buf wire; /* the built-in link's line */
	char cmd_name[PROTO_MAX_NAME + 1]; /* of the command being written */
	struct proto_parser *parser;
	struct buf out;
	struct sync_report report;
	char *error;
	enum cl_phase phase;

	/* Commands are numbered from 1; pending holds those from phase_base
	 * on (cl_new_group()). */
	uint32_t next_id, phase_base;
	ARRAY(struct cl_pending) pending;
	size_t outstanding;

	ARRAY(struct cl_srv_mbox) srv;
	/* Indexes into srv sorted by GUID and by name (lookups in O(log n)). */
	ARRAY(uint32_t) srv_by_guid_ix, srv_by_name_ix;
	stor_string_list srv_subs;
	/* The server's mailbox tombstones (DELETED lines), and the names it
	 * unsubscribed (UNSUBSCRIBED lines). */
	ARRAY(struct cl_srv_tomb) srv_deleted;
	stor_string_list srv_unsubs;
	ARRAY(struct cl_srv_acl) srv_acls;
	bool list_changed;

	/* Mailboxes to look at, by GUID, and the current one. */
	ARRAY(struct guid) jobs;
	size_t job;
	unsigned job_tries;
	struct stor_mailbox cur;
	bool have_cur;
	bool cur_full;
	uint32_t L, cu;
	uint64_t M, cm;

	stor_msg_list msgs;
	stor_tombstone_list tombs;
	size_t send_pos;
	stor_uid_list resend;  /* indexes into msgs */
	size_t resend_pos;

	/* The server's answer. */
	stor_uid_list exp_uids;
	/* Of exp_uids, those the answer names as a user's expunges (GUIDS):
	 * our tombstones of them say so (SPEC 10.3). */
	sync_uexp_list exp_user;
	uint64_t exp_modseq;
	/* Of exp_uids, those whose message the answer saves again under
	 * another UID: expunged after the SAVE lines, or the text they share
	 * would be freed first. */
	stor_uid_list exp_after;
	ARRAY(struct cl_save) saves;
	ARRAY(struct cl_flags) flags;
	stor_uid_list fix_old, fix_new;
	/* GONE lines: GUIDs a user expunged on the server's side that
	 * the server does not hold (SPEC.md 10.3 "A user's expunge"). */
	sync_guid_list gone;
	uint32_t final_uidnext;
	uint64_t final_modseq;
	size_t fetch_pos;
	stor_uid_list need; /* UIDs whose texts we lack */
	ARRAY(struct cl_chunk) chunks; /* the FETCH commands, in UID order */
	uint32_t apply_below;          /* SAVE lines at or above wait for texts */
	bool apply_diverged;           /* a SAVE line was not applied: sync again */
	size_t apply_pos;
	unsigned apply_stage;
	/* Found while applying SAVE lines at UIDs where we hold a tombstone:
	 * our expunges of the same message, and conflicts moved to fresh UIDs
	 * (old, new), both sent to the server in a second, short sync. */
	stor_uid_list late_exp, late_old, late_new;
	/* Like late_exp, for a user's expunges: UIDs, GUIDs (sent with GUIDS). */
	stor_uid_list late_uexp;
	ARRAY(struct guid) late_uexp_g;
	uint32_t late_next;
	unsigned late_rounds;
	/* GUIDs of our users' tombstones among tombs, sorted: built when a
	 * SAVE line meets the engine's tombstone of its GUID (user_expunged()). */
	sync_guid_list utomb_guids;
	bool utomb_built;
	/* Lines logged for SAVE lines of this answer dropped or kept under
	 * our tombstones (log_keep_drop()): bounded per answer. */
	unsigned keep_drop_logged;
	/* The answer's PSEEN lines (sync-pseen.c). */
	stor_pseen_list pseen_ans;
	/* Writes made here by others (IMAP sessions, replication) while the
	 * answer is applied, from SYNC-BEGIN on (SPEC.md 10.3 "A write during
	 * the sync"): our HIGHESTMODSEQ as the answer's own writes left it,
	 * the first and the highest modseq another writer took (0: none yet),
	 * and the fresh modseq above them that the answer's changes move to. */
	uint64_t own_hms, foreign_low, foreign_hms, fresh;
	/* The highest modseq below every such write of this mailbox's rounds
	 * (UINT64_MAX: none): what the copies are known to share up to. */
	uint64_t common_cap;
};

/* sync-pseen.c: private \Seen records (SPEC.md 7.7): ours since M sent
 * after the other changes, the answer's taken, then applied with the
 * answer (dropping those of GUIDs with a GUID tombstone). */
int sync_pseen_cl_send(struct sync_client *c);
int sync_pseen_cl_line(struct sync_client *c, const struct proto_cmd *line);
int sync_pseen_cl_apply(struct sync_client *c, const char **err);
void sync_pseen_cl_reset(struct sync_client *c);

/* sync-client.c */
int cl_fail(struct sync_client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cl_cmd_begin(struct sync_client *c, struct proto_wr *w, const char *name,
		  enum cl_kind kind, size_t idx);
void cl_cmd_end(struct sync_client *c, struct proto_wr *w);
void cl_wr_expunges(struct sync_client *c, const stor_uid_list *uids,
		    const stor_uid_list *uuids, const struct guid *guids);
int cl_expunge(struct sync_client *c, const stor_uid_list *uids, uint64_t modseq,
	       stor_uid_list *done, const char **err);
void cl_new_group(struct sync_client *c);
void srv_list_free(struct sync_client *c);
void answer_free(struct sync_client *c);

/* sync-client-list.c */
int cmp_guid_v(const void *a, const void *b);
int list_merge(struct sync_client *c);

/* sync-client-list-last.c */
int last_list_read(struct sync_client *c, cl_last_list *l_r, stor_string_list *subs_r);
void last_list_free(cl_last_list *l, stor_string_list *subs);
int last_list_write(struct sync_client *c);
const struct cl_last_mbox *last_by_guid(const cl_last_list *l, const struct guid *g);

/* sync-client-list-srv.c */
void srv_index_build(struct sync_client *c);
void srv_add(struct sync_client *c, struct cl_srv_mbox *e);
void srv_set_name(struct sync_client *c, const struct guid *g, const char *new_name);
const struct cl_srv_mbox *srv_by_guid(const struct sync_client *c, const struct guid *g);
const struct cl_srv_mbox *srv_by_name(const struct sync_client *c, const char *name);
void send_list(struct sync_client *c);
int on_list_line(struct sync_client *c, const struct proto_cmd *line);

/* sync-client-mailbox.c */
int plan_jobs(struct sync_client *c);
int mbox_start(struct sync_client *c);
int send_begin(struct sync_client *c);
int send_some(struct sync_client *c);
int resend_some(struct sync_client *c);
void send_end(struct sync_client *c);
int send_fetch(struct sync_client *c);
uint32_t fetched_below(const struct sync_client *c);
int cmp_cl_save(const void *a, const void *b);
int on_text_line(struct sync_client *c, const struct proto_cmd *line);
int on_end_line(struct sync_client *c, const struct proto_cmd *line);
int send_late(struct sync_client *c);

/* sync-client-mailbox-apply.c */
int apply_some(struct sync_client *c);

#endif
