/* Staged writes: the batches of one group commit, gathered in memory and
 * written to the journal and LevelDB together.
 *
 * Why: each batch written on its own costs a pwrite() of the journal and a
 * write() of LevelDB's log, and on a virtual machine those system calls are
 * most of what an append costs.  A change is acknowledged only after the
 * next sync, and every sync writes out what is staged first, so staging
 * loses nothing that was acknowledged; a kill in between loses staged
 * changes from the journal and LevelDB alike, so the two still agree.
 *
 * Reads must see staged changes: stor_db_get() looks keys up here first
 * (the latest staged put or delete of a key wins), and stor_iter_seek()
 * writes everything staged out before it iterates, since merging an
 * iterator with this table is not worth its code.
 *
 * The journal, not LevelDB, makes a change durable (opening replays what
 * LevelDB lacks), so a batch written to the journal is applied to LevelDB
 * by a thread of its own while the loop goes on; reads find it in the
 * applying table meanwhile, and iterators and checkpoints wait for it.
 *
 * The table points into the staged batch's serialized operations (key and
 * value bytes, stor_batch's format), so staging copies each change once. */
#include "storage/storage-private.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"

/* Written out once this many bytes of changes are staged, so that memory
 * and the size of one journal record stay bounded. */
#define STAGE_MAX (1024 * 1024)

struct stage_slot {
	uint32_t hash;
	uint32_t op;                /* 1 + offset of the operation in ser; 0 free */
};

/* Staged operations and the table of the last one on each key. */
struct stage_table {
	struct stor_batch *batch;
	struct stage_slot *slots;   /* open addressing, a power of two */
	size_t cap, used;
};

/* The thread that applies written batches to LevelDB.  Fields under mu
 * are shared with it. */
struct stage_writer {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	leveldb_t *ldb;
	leveldb_writeoptions_t *wopts;
	leveldb_writebatch_t *job;  /* to apply; NULL once applied */
	char *error;                /* LevelDB's, of the last job */
	bool quit;
};

struct stor_stage {
	struct stage_table cur;      /* staged, not yet written */
	struct stage_table applying; /* in the journal, maybe not in LevelDB */
	struct stage_writer *writer;
	bool flushing;
};

#define SLOTS_MIN 1024

static void table_init(struct stage_table *t)
{
	t->batch = stor_batch_new();
	t->cap = SLOTS_MIN;
	t->slots = xcalloc(t->cap, sizeof(*t->slots));
	t->used = 0;
}

static void table_free(struct stage_table *t)
{
	stor_batch_free(t->batch);
	free(t->slots);
}

static void table_reset(struct stage_table *t)
{
	if (t->batch->ser.cap > 4 * STAGE_MAX)
		buf_free(&t->batch->ser); /* a big batch's: don't keep the memory */
	buf_reset(&t->batch->ser);
	if (t->cap > 4 * SLOTS_MIN) {
		/* A big batch grew the table: clearing it after every small
		 * one would cost more than the writes. */
		free(t->slots);
		t->cap = SLOTS_MIN;
		t->slots = xcalloc(t->cap, sizeof(*t->slots));
	} else if (t->used > 0) {
		memset(t->slots, 0, t->cap * sizeof(*t->slots));
	}
	t->used = 0;
}

static void *writer_main(void *arg)
{
	struct stage_writer *w = arg;
	pthread_mutex_lock(&w->mu);
	for (;;) {
		while (w->job == NULL && !w->quit)
			pthread_cond_wait(&w->cv, &w->mu);
		if (w->job == NULL)
			break;
		leveldb_writebatch_t *job = w->job;
		pthread_mutex_unlock(&w->mu);
		char *lerr = NULL;
		leveldb_write(w->ldb, w->wopts, job, &lerr);
		leveldb_writebatch_destroy(job);
		pthread_mutex_lock(&w->mu);
		if (lerr != NULL && w->error == NULL)
			w->error = lerr;
		else if (lerr != NULL)
			leveldb_free(lerr);
		w->job = NULL;
		pthread_cond_broadcast(&w->cv);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

static struct stor_stage *stage_get(struct stor_db *db)
{
	if (db->stage == NULL) {
		struct stor_stage *s = xcalloc(1, sizeof(*s));
		table_init(&s->cur);
		table_init(&s->applying);
		db->stage = s;
	}
	return db->stage;
}

/* Waits until LevelDB holds every written batch, then forgets them:
 * 0, or -1 when LevelDB refused one (the store is unusable then). */
static int writer_wait(struct stor_db *db, const char **error_r)
{
	struct stor_stage *s = db->stage;
	struct stage_writer *w = s->writer;
	char *lerr = NULL;
	if (w != NULL) {
		pthread_mutex_lock(&w->mu);
		while (w->job != NULL)
			pthread_cond_wait(&w->cv, &w->mu);
		lerr = w->error;
		w->error = NULL;
		pthread_mutex_unlock(&w->mu);
	}
	table_reset(&s->applying);
	if (lerr == NULL)
		return 0;
	/* The journal holds a change LevelDB refused: only a replay at the
	 * next open can make the two agree again. */
	stor_jnl_set_broken(db);
	return stor_err_leveldb(db, error_r, "write", lerr);
}

/* Hands a written batch to the writer (started on first use); without a
 * thread, applies it here. */
static int writer_start(struct stor_db *db, leveldb_writebatch_t *job, const char **error_r)
{
	struct stor_stage *s = db->stage;
	if (s->writer == NULL) {
		struct stage_writer *w = xcalloc(1, sizeof(*w));
		w->ldb = db->ldb;
		w->wopts = db->wopts;
		pthread_mutex_init(&w->mu, NULL);
		pthread_cond_init(&w->cv, NULL);
		if (pthread_create(&w->thread, NULL, writer_main, w) != 0) {
			pthread_mutex_destroy(&w->mu);
			pthread_cond_destroy(&w->cv);
			free(w);
			char *lerr = NULL;
			leveldb_write(db->ldb, db->wopts, job, &lerr);
			leveldb_writebatch_destroy(job);
			if (lerr == NULL)
				return 0;
			stor_jnl_set_broken(db);
			return stor_err_leveldb(db, error_r, "write", lerr);
		}
		s->writer = w;
	}
	struct stage_writer *w = s->writer;
	pthread_mutex_lock(&w->mu);
	w->job = job;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
	return 0;
}

void stor_stage_free(struct stor_db *db)
{
	struct stor_stage *s = db->stage;
	if (s == NULL)
		return;
	struct stage_writer *w = s->writer;
	if (w != NULL) {
		/* A job handed over is finished first: LevelDB and the
		 * journal then agree as they would after a kill. */
		pthread_mutex_lock(&w->mu);
		w->quit = true;
		pthread_cond_broadcast(&w->cv);
		pthread_mutex_unlock(&w->mu);
		pthread_join(w->thread, NULL);
		if (w->error != NULL)
			leveldb_free(w->error);
		pthread_mutex_destroy(&w->mu);
		pthread_cond_destroy(&w->cv);
		free(w);
	}
	table_free(&s->cur);
	table_free(&s->applying);
	free(s);
	db->stage = NULL;
}

static uint32_t key_hash(const unsigned char *k, size_t len)
{
	/* FNV-1a: keys are short, and mostly differ in their last bytes. */
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < len; i++)
		h = (h ^ k[i]) * 16777619u;
	return h;
}

/* The key of the operation of a slot. */
static const unsigned char *op_key(const struct stage_table *t, uint32_t op, uint32_t *len_r)
{
	const unsigned char *p = (const unsigned char *)t->batch->ser.data + op - 1;
	*len_r = stor_batch_op_klen(p);
	return p + 5;
}

static struct stage_slot *slot_find(struct stage_table *t, const unsigned char *k, size_t klen,
				    uint32_t h)
{
	size_t mask = t->cap - 1;
	for (size_t i = h & mask;; i = (i + 1) & mask) {
		struct stage_slot *slot = &t->slots[i];
		if (slot->op == 0)
			return slot;
		uint32_t len;
		const unsigned char *key;
		if (slot->hash == h && (key = op_key(t, slot->op, &len), len == klen) &&
		    memcmp(key, k, klen) == 0)
			return slot;
	}
}

static void slots_grow(struct stage_table *t)
{
	struct stage_slot *old = t->slots;
	size_t old_cap = t->cap;
	t->cap *= 2;
	t->slots = xcalloc(t->cap, sizeof(*t->slots));
	for (size_t i = 0; i < old_cap; i++) {
		if (old[i].op == 0)
			continue;
		size_t mask = t->cap - 1, j = old[i].hash & mask;
		while (t->slots[j].op != 0)
			j = (j + 1) & mask;
		t->slots[j] = old[i];
	}
	free(old);
}

static void index_op(struct stage_table *t, uint32_t off)
{
	uint32_t klen;
	const unsigned char *k = op_key(t, off + 1, &klen);
	uint32_t h = key_hash(k, klen);
	struct stage_slot *slot = slot_find(t, k, klen, h);
	if (slot->op == 0) {
		t->used++;
		slot->hash = h;
	}
	slot->op = off + 1;
	if (t->used * 2 > t->cap)
		slots_grow(t);
}

int stor_stage_add(struct stor_db *db, const struct stor_batch *wb, const char **error_r)
{
	struct stor_stage *s = stage_get(db);
	struct stage_table *t = &s->cur;
	if (t->used > 0 && t->batch->ser.len + wb->ser.len > STAGE_MAX &&
	    stor_stage_flush(db, false, error_r) < 0) {
		stor_jnl_live_discard(db);
		return -1;
	}
	if (wb->ser.len > STOR_BATCH_MAX) {
		stor_jnl_live_discard(db);
		return stor_err(db, error_r, "change too big for one write (%zu bytes)",
				wb->ser.len);
	}
	size_t base = t->batch->ser.len;
	buf_append(&t->batch->ser, wb->ser.data, wb->ser.len);
	for (size_t off = 0; off < wb->ser.len;) {
		const unsigned char *p = (const unsigned char *)wb->ser.data + off;
		index_op(t, (uint32_t)(base + off));
		off += stor_batch_op_size(p);
	}
	stor_jnl_live_stage(db);
	if (t->batch->ser.len > STAGE_MAX)
		return stor_stage_flush(db, false, error_r);
	return 0;
}

static int table_get(struct stage_table *t, const struct stor_key *k, const void **val_r,
		     size_t *len_r)
{
	if (t->used == 0)
		return -1;
	struct stage_slot *slot = slot_find(t, k->b, k->len, key_hash(k->b, k->len));
	if (slot->op == 0)
		return -1;
	const unsigned char *p = (const unsigned char *)t->batch->ser.data + slot->op - 1;
	return stor_batch_op_value(p, val_r, len_r) ? 1 : 0;
}

int stor_stage_get(struct stor_db *db, const struct stor_key *k, const void **val_r,
		   size_t *len_r)
{
	struct stor_stage *s = db->stage;
	if (s == NULL)
		return -1;
	int ret = table_get(&s->cur, k, val_r, len_r);
	return ret >= 0 ? ret : table_get(&s->applying, k, val_r, len_r);
}

static int op_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* The last operation on each key, in the order they were staged: the same
 * end state in fewer LevelDB inserts (appends to one mailbox rewrite its
 * record every time). */
static void table_squash(struct stage_table *t, struct stor_batch *out)
{
	uint32_t *ops = xmalloc(t->used * sizeof(*ops));
	size_t n = 0;
	for (size_t i = 0; i < t->cap; i++) {
		if (t->slots[i].op != 0)
			ops[n++] = t->slots[i].op - 1;
	}
	qsort(ops, n, sizeof(*ops), op_cmp);
	const unsigned char *base = (const unsigned char *)t->batch->ser.data;
	buf_reserve(&out->ser, t->batch->ser.len);
	for (size_t i = 0; i < n; i++)
		buf_append(&out->ser, base + ops[i], stor_batch_op_size(base + ops[i]));
	free(ops);
}

int stor_stage_flush(struct stor_db *db, bool applied, const char **error_r)
{
	struct stor_stage *s = db->stage;
	/* Writing may start a new segment, whose checkpoint comes back here
	 * (LevelDB then already holds what came before this batch). */
	if (s == NULL || s->flushing)
		return 0;
	s->flushing = true;
	/* One batch at a time with the writer: the previous one is in
	 * LevelDB before this one is written. */
	int ret = writer_wait(db, error_r);
	if (ret == 0 && s->cur.used > 0) {
		struct stor_batch *out = stor_batch_new();
		table_squash(&s->cur, out);
		ret = stor_jnl_write_staged(db, out, error_r);
		if (ret == 0) {
			/* In the journal now: reads find it in the applying
			 * table until LevelDB has it. */
			struct stage_table tmp = s->applying;
			s->applying = s->cur;
			s->cur = tmp;
			ret = writer_start(db, stor_batch_ldb(out), error_r);
		}
		stor_batch_free(out);
		table_reset(&s->cur);
	}
	if (ret == 0 && applied)
		ret = writer_wait(db, error_r);
	s->flushing = false;
	return ret;
}
