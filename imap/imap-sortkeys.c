/* Sort and thread keys: see imap-sortkeys.h. */
#include "imap/imap-sortkeys.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap/imap-mime-private.h"
#include "lib/buf.h"
#include "lib/xalloc.h"

/* Working view of the subject: [s + start, s + end). */
struct subj {
	const char *s;
	size_t start, end;
};

static bool subj_prefix(const struct subj *j, size_t pos, const char *word)
{
	size_t n = strlen(word);
	return j->end - pos >= n && strncasecmp(j->s + pos, word, n) == 0;
}

/* subj-blob = "[" *BLOBCHAR "]" *WSP at pos; returns the position after it,
 * or 0 when there is none (a blob is never empty, so 0 is unambiguous). */
static size_t blob_end(const struct subj *j, size_t pos)
{
	if (pos >= j->end || j->s[pos] != '[')
		return 0;
	size_t p = pos + 1;
	while (p < j->end && j->s[p] != '[' && j->s[p] != ']')
		p++;
	if (p >= j->end || j->s[p] != ']')
		return 0;
	p++;
	while (p < j->end && j->s[p] == ' ')
		p++;
	return p;
}

/* subj-refwd = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":" at pos; returns
 * the position after it, or 0. */
static size_t refwd_end(const struct subj *j, size_t pos)
{
	size_t p;
	if (subj_prefix(j, pos, "re"))
		p = pos + 2;
	else if (subj_prefix(j, pos, "fwd"))
		p = pos + 3;
	else if (subj_prefix(j, pos, "fw"))
		p = pos + 2;
	else
		return 0;
	while (p < j->end && j->s[p] == ' ')
		p++;
	size_t b = blob_end(j, p);
	if (b != 0)
		p = b;
	if (p >= j->end || j->s[p] != ':')
		return 0;
	return p + 1;
}

/* Step 2: removes trailing "(fwd)" and WSP. */
static void strip_trailers(struct subj *j, bool *reply)
{
	for (;;) {
		if (j->end > j->start && j->s[j->end - 1] == ' ') {
			j->end--;
		} else if (j->end - j->start >= 5 &&
			   strncasecmp(j->s + j->end - 5, "(fwd)", 5) == 0) {
			j->end -= 5;
			*reply = true;
		} else {
			return;
		}
	}
}

/* Steps 3 to 5: removes leaders and blobs until none is left.  Step 4
 * removes one leading blob at a time and step 3 then scans the blobs that
 * follow again; done literally that is quadratic in the number of blobs.
 * When no leader follows a run of blobs, the repetition of steps 3 and 4
 * removes the whole run, except its last blob when nothing follows it, so
 * that is done at once: each byte is scanned a bounded number of times. */
static void strip_leaders(struct subj *j, bool *reply)
{
	for (;;) {
		/* step 3: subj-leader = (*subj-blob subj-refwd) / WSP */
		if (j->start < j->end && j->s[j->start] == ' ') {
			j->start++;
			continue;
		}
		size_t p = j->start, last = j->start, b;
		while ((b = blob_end(j, p)) != 0) {
			last = p;
			p = b;
		}
		size_t r = refwd_end(j, p);
		if (r != 0) {
			j->start = r;
			*reply = true;
			continue;
		}
		/* step 4, repeated: p starts no blob and no leader */
		if (p != j->start)
			j->start = p < j->end ? p : last;
		return;
	}
}

char *imap_base_subject(const char *header_value, bool *was_reply_or_fwd)
{
	bool reply = false;
	struct buf dec = BUF_INIT, norm = BUF_INIT;
	if (header_value != NULL)
		imap_mime_decode_header((const unsigned char *)header_value, strlen(header_value),
					&dec);
	/* step 1: tabs, line ends and runs of whitespace become one space;
	 * NULs (which decoding may produce) would cut the C string short and
	 * are dropped */
	bool space = false;
	for (size_t i = 0; i < dec.len; i++) {
		unsigned char c = dec.data[i];
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			space = true;
			continue;
		}
		if (c == '\0')
			continue;
		if (space)
			buf_append_byte(&norm, ' ');
		space = false;
		buf_append_byte(&norm, c);
	}
	if (space)
		buf_append_byte(&norm, ' ');
	buf_free(&dec);

	struct subj j = { norm.data != NULL ? (const char *)norm.data : "", 0, norm.len };
	for (;;) {
		strip_trailers(&j, &reply);
		strip_leaders(&j, &reply);
		/* step 6: "[fwd:" ... "]" wrapping, then again from step 2 */
		if (j.end - j.start >= 6 && subj_prefix(&j, j.start, "[fwd:") &&
		    j.s[j.end - 1] == ']') {
			j.start += 5;
			j.end--;
			reply = true;
			continue;
		}
		break;
	}
	char *res = xmalloc(j.end - j.start + 1);
	memcpy(res, j.s + j.start, j.end - j.start);
	res[j.end - j.start] = '\0';
	buf_free(&norm);
	if (was_reply_or_fwd != NULL)
		*was_reply_or_fwd = reply;
	return res;
}

char *imap_sortkey_fold(const char *utf8)
{
	struct buf b = BUF_INIT;
	mime_fold_utf8((const unsigned char *)utf8, strlen(utf8), &b);
	char *res = xstrdup(buf_cstr(&b));
	buf_free(&b);
	return res;
}

int64_t imap_sent_date(const struct imap_mime *m, int64_t internaldate)
{
	int64_t t;
	int32_t tz;
	if (m != NULL && imap_mime_date(m, &t, &tz) == 1)
		return t;
	return internaldate;
}

int64_t imap_sent_date_value(const char *date_value, int64_t internaldate)
{
	int64_t t;
	int32_t tz;
	if (date_value != NULL && imap_mime_parse_date(date_value, strlen(date_value), &t, &tz) == 1)
		return t;
	return internaldate;
}

/* The unfolded raw value of the first field called name, or NULL. */
static char *header_value(const struct imap_mime *m, const char *name)
{
	struct mime_field f;
	if (m == NULL || !mime_hdr_find(m, &m->parts.items[0], name, &f))
		return NULL;
	struct buf v = BUF_INIT;
	mime_unfold(f.value, f.value_len, &v);
	char *res = xstrdup(buf_cstr(&v));
	buf_free(&v);
	return res;
}

static char *cut_key(char *key)
{
	if (strlen(key) > IMAP_SORTKEY_MAX)
		key[IMAP_SORTKEY_MAX] = '\0';
	return key;
}

char *imap_sortkey_subject(const struct imap_mime *m)
{
	char *value = header_value(m, "subject");
	char *base = imap_base_subject(value, NULL);
	char *key = imap_sortkey_fold(base);
	free(value);
	free(base);
	return cut_key(key);
}

char *imap_sortkey_address(const struct imap_mime *m, const char *field, bool display)
{
	struct mime_field f;
	if (m == NULL || !mime_hdr_find(m, &m->parts.items[0], field, &f))
		return xstrdup("");
	struct mime_first_addr first;
	memset(&first, 0, sizeof(first));
	buf_init(&first.name);
	buf_init(&first.mailbox);
	buf_init(&first.host);
	struct buf text = BUF_INIT;
	if (mime_first_address(f.value, f.value_len, &first)) {
		if (!display) {
			buf_append(&text, first.mailbox.data, first.mailbox.len);
		} else {
			if (first.name.len > 0)
				imap_mime_decode_header(first.name.data, first.name.len, &text);
			if (text.len == 0) {
				buf_append(&text, first.mailbox.data, first.mailbox.len);
				if (first.host.len > 0) {
					buf_append_byte(&text, '@');
					buf_append(&text, first.host.data, first.host.len);
				}
			}
		}
	}
	/* NULs would end the key early and make unequal keys equal: dropped */
	struct buf clean = BUF_INIT;
	for (size_t i = 0; i < text.len; i++)
		if (text.data[i] != '\0')
			buf_append_byte(&clean, text.data[i]);
	char *key = cut_key(imap_sortkey_fold(buf_cstr(&clean)));
	buf_free(&clean);
	buf_free(&text);
	buf_free(&first.name);
	buf_free(&first.mailbox);
	buf_free(&first.host);
	return key;
}
