/* Unit tests of storage/ under failure: corrupt records, injected write
 * errors, and a second process opening the same store. */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/xalloc.h"
#include "storage/storage-private.h"
#include "tests/storage/tests.h"

static void test_corrupt_message_record_is_a_clear_error(void)
{
	struct tstore t;
	struct stor_msg msg;
	stor_msg_list list;
	struct stor_key k;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	tappend(t.db, &g, 0, "fine", 0);
	tappend(t.db, &g, 0, "victim", 0);
	stor_key_init(&k, STOR_KEY_MSG);
	stor_key_guid(&k, &g);
	stor_key_u32(&k, 2);
	CU_ASSERT_EQUAL(stor_test_raw_put(t.db, k.b, k.len, "\001garbage", 8, &error), 0);
	CU_ASSERT_EQUAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	stor_msg_free(&msg);
	CU_ASSERT_EQUAL(stor_msg_get(t.db, &g, 2, &msg, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(error, "corrupted"));
	CU_ASSERT_PTR_NOT_NULL(strstr(stor_last_error(t.db), "message"));
	CU_ASSERT_EQUAL(stor_msg_list_range(t.db, &g, 1, UINT32_MAX, &list, &error), -1);
	uint32_t uid = 2;
	struct stor_store req;
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_ADD;
	req.flags = STOR_FLAG_SEEN;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &uid, 1, &req, NULL, NULL, &error), -1);
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, &uid, 1, 0, NULL, &error), -1);
	/* A record with trailing bytes is as bad as a short one. */
	char *v;
	size_t len;
	stor_key_init(&k, STOR_KEY_MSG);
	stor_key_guid(&k, &g);
	stor_key_u32(&k, 1);
	CU_ASSERT_EQUAL_FATAL(stor_db_get(t.db, &k, &v, &len, &error), 1);
	char *longer = xmalloc(len + 1);
	memcpy(longer, v, len);
	longer[len] = 'x';
	CU_ASSERT_EQUAL(stor_test_raw_put(t.db, k.b, k.len, longer, len + 1, &error), 0);
	CU_ASSERT_EQUAL(stor_msg_get(t.db, &g, 1, &msg, &error), -1);
	free(v);
	free(longer);
	tstore_close(&t);
}

static void test_corrupt_mailbox_record_is_a_clear_error(void)
{
	struct tstore t;
	struct stor_key k;
	stor_mailbox_array list;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	stor_key_init(&k, STOR_KEY_MAILBOX);
	stor_key_guid(&k, &g);
	CU_ASSERT_EQUAL(stor_test_raw_put(t.db, k.b, k.len, "\001", 1, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_get(t.db, "alice", "INBOX", NULL, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(error, "corrupted"));
	CU_ASSERT_EQUAL(stor_mailbox_list(t.db, "alice", &list, &error), -1);
	struct stor_append app;
	memset(&app, 0, sizeof(app));
	app.text = "x";
	app.text_len = 1;
	CU_ASSERT_EQUAL(stor_msg_append(t.db, &g, &app, NULL, NULL, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(error, "corrupted"));
	tstore_close(&t);
}

static void test_corrupt_leveldb_file_fails_open_clearly(void)
{
	struct tstore t;
	struct stor_settings set;
	struct stor_db *db = NULL;
	char *err = NULL;
	tstore_open(&t);
	stor_close(&t.db);
	/* Damage the CURRENT pointer: LevelDB cannot find its manifest. */
	char *path = xasprintf("%s/CURRENT", t.dir);
	FILE *f = fopen(path, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs("MANIFEST-999999\n", f);
	fclose(f);
	memset(&set, 0, sizeof(set));
	set.dir = t.dir;
	CU_ASSERT_EQUAL(stor_open(&set, &db, &err), -1);
	CU_ASSERT_PTR_NULL(db);
	CU_ASSERT_PTR_NOT_NULL_FATAL(err);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, t.dir));
	free(err);
	free(path);
	test_rmtree(t.dir);
	free(t.dir);
}

/* Flips one byte of the text pattern in every table file of dir.  Returns
 * how many files were damaged. */
static int damage_tables(const char *dir, const unsigned char *pattern, size_t plen)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int damaged = 0;
	if (d == NULL)
		return 0;
	while ((de = readdir(d)) != NULL) {
		size_t n = strlen(de->d_name);
		if (n < 4 || (strcmp(de->d_name + n - 4, ".ldb") != 0 &&
			      strcmp(de->d_name + n - 4, ".jnl") != 0))
			continue;
		char *path = xasprintf("%s/%s", dir, de->d_name);
		FILE *f = fopen(path, "r+b");
		free(path);
		if (f == NULL)
			continue;
		struct buf content = BUF_INIT;
		unsigned char tmp[65536];
		size_t r;
		while ((r = fread(tmp, 1, sizeof(tmp), f)) > 0)
			buf_append(&content, tmp, r);
		unsigned char *hit = memmem(content.data, content.len, pattern, plen);
		if (hit != NULL) {
			long off = (long)(hit - content.data) + (long)plen / 2;
			unsigned char c = content.data[off] ^ 0xff;
			fseek(f, off, SEEK_SET);
			fwrite(&c, 1, 1, f);
			damaged++;
		}
		buf_free(&content);
		fclose(f);
	}
	closedir(d);
	return damaged;
}

static void test_damaged_text_is_reported_as_corruption(void)
{
	struct tstore t;
	struct stor_settings set;
	struct stor_msg msg;
	const char *error = NULL;
	char *err = NULL;
	unsigned char text[20000];
	for (size_t i = 0; i < sizeof(text); i++)
		text[i] = (unsigned char)("corruptme"[i % 9]);
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	struct stor_append app;
	memset(&app, 0, sizeof(app));
	app.text = text;
	app.text_len = sizeof(text);
	CU_ASSERT_EQUAL_FATAL(stor_msg_append(t.db, &g, &app, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	/* The text is in the journal, not in LevelDB's tables. */
	tstore_reopen(&t);
	stor_close(&t.db);
	char *jdir = xasprintf("%s/journal", t.dir);
	CU_ASSERT_FATAL(damage_tables(jdir, text, 4096) > 0);
	free(jdir);
	memset(&set, 0, sizeof(set));
	set.dir = t.dir;
	if (stor_open(&set, &t.db, &err) < 0) {
		/* Found at open: fine too, if said clearly. */
		CU_ASSERT_PTR_NOT_NULL(strstr(err, "corrupt"));
		free(err);
	} else {
		struct buf out = BUF_INIT;
		CU_ASSERT_EQUAL(stor_text_read(t.db, &msg.guid, 0, sizeof(text), &out, &error), -1);
		CU_ASSERT_PTR_NOT_NULL(strstr(error, "store is corrupted"));
		buf_free(&out);
	}
	stor_msg_free(&msg);
	tstore_close(&t);
}

static void test_failed_write_leaves_store_consistent(void)
{
	struct tstore t;
	struct stor_mailbox mb;
	struct stor_store req;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	tappend(t.db, &g, 0, "one", 0);
	tappend(t.db, &g, 0, "two", 0);
	/* Every kind of mutation, each failing at its first write. */
	struct stor_append app;
	memset(&app, 0, sizeof(app));
	app.text = "three";
	app.text_len = 5;
	stor_test_fail_nth_write(t.db, 1);
	CU_ASSERT_EQUAL(stor_msg_append(t.db, &g, &app, NULL, NULL, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(error, "injected"));
	uint32_t uid = 1;
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_ADD;
	req.flags = STOR_FLAG_SEEN;
	stor_test_fail_nth_write(t.db, 1);
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &uid, 1, &req, NULL, NULL, &error), -1);
	stor_test_fail_nth_write(t.db, 1);
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, &uid, 1, 0, NULL, &error), -1);
	stor_test_fail_nth_write(t.db, 1);
	CU_ASSERT_EQUAL(stor_msg_copy(t.db, &g, 1, &g, 0, 0, NULL, NULL, &error), -1);
	stor_test_fail_nth_write(t.db, 1);
	CU_ASSERT_EQUAL(stor_msg_renumber(t.db, &g, 1, 10, 0, &error), -1);
	stor_test_fail_nth_write(t.db, 1);
	CU_ASSERT_EQUAL(stor_mailbox_rename(t.db, &g, "New", &error), -1);
	stor_test_fail_nth_write(t.db, 1);
	CU_ASSERT_EQUAL(stor_mailbox_delete(t.db, &g, &error), -1);
	/* A big text (several journal chunks): its batch fails. */
	size_t n = 3 * STOR_TEXT_CHUNK;
	unsigned char *big = xcalloc(1, n);
	app.text = big;
	app.text_len = n;
	stor_test_fail_nth_write(t.db, 1);
	CU_ASSERT_EQUAL(stor_msg_append(t.db, &g, &app, NULL, NULL, &error), -1);
	free(big);

	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t.db, &g, &mb, &error), 1);
	CU_ASSERT_EQUAL(mb.messages, 2);
	CU_ASSERT_EQUAL(mb.uidnext, 3);
	CU_ASSERT_EQUAL(mb.highestmodseq, 2);
	CU_ASSERT_EQUAL(mb.unseen, 2);
	CU_ASSERT_STRING_EQUAL(mb.name, "INBOX");
	stor_mailbox_free(&mb);
	tcheck(t.db, &g);
	/* After reopening (which collects the half-written text), the same
	 * operations succeed. */
	tstore_reopen(&t);
	tcheck(t.db, &g);
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &uid, 1, &req, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_msg_renumber(t.db, &g, 1, 10, 0, &error), 0);
	tcheck(t.db, &g);
	tstore_close(&t);
}

static void test_open_fail_nth_write_setting(void)
{
	struct stor_settings set;
	struct stor_db *db = NULL;
	char *err = NULL;
	const char *error = NULL;
	char *dir = test_mkdtemp();
	memset(&set, 0, sizeof(set));
	set.dir = dir;
	set.fail_nth_write = 2;
	CU_ASSERT_EQUAL_FATAL(stor_open(&set, &db, &err), 0);
	CU_ASSERT_EQUAL(stor_meta_set(db, "a", "1", 1, &error), 0);
	CU_ASSERT_EQUAL(stor_meta_set(db, "b", "1", 1, &error), -1);
	CU_ASSERT_EQUAL(stor_meta_set(db, "c", "1", 1, &error), 0);
	stor_close(&db);
	test_rmtree(dir);
	free(dir);
}

static void test_second_open_of_same_dir_fails_clearly(void)
{
	struct tstore t;
	struct stor_settings set;
	struct stor_db *db = NULL;
	char *err = NULL;
	tstore_open(&t);
	memset(&set, 0, sizeof(set));
	set.dir = t.dir;
	/* In this process... */
	CU_ASSERT_EQUAL(stor_open(&set, &db, &err), -1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(err);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "in use by another process"));
	free(err);
	/* ...and in another one. */
	pid_t pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		err = NULL;
		int ok = stor_open(&set, &db, &err) == -1 && err != NULL &&
			strstr(err, "in use by another process") != NULL;
		_exit(ok ? 0 : 1);
	}
	int status = 0;
	CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
	CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	/* Closing releases it. */
	stor_close(&t.db);
	CU_ASSERT_EQUAL(stor_open(&set, &db, &err), 0);
	stor_close(&db);
	test_rmtree(t.dir);
	free(t.dir);
}

/* Campaign 13180: a node restarted while a `starling` command that had
 * found no node running held the store: the start failed at once as "in
 * use".  With lock_wait_ms it waits for the other process to let go. */
static void test_open_waits_for_the_lock(void)
{
	struct tstore t;
	struct stor_settings set;
	struct stor_db *db = NULL;
	char *err = NULL;
	int ready[2], go[2];
	tstore_open(&t);
	stor_close(&t.db);
	CU_ASSERT_FATAL(pipe(ready) == 0 && pipe(go) == 0);
	memset(&set, 0, sizeof(set));
	set.dir = t.dir;
	pid_t pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		/* The other process: holds the store until told, then a little
		 * longer. */
		char c = 0;
		if (stor_open(&set, &db, &err) < 0)
			_exit(1);
		if (write(ready[1], "r", 1) != 1 || read(go[0], &c, 1) != 1)
			_exit(2);
		struct timespec ts = { 0, 200 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		stor_close(&db);
		_exit(0);
	}
	char c = 0;
	CU_ASSERT_EQUAL_FATAL(read(ready[0], &c, 1), 1);
	/* Without a wait: refused at once. */
	CU_ASSERT_EQUAL(stor_open(&set, &db, &err), -1);
	CU_ASSERT_PTR_NOT_NULL(err != NULL ? strstr(err, "in use by another process") : NULL);
	free(err);
	err = NULL;
	CU_ASSERT_EQUAL(write(go[1], "g", 1), 1);
	/* With one: opened once the other process let go. */
	set.lock_wait_ms = 20000;
	CU_ASSERT_EQUAL(stor_open(&set, &db, &err), 0);
	if (err != NULL)
		fprintf(stderr, "stor_open: %s\n", err);
	free(err);
	stor_close(&db);
	int status = 0;
	CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
	CU_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	close(ready[0]);
	close(ready[1]);
	close(go[0]);
	close(go[1]);
	test_rmtree(t.dir);
	free(t.dir);
}

static void test_open_creates_missing_parent_dirs(void)
{
	struct stor_settings set;
	struct stor_db *db = NULL;
	char *err = NULL;
	char *base = test_mkdtemp();
	char *dir = xasprintf("%s/a/b/store", base);
	memset(&set, 0, sizeof(set));
	set.dir = dir;
	CU_ASSERT_EQUAL(stor_open(&set, &db, &err), 0);
	stor_close(&db);
	set.dir = "";
	CU_ASSERT_EQUAL(stor_open(&set, &db, &err), -1);
	free(err);
	test_rmtree(base);
	free(base);
	free(dir);
}

/* The kind of the tombstone at uid (1 a user's, 0 the engine's), -1 none,
 * -2 when reading fails. */
static int tomb_kind(struct stor_db *db, const struct guid *mb, uint32_t uid)
{
	stor_msg_list msgs;
	stor_tombstone_list tombs;
	const char *error;
	if (stor_changes_since(db, mb, 0, &msgs, &tombs, &error) < 0)
		return -2;
	int kind = -1;
	for (size_t i = 0; i < tombs.count; i++) {
		if (tombs.items[i].uid == uid)
			kind = tombs.items[i].user ? 1 : 0;
	}
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&tombs);
	return kind;
}

/* A tombstone records who expunged (a byte after the GUID and modseq); a
 * record of an older store, without it, reads as the engine's, and a value
 * other than 0 or 1 is corruption. */
static void test_tombstone_kind_and_old_records(void)
{
	struct tstore t;
	struct stor_key k;
	const char *error = NULL;
	char *v;
	size_t len;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	tappend(t.db, &g, 0, "one", 0);
	tappend(t.db, &g, 0, "two", 0);
	uint32_t one = 1;
	CU_ASSERT_EQUAL_FATAL(stor_msg_expunge(t.db, &g, &one, 1, 0, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(t.db, &g, 2, 7, 0, &error), 0);
	CU_ASSERT_EQUAL(tomb_kind(t.db, &g, 1), 1);
	CU_ASSERT_EQUAL(tomb_kind(t.db, &g, 2), 0);
	stor_key_init(&k, STOR_KEY_TOMB);
	stor_key_guid(&k, &g);
	stor_key_u32(&k, 1);
	CU_ASSERT_EQUAL_FATAL(stor_db_get(t.db, &k, &v, &len, &error), 1);
	CU_ASSERT_EQUAL_FATAL(len, GUID_SIZE + 9);
	CU_ASSERT_EQUAL(v[GUID_SIZE + 8], 1);
	/* As an older store wrote it: GUID and modseq only. */
	CU_ASSERT_EQUAL(stor_test_raw_put(t.db, k.b, k.len, v, GUID_SIZE + 8, &error), 0);
	CU_ASSERT_EQUAL(tomb_kind(t.db, &g, 1), 0);
	CU_ASSERT_EQUAL(stor_mailbox_check(t.db, &g, &error), 0);
	v[GUID_SIZE + 8] = 2;
	CU_ASSERT_EQUAL(stor_test_raw_put(t.db, k.b, k.len, v, GUID_SIZE + 9, &error), 0);
	CU_ASSERT_EQUAL(tomb_kind(t.db, &g, 1), -2);
	free(v);
	tstore_close(&t);
}

/* The size of LevelDB's newest log file in dir (0 when none). */
static off_t newest_ldb_log_size(const char *dir)
{
	DIR *d = opendir(dir);
	CU_ASSERT_PTR_NOT_NULL_FATAL(d);
	unsigned long best = 0;
	off_t size = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		unsigned long n;
		char tail[8];
		if (sscanf(e->d_name, "%lu.%7s", &n, tail) != 2 || strcmp(tail, "log") != 0 ||
		    n < best)
			continue;
		char path[4096];
		struct stat st;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (stat(path, &st) == 0) {
			best = n;
			size = st.st_size;
		}
	}
	closedir(d);
	return size;
}

/* Campaign 14106: a store that LevelDB called corrupted ("checksum
 * mismatch") at every open after a full disk.  LevelDB goes on appending to
 * its log after a write that failed half-way (only a failed sync stops it),
 * so the next record followed a torn one.  A file size limit tears one
 * write here the way a full disk does (a short write, then an error). */
static void test_torn_leveldb_write_then_reopen(void)
{
	struct tstore t;
	struct stor_msg msg;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	tappend(t.db, &g, 0, "kept", 0);
	CU_ASSERT_EQUAL_FATAL(stor_sync(t.db, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);

	struct rlimit old, lim;
	CU_ASSERT_EQUAL_FATAL(getrlimit(RLIMIT_FSIZE, &old), 0);
	void (*old_xfsz)(int) = signal(SIGXFSZ, SIG_IGN);
	lim = old;
	lim.rlim_cur = (rlim_t)newest_ldb_log_size(t.dir) + 100;
	CU_ASSERT_EQUAL_FATAL(setrlimit(RLIMIT_FSIZE, &lim), 0);
	/* A derived record (a cache: its writer ignores a failure) of 16 KiB
	 * goes straight to LevelDB: cut after 100 bytes. */
	size_t n = 16 * 1024;
	char *data = xcalloc(1, n);
	memset(data, 'd', n);
	int r = stor_derived_put(t.db, &msg.guid, data, n, &error);
	CU_ASSERT_EQUAL(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, old_xfsz);
	CU_ASSERT_EQUAL(r, -1);

	/* The space is back.  Whatever the store still accepts must not land
	 * behind the torn record. */
	uint32_t uid = 1;
	struct stor_store req;
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_ADD;
	req.flags = STOR_FLAG_FLAGGED;
	(void)stor_derived_put(t.db, &msg.guid, data, n, &error);
	int stored = stor_msg_store(t.db, &g, &uid, 1, &req, NULL, NULL, &error);
	if (stored == 0)
		stored = stor_sync(t.db, &error);
	/* Refused, as after any failed write, until the store is reopened. */
	CU_ASSERT_EQUAL(stored, -1);
	free(data);
	stor_msg_free(&msg);

	tstore_reopen(&t);
	CU_ASSERT_EQUAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	stor_msg_free(&msg);
	tcheck(t.db, &g);
	/* And it takes changes again. */
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &uid, 1, &req, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	tstore_reopen(&t);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	CU_ASSERT(msg.flags & STOR_FLAG_FLAGGED);
	stor_msg_free(&msg);
	tstore_close(&t);
}

const struct test_case storage_robust_cases[] = {
	{ "corrupt message record is a clear error", test_corrupt_message_record_is_a_clear_error },
	{ "corrupt mailbox record is a clear error", test_corrupt_mailbox_record_is_a_clear_error },
	{ "tombstones say who expunged; old records are the engine's",
	  test_tombstone_kind_and_old_records },
	{ "corrupt LevelDB files fail open clearly", test_corrupt_leveldb_file_fails_open_clearly },
	{ "damaged text in the journal is reported as corruption", test_damaged_text_is_reported_as_corruption },
	{ "failed write leaves the store consistent", test_failed_write_leaves_store_consistent },
	{ "fail_nth_write setting fails exactly the Nth write", test_open_fail_nth_write_setting },
	{ "second open of the same dir fails clearly", test_second_open_of_same_dir_fails_clearly },
	{ "open creates missing parent dirs", test_open_creates_missing_parent_dirs },
	{ "open waits for another process to let go of the store (13180)",
	  test_open_waits_for_the_lock },
	{ "a torn LevelDB write stops writes; the store opens again (14106)",
	  test_torn_leveldb_write_then_reopen },
	{ NULL, NULL },
};
