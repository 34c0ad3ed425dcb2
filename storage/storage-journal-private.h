/* Shared by the files of the journal (storage-journal*.c): the record
 * format's constants, the journal's state and the helpers one piece calls
 * in another.  Only those files include it. */
#ifndef STORAGE_STORAGE_JOURNAL_PRIVATE_H
#define STORAGE_STORAGE_JOURNAL_PRIVATE_H

#include "storage/storage-private.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>


#define JNL_HDR 9
#define JNL_TEXT_HDR (GUID_SIZE + 4)
#define JNL_REC_TEXT 'T'
#define JNL_REC_BATCH 'B'
#define JNL_OP_PUT 1
#define JNL_OP_DEL 2
/* Records may be big (a batch deleting a mailbox of a million messages),
 * but never bigger than this, and never bigger than what is left of the
 * file they are read from. */
/* Pending records are written when this much has gathered. */
#define JNL_FLUSH_AT (1024 * 1024)
#define JNL_READ_FDS 16

struct jnl_live {
	uint32_t seg;
	uint64_t bytes;
};

typedef ARRAY(struct jnl_live) jnl_live_array;
typedef ARRAY(uint32_t) seg_array;
typedef ARRAY(struct guid) guid_array;

struct jnl_read_fd {
	uint32_t seg;
	int fd;
};

/* Helper threads that run fdatasync() off the event loop, several syncs
 * in flight: a group commit that comes while one runs starts its own at
 * once instead of waiting for it to end (disks serve concurrent
 * fdatasyncs together: on the VM where this was measured, four in flight
 * made 1.7 times the syncs of one at a time).  Each thread syncs through its own
 * descriptor of the segment, opened before anything was written to it:
 * the kernel reports a writeback error once per open file, so one sync
 * cannot swallow an error the other must see.  Syncs are collected in the
 * order they started; a failed one breaks the journal, so no later one
 * counts as durable either.  Fields under mu are shared with the threads. */
struct jnl_syncer;
struct jnl_sync_slot {
	struct jnl_syncer *sy;
	pthread_t thread;
	int fd;                     /* to sync */
	bool fail;                  /* fail it (stor_test_fail_next_sync()) */
	bool hold, held;            /* stor_test_hold_syncs(): wait, waiting */
	bool requested, done;
	int result;                 /* errno of the finished sync, 0 ok */
};

struct jnl_syncer {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int event_fd;               /* readable when a sync finished */
	bool quit;
	struct jnl_sync_slot slot[STOR_SYNC_THREADS];
	unsigned threads;           /* started */
	/* Main thread only: syncs collected..next-1 are in flight, sync n
	 * in slot n % STOR_SYNC_THREADS. */
	uint64_t next, collected;
};

struct stor_journal {
	char *dir;
	int dir_fd;
	uint32_t seg;               /* the segment being written */
	int fd;
	int sync_fd[STOR_SYNC_THREADS];   /* the same segment, one per sync thread */
	uint64_t end;               /* bytes of it written */
	bool unsynced;              /* written since the last fdatasync */
	bool broken;                /* a failed write left an unknown state */
	struct buf pending;         /* records not yet written */
	uint64_t segment_max;
	uint32_t ckpt_seg;
	uint64_t ckpt_off;
	jnl_live_array live;        /* by segment, only non-zero */
	jnl_live_array live_delta;  /* of the batch being built */
	jnl_live_array live_staged; /* of the staged batches (storage-stage.c) */
	struct jnl_read_fd rfd[JNL_READ_FDS];
	unsigned rfd_next;
	seg_array pins;             /* first segments of texts not yet stored */
	uint32_t compact_seg;       /* being compacted, 0 none */
	uint64_t compact_off, compact_size;
	bool compact_check;         /* look for a segment to compact */
	guid_array lost;            /* texts LevelDB holds that the journal lost */
	struct jnl_syncer *syncer;  /* started by the first stor_jnl_sync_start */
	struct jnl_maps *maps;      /* segments mapped (storage-journal-map.c) */
};

static const char ckpt_name[] = "journal";
static const char format_name[] = "format";
static const char running_name[] = "running";
#define STORE_FORMAT 2

/* storage-journal.c */
void internal_key(struct stor_key *k, const char *name);
uint32_t get_le32(const unsigned char *p);
uint32_t rec_crc(const unsigned char *hdr_tail, const void *payload, size_t len);
char *seg_path(const struct stor_journal *j, uint32_t seg);
int jnl_err_errno(struct stor_db *db, const char **error_r, const char *what,
		  const char *path);
int pread_all(int fd, void *data, size_t len, uint64_t off);
leveldb_writebatch_t *ldb_batch(const unsigned char *p, size_t len);

/* storage-journal-map.c: drops the cached mappings of seg (all of them
 * and the cache itself with 0); pieces still out keep theirs. */
void stor_jnl_maps_forget(struct stor_journal *j, uint32_t seg);

/* storage-journal-segments.c */
struct jnl_live *live_slot(jnl_live_array *a, uint32_t seg, bool create);
uint64_t live_bytes(struct stor_journal *j, uint32_t seg);
uint64_t text_record_size(uint32_t len);
void live_commit(struct stor_db *db);
int live_load(struct stor_db *db, const char **error_r);
int seg_read_fd(struct stor_db *db, uint32_t seg, const char **error_r);
int list_segments(struct stor_db *db, seg_array *segs, const char **error_r);
int open_write_segment(struct stor_db *db, uint32_t seg, bool create,
		       const char **error_r);
int flush_pending(struct stor_db *db, const char **error_r);
int sync_failed(struct stor_db *db, int err, const char **error_r);
int sync_segment(struct stor_db *db, const char **error_r);
int check_usable(struct stor_db *db, const char **error_r);
int reserve(struct stor_db *db, size_t len, const char **error_r);

/* storage-journal-sync.c */
void syncer_stop(struct stor_journal *j);
int async_wait(struct stor_db *db, const char **error_r);

/* storage-journal-open.c */
int scan_texts(struct stor_db *db, jnl_live_array *sums, guid_array *lost,
	       const char **error_r);

#endif
