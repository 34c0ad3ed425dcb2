/* Internals shared by the storage/ source files (and storage's own tests).
 * Nobody outside storage/ includes this.
 *
 * Keyspace.  Every key starts with a one-byte prefix naming its kind;
 * integers in keys are big-endian so that LevelDB's byte order is numeric
 * order:
 *
 *   'B' mbguid                      mailbox record
 *   'N' user \0 name                -> mailbox guid (names sort per user)
 *   'W' user \0 name                subscription (empty value)
 *   'D' user \0 mbguid              mailbox tombstone: deleted_ms64, name
 *   'X' user \0 name                unsubscribed (empty value; tombstone of 'W')
 *   'U' mbguid uid32                message record
 *   'Q' mbguid modseq64 uid32       modseq index of messages (empty value)
 *   'G' mbguid msgguid uid32        GUID index of messages (empty value)
 *   'T' mbguid uid32                tombstone: msgguid, modseq, user8 (1: a user's
 *                                   expunge, 0: the engine's; absent in old stores: 0)
 *   'R' mbguid modseq64 uid32       modseq index of tombstones (empty value)
 *   'K' mbguid msgguid              GUID tombstone: modseq64 (a user's expunge of a
 *                                   GUID the mailbox does not hold; storage-guid-tomb.c)
 *   'C' 'F' 'Z' mbguid ...          private \Seen records, their modseq index and
 *                                   counts (storage-pseen.c)
 *   'S' msgguid                     text record: refcount, size, SHA-256,
 *                                   and where its chunks are in the journal
 *                                   (STOR_TEXT_CHUNK bytes each, the last
 *                                   one shorter)
 *   'O' msgguid                     text written but not yet referenced:
 *                                   garbage collected on open
 *   'H' msgguid                     derived data of the text (opaque to
 *                                   storage; storage-derived.c), unjournaled
 *   'V' seg32                       live text bytes in a journal segment, as
 *                                   of the last checkpoint
 *   'L' seq64                       replication log entry
 *   'P' peer32                      peer's log cursor: seq64
 *   'Y' mbguid peer32               peer's sync state of a mailbox
 *   'M' name                        stor_meta_* values of other components
 *   'I' name                        the store's own counters
 *   'A' .. 'Z' alone                sentinels, empty (storage-open.c's
 *                                   put_sentinels: why)
 *
 * Values are encoded with the put/get helpers below; a decoder must consume
 * exactly all bytes, so a damaged record is reported, never half-read. */
#ifndef STORAGE_STORAGE_PRIVATE_H
#define STORAGE_STORAGE_PRIVATE_H

#include <leveldb/c.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "storage/storage.h"

#define STOR_TEXT_CHUNK (256 * 1024)
#define STOR_SEGMENT_DEFAULT (64 * 1024 * 1024)
/* Syncs in flight at most (storage-journal-sync.c). */
#define STOR_SYNC_THREADS 4
/* The largest batch (and journal record). */
#define STOR_BATCH_MAX (1024U * 1024 * 1024)

#define STOR_KEY_MAILBOX 'B'
#define STOR_KEY_NAME 'N'
#define STOR_KEY_SUBSCRIPTION 'W'
#define STOR_KEY_MAILBOX_TOMB 'D'
#define STOR_KEY_UNSUBSCRIBED 'X'
#define STOR_KEY_MSG 'U'
#define STOR_KEY_MODSEQ 'Q'
#define STOR_KEY_GUID 'G'
#define STOR_KEY_TOMB 'T'
#define STOR_KEY_TOMB_MODSEQ 'R'
#define STOR_KEY_GUID_TOMB 'K'
#define STOR_KEY_TEXT 'S'
#define STOR_KEY_LIVE 'V'
#define STOR_KEY_ORPHAN 'O'
#define STOR_KEY_DERIVED 'H'
#define STOR_KEY_LOG 'L'
#define STOR_KEY_CURSOR 'P'
#define STOR_KEY_SYNCSTATE 'Y'
#define STOR_KEY_META 'M'
#define STOR_KEY_INTERNAL 'I'
#define STOR_KEY_PSEEN 'C'
#define STOR_KEY_PSEEN_MODSEQ 'F'
#define STOR_KEY_PSEEN_COUNT 'Z'
/* Also taken, by keys defined where they are used: 'A' (storage-users.c),
 * 'E' and 'J' (storage-acl.c).  A letter is one key family's alone: two
 * families under one letter meet in each other's prefix scans. */

struct stor_durable {
	stor_durable_cb *cb;
	void *ctx;
};

struct stor_in_flight {
	uint64_t seq;
	struct stor_durable *cbs;
	size_t count;
};

struct stor_db {
	char *dir;
	leveldb_t *ldb;
	leveldb_options_t *opts;
	leveldb_filterpolicy_t *filter;
	leveldb_readoptions_t *ropts;
	leveldb_writeoptions_t *wopts, *wopts_sync;
	uint64_t max_message_size;
	unsigned fail_countdown;     /* fail_nth_write */
	bool fail_next_async;        /* stor_test_fail_next_sync() */
	bool hold_syncs;             /* stor_test_hold_syncs() */
	unsigned blocking_syncs;     /* stor_test_blocking_syncs() */
	char *error;                 /* last error message */
	enum stor_error error_kind;  /* and its kind */
	bool dirty;                  /* writes since the last stor_sync() */
	ARRAY(struct stor_durable) durable;
	/* The syncs in flight, oldest first, with the callbacks each one
	 * completes. */
	ARRAY(struct stor_in_flight) in_flight;
	struct stor_journal *jnl;
	struct stor_stage *stage;    /* storage-stage.c */
	/* Compaction of LevelDB's deletion markers (storage-open.c,
	 * stor_ldb_compact_maybe). */
	uint64_t deletes;            /* keys deleted since the last one */
	pthread_t compactor;
	bool compactor_started;      /* to be joined */
	atomic_bool compactor_busy;
	unsigned compactions;        /* started (for tests) */
};

/* ---- Keys ---- */

#define STOR_KEY_MAX (1 + STOR_MAX_USER_LEN + 1 + STOR_MAX_MAILBOX_NAME_LEN + 16)

struct stor_key {
	size_t len;
	unsigned char b[STOR_KEY_MAX];
};

void stor_key_init(struct stor_key *k, char prefix);
void stor_key_u32(struct stor_key *k, uint32_t v);
void stor_key_u64(struct stor_key *k, uint64_t v);
void stor_key_guid(struct stor_key *k, const struct guid *g);
void stor_key_bytes(struct stor_key *k, const void *p, size_t n);
uint32_t stor_be32(const unsigned char *p);
uint64_t stor_be64(const unsigned char *p);

/* ---- Values ---- */

void stor_put_u8(struct buf *b, uint8_t v);
void stor_put_u32(struct buf *b, uint32_t v);
void stor_put_u64(struct buf *b, uint64_t v);
void stor_put_bytes(struct buf *b, const void *p, size_t n);
/* Length-prefixed string. */
void stor_put_str(struct buf *b, const char *s);

struct stor_dec {
	const unsigned char *p;
	size_t len, pos;
	bool bad;
};
void stor_dec_init(struct stor_dec *d, const void *p, size_t len);
uint8_t stor_get_u8(struct stor_dec *d);
uint32_t stor_get_u32(struct stor_dec *d);
uint64_t stor_get_u64(struct stor_dec *d);
void stor_get_bytes(struct stor_dec *d, void *out, size_t n);
/* A new string (without NULs, at most max bytes); NULL and bad when not. */
char *stor_get_str(struct stor_dec *d, size_t max);
/* True when the value was read exactly to its end without errors. */
bool stor_dec_end(struct stor_dec *d);

/* ---- Records ---- */

void stor_mailbox_encode(const struct stor_mailbox *mb, struct buf *out);
int stor_mailbox_decode(const void *p, size_t len, struct stor_mailbox *mb_r);
void stor_msg_encode(const struct stor_msg *msg, struct buf *out);
int stor_msg_decode(uint32_t uid, const void *p, size_t len, struct stor_msg *msg_r);

/* Where one chunk of a text is: the journal record at off in segment seg,
 * holding len text bytes. */
struct stor_extent {
	uint32_t seg;
	uint64_t off;
	uint32_t len;
};
typedef ARRAY(struct stor_extent) stor_extent_list;

struct stor_text_rec {
	uint32_t refcount;
	uint64_t size;
};
void stor_text_rec_encode(const struct stor_text_rec *t, const struct stor_extent *ext, size_t n,
			  struct buf *out);
/* Appends the chunks to ext_r unless NULL; checks they add up to the size. */
int stor_text_rec_decode(const void *p, size_t len, struct stor_text_rec *t_r,
			 stor_extent_list *ext_r);

/* SHA-256 for EVP_DigestInit_ex(), looked up once (main thread only). */
typedef struct evp_md_st EVP_MD;
const EVP_MD *stor_sha256(void);

/* The 16-byte digest contribution of one message. */
void stor_msg_hash(const struct stor_msg *msg, unsigned char out[16]);
/* qsort() order of a message's keywords (char * items). */
int stor_kw_cmp(const void *a, const void *b);

/* ---- Database access ---- */

struct stor_batch;

/* Formats an error into db->error and points *error_r (may be NULL) at it.
 * Returns -1. */
int stor_err(struct stor_db *db, const char **error_r, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* The same with a kind other than STOR_ERROR_INTERNAL. */
int stor_err_kind(struct stor_db *db, enum stor_error kind, const char **error_r,
		  const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* Reports a LevelDB error string (and frees it). */
int stor_err_leveldb(struct stor_db *db, const char **error_r, const char *what, char *lerr);
/* Reports a record that does not decode. */
int stor_err_corrupt(struct stor_db *db, const char **error_r, const char *what);

/* The one way to write to LevelDB: writes lwb (and destroys it), synced if
 * sync is set.  A failure marks the store failed (see stor_jnl_usable). */
int stor_ldb_write(struct stor_db *db, leveldb_writebatch_t *lwb, bool sync,
		   const char **error_r);

/* 1 found (*val_r malloc()ed, NUL-terminated), 0 not found, -1 error. */
int stor_db_get(struct stor_db *db, const struct stor_key *k, char **val_r, size_t *len_r,
		const char **error_r);
/* Journals the batch and applies it to LevelDB; durable at the next
 * stor_sync().  Honours fail_nth_write. */
int stor_db_write(struct stor_db *db, struct stor_batch *wb, const char **error_r);
/* A LevelDB write with sync, bypassing the journal (the journal's own
 * checkpoints); also syncs LevelDB's older log files. */
int stor_db_write_synced(struct stor_db *db, struct stor_batch *wb, const char **error_r);
/* Starts a compaction of LevelDB's deletion markers in a helper thread
 * when enough keys were deleted since the last one (storage-open.c). */
void stor_ldb_compact_maybe(struct stor_db *db);
leveldb_iterator_t *stor_iter_seek(struct stor_db *db, const struct stor_key *start);
/* True while the iterator is valid and its key starts with the prefix. */
bool stor_iter_in(leveldb_iterator_t *it, const struct stor_key *prefix, const unsigned char **key_r,
		  size_t *len_r);
/* Destroys the iterator; returns -1 if it ended on an error. */
int stor_iter_end(struct stor_db *db, leveldb_iterator_t *it, const char **error_r);

/* A write batch: its operations serialized as the journal stores them
 * (storage-journal.c). */
struct stor_batch {
	struct buf ser;
};
struct stor_batch *stor_batch_new(void);
void stor_batch_free(struct stor_batch *b);
void stor_batch_put(struct stor_batch *b, const struct stor_key *k, const void *v, size_t vlen);
void stor_batch_del(struct stor_batch *b, const struct stor_key *k);
void stor_batch_put_raw(struct stor_batch *b, const void *k, size_t klen, const void *v,
			size_t vlen);
void stor_batch_del_raw(struct stor_batch *b, const void *k, size_t klen);
/* The operation at op: its key's length, its size, its value (false for a
 * deletion). */
uint32_t stor_batch_op_klen(const unsigned char *op);
size_t stor_batch_op_size(const unsigned char *op);
bool stor_batch_op_value(const unsigned char *op, const void **val_r, size_t *len_r);
/* The batch as LevelDB's (to be destroyed by the caller). */
leveldb_writebatch_t *stor_batch_ldb(const struct stor_batch *b);

/* ---- Staged writes (storage-stage.c) ---- */

/* Stages a batch (and the journal's live-byte notes of it): written with
 * the others at the next sync or iterator, or once too many are staged. */
int stor_stage_add(struct stor_db *db, const struct stor_batch *wb, const char **error_r);
/* A staged value of key k: 1 put (*val_r points into the stage until the
 * next write), 0 deleted, -1 not staged. */
int stor_stage_get(struct stor_db *db, const struct stor_key *k, const void **val_r,
		   size_t *len_r);
/* Writes everything staged to the journal and LevelDB. */
int stor_stage_flush(struct stor_db *db, const char **error_r);
void stor_stage_free(struct stor_db *db);

/* ---- Write transactions ----
 * A transaction gathers one call's changes into one batch.  Mailbox records
 * and text reference counts touched several times in one call are kept in
 * memory and written once at commit. */
struct stor_txn_mailbox {
	struct stor_mailbox mb;
	bool dirty;
};
struct stor_txn_text {
	struct guid guid;
	int64_t delta;
	bool created;               /* record made in this transaction */
	struct stor_text_rec rec;   /* when created */
	stor_extent_list ext;       /* when created */
};
struct stor_txn {
	struct stor_db *db;
	struct stor_batch *wb;
	ARRAY(struct stor_txn_mailbox *) mailboxes;
	ARRAY(struct stor_txn_text) texts;
};

void stor_txn_begin(struct stor_db *db, struct stor_txn *txn);
/* Commits (writes the batch) and frees the transaction. */
int stor_txn_commit(struct stor_txn *txn, const char **error_r);
void stor_txn_free(struct stor_txn *txn);
/* A mailbox record for update (mark ->dirty when changed): 1, 0, -1. */
int stor_txn_mailbox(struct stor_txn *txn, const struct guid *guid, struct stor_txn_mailbox **mb_r,
		     const char **error_r);
void stor_txn_text_ref(struct stor_txn *txn, const struct guid *guid, int64_t delta);
/* A message of this GUID lands in the mailbox: its GUID tombstone, if
 * any, goes in the same transaction (storage-guid-tomb.c). */
void stor_guid_tomb_clear_txn(struct stor_txn *txn, const struct guid *mailbox,
			      const struct guid *guid);
/* Writes GUID tombstones of guids at modseq in txn (a user's expunge),
 * forgetting the oldest past STOR_GUID_TOMBS_MAX.  Call at most once per
 * transaction and mailbox: it reads the store, not the batch. */
int stor_guid_tombs_put_txn(struct stor_txn *txn, const struct guid *mailbox,
			    const struct guid *guids, size_t count, uint64_t modseq,
			    const char **error_r);
/* Private \Seen records (storage-pseen.c) of a message entering the
 * mailbox (before its records are in txn: it reads the store) or of
 * messages leaving it: their share of the per-user counts and digest, and
 * with a user's expunge the records themselves.  Call each at most once
 * per transaction. */
int stor_pseen_enter_txn(struct stor_txn *txn, struct stor_txn_mailbox *tm,
			 const struct guid *mailbox, const struct guid *guid, const char **error_r);
int stor_pseen_leave_txn(struct stor_txn *txn, struct stor_txn_mailbox *tm,
			 const struct guid *mailbox, const struct stor_msg *msgs, size_t n,
			 bool user, const char **error_r);
/* The records of a mailbox for the canonical dump, by (GUID, user). */
int stor_pseen_dump(struct stor_db *db, const struct stor_mailbox *mb, struct buf *out,
		    const char **error_r);
/* XORs the records' share into digest and checks their counts and index. */
int stor_pseen_check(struct stor_db *db, const struct stor_mailbox *mb, unsigned char digest[16],
		     const char **error_r);
/* Records a text created in this transaction (with refcount 0; add
 * references with stor_txn_text_ref()); takes over the extents. */
void stor_txn_text_created(struct stor_txn *txn, const struct guid *guid,
			   const struct stor_text_rec *rec, stor_extent_list *ext);

/* ---- Texts ---- */

/* Reads the text record, and its chunks into ext_r (may be NULL): 1, 0, -1. */
int stor_text_get(struct stor_db *db, const struct guid *guid, struct stor_text_rec *rec_r,
		  stor_extent_list *ext_r, const char **error_r);
/* Reads the text record: 1, 0, -1. */
int stor_text_rec_get(struct stor_db *db, const struct guid *guid, struct stor_text_rec *rec_r,
		      const char **error_r);
/* Adds the deletion of the text (its record, chunks ext, and any orphan
 * marker) to the batch. */
void stor_text_delete_batch(struct stor_db *db, struct stor_batch *wb, const struct guid *guid,
			    const stor_extent_list *ext);
/* Writes a whole text given in memory into the journal; txn's batch makes
 * it part of the store.  The text record is created with refcount 0. */
int stor_text_put(struct stor_db *db, struct stor_txn *txn, const struct guid *guid,
		  const void *text, size_t len, const char **error_r);
/* Adds the deletion of a text's derived record to the batch. */
void stor_derived_delete_batch(struct stor_batch *wb, const struct guid *text_guid);
/* Frees texts left unreferenced by a crash (the 'O' markers). */
int stor_text_gc(struct stor_db *db, const char **error_r);

/* ---- Journal (storage-journal*.c) ---- */

struct stor_journal;
/* Opens the journal of an open LevelDB (segments of segment_max bytes, 0 for
 * the default), replays what the last checkpoint lacks, and checkpoints. */
int stor_jnl_open(struct stor_db *db, uint64_t segment_max, const char **error_r);
void stor_jnl_close(struct stor_db *db);
/* After stor_jnl_open: when LevelDB holds texts beyond the journal's end
 * (after a power failure its unsynced writes may survive where the
 * journal's did not), removes the messages whose appends never completed. */
int stor_jnl_repair_ahead(struct stor_db *db, const char **error_r);
/* Adds text chunk idx of the text guid; it is written at the latest with the
 * next batch.  Chunk 0 pins its segment against deletion until
 * stor_jnl_unpin() with its extent (once the text's records are written, or
 * the text abandoned). */
int stor_jnl_add_text(struct stor_db *db, const struct guid *guid, uint32_t idx,
		      const void *data, size_t len, struct stor_extent *ext_r,
		      const char **error_r);
void stor_jnl_unpin(struct stor_db *db, const struct stor_extent *first);
/* 0, or -1 when a failed write has made the store unusable until reopened. */
int stor_jnl_usable(struct stor_db *db, const char **error_r);
/* Marks the store failed: every later write fails until it is reopened. */
void stor_jnl_set_broken(struct stor_db *db);
/* Writes the staged batch to the journal, then to LevelDB (not synced),
 * and applies the live-byte notes staged with it.  A failure leaves the
 * store unusable: readers have seen those changes. */
int stor_jnl_write_staged(struct stor_db *db, struct stor_batch *wb, const char **error_r);
/* Syncs LevelDB and records the journal position it holds and the live
 * bytes of the segments (then deletes segments nobody needs), so that the
 * next open replays nothing before.  closing: the last one of a clean
 * close. */
int stor_jnl_checkpoint(struct stor_db *db, bool closing, const char **error_r);
/* Makes everything written so far durable. */
int stor_jnl_sync(struct stor_db *db, const char **error_r);
/* The same in a helper thread (STOR_SYNC_THREADS may run at once): writes
 * everything out, then 1 started (*seq_r numbers it), 0 nothing to sync,
 * 2 every thread busy (start it later), -1 error.  poll: whether sync seq and
 * every one before it are done: 1 durable, 0 still running, -1 failed.
 * wait: the same, waiting: 0 or -1.  busy: a sync is in flight.  fd:
 * readable when one finishes. */
int stor_jnl_sync_start(struct stor_db *db, uint64_t *seq_r, const char **error_r);
bool stor_jnl_sync_busy(struct stor_db *db);
int stor_jnl_sync_poll(struct stor_db *db, uint64_t seq, const char **error_r);
int stor_jnl_sync_wait(struct stor_db *db, uint64_t seq, const char **error_r);
int stor_jnl_sync_fd(struct stor_db *db);
/* Clears the fd's readiness. */
void stor_jnl_sync_drain(struct stor_db *db);
/* Appends bytes [from, from+len) of a chunk, checking the record. */
int stor_jnl_read(struct stor_db *db, const struct guid *guid, uint32_t idx,
		  const struct stor_extent *ext, uint64_t from, uint64_t len, struct buf *out,
		  const char **error_r);
/* Notes that the next batch written makes (sign 1) or frees (-1) a text
 * stored in these chunks; discard undoes the notes of a batch not written. */
void stor_jnl_live(struct stor_db *db, const struct stor_extent *ext, size_t n, int sign);
void stor_jnl_live_discard(struct stor_db *db);
/* Moves the notes of a batch into those of the staged ones. */
void stor_jnl_live_stage(struct stor_db *db);
/* Moves live texts out of a mostly dead segment, about budget bytes per
 * call, so that the segment can be deleted. */
bool stor_jnl_compact_due(struct stor_db *db);
int stor_jnl_compact(struct stor_db *db, uint64_t budget, const char **error_r);


/* ---- Keywords ---- */

/* Validates and normalises keywords: unique case-insensitively (the first
 * spelling wins), sorted by lowercase.  Returns 0 or -1. */
int stor_keywords_normalize(struct stor_db *db, const char *const *kw, size_t count,
			    stor_string_list *out, const char **error_r);

/* ---- Test hooks (tests only: storage's, and the replicator's and bundle's
 * tests of durability) ---- */

/* Puts raw bytes at a raw key, bypassing every check. */
int stor_test_raw_put(struct stor_db *db, const void *key, size_t klen, const void *val,
		      size_t vlen, const char **error_r);
/* Marks the store failed, as a write that failed on a full disk does:
 * every later write fails until it is reopened. */
void stor_test_break(struct stor_db *db);
/* Sets fail_nth_write on an open store. */
void stor_test_fail_nth_write(struct stor_db *db, unsigned n);
/* The next sync started in a helper thread (stor_sync_start()) fails with
 * EIO instead of syncing, as a disk error would. */
void stor_test_fail_next_sync(struct stor_db *db);
/* How many stor_sync() calls had to wait for the disk (something to
 * sync, or a helper's sync in flight): an event loop that makes one
 * stopped serving everyone for an fsync. */
unsigned stor_test_blocking_syncs(struct stor_db *db);
/* With hold set, syncs started in a helper thread from now on wait
 * before their fdatasync until hold is cleared (or 30 s passed), as on a
 * slow disk; stor_test_held_syncs() counts those waiting. */
void stor_test_hold_syncs(struct stor_db *db, bool hold);
unsigned stor_test_held_syncs(struct stor_db *db);
/* Checks the journal's accounting against the texts: every chunk within
 * the journal, and each segment's live bytes the sum of its texts'
 * records.  0 or -1 with a message. */
int stor_test_check_journal(struct stor_db *db, const char **error_r);
/* Frees the handle like a killed process would leave it: no sync, no
 * checkpoint. */
void stor_test_abandon(struct stor_db **db);
/* Waits for a compaction of deletion markers in progress; returns how many
 * were started since the store was opened. */
unsigned stor_test_compactions(struct stor_db *db);
/* Called with every key a batch deletes, when set (NULL otherwise). */
extern void (*stor_test_deleted)(const void *key, size_t klen);

#endif
