/* Unit tests of storage/ message texts: chunked streaming, reads at any
 * offset, the size limit, and collection of unreferenced texts. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lib/xalloc.h"
#include "storage/storage-private.h"
#include "tests/storage/tests.h"

/* Deterministic bytes, different in every chunk. */
static void fill(unsigned char *p, size_t n, unsigned seed)
{
	uint32_t x = seed * 2654435761u + 1;
	for (size_t i = 0; i < n; i++) {
		x = x * 1103515245u + 12345u;
		p[i] = (unsigned char)(x >> 16);
	}
}

static void test_big_text_in_memory_roundtrips_across_chunks(void)
{
	struct tstore t;
	struct stor_append req;
	struct stor_msg msg;
	const char *error = NULL;
	size_t n = 3 * STOR_TEXT_CHUNK + 1234;
	unsigned char *text = xmalloc(n);
	fill(text, n, 1);
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	memset(&req, 0, sizeof(req));
	req.text = text;
	req.text_len = n;
	CU_ASSERT_EQUAL_FATAL(stor_msg_append(t.db, &g, &req, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	CU_ASSERT_EQUAL(msg.size, n);
	struct buf out = BUF_INIT;
	CU_ASSERT_EQUAL(stor_text_read(t.db, &msg.guid, 0, n + 100, &out, &error), 0);
	CU_ASSERT_EQUAL_FATAL(out.len, n);
	CU_ASSERT(memcmp(out.data, text, n) == 0);
	/* A read straddling a chunk boundary. */
	buf_reset(&out);
	CU_ASSERT_EQUAL(stor_text_read(t.db, &msg.guid, STOR_TEXT_CHUNK - 10, 20, &out, &error), 0);
	CU_ASSERT_EQUAL_FATAL(out.len, 20);
	CU_ASSERT(memcmp(out.data, text + STOR_TEXT_CHUNK - 10, 20) == 0);
	/* Past the end: nothing. */
	buf_reset(&out);
	CU_ASSERT_EQUAL(stor_text_read(t.db, &msg.guid, n, 20, &out, &error), 0);
	CU_ASSERT_EQUAL(out.len, 0);
	buf_free(&out);
	stor_msg_free(&msg);
	tcheck(t.db, &g);
	/* Survives reopen and garbage collection. */
	tstore_reopen(&t);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	CU_ASSERT_EQUAL(stor_text_exists(t.db, &msg.guid, NULL, &error), 1);
	stor_msg_free(&msg);
	free(text);
	tstore_close(&t);
}

static void test_streamed_text_is_referenced_by_append_without_text(void)
{
	struct tstore t;
	struct stor_append req;
	struct guid mg;
	const char *error = NULL;
	size_t n = 2 * STOR_TEXT_CHUNK + 5;
	unsigned char *text = xmalloc(n);
	uint64_t size;
	fill(text, n, 2);
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	guid_generate(&mg);
	/* Without the text, an append has nothing to reference. */
	memset(&req, 0, sizeof(req));
	req.guid = &mg;
	CU_ASSERT_EQUAL(stor_msg_append(t.db, &g, &req, NULL, NULL, &error), -1);

	struct stor_text_writer *w = stor_text_begin(t.db, &mg);
	/* Odd-sized pieces so writes straddle chunk ends. */
	for (size_t off = 0; off < n; off += 100003) {
		size_t len = n - off < 100003 ? n - off : 100003;
		CU_ASSERT_EQUAL(stor_text_write(w, text + off, len, &error), 0);
	}
	CU_ASSERT_EQUAL(stor_text_finish(&w, &error), 0);
	CU_ASSERT_PTR_NULL(w);
	CU_ASSERT_EQUAL(stor_text_exists(t.db, &mg, &size, &error), 1);
	CU_ASSERT_EQUAL(size, n);
	CU_ASSERT_EQUAL(stor_msg_append(t.db, &g, &req, NULL, NULL, &error), 0);
	struct buf out = BUF_INIT;
	CU_ASSERT_EQUAL(stor_text_read(t.db, &mg, 0, n, &out, &error), 0);
	CU_ASSERT_EQUAL_FATAL(out.len, n);
	CU_ASSERT(memcmp(out.data, text, n) == 0);
	buf_free(&out);
	tcheck(t.db, &g);
	/* Referenced, so reopening keeps it. */
	tstore_reopen(&t);
	CU_ASSERT_EQUAL(stor_text_exists(t.db, &mg, NULL, &error), 1);
	free(text);
	tstore_close(&t);
}

static bool text_record_exists(struct stor_db *db, const struct guid *g)
{
	struct stor_key k;
	char *v;
	const char *error;
	stor_key_init(&k, STOR_KEY_TEXT);
	stor_key_guid(&k, g);
	int ret = stor_db_get(db, &k, &v, NULL, &error);
	if (ret > 0)
		free(v);
	return ret != 0;
}

static void test_unreferenced_streamed_text_is_collected_on_open(void)
{
	struct tstore t;
	struct guid done, partial;
	const char *error = NULL;
	unsigned char *text = xmalloc(STOR_TEXT_CHUNK * 2);
	fill(text, STOR_TEXT_CHUNK * 2, 3);
	tstore_open(&t);
	guid_generate(&done);
	guid_generate(&partial);
	struct stor_text_writer *w = stor_text_begin(t.db, &done);
	CU_ASSERT_EQUAL(stor_text_write(w, text, STOR_TEXT_CHUNK * 2, &error), 0);
	CU_ASSERT_EQUAL(stor_text_finish(&w, &error), 0);
	/* A marker whose text never got its records (a writer that died
	 * half-way, in the old layout). */
	struct stor_key k;
	stor_key_init(&k, STOR_KEY_ORPHAN);
	stor_key_guid(&k, &partial);
	CU_ASSERT_EQUAL(stor_test_raw_put(t.db, k.b, k.len, "", 0, &error), 0);
	CU_ASSERT_EQUAL(stor_text_exists(t.db, &done, NULL, &error), 1);
	CU_ASSERT(text_record_exists(t.db, &done));
	tstore_reopen(&t);
	CU_ASSERT_EQUAL(stor_text_exists(t.db, &done, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_text_exists(t.db, &partial, NULL, &error), 0);
	CU_ASSERT(!text_record_exists(t.db, &done));
	char *v;
	CU_ASSERT_EQUAL(stor_db_get(t.db, &k, &v, NULL, &error), 0);
	free(text);
	tstore_close(&t);
}

static void test_text_abort_leaves_no_text(void)
{
	struct tstore t;
	struct guid mg;
	const char *error = NULL;
	unsigned char *text = xmalloc(STOR_TEXT_CHUNK * 2);
	fill(text, STOR_TEXT_CHUNK * 2, 4);
	tstore_open(&t);
	guid_generate(&mg);
	struct stor_text_writer *w = stor_text_begin(t.db, &mg);
	CU_ASSERT_EQUAL(stor_text_write(w, text, STOR_TEXT_CHUNK * 2, &error), 0);
	stor_text_abort(&w);
	CU_ASSERT_PTR_NULL(w);
	CU_ASSERT(!text_record_exists(t.db, &mg));
	CU_ASSERT_EQUAL(stor_text_exists(t.db, &mg, NULL, &error), 0);
	tstore_reopen(&t);
	CU_ASSERT_EQUAL(stor_text_exists(t.db, &mg, NULL, &error), 0);
	free(text);
	tstore_close(&t);
}

static void test_message_size_limit_just_under_and_over(void)
{
	struct stor_settings set;
	struct stor_db *db = NULL;
	struct stor_append req;
	struct guid mg;
	char *err = NULL;
	const char *error = NULL;
	char *dir = test_mkdtemp();
	const size_t limit = STOR_TEXT_CHUNK + 100;
	unsigned char *text = xcalloc(1, limit + 1);
	memset(&set, 0, sizeof(set));
	set.dir = dir;
	set.max_message_size = limit;
	CU_ASSERT_EQUAL_FATAL(stor_open(&set, &db, &err), 0);
	struct guid g = tmailbox(db, "alice", "INBOX");
	memset(&req, 0, sizeof(req));
	req.text = text;
	req.text_len = limit + 1;
	CU_ASSERT_EQUAL(stor_msg_append(db, &g, &req, NULL, NULL, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(error, "message too large"));
	CU_ASSERT_EQUAL(stor_last_error_kind(db), STOR_ERROR_TOOBIG);
	req.text_len = limit;
	CU_ASSERT_EQUAL(stor_msg_append(db, &g, &req, NULL, NULL, &error), 0);

	/* Streaming: refused when the total passes the limit. */
	guid_generate(&mg);
	struct stor_text_writer *w = stor_text_begin(db, &mg);
	CU_ASSERT_EQUAL(stor_text_write(w, text, limit, &error), 0);
	CU_ASSERT_EQUAL(stor_text_write(w, text, 1, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(error, "message too large"));
	CU_ASSERT_EQUAL(stor_last_error_kind(db), STOR_ERROR_TOOBIG);
	CU_ASSERT_EQUAL(stor_text_finish(&w, &error), -1);
	CU_ASSERT_EQUAL(stor_text_exists(db, &mg, NULL, &error), 0);
	tcheck(db, &g);
	stor_close(&db);
	test_rmtree(dir);
	free(dir);
	free(text);
}

static void test_largest_message_roundtrips_streamed(void)
{
	struct tstore t;
	struct stor_append req;
	struct guid mg;
	const char *error = NULL;
	const size_t n = 64 * 1024 * 1024, piece = 1024 * 1024;
	unsigned char *p = xmalloc(piece);
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	guid_generate(&mg);
	/* Streamed a megabyte at a time: never held whole in memory. */
	struct stor_text_writer *w = stor_text_begin(t.db, &mg);
	int ret = 0;
	for (size_t off = 0; off < n && ret == 0; off += piece) {
		fill(p, piece, (unsigned)(off / piece));
		ret = stor_text_write(w, p, piece, &error);
	}
	CU_ASSERT_EQUAL_FATAL(ret, 0);
	CU_ASSERT_EQUAL_FATAL(stor_text_finish(&w, &error), 0);
	memset(&req, 0, sizeof(req));
	req.guid = &mg;
	CU_ASSERT_EQUAL_FATAL(stor_msg_append(t.db, &g, &req, NULL, NULL, &error), 0);
	/* Read back a megabyte at a time, compared piece by piece. */
	struct buf out = BUF_INIT;
	bool same = true;
	for (size_t off = 0; off < n && same; off += piece) {
		buf_reset(&out);
		if (stor_text_read(t.db, &mg, off, piece, &out, &error) < 0 || out.len != piece) {
			same = false;
			break;
		}
		fill(p, piece, (unsigned)(off / piece));
		same = memcmp(out.data, p, piece) == 0;
	}
	CU_ASSERT_TRUE(same);
	buf_free(&out);
	tcheck(t.db, &g);
	free(p);
	tstore_close(&t);
}

static void test_default_limit_is_64_mib(void)
{
	struct tstore t;
	struct stor_append req;
	const char *error = NULL;
	/* calloc'ed pages are not touched: the size is checked first. */
	size_t n = 64 * 1024 * 1024 + 1;
	unsigned char *text = xcalloc(1, n);
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	memset(&req, 0, sizeof(req));
	req.text = text;
	req.text_len = n;
	CU_ASSERT_EQUAL(stor_msg_append(t.db, &g, &req, NULL, NULL, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(error, "message too large"));
	free(text);
	tstore_close(&t);
}

static void test_text_records_of_version_1_still_read(void)
{
	struct tstore t;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	tappend(t.db, &g, 0, "abc", 0);
	struct stor_msg msg;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	struct stor_text_rec rec;
	stor_extent_list ext = ARRAY_INIT;
	CU_ASSERT_EQUAL_FATAL(stor_text_get(t.db, &msg.guid, &rec, &ext, &error), 1);
	CU_ASSERT_EQUAL_FATAL(ext.count, 1);
	/* Version 1 (before the hash left the record): version, refcount,
	 * size, SHA-256, chunk count, chunks. */
	struct buf v = BUF_INIT;
	stor_put_u8(&v, 1);
	stor_put_u32(&v, rec.refcount);
	stor_put_u64(&v, rec.size);
	stor_put_bytes(&v, "0123456789abcdef0123456789abcdef", 32);
	stor_put_u32(&v, 1);
	stor_put_u32(&v, ext.items[0].seg);
	stor_put_u64(&v, ext.items[0].off);
	stor_put_u32(&v, ext.items[0].len);
	unsigned char key[1 + GUID_SIZE];
	key[0] = STOR_KEY_TEXT;
	memcpy(key + 1, msg.guid.b, GUID_SIZE);
	CU_ASSERT_EQUAL(stor_test_raw_put(t.db, key, sizeof(key), v.data, v.len, &error), 0);
	buf_free(&v);
	tstore_reopen(&t);
	struct buf out = BUF_INIT;
	CU_ASSERT_EQUAL(stor_text_read(t.db, &msg.guid, 0, 3, &out, &error), 0);
	CU_ASSERT(out.len == 3 && memcmp(out.data, "abc", 3) == 0);
	buf_reset(&out);
	/* The dump hashes the text itself. */
	CU_ASSERT_EQUAL(stor_dump_user(t.db, "alice", &out, &error), 0);
	buf_append_byte(&out, '\0');
	CU_ASSERT_PTR_NOT_NULL(strstr((char *)out.data, "sha256=ba7816bf8f01cfea414140de5dae2223b00361"
				      "a396177a9cb410ff61f20015ad"));
	buf_free(&out);
	/* A second reference rewrites it in the current version. */
	CU_ASSERT_EQUAL(stor_msg_copy(t.db, &g, 1, &g, 0, 0, NULL, NULL, &error), 0);
	tcheck(t.db, &g);
	CU_ASSERT_EQUAL(stor_text_get(t.db, &msg.guid, &rec, NULL, &error), 1);
	CU_ASSERT_EQUAL(rec.refcount, 2);
	ARRAY_FREE(&ext);
	stor_msg_free(&msg);
	tstore_close(&t);
}

/* Reads land at the end of the caller's buffer, after what it still holds
 * unread (a FETCH reads into the connection's output), for every range
 * that starts or ends at or next to a chunk boundary; a damaged chunk
 * appends nothing of itself. */
static void test_reads_append_in_place_at_chunk_boundaries(void)
{
	struct tstore t;
	struct stor_append req;
	struct stor_msg msg;
	const char *error = NULL;
	const size_t C = STOR_TEXT_CHUNK;
	size_t n = 3 * C + 77;
	unsigned char *text = xmalloc(n);
	fill(text, n, 9);
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	memset(&req, 0, sizeof(req));
	req.text = text;
	req.text_len = n;
	CU_ASSERT_EQUAL_FATAL(stor_msg_append(t.db, &g, &req, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	const uint64_t offs[] = { 0, 1, C - 1, C, C + 1, 2 * C - 1, 2 * C, 3 * C, n - 1 };
	const uint64_t lens[] = { 1, 2, C - 1, C, C + 1, 2 * C + 3, n };
	struct buf out = BUF_INIT;
	unsigned bad = 0;
	for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
		for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
			/* Unread bytes before, and some consumed ones. */
			buf_reset(&out);
			buf_append_str(&out, "consumed:prefix");
			buf_consume(&out, 9);
			uint64_t want = n - offs[i] < lens[k] ? n - offs[i] : lens[k];
			if (stor_text_read(t.db, &msg.guid, offs[i], lens[k], &out, &error) != 0 ||
			    buf_avail(&out) != 6 + want ||
			    memcmp(buf_rptr(&out), "prefix", 6) != 0 ||
			    memcmp(buf_rptr(&out) + 6, text + offs[i], (size_t)want) != 0)
				bad++;
		}
	}
	CU_ASSERT_EQUAL(bad, 0);
	/* Damage a byte in the second chunk: the read fails, and out holds
	 * the first chunk's bytes and nothing of the damaged one. */
	struct stor_text_rec rec;
	stor_extent_list ext = ARRAY_INIT;
	CU_ASSERT_EQUAL_FATAL(stor_text_get(t.db, &msg.guid, &rec, &ext, &error), 1);
	CU_ASSERT_EQUAL_FATAL(ext.count, 4);
	tstore_reopen(&t);
	char *path = xasprintf("%s/journal/%010u.jnl", t.dir, ext.items[1].seg);
	int fd = open(path, O_RDWR);
	CU_ASSERT_FATAL(fd >= 0);
	unsigned char byte;
	off_t at = (off_t)(ext.items[1].off + ext.items[1].len / 2);
	CU_ASSERT_EQUAL_FATAL(pread(fd, &byte, 1, at), 1);
	byte ^= 0x55;
	CU_ASSERT_EQUAL_FATAL(pwrite(fd, &byte, 1, at), 1);
	close(fd);
	free(path);
	buf_reset(&out);
	buf_append_str(&out, "x");
	error = NULL;
	CU_ASSERT_EQUAL(stor_text_read(t.db, &msg.guid, C - 5, 10, &out, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(error != NULL ? strstr(error, "corrupted") : NULL);
	CU_ASSERT_EQUAL(buf_avail(&out), 1 + 5);
	CU_ASSERT(memcmp(buf_rptr(&out) + 1, text + C - 5, 5) == 0);
	ARRAY_FREE(&ext);
	buf_free(&out);
	stor_msg_free(&msg);
	free(text);
	tstore_close(&t);
}

/* Keys deleted while stor_test_deleted points here. */
#define DELETED_MAX 20000
static struct {
	unsigned char *k[DELETED_MAX];
	size_t len[DELETED_MAX];
	size_t count;
} deleted;

static void note_deleted(const void *key, size_t klen)
{
	if (deleted.count < DELETED_MAX) {
		deleted.k[deleted.count] = xmemdup(key, klen);
		deleted.len[deleted.count++] = klen;
	}
}

static int key_cmp(const unsigned char *a, size_t alen, const unsigned char *b, size_t blen)
{
	int c = memcmp(a, b, alen < blen ? alen : blen);
	return c != 0 ? c : (alen > blen) - (alen < blen);
}

/* LevelDB's iterator steps over every deletion marker between two live
 * keys.  A scan that ends after the last live key of its range (LIST after
 * the user's last mailbox name) must not find the markers of another kind
 * of record there: appends and expunges leave them at a rate (the 'O'
 * marker of each streamed text, the modseq index of each flag change), and
 * a scan that crossed them got slower with every minute until a
 * compaction.  Structural, not timed: every key deleted by a batch lies
 * after a live key of its own kind. */
static void test_churn_is_not_stepped_over_by_other_kinds_scans(void)
{
	struct tstore t;
	const char *error = NULL;
	tstore_open(&t);
	tmailbox(t.db, "alice", "INBOX");
	struct guid g = tmailbox(t.db, "zed", "INBOX");
	tmailbox(t.db, "zed", "Sent");
	deleted.count = 0;
	stor_test_deleted = note_deleted;
	for (unsigned i = 0; i < 200; i++) {
		struct guid mg;
		guid_generate(&mg);
		char text[64];
		snprintf(text, sizeof(text), "Subject: %u\r\n\r\nbody %u\r\n", i, i);
		/* Streamed, as IMAP APPEND stores a literal. */
		struct stor_text_writer *w = stor_text_begin(t.db, &mg);
		CU_ASSERT_EQUAL(stor_text_write(w, text, strlen(text), &error), 0);
		CU_ASSERT_EQUAL_FATAL(stor_text_finish(&w, &error), 0);
		struct stor_append req;
		memset(&req, 0, sizeof(req));
		req.guid = &mg;
		req.internaldate = 1700000000;
		uint32_t uid = 0;
		CU_ASSERT_EQUAL_FATAL(stor_msg_append(t.db, &g, &req, &uid, NULL, &error), 0);
		struct stor_store st;
		memset(&st, 0, sizeof(st));
		st.op = STOR_FLAGS_ADD;
		st.flags = STOR_FLAG_SEEN;
		CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &uid, 1, &st, NULL, NULL, &error), 0);
		if (i % 2 == 0)
			CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, &uid, 1, 0, NULL, &error), 0);
		if (i % 16 == 0)
			CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	}
	stor_test_deleted = NULL;
	CU_ASSERT_EQUAL_FATAL(stor_sync(t.db, &error), 0);
	stor_mailbox_array mbs;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_list(t.db, "zed", &mbs, &error), 0);
	CU_ASSERT_EQUAL(mbs.count, 2);
	stor_mailbox_list_free(&mbs);
	CU_ASSERT(deleted.count > 200 && deleted.count < DELETED_MAX);

	/* Every live key, in LevelDB's order. */
	ARRAY(struct buf) live = ARRAY_INIT;
	leveldb_iterator_t *it = leveldb_create_iterator(t.db->ldb, t.db->ropts);
	for (leveldb_iter_seek_to_first(it); leveldb_iter_valid(it); leveldb_iter_next(it)) {
		size_t klen;
		const char *k = leveldb_iter_key(it, &klen);
		struct buf b = BUF_INIT;
		buf_append(&b, k, klen);
		ARRAY_PUSH(&live, b);
	}
	leveldb_iter_destroy(it);
	size_t crossed = 0, markers = 0;
	for (size_t i = 0; i < deleted.count; i++) {
		const unsigned char *d = deleted.k[i];
		size_t dlen = deleted.len[i];
		/* The last live key at or before d (binary search). */
		size_t lo = 0, hi = live.count;
		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			if (key_cmp((const unsigned char *)live.items[mid].data, live.items[mid].len,
				    d, dlen) <= 0)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo > 0) {
			const struct buf *prev = &live.items[lo - 1];
			if (key_cmp((const unsigned char *)prev->data, prev->len, d, dlen) == 0)
				continue; /* written again since: no marker */
			markers++;
			if (((const unsigned char *)prev->data)[0] != d[0])
				crossed++;
		}
	}
	for (size_t i = 0; i < deleted.count; i++) {
		free(deleted.k[i]);
		deleted.k[i] = NULL;
	}
	CU_ASSERT(markers > 200);
	if (crossed != 0)
		fprintf(stderr, "%zu of %zu deletion markers follow another kind's last live key\n",
			crossed, markers);
	CU_ASSERT_EQUAL(crossed, 0);
	for (size_t i = 0; i < live.count; i++)
		buf_free(&live.items[i]);
	ARRAY_FREE(&live);
	tcheck(t.db, &g);
	tstore_close(&t);
}


/* Appends and expunges n messages, each in its own group commit. */
static void churn(struct stor_db *db, const struct guid *g, unsigned n)
{
	const char *error = NULL;
	for (unsigned i = 0; i < n; i++) {
		char text[64];
		snprintf(text, sizeof(text), "Subject: %u\r\n\r\nbody\r\n", i);
		uint32_t uid = tappend(db, g, 0, text, 0);
		CU_ASSERT_EQUAL(stor_msg_expunge(db, g, &uid, 1, 0, NULL, &error), 0);
		CU_ASSERT_EQUAL(stor_sync(db, &error), 0);
	}
}

/* The markers of a mailbox used as a queue stay until a compaction reaches
 * them, and LevelDB compacts by size: the store starts one of its own
 * after enough deletions, in a helper thread, and not for a few. */
static void test_many_deletions_start_a_compaction(void)
{
	struct tstore t;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	churn(t.db, &g, 200);
	CU_ASSERT_EQUAL(stor_test_compactions(t.db), 0);
	/* Each append and expunge deletes its text's, message's and indexes'
	 * keys: several per message. */
	churn(t.db, &g, 3000);
	unsigned n = stor_test_compactions(t.db);
	CU_ASSERT(n >= 1 && n <= 3);
	CU_ASSERT_EQUAL(tappend(t.db, &g, 0, "Subject: after\r\n\r\nx\r\n", 0), 3201);
	tcheck(t.db, &g);
	tstore_reopen(&t);
	tcheck(t.db, &g);
	tstore_close(&t);
}

const struct test_case storage_text_cases[] = {
	{ "reads append in place at chunk boundaries; a damaged chunk appends nothing",
	  test_reads_append_in_place_at_chunk_boundaries },
	{ "many deletions start a compaction", test_many_deletions_start_a_compaction },
	{ "churn is not stepped over by other kinds' scans", test_churn_is_not_stepped_over_by_other_kinds_scans },
	{ "big text in memory roundtrips across chunks", test_big_text_in_memory_roundtrips_across_chunks },
	{ "streamed text is referenced by an append without text", test_streamed_text_is_referenced_by_append_without_text },
	{ "unreferenced streamed text is collected on open", test_unreferenced_streamed_text_is_collected_on_open },
	{ "text abort removes written chunks", test_text_abort_leaves_no_text },
	{ "message size limit just under and over", test_message_size_limit_just_under_and_over },
	{ "default limit is 64 MiB", test_default_limit_is_64_mib },
	{ "largest message (64 MiB) roundtrips streamed", test_largest_message_roundtrips_streamed },
	{ "text records of version 1 (with a SHA-256) still read",
	  test_text_records_of_version_1_still_read },
	{ NULL, NULL },
};
