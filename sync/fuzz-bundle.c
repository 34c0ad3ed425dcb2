/* libFuzzer harness for bundle import (sync-bundle.c, SPEC.md 11).
 *
 * A real store (opened once, in a temporary directory) holds a user with
 * mail, and every input is imported into it.  The first byte picks what
 * the rest is:
 *   0  a whole bundle file: the header, length, trailer, digest and
 *      signature checks (almost every input stops there, as it must);
 *   1  a command stream, sealed here with the right key and a fresh
 *      CREATED: the inflater, the command stream loader (every command,
 *      limit and check on the scratch store) and the merge into the store;
 *   2  a body taken as the zlib data itself, with sizes from the next four
 *      bytes, signed here: the inflater's size and stream checks.
 * Each import must either succeed or fail with an error message, and the
 * store must stay consistent (stor_mailbox_check on every mailbox). */
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "lib/log.h"
#include "lib/str.h"
#include "lib/xalloc.h"
#include "storage/storage.h"
#include "sync/sync-bundle.h"

#define USER "alice"

static const unsigned char secret[] = "fuzz-secret-fuzz-secret-fuzz-secret-0123";
static struct stor_db *db;
static char dir[64];
static int64_t created = 1700000000;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

/* libFuzzer ends a timed run with exit(): the store goes with it. */
static void cleanup(void)
{
	stor_close(&db);
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void setup(void)
{
	strcpy(dir, "/tmp/fuzz-bundle.XXXXXX");
	if (mkdtemp(dir) == NULL)
		abort();
	char *store = xasprintf("%s/store", dir);
	struct stor_settings set = { .dir = store };
	char *err = NULL;
	if (stor_open(&set, &db, &err) < 0)
		abort();
	free(store);
	const char *e;
	struct guid g;
	guid_from_hex("0123456789abcdef0123456789abcdef", &g);
	struct stor_mailbox_create req = { .user = USER, .name = "INBOX", .guid = &g,
					   .uidvalidity = 7 };
	if (stor_mailbox_create(db, &req, NULL, &e) < 0)
		abort();
	for (int i = 0; i < 3; i++) {
		struct stor_append a = { .flags = (uint32_t)i, .internaldate = 1700000000,
					 .text = "Subject: x\r\n\r\nbody\r\n", .text_len = 20 };
		if (stor_msg_append(db, &g, &a, NULL, NULL, &e) < 0)
			abort();
	}
	log_set_level(LOG_LEVEL_ERROR);
	atexit(cleanup);
}

/* Signs header + body the SPEC's way. */
static void sign(struct buf *file)
{
	unsigned char digest[32], mac[32], msg[18 + 32];
	unsigned int len = 32;
	char hex[65];
	SHA256(file->data, file->len, digest);
	memcpy(msg, "STARLING-BUNDLE-1", 17);
	msg[17] = 0;
	memcpy(msg + 18, digest, 32);
	HMAC(EVP_sha256(), secret, sizeof(secret) - 1, msg, sizeof(msg), mac, &len);
	hex_encode(digest, 32, hex);
	hex[64] = '\0';
	buf_appendf(file, "DIGEST SHA-256 %s\r\n", hex);
	hex_encode(mac, 32, hex);
	hex[64] = '\0';
	buf_appendf(file, "SIGNATURE HMAC-SHA256 %s\r\n", hex);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (db == NULL)
		setup();
	if (size < 1)
		return 0;
	struct buf file = BUF_INIT;
	struct sync_bundle_key key = { secret, sizeof(secret) - 1, false };
	created++;
	switch (data[0] % 3) {
	case 0:
		buf_append(&file, data + 1, size - 1);
		break;
	case 1: {
		struct sync_bundle_header hdr = { .user = USER, .source = 2, .created = created };
		sync_bundle_seal(&hdr, &key, data + 1, size - 1, &file, NULL);
		break;
	}
	default: {
		if (size < 5)
			return 0;
		unsigned raw = (unsigned)data[1] << 8 | data[2];
		buf_appendf(&file, "STARLING-BUNDLE 1.0\r\nUSER %s\r\nSOURCE 3\r\nCREATED %lld\r\n"
			    "SINCE FULL\r\nKEY CLUSTER\r\nBODY DEFLATE %zu %u\r\nEND\r\n", USER,
			    (long long)created, size - 3, raw);
		buf_append(&file, data + 3, size - 3);
		sign(&file);
		break;
	}
	}
	struct sync_bundle_import_settings set = {
		.own_sid = 1, .key = key, .scratch_parent = dir, .max_size = 1 << 20,
		.now = created + 1,
	};
	struct sync_bundle_import_result res;
	char *err = NULL;
	int r = sync_bundle_import(db, &set, file.data != NULL ? (const void *)file.data : "",
				   file.len, &res, &err);
	if (r < 0 && (err == NULL || err[0] == '\0'))
		abort(); /* a refusal always says why */
	if (r == 0 && res.state.len == 0)
		abort(); /* a success always gives a state */
	sync_bundle_import_result_free(&res);
	free(err);
	buf_free(&file);

	stor_mailbox_array list;
	const char *e;
	if (stor_mailbox_list(db, USER, &list, &e) < 0)
		abort();
	for (size_t i = 0; i < list.count; i++) {
		if (stor_mailbox_check(db, &list.items[i].guid, &e) < 0) {
			fprintf(stderr, "store inconsistent after an import: %s\n", e);
			abort();
		}
	}
	stor_mailbox_list_free(&list);
	return 0;
}
