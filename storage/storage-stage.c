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
 * The table points into the staged batch's serialized operations (key and
 * value bytes, stor_batch's format), so staging copies each change once. */
#include "storage/storage-private.h"

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

struct stor_stage {
	struct stor_batch *batch;
	struct stage_slot *slots;   /* open addressing, a power of two */
	size_t cap, used;
	bool flushing;
};

#define SLOTS_MIN 1024

static void stage_reset(struct stor_stage *s)
{
	if (s->batch->ser.cap > 4 * STAGE_MAX)
		buf_free(&s->batch->ser); /* a big batch's: don't keep the memory */
	buf_reset(&s->batch->ser);
	if (s->cap > 4 * SLOTS_MIN) {
		/* A big batch grew the table: clearing it after every small
		 * one would cost more than the writes. */
		free(s->slots);
		s->cap = SLOTS_MIN;
		s->slots = xcalloc(s->cap, sizeof(*s->slots));
	} else if (s->used > 0) {
		memset(s->slots, 0, s->cap * sizeof(*s->slots));
	}
	s->used = 0;
}

static struct stor_stage *stage_get(struct stor_db *db)
{
	if (db->stage == NULL) {
		struct stor_stage *s = xcalloc(1, sizeof(*s));
		s->batch = stor_batch_new();
		s->cap = SLOTS_MIN;
		s->slots = xcalloc(s->cap, sizeof(*s->slots));
		db->stage = s;
	}
	return db->stage;
}

void stor_stage_free(struct stor_db *db)
{
	struct stor_stage *s = db->stage;
	if (s == NULL)
		return;
	stor_batch_free(s->batch);
	free(s->slots);
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
static const unsigned char *op_key(const struct stor_stage *s, uint32_t op, uint32_t *len_r)
{
	const unsigned char *p = (const unsigned char *)s->batch->ser.data + op - 1;
	*len_r = stor_batch_op_klen(p);
	return p + 5;
}

static struct stage_slot *slot_find(struct stor_stage *s, const unsigned char *k, size_t klen,
				    uint32_t h)
{
	size_t mask = s->cap - 1;
	for (size_t i = h & mask;; i = (i + 1) & mask) {
		struct stage_slot *slot = &s->slots[i];
		if (slot->op == 0)
			return slot;
		uint32_t len;
		const unsigned char *key;
		if (slot->hash == h && (key = op_key(s, slot->op, &len), len == klen) &&
		    memcmp(key, k, klen) == 0)
			return slot;
	}
}

static void slots_grow(struct stor_stage *s)
{
	struct stage_slot *old = s->slots;
	size_t old_cap = s->cap;
	s->cap *= 2;
	s->slots = xcalloc(s->cap, sizeof(*s->slots));
	for (size_t i = 0; i < old_cap; i++) {
		if (old[i].op == 0)
			continue;
		size_t mask = s->cap - 1, j = old[i].hash & mask;
		while (s->slots[j].op != 0)
			j = (j + 1) & mask;
		s->slots[j] = old[i];
	}
	free(old);
}

static void index_op(struct stor_stage *s, uint32_t off)
{
	uint32_t klen;
	const unsigned char *k = op_key(s, off + 1, &klen);
	uint32_t h = key_hash(k, klen);
	struct stage_slot *slot = slot_find(s, k, klen, h);
	if (slot->op == 0) {
		s->used++;
		slot->hash = h;
	}
	slot->op = off + 1;
	if (s->used * 2 > s->cap)
		slots_grow(s);
}

int stor_stage_add(struct stor_db *db, const struct stor_batch *wb, const char **error_r)
{
	struct stor_stage *s = stage_get(db);
	if (s->used > 0 && s->batch->ser.len + wb->ser.len > STAGE_MAX &&
	    stor_stage_flush(db, error_r) < 0) {
		stor_jnl_live_discard(db);
		return -1;
	}
	if (wb->ser.len > STOR_BATCH_MAX) {
		stor_jnl_live_discard(db);
		return stor_err(db, error_r, "change too big for one write (%zu bytes)",
				wb->ser.len);
	}
	size_t base = s->batch->ser.len;
	buf_append(&s->batch->ser, wb->ser.data, wb->ser.len);
	for (size_t off = 0; off < wb->ser.len;) {
		const unsigned char *p = (const unsigned char *)wb->ser.data + off;
		const void *v;
		size_t vlen;
		index_op(s, (uint32_t)(base + off));
		if (!stor_batch_op_value(p, &v, &vlen))
			db->deletes++;
		off += stor_batch_op_size(p);
	}
	stor_jnl_live_stage(db);
	if (s->batch->ser.len > STAGE_MAX)
		return stor_stage_flush(db, error_r);
	return 0;
}

int stor_stage_get(struct stor_db *db, const struct stor_key *k, const void **val_r,
		   size_t *len_r)
{
	struct stor_stage *s = db->stage;
	if (s == NULL || s->used == 0)
		return -1;
	struct stage_slot *slot = slot_find(s, k->b, k->len, key_hash(k->b, k->len));
	if (slot->op == 0)
		return -1;
	const unsigned char *p = (const unsigned char *)s->batch->ser.data + slot->op - 1;
	if (!stor_batch_op_value(p, val_r, len_r))
		return 0;
	return 1;
}

static int op_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* The last operation on each key, in the order they were staged: the same
 * end state in fewer LevelDB inserts (appends to one mailbox rewrite its
 * record every time). */
static void stage_squash(struct stor_stage *s, struct stor_batch *out)
{
	uint32_t *ops = xmalloc(s->used * sizeof(*ops));
	size_t n = 0;
	for (size_t i = 0; i < s->cap; i++) {
		if (s->slots[i].op != 0)
			ops[n++] = s->slots[i].op - 1;
	}
	qsort(ops, n, sizeof(*ops), op_cmp);
	const unsigned char *base = (const unsigned char *)s->batch->ser.data;
	buf_reserve(&out->ser, s->batch->ser.len);
	for (size_t i = 0; i < n; i++)
		buf_append(&out->ser, base + ops[i], stor_batch_op_size(base + ops[i]));
	free(ops);
}

int stor_stage_flush(struct stor_db *db, const char **error_r)
{
	struct stor_stage *s = db->stage;
	/* Writing may start a new segment, whose checkpoint comes back here. */
	if (s == NULL || s->used == 0 || s->flushing)
		return 0;
	s->flushing = true;
	struct stor_batch *out = stor_batch_new();
	stage_squash(s, out);
	int ret = stor_jnl_write_staged(db, out, error_r);
	stor_batch_free(out);
	s->flushing = false;
	stage_reset(s);
	return ret;
}
