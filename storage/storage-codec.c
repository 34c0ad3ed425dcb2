/* The encodings of the store (see storage-private.h for the keyspace): key
 * building, the value put/get helpers, the records of mailboxes, messages
 * and texts with their list and hash helpers, and keyword checks. */
#include "storage/storage-private.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>

#include "lib/xalloc.h"

/* ---- Keys ---- */

void stor_key_init(struct stor_key *k, char prefix)
{
	k->len = 1;
	k->b[0] = (unsigned char)prefix;
}

void stor_key_bytes(struct stor_key *k, const void *p, size_t n)
{
	/* Callers validate lengths before building keys; overflowing here is
	 * our bug. */
	if (n > sizeof(k->b) - k->len)
		abort();
	memcpy(k->b + k->len, p, n);
	k->len += n;
}

void stor_key_u32(struct stor_key *k, uint32_t v)
{
	unsigned char b[4] = { v >> 24, v >> 16, v >> 8, v };
	stor_key_bytes(k, b, 4);
}

void stor_key_u64(struct stor_key *k, uint64_t v)
{
	stor_key_u32(k, (uint32_t)(v >> 32));
	stor_key_u32(k, (uint32_t)v);
}

void stor_key_guid(struct stor_key *k, const struct guid *g)
{
	stor_key_bytes(k, g->b, GUID_SIZE);
}

uint32_t stor_be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

uint64_t stor_be64(const unsigned char *p)
{
	return (uint64_t)stor_be32(p) << 32 | stor_be32(p + 4);
}

/* ---- Values ---- */

void stor_put_u8(struct buf *b, uint8_t v)
{
	buf_append_byte(b, v);
}

void stor_put_u32(struct buf *b, uint32_t v)
{
	buf_append_be32(b, v);
}

void stor_put_u64(struct buf *b, uint64_t v)
{
	buf_append_be64(b, v);
}

void stor_put_bytes(struct buf *b, const void *p, size_t n)
{
	buf_append(b, p, n);
}

void stor_put_str(struct buf *b, const char *s)
{
	size_t n = strlen(s);
	stor_put_u32(b, (uint32_t)n);
	buf_append(b, s, n);
}

void stor_dec_init(struct stor_dec *d, const void *p, size_t len)
{
	d->p = p;
	d->len = len;
	d->pos = 0;
	d->bad = false;
}

static const unsigned char *dec_take(struct stor_dec *d, size_t n)
{
	if (d->bad || n > d->len - d->pos) {
		d->bad = true;
		return NULL;
	}
	const unsigned char *p = d->p + d->pos;
	d->pos += n;
	return p;
}

uint8_t stor_get_u8(struct stor_dec *d)
{
	const unsigned char *p = dec_take(d, 1);
	return p == NULL ? 0 : p[0];
}

uint32_t stor_get_u32(struct stor_dec *d)
{
	const unsigned char *p = dec_take(d, 4);
	return p == NULL ? 0 : stor_be32(p);
}

uint64_t stor_get_u64(struct stor_dec *d)
{
	const unsigned char *p = dec_take(d, 8);
	return p == NULL ? 0 : stor_be64(p);
}

void stor_get_bytes(struct stor_dec *d, void *out, size_t n)
{
	const unsigned char *p = dec_take(d, n);
	if (p == NULL)
		memset(out, 0, n);
	else
		memcpy(out, p, n);
}

char *stor_get_str(struct stor_dec *d, size_t max)
{
	uint32_t n = stor_get_u32(d);
	if (d->bad || n > max) {
		d->bad = true;
		return NULL;
	}
	const unsigned char *p = dec_take(d, n);
	if (p == NULL || memchr(p, '\0', n) != NULL) {
		d->bad = true;
		return NULL;
	}
	return xstrndup((const char *)p, n);
}

bool stor_dec_end(struct stor_dec *d)
{
	return !d->bad && d->pos == d->len;
}

/* ---- Records ---- */

#define MAILBOX_REC_VERSION 1
/* Version 2 added the flags' stamps; a version 1 record reads as all its
 * flags stamped at its modseq (STOR_STAMP_ALL). */
#define MSG_REC_VERSION 2
/* Version 1 also held the text's SHA-256 (hashing every append cost more
 * than anything else in it; the dump now hashes what it reads). */
#define TEXT_REC_VERSION 2

void stor_mailbox_encode(const struct stor_mailbox *mb, struct buf *out)
{
	stor_put_u8(out, MAILBOX_REC_VERSION);
	stor_put_bytes(out, mb->guid.b, GUID_SIZE);
	stor_put_str(out, mb->user);
	stor_put_str(out, mb->name);
	stor_put_u32(out, mb->uidvalidity);
	stor_put_u32(out, mb->uidnext);
	stor_put_u64(out, mb->highestmodseq);
	stor_put_u32(out, mb->messages);
	stor_put_u32(out, mb->unseen);
	stor_put_bytes(out, mb->digest, sizeof(mb->digest));
	stor_put_str(out, mb->special_use);
}

int stor_mailbox_decode(const void *p, size_t len, struct stor_mailbox *mb_r)
{
	struct stor_dec d;
	memset(mb_r, 0, sizeof(*mb_r));
	stor_dec_init(&d, p, len);
	if (stor_get_u8(&d) != MAILBOX_REC_VERSION)
		return -1;
	stor_get_bytes(&d, mb_r->guid.b, GUID_SIZE);
	mb_r->user = stor_get_str(&d, STOR_MAX_USER_LEN);
	mb_r->name = stor_get_str(&d, STOR_MAX_MAILBOX_NAME_LEN);
	mb_r->uidvalidity = stor_get_u32(&d);
	mb_r->uidnext = stor_get_u32(&d);
	mb_r->highestmodseq = stor_get_u64(&d);
	mb_r->messages = stor_get_u32(&d);
	mb_r->unseen = stor_get_u32(&d);
	stor_get_bytes(&d, mb_r->digest, sizeof(mb_r->digest));
	char *special = stor_get_str(&d, sizeof(mb_r->special_use) - 1);
	if (special != NULL) {
		strcpy(mb_r->special_use, special);
		free(special);
	}
	if (!stor_dec_end(&d) || mb_r->user == NULL || mb_r->name == NULL ||
	    mb_r->uidnext == 0 || mb_r->unseen > mb_r->messages) {
		stor_mailbox_free(mb_r);
		return -1;
	}
	return 0;
}

void stor_mailbox_free(struct stor_mailbox *mb)
{
	free(mb->user);
	free(mb->name);
	mb->user = mb->name = NULL;
}

void stor_msg_encode(const struct stor_msg *msg, struct buf *out)
{
	stor_put_u8(out, MSG_REC_VERSION);
	stor_put_bytes(out, msg->guid.b, GUID_SIZE);
	stor_put_u64(out, msg->modseq);
	stor_put_u32(out, msg->flags);
	stor_put_u32(out, (uint32_t)msg->keywords.count);
	for (size_t i = 0; i < msg->keywords.count; i++)
		stor_put_str(out, msg->keywords.items[i]);
	stor_put_u64(out, (uint64_t)msg->internaldate);
	stor_put_u32(out, (uint32_t)msg->internaldate_tz);
	stor_put_u64(out, msg->size);
	stor_put_u32(out, (uint32_t)msg->stamps.count);
	for (size_t i = 0; i < msg->stamps.count; i++) {
		/* A flag cannot have changed after its message: a modseq given
		 * lower than before (a hostile peer's UIDFIX) must not make
		 * the record unreadable. */
		uint64_t ms = msg->stamps.items[i].modseq;
		stor_put_str(out, msg->stamps.items[i].name);
		stor_put_u64(out, ms > msg->modseq ? msg->modseq : ms);
		stor_put_u64(out, (uint64_t)msg->stamps.items[i].time_ms);
	}
}

int stor_msg_decode(uint32_t uid, const void *p, size_t len, struct stor_msg *msg_r)
{
	struct stor_dec d;
	memset(msg_r, 0, sizeof(*msg_r));
	msg_r->uid = uid;
	stor_dec_init(&d, p, len);
	uint8_t version = stor_get_u8(&d);
	if (version != 1 && version != MSG_REC_VERSION)
		return -1;
	stor_get_bytes(&d, msg_r->guid.b, GUID_SIZE);
	msg_r->modseq = stor_get_u64(&d);
	msg_r->flags = stor_get_u32(&d);
	uint32_t kwcount = stor_get_u32(&d);
	if (kwcount > STOR_MAX_KEYWORDS)
		d.bad = true;
	for (uint32_t i = 0; i < kwcount && !d.bad; i++) {
		char *kw = stor_get_str(&d, STOR_MAX_KEYWORD_LEN);
		if (kw != NULL)
			ARRAY_PUSH(&msg_r->keywords, kw);
	}
	msg_r->internaldate = (int64_t)stor_get_u64(&d);
	msg_r->internaldate_tz = (int32_t)stor_get_u32(&d);
	msg_r->size = stor_get_u64(&d);
	if (version == 1) {
		struct stor_stamp st = { xstrdup(STOR_STAMP_ALL), msg_r->modseq, 0 };
		ARRAY_PUSH(&msg_r->stamps, st);
	} else {
		uint32_t n = stor_get_u32(&d);
		if (n > STOR_MAX_STAMPS)
			d.bad = true;
		for (uint32_t i = 0; i < n && !d.bad; i++) {
			struct stor_stamp st;
			st.name = stor_get_str(&d, STOR_MAX_KEYWORD_LEN);
			st.modseq = stor_get_u64(&d);
			st.time_ms = (int64_t)stor_get_u64(&d);
			if (st.name == NULL)
				break;
			ARRAY_PUSH(&msg_r->stamps, st);
			if (st.modseq > msg_r->modseq || st.time_ms < 0)
				d.bad = true;
		}
	}
	if (!stor_dec_end(&d) || (msg_r->flags & ~STOR_FLAGS_ALL) != 0 || uid == 0 ||
	    msg_r->modseq == 0) {
		stor_msg_free(msg_r);
		return -1;
	}
	return 0;
}

void stor_string_list_free(stor_string_list *list)
{
	for (size_t i = 0; i < list->count; i++)
		free(list->items[i]);
	ARRAY_FREE(list);
}

bool stor_keywords_have(const stor_string_list *kws, const char *name)
{
	for (size_t i = 0; i < kws->count; i++) {
		if (strcasecmp(kws->items[i], name) == 0)
			return true;
	}
	return false;
}

void stor_stamp_list_free(stor_stamp_list *list)
{
	for (size_t i = 0; i < list->count; i++)
		free(list->items[i].name);
	ARRAY_FREE(list);
}

void stor_msg_free(struct stor_msg *msg)
{
	stor_string_list_free(&msg->keywords);
	stor_stamp_list_free(&msg->stamps);
}

bool stor_msg_has_keyword(const struct stor_msg *msg, const char *kw)
{
	return stor_keywords_have(&msg->keywords, kw);
}

void stor_msg_stamp(const struct stor_msg *msg, const char *name, uint64_t *modseq_r,
		    int64_t *time_r)
{
	stor_stamps_lookup(&msg->stamps, name, modseq_r, time_r);
}

void stor_stamps_lookup(const stor_stamp_list *list, const char *name, uint64_t *modseq_r,
			int64_t *time_r)
{
	const struct stor_stamp *all = NULL;
	*modseq_r = 0;
	*time_r = 0;
	for (size_t i = 0; i < list->count; i++) {
		const struct stor_stamp *st = &list->items[i];
		if (strcasecmp(st->name, name) == 0) {
			*modseq_r = st->modseq;
			*time_r = st->time_ms;
			return;
		}
		if (strcmp(st->name, STOR_STAMP_ALL) == 0)
			all = st;
	}
	if (all != NULL) {
		*modseq_r = all->modseq;
		*time_r = all->time_ms;
	}
}

int64_t stor_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void stor_msg_list_free(stor_msg_list *list)
{
	for (size_t i = 0; i < list->count; i++)
		stor_msg_free(&list->items[i]);
	ARRAY_FREE(list);
}

void stor_mailbox_list_free(stor_mailbox_array *list)
{
	for (size_t i = 0; i < list->count; i++)
		stor_mailbox_free(&list->items[i]);
	ARRAY_FREE(list);
}

void stor_text_rec_encode(const struct stor_text_rec *t, const struct stor_extent *ext, size_t n,
			  struct buf *out)
{
	stor_put_u8(out, TEXT_REC_VERSION);
	stor_put_u32(out, t->refcount);
	stor_put_u64(out, t->size);
	stor_put_u32(out, (uint32_t)n);
	for (size_t i = 0; i < n; i++) {
		stor_put_u32(out, ext[i].seg);
		stor_put_u64(out, ext[i].off);
		stor_put_u32(out, ext[i].len);
	}
}

int stor_text_rec_decode(const void *p, size_t len, struct stor_text_rec *t_r,
			 stor_extent_list *ext_r)
{
	struct stor_dec d;
	stor_dec_init(&d, p, len);
	uint8_t version = stor_get_u8(&d);
	if (version != 1 && version != TEXT_REC_VERSION)
		return -1;
	t_r->refcount = stor_get_u32(&d);
	t_r->size = stor_get_u64(&d);
	if (version == 1) {
		unsigned char sha256[32];
		stor_get_bytes(&d, sha256, sizeof(sha256));
	}
	uint32_t n = stor_get_u32(&d);
	/* Each chunk takes 16 bytes: a count that doesn't fit is damage. */
	if (d.bad || n > (len - d.pos) / 16)
		return -1;
	uint64_t total = 0;
	for (uint32_t i = 0; i < n; i++) {
		struct stor_extent e;
		e.seg = stor_get_u32(&d);
		e.off = stor_get_u64(&d);
		e.len = stor_get_u32(&d);
		if (e.len == 0 || e.len > STOR_TEXT_CHUNK)
			return -1;
		total += e.len;
		if (ext_r != NULL)
			ARRAY_PUSH(ext_r, e);
	}
	return stor_dec_end(&d) && total == t_r->size ? 0 : -1;
}

const EVP_MD *stor_sha256(void)
{
	/* EVP_sha256() makes every EVP_DigestInit_ex() look the algorithm up
	 * again (OpenSSL 3); every change to a message hashes it.  Fetched once,
	 * kept for the life of the process. */
	static EVP_MD *md;
	if (md == NULL && (md = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL)
		abort();
	return md;
}

void stor_msg_hash(const struct stor_msg *msg, unsigned char out[16])
{
	unsigned char head[4 + GUID_SIZE + 4], md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	head[0] = msg->uid >> 24; head[1] = msg->uid >> 16;
	head[2] = msg->uid >> 8; head[3] = msg->uid;
	memcpy(head + 4, msg->guid.b, GUID_SIZE);
	uint32_t f = msg->flags;
	head[20] = f >> 24; head[21] = f >> 16; head[22] = f >> 8; head[23] = f;

	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (ctx == NULL || EVP_DigestInit_ex(ctx, stor_sha256(), NULL) != 1)
		abort();
	EVP_DigestUpdate(ctx, head, sizeof(head));
	for (size_t i = 0; i < msg->keywords.count; i++) {
		if (i > 0)
			EVP_DigestUpdate(ctx, "", 1);
		EVP_DigestUpdate(ctx, msg->keywords.items[i], strlen(msg->keywords.items[i]));
	}
	if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1)
		abort();
	EVP_MD_CTX_free(ctx);
	memcpy(out, md, 16);
}

/* ---- Keywords ---- */

static bool keyword_char_ok(unsigned char c)
{
	/* IMAP atom characters, less the backslash of system flags. */
	return c > 0x20 && c < 0x7f && strchr("(){%*\"\\]", c) == NULL;
}

int stor_kw_cmp(const void *a, const void *b)
{
	return strcasecmp(*(char *const *)a, *(char *const *)b);
}

int stor_keywords_normalize(struct stor_db *db, const char *const *kw, size_t count,
			    stor_string_list *out, const char **error_r)
{
	stor_string_list list = ARRAY_INIT;
	for (size_t i = 0; i < count; i++) {
		size_t n = strlen(kw[i]);
		if (n == 0 || n > STOR_MAX_KEYWORD_LEN) {
			stor_string_list_free(&list);
			return stor_err(db, error_r, "keyword length must be 1..%d bytes",
					STOR_MAX_KEYWORD_LEN);
		}
		for (size_t j = 0; j < n; j++) {
			if (!keyword_char_ok((unsigned char)kw[i][j])) {
				stor_string_list_free(&list);
				return stor_err(db, error_r, "invalid character in keyword");
			}
		}
		if (stor_keywords_have(&list, kw[i]))
			continue;
		if (list.count == STOR_MAX_KEYWORDS) {
			stor_string_list_free(&list);
			return stor_err(db, error_r, "too many keywords (at most %d per message)",
					STOR_MAX_KEYWORDS);
		}
		ARRAY_PUSH(&list, xstrdup(kw[i]));
	}
	if (list.count > 1)
		qsort(list.items, list.count, sizeof(list.items[0]), stor_kw_cmp);
	*out = list;
	return 0;
}

const char *stor_flag_name(enum stor_flag flag)
{
	switch (flag) {
	case STOR_FLAG_SEEN: return "\\Seen";
	case STOR_FLAG_ANSWERED: return "\\Answered";
	case STOR_FLAG_FLAGGED: return "\\Flagged";
	case STOR_FLAG_DELETED: return "\\Deleted";
	case STOR_FLAG_DRAFT: return "\\Draft";
	}
	return NULL;
}

