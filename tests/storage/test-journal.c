/* Tests of the journal (storage-journal*.c): replay after a crash, a torn
 * last record, segments deleted and compacted as mail is expunged, and
 * stores it cannot read. */
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <leveldb/c.h>

#include "lib/crc32c.h"
#include "lib/xalloc.h"
#include "storage/storage-private.h"
#include "tests/storage/tests.h"

#define SMALL_SEGMENT (64 * 1024)

static struct stor_db *open_dir(const char *dir, uint64_t segment)
{
	struct stor_settings set;
	struct stor_db *db = NULL;
	char *error = NULL;
	memset(&set, 0, sizeof(set));
	set.dir = dir;
	set.journal_segment_size = segment;
	if (stor_open(&set, &db, &error) < 0) {
		fprintf(stderr, "stor_open: %s\n", error);
		free(error);
	}
	return db;
}

static char *dump(struct stor_db *db)
{
	struct buf out = BUF_INIT;
	const char *error;
	CU_ASSERT_EQUAL(stor_dump_user(db, "alice", &out, &error), 0);
	buf_append_byte(&out, '\0');
	return (char *)buf_steal(&out, NULL);
}

/* Segment files and their total size. */
static unsigned count_segments(const char *dir, uint64_t *bytes_r, unsigned *cut_r)
{
	char *jdir = xasprintf("%s/journal", dir);
	DIR *d = opendir(jdir);
	unsigned n = 0, cut = 0;
	uint64_t bytes = 0;
	struct dirent *de;
	while (d != NULL && (de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		if (strstr(de->d_name, ".cut-") != NULL) {
			cut++;
			continue;
		}
		if (len < 4 || strcmp(de->d_name + len - 4, ".jnl") != 0)
			continue;
		char *path = xasprintf("%s/%s", jdir, de->d_name);
		struct stat st;
		if (stat(path, &st) == 0)
			bytes += (uint64_t)st.st_size;
		free(path);
		n++;
	}
	if (d != NULL)
		closedir(d);
	free(jdir);
	if (bytes_r != NULL)
		*bytes_r = bytes;
	if (cut_r != NULL)
		*cut_r = cut;
	return n;
}

static char *last_segment_path(const char *dir)
{
	char *jdir = xasprintf("%s/journal", dir);
	DIR *d = opendir(jdir);
	char best[256] = "";
	struct dirent *de;
	while (d != NULL && (de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		if (len == 14 && strcmp(de->d_name + 10, ".jnl") == 0 && strcmp(de->d_name, best) > 0)
			snprintf(best, sizeof(best), "%s", de->d_name);
	}
	if (d != NULL)
		closedir(d);
	char *path = xasprintf("%s/%s", jdir, best);
	free(jdir);
	return path;
}

/* The mailbox agrees with its messages, and the journal's accounting with
 * the texts. */
static void check_all(struct stor_db *db, const struct guid *g)
{
	const char *error = NULL;
	tcheck(db, g);
	int ret = stor_test_check_journal(db, &error);
	if (ret < 0)
		fprintf(stderr, "journal: %s\n", error);
	CU_ASSERT_EQUAL(ret, 0);
}

/* Kills the store (no sync, no checkpoint), reopens it, and checks that
 * it dumps as want and is consistent. */
static void kill_reopen_expect(struct tstore *t, const struct guid *g, const char *want)
{
	stor_test_abandon(&t->db);
	t->db = open_dir(t->dir, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(t->db);
	char *after = dump(t->db);
	CU_ASSERT_STRING_EQUAL(after, want);
	check_all(t->db, g);
	free(after);
}

static void text_of(unsigned i, char *buf, size_t size)
{
	/* 4 KiB-ish texts that differ from message to message. */
	size_t n = (size_t)snprintf(buf, size, "Subject: message %u\r\n\r\n", i);
	while (n + 1 < size) {
		buf[n] = (char)('a' + (i + n) % 26);
		n++;
	}
	buf[n] = '\0';
}

/* Appends messages first..first+count-1 (texts by text_of), syncing now
 * and then and at the end. */
static void append_many(struct stor_db *db, const struct guid *g, unsigned first, unsigned count)
{
	char text[4000];
	const char *error = NULL;
	for (unsigned i = first; i < first + count; i++) {
		text_of(i, text, sizeof(text));
		tappend(db, g, 0, text, 0);
		if (i % 8 == 0)
			CU_ASSERT_EQUAL(stor_sync(db, &error), 0);
	}
	CU_ASSERT_EQUAL(stor_sync(db, &error), 0);
}

static void check_text_bytes(struct stor_db *db, const struct guid *mb, uint32_t uid,
			     const char *want)
{
	struct stor_msg msg;
	const char *error = NULL;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(db, mb, uid, &msg, &error), 1);
	struct buf out = BUF_INIT;
	CU_ASSERT_EQUAL(stor_text_read(db, &msg.guid, 0, msg.size, &out, &error), 0);
	CU_ASSERT(out.len == strlen(want) && memcmp(out.data, want, out.len) == 0);
	buf_free(&out);
	stor_msg_free(&msg);
}

/* The text of message uid is text_of(i). */
static void check_text(struct stor_db *db, const struct guid *mb, uint32_t uid, unsigned i)
{
	char want[4000];
	text_of(i, want, sizeof(want));
	check_text_bytes(db, mb, uid, want);
}

/* Copies the regular files of from (LevelDB's, not the journal directory)
 * into to, after deleting the regular files there. */
static void copy_files(const char *from, const char *to)
{
	DIR *d = opendir(to);
	struct dirent *de;
	while (d != NULL && (de = readdir(d)) != NULL) {
		char *path = xasprintf("%s/%s", to, de->d_name);
		struct stat st;
		if (lstat(path, &st) == 0 && S_ISREG(st.st_mode))
			unlink(path);
		free(path);
	}
	if (d != NULL)
		closedir(d);
	d = opendir(from);
	CU_ASSERT_PTR_NOT_NULL_FATAL(d);
	while ((de = readdir(d)) != NULL) {
		char *src = xasprintf("%s/%s", from, de->d_name);
		char *dst = xasprintf("%s/%s", to, de->d_name);
		struct stat st;
		if (lstat(src, &st) == 0 && S_ISREG(st.st_mode)) {
			FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
			CU_ASSERT(in != NULL && out != NULL);
			char tmp[65536];
			size_t n;
			while (in != NULL && out != NULL && (n = fread(tmp, 1, sizeof(tmp), in)) > 0)
				CU_ASSERT_EQUAL(fwrite(tmp, 1, n, out), n);
			if (in != NULL)
				fclose(in);
			if (out != NULL)
				fclose(out);
		}
		free(src);
		free(dst);
	}
	closedir(d);
}

/* Asserts that opening dir fails with a message containing what. */
static void expect_open_fails(const char *dir, const char *what)
{
	struct stor_settings set;
	struct stor_db *db = NULL;
	char *err = NULL;
	memset(&set, 0, sizeof(set));
	set.dir = dir;
	CU_ASSERT_EQUAL(stor_open(&set, &db, &err), -1);
	CU_ASSERT_PTR_NULL(db);
	CU_ASSERT_PTR_NOT_NULL(err != NULL ? strstr(err, what) : NULL);
	free(err);
}

/* A store with one message "hello" in alice's INBOX, synced. */
static struct guid store_with_hello(struct tstore *t)
{
	const char *error = NULL;
	tstore_open(t);
	struct guid g = tmailbox(t->db, "alice", "INBOX");
	tappend(t->db, &g, 0, "hello", 0);
	CU_ASSERT_EQUAL(stor_sync(t->db, &error), 0);
	return g;
}


/* A store with messages 1-3 in alice's INBOX, closed cleanly. */
static struct guid closed_store_with_three(struct tstore *t)
{
	tstore_open(t);
	struct guid g = tmailbox(t->db, "alice", "INBOX");
	append_many(t->db, &g, 1, 3);
	stor_close(&t->db);
	return g;
}

static void test_changes_only_in_journal_are_replayed(void)
{
	struct tstore t;
	const char *error = NULL;
	struct guid g = closed_store_with_three(&t);
	char *saved = test_mkdtemp();
	copy_files(t.dir, saved);
	t.db = open_dir(t.dir, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(t.db);
	append_many(t.db, &g, 4, 2);
	struct stor_store req;
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_ADD;
	req.flags = STOR_FLAG_FLAGGED;
	uint32_t uid = 2;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &uid, 1, &req, NULL, NULL, &error), 0);
	uid = 1;
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, &uid, 1, 0, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	char *before = dump(t.db);
	stor_test_abandon(&t.db);
	/* LevelDB loses everything since the checkpoint; the journal has it. */
	copy_files(saved, t.dir);
	test_rmtree(saved);
	free(saved);

	t.db = open_dir(t.dir, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(t.db);
	char *after = dump(t.db);
	CU_ASSERT_STRING_EQUAL(before, after);
	struct stor_mailbox mb;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t.db, &g, &mb, &error), 1);
	CU_ASSERT_EQUAL(mb.messages, 4);
	CU_ASSERT_EQUAL(mb.uidnext, 6);
	stor_mailbox_free(&mb);
	struct stor_msg msg;
	CU_ASSERT_EQUAL(stor_msg_get(t.db, &g, 1, &msg, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 2, &msg, &error), 1);
	CU_ASSERT(msg.flags & STOR_FLAG_FLAGGED);
	stor_msg_free(&msg);
	for (unsigned i = 2; i <= 5; i++)
		check_text(t.db, &g, i, i);
	check_all(t.db, &g);
	free(before);
	free(after);
	tstore_close(&t);
}

static void test_replaying_what_leveldb_has_changes_nothing(void)
{
	struct tstore t;
	const char *error = NULL;
	char text[4000];
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	for (unsigned i = 1; i <= 20; i++) {
		text_of(i, text, sizeof(text));
		tappend(t.db, &g, 0, text, i % 2 ? STOR_FLAG_SEEN : 0);
	}
	uint32_t uids[] = { 3, 7 };
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, uids, 2, 0, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	char *before = dump(t.db);
	/* A crash: no checkpoint, so opening replays batches LevelDB has. */
	kill_reopen_expect(&t, &g, before);
	free(before);
	tstore_close(&t);
}

static void test_torn_last_record_is_cut_and_kept_aside(void)
{
	struct tstore t;
	const char *error = NULL;
	char text[4000];
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	append_many(t.db, &g, 1, 4);
	CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	char *before = dump(t.db);
	stor_test_abandon(&t.db);
	/* Half a record: a header announcing more bytes than follow. */
	char *seg = last_segment_path(t.dir);
	struct stat st;
	CU_ASSERT_EQUAL_FATAL(stat(seg, &st), 0);
	int fd = open(seg, O_WRONLY | O_APPEND);
	CU_ASSERT_FATAL(fd >= 0);
	unsigned char torn[40] = { 0x12, 0x34, 0x56, 0x78, 0x00, 0x10, 0x00, 0x00, 'B' };
	CU_ASSERT_EQUAL(write(fd, torn, sizeof(torn)), (ssize_t)sizeof(torn));
	close(fd);

	t.db = open_dir(t.dir, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(t.db);
	char *after = dump(t.db);
	CU_ASSERT_STRING_EQUAL(before, after);
	struct stat st2;
	CU_ASSERT_EQUAL(stat(seg, &st2), 0);
	CU_ASSERT_EQUAL(st2.st_size, st.st_size);
	unsigned cut = 0;
	count_segments(t.dir, NULL, &cut);
	CU_ASSERT_EQUAL(cut, 1);
	/* Writing goes on after the cut, and survives the next open. */
	text_of(5, text, sizeof(text));
	tappend(t.db, &g, 0, text, 0);
	tstore_reopen(&t);
	check_text(t.db, &g, 5, 5);
	check_all(t.db, &g);
	free(before);
	free(after);
	free(seg);
	tstore_close(&t);
}

/* A store with SMALL_SEGMENT segments holding count messages (1..count)
 * in alice's INBOX. */
static struct guid small_segment_store(struct tstore *t, unsigned count)
{
	t->dir = test_mkdtemp();
	t->db = open_dir(t->dir, SMALL_SEGMENT);
	CU_ASSERT_PTR_NOT_NULL_FATAL(t->db);
	struct guid g = tmailbox(t->db, "alice", "INBOX");
	append_many(t->db, &g, 1, count);
	return g;
}

static void small_segment_reopen(struct tstore *t)
{
	stor_close(&t->db);
	t->db = open_dir(t->dir, SMALL_SEGMENT);
	CU_ASSERT_PTR_NOT_NULL_FATAL(t->db);
}

static void test_segments_of_expunged_mail_are_deleted(void)
{
	struct tstore t;
	const char *error = NULL;
	struct guid g = small_segment_store(&t, 100);
	unsigned full = count_segments(t.dir, NULL, NULL);
	CU_ASSERT(full >= 6);
	uint32_t uids[90];
	for (unsigned i = 0; i < 90; i++)
		uids[i] = i + 1;
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, uids, 90, 0, NULL, &error), 0);
	/* New mail fills new segments; the old ones go at the checkpoints. */
	append_many(t.db, &g, 101, 40);
	for (unsigned i = 0; i < 50; i++)
		CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	append_many(t.db, &g, 141, 20);
	uint64_t bytes = 0;
	unsigned now = count_segments(t.dir, &bytes, NULL);
	/* The status lines say the same. */
	struct buf st = BUF_INIT;
	stor_status(t.db, &st);
	char want[128];
	snprintf(want, sizeof(want), "store.journal_segments: %u\nstore.journal_bytes: %llu\n",
		 now, (unsigned long long)bytes);
	CU_ASSERT_PTR_NOT_NULL(strstr(buf_cstr(&st), want));
	unsigned long long live = 0;
	const char *lp = strstr(buf_cstr(&st), "store.text_bytes_live: ");
	CU_ASSERT_FATAL(lp != NULL);
	live = strtoull(lp + strlen("store.text_bytes_live: "), NULL, 10);
	/* 70 texts of about 4 KiB each are live. */
	CU_ASSERT(live > 70 * 3900 && live < 70 * 4200 && live <= bytes);
	buf_free(&st);
	/* 70 messages of about 4 KiB left: about 280 KiB in 64 KiB segments. */
	CU_ASSERT(bytes < 480 * 1024);
	CU_ASSERT(now < full + 6);
	for (unsigned i = 91; i <= 160; i++)
		check_text(t.db, &g, i, i);
	small_segment_reopen(&t);
	for (unsigned i = 91; i <= 160; i++)
		check_text(t.db, &g, i, i);
	check_all(t.db, &g);
	tstore_close(&t);
}

/* Pieces of stor_text_map, joined. */
static char *pieces_join(const stor_text_piece_list *l, size_t *len_r)
{
	size_t n = 0;
	for (size_t i = 0; i < l->count; i++)
		n += l->items[i].len;
	char *out = xmalloc(n + 1);
	n = 0;
	for (size_t i = 0; i < l->count; i++) {
		memcpy(out + n, l->items[i].data, l->items[i].len);
		n += l->items[i].len;
	}
	out[n] = '\0';
	*len_r = n;
	return out;
}

static void test_texts_read_in_place_outlive_their_segments(void)
{
	struct tstore t;
	const char *error = NULL;
	struct guid g = small_segment_store(&t, 100);
	unsigned full = count_segments(t.dir, NULL, NULL);
	stor_text_piece_list kept[100];
	char want[4000];
	for (unsigned i = 1; i <= 100; i++) {
		struct stor_msg msg;
		CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, i, &msg, &error), 1);
		memset(&kept[i - 1], 0, sizeof(kept[i - 1]));
		CU_ASSERT_EQUAL(stor_text_map(t.db, &msg.guid, 0, msg.size, &kept[i - 1], &error), 0);
		size_t len;
		char *got = pieces_join(&kept[i - 1], &len);
		text_of(i, want, sizeof(want));
		CU_ASSERT(len == strlen(want) && memcmp(got, want, len) == 0);
		free(got);
		/* a range, and one past the end */
		stor_text_piece_list part = ARRAY_INIT;
		CU_ASSERT_EQUAL(stor_text_map(t.db, &msg.guid, 100, 50, &part, &error), 0);
		got = pieces_join(&part, &len);
		CU_ASSERT(len == 50 && memcmp(got, want + 100, 50) == 0);
		free(got);
		stor_text_pieces_free(&part);
		CU_ASSERT_EQUAL(stor_text_map(t.db, &msg.guid, msg.size + 10, 5, &part, &error), 0);
		CU_ASSERT_EQUAL(part.count, 0);
		stor_text_pieces_free(&part);
		stor_msg_free(&msg);
	}
	/* The texts of the first 90 go, and with them their segments (as in
	 * the test above), while their pieces are still held. */
	uint32_t uids[90];
	for (unsigned i = 0; i < 90; i++)
		uids[i] = i + 1;
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, uids, 90, 0, NULL, &error), 0);
	append_many(t.db, &g, 101, 40);
	for (unsigned i = 0; i < 50; i++)
		CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	append_many(t.db, &g, 141, 20);
	CU_ASSERT(count_segments(t.dir, NULL, NULL) < full);
	for (unsigned i = 1; i <= 90; i++) {
		size_t len;
		char *got = pieces_join(&kept[i - 1], &len);
		text_of(i, want, sizeof(want));
		CU_ASSERT(len == strlen(want) && memcmp(got, want, len) == 0);
		free(got);
		stor_text_pieces_free(&kept[i - 1]);
	}
	/* Pieces may outlive the store itself. */
	tstore_close(&t);
	for (unsigned i = 91; i <= 100; i++) {
		size_t len;
		char *got = pieces_join(&kept[i - 1], &len);
		text_of(i, want, sizeof(want));
		CU_ASSERT(len == strlen(want) && memcmp(got, want, len) == 0);
		free(got);
		stor_text_pieces_free(&kept[i - 1]);
	}
}

static void test_a_damaged_chunk_is_not_read_in_place(void)
{
	struct tstore t;
	const char *error = NULL;
	struct guid g = small_segment_store(&t, 3);
	struct stor_msg msg;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 2, &msg, &error), 1);
	/* Flip one byte of message 2's text in the segment file. */
	char *seg = last_segment_path(t.dir);
	int fd = open(seg, O_RDWR);
	CU_ASSERT_FATAL(fd >= 0);
	char want[4000];
	text_of(2, want, sizeof(want));
	struct stat st;
	CU_ASSERT_FATAL(fstat(fd, &st) == 0);
	char *all = xmalloc((size_t)st.st_size);
	CU_ASSERT_FATAL(pread(fd, all, (size_t)st.st_size, 0) == st.st_size);
	char *at = memmem(all, (size_t)st.st_size, want, strlen(want));
	CU_ASSERT_FATAL(at != NULL);
	char flipped = (char)(at[500] ^ 1);
	CU_ASSERT(pwrite(fd, &flipped, 1, (off_t)(at - all) + 500) == 1);
	close(fd);
	free(all);
	free(seg);
	stor_text_piece_list l = ARRAY_INIT;
	/* Not read in place (1), and the copying read reports the damage. */
	CU_ASSERT_EQUAL(stor_text_map(t.db, &msg.guid, 0, msg.size, &l, &error), 1);
	CU_ASSERT_EQUAL(l.count, 0);
	stor_text_pieces_free(&l);
	struct buf out = BUF_INIT;
	CU_ASSERT_EQUAL(stor_text_read(t.db, &msg.guid, 0, msg.size, &out, &error), -1);
	buf_free(&out);
	stor_msg_free(&msg);
	/* The others still are. */
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	CU_ASSERT_EQUAL(stor_text_map(t.db, &msg.guid, 0, msg.size, &l, &error), 0);
	size_t len;
	char *got = pieces_join(&l, &len);
	text_of(1, want, sizeof(want));
	CU_ASSERT(len == strlen(want) && memcmp(got, want, len) == 0);
	free(got);
	stor_text_pieces_free(&l);
	stor_msg_free(&msg);
	tstore_close(&t);
}

static void test_mostly_dead_segments_are_compacted(void)
{
	struct tstore t;
	const char *error = NULL;
	struct guid g = small_segment_store(&t, 120);
	uint64_t full_bytes = 0;
	count_segments(t.dir, &full_bytes, NULL);
	/* Three of every four go: every segment keeps a few live texts, so
	 * only moving them frees space. */
	uint32_t uids[90];
	unsigned n = 0;
	for (unsigned i = 1; i <= 120; i++) {
		if (i % 4 != 0)
			uids[n++] = i;
	}
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, uids, n, 0, NULL, &error), 0);
	for (unsigned round = 0; round < 6; round++) {
		append_many(t.db, &g, 1000 + round * 20, 20);
		for (unsigned i = 0; i < 20; i++)
			CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	}
	/* 30 old texts and 120 new: about 600 KiB, not the 960 KiB written. */
	uint64_t bytes = 0;
	count_segments(t.dir, &bytes, NULL);
	CU_ASSERT(bytes < full_bytes + 200 * 1024);
	for (unsigned i = 4; i <= 120; i += 4)
		check_text(t.db, &g, i, i);
	small_segment_reopen(&t);
	for (unsigned i = 4; i <= 120; i += 4)
		check_text(t.db, &g, i, i);
	check_all(t.db, &g);
	tstore_close(&t);
}

static void test_texts_the_journal_lost_are_removed_with_their_messages(void)
{
	struct tstore t;
	const char *error = NULL;
	struct guid g = closed_store_with_three(&t);
	char *seg = last_segment_path(t.dir);
	struct stat st;
	CU_ASSERT_EQUAL_FATAL(stat(seg, &st), 0);
	t.db = open_dir(t.dir, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(t.db);
	append_many(t.db, &g, 4, 2);
	CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	stor_test_abandon(&t.db);
	/* A power failure: LevelDB's unsynced writes reached the disk, the
	 * journal's did not. */
	CU_ASSERT_EQUAL(truncate(seg, st.st_size), 0);

	t.db = open_dir(t.dir, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(t.db);
	struct stor_mailbox mb;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t.db, &g, &mb, &error), 1);
	CU_ASSERT_EQUAL(mb.messages, 3);
	stor_mailbox_free(&mb);
	struct stor_msg msg;
	CU_ASSERT_EQUAL(stor_msg_get(t.db, &g, 4, &msg, &error), 0);
	CU_ASSERT_EQUAL(stor_msg_get(t.db, &g, 5, &msg, &error), 0);
	for (unsigned i = 1; i <= 3; i++)
		check_text(t.db, &g, i, i);
	check_all(t.db, &g);
	char *before = dump(t.db);
	/* Repaired once: the next open changes nothing. */
	stor_close(&t.db);
	t.db = open_dir(t.dir, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(t.db);
	char *after = dump(t.db);
	CU_ASSERT_STRING_EQUAL(before, after);
	free(before);
	free(after);
	free(seg);
	tstore_close(&t);
}

/* Appends a record with a correct CRC (as the journal frames them) to the
 * file. */
static void append_record(const char *path, unsigned char type, const void *payload, uint32_t len)
{
	unsigned char hdr[9];
	hdr[4] = (unsigned char)len;
	hdr[5] = (unsigned char)(len >> 8);
	hdr[6] = (unsigned char)(len >> 16);
	hdr[7] = (unsigned char)(len >> 24);
	hdr[8] = type;
	uint32_t c = crc32c(crc32c(0, hdr + 4, 5), payload, len);
	for (int i = 0; i < 4; i++)
		hdr[i] = (unsigned char)(c >> (8 * i));
	FILE *f = fopen(path, "ab");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	CU_ASSERT_EQUAL(fwrite(hdr, 1, sizeof(hdr), f), sizeof(hdr));
	CU_ASSERT_EQUAL(fwrite(payload, 1, len, f), len);
	fclose(f);
}

static void test_well_framed_garbage_in_the_journal_fails_open_clearly(void)
{
	struct tstore t;
	struct guid g = store_with_hello(&t);
	stor_test_abandon(&t.db);
	char *seg = last_segment_path(t.dir);
	struct stat st;
	CU_ASSERT_EQUAL_FATAL(stat(seg, &st), 0);
	/* A batch whose operations run past its end: the CRC is right, so it
	 * is not a torn write but damage (or a hostile file). */
	unsigned char bad[] = { 1, 0xff, 0xff, 0xff, 0x7f, 'x' };
	append_record(seg, 'B', bad, sizeof(bad));
	expect_open_fails(t.dir, "corrupted");
	/* An unknown record type is refused the same way. */
	CU_ASSERT_EQUAL(truncate(seg, st.st_size), 0);
	append_record(seg, 'Z', bad, sizeof(bad));
	expect_open_fails(t.dir, "corrupted");
	/* Without the damage it opens; closed, it is checkpointed at its end.
	 * A segment shorter than its checkpoint lost synced data. */
	CU_ASSERT_EQUAL(truncate(seg, st.st_size), 0);
	t.db = open_dir(t.dir, 0);
	CU_ASSERT_PTR_NOT_NULL_FATAL(t.db);
	check_text_bytes(t.db, &g, 1, "hello");
	stor_close(&t.db);
	CU_ASSERT_EQUAL(truncate(seg, st.st_size - 10), 0);
	expect_open_fails(t.dir, "corrupted");
	free(seg);
	tstore_close(&t);
}

static void test_store_without_journal_is_refused_clearly(void)
{
	char *dir = test_mkdtemp();
	leveldb_options_t *o = leveldb_options_create();
	leveldb_options_set_create_if_missing(o, 1);
	char *lerr = NULL;
	leveldb_t *l = leveldb_open(o, dir, &lerr);
	CU_ASSERT_PTR_NULL_FATAL(lerr);
	leveldb_writeoptions_t *wo = leveldb_writeoptions_create();
	leveldb_put(l, wo, "Bxxxx", 5, "old", 3, &lerr);
	CU_ASSERT_PTR_NULL(lerr);
	leveldb_writeoptions_destroy(wo);
	leveldb_close(l);
	leveldb_options_destroy(o);

	expect_open_fails(dir, "older Starling");
	test_rmtree(dir);
	free(dir);
}

static void test_missing_journal_segment_fails_open_clearly(void)
{
	struct tstore t;
	store_with_hello(&t);
	stor_close(&t.db);
	char *seg = last_segment_path(t.dir);
	CU_ASSERT_EQUAL(unlink(seg), 0);
	free(seg);
	expect_open_fails(t.dir, "missing");
	tstore_close(&t);
}

static uint32_t mailbox_messages(struct stor_db *db, const struct guid *g)
{
	struct stor_mailbox mb;
	const char *error = NULL;
	if (stor_mailbox_get_by_guid(db, g, &mb, &error) != 1)
		return UINT32_MAX;
	uint32_t n = mb.messages;
	stor_mailbox_free(&mb);
	return n;
}

static void test_mailbox_records_read_back_right_after_each_write(void)
{
	struct tstore t;
	const char *error = NULL;
	tstore_open(&t);
	struct guid a = tmailbox(t.db, "alice", "A");
	struct guid b = tmailbox(t.db, "alice", "B");
	/* Alternating writes and reads of two mailboxes. */
	for (unsigned i = 1; i <= 6; i++) {
		tappend(t.db, i % 2 ? &a : &b, 0, "x", 0);
		CU_ASSERT_EQUAL(mailbox_messages(t.db, &a), (i + 1) / 2);
		CU_ASSERT_EQUAL(mailbox_messages(t.db, &b), i / 2);
	}
	/* A write that fails leaves the record as it was. */
	struct stor_append app;
	memset(&app, 0, sizeof(app));
	app.text = "y";
	app.text_len = 1;
	stor_test_fail_nth_write(t.db, 1);
	CU_ASSERT_EQUAL(stor_msg_append(t.db, &a, &app, NULL, NULL, &error), -1);
	CU_ASSERT_EQUAL(mailbox_messages(t.db, &a), 3);
	CU_ASSERT_EQUAL(stor_mailbox_rename(t.db, &a, "A2", &error), 0);
	struct stor_mailbox mb;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t.db, &a, &mb, &error), 1);
	CU_ASSERT_STRING_EQUAL(mb.name, "A2");
	stor_mailbox_free(&mb);
	CU_ASSERT_EQUAL(stor_mailbox_delete(t.db, &b, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_get_by_guid(t.db, &b, &mb, &error), 0);
	tcheck(t.db, &a);
	tstore_reopen(&t);
	CU_ASSERT_EQUAL(mailbox_messages(t.db, &a), 3);
	CU_ASSERT_EQUAL(stor_mailbox_get_by_guid(t.db, &b, &mb, &error), 0);
	tstore_close(&t);
}

/* The records of a segment from offset off on: how many of each type, and
 * the payload of the last batch ('B'). */
struct seg_records {
	unsigned texts, batches;
	unsigned char *last_batch;
	size_t last_batch_len;
};

static void read_records(const char *path, long off, struct seg_records *r)
{
	memset(r, 0, sizeof(*r));
	FILE *f = fopen(path, "rb");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	CU_ASSERT_EQUAL_FATAL(fseek(f, off, SEEK_SET), 0);
	unsigned char hdr[9];
	while (fread(hdr, 1, sizeof(hdr), f) == sizeof(hdr)) {
		size_t len = (size_t)hdr[4] | (size_t)hdr[5] << 8 | (size_t)hdr[6] << 16 |
			(size_t)hdr[7] << 24;
		unsigned char *payload = xmalloc(len + 1);
		CU_ASSERT_EQUAL_FATAL(fread(payload, 1, len, f), len);
		if (hdr[8] == 'T') {
			r->texts++;
			free(payload);
		} else {
			CU_ASSERT_EQUAL(hdr[8], 'B');
			r->batches++;
			free(r->last_batch);
			r->last_batch = payload;
			r->last_batch_len = len;
		}
	}
	fclose(f);
}

static unsigned count_bytes(const unsigned char *p, size_t len, const void *needle, size_t n)
{
	unsigned count = 0;
	for (size_t i = 0; i + n <= len; i++) {
		if (memcmp(p + i, needle, n) == 0)
			count++;
	}
	return count;
}

static void test_staged_changes_are_read_back_and_lost_together(void)
{
	struct tstore t;
	const char *error = NULL;
	char text[4000];
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	append_many(t.db, &g, 1, 2);
	char *before = dump(t.db);
	char *seg = last_segment_path(t.dir);
	struct stat st0, st;
	CU_ASSERT_EQUAL_FATAL(stat(seg, &st0), 0);

	/* Changes of one event-loop turn, not yet synced: every read sees
	 * them, and nothing reached the journal yet. */
	for (unsigned i = 3; i <= 12; i++) {
		text_of(i, text, sizeof(text));
		CU_ASSERT_EQUAL(tappend(t.db, &g, 0, text, 0), i);
		CU_ASSERT_EQUAL(mailbox_messages(t.db, &g), i);
	}
	uint32_t uid = 1;
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, &uid, 1, 0, NULL, &error), 0);
	struct stor_msg msg;
	CU_ASSERT_EQUAL(stor_msg_get(t.db, &g, 1, &msg, &error), 0);
	CU_ASSERT_EQUAL(stor_meta_set(t.db, "k", "v1", 2, &error), 0);
	CU_ASSERT_EQUAL(stor_meta_set(t.db, "k", "v2", 2, &error), 0);
	struct buf v = BUF_INIT;
	CU_ASSERT_EQUAL(stor_meta_get(t.db, "k", &v, &error), 1);
	CU_ASSERT(v.len == 2 && memcmp(v.data, "v2", 2) == 0);
	buf_free(&v);
	CU_ASSERT_EQUAL(stat(seg, &st), 0);
	CU_ASSERT_EQUAL(st.st_size, st0.st_size);
	/* Texts read back before they are written (the read writes them). */
	check_text(t.db, &g, 12, 12);

	/* Killed before the sync (and before anything wrote the changes out):
	 * the journal and LevelDB lose the same changes. */
	kill_reopen_expect(&t, &g, before);

	/* An iterator sees a mailbox made in the same turn (it writes the
	 * stage out first). */
	tmailbox(t.db, "alice", "Later");
	stor_mailbox_array mbs;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_list(t.db, "alice", &mbs, &error), 0);
	CU_ASSERT_EQUAL(mbs.count, 2);
	stor_mailbox_list_free(&mbs);
	free(before);
	free(seg);
	tstore_close(&t);
}

static void test_a_failed_journal_write_stops_the_store_until_reopened(void)
{
	struct tstore t;
	const char *error = NULL;
	char text[4000];
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	append_many(t.db, &g, 1, 3);
	char *before = dump(t.db);
	char *seg = last_segment_path(t.dir);
	struct stat st;
	CU_ASSERT_EQUAL_FATAL(stat(seg, &st), 0);
	/* Files may not grow past a little more than the segment now: the
	 * next text does not fit (the disk is full, as far as we know). */
	struct rlimit old, lim;
	CU_ASSERT_EQUAL_FATAL(getrlimit(RLIMIT_FSIZE, &old), 0);
	void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
	lim = old;
	lim.rlim_cur = (rlim_t)st.st_size + 1000;
	CU_ASSERT_EQUAL_FATAL(setrlimit(RLIMIT_FSIZE, &lim), 0);
	text_of(4, text, sizeof(text));
	tappend(t.db, &g, 0, text, 0);
	CU_ASSERT_EQUAL(stor_sync(t.db, &error), -1);
	CU_ASSERT_EQUAL(stor_last_error_kind(t.db), STOR_ERROR_INTERNAL);
	CU_ASSERT_EQUAL(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, old_handler);
	/* Readers saw a change that is lost: the store refuses more until it
	 * is reopened, which brings back what was synced. */
	struct stor_append app;
	memset(&app, 0, sizeof(app));
	app.text = "x";
	app.text_len = 1;
	CU_ASSERT_EQUAL(stor_msg_append(t.db, &g, &app, NULL, NULL, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(error, "restart the node"));
	CU_ASSERT_EQUAL(stor_last_error_kind(t.db), STOR_ERROR_BROKEN);
	kill_reopen_expect(&t, &g, before);
	tappend(t.db, &g, 0, text, 0);
	CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	check_text(t.db, &g, 4, 4);
	free(before);
	free(seg);
	tstore_close(&t);
}

static void test_a_group_commit_is_one_journal_write(void)
{
	struct tstore t;
	const char *error = NULL;
	char text[4000];
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	char *seg = last_segment_path(t.dir);
	struct stat st0;
	CU_ASSERT_EQUAL_FATAL(stat(seg, &st0), 0);
	for (unsigned i = 1; i <= 64; i++) {
		text_of(i, text, sizeof(text));
		tappend(t.db, &g, 0, text, 0);
	}
	CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	/* 64 texts and one batch, in which the mailbox record (rewritten by
	 * every append) appears once. */
	struct seg_records r;
	read_records(seg, (long)st0.st_size, &r);
	CU_ASSERT_EQUAL(r.texts, 64);
	CU_ASSERT_EQUAL(r.batches, 1);
	unsigned char key[1 + GUID_SIZE];
	key[0] = STOR_KEY_MAILBOX;
	memcpy(key + 1, g.b, GUID_SIZE);
	/* The key's length comes before it: u32 little-endian 17. */
	unsigned char framed[4 + sizeof(key)] = { sizeof(key), 0, 0, 0 };
	memcpy(framed + 4, key, sizeof(key));
	CU_ASSERT_EQUAL(count_bytes(r.last_batch, r.last_batch_len, framed, sizeof(framed)), 1);
	free(r.last_batch);
	/* And it replays into the same store. */
	char *before = dump(t.db);
	kill_reopen_expect(&t, &g, before);
	free(before);
	free(seg);
	tstore_close(&t);
}

struct durable_log {
	unsigned n;
	bool ok[8];
};

static void durable_cb(void *ctx, bool ok)
{
	struct durable_log *l = ctx;
	if (l->n < 8)
		l->ok[l->n] = ok;
	l->n++;
}

static bool wait_sync_fd(struct stor_db *db)
{
	struct pollfd p = { .fd = stor_sync_fd(db), .events = POLLIN };
	return poll(&p, 1, 10000) == 1;
}

/* Callbacks that note the order they ran in. */
struct ordered_cb {
	unsigned *next;
	unsigned ran;   /* 1 + position, 0 not yet */
	bool ok;
};

static void ordered_durable(void *ctx, bool ok)
{
	struct ordered_cb *c = ctx;
	c->ran = ++*c->next;
	c->ok = ok;
}

static void test_syncs_in_flight_complete_in_order(void)
{
	enum { N = STOR_SYNC_THREADS + 1 };
	struct tstore t;
	const char *error = NULL;
	unsigned ran = 0;
	struct ordered_cb cb[N];
	for (unsigned i = 0; i < N; i++)
		cb[i] = (struct ordered_cb){ &ran, 0, false };
	tstore_open(&t);
	CU_ASSERT_FATAL(stor_sync_fd(t.db) >= 0);
	/* Each change gets its own sync while a thread is free; the last
	 * one finds them all busy, unless the first already ended. */
	for (unsigned i = 0; i < N; i++) {
		char name[8];
		snprintf(name, sizeof(name), "k%u", i);
		CU_ASSERT_EQUAL(stor_meta_set(t.db, name, "1", 1, &error), 0);
		stor_on_durable(t.db, ordered_durable, &cb[i]);
		int started = stor_sync_start(t.db);
		CU_ASSERT(i < N - 1 ? started == 1 : started == 0 || started == 1);
	}
	CU_ASSERT_TRUE(stor_sync_busy(t.db));
	/* The loop's part: start what waits, finish what ended. */
	for (int i = 0; i < 200 && ran < N; i++) {
		if (stor_sync_start(t.db) == 0 && stor_sync_busy(t.db) && wait_sync_fd(t.db))
			stor_sync_finish(t.db);
	}
	for (unsigned i = 0; i < N; i++) {
		CU_ASSERT_EQUAL(cb[i].ran, i + 1);
		CU_ASSERT_TRUE(cb[i].ok);
	}
	CU_ASSERT_FALSE(stor_sync_pending(t.db));
	tstore_reopen(&t);
	struct buf v = BUF_INIT;
	char name[8];
	snprintf(name, sizeof(name), "k%u", N - 1);
	CU_ASSERT_EQUAL(stor_meta_get(t.db, name, &v, &error), 1);
	buf_free(&v);
	tstore_close(&t);
}

static void test_sync_in_helper_thread(void)
{
	struct tstore t;
	struct durable_log l;
	const char *error = NULL;
	memset(&l, 0, sizeof(l));
	tstore_open(&t);
	CU_ASSERT_FATAL(stor_sync_fd(t.db) >= 0);
	CU_ASSERT_EQUAL(stor_meta_set(t.db, "a", "1", 1, &error), 0);
	stor_on_durable(t.db, durable_cb, &l);
	CU_ASSERT_EQUAL(stor_sync_start(t.db), 1);
	CU_ASSERT_TRUE(stor_sync_busy(t.db));
	CU_ASSERT_EQUAL(l.n, 0);
	CU_ASSERT_FATAL(wait_sync_fd(t.db));
	stor_sync_finish(t.db);
	CU_ASSERT_EQUAL(l.n, 1);
	CU_ASSERT_TRUE(l.ok[0]);
	/* A change made after it waits for the next one. */
	CU_ASSERT_EQUAL(stor_meta_set(t.db, "b", "2", 1, &error), 0);
	stor_on_durable(t.db, durable_cb, &l);
	CU_ASSERT_EQUAL(l.n, 1);
	CU_ASSERT_TRUE(stor_sync_pending(t.db));
	CU_ASSERT_EQUAL(stor_sync_start(t.db), 1);
	CU_ASSERT_FATAL(wait_sync_fd(t.db));
	stor_sync_finish(t.db);
	CU_ASSERT_EQUAL(l.n, 2);
	CU_ASSERT_TRUE(l.ok[1]);
	CU_ASSERT_FALSE(stor_sync_pending(t.db));
	/* Nothing to sync: the callback runs at once. */
	stor_on_durable(t.db, durable_cb, &l);
	CU_ASSERT_EQUAL(stor_sync_start(t.db), 0);
	CU_ASSERT_EQUAL(l.n, 3);
	/* stor_sync() finishes a sync in flight first. */
	CU_ASSERT_EQUAL(stor_meta_set(t.db, "c", "3", 1, &error), 0);
	stor_on_durable(t.db, durable_cb, &l);
	CU_ASSERT_EQUAL(stor_sync_start(t.db), 1);
	CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	CU_ASSERT_EQUAL(l.n, 4);
	CU_ASSERT_TRUE(l.ok[3]);
	CU_ASSERT_FALSE(stor_sync_busy(t.db));
	/* Its signal may still be pending: finishing clears it (an event loop
	 * would otherwise see the fd readable forever), and runs nothing. */
	stor_sync_finish(t.db);
	CU_ASSERT_EQUAL(l.n, 4);
	struct pollfd p = { .fd = stor_sync_fd(t.db), .events = POLLIN };
	CU_ASSERT_EQUAL(poll(&p, 1, 0), 0);
	tstore_reopen(&t);
	struct buf v = BUF_INIT;
	CU_ASSERT_EQUAL(stor_meta_get(t.db, "c", &v, &error), 1);
	buf_free(&v);
	tstore_close(&t);
}

/* A model of keys under one prefix: values, or absent (len < 0). */
#define RND_KEYS 40

struct rnd_model {
	long len[RND_KEYS];
	unsigned char *val[RND_KEYS];
};

static void rnd_key(struct stor_key *k, unsigned i)
{
	stor_key_init(k, 'Z'); /* a prefix the store itself never uses */
	stor_key_u32(k, i);
}

static void rnd_fill(unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(seed * 31 + i * 7);
}

/* Every key reads back as the model says, one by one and by iterating. */
static void rnd_check(struct stor_db *db, const struct rnd_model *m)
{
	const char *error = NULL;
	for (unsigned i = 0; i < RND_KEYS; i++) {
		struct stor_key k;
		char *v = NULL;
		size_t len = 0;
		rnd_key(&k, i);
		int ret = stor_db_get(db, &k, &v, &len, &error);
		CU_ASSERT_EQUAL(ret, m->len[i] >= 0 ? 1 : 0);
		if (ret == 1 && m->len[i] >= 0)
			CU_ASSERT(len == (size_t)m->len[i] && memcmp(v, m->val[i], len) == 0);
		free(v);
	}
	struct stor_key prefix;
	stor_key_init(&prefix, 'Z');
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	const unsigned char *key;
	size_t klen;
	unsigned next = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		CU_ASSERT_EQUAL_FATAL(klen, 5);
		unsigned i = stor_be32(key + 1);
		while (next < i)
			CU_ASSERT(m->len[next++] < 0);
		size_t vlen;
		const char *v = leveldb_iter_value(it, &vlen);
		CU_ASSERT(i < RND_KEYS && m->len[i] >= 0 && vlen == (size_t)m->len[i] &&
			  memcmp(v, m->val[i], vlen) == 0);
		next = i + 1;
		leveldb_iter_next(it);
	}
	while (next < RND_KEYS)
		CU_ASSERT(m->len[next++] < 0);
	CU_ASSERT_EQUAL(stor_iter_end(db, it, &error), 0);
}

static void test_staged_reads_agree_with_leveldb_under_random_writes(void)
{
	struct tstore t;
	const char *error = NULL;
	struct rnd_model m;
	for (unsigned i = 0; i < RND_KEYS; i++) {
		m.len[i] = -1;
		m.val[i] = NULL;
	}
	tstore_open(&t);
	CU_ASSERT_FATAL(stor_sync_fd(t.db) >= 0);
	unsigned seed = 12345;
	for (unsigned step = 0; step < 4000; step++) {
		seed = seed * 1103515245u + 12345u;
		unsigned r = (seed >> 8) % 1000, i = (seed >> 20) % RND_KEYS;
		struct stor_key k;
		rnd_key(&k, i);
		if (r < 450) {
			/* Mostly small values; now and then one past the stage's
			 * bound, which writes the stage out. */
			size_t n = r < 3 ? 1200 * 1024 : (seed >> 4) % 3000;
			free(m.val[i]);
			m.val[i] = xmalloc(n + 1);
			rnd_fill(m.val[i], n, step);
			m.len[i] = (long)n;
			struct stor_batch *wb = stor_batch_new();
			stor_batch_put(wb, &k, m.val[i], n);
			CU_ASSERT_EQUAL(stor_db_write(t.db, wb, &error), 0);
			stor_batch_free(wb);
		} else if (r < 700) {
			m.len[i] = -1;
			struct stor_batch *wb = stor_batch_new();
			stor_batch_del(wb, &k);
			CU_ASSERT_EQUAL(stor_db_write(t.db, wb, &error), 0);
			stor_batch_free(wb);
		} else if (r < 960) {
			char *v = NULL;
			size_t len = 0;
			int ret = stor_db_get(t.db, &k, &v, &len, &error);
			CU_ASSERT_EQUAL(ret, m.len[i] >= 0 ? 1 : 0);
			if (ret == 1 && m.len[i] >= 0)
				CU_ASSERT(len == (size_t)m.len[i] && memcmp(v, m.val[i], len) == 0);
			free(v);
		} else if (r < 975) {
			rnd_check(t.db, &m);
		} else if (r < 985) {
			CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
		} else {
			/* As the loop does: a sync started, finished later. */
			if (stor_sync_start(t.db) == 0 && stor_sync_busy(t.db) &&
			    wait_sync_fd(t.db))
				stor_sync_finish(t.db);
		}
	}
	rnd_check(t.db, &m);
	tstore_reopen(&t);
	rnd_check(t.db, &m);
	for (unsigned i = 0; i < RND_KEYS; i++)
		free(m.val[i]);
	tstore_close(&t);
}

const struct test_case storage_journal_cases[] = {
	{ "mailbox records read back right after each write",
	  test_mailbox_records_read_back_right_after_each_write },
	{ "sync in the helper thread completes callbacks in order", test_sync_in_helper_thread },
	{ "syncs in flight complete in the order they started",
	  test_syncs_in_flight_complete_in_order },
	{ "staged changes are read back, and lost together by a kill",
	  test_staged_changes_are_read_back_and_lost_together },
	{ "a group commit is one journal write", test_a_group_commit_is_one_journal_write },
	{ "staged reads agree with LevelDB under random writes",
	  test_staged_reads_agree_with_leveldb_under_random_writes },
	{ "a failed journal write stops the store until it is reopened",
	  test_a_failed_journal_write_stops_the_store_until_reopened },
	{ "changes only in the journal are replayed on open",
	  test_changes_only_in_journal_are_replayed },
	{ "replaying what LevelDB already has changes nothing",
	  test_replaying_what_leveldb_has_changes_nothing },
	{ "a torn last record is cut off and kept aside", test_torn_last_record_is_cut_and_kept_aside },
	{ "segments of expunged mail are deleted", test_segments_of_expunged_mail_are_deleted },
	{ "mostly dead segments are compacted", test_mostly_dead_segments_are_compacted },
	{ "texts read in place outlive their segments",
	  test_texts_read_in_place_outlive_their_segments },
	{ "a damaged chunk is not read in place", test_a_damaged_chunk_is_not_read_in_place },
	{ "texts the journal lost are removed with their messages",
	  test_texts_the_journal_lost_are_removed_with_their_messages },
	{ "well-framed garbage in the journal fails open clearly",
	  test_well_framed_garbage_in_the_journal_fails_open_clearly },
	{ "a store without a journal is refused clearly",
	  test_store_without_journal_is_refused_clearly },
	{ "a missing journal segment fails open clearly",
	  test_missing_journal_segment_fails_open_clearly },
	{ NULL, NULL },
};
