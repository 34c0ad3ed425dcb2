/* Shared between the files of sync/: flag lists on the wire, and the limits
 * of one sync. */
#ifndef SYNC_SYNC_PRIVATE_H
#define SYNC_SYNC_PRIVATE_H

#include "sync/sync.h"

#include "lib/buf.h"
#include "lib/mail-limits.h"
#include "protocol/protocol.h"
#include "storage/storage.h"

#define SYNC_DEFAULT_STEP_BUDGET 256
/* Commands a busy server holds (bytes, beyond the first one): more is a
 * peer that does not wait for answers, and the link closes. */
#define SYNC_MAX_HELD_INPUT (16u * 1024 * 1024)
/* Text bytes one server step sends for FETCH. */
#define SYNC_FETCH_STEP_BYTES (1024u * 1024)
/* UIDs per EXPUNGE or FETCH line (the wire's limit, protocol.h). */
#define SYNC_MAX_UIDS_PER_LINE PROTO_MAX_UIDS_PER_LINE
/* UIDs per EXPUNGE line that carries GUIDS (one GUID each, 33 bytes). */
#define SYNC_MAX_USER_UIDS_PER_LINE 200
/* Mailboxes and subscriptions in one LIST answer. */
#define SYNC_MAX_MAILBOXES 100000
/* UIDs and messages in one SYNC-END answer (a hostile server cannot make
 * the client hold more). */
#define SYNC_MAX_ANSWER_ITEMS (16u * 1024 * 1024)

/* A message's flags as the sync carries them (proto_arg_flags() read into
 * storage's list type). */
struct sync_flags {
	uint32_t flags;
	stor_string_list keywords; /* malloc()ed strings */
};

void sync_flags_free(struct sync_flags *f);
/* proto_wr_flags() of a storage keyword list (NULL: none). */
void sync_wr_flags(struct proto_wr *w, uint32_t flags, const stor_string_list *keywords);
/* proto_arg_flags() into storage's list type. */
int sync_arg_flags(const struct proto_arg *a, struct sync_flags *f_r);
/* Moves a parsed flag list (a decoded command's) into *f_r; *pf is left
 * empty. */
void sync_flags_take(struct sync_flags *f_r, struct proto_flags *pf);
/* A stored message as a SAVE to write: its keywords borrowed, the text NIL
 * until the caller sets one. */
void sync_save_of_msg(struct proto_save *sv_r, const struct stor_msg *m);
/* True when two messages' flags and keywords are equal. */
bool sync_flags_equal(uint32_t f1, const stor_string_list *k1, uint32_t f2,
		      const stor_string_list *k2);
/* The optional trailing "STAMPS (...)" after npos arguments: 0 with
 * *given_r, or -1 when something else or something malformed follows. */
int sync_cmd_stamps(const struct proto_cmd *cmd, size_t npos, bool *given_r,
		    stor_stamp_list *out);
/* The stamps of a message a peer sent without any (SPEC 1.0): every flag
 * changed at its modseq, time 0. */
void sync_stamps_legacy(uint64_t modseq, stor_stamp_list *out);
/* A user's expunge of the message guid at uid (EXPUNGE ... GUIDS). */
struct sync_uexp {
	uint32_t uid;
	struct guid guid;
};
typedef ARRAY(struct sync_uexp) sync_uexp_list;
/* Sorts by UID, keeping the first of equal UIDs. */
void sync_uexp_sort(sync_uexp_list *l);
/* The entry for uid in a sorted list, or NULL. */
const struct sync_uexp *sync_uexp_find(const sync_uexp_list *l, uint32_t uid);
/* Expunges uids from the mailbox with one modseq: as a user's expunge
 * where user (sorted) names the UID with the GUID the UID holds here, else
 * as the engine's (a UID that holds another message than the sender's
 * tombstone named must not pass a user's expunge on to that message's
 * copies under other UIDs).  The UIDs expunged go to *done (may be NULL). */
int sync_expunge(struct stor_db *db, const struct guid *mailbox, const uint32_t *uids, size_t count,
		 const sync_uexp_list *user, uint64_t modseq, stor_uid_list *done, const char **err);
/* A user's expunges (SPEC.md 10.2): writes " GUIDS (<guid> ...)", one GUID
 * per UID of the line's uidset, in ascending UID order. */
void sync_wr_user_guids(struct proto_wr *w, const struct guid *guids, size_t n);
/* The optional trailing "GUIDS (...)" of an EXPUNGE line after npos
 * arguments, for the line's UIDs (ascending, each once, else -1): 0 with
 * *given_r and the GUIDs in *guids_r (malloc()ed, uid_count of them), or -1
 * when something else or something malformed follows. */
int sync_cmd_user_guids(const struct proto_cmd *cmd, size_t npos, const stor_uid_list *uids,
			bool *given_r, struct guid **guids_r);
/* GONE lines (SPEC.md 10.2, 10.3): GUIDs a user expunged from the
 * mailbox that the sender does not hold, at most this many per line, and
 * per sync in each direction (past it the sync fails: a store keeps at
 * most STOR_GUID_TOMBS_MAX per mailbox, so an honest peer stays far below). */
#define SYNC_MAX_GONE_PER_LINE 200
#define SYNC_MAX_GONE_PER_SYNC (4u * STOR_GUID_TOMBS_MAX)
/* "GONE GUIDS (<guid> ...)": 0 with the GUIDs in *guids_r (malloc()ed,
 * *count_r of them, 1 to SYNC_MAX_GONE_PER_LINE, none zero), else -1. */
int sync_cmd_gone(const struct proto_cmd *cmd, struct guid **guids_r, size_t *count_r);
/* The GUIDs of a mailbox's GUID tombstones since `since` that it does not
 * hold now (those a peer may lack), sorted.  0 or -1. */
typedef ARRAY(struct guid) sync_guid_list;
int sync_gone_since(struct stor_db *db, const struct guid *mailbox, uint64_t since,
		    sync_guid_list *out, const char **err);
/* proto_arg_uids() into storage's list type. */
int sync_arg_uids(const struct proto_arg *a, size_t max, stor_uid_list *uids_r);

/* The built-in link of an engine on a byte transport: one whole line,
 * "tag name" and the rest (arguments, no CRLF), built in wire and sent. */
void sync_wire_send(const struct sync_transport *t, struct buf *wire, const char *tag,
		    const char *name, const void *rest, size_t rest_len);

#endif
