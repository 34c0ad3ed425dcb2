/* What a node remembers between bundles: its bundle counter, its recent
 * exports (the base check of SINCE), the last import per source and user
 * (replays), and the state file.  In one place so that every check that
 * compares against the past reads the same records. */
#include "sync/sync-bundle-private.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <zlib.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/passwd.h"
#include "lib/str.h"
#include "lib/xalloc.h"

/* ------------------------------------------------------------------ */
/* Small store metadata: the node's bundle counter, its recent exports,
 * and per source and user the last import */

static int meta_read(struct stor_db *db, const char *name, struct buf *v, char **error_r)
{
	const char *err;
	int r = stor_meta_get(db, name, v, &err);
	if (r < 0) {
		*error_r = fmt_error("reading %s: %s", name, err);
		return -1;
	}
	buf_append_byte(v, '\0');
	v->len--;
	return r;
}

static int meta_write(struct stor_db *db, const char *name, const struct buf *v, char **error_r)
{
	const char *err;
	if (stor_meta_set(db, name, v->data != NULL ? (const void *)v->data : "", v->len,
			  &err) < 0) {
		*error_r = fmt_error("writing %s: %s", name, err);
		return -1;
	}
	return 0;
}

/* The next value of the node's bundle counter (orders exports and imports). */
static int counter_next(struct stor_db *db, uint64_t *v_r, char **error_r)
{
	struct buf v = BUF_INIT;
	uint64_t n = 0;
	int r = meta_read(db, "bundle.counter", &v, error_r);
	if (r > 0 && str_to_u64((const char *)v.data, UINT64_MAX - 1, &n) < 0)
		n = 0;
	buf_reset(&v);
	if (r >= 0) {
		buf_appendf(&v, "%" PRIu64, n + 1);
		r = meta_write(db, "bundle.counter", &v, error_r);
	}
	buf_free(&v);
	*v_r = n + 1;
	return r < 0 ? -1 : 0;
}

/* "bundle.exports.<user>": lines "<counter> <digest hex>", newest last. */
int exports_remember(struct stor_db *db, const char *user, const unsigned char digest[32],
		     char **error_r)
{
	uint64_t ctr;
	if (counter_next(db, &ctr, error_r) < 0)
		return -1;
	char *name = xasprintf("bundle.exports.%s", user);
	struct buf v = BUF_INIT, nv = BUF_INIT;
	int r = meta_read(db, name, &v, error_r);
	if (r >= 0) {
		size_t lines = 0;
		for (size_t i = 0; i < v.len; i++)
			lines += v.data[i] == '\n';
		const char *p = (const char *)v.data;
		for (; p != NULL && lines >= BUNDLE_EXPORTS_KEPT; lines--) {
			p = strchr(p, '\n');
			if (p != NULL)
				p++;
		}
		if (p != NULL)
			buf_append_str(&nv, p);
		char hex[65];
		hex_encode(digest, 32, hex);
		hex[64] = '\0';
		buf_appendf(&nv, "%" PRIu64 " %s\n", ctr, hex);
		r = meta_write(db, name, &nv, error_r);
	}
	free(name);
	buf_free(&v);
	buf_free(&nv);
	return r < 0 ? -1 : 0;
}

/* The counter at which the export with this digest was made: 1, 0 not
 * among the recent exports, -1 error. */
int exports_find(struct stor_db *db, const char *user, const char *digest_hex,
		 uint64_t *ctr_r, char **error_r)
{
	char *name = xasprintf("bundle.exports.%s", user);
	struct buf v = BUF_INIT;
	int r = meta_read(db, name, &v, error_r);
	free(name);
	int found = 0;
	if (r > 0) {
		char *line;
		size_t len;
		buf_append_byte(&v, '\n');
		while (found == 0 && (line = buf_getline(&v, &len)) != NULL) {
			char *sp = strchr(line, ' ');
			if (sp == NULL || strcmp(sp + 1, digest_hex) != 0)
				continue;
			*sp = '\0';
			if (str_to_u64(line, UINT64_MAX, ctr_r) == 0)
				found = 1;
		}
	}
	buf_free(&v);
	return r < 0 ? -1 : found;
}

#define IMPORTS_KEPT 32

/* "bundle.import.<source>.<user>": "<counter> <created> <digest hex>", then
 * the digests of up to IMPORTS_KEPT earlier imports.  Free li_r->raw. */
int last_import_get(struct stor_db *db, uint32_t source, const char *user,
		    struct last_import *li_r, char **error_r)
{
	char *name = xasprintf("bundle.import.%u.%s", source, user);
	memset(li_r, 0, sizeof(*li_r));
	buf_init(&li_r->raw);
	int r = meta_read(db, name, &li_r->raw, error_r);
	free(name);
	if (r > 0) {
		unsigned long long ctr;
		long long created;
		char hex[65];
		if (sscanf((const char *)li_r->raw.data, "%llu %lld %64s", &ctr, &created, hex) == 3 &&
		    strlen(hex) == 64) {
			li_r->counter = ctr;
			li_r->created = created;
			memcpy(li_r->digest_hex, hex, 65);
		} else {
			r = 0;
			buf_reset(&li_r->raw);
		}
	}
	return r;
}

/* Whether the digest is the last import's or one of the earlier ones. */
bool last_import_has(const struct last_import *li, const char *digest_hex)
{
	const char *p = (const char *)li->raw.data;
	if (p == NULL)
		return false;
	if (strcmp(li->digest_hex, digest_hex) == 0)
		return true;
	while ((p = strstr(p, "\nD ")) != NULL) {
		p += 3;
		if (strncmp(p, digest_hex, 64) == 0)
			return true;
	}
	return false;
}

int last_import_set(struct stor_db *db, uint32_t source, const char *user,
		    int64_t created, const char *digest_hex, char **error_r)
{
	uint64_t ctr;
	struct last_import li;
	if (last_import_get(db, source, user, &li, error_r) < 0 ||
	    counter_next(db, &ctr, error_r) < 0) {
		buf_free(&li.raw);
		return -1;
	}
	char *name = xasprintf("bundle.import.%u.%s", source, user);
	struct buf v = BUF_INIT;
	buf_appendf(&v, "%" PRIu64 " %" PRId64 " %s", ctr, created, digest_hex);
	if (li.digest_hex[0] != '\0') {
		buf_appendf(&v, "\nD %s", li.digest_hex);
		const char *p = (const char *)li.raw.data;
		for (unsigned kept = 1; kept < IMPORTS_KEPT && (p = strstr(p, "\nD ")) != NULL;
		     kept++) {
			buf_append(&v, p, 68);
			p += 3;
		}
	}
	int r = meta_write(db, name, &v, error_r);
	free(name);
	buf_free(&v);
	buf_free(&li.raw);
	return r;
}
/* State files */

int adopt_cmp(const void *a, const void *b)
{
	const struct adopt *x = a, *y = b;
	int c = guid_cmp(&x->mailbox, &y->mailbox);
	if (c != 0)
		return c;
	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

int held_cmp(const void *a, const void *b)
{
	const struct held *x = a, *y = b;
	int c = guid_cmp(&x->mailbox, &y->mailbox);
	if (c != 0)
		return c;
	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

void state_free(struct bundle_state *st)
{
	ARRAY_FREE(&st->texts);
	ARRAY_FREE(&st->adopts);
	ARRAY_FREE(&st->pseen_bases);
}

/* "ADOPT <mailbox guid> <uid> <bundle modseq> <our modseq>" */
static int adopt_parse(char *line, struct adopt *a_r)
{
	char *f[5], *save = NULL;
	size_t n = 0;
	for (char *t = strtok_r(line, " ", &save); t != NULL && n < 5; t = strtok_r(NULL, " ", &save))
		f[n++] = t;
	uint64_t uid, bm, om;
	if (n != 5 || strcmp(f[0], "ADOPT") != 0 || strlen(f[1]) != 32 ||
	    guid_from_hex(f[1], &a_r->mailbox) < 0 || str_to_u64(f[2], UINT32_MAX, &uid) < 0 ||
	    uid == 0 || str_to_u64(f[3], INT64_MAX, &bm) < 0 ||
	    str_to_u64(f[4], INT64_MAX, &om) < 0 || bm > om)
		return -1;
	a_r->uid = (uint32_t)uid;
	a_r->bundle_modseq = bm;
	a_r->our_modseq = om;
	return 0;
}

/* Parses a state file written by an import (see write_state()). */
int state_parse(const void *data, size_t len, const char *user,
		struct bundle_state *st_r, char **error_r)
{
	memset(st_r, 0, sizeof(*st_r));
	if (len > SYNC_BUNDLE_MAX_STATE_SIZE) {
		*error_r = xstrdup("state file too large");
		return -1;
	}
	struct buf b = BUF_INIT;
	buf_append(&b, data, len);
	char *line;
	size_t llen;
	int stage = 0; /* 0 magic, 1 USER, 2 PEER, 3 BASE, 4 TEXT..., 5 after END */
	const char *bad = NULL;
	while (bad == NULL && (line = buf_getline(&b, &llen)) != NULL) {
		if (strlen(line) != llen)
			bad = "NUL in a line";
		else if (stage == 0)
			bad = strcmp(line, STATE_MAGIC) == 0 ? (stage++, NULL) : "not a bundle state file";
		else if (stage == 1) {
			if (!str_has_prefix(line, "USER ") || strcmp(line + 5, user) != 0)
				bad = "state file is for another user";
			stage++;
		} else if (stage == 2) {
			uint64_t v;
			if (!str_has_prefix(line, "PEER ") || str_to_u64(line + 5, UINT32_MAX, &v) < 0)
				bad = "bad PEER line";
			stage++;
		} else if (stage == 3) {
			char *sp = str_has_prefix(line, "BASE ") ? strchr(line + 5, ' ') : NULL;
			uint64_t v;
			if (sp == NULL || str_to_u64_n(line + 5, (size_t)(sp - line - 5), INT64_MAX,
						       &v) < 0 || strlen(sp + 1) != 64 ||
			    hex_decode(sp + 1, 64, st_r->base_digest, 32) < 0)
				bad = "bad BASE line";
			else
				st_r->base_created = (int64_t)v;
			stage++;
		} else if (stage == 4 && strcmp(line, "END") == 0) {
			stage++;
		} else if (stage == 4 && str_has_prefix(line, "PSEEN-BASE ")) {
			/* "PSEEN-BASE <mailbox guid> <modseq>" */
			struct pseen_base pb;
			char *sp = strchr(line + 11, ' ');
			uint64_t v;
			if (sp != NULL && sp - (line + 11) == 32)
				*sp = '\0';
			else
				sp = NULL;
			if (sp == NULL || guid_from_hex(line + 11, &pb.mailbox) < 0 ||
			    str_to_u64(sp + 1, INT64_MAX, &v) < 0 ||
			    st_r->pseen_bases.count >= SYNC_MAX_MAILBOXES) {
				bad = "bad PSEEN-BASE line";
			} else {
				pb.modseq = v;
				ARRAY_PUSH(&st_r->pseen_bases, pb);
			}
		} else if (stage == 4 && str_has_prefix(line, "ADOPT ")) {
			struct adopt a;
			if (adopt_parse(line, &a) < 0)
				bad = "bad ADOPT line";
			else
				ARRAY_PUSH(&st_r->adopts, a);
		} else if (stage == 4) {
			/* "TEXT <mailbox guid> <uid> <guid>" */
			struct held h;
			uint64_t uid;
			/* The prefix first: a line shorter than it has no f1. */
			bool prefix = str_has_prefix(line, "TEXT ");
			char *f1 = prefix ? line + 5 : NULL, *f2 = prefix ? strchr(f1, ' ') : NULL;
			char *f3 = f2 ? strchr(f2 + 1, ' ') : NULL;
			if (f2 == NULL || f3 == NULL || f2 - f1 != 32 || strlen(f3 + 1) != 32)
				bad = "bad TEXT line";
			else {
				*f2 = *f3 = '\0';
				if (guid_from_hex(f1, &h.mailbox) < 0 ||
				    str_to_u64(f2 + 1, UINT32_MAX, &uid) < 0 || uid == 0 ||
				    guid_from_hex(f3 + 1, &h.guid) < 0) {
					bad = "bad TEXT line";
				} else {
					h.uid = (uint32_t)uid;
					ARRAY_PUSH(&st_r->texts, h);
				}
			}
		} else {
			bad = "data after END";
		}
	}
	if (bad == NULL && (stage != 5 || buf_avail(&b) != 0))
		bad = "truncated";
	buf_free(&b);
	if (bad != NULL) {
		state_free(st_r);
		*error_r = fmt_error("state file: %s", bad);
		return -1;
	}
	if (st_r->texts.count > 0)
		qsort(st_r->texts.items, st_r->texts.count, sizeof(st_r->texts.items[0]),
		      held_cmp);
	if (st_r->adopts.count > 0)
		qsort(st_r->adopts.items, st_r->adopts.count, sizeof(st_r->adopts.items[0]),
		      adopt_cmp);
	return 0;
}

void write_state(struct buf *out, const char *user, uint32_t peer, int64_t created,
		 const char *digest_hex, const struct buf *texts, const struct buf *adopts,
		 const struct buf *pseen_bases)
{
	buf_appendf(out, "%s\nUSER %s\nPEER %u\nBASE %" PRId64 " %s\n", STATE_MAGIC, user, peer,
		    created, digest_hex);
	buf_append(out, texts->data, texts->len);
	buf_append(out, adopts->data, adopts->len);
	buf_append(out, pseen_bases->data, pseen_bases->len);
	buf_append_str(out, "END\n");
}
