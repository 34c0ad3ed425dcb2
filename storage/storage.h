/* The node's mail store: one LevelDB database in data_dir.
 *
 * Holds users' mailboxes, messages, message texts (stored once per node and
 * shared by copies), modseqs, expunge tombstones, the replication log with
 * per-peer cursors and per-peer, per-mailbox sync state.
 *
 * Durability and group commit.  Every mutation below is one atomic LevelDB
 * write batch, written first to the store's journal (which also holds the
 * message texts).  It is visible to reads on this handle as soon as the call
 * returns, but it is durable only after the next stor_sync().  Callers must
 * not acknowledge a change (IMAP OK, protocol reply) before that.  An event
 * loop calls stor_sync() once per turn, so all mutations of a turn share one
 * fsync; stor_on_durable() queues work to run after it.  Because the journal
 * is append-only, syncing it makes every earlier write durable, and a kill -9
 * at any moment leaves only whole batches (opening replays the journal).
 *
 * Errors: functions return 0 on success and -1 on error with a message in
 * *error_r that stays valid until the next call on the same handle.  Lookups
 * return 1 found, 0 not found, -1 error.  LevelDB corruption is always an
 * error, never ignored.
 *
 * Nothing here knows of IMAP syntax or of the network; no LevelDB type leaks
 * out of this header. */
#ifndef STORAGE_STORAGE_H
#define STORAGE_STORAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/arr.h"
#include "lib/buf.h"
#include "lib/guid.h"

struct stor_db;

/* Limits, checked before anything is written. */
#define STOR_MAX_USER_LEN 255
#define STOR_MAX_MAILBOX_NAME_LEN 1024
#define STOR_MAX_KEYWORDS 64         /* per message */
#define STOR_MAX_KEYWORD_LEN 128

/* System flags, as bits. */
enum stor_flag {
	STOR_FLAG_SEEN = 1 << 0,
	STOR_FLAG_ANSWERED = 1 << 1,
	STOR_FLAG_FLAGGED = 1 << 2,
	STOR_FLAG_DELETED = 1 << 3,
	STOR_FLAG_DRAFT = 1 << 4,
};
#define STOR_FLAGS_ALL 0x1f

struct stor_settings {
	const char *dir;            /* created if missing */
	uint64_t max_message_size;  /* 0: CONFIG_DEFAULT_MAX_MESSAGE_SIZE */
	/* Test hook: when > 0, the Nth LevelDB write from now fails with an
	 * injected I/O error, to exercise error paths. */
	unsigned fail_nth_write;
	/* Size at which the journal starts a new segment file; 0 for the
	 * default (64 MiB).  Tests make it small to exercise rotation. */
	uint64_t journal_segment_size;
	/* While another process holds the store, try again for this long
	 * before failing (0: fail at once).  A `starling` command opens the
	 * store itself when no node answers it, so a node started meanwhile
	 * finds the store busy for as long as the command runs. */
	unsigned lock_wait_ms;
};

/* Opens (creating if needed) the store.  Fails with a clear message when
 * another process holds the database past set->lock_wait_ms ("... is in
 * use by another process"), or when LevelDB reports corruption. */
int stor_open(const struct stor_settings *set, struct stor_db **db_r, char **error_r);
void stor_close(struct stor_db **db);
/* The last error message on this handle. */
const char *stor_last_error(struct stor_db *db);

/* What kind of failure the last error on a handle was, for callers that
 * act on it: the answer they give (a NO code) and whether trying again
 * later can help. */
enum stor_error {
	STOR_ERROR_NONE = 0,
	STOR_ERROR_INTERNAL,  /* anything not below: an I/O or LevelDB error, a bad request */
	STOR_ERROR_TOOBIG,    /* a message over max_message_size */
	STOR_ERROR_LIMIT,     /* a mailbox ran out of UIDs or modseqs (lib/mail-limits.h) */
	STOR_ERROR_NOSPACE,   /* the disk or quota is full */
	STOR_ERROR_BROKEN,    /* a write failed earlier: nothing changes until a restart */
	STOR_ERROR_CORRUPT,   /* a stored record does not decode */
};
enum stor_error stor_last_error_kind(struct stor_db *db);

/* Makes every mutation so far durable (one fsync for all of them), then runs
 * the callbacks queued by stor_on_durable() in order, with ok=false if the
 * sync failed.  Returns 0 or -1. */
int stor_sync(struct stor_db *db, const char **error_r);
typedef void stor_durable_cb(void *ctx, bool ok);
void stor_on_durable(struct stor_db *db, stor_durable_cb *cb, void *ctx);
/* True when there are mutations or callbacks waiting for stor_sync(), or a
 * sync in flight. */
bool stor_sync_pending(struct stor_db *db);

/* Group commit off the event loop.  stor_sync_start() writes out what is
 * buffered and starts the fsync in a helper thread, taking along the
 * callbacks queued so far; the loop goes on, and mutations and callbacks
 * made meanwhile wait for the next sync.  When stor_sync_fd() turns
 * readable, stor_sync_finish() runs the callbacks (ok=false if the fsync
 * failed, after which every write fails until the node restarts).  One sync
 * is in flight at a time: stor_sync_start() returns 0 and does nothing while
 * stor_sync_busy().  When there is nothing to sync it runs the callbacks at
 * once and returns 0; 1 when it started a sync; -1 when it failed (the
 * callbacks ran with ok=false).  stor_sync() first waits for a sync in
 * flight and runs its callbacks. */
int stor_sync_start(struct stor_db *db);
void stor_sync_finish(struct stor_db *db);
bool stor_sync_busy(struct stor_db *db);
/* -1 when the helper thread cannot be started. */
int stor_sync_fd(struct stor_db *db);

/* Status lines for `starling status`: "store.journal_segments: N",
 * "store.journal_bytes: N" (on disk), "store.text_bytes_live: N" (what the
 * texts still referenced take; the rest is reclaimed by deleting and
 * compacting segments), "store.compacting: yes|no". */
void stor_status(struct stor_db *db, struct buf *out);

/* ---- Mailboxes ---- */

struct stor_mailbox {
	struct guid guid;        /* chosen by the creator, same on every node */
	char *user;
	char *name;              /* IMAP name, '/'-separated hierarchy, "INBOX" */
	uint32_t uidvalidity;
	uint32_t uidnext;        /* above every UID ever used, even expunged */
	uint64_t highestmodseq;  /* at least every modseq in the mailbox */
	uint32_t messages;       /* current count */
	uint32_t unseen;         /* messages without \Seen */
	uint32_t recent_dummy;   /* reserved, always 0 */
	/* Order-independent digest of the mailbox's messages: XOR over messages
	 * of a hash of (UID, GUID, flags, keywords).  Equal on two nodes exactly
	 * when they hold the same messages with the same flags. */
	unsigned char digest[16];
	char special_use[16];    /* "\\Sent" etc., or "" */
};

void stor_mailbox_free(struct stor_mailbox *mb);

struct stor_mailbox_create {
	const char *user;
	const char *name;
	const struct guid *guid;   /* NULL: generate a new one */
	uint32_t uidvalidity;      /* 0: choose a new one (based on time) */
	const char *special_use;   /* NULL or "\\Drafts", ... */
};

/* Creates a mailbox.  Fails if (user, name) exists, or the GUID belongs to
 * another mailbox.  *mb_r (may be NULL) receives the new mailbox, which the
 * caller frees with stor_mailbox_free(). */
int stor_mailbox_create(struct stor_db *db, const struct stor_mailbox_create *req,
			struct stor_mailbox *mb_r, const char **error_r);
/* Looks up by name or by GUID.  1 found, 0 not found, -1 error. */
int stor_mailbox_get(struct stor_db *db, const char *user, const char *name,
		     struct stor_mailbox *mb_r, const char **error_r);
int stor_mailbox_get_by_guid(struct stor_db *db, const struct guid *guid,
			     struct stor_mailbox *mb_r, const char **error_r);
/* Deletes the mailbox with all its messages, tombstones and sync state,
 * leaving a mailbox tombstone (below).  Message texts lose a reference and
 * are freed when the last one goes. */
int stor_mailbox_delete(struct stor_db *db, const struct guid *guid, const char **error_r);

/* Mailbox tombstones: a deleted mailbox leaves (user, GUID, name, when),
 * so that a sync tells "deleted there" from "never there" or "lost there"
 * (a node whose store was wiped or restored): only the first deletes the
 * other side's copy, and a CREATE replayed after the DELETE is refused.  A
 * mailbox created again with the GUID takes its tombstone away.  They are
 * kept until then: a few dozen bytes per deleted mailbox. */
struct stor_mailbox_tomb {
	struct guid guid;
	char *name;            /* the name it had */
	int64_t deleted_ms;    /* wall clock of the delete, for people */
	/* What the deleted mailbox held: a copy elsewhere with nothing beyond
	 * them goes too, one with more was changed since and comes back.  0
	 * and 0 for a delete of a mailbox this node did not hold. */
	uint32_t uidnext;
	uint64_t highestmodseq;
};
typedef ARRAY(struct stor_mailbox_tomb) stor_mailbox_tomb_list;
/* Records a tombstone for a mailbox this node does not hold (a DELETE that
 * arrived before or without the CREATE).  A held mailbox is not touched:
 * -1 then. */
int stor_mailbox_tomb_add(struct stor_db *db, const char *user, const struct guid *guid,
			  const char *name, const char **error_r);
/* 1 when the user's mailbox GUID has a tombstone (with its UIDNEXT and
 * HIGHESTMODSEQ in the pointers that are not NULL), 0 not, -1 error. */
int stor_mailbox_tomb_get(struct stor_db *db, const char *user, const struct guid *guid,
			  uint32_t *uidnext_r, uint64_t *highestmodseq_r, const char **error_r);
/* The user's tombstones, sorted by GUID. */
int stor_mailbox_tombs(struct stor_db *db, const char *user, stor_mailbox_tomb_list *list_r,
		       const char **error_r);
void stor_mailbox_tomb_list_free(stor_mailbox_tomb_list *list);
/* Renames; the GUID, UIDVALIDITY and messages stay.  Fails if new_name
 * exists. */
int stor_mailbox_rename(struct stor_db *db, const struct guid *guid, const char *new_name,
			const char **error_r);
/* A mailbox's rename stamp (SPEC.md 10.5): which of two names a list merge
 * keeps when neither side's name is the last common list's.  0 until a
 * user renames the mailbox; (ms << 16) | (sid & 0xffff) after. */
#define STOR_RENAME_STAMP_SID_BITS 16
int stor_mailbox_rename_stamp(struct stor_db *db, const struct guid *guid, uint64_t *stamp_r,
			      const char **error_r);
/* The stamp of a user's rename on node sid at now_ms, of a mailbox whose
 * stamp is current: above current whatever the clocks say, so a rename
 * made after another one was seen always wins over it. */
uint64_t stor_rename_stamp_next(uint64_t current, uint64_t now_ms, uint32_t sid);
/* stor_mailbox_rename() that also sets the stamp, in the same write; with
 * the name already new_name, only the stamp is set. */
int stor_mailbox_rename_stamped(struct stor_db *db, const struct guid *guid, const char *new_name,
				uint64_t stamp, const char **error_r);

typedef ARRAY(struct stor_mailbox) stor_mailbox_array;
/* All of a user's mailboxes, sorted by name.  Free with
 * stor_mailbox_list_free(). */
/* 1 when this mailbox was called name here before a rename (one of its
 * last few names), 0 when not, -1 on error. */
int stor_mailbox_old_name(struct stor_db *db, const struct guid *guid, const char *name,
			  const char **error_r);
int stor_mailbox_list(struct stor_db *db, const char *user, stor_mailbox_array *list_r,
		      const char **error_r);
void stor_mailbox_list_free(stor_mailbox_array *list);
/* Every user that has at least one mailbox, sorted.  Free each string and
 * the array. */
typedef ARRAY(char *) stor_string_list;
int stor_user_list(struct stor_db *db, stor_string_list *users_r, const char **error_r);
void stor_string_list_free(stor_string_list *list);
/* Whether a list of flag names holds name, compared case-insensitively. */
bool stor_keywords_have(const stor_string_list *kws, const char *name);

/* Subscriptions are by name and may name a mailbox that doesn't exist.
 * Unsubscribing leaves a tombstone of the name (as deleting a mailbox
 * does, and for the same reason), subscribing again takes it away. */
int stor_subscribe(struct stor_db *db, const char *user, const char *name, bool subscribed,
		   const char **error_r);
/* Sorted names. */
int stor_subscriptions(struct stor_db *db, const char *user, stor_string_list *names_r,
		       const char **error_r);
/* Sorted names unsubscribed (and not subscribed again since). */
int stor_unsubscribed(struct stor_db *db, const char *user, stor_string_list *names_r,
		      const char **error_r);

/* ---- Messages ---- */

/* When one flag of a message last changed (SPEC.md 10.3 "Flags"): the
 * modseq of that change on this node, and the wall-clock time in ms of the
 * change a user made (carried between nodes, so that every node decides a
 * conflict alike).  A sync's three-way merge takes a flag whose stamp is
 * above the last common modseq as changed on that side since.  The name is
 * a system flag ("\\Seen"), a keyword (also one removed since: its removal
 * is a change too), or "\\*": every flag without a stamp of its own (a
 * record written before stamps existed counts all its flags as changed at
 * its modseq then, with time 0).  A flag with no stamp and no "\\*" never
 * changed. */
struct stor_stamp {
	char *name;
	uint64_t modseq;
	int64_t time_ms;
};
typedef ARRAY(struct stor_stamp) stor_stamp_list;
#define STOR_STAMP_ALL "\\*"
/* Per message: the system flags, every keyword it may hold, as many
 * removed keywords, and "\\*".  Beyond that the oldest stamps of removed
 * keywords are forgotten. */
#define STOR_MAX_STAMPS (5 + 2 * STOR_MAX_KEYWORDS + 1)

struct stor_msg {
	uint32_t uid;
	struct guid guid;        /* global UID: kept across COPY and by replicas */
	uint64_t modseq;
	uint32_t flags;          /* enum stor_flag bits */
	stor_string_list keywords; /* sorted, unique, case as first given */
	int64_t internaldate;    /* seconds since the epoch */
	int32_t internaldate_tz; /* minutes east of UTC, for display */
	uint64_t size;           /* bytes of text */
	stor_stamp_list stamps;  /* owned; not part of the digest or the dump */
};

void stor_msg_free(struct stor_msg *msg);
/* Whether the message holds the keyword.  Flag names compare
 * case-insensitively (RFC 3501 2.3.2), as the store normalises them. */
bool stor_msg_has_keyword(const struct stor_msg *msg, const char *kw);
/* The stamp of one flag (case-insensitive name): its own, else "\\*", else
 * modseq 0 and time 0. */
void stor_msg_stamp(const struct stor_msg *msg, const char *name, uint64_t *modseq_r,
		    int64_t *time_r);
void stor_stamp_list_free(stor_stamp_list *list);
/* The same for a bare list of stamps. */
void stor_stamps_lookup(const stor_stamp_list *list, const char *name, uint64_t *modseq_r,
			int64_t *time_r);
/* The wall clock in ms, for stamps. */
int64_t stor_now_ms(void);
typedef ARRAY(struct stor_msg) stor_msg_list;
void stor_msg_list_free(stor_msg_list *list);

struct stor_append {
	uint32_t uid;             /* 0: the store assigns UIDNEXT (a master);
				     else the given UID (a replica) */
	uint64_t modseq;          /* 0: the store assigns highestmodseq+1 */
	const struct guid *guid;  /* NULL: generate */
	uint32_t flags;
	const char *const *keywords;
	size_t keyword_count;
	int64_t internaldate;
	int32_t internaldate_tz;
	/* The text: either given whole here, or NULL when the text for guid is
	 * already in the store (from stor_text_* or an earlier message with the
	 * same GUID), which is how COPY shares it. */
	const void *text;
	size_t text_len;
	/* The flags' stamps as another node sent them (a sync or a bundle):
	 * kept with their times, and with the new message's modseq.  Without
	 * them every flag and keyword set gets (the modseq, now). */
	bool stamps_given;
	const struct stor_stamp *stamps;
	size_t stamp_count;
};

/* Appends a message.  Idempotent for replicas: if the mailbox already has a
 * message with this GUID and UID, nothing changes and *uid_r gets its UID
 * (return 0).  Refused when the UID is already used by another message, is
 * below a UID that was expunged with another GUID, or the text exceeds the
 * size limit ("message too large").  *uid_r and *modseq_r may be NULL.
 * In this implementation "expunged with another GUID" means a tombstone at
 * that very UID; a replay of an append whose message was expunged since
 * (tombstone with the same GUID) is a no-op returning 0, so late duplicates
 * never resurrect mail.  A replica may fill an unused UID below UIDNEXT. */
int stor_msg_append(struct stor_db *db, const struct guid *mailbox,
		    const struct stor_append *req, uint32_t *uid_r, uint64_t *modseq_r,
		    const char **error_r);

/* Streams a large text into the store before the append that references it
 * (by passing text = NULL with the same GUID): the text is written in chunks
 * so it is never held whole in memory twice.  A text that no message
 * references after a crash is garbage collected on open. */
struct stor_text_writer;
struct stor_text_writer *stor_text_begin(struct stor_db *db, const struct guid *guid);
int stor_text_write(struct stor_text_writer *w, const void *data, size_t len,
		    const char **error_r);
/* Finishes the text.  Returns 0 or -1; frees w in both cases. */
int stor_text_finish(struct stor_text_writer **w, const char **error_r);
void stor_text_abort(struct stor_text_writer **w);

/* stor_text_begin() never fails: an error (or a text already stored, which
 * makes the writer discard its input) shows at write/finish.  A text over
 * max_message_size fails with "message too large". */

/* Whether this node holds the text of a message GUID: 1, 0 or -1. */
int stor_text_exists(struct stor_db *db, const struct guid *guid, uint64_t *size_r,
		     const char **error_r);
/* Reads [offset, offset+len) of a text into out (appending); fewer bytes at
 * the end of the text. */
int stor_text_read(struct stor_db *db, const struct guid *guid, uint64_t offset, uint64_t len,
		   struct buf *out, const char **error_r);
/* The same range read in place (storage-journal-map.c): pieces pointing
 * into read-only mappings of the journal, each chunk checked against its
 * CRC, appended to out in order.  Each piece holds its mapping until it is
 * released, whatever happens to the store meanwhile (even after
 * stor_close).  Returns 0; -1 on an error (error_r); 1 when the text is
 * not to be read so (no mapping, a page that cannot be read, a chunk that
 * does not check out): nothing is added then, and stor_text_read is the
 * way, which also reports what is wrong. */
struct stor_jnl_map;
struct stor_text_piece {
	const unsigned char *data;
	size_t len;
	struct stor_jnl_map *map;
};
typedef ARRAY(struct stor_text_piece) stor_text_piece_list;
int stor_text_map(struct stor_db *db, const struct guid *guid, uint64_t offset, uint64_t len,
		  stor_text_piece_list *out, const char **error_r);
void stor_text_piece_release(struct stor_text_piece *p);
/* Releases every piece of l and frees it. */
void stor_text_pieces_free(stor_text_piece_list *l);

/* Derived data of a text (storage-derived.c): one opaque record of at most
 * STOR_DERIVED_MAX bytes per text GUID, which the caller computes from the
 * text and versions itself.  A cache: not journaled, synced or replicated,
 * possibly lost in a crash, deleted with its text.  get appends the record
 * to out: 1, 0 (none), -1.  put stores it if the text is in the store: 1,
 * 0 (no such text: nothing written), -1. */
#define STOR_DERIVED_MAX (256 * 1024)
int stor_derived_get(struct stor_db *db, const struct guid *text_guid, struct buf *out,
		     const char **error_r);
int stor_derived_put(struct stor_db *db, const struct guid *text_guid, const void *data,
		     size_t len, const char **error_r);

/* Copies a message from one mailbox to another, sharing the text and
 * keeping the GUID.  uid/modseq as for append (0: assign).  flags and
 * keywords are the source's. */
int stor_msg_copy(struct stor_db *db, const struct guid *src_mailbox, uint32_t src_uid,
		  const struct guid *dst_mailbox, uint32_t dst_uid, uint64_t dst_modseq,
		  uint32_t *uid_r, uint64_t *modseq_r, const char **error_r);

/* 1 found, 0 not found, -1 error. */
int stor_msg_get(struct stor_db *db, const struct guid *mailbox, uint32_t uid,
		 struct stor_msg *msg_r, const char **error_r);
/* Messages with first <= UID <= last, in UID order (last = UINT32_MAX for
 * "*"). */
int stor_msg_list_range(struct stor_db *db, const struct guid *mailbox, uint32_t first,
			uint32_t last, stor_msg_list *list_r, const char **error_r);
/* The UID of the message with this GUID in the mailbox: 1, 0 or -1. */
int stor_msg_find_guid(struct stor_db *db, const struct guid *mailbox, const struct guid *guid,
		       uint32_t *uid_r, const char **error_r);

enum stor_flag_op {
	STOR_FLAGS_REPLACE,
	STOR_FLAGS_ADD,
	STOR_FLAGS_REMOVE,
};

struct stor_store {
	enum stor_flag_op op;
	uint32_t flags;
	const char *const *keywords;
	size_t keyword_count;
	/* 0: assign highestmodseq+1.  Else the master's modseq, applied as is
	 * (a replica) only if it is above the message's current modseq: an
	 * older change never overwrites a newer one.  A replica adopts the
	 * newer modseq even when the flags end up unchanged, so modseqs
	 * converge (the seed's modseq-only STOREs). */
	uint64_t modseq;
	/* CONDSTORE: when nonzero, messages whose modseq is above this are not
	 * changed and their UIDs are added to *failed_r. */
	uint64_t unchangedsince;
	/* Every flag whose value changes gets the stamp (the new modseq, the
	 * time); time 0 is a change made here: now, but after the flag's
	 * previous change.  A change made here (modseq 0) stamps every flag
	 * it names, also those whose value stays (SPEC.md 10.2).  Flags named
	 * in stamps (a merge's decision, a peer's change) take that stamp's
	 * time, also when their value stays: a later time than this copy's
	 * with the new modseq (a change it had not seen), else the time only
	 * (if they have a stamp). */
	int64_t time_ms;
	const struct stor_stamp *stamps;
	size_t stamp_count;
	/* A replica applying a peer's whole state (REPLACE) that may cross
	 * changes made here while the two were apart: a flag whose value
	 * differs keeps its value here when its stamp's time is later than
	 * the one stamps give it (the later change wins, SPEC.md 8.6). */
	bool keep_later_local;
	/* A sync's merge setting flags at its modseq on a message it already
	 * gave that modseq (moved it in the same merge): applied although
	 * the modseq is not above the message's. */
	bool same_modseq;
	/* REPLACE leaves these flags as they are and does not name them (a
	 * session whose \Seen is private replaces the others). */
	uint32_t keep_flags;
	/* Private \Seen (SPEC.md 7.7): the user whose own records the \Seen
	 * of this STORE changes, for the change seam (replicator/repl-pseen.c);
	 * stor_msg_store() ignores it. */
	const char *seen_of;
};

/* Changes flags of the messages with the given UIDs (missing UIDs are
 * skipped).  Each changed message gets the new modseq; a message whose
 * flags would not change keeps its modseq, unless the change is made here
 * (modseq 0) and names a flag: that is a change of the named flags.  Changed messages are appended
 * to *changed_r (may be NULL) with their new state; UIDs refused by
 * UNCHANGEDSINCE to *failed_r (may be NULL). */
typedef ARRAY(uint32_t) stor_uid_list;
int stor_msg_store(struct stor_db *db, const struct guid *mailbox, const uint32_t *uids,
		   size_t uid_count, const struct stor_store *req, stor_msg_list *changed_r,
		   stor_uid_list *failed_r, const char **error_r);

/* Expunges messages (missing UIDs are skipped), leaving tombstones of (UID,
 * GUID, modseq).  modseq 0: assign one new modseq for the whole call.  The
 * tombstones are a user's expunge (an IMAP EXPUNGE or MOVE, here or on the
 * master). */
int stor_msg_expunge(struct stor_db *db, const struct guid *mailbox, const uint32_t *uids,
		     size_t uid_count, uint64_t modseq, stor_uid_list *expunged_r,
		     const char **error_r);
/* The same, saying whether a user expunged the messages (true) or the
 * engine dropped copies it keeps elsewhere (false: a sync that keeps the
 * other side's copy, dedupe, repair).  Only a user's tombstone removes the
 * GUID's copies under other UIDs in a sync (SPEC.md 10.3). */
int stor_msg_expunge_kind(struct stor_db *db, const struct guid *mailbox, const uint32_t *uids,
			  size_t uid_count, uint64_t modseq, bool user,
			  stor_uid_list *expunged_r, const char **error_r);

/* A GUID names one message per mailbox (SPEC.md 6.4).  Where two nodes'
 * syncs put one message at two UIDs, every node keeps the highest and
 * expunges the others (one new modseq), so they all end alike whatever the
 * order of the syncs.  The UIDs expunged are appended to *expunged_r (may
 * be NULL).  Costs one scan of the mailbox's GUID index. */
int stor_msg_dedupe(struct stor_db *db, const struct guid *mailbox, stor_uid_list *expunged_r,
		    const char **error_r);

/* UIDFIX: moves the message at old_uid to new_uid (which must be unused and
 * is raised above UIDNEXT if needed), with a new modseq, leaving a
 * tombstone at old_uid so a QRESYNC client learns the old UID vanished. */
int stor_msg_renumber(struct stor_db *db, const struct guid *mailbox, uint32_t old_uid,
		      uint32_t new_uid, uint64_t modseq, const char **error_r);

struct stor_tombstone {
	uint32_t uid;
	struct guid guid;
	uint64_t modseq;
	/* A user expunged it (not the engine moving or dropping a copy). */
	bool user;
};
typedef ARRAY(struct stor_tombstone) stor_tombstone_list;

/* GUID tombstones (SPEC.md 10.3 "A user's expunge"): the GUIDs a user
 * expunged from the mailbox (here, on its master, or on a node a sync
 * learned it from) and that it does not hold, by GUID with no UID.  A
 * message of such a GUID that a peer, a sync or a bundle brings later is
 * one the expunge missed: it is not stored, and a sync expunges it on the
 * side that holds it.  They travel to peers in syncs (GONE lines).
 * A user's expunge (stor_msg_expunge_kind with user) leaves one per GUID;
 * the engine's moves and drops never do.  At most STOR_GUID_TOMBS_MAX per
 * mailbox: past that those of the lowest modseqs are forgotten (their
 * messages may come back from a node that still holds them; no mail is
 * ever lost to the bound). */
#define STOR_GUID_TOMBS_MAX 1000
struct stor_guid_tomb {
	struct guid guid;
	uint64_t modseq;
};
typedef ARRAY(struct stor_guid_tomb) stor_guid_tomb_list;
/* Records those of guids that the mailbox neither holds nor has one of,
 * at modseq (raising HIGHESTMODSEQ to it); *added_r: how many.  0 or -1. */
int stor_guid_tombs_add(struct stor_db *db, const struct guid *mailbox, const struct guid *guids,
			size_t count, uint64_t modseq, size_t *added_r, const char **error_r);
/* 1 when the GUID has one (its modseq in *modseq_r, may be NULL), 0, -1. */
int stor_guid_tomb_get(struct stor_db *db, const struct guid *mailbox, const struct guid *guid,
		       uint64_t *modseq_r, const char **error_r);
/* Those whose modseq is above since, in GUID order.  *list_r is set to a
 * new array. */
int stor_guid_tombs_since(struct stor_db *db, const struct guid *mailbox, uint64_t since,
			  stor_guid_tomb_list *list_r, const char **error_r);

/* Messages whose modseq is above since (changed or added), in UID order,
 * and tombstones whose modseq is above since, in UID order.  *msgs_r and
 * *tombs_r are set to new arrays (no need to initialise them). */
int stor_changes_since(struct stor_db *db, const struct guid *mailbox, uint64_t since,
		       stor_msg_list *msgs_r, stor_tombstone_list *tombs_r, const char **error_r);

/* Raises the mailbox's UIDNEXT and HIGHESTMODSEQ to at least these values
 * (a replica following its master; 0 leaves a value alone). */
int stor_mailbox_raise(struct stor_db *db, const struct guid *mailbox, uint32_t uidnext,
		       uint64_t highestmodseq, const char **error_r);

/* Verifies a mailbox record against its messages: counts, unseen, digest,
 * UIDNEXT above every UID, HIGHESTMODSEQ at least every modseq, index
 * entries, tombstones and text references.  0 when consistent, else -1
 * with what is wrong (for tests and an admin check). */
int stor_mailbox_check(struct stor_db *db, const struct guid *mailbox, const char **error_r);

/* ---- Replication log ---- */

/* Appends an opaque entry; *seq_r gets its sequence number (increasing from
 * 1, never reused). */
int stor_log_append(struct stor_db *db, const void *entry, size_t len, uint64_t *seq_r,
		    const char **error_r);
struct stor_log_entry {
	uint64_t seq;
	struct buf data;
};
typedef ARRAY(struct stor_log_entry) stor_log_list;
void stor_log_list_free(stor_log_list *list);
/* Up to max entries with seq > after, in order. */
int stor_log_read(struct stor_db *db, uint64_t after, size_t max, stor_log_list *list_r,
		  const char **error_r);
/* Highest seq appended so far (0 if none) and lowest seq still kept; when
 * nothing is kept, first = last + 1. */
int stor_log_bounds(struct stor_db *db, uint64_t *first_r, uint64_t *last_r, const char **error_r);
/* Deletes entries with seq <= upto. */
int stor_log_trim(struct stor_db *db, uint64_t upto, const char **error_r);
/* Per-peer cursor: the last seq the peer acknowledged. */
int stor_log_cursor_get(struct stor_db *db, uint32_t peer, uint64_t *seq_r, const char **error_r);
int stor_log_cursor_set(struct stor_db *db, uint32_t peer, uint64_t seq, const char **error_r);

/* ---- Per-peer sync state ---- */

struct stor_sync_state {
	uint32_t uidvalidity;
	uint32_t uidnext;
	uint64_t highestmodseq;
};
/* 1 found, 0 not found (state zeroed), -1 error. */
int stor_sync_state_get(struct stor_db *db, uint32_t peer, const struct guid *mailbox,
			struct stor_sync_state *st_r, const char **error_r);
int stor_sync_state_set(struct stor_db *db, uint32_t peer, const struct guid *mailbox,
			const struct stor_sync_state *st, const char **error_r);

/* ---- Node metadata ---- */

/* Small named values for other components (e.g. "mm.epoch").  Names are
 * 1..255 bytes, values at most 1 MiB.  stor_meta_get() appends the value
 * to value_r and returns 1, or 0 when not set, or -1. */
int stor_meta_get(struct stor_db *db, const char *name, struct buf *value_r, const char **error_r);
int stor_meta_set(struct stor_db *db, const char *name, const void *value, size_t len,
		  const char **error_r);

/* ---- Canonical dump ---- */

/* Writes the canonical, sorted text dump of one user (DESIGN.md: byte
 * identical on every node after sync) to out: mailboxes by name with GUID,
 * UIDVALIDITY, UIDNEXT, subscriptions, then per message UID, GUID, flags,
 * keywords, INTERNALDATE, size and a SHA-256 of the text. */
int stor_dump_user(struct stor_db *db, const char *user, struct buf *out, const char **error_r);

/* Flag names: "\\Seen" etc. for one bit. */
const char *stor_flag_name(enum stor_flag flag);

#endif
