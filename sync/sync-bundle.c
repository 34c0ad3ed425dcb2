/* Change bundles (SPEC.md 11): export, verification and import.  See
 * sync-bundle.h for the design; the file format and the verifier's checks,
 * in their order, are the SPEC's. */
#include "sync/sync-bundle.h"

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
#include "sync/sync-private.h"

#define BUNDLE_MAGIC "STARLING-BUNDLE "
#define BUNDLE_MAX_HEADER 4096
#define BUNDLE_TRAILER_LEN (15 + 64 + 2 + 22 + 64 + 2)
#define BUNDLE_FUTURE_SLACK (24 * 3600)
#define STATE_MAGIC "STARLING-BUNDLE-STATE 1"
/* Exports remembered for the base check (SINCE). */
#define BUNDLE_EXPORTS_KEPT 32
/* UIDs in one EXPUNGE of a bundle. */
#define BUNDLE_MAX_EXPUNGE_UIDS 1000000

static char *fmt_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *fmt_error(const char *fmt, ...)
{
	va_list ap;
	struct buf b = BUF_INIT;
	va_start(ap, fmt);
	buf_vappendf(&b, fmt, ap);
	va_end(ap);
	return (char *)buf_steal(&b, NULL);
}

/* ------------------------------------------------------------------ */
/* Keys, digest and signature */

static void hmac256(const unsigned char *key, size_t key_len, const void *msg, size_t len,
		    unsigned char out[32])
{
	unsigned int out_len = 32;
	if (HMAC(EVP_sha256(), key, (int)key_len, msg, len, out, &out_len) == NULL) {
		/* Only an OpenSSL malfunction; a zero MAC never verifies. */
		memset(out, 0, 32);
	}
}

/* The key that signs: the cluster secret, or the user key derived from it. */
static void signing_key(const struct sync_bundle_key *key, bool user_key, const char *user,
			unsigned char *out, size_t *len_r, const unsigned char **key_r)
{
	if (!user_key) {
		*key_r = key->secret;
		*len_r = key->secret_len;
		return;
	}
	struct buf msg = BUF_INIT;
	buf_append(&msg, "STARLING-USER-KEY-1", 19);
	buf_append_byte(&msg, 0);
	buf_append_str(&msg, user);
	hmac256(key->secret, key->secret_len, msg.data, msg.len, out);
	buf_free(&msg);
	*key_r = out;
	*len_r = 32;
}

static void bundle_signature(const unsigned char *key, size_t key_len,
			     const unsigned char digest[32], unsigned char out[32])
{
	unsigned char msg[18 + 32];
	memcpy(msg, "STARLING-BUNDLE-1", 17);
	msg[17] = 0;
	memcpy(msg + 18, digest, 32);
	hmac256(key, key_len, msg, sizeof(msg), out);
}

/* ------------------------------------------------------------------ */
/* Writing: a deflater that the command stream is fed to as it is made */

struct deflater {
	z_stream z;
	struct buf comp;
	uint64_t raw_len;
};

static void deflater_init(struct deflater *d)
{
	memset(d, 0, sizeof(*d));
	buf_init(&d->comp);
	/* Level 1: four times faster than the default on mail-like text for
	 * about a tenth more octets (5,000 messages of 1-20 KB: 1.2 s and
	 * 17 MB against 5.1 s and 15.6 MB). */
	if (deflateInit(&d->z, 1) != Z_OK)
		abort(); /* only out of memory */
}

static void deflater_run(struct deflater *d, const void *data, size_t len, int flush)
{
	d->z.next_in = (Bytef *)(uintptr_t)data;
	d->z.avail_in = (uInt)len;
	d->raw_len += len;
	for (;;) {
		unsigned char *dst = buf_reserve(&d->comp, 65536);
		d->z.next_out = dst;
		d->z.avail_out = 65536;
		int r = deflate(&d->z, flush);
		buf_commit(&d->comp, 65536 - d->z.avail_out);
		if (r == Z_STREAM_END || (flush == Z_NO_FLUSH && d->z.avail_in == 0 &&
					  d->z.avail_out != 0))
			break;
		if (r != Z_OK && r != Z_BUF_ERROR)
			abort();
	}
}

/* Feeds what the buffer holds and empties it. */
static void deflater_add(struct deflater *d, struct buf *b)
{
	size_t off = 0;
	while (off < b->len) {
		size_t n = b->len - off > (1u << 30) ? (1u << 30) : b->len - off;
		deflater_run(d, b->data + off, n, Z_NO_FLUSH);
		off += n;
	}
	buf_reset(b);
}

static void deflater_finish(struct deflater *d)
{
	deflater_run(d, "", 0, Z_FINISH);
	deflateEnd(&d->z);
}

static void assemble(const struct sync_bundle_header *hdr, const struct sync_bundle_key *key,
		     const struct buf *comp, uint64_t raw_len, struct buf *out,
		     unsigned char digest_r[32])
{
	size_t start = out->len;
	buf_appendf(out, "STARLING-BUNDLE 1.0\r\nUSER %s\r\nSOURCE %u\r\nCREATED %" PRId64 "\r\n",
		    hdr->user, hdr->source, hdr->created);
	if (hdr->since_digest == NULL) {
		buf_append_str(out, "SINCE FULL\r\n");
	} else {
		char hex[65];
		hex_encode(hdr->since_digest, 32, hex);
		hex[64] = '\0';
		buf_appendf(out, "SINCE %" PRId64 " %s\r\n", hdr->since_created, hex);
	}
	buf_appendf(out, "KEY %s\r\nBODY DEFLATE %zu %" PRIu64 "\r\nEND\r\n",
		    key->user_key ? "USER" : "CLUSTER", comp->len, raw_len);
	buf_append(out, comp->data, comp->len);

	unsigned char digest[32], sig[32], kbuf[32];
	const unsigned char *k;
	size_t klen;
	char hex[65];
	SHA256(out->data + start, out->len - start, digest);
	signing_key(key, key->user_key, hdr->user, kbuf, &klen, &k);
	bundle_signature(k, klen, digest, sig);
	hex_encode(digest, 32, hex);
	hex[64] = '\0';
	buf_appendf(out, "DIGEST SHA-256 %s\r\n", hex);
	hex_encode(sig, 32, hex);
	hex[64] = '\0';
	buf_appendf(out, "SIGNATURE HMAC-SHA256 %s\r\n", hex);
	if (digest_r != NULL)
		memcpy(digest_r, digest, 32);
}

void sync_bundle_seal(const struct sync_bundle_header *hdr, const struct sync_bundle_key *key,
		      const void *stream, size_t stream_len, struct buf *out,
		      unsigned char digest_r[32])
{
	struct deflater d;
	deflater_init(&d);
	struct buf b = BUF_INIT;
	buf_append(&b, stream, stream_len);
	deflater_add(&d, &b);
	buf_free(&b);
	deflater_finish(&d);
	assemble(hdr, key, &d.comp, d.raw_len, out, digest_r);
	buf_free(&d.comp);
}

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
static int exports_remember(struct stor_db *db, const char *user, const unsigned char digest[32],
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
static int exports_find(struct stor_db *db, const char *user, const char *digest_hex,
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

struct last_import {
	uint64_t counter;
	int64_t created;
	char digest_hex[65];
	/* The value as stored: the first line, then "D <digest hex>" lines
	 * of earlier imports. */
	struct buf raw;
};

/* "bundle.import.<source>.<user>": "<counter> <created> <digest hex>", then
 * the digests of up to IMPORTS_KEPT earlier imports.  Free li_r->raw. */
static int last_import_get(struct stor_db *db, uint32_t source, const char *user,
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
static bool last_import_has(const struct last_import *li, const char *digest_hex)
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

static int last_import_set(struct stor_db *db, uint32_t source, const char *user,
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

/* A message whose state an import here took over unchanged from the bundle
 * (same UID, GUID, flags and keywords): the merge may have given it a new
 * modseq here and in the scratch copy, but not on the other node.  While it
 * keeps that modseq here, the next export back writes the bundle's modseq
 * for it, so that the other node's own later change of the message (whose
 * modseq may be below ours) still wins over a state it already had. */
struct adopt {
	struct guid mailbox;
	uint32_t uid;
	uint64_t bundle_modseq, our_modseq;
};
typedef ARRAY(struct adopt) adopt_array;

static int adopt_cmp(const void *a, const void *b)
{
	const struct adopt *x = a, *y = b;
	int c = guid_cmp(&x->mailbox, &y->mailbox);
	if (c != 0)
		return c;
	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

/* A message whose text the other node holds: the GUID it had at that UID
 * of that mailbox in the bundle imported here. */
struct held {
	struct guid mailbox;
	uint32_t uid;
	struct guid guid;
};
typedef ARRAY(struct held) held_array;

static int held_cmp(const void *a, const void *b)
{
	const struct held *x = a, *y = b;
	int c = guid_cmp(&x->mailbox, &y->mailbox);
	if (c != 0)
		return c;
	return x->uid < y->uid ? -1 : x->uid > y->uid;
}

struct bundle_state {
	int64_t base_created;
	unsigned char base_digest[32];
	held_array texts;
	adopt_array adopts;
};

static void state_free(struct bundle_state *st)
{
	ARRAY_FREE(&st->texts);
	ARRAY_FREE(&st->adopts);
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
static int state_parse(const void *data, size_t len, const char *user,
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

static void write_state(struct buf *out, const char *user, uint32_t peer, int64_t created,
			const char *digest_hex, const struct buf *texts, const struct buf *adopts)
{
	buf_appendf(out, "%s\nUSER %s\nPEER %u\nBASE %" PRId64 " %s\n", STATE_MAGIC, user, peer,
		    created, digest_hex);
	buf_append(out, texts->data, texts->len);
	buf_append(out, adopts->data, adopts->len);
	buf_append_str(out, "END\n");
}

/* ------------------------------------------------------------------ */
/* Export */

struct exporter {
	struct stor_db *db;
	const char *user;
	struct buf line;
	struct proto_wr w;
	unsigned tag;
	struct deflater d;
	const held_array *held;
	const adopt_array *adopts;
	struct sync_bundle_export_report rep;
};

static void ex_begin(struct exporter *e, const char *name)
{
	char tag[16];
	snprintf(tag, sizeof(tag), "B%u", ++e->tag);
	proto_wr_begin(&e->w, tag, name);
}

static void ex_end(struct exporter *e)
{
	proto_wr_end(&e->w);
	if (e->line.len >= 65536)
		deflater_add(&e->d, &e->line);
}

static int ex_message(struct exporter *e, const struct guid *mailbox, const struct stor_msg *m,
		      char **error_r)
{
	const char *err;
	uint64_t modseq = m->modseq;
	if (e->adopts != NULL && e->adopts->count > 0) {
		struct adopt key = { .mailbox = *mailbox, .uid = m->uid };
		const struct adopt *a = bsearch(&key, e->adopts->items, e->adopts->count,
						sizeof(key), adopt_cmp);
		if (a != NULL && a->our_modseq == m->modseq)
			modseq = a->bundle_modseq;
	}
	struct proto_save sv;
	sync_save_of_msg(&sv, m);
	sv.date = m->internaldate < 0 ? 0 : m->internaldate;
	sv.modseq = modseq;
	struct buf text = BUF_INIT;
	struct held key = { .mailbox = *mailbox, .uid = m->uid };
	const struct held *h = e->held == NULL || e->held->count == 0 ? NULL :
			       bsearch(&key, e->held->items, e->held->count, sizeof(key), held_cmp);
	if (h != NULL && guid_cmp(&h->guid, &m->guid) == 0) {
		e->rep.texts_left_out++;
	} else {
		if (stor_text_read(e->db, &m->guid, 0, m->size, &text, &err) < 0) {
			buf_free(&text);
			*error_r = fmt_error("reading a message text: %s", err);
			return -1;
		}
		sv.text = text.data != NULL ? (const void *)text.data : "";
		sv.text_len = text.len;
		e->rep.texts++;
	}
	ex_begin(e, "SAVE");
	proto_wr_save(&e->w, &sv);
	buf_free(&text);
	/* When each flag changed, so that the importer's merge decides a
	 * flag both nodes changed by the later change (SPEC.md 10.3). */
	sync_wr_stamps(&e->w, &m->stamps);
	ex_end(e);
	e->rep.messages++;
	return 0;
}

static int ex_mailbox(struct exporter *e, uint32_t id, const struct stor_mailbox *mb,
		      char **error_r)
{
	stor_msg_list msgs;
	stor_tombstone_list tombs;
	const char *err;
	if (stor_changes_since(e->db, &mb->guid, 0, &msgs, &tombs, &err) < 0) {
		*error_r = fmt_error("mailbox %s: %s", mb->name, err);
		return -1;
	}
	ex_begin(e, "MBOX");
	proto_wr_u64(&e->w, id);
	proto_wr_cstr(&e->w, e->user);
	proto_wr_cstr(&e->w, mb->name);
	proto_wr_u64(&e->w, mb->uidvalidity);
	proto_wr_guid(&e->w, &mb->guid);
	ex_end(e);
	ex_begin(e, "SELECT");
	proto_wr_u64(&e->w, id);
	ex_end(e);
	ex_begin(e, "SYNC-BEGIN");
	proto_wr_u64(&e->w, 0);
	proto_wr_u64(&e->w, mb->highestmodseq);
	proto_wr_u64(&e->w, 1);
	proto_wr_u64(&e->w, mb->uidnext);
	ex_end(e);
	int ret = 0;
	for (size_t i = 0; i < msgs.count && ret == 0; i++)
		ret = ex_message(e, &mb->guid, &msgs.items[i], error_r);
	/* A tombstone is the message as it was, then its expunge: SPEC
	 * syntax that carries the tombstone's GUID. */
	for (size_t i = 0; i < tombs.count && ret == 0; i++) {
		const struct stor_tombstone *t = &tombs.items[i];
		struct proto_save sv = { .uid = t->uid, .modseq = t->modseq, .guid = t->guid };
		ex_begin(e, "SAVE");
		proto_wr_save(&e->w, &sv);
		ex_end(e);
		ex_begin(e, "EXPUNGE");
		proto_wr_uidset(&e->w, &t->uid, 1);
		proto_wr_u64(&e->w, t->modseq);
		ex_end(e);
		e->rep.tombstones++;
	}
	if (ret == 0) {
		ex_begin(e, "SYNC-END");
		ex_end(e);
	}
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&tombs);
	e->rep.mailboxes++;
	return ret;
}

int sync_bundle_export(struct stor_db *db, const struct sync_bundle_export_settings *set,
		       struct buf *out, struct sync_bundle_export_report *report_r,
		       char **error_r)
{
	struct bundle_state st;
	bool have_state = set->state != NULL;
	const char *err;
	*error_r = NULL;
	if (!passwd_user_name_valid(set->user)) {
		*error_r = fmt_error("invalid user name '%s'", set->user);
		return -1;
	}
	if (set->source_sid == 0 || set->source_sid >= SYNC_BUNDLE_PEER_BASE) {
		*error_r = xstrdup("the node id is out of the range of bundle sources");
		return -1;
	}
	if (have_state && state_parse(set->state, set->state_len, set->user, &st, error_r) < 0)
		return -1;

	struct exporter e;
	memset(&e, 0, sizeof(e));
	e.db = db;
	e.user = set->user;
	e.held = have_state ? &st.texts : NULL;
	e.adopts = have_state ? &st.adopts : NULL;
	buf_init(&e.line);
	proto_wr_init(&e.w, &e.line);
	deflater_init(&e.d);

	stor_mailbox_array mbs;
	stor_string_list subs;
	int ret = 0;
	if (stor_mailbox_list(db, set->user, &mbs, &err) < 0) {
		*error_r = fmt_error("listing mailboxes: %s", err);
		ret = -1;
		memset(&mbs, 0, sizeof(mbs));
	}
	if (ret == 0 && mbs.count == 0) {
		*error_r = fmt_error("user '%s' has no mailboxes here", set->user);
		ret = -1;
	}
	if (ret == 0 && stor_subscriptions(db, set->user, &subs, &err) < 0) {
		*error_r = fmt_error("listing subscriptions: %s", err);
		ret = -1;
	}
	stor_mailbox_tomb_list tombs = ARRAY_INIT;
	stor_string_list unsubs = ARRAY_INIT;
	if (ret == 0 && (stor_mailbox_tombs(db, set->user, &tombs, &err) < 0 ||
			 stor_unsubscribed(db, set->user, &unsubs, &err) < 0)) {
		*error_r = fmt_error("listing deleted mailboxes: %s", err);
		stor_string_list_free(&subs);
		ret = -1;
	}
	if (ret == 0) {
		for (size_t i = 0; i < mbs.count; i++) {
			const struct stor_mailbox *mb = &mbs.items[i];
			ex_begin(&e, "CREATE");
			proto_wr_cstr(&e.w, set->user);
			proto_wr_cstr(&e.w, mb->name);
			proto_wr_guid(&e.w, &mb->guid);
			proto_wr_u64(&e.w, mb->uidvalidity);
			if (mb->special_use[0] != '\0') {
				proto_wr_atom(&e.w, "SPECIAL-USE");
				proto_wr_list_begin(&e.w);
				proto_wr_atom(&e.w, mb->special_use);
				proto_wr_list_end(&e.w);
			}
			ex_end(&e);
		}
		for (size_t i = 0; i < subs.count; i++) {
			ex_begin(&e, "SUBSCRIBE");
			proto_wr_cstr(&e.w, set->user);
			proto_wr_cstr(&e.w, subs.items[i]);
			ex_end(&e);
		}
		stor_string_list_free(&subs);
		/* Deleted mailboxes, so the importer tells them from ones this
		 * node never had (SPEC 10.5). */
		for (size_t i = 0; i < tombs.count; i++) {
			ex_begin(&e, "DELETE");
			proto_wr_cstr(&e.w, set->user);
			proto_wr_cstr(&e.w, tombs.items[i].name);
			proto_wr_guid(&e.w, &tombs.items[i].guid);
			ex_end(&e);
		}
		for (size_t i = 0; i < unsubs.count; i++) {
			ex_begin(&e, "UNSUBSCRIBE");
			proto_wr_cstr(&e.w, set->user);
			proto_wr_cstr(&e.w, unsubs.items[i]);
			ex_end(&e);
		}
		for (size_t i = 0; i < mbs.count && ret == 0; i++)
			ret = ex_mailbox(&e, (uint32_t)i + 1, &mbs.items[i], error_r);
	}
	stor_mailbox_list_free(&mbs);
	stor_mailbox_tomb_list_free(&tombs);
	stor_string_list_free(&unsubs);
	deflater_add(&e.d, &e.line);
	deflater_finish(&e.d);
	if (ret == 0) {
		struct sync_bundle_header hdr = {
			.user = set->user,
			.source = set->source_sid,
			.created = set->created != 0 ? set->created : clock_wall_s(),
			.since_created = have_state ? st.base_created : 0,
			.since_digest = have_state ? st.base_digest : NULL,
		};
		unsigned char digest[32];
		assemble(&hdr, &set->key, &e.d.comp, e.d.raw_len, out, digest);
		ret = exports_remember(db, set->user, digest, error_r);
		if (ret == 0 && stor_sync(db, &err) < 0) {
			*error_r = fmt_error("storing the export record: %s", err);
			ret = -1;
		}
	}
	if (ret == 0 && report_r != NULL)
		*report_r = e.rep;
	buf_free(&e.line);
	buf_free(&e.d.comp);
	if (have_state)
		state_free(&st);
	return ret;
}

/* ------------------------------------------------------------------ */
/* Verification (checks 1 to 7) */

struct verified {
	char user[STOR_MAX_USER_LEN + 1];
	uint32_t source;
	int64_t created;
	bool since_full;
	int64_t since_created;
	char since_hex[65];
	bool user_key;
	uint64_t comp_len, raw_len;
	size_t header_len;
	char digest_hex[65];
};

/* Lowercase hex only, so that every bit of the trailer matters. */
static int hex_decode_lower(const char *s, size_t slen, unsigned char *out, size_t n)
{
	for (size_t i = 0; i < slen; i++) {
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return -1;
	}
	return hex_decode(s, slen, out, n);
}

/* Splits "NAME rest" lines of the header; every line CRLF-terminated. */
static int parse_header(const unsigned char *data, size_t len, struct verified *v,
			char **error_r)
{
	size_t limit = len < BUNDLE_MAX_HEADER ? len : BUNDLE_MAX_HEADER;
	size_t pos = 0;
	unsigned seen = 0;
	enum { H_USER = 1, H_SOURCE = 2, H_CREATED = 4, H_SINCE = 8, H_KEY = 16, H_BODY = 32 };
	bool first = true;
	for (;;) {
		const unsigned char *eol = memchr(data + pos, '\n', limit - pos);
		if (eol == NULL) {
			*error_r = xstrdup(limit == BUNDLE_MAX_HEADER ?
						   "bundle refused: header longer than 4096 octets" :
						   "bundle refused: truncated header");
			return -1;
		}
		size_t l = (size_t)(eol - (data + pos));
		if (l == 0 || data[pos + l - 1] != '\r') {
			*error_r = xstrdup("bundle refused: header line not ended by CRLF");
			return -1;
		}
		char line[BUNDLE_MAX_HEADER + 1];
		memcpy(line, data + pos, l - 1);
		line[l - 1] = '\0';
		pos += l + 1;
		if (strlen(line) != l - 1) {
			*error_r = xstrdup("bundle refused: NUL in the header");
			return -1;
		}
		if (first) {
			first = false;
			if (!str_has_prefix(line, BUNDLE_MAGIC) ||
			    !str_has_prefix(line + strlen(BUNDLE_MAGIC), "1.")) {
				*error_r = xstrdup("bundle refused: not a Starling bundle of version 1.x");
				return -1;
			}
			uint64_t minor;
			if (str_to_u64(line + strlen(BUNDLE_MAGIC) + 2, UINT32_MAX, &minor) < 0) {
				*error_r = xstrdup("bundle refused: bad version");
				return -1;
			}
			continue;
		}
		if (strcmp(line, "END") == 0)
			break;
		char *sp = strchr(line, ' ');
		const char *arg = sp != NULL ? sp + 1 : "";
		if (sp != NULL)
			*sp = '\0';
		unsigned bit = 0;
		bool ok = false;
		uint64_t n;
		if (strcmp(line, "USER") == 0) {
			bit = H_USER;
			ok = passwd_user_name_valid(arg) && strlen(arg) <= STOR_MAX_USER_LEN;
			if (ok)
				strcpy(v->user, arg);
		} else if (strcmp(line, "SOURCE") == 0) {
			bit = H_SOURCE;
			ok = str_to_u64(arg, UINT32_MAX, &n) == 0 && n != 0;
			v->source = (uint32_t)n;
		} else if (strcmp(line, "CREATED") == 0) {
			bit = H_CREATED;
			ok = str_to_u64(arg, INT64_MAX, &n) == 0;
			v->created = (int64_t)n;
		} else if (strcmp(line, "SINCE") == 0) {
			bit = H_SINCE;
			const char *sp2 = strchr(arg, ' ');
			if (strcmp(arg, "FULL") == 0) {
				v->since_full = ok = true;
			} else if (sp2 != NULL && str_to_u64_n(arg, (size_t)(sp2 - arg), INT64_MAX,
								&n) == 0 && strlen(sp2 + 1) == 64) {
				unsigned char tmp[32];
				ok = hex_decode_lower(sp2 + 1, 64, tmp, 32) == 0;
				v->since_created = (int64_t)n;
				hex_encode(tmp, 32, v->since_hex);
				v->since_hex[64] = '\0';
			}
		} else if (strcmp(line, "KEY") == 0) {
			bit = H_KEY;
			ok = strcmp(arg, "CLUSTER") == 0 || strcmp(arg, "USER") == 0;
			v->user_key = strcmp(arg, "USER") == 0;
		} else if (strcmp(line, "BODY") == 0) {
			bit = H_BODY;
			uint64_t c, r;
			const char *a = arg, *s1;
			if (str_has_prefix(a, "DEFLATE ") && (s1 = strchr(a + 8, ' ')) != NULL &&
			    str_to_u64_n(a + 8, (size_t)(s1 - a - 8), UINT64_MAX, &c) == 0 &&
			    str_to_u64(s1 + 1, UINT64_MAX, &r) == 0) {
				v->comp_len = c;
				v->raw_len = r;
				ok = true;
			}
		} else {
			*error_r = fmt_error("bundle refused: unknown header line '%.40s'", line);
			return -1;
		}
		if ((seen & bit) != 0) {
			*error_r = fmt_error("bundle refused: header line %s given twice", line);
			return -1;
		}
		if (!ok) {
			*error_r = fmt_error("bundle refused: bad %s header line", line);
			return -1;
		}
		seen |= bit;
	}
	if (seen != (H_USER | H_SOURCE | H_CREATED | H_SINCE | H_KEY | H_BODY)) {
		*error_r = xstrdup("bundle refused: a header line is missing");
		return -1;
	}
	v->header_len = pos;
	return 0;
}

static int verify(struct stor_db *db, const struct sync_bundle_import_settings *set,
		  const unsigned char *data, size_t len, struct verified *v, char **error_r)
{
	uint64_t max = set->max_size != 0 ? set->max_size : SYNC_BUNDLE_MAX_SIZE;
	memset(v, 0, sizeof(*v));
	/* 1. */
	if (len > max) {
		*error_r = fmt_error("bundle refused: %zu octets, above the limit of %" PRIu64,
				     len, max);
		return -1;
	}
	/* 2, 3. */
	if (parse_header(data, len, v, error_r) < 0)
		return -1;
	/* A body may not announce more than four times the file limit: a
	 * signed bundle still cannot make the scratch copy fill the disk. */
	if (v->raw_len / 4 > max) {
		*error_r = fmt_error("bundle refused: the body announces %" PRIu64 " uncompressed "
				     "octets, more than 4 times the limit", v->raw_len);
		return -1;
	}
	/* 4. */
	if (v->comp_len > len || v->header_len + v->comp_len + BUNDLE_TRAILER_LEN != len) {
		*error_r = xstrdup(v->header_len + v->comp_len + BUNDLE_TRAILER_LEN > len ?
					   "bundle refused: truncated (shorter than its header says)" :
					   "bundle refused: longer than its header says");
		return -1;
	}
	/* 5. */
	const char *tr = (const char *)data + v->header_len + v->comp_len;
	unsigned char want[32], got[32], sig[32];
	if (memcmp(tr, "DIGEST SHA-256 ", 15) != 0 || memcmp(tr + 79, "\r\n", 2) != 0 ||
	    memcmp(tr + 81, "SIGNATURE HMAC-SHA256 ", 22) != 0 ||
	    memcmp(tr + 167, "\r\n", 2) != 0 || hex_decode_lower(tr + 15, 64, want, 32) < 0 ||
	    hex_decode_lower(tr + 103, 64, sig, 32) < 0) {
		*error_r = xstrdup("bundle refused: malformed trailer");
		return -1;
	}
	SHA256(data, v->header_len + v->comp_len, got);
	if (!mem_equal_ct(want, got, 32)) {
		*error_r = xstrdup("bundle refused: digest mismatch (damaged or tampered with)");
		return -1;
	}
	hex_encode(got, 32, v->digest_hex);
	v->digest_hex[64] = '\0';
	/* 6. */
	unsigned char kbuf[32], mac[32];
	const unsigned char *k;
	size_t klen;
	signing_key(&set->key, v->user_key, v->user, kbuf, &klen, &k);
	bundle_signature(k, klen, got, mac);
	if (!mem_equal_ct(mac, sig, 32)) {
		*error_r = xstrdup("bundle refused: bad signature (signed with another key)");
		return -1;
	}
	/* 7. */
	if (v->source == set->own_sid) {
		*error_r = xstrdup("bundle refused: it was made by this node");
		return -1;
	}
	if (v->source >= SYNC_BUNDLE_PEER_BASE) {
		*error_r = xstrdup("bundle refused: SOURCE out of range");
		return -1;
	}
	int64_t now = set->now != 0 ? set->now : clock_wall_s();
	if (v->created > now + BUNDLE_FUTURE_SLACK) {
		*error_r = xstrdup("bundle refused: CREATED is more than a day in the future");
		return -1;
	}
	struct last_import li;
	int r = last_import_get(db, v->source, v->user, &li, error_r);
	if (r > 0 && last_import_has(&li, v->digest_hex)) {
		*error_r = xstrdup("bundle refused: already imported (a replay)");
		r = -1;
	} else if (r > 0 && v->created < li.created) {
		*error_r = fmt_error("bundle refused: older than the last bundle imported from "
				     "node %u for %s (a replay, or that node's clock went back)",
				     v->source, v->user);
		r = -1;
	}
	buf_free(&li.raw);
	return r < 0 ? -1 : 0;
}

/* ------------------------------------------------------------------ */
/* The body: inflated (check 8) and parsed (check 9) into the scratch store */

struct srv_id {
	uint32_t id;
	struct guid guid;
};

/* A SAVE of the command stream, parsed. */
struct ld_msg {
	uint32_t uid;
	uint64_t modseq;
	struct guid guid;
	struct sync_flags f;
	stor_stamp_list stamps;  /* as the bundle has them, or legacy */
	int64_t date;
	int tz;
};

struct ld_snap {
	struct guid mailbox;
	stor_msg_list msgs;
};

struct loader {
	struct stor_db *db, *scratch;
	const struct verified *v;
	uint64_t max_message_size;
	struct proto_parser *parser;
	unsigned next_tag;
	ARRAY(struct srv_id) ids;
	bool selected, in_sync;
	struct guid sel;
	uint32_t uidnext;
	uint64_t hms;
	stor_uid_list placeholders;
	/* A SAVE with NIL held back until the next command says whether it
	 * is a tombstone (see ld_tomb_hides_move()). */
	struct ld_msg pending;
	bool pending_active;
	/* Every mailbox's messages as the bundle has them, for the ADOPT
	 * lines of the state file. */
	ARRAY(struct ld_snap) snaps;
	char *error;
};

static int ld_fail(struct loader *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int ld_fail(struct loader *l, const char *fmt, ...)
{
	if (l->error != NULL)
		return -1;
	va_list ap;
	struct buf b = BUF_INIT;
	buf_append_str(&b, "bundle refused: ");
	va_start(ap, fmt);
	buf_vappendf(&b, fmt, ap);
	va_end(ap);
	l->error = (char *)buf_steal(&b, NULL);
	return -1;
}

static int ld_user(struct loader *l, const struct proto_arg *a)
{
	const char *s;
	size_t len;
	if (proto_arg_str(a, &s, &len) < 0 || strlen(s) != len || strcmp(s, l->v->user) != 0)
		return ld_fail(l, "the command stream names another user than %s", l->v->user);
	return 0;
}

static int ld_create(struct loader *l, const struct proto_cmd *cmd, size_t npos)
{
	const char *name, *err, *special = NULL;
	size_t len;
	struct guid g;
	uint32_t uidvalidity;
	if (ld_user(l, &cmd->args[0]) < 0)
		return -1;
	if (proto_arg_str(&cmd->args[1], &name, &len) < 0 || strlen(name) != len ||
	    proto_arg_guid(&cmd->args[2], &g) < 0 || proto_arg_u32(&cmd->args[3], &uidvalidity) < 0)
		return ld_fail(l, "bad CREATE");
	if (cmd->arg_count != npos) {
		const struct proto_arg *su = proto_cmd_option(cmd, npos, "SPECIAL-USE");
		if (su == NULL || cmd->arg_count != npos + 2 || su->type != PROTO_ARG_LIST ||
		    su->count != 1 || su->list[0].type != PROTO_ARG_ATOM || su->list[0].len >= 16)
			return ld_fail(l, "bad CREATE option");
		special = su->list[0].str;
	}
	struct stor_mailbox_create req = {
		.user = l->v->user, .name = name, .guid = &g, .uidvalidity = uidvalidity,
		.special_use = special,
	};
	if (stor_mailbox_create(l->scratch, &req, NULL, &err) < 0)
		return ld_fail(l, "CREATE %.100s: %s", name, err);
	return 0;
}

static int ld_mbox(struct loader *l, const struct proto_cmd *cmd)
{
	uint32_t id, uidvalidity;
	const char *name, *err;
	size_t len;
	struct guid g;
	struct stor_mailbox mb;
	if (proto_arg_u32(&cmd->args[0], &id) < 0 || ld_user(l, &cmd->args[1]) < 0 ||
	    proto_arg_str(&cmd->args[2], &name, &len) < 0 ||
	    proto_arg_u32(&cmd->args[3], &uidvalidity) < 0 || proto_arg_guid(&cmd->args[4], &g) < 0)
		return ld_fail(l, "bad MBOX");
	int r = stor_mailbox_get_by_guid(l->scratch, &g, &mb, &err);
	if (r < 0)
		return ld_fail(l, "MBOX: %s", err);
	bool ok = r > 0 && mb.uidvalidity == uidvalidity && strcmp(mb.name, name) == 0;
	if (r > 0)
		stor_mailbox_free(&mb);
	if (!ok)
		return ld_fail(l, "MBOX of a mailbox the bundle did not create");
	/* Ids are 1, 2, ... in order, so SELECT finds one by index. */
	if (id != l->ids.count + 1)
		return ld_fail(l, "MBOX id %u out of order", id);
	if (l->ids.count >= SYNC_MAX_MAILBOXES)
		return ld_fail(l, "too many mailboxes");
	struct srv_id e = { id, g };
	ARRAY_PUSH(&l->ids, e);
	return 0;
}

static int ld_select(struct loader *l, const struct proto_cmd *cmd)
{
	uint32_t id;
	if (proto_arg_u32(&cmd->args[0], &id) < 0)
		return ld_fail(l, "bad SELECT");
	if (id == 0 || id > l->ids.count)
		return ld_fail(l, "SELECT of an unknown id");
	l->selected = true;
	l->sel = l->ids.items[id - 1].guid;
	return 0;
}

static int ld_sync_begin(struct loader *l, const struct proto_cmd *cmd, size_t npos)
{
	uint64_t last_modseq, hms, last_uidnext, uidnext;
	if (npos != 4 || cmd->arg_count != 4 ||
	    proto_arg_u64(&cmd->args[0], INT64_MAX, &last_modseq) < 0 ||
	    proto_arg_u64(&cmd->args[1], INT64_MAX, &hms) < 0 ||
	    proto_arg_u64(&cmd->args[2], UINT32_MAX, &last_uidnext) < 0 ||
	    proto_arg_u64(&cmd->args[3], UINT32_MAX, &uidnext) < 0 || last_modseq != 0 ||
	    last_uidnext != 1 || uidnext == 0)
		return ld_fail(l, "bad SYNC-BEGIN (a bundle carries whole mailboxes)");
	/* Every SAVE and EXPUNGE that follows stays below these two, so this
	 * bounds all of the mailbox's UIDs and modseqs. */
	if (!mail_uidnext_valid(uidnext) || !mail_modseq_valid(hms))
		return ld_fail(l, "SYNC-BEGIN with %s", MAIL_LIMITS_TEXT);
	l->in_sync = true;
	l->hms = hms;
	l->uidnext = (uint32_t)uidnext;
	ARRAY_FREE(&l->placeholders);
	return 0;
}

/* Appends to the scratch store.  With text NULL (NIL in the bundle) the
 * text comes from the scratch store or this node, else it is a
 * placeholder that must not stay live (only a tombstone may lack it). */
static int ld_append(struct loader *l, const struct ld_msg *m, const struct proto_arg *text_arg)
{
	const char *err;
	struct buf text = BUF_INIT;
	struct stor_append req = {
		.uid = m->uid, .modseq = m->modseq, .guid = &m->guid, .flags = m->f.flags,
		.keywords = (const char *const *)m->f.keywords.items,
		.keyword_count = m->f.keywords.count,
		.internaldate = m->date, .internaldate_tz = m->tz,
		.stamps_given = true, .stamps = m->stamps.items, .stamp_count = m->stamps.count,
	};
	int ret = 0;
	if (text_arg != NULL) {
		req.text = text_arg->str;
		req.text_len = text_arg->len;
	} else {
		uint64_t size;
		int r = stor_text_exists(l->scratch, &m->guid, &size, &err);
		if (r == 0) {
			r = stor_text_exists(l->db, &m->guid, &size, &err);
			if (r > 0 && size > l->max_message_size)
				r = 0;
			if (r > 0 && stor_text_read(l->db, &m->guid, 0, size, &text, &err) < 0)
				r = -1;
			if (r > 0) {
				req.text = text.data != NULL ? (const void *)text.data : "";
				req.text_len = text.len;
			} else if (r == 0) {
				req.text = "";
				req.text_len = 0;
				ARRAY_PUSH(&l->placeholders, m->uid);
			}
		}
		if (r < 0)
			ret = ld_fail(l, "reading a text: %s", err);
	}
	if (ret == 0 && stor_msg_append(l->scratch, &l->sel, &req, NULL, NULL, &err) < 0)
		ret = ld_fail(l, "SAVE of UID %u: %s", m->uid, err);
	buf_free(&text);
	return ret;
}

/* Whether a tombstone (uid, g) of the bundle would hide a move from the
 * merge: this node holds another message h at uid, which the bundle holds
 * live at another UID (the other node moved it there, a UID conflict
 * fixed).  Without the tombstone the merge sees h held elsewhere, drops
 * ours and takes theirs; with it, it would renumber ours and keep h
 * twice.  1 yes, 0 no, -1 error. */
static int ld_tomb_hides_move(struct loader *l, uint32_t uid, const struct guid *g)
{
	struct stor_msg here;
	const char *err;
	uint32_t at;
	int r = stor_msg_get(l->db, &l->sel, uid, &here, &err);
	if (r <= 0)
		return r < 0 ? ld_fail(l, "%s", err) : 0;
	bool other = guid_cmp(&here.guid, g) != 0;
	if (other)
		r = stor_msg_find_guid(l->scratch, &l->sel, &here.guid, &at, &err);
	stor_msg_free(&here);
	if (!other)
		return 0;
	if (r < 0)
		return ld_fail(l, "%s", err);
	return r > 0 && at != uid;
}

static void ld_pending_clear(struct loader *l)
{
	if (l->pending_active) {
		sync_flags_free(&l->pending.f);
		stor_stamp_list_free(&l->pending.stamps);
	}
	l->pending_active = false;
}

/* A held SAVE turned out to be a live message: append it now. */
static int ld_pending_flush(struct loader *l)
{
	if (!l->pending_active)
		return 0;
	int r = ld_append(l, &l->pending, NULL);
	ld_pending_clear(l);
	return r;
}

static int ld_save(struct loader *l, const struct proto_cmd *cmd)
{
	struct ld_msg m;
	struct proto_save ps;
	const char *err;
	memset(&m, 0, sizeof(m));
	int cr = proto_read_save(cmd, PROTO_SAVE_GIVEN, &ps, &err);
	if (cr == PROTO_CODEC_BAD)
		return ld_fail(l, "bad SAVE: %s", err);
	if (cr == PROTO_CODEC_LIMIT || ps.uid >= l->uidnext || ps.modseq > l->hms) {
		if (cr == PROTO_CODEC_OK)
			proto_save_free(&ps);
		return ld_fail(l, "SAVE outside the mailbox's UIDNEXT or HIGHESTMODSEQ");
	}
	m.uid = ps.uid;
	m.modseq = ps.modseq;
	m.guid = ps.guid;
	m.date = ps.date;
	m.tz = ps.tz;
	bool stamped;
	if (sync_cmd_stamps(cmd, 6, &stamped, &m.stamps) < 0) {
		proto_save_free(&ps);
		return ld_fail(l, "bad SAVE stamps");
	}
	if (!stamped)
		sync_stamps_legacy(m.modseq, &m.stamps);
	sync_flags_take(&m.f, &ps.f);
	const struct proto_arg *t = ps.text_arg;
	if (t == NULL) {
		/* Maybe the first half of a tombstone: decided by the next
		 * command. */
		int r = ld_tomb_hides_move(l, m.uid, &m.guid);
		if (r != 0) {
			if (r < 0) {
				sync_flags_free(&m.f);
				stor_stamp_list_free(&m.stamps);
				return -1;
			}
			/* Held with its flags: it may turn out to be live. */
			l->pending = m;
			l->pending_active = true;
			return 0;
		}
	}
	int ret = ld_append(l, &m, t);
	sync_flags_free(&m.f);
	stor_stamp_list_free(&m.stamps);
	return ret;
}

static int ld_expunge(struct loader *l, const struct proto_cmd *cmd)
{
	stor_uid_list uids;
	uint64_t modseq;
	const char *err;
	if (sync_arg_uids(&cmd->args[0], BUNDLE_MAX_EXPUNGE_UIDS, &uids) < 0 ||
	    proto_arg_u64(&cmd->args[1], INT64_MAX, &modseq) < 0)
		return ld_fail(l, "bad EXPUNGE");
	int ret = 0;
	if (modseq == 0 || modseq > l->hms)
		ret = ld_fail(l, "EXPUNGE outside the mailbox's HIGHESTMODSEQ");
	for (size_t i = 0; i < uids.count && ret == 0; i++) {
		if (uids.items[i] >= l->uidnext)
			ret = ld_fail(l, "EXPUNGE outside the mailbox's UIDNEXT");
	}
	if (ret == 0 && stor_msg_expunge(l->scratch, &l->sel, uids.items, uids.count, modseq,
					 NULL, &err) < 0)
		ret = ld_fail(l, "EXPUNGE: %s", err);
	ARRAY_FREE(&uids);
	return ret;
}

/* Whether this node expunged the message (GUID g at uid) of the mailbox:
 * then the expunge wins the merge and its text is never needed here. */
static int ld_expunged_here(struct loader *l, uint32_t uid, const struct guid *g,
			    stor_tombstone_list *tombs, bool *loaded)
{
	const char *err;
	if (!*loaded) {
		stor_msg_list msgs;
		struct stor_mailbox mb;
		int r = stor_mailbox_get_by_guid(l->db, &l->sel, &mb, &err);
		if (r < 0)
			return ld_fail(l, "%s", err);
		*loaded = true;
		if (r == 0)
			return 0;
		stor_mailbox_free(&mb);
		if (stor_changes_since(l->db, &l->sel, 0, &msgs, tombs, &err) < 0)
			return ld_fail(l, "%s", err);
		stor_msg_list_free(&msgs);
	}
	/* Tombstones come in UID order. */
	size_t lo = 0, hi = tombs->count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (tombs->items[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < tombs->count && tombs->items[lo].uid == uid &&
	       guid_cmp(&tombs->items[lo].guid, g) == 0;
}

static int ld_sync_end(struct loader *l)
{
	const char *err;
	struct stor_msg m;
	stor_tombstone_list tombs = ARRAY_INIT;
	bool loaded = false;
	int ret = 0;
	for (size_t i = 0; i < l->placeholders.count && ret == 0; i++) {
		int r = stor_msg_get(l->scratch, &l->sel, l->placeholders.items[i], &m, &err);
		if (r < 0)
			ret = ld_fail(l, "%s", err);
		if (r <= 0)
			continue;
		r = ld_expunged_here(l, m.uid, &m.guid, &tombs, &loaded);
		if (r == 0) {
			char gh[GUID_HEX_SIZE];
			guid_to_hex(&m.guid, gh);
			ret = ld_fail(l, "it leaves out the text of message %s, which this node "
					 "does not hold (export it again without --since)", gh);
		} else if (r < 0) {
			ret = -1;
		}
		stor_msg_free(&m);
	}
	ARRAY_FREE(&tombs);
	if (ret < 0)
		return -1;
	ARRAY_FREE(&l->placeholders);
	if (stor_mailbox_raise(l->scratch, &l->sel, l->uidnext, l->hms, &err) < 0)
		return ld_fail(l, "%s", err);
	stor_msg_list msgs;
	if (stor_msg_list_range(l->scratch, &l->sel, 1, UINT32_MAX, &msgs, &err) < 0)
		return ld_fail(l, "%s", err);
	struct ld_snap snap = { l->sel, msgs };
	ARRAY_PUSH(&l->snaps, snap);
	l->in_sync = false;
	return 0;
}

static int ld_command(struct loader *l, const struct proto_cmd *cmd)
{
	size_t npos;
	const char *err;
	char tag[16];
	snprintf(tag, sizeof(tag), "B%u", ++l->next_tag);
	if (strcmp(cmd->tag, tag) != 0)
		return ld_fail(l, "command tag %.32s where %s was due", cmd->tag, tag);
	if (proto_cmd_is_status(cmd) || proto_cmd_validate(cmd, &npos, &err) < 0)
		return ld_fail(l, "command %s: %s", tag, proto_cmd_is_status(cmd) ? "a status line" : err);
	const char *n = cmd->name;
	if (l->pending_active) {
		/* "SAVE uid ... NIL" then "EXPUNGE uid": a tombstone left out. */
		stor_uid_list uids;
		bool tomb = false;
		if (proto_cmd_is(cmd, "EXPUNGE") && cmd->arg_count == 2 &&
		    sync_arg_uids(&cmd->args[0], 1, &uids) == 0) {
			tomb = uids.count == 1 && uids.items[0] == l->pending.uid;
			ARRAY_FREE(&uids);
		}
		if (tomb) {
			ld_pending_clear(l);
			return 0;
		}
		if (ld_pending_flush(l) < 0)
			return -1;
	}
	bool sync_cmd = proto_cmd_is(cmd, "SAVE") || proto_cmd_is(cmd, "EXPUNGE") ||
			proto_cmd_is(cmd, "SYNC-END");
	if (sync_cmd != l->in_sync)
		return ld_fail(l, "%s %s outside SYNC-BEGIN ... SYNC-END", tag, n);
	bool stamps_opt = proto_cmd_is(cmd, "SAVE") && cmd->arg_count == npos + 2 &&
			  proto_cmd_option(cmd, npos, "STAMPS") != NULL;
	if (!proto_cmd_is(cmd, "CREATE") && cmd->arg_count != npos && !stamps_opt)
		return ld_fail(l, "%s %s with options", tag, n);
	if (proto_cmd_is(cmd, "CREATE"))
		return ld_create(l, cmd, npos);
	if (proto_cmd_is(cmd, "SUBSCRIBE") || proto_cmd_is(cmd, "UNSUBSCRIBE")) {
		const char *name;
		size_t len;
		bool on = proto_cmd_is(cmd, "SUBSCRIBE");
		if (ld_user(l, &cmd->args[0]) < 0 || proto_arg_str(&cmd->args[1], &name, &len) < 0 ||
		    strlen(name) != len || len > STOR_MAX_MAILBOX_NAME_LEN)
			return ld_fail(l, "bad %s", on ? "SUBSCRIBE" : "UNSUBSCRIBE");
		if (stor_subscribe(l->scratch, l->v->user, name, on, &err) < 0)
			return ld_fail(l, "%s: %s", on ? "SUBSCRIBE" : "UNSUBSCRIBE", err);
		return 0;
	}
	if (proto_cmd_is(cmd, "DELETE")) {
		const char *name;
		size_t len;
		struct guid g;
		if (ld_user(l, &cmd->args[0]) < 0 || proto_arg_str(&cmd->args[1], &name, &len) < 0 ||
		    strlen(name) != len || len > STOR_MAX_MAILBOX_NAME_LEN ||
		    proto_arg_guid(&cmd->args[2], &g) < 0)
			return ld_fail(l, "bad DELETE");
		/* A mailbox the bundle also creates is refused here. */
		if (stor_mailbox_tomb_add(l->scratch, l->v->user, &g, name, &err) < 0)
			return ld_fail(l, "DELETE: %s", err);
		return 0;
	}
	if (proto_cmd_is(cmd, "MBOX"))
		return ld_mbox(l, cmd);
	if (proto_cmd_is(cmd, "SELECT"))
		return ld_select(l, cmd);
	if (proto_cmd_is(cmd, "SYNC-BEGIN")) {
		if (!l->selected)
			return ld_fail(l, "SYNC-BEGIN without SELECT");
		return ld_sync_begin(l, cmd, npos);
	}
	if (proto_cmd_is(cmd, "SAVE"))
		return ld_save(l, cmd);
	if (proto_cmd_is(cmd, "EXPUNGE"))
		return ld_expunge(l, cmd);
	if (proto_cmd_is(cmd, "SYNC-END"))
		return ld_sync_end(l);
	return ld_fail(l, "%s: %s has no place in a bundle", tag, n);
}

static int ld_feed(struct loader *l, const unsigned char *data, size_t len)
{
	while (len > 0) {
		size_t used;
		const struct proto_cmd *cmd;
		int r = proto_parser_parse(l->parser, data, len, &used, &cmd);
		if (r < 0) {
			const char *code, *text;
			proto_parser_get_error(l->parser, &code, &text);
			return ld_fail(l, "command stream: %s", text);
		}
		data += used;
		len -= used;
		if (r > 0 && ld_command(l, cmd) < 0)
			return -1;
	}
	return 0;
}

/* The inflater, kept across steps. */
struct inflater {
	z_stream z;
	bool started;
	const unsigned char *in;
	uint64_t in_left, produced, raw_len;
	unsigned char *out;
};

/* Inflates about budget octets into the loader, never past the announced
 * size: 1 more to do, 0 the body is done, -1 refused (l->error). */
static int ld_inflate_step(struct loader *l, struct inflater *f, size_t budget)
{
	int zr = Z_OK;
	size_t done = 0;
	if (!f->started) {
		if (inflateInit(&f->z) != Z_OK)
			return ld_fail(l, "cannot start zlib");
		f->started = true;
		f->out = xmalloc(65536);
	}
	while (done < budget) {
		if (f->z.avail_in == 0 && f->in_left > 0) {
			size_t n = f->in_left > (1u << 30) ? (1u << 30) : (size_t)f->in_left;
			f->z.next_in = (Bytef *)(uintptr_t)f->in;
			f->z.avail_in = (uInt)n;
			f->in += n;
			f->in_left -= n;
		}
		uint64_t room = f->raw_len - f->produced;
		/* One octet more than announced is allowed out, to see an
		 * overlong body. */
		size_t cap = room >= 65535 ? 65536 : (size_t)room + 1;
		f->z.next_out = f->out;
		f->z.avail_out = (uInt)cap;
		zr = inflate(&f->z, Z_NO_FLUSH);
		size_t got = cap - f->z.avail_out;
		if (zr != Z_OK && zr != Z_STREAM_END && !(zr == Z_BUF_ERROR && got > 0))
			return ld_fail(l, "the body is not a valid zlib stream");
		if (got > room)
			return ld_fail(l, "the body inflates to more than %" PRIu64 " octets",
				       f->raw_len);
		f->produced += got;
		done += got + 1;
		if (got > 0 && ld_feed(l, f->out, got) < 0)
			return -1;
		if (zr == Z_STREAM_END)
			break;
		if (got == 0 && f->z.avail_in == 0 && f->in_left == 0)
			return ld_fail(l, "the body's zlib stream is truncated");
	}
	if (zr != Z_STREAM_END)
		return 1;
	if (f->produced != f->raw_len || f->z.avail_in != 0 || f->in_left != 0)
		return ld_fail(l, "the body does not match its announced sizes");
	if (ld_pending_flush(l) < 0)
		return -1;
	if (l->in_sync || !proto_parser_is_idle(l->parser))
		return ld_fail(l, "the command stream ends in the middle of a mailbox");
	return 0;
}

static void inflater_free(struct inflater *f)
{
	if (f->started)
		inflateEnd(&f->z);
	f->started = false;
	free(f->out);
	f->out = NULL;
}

/* ------------------------------------------------------------------ */
/* Import */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void rmtree(const char *path)
{
	nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void sync_bundle_import_result_free(struct sync_bundle_import_result *res)
{
	free(res->user);
	res->user = NULL;
	buf_free(&res->state);
}

/* ADOPT lines: messages we hold after the merge exactly as the bundle had
 * them (see struct adopt); and the TEXT lines. */
static int adopts_write(struct stor_db *db, const struct loader *l, struct buf *texts,
			struct buf *out, char **error_r)
{
	const char *err;
	for (size_t i = 0; i < l->snaps.count; i++) {
		const struct ld_snap *sn = &l->snaps.items[i];
		stor_msg_list ours;
		if (sn->msgs.count == 0)
			continue;
		char mh[GUID_HEX_SIZE];
		guid_to_hex(&sn->mailbox, mh);
		for (size_t k = 0; k < sn->msgs.count; k++) {
			char th[GUID_HEX_SIZE];
			guid_to_hex(&sn->msgs.items[k].guid, th);
			buf_appendf(texts, "TEXT %s %u %s\n", mh, sn->msgs.items[k].uid, th);
		}
		if (stor_msg_list_range(db, &sn->mailbox, 1, UINT32_MAX, &ours, &err) < 0) {
			*error_r = fmt_error("%s", err);
			return -1;
		}
		size_t j = 0;
		for (size_t k = 0; k < sn->msgs.count; k++) {
			const struct stor_msg *b = &sn->msgs.items[k];
			while (j < ours.count && ours.items[j].uid < b->uid)
				j++;
			if (j == ours.count)
				break;
			const struct stor_msg *o = &ours.items[j];
			if (o->uid == b->uid && guid_cmp(&o->guid, &b->guid) == 0 &&
			    o->modseq >= b->modseq &&
			    sync_flags_equal(o->flags, &o->keywords, b->flags, &b->keywords))
				buf_appendf(out, "ADOPT %s %u %" PRIu64 " %" PRIu64 "\n", mh, b->uid,
					    b->modseq, o->modseq);
		}
		stor_msg_list_free(&ours);
	}
	return 0;
}

static void ld_snaps_free(struct loader *l)
{
	for (size_t i = 0; i < l->snaps.count; i++)
		stor_msg_list_free(&l->snaps.items[i].msgs);
	ARRAY_FREE(&l->snaps);
}

/* The merge runs a sync client (the node's store) against a sync server
 * (the scratch copy) joined by two buffers, a bounded number of rounds per
 * step.  A sync that fails is run again (at most MERGE_RUNS times in all),
 * as the sync engine itself does for a mailbox that does not converge:
 * what a run applied stays and the next run compares again.  One case needs
 * it today: a message we drop because the other copy holds it under another
 * UID has its text freed by the drop before the engine stores the other
 * copy, which then fails; the next run FETCHes the text from the scratch
 * copy. */
#define MERGE_RUNS 3
#define MERGE_ROUNDS_PER_STEP 4
#define LOAD_OCTETS_PER_STEP (1024 * 1024)

struct sync_bundle_import {
	struct stor_db *db, *scratch;
	uint32_t own_sid;
	struct verified v;
	bool base_known;
	char *scratch_dir;
	struct loader l;
	struct inflater f;
	enum { IMP_LOAD, IMP_MERGE, IMP_DONE, IMP_FAILED } phase;
	/* The merge. */
	struct buf to_server, to_client;
	struct sync_transport ct, st;
	struct sync_client *c;
	struct sync_server *s;
	unsigned run;
	struct sync_report report;
	struct sync_bundle_import_result res;
};

static void imp_to_server(void *ctx, const void *data, size_t len)
{
	struct sync_bundle_import *imp = ctx;
	buf_append(&imp->to_server, data, len);
}

static void imp_to_client(void *ctx, const void *data, size_t len)
{
	struct sync_bundle_import *imp = ctx;
	buf_append(&imp->to_client, data, len);
}

static void merge_end_run(struct sync_bundle_import *imp)
{
	sync_client_destroy(&imp->c);
	sync_server_destroy(&imp->s);
	buf_reset(&imp->to_server);
	buf_reset(&imp->to_client);
}

static void merge_start_run(struct sync_bundle_import *imp)
{
	struct sync_settings ss = {
		.peer_sid = SYNC_BUNDLE_PEER_BASE + imp->v.source,
		.user = imp->v.user,
		.full = true,
	};
	imp->c = sync_client_create(imp->db, &ss, &imp->ct);
	imp->s = sync_server_create(imp->scratch, imp->own_sid, &imp->st);
}

/* Hands what one end sent to the other (which may answer meanwhile, into
 * the other buffer). */
static int merge_deliver(struct sync_bundle_import *imp, bool to_server)
{
	struct buf *b = to_server ? &imp->to_server : &imp->to_client;
	if (b->len == 0)
		return 0;
	struct buf tmp = *b;
	buf_init(b);
	int r = to_server ? sync_server_feed(imp->s, tmp.data, tmp.len) :
			    sync_client_feed(imp->c, tmp.data, tmp.len);
	buf_free(&tmp);
	return r;
}

/* 1 more to do, 0 merged, -1 failed for good (*error_r). */
static int merge_step(struct sync_bundle_import *imp, char **error_r)
{
	const char *why = NULL;
	for (unsigned i = 0; i < MERGE_ROUNDS_PER_STEP && why == NULL; i++) {
		enum sync_step_result r = sync_client_step(imp->c);
		if (imp->run == 0)
			imp->report = *sync_client_report(imp->c);
		if (r == SYNC_STEP_DONE) {
			merge_end_run(imp);
			return 0;
		}
		if (r == SYNC_STEP_ERROR) {
			why = "";
			break;
		}
		bool moved = imp->to_server.len > 0 || imp->to_client.len > 0 ||
			     sync_server_busy(imp->s);
		if (merge_deliver(imp, true) < 0 ||
		    (sync_server_busy(imp->s) && sync_server_step(imp->s) < 0) ||
		    merge_deliver(imp, false) < 0)
			why = "";
		else if (r == SYNC_STEP_WAIT && !moved)
			why = "the sync did not finish";
	}
	if (why == NULL)
		return 1;
	const char *e = sync_client_error(imp->c);
	if (e == NULL)
		e = sync_server_error(imp->s);
	if (e == NULL)
		e = why[0] != '\0' ? why : "the sync failed";
	free(*error_r);
	*error_r = fmt_error("merging the bundle failed: %s", e);
	bool again = imp->run + 1 < MERGE_RUNS;
	log_warnx("bundle from %u for %s: %s%s", imp->v.source, imp->v.user, *error_r,
		  again ? "; running it again" : "");
	merge_end_run(imp);
	if (!again)
		return -1;
	free(*error_r);
	*error_r = NULL;
	imp->run++;
	merge_start_run(imp);
	return 1;
}

struct sync_bundle_import *sync_bundle_import_begin(struct stor_db *db,
						    const struct sync_bundle_import_settings *set,
						    const void *data, size_t len, char **error_r)
{
	struct verified v;
	*error_r = NULL;
	if (verify(db, set, data, len, &v, error_r) < 0)
		return NULL;

	/* The base check: a SINCE that names one of our exports made after
	 * our last import from this source means the source had merged
	 * everything we knew at that import, so the last common mailbox list
	 * the sync engine kept for it is still true. */
	bool base_known = false;
	if (!v.since_full) {
		uint64_t ctr;
		struct last_import li;
		int r1 = exports_find(db, v.user, v.since_hex, &ctr, error_r);
		int r2 = r1 < 0 ? -1 : last_import_get(db, v.source, v.user, &li, error_r);
		base_known = r1 > 0 && (r2 == 0 || ctr > li.counter);
		if (r2 >= 0)
			buf_free(&li.raw);
		if (r1 < 0 || r2 < 0)
			return NULL;
	}

	char *tmpl = xasprintf("%s/bundle-scratch.XXXXXX", set->scratch_parent);
	if (mkdtemp(tmpl) == NULL) {
		*error_r = fmt_error("cannot make a scratch directory in %s: %s",
				     set->scratch_parent, strerror(errno));
		free(tmpl);
		return NULL;
	}
	struct stor_settings sset = { .dir = tmpl, .max_message_size = set->max_message_size };
	struct stor_db *scratch = NULL;
	char *oerr = NULL;
	if (stor_open(&sset, &scratch, &oerr) < 0) {
		*error_r = fmt_error("cannot open a scratch store: %s", oerr);
		free(oerr);
		rmtree(tmpl);
		free(tmpl);
		return NULL;
	}

	struct sync_bundle_import *imp = xcalloc(1, sizeof(*imp));
	imp->db = db;
	imp->scratch = scratch;
	imp->own_sid = set->own_sid;
	imp->v = v;
	imp->base_known = base_known;
	imp->scratch_dir = tmpl;
	imp->l.db = db;
	imp->l.scratch = scratch;
	imp->l.v = &imp->v;
	imp->l.max_message_size = set->max_message_size != 0 ? set->max_message_size :
							       SYNC_BUNDLE_MAX_SIZE;
	struct proto_parser_settings ps;
	proto_parser_settings_default(&ps);
	imp->l.parser = proto_parser_create(&ps);
	imp->f.in = (const unsigned char *)data + v.header_len;
	imp->f.in_left = v.comp_len;
	imp->f.raw_len = v.raw_len;
	imp->phase = IMP_LOAD;
	buf_init(&imp->to_server);
	buf_init(&imp->to_client);
	imp->ct.send = imp_to_server;
	imp->ct.ctx = imp;
	imp->st.send = imp_to_client;
	imp->st.ctx = imp;
	buf_init(&imp->res.state);
	return imp;
}

static int imp_fail(struct sync_bundle_import *imp)
{
	imp->phase = IMP_FAILED;
	return -1;
}

/* Records the import and makes the state file. */
static int imp_finish(struct sync_bundle_import *imp, char **error_r)
{
	const char *err;
	const struct verified *v = &imp->v;
	if (last_import_set(imp->db, v->source, v->user, v->created, v->digest_hex, error_r) < 0)
		return -1;
	if (stor_sync(imp->db, &err) < 0) {
		*error_r = fmt_error("storing the merge: %s", err);
		return -1;
	}
	struct buf adopts = BUF_INIT, texts = BUF_INIT;
	int ret = adopts_write(imp->db, &imp->l, &texts, &adopts, error_r);
	if (ret == 0) {
		write_state(&imp->res.state, v->user, v->source, v->created, v->digest_hex, &texts,
			    &adopts);
		imp->res.user = xstrdup(v->user);
		imp->res.source = v->source;
		imp->res.base_known = imp->base_known;
		imp->res.report = imp->report;
	}
	buf_free(&adopts);
	buf_free(&texts);
	return ret;
}

int sync_bundle_import_step(struct sync_bundle_import *imp, char **error_r)
{
	const char *err;
	*error_r = NULL;
	if (imp->phase == IMP_DONE)
		return 0;
	if (imp->phase == IMP_FAILED) {
		*error_r = xstrdup("the import failed already");
		return -1;
	}
	if (imp->phase == IMP_LOAD) {
		int r = ld_inflate_step(&imp->l, &imp->f, LOAD_OCTETS_PER_STEP);
		if (r < 0) {
			*error_r = imp->l.error != NULL ? imp->l.error : xstrdup("bundle refused");
			imp->l.error = NULL;
			return imp_fail(imp);
		}
		if (r > 0)
			return 1;
		inflater_free(&imp->f);
		proto_parser_destroy(&imp->l.parser);
		/* 10.  Everything checked: from here on the node's store
		 * changes. */
		if (!imp->base_known) {
			char *key = xasprintf("sync.list.%u.%s", SYNC_BUNDLE_PEER_BASE + imp->v.source,
					      imp->v.user);
			int mr = stor_meta_set(imp->db, key, "", 0, &err);
			free(key);
			if (mr < 0) {
				*error_r = fmt_error("%s", err);
				return imp_fail(imp);
			}
		}
		imp->phase = IMP_MERGE;
		merge_start_run(imp);
		return 1;
	}
	int r = merge_step(imp, error_r);
	if (r < 0)
		return imp_fail(imp);
	if (r > 0)
		return 1;
	if (imp_finish(imp, error_r) < 0)
		return imp_fail(imp);
	imp->phase = IMP_DONE;
	return 0;
}

void sync_bundle_import_take_result(struct sync_bundle_import *imp,
				    struct sync_bundle_import_result *res_r)
{
	*res_r = imp->res;
	memset(&imp->res, 0, sizeof(imp->res));
	buf_init(&imp->res.state);
}

void sync_bundle_import_destroy(struct sync_bundle_import **impp)
{
	struct sync_bundle_import *imp = *impp;
	if (imp == NULL)
		return;
	*impp = NULL;
	merge_end_run(imp);
	buf_free(&imp->to_server);
	buf_free(&imp->to_client);
	inflater_free(&imp->f);
	proto_parser_destroy(&imp->l.parser);
	ld_pending_clear(&imp->l);
	ARRAY_FREE(&imp->l.ids);
	ARRAY_FREE(&imp->l.placeholders);
	ld_snaps_free(&imp->l);
	free(imp->l.error);
	sync_bundle_import_result_free(&imp->res);
	stor_close(&imp->scratch);
	rmtree(imp->scratch_dir);
	free(imp->scratch_dir);
	free(imp);
}

int sync_bundle_import(struct stor_db *db, const struct sync_bundle_import_settings *set,
		       const void *data, size_t len, struct sync_bundle_import_result *res_r,
		       char **error_r)
{
	memset(res_r, 0, sizeof(*res_r));
	buf_init(&res_r->state);
	struct sync_bundle_import *imp = sync_bundle_import_begin(db, set, data, len, error_r);
	if (imp == NULL)
		return -1;
	int r;
	while ((r = sync_bundle_import_step(imp, error_r)) > 0)
		;
	if (r == 0)
		sync_bundle_import_take_result(imp, res_r);
	sync_bundle_import_destroy(&imp);
	return r;
}
