/* Derived data of message texts: see imap-derived.h.
 *
 * Layout (integers big-endian, strings as u32 length + bytes):
 *   u8 format, u64 text size, u32 have,
 *   str envelope, str body, str bodystructure, str header,
 *   u8 has_sort_date, i64 sort_date, str sortkey[SUBJECT FROM TO CC
 *   DISPLAYFROM DISPLAYTO],
 *   u8 has_thread_date, i64 thread_date, u8 reply_or_fwd,
 *   u8 has_message_id, str message_id, u32 ref_count, str refs...,
 *   str thread_subject.
 * Values that are not kept (have bit clear) are empty strings. */
#include "imap/imap-derived.h"

#include <stdlib.h>
#include <string.h>

#include "imap/imap-mime.h"
#include "imap/imap-sortkeys.h"
#include "imap/imap-thread.h"
#include "lib/log.h"
#include "lib/xalloc.h"

struct imap_derived_stats imap_derived_stats;

static const enum imap_sort_key string_keys[] = {
	IMAP_SORT_SUBJECT, IMAP_SORT_FROM, IMAP_SORT_TO, IMAP_SORT_CC,
	IMAP_SORT_DISPLAYFROM, IMAP_SORT_DISPLAYTO,
};
#define STRING_KEY_COUNT (sizeof(string_keys) / sizeof(string_keys[0]))

static void put_str(struct buf *out, const void *p, size_t len)
{
	buf_append_be32(out, (uint32_t)len);
	if (len > 0)
		buf_append(out, p, len);
}

static void put_cstr(struct buf *out, const char *s)
{
	put_str(out, s, s != NULL ? strlen(s) : 0);
}

/* A header field's unfolded value as cmd-thread.c reads it, or NULL. */
static const char *thread_field(const unsigned char *text, size_t len, const char *name,
				struct buf *v)
{
	buf_reset(v);
	if (!imap_thread_header_get((const char *)text, len, name, v))
		return NULL;
	return buf_cstr(v);
}

void imap_derived_build(const unsigned char *text, size_t len, struct buf *out)
{
	if (text == NULL)
		text = (const unsigned char *)"";
	struct imap_mime *m = imap_mime_parse(text, len);
	struct buf env = BUF_INIT, body = BUF_INIT, bs = BUF_INIT, hdr = BUF_INIT;
	imap_mime_envelope(m, &env);
	imap_mime_bodystructure(m, false, &body);
	imap_mime_bodystructure(m, true, &bs);
	bool have_hdr = imap_mime_section(m, "", IMAP_SECTION_HEADER, NULL, 0, &hdr) == 0;

	struct imap_thread_msg tm;
	memset(&tm, 0, sizeof(tm));
	struct buf mid = BUF_INIT, refs = BUF_INIT, irt = BUF_INIT, v = BUF_INIT;
	const char *pmid = thread_field(text, len, "Message-ID", &mid);
	const char *prefs = thread_field(text, len, "References", &refs);
	const char *pirt = thread_field(text, len, "In-Reply-To", &irt);
	imap_thread_msg_set_ids(&tm, pmid, mid.len, prefs, refs.len, pirt, irt.len);
	const char *date = thread_field(text, len, "Date", &v);
	int64_t thread_date = 0;
	int64_t t;
	int32_t tz;
	bool has_thread_date = date != NULL &&
			       imap_mime_parse_date(date, strlen(date), &thread_date, &tz) == 1;
	char *base = imap_base_subject(thread_field(text, len, "Subject", &v), &tm.reply_or_fwd);
	char *thread_subject = imap_sortkey_fold(base);
	free(base);

	unsigned have = 0;
	if (env.len <= IMAP_DERIVED_MAX_ENVELOPE)
		have |= IMAP_DERIVED_ENVELOPE;
	if (body.len <= IMAP_DERIVED_MAX_BODYSTRUCTURE)
		have |= IMAP_DERIVED_BODY;
	if (bs.len <= IMAP_DERIVED_MAX_BODYSTRUCTURE)
		have |= IMAP_DERIVED_BODYSTRUCTURE;
	if (have_hdr && hdr.len <= IMAP_DERIVED_MAX_HEADER)
		have |= IMAP_DERIVED_HEADER;
	if (imap_thread_msg_id_bytes(&tm) + strlen(thread_subject) <= IMAP_DERIVED_MAX_THREAD)
		have |= IMAP_DERIVED_THREAD;

	buf_append_byte(out, IMAP_DERIVED_FORMAT);
	buf_append_be64(out, len);
	buf_append_be32(out, have);
	put_str(out, env.data, (have & IMAP_DERIVED_ENVELOPE) != 0 ? env.len : 0);
	put_str(out, body.data, (have & IMAP_DERIVED_BODY) != 0 ? body.len : 0);
	put_str(out, bs.data, (have & IMAP_DERIVED_BODYSTRUCTURE) != 0 ? bs.len : 0);
	put_str(out, hdr.data, (have & IMAP_DERIVED_HEADER) != 0 ? hdr.len : 0);
	bool has_sort_date = imap_mime_date(m, &t, &tz) == 1;
	buf_append_byte(out, has_sort_date);
	buf_append_be64(out, has_sort_date ? (uint64_t)t : 0);
	for (size_t i = 0; i < STRING_KEY_COUNT; i++) {
		char *k = imap_sort_string_key(string_keys[i], m);
		put_cstr(out, k);
		free(k);
	}
	bool thread = (have & IMAP_DERIVED_THREAD) != 0;
	buf_append_byte(out, has_thread_date);
	buf_append_be64(out, has_thread_date ? (uint64_t)thread_date : 0);
	buf_append_byte(out, thread && tm.reply_or_fwd);
	buf_append_byte(out, thread && tm.message_id != NULL);
	put_cstr(out, thread ? tm.message_id : NULL);
	buf_append_be32(out, thread ? (uint32_t)tm.ref_count : 0);
	for (size_t i = 0; thread && i < tm.ref_count; i++)
		put_cstr(out, tm.refs[i]);
	put_cstr(out, thread ? thread_subject : NULL);

	free(thread_subject);
	imap_thread_msg_free(&tm);
	buf_free(&mid);
	buf_free(&refs);
	buf_free(&irt);
	buf_free(&v);
	buf_free(&env);
	buf_free(&body);
	buf_free(&bs);
	buf_free(&hdr);
	imap_mime_free(&m);
}

struct dec {
	const unsigned char *p;
	size_t left;
	bool bad;
};

static const unsigned char *take(struct dec *d, size_t n)
{
	if (d->bad || n > d->left) {
		d->bad = true;
		return NULL;
	}
	const unsigned char *r = d->p;
	d->p += n;
	d->left -= n;
	return r;
}

static uint8_t get_u8(struct dec *d)
{
	const unsigned char *p = take(d, 1);
	return p != NULL ? p[0] : 0;
}

static uint32_t get_u32(struct dec *d)
{
	const unsigned char *p = take(d, 4);
	return p == NULL ? 0 : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get_u64(struct dec *d)
{
	uint64_t hi = get_u32(d);
	return hi << 32 | get_u32(d);
}

/* A malloc'd NUL-terminated copy of the next string (NULL if damaged). */
static char *get_str(struct dec *d, size_t *len_r)
{
	uint32_t n = get_u32(d);
	const unsigned char *p = take(d, n);
	if (p == NULL)
		return NULL;
	char *s = xmalloc((size_t)n + 1);
	memcpy(s, p, n);
	s[n] = '\0';
	if (len_r != NULL)
		*len_r = n;
	return s;
}

void imap_derived_free(struct imap_derived *d)
{
	free(d->envelope);
	free(d->body);
	free(d->bodystructure);
	free(d->header);
	for (size_t i = 0; i < IMAP_SORT_KEY_COUNT; i++)
		free(d->sortkey[i]);
	free(d->message_id);
	for (size_t i = 0; i < d->ref_count; i++)
		free(d->refs[i]);
	free(d->refs);
	free(d->thread_subject);
	memset(d, 0, sizeof(*d));
}

int imap_derived_decode(const void *p, size_t len, uint64_t text_size, struct imap_derived *d_r)
{
	struct dec d = { p, len, false };
	memset(d_r, 0, sizeof(*d_r));
	if (get_u8(&d) != IMAP_DERIVED_FORMAT || d.bad || get_u64(&d) != text_size || d.bad)
		return -1;
	d_r->have = get_u32(&d);
	d_r->envelope = get_str(&d, &d_r->envelope_len);
	d_r->body = get_str(&d, &d_r->body_len);
	d_r->bodystructure = get_str(&d, &d_r->bodystructure_len);
	d_r->header = (unsigned char *)get_str(&d, &d_r->header_len);
	d_r->has_sort_date = get_u8(&d) != 0;
	d_r->sort_date = (int64_t)get_u64(&d);
	for (size_t i = 0; i < STRING_KEY_COUNT && !d.bad; i++)
		d_r->sortkey[string_keys[i]] = get_str(&d, NULL);
	d_r->has_thread_date = get_u8(&d) != 0;
	d_r->thread_date = (int64_t)get_u64(&d);
	d_r->reply_or_fwd = get_u8(&d) != 0;
	bool has_mid = get_u8(&d) != 0;
	d_r->message_id = get_str(&d, NULL);
	if (!has_mid) {
		free(d_r->message_id);
		d_r->message_id = NULL;
	}
	uint32_t nrefs = get_u32(&d);
	/* each reference takes at least its 4-byte length */
	if (!d.bad && nrefs <= d.left / 4) {
		d_r->refs = xreallocarray(NULL, nrefs > 0 ? nrefs : 1, sizeof(char *));
		for (uint32_t i = 0; i < nrefs && !d.bad; i++) {
			char *r = get_str(&d, NULL);
			if (r != NULL)
				d_r->refs[d_r->ref_count++] = r;
		}
	} else {
		d.bad = true;
	}
	d_r->thread_subject = get_str(&d, NULL);
	if (d.bad || d.left != 0) {
		imap_derived_free(d_r);
		return -1;
	}
	return 0;
}

int imap_derived_load(struct stor_db *db, const struct guid *text_guid, uint64_t text_size,
		      struct imap_derived *d_r, struct buf *text_r, bool *text_read_r,
		      const char **error_r)
{
	struct buf rec = BUF_INIT;
	memset(d_r, 0, sizeof(*d_r));
	if (text_read_r != NULL)
		*text_read_r = false;
	int r = stor_derived_get(db, text_guid, &rec, error_r);
	if (r < 0) {
		buf_free(&rec);
		return -1;
	}
	if (r > 0 && imap_derived_decode(rec.data, rec.len, text_size, d_r) == 0) {
		imap_derived_stats.hits++;
		buf_free(&rec);
		return 0;
	}
	/* Missing, damaged, of another format or of another text: rebuild. */
	buf_reset(&rec);
	struct buf own = BUF_INIT;
	struct buf *text = text_r != NULL ? text_r : &own;
	size_t start = text->len;
	if (stor_text_read(db, text_guid, 0, text_size, text, error_r) < 0) {
		buf_free(&own);
		buf_free(&rec);
		return -1;
	}
	if (text_read_r != NULL && text_r != NULL)
		*text_read_r = true;
	size_t len = text->len - start;
	imap_derived_build(text->data != NULL ? text->data + start : NULL, len, &rec);
	buf_free(&own);
	imap_derived_stats.built++;
	/* The record's size is bounded by the limits above, far below
	 * STOR_DERIVED_MAX.  This FETCH goes on without it, but a failed write
	 * stops the store's writes until the node restarts: say why. */
	const char *err;
	if (stor_derived_put(db, text_guid, rec.data, rec.len, &err) < 0 &&
	    stor_last_error_kind(db) != STOR_ERROR_BROKEN)
		log_errorx("caching a message's structure: %s", err);
	r = imap_derived_decode(rec.data, rec.len, len, d_r);
	buf_free(&rec);
	if (r < 0) {
		*error_r = "derived record does not decode";
		return -1;
	}
	return 0;
}

int imap_derived_load_header(struct stor_db *db, const struct guid *text_guid, uint64_t text_size,
			     struct buf *out, const char **error_r)
{
	struct imap_derived d;
	bool text_read;
	size_t start = out->len;
	if (imap_derived_load(db, text_guid, text_size, &d, out, &text_read, error_r) < 0)
		return -1;
	int ret = 0;
	if ((d.have & IMAP_DERIVED_HEADER) != 0) {
		out->len = start;
		buf_append(out, d.header, d.header_len);
	} else if (!text_read) {
		ret = stor_text_read(db, text_guid, 0, text_size, out, error_r);
	}
	imap_derived_free(&d);
	return ret;
}

void imap_derived_sort_fill(struct imap_sort_entry *e, const struct imap_sort_program *prog,
			    const struct imap_derived *d)
{
	e->date = e->arrival;
	for (size_t i = 0; i < prog->count; i++) {
		enum imap_sort_key key = prog->crit[i].key;
		if (key == IMAP_SORT_DATE)
			e->date = d->has_sort_date ? d->sort_date : e->arrival;
		else if (e->str[key] == NULL && d->sortkey[key] != NULL)
			e->str[key] = xstrdup(d->sortkey[key]);
	}
}

bool imap_derived_thread_fill(struct imap_thread_msg *tm, const struct imap_derived *d,
			      bool ids, bool subject, int64_t internaldate)
{
	if ((d->have & IMAP_DERIVED_THREAD) == 0)
		return false;
	tm->date = d->has_thread_date ? d->thread_date : internaldate;
	if (ids) {
		tm->message_id = d->message_id != NULL ? xstrdup(d->message_id) : NULL;
		if (d->ref_count > 0) {
			tm->refs = xreallocarray(NULL, d->ref_count, sizeof(char *));
			for (size_t i = 0; i < d->ref_count; i++)
				tm->refs[i] = xstrdup(d->refs[i]);
			tm->ref_count = d->ref_count;
		}
	}
	if (subject) {
		tm->base_subject = xstrdup(d->thread_subject != NULL ? d->thread_subject : "");
		tm->reply_or_fwd = d->reply_or_fwd;
	}
	return true;
}
