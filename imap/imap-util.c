/* Small IMAP syntax helpers: string quoting, flag lists, dates, mailbox
 * names. */
#include "imap/imap-private.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "imap/imap-mutf7.h"
#include "lib/xalloc.h"
#include <stdlib.h>

size_t imap_uid_lower_bound(const stor_uid_list *l, uint32_t uid)
{
	size_t lo = 0, hi = l->count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (l->items[mid] < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

bool imap_uid_list_has(const stor_uid_list *l, uint32_t uid)
{
	size_t i = imap_uid_lower_bound(l, uid);
	return i < l->count && l->items[i] == uid;
}

static bool atom_safe(const char *s, size_t len)
{
	if (len == 0 || len > 256)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\]", c) != NULL)
			return false;
	}
	/* NIL would be read back as nothing. */
	return !(len == 3 && strncasecmp(s, "NIL", 3) == 0);
}

static bool quote_safe(const char *s, size_t len)
{
	if (len > 1024)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\r' || c == '\n' || c == '\0' || c >= 0x80)
			return false;
	}
	return true;
}

static void append_quoted_or_literal(struct buf *out, const char *s, size_t len)
{
	if (quote_safe(s, len)) {
		buf_append_quoted(out, s, len);
	} else {
		buf_appendf(out, "{%zu}\r\n", len);
		buf_append(out, s, len);
	}
}

void imap_append_astring(struct buf *out, const char *s, size_t len)
{
	if (atom_safe(s, len))
		buf_append(out, s, len);
	else
		append_quoted_or_literal(out, s, len);
}

void imap_append_nstring(struct buf *out, const char *s, size_t len)
{
	if (s == NULL)
		buf_append_str(out, "NIL");
	else
		append_quoted_or_literal(out, s, len);
}

static const struct {
	uint32_t bit;
	const char *name;
} flag_names[] = {
	{ STOR_FLAG_ANSWERED, "\\Answered" },
	{ STOR_FLAG_FLAGGED, "\\Flagged" },
	{ STOR_FLAG_DELETED, "\\Deleted" },
	{ STOR_FLAG_SEEN, "\\Seen" },
	{ STOR_FLAG_DRAFT, "\\Draft" },
};

void imap_append_flags(struct buf *out, uint32_t flags, const stor_string_list *keywords,
		       bool recent)
{
	bool first = true;
	buf_append_byte(out, '(');
	if (recent) {
		buf_append_str(out, "\\Recent");
		first = false;
	}
	for (size_t i = 0; i < sizeof(flag_names) / sizeof(flag_names[0]); i++) {
		if ((flags & flag_names[i].bit) == 0)
			continue;
		if (!first)
			buf_append_byte(out, ' ');
		buf_append_str(out, flag_names[i].name);
		first = false;
	}
	for (size_t i = 0; keywords != NULL && i < keywords->count; i++) {
		if (!first)
			buf_append_byte(out, ' ');
		buf_append_str(out, keywords->items[i]);
		first = false;
	}
	buf_append_byte(out, ')');
}

uint32_t imap_flag_bit(const char *name)
{
	for (size_t i = 0; i < sizeof(flag_names) / sizeof(flag_names[0]); i++)
		if (strcasecmp(name, flag_names[i].name) == 0)
			return flag_names[i].bit;
	return 0;
}

bool imap_keyword_valid(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > STOR_MAX_KEYWORD_LEN)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\][", c) != NULL)
			return false;
	}
	return true;
}

int imap_parse_flags(const struct imap_arg *arg, uint32_t *flags_r,
		     imap_str_array *keywords_r, bool allow_recent, const char **error_r)
{
	const struct imap_arg *items = arg;
	size_t count = 1;
	if (arg->type == IMAP_ARG_LIST) {
		items = arg->list;
		count = arg->count;
	}
	*flags_r = 0;
	for (size_t i = 0; i < count; i++) {
		if (items[i].type != IMAP_ARG_ATOM) {
			*error_r = "Invalid flag";
			return -1;
		}
		const char *s = items[i].str;
		if (s[0] == '\\') {
			uint32_t bit = imap_flag_bit(s);
			if (bit == 0) {
				if (allow_recent && strcasecmp(s, "\\Recent") == 0)
					continue;
				*error_r = "Invalid system flag";
				return -1;
			}
			*flags_r |= bit;
			continue;
		}
		if (!imap_keyword_valid(s)) {
			*error_r = "Invalid keyword";
			return -1;
		}
		bool dup = false;
		for (size_t k = 0; k < keywords_r->count; k++)
			if (strcasecmp(keywords_r->items[k], s) == 0)
				dup = true;
		if (dup)
			continue;
		if (keywords_r->count >= STOR_MAX_KEYWORDS) {
			*error_r = "Too many keywords";
			return -1;
		}
		ARRAY_PUSH(keywords_r, s);
	}
	return 0;
}

static const char *const month_names[12] = {
	"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
};

void imap_append_internaldate(struct buf *out, int64_t t, int32_t tz_min)
{
	time_t local = (time_t)(t + (int64_t)tz_min * 60);
	struct tm tm;
	gmtime_r(&local, &tm);
	int tz = tz_min < 0 ? -tz_min : tz_min;
	buf_appendf(out, "\"%02d-%s-%04d %02d:%02d:%02d %c%02d%02d\"", tm.tm_mday,
		    month_names[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec,
		    tz_min < 0 ? '-' : '+', tz / 60, tz % 60);
}

static int parse_month(const char *s)
{
	for (int i = 0; i < 12; i++)
		if (strncasecmp(s, month_names[i], 3) == 0)
			return i;
	return -1;
}

static bool all_digits(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isdigit((unsigned char)s[i]))
			return false;
	return true;
}

/* "d-Mon-yyyy" or "dd-Mon-yyyy" at s; returns characters used or -1. */
static int parse_day_month_year(const char *s, struct tm *tm)
{
	size_t dlen = 0;
	while (dlen < 2 && isdigit((unsigned char)s[dlen]))
		dlen++;
	if (dlen == 0 || s[dlen] != '-')
		return -1;
	int day = atoi(s);
	const char *m = s + dlen + 1;
	if (strlen(m) < 8 || m[3] != '-')
		return -1;
	int mon = parse_month(m);
	if (mon < 0 || !all_digits(m + 4, 4))
		return -1;
	int year = atoi(m + 4);
	if (day < 1 || day > 31 || year < 1900 || year > 9999)
		return -1;
	memset(tm, 0, sizeof(*tm));
	tm->tm_mday = day;
	tm->tm_mon = mon;
	tm->tm_year = year - 1900;
	return (int)(dlen + 1 + 8);
}

int imap_parse_date(const char *s, int64_t *t_r)
{
	if (*s == '"')
		return -1;
	struct tm tm;
	int n = parse_day_month_year(s, &tm);
	if (n < 0 || s[n] != '\0')
		return -1;
	*t_r = (int64_t)timegm(&tm);
	return 0;
}

int imap_parse_datetime(const char *s, int64_t *t_r, int32_t *tz_r)
{
	/* date-day-fixed may start with a space. */
	if (*s == ' ')
		s++;
	struct tm tm;
	int n = parse_day_month_year(s, &tm);
	if (n < 0)
		return -1;
	s += n;
	if (strlen(s) != 15 || s[0] != ' ' || s[3] != ':' || s[6] != ':' || s[9] != ' ' ||
	    (s[10] != '+' && s[10] != '-') || !all_digits(s + 1, 2) || !all_digits(s + 4, 2) ||
	    !all_digits(s + 7, 2) || !all_digits(s + 11, 4))
		return -1;
	tm.tm_hour = atoi(s + 1);
	tm.tm_min = atoi(s + 4);
	tm.tm_sec = atoi(s + 7);
	if (tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 60)
		return -1;
	int zh = (s[11] - '0') * 10 + (s[12] - '0');
	int zm = (s[13] - '0') * 10 + (s[14] - '0');
	if (zm > 59)
		return -1;
	int32_t tz = zh * 60 + zm;
	if (s[10] == '-')
		tz = -tz;
	*t_r = (int64_t)timegm(&tm) - (int64_t)tz * 60;
	*tz_r = tz;
	return 0;
}

/* Minimal modified UTF-7 check (RFC 3501 5.1.3): printable US-ASCII, and
 * '&' starts a base64 run ending with '-' ("&-" is a literal '&'). */
static bool mutf7_valid(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c >= 0x7f)
			return false;
		if (c != '&')
			continue;
		size_t j = i + 1;
		while (j < len && (isalnum((unsigned char)s[j]) || s[j] == '+' || s[j] == ','))
			j++;
		if (j >= len || s[j] != '-')
			return false;
		i = j;
	}
	return true;
}

char *imap_mailbox_name(const char *name, size_t len, const char **error_r)
{
	if (len == 0) {
		*error_r = "Empty mailbox name";
		return NULL;
	}
	if (len > STOR_MAX_MAILBOX_NAME_LEN || memchr(name, '\0', len) != NULL) {
		*error_r = "Invalid mailbox name";
		return NULL;
	}
	if (!mutf7_valid(name, len)) {
		*error_r = "Mailbox name is not valid modified UTF-7";
		return NULL;
	}
	/* LIST wildcards in a name would make it unlistable by exact name. */
	if (memchr(name, '*', len) != NULL || memchr(name, '%', len) != NULL) {
		*error_r = "Mailbox names may not contain '*' or '%'";
		return NULL;
	}
	if (name[0] == '/' || name[len - 1] == '/' || memmem(name, len, "//", 2) != NULL) {
		*error_r = "Invalid hierarchy in mailbox name";
		return NULL;
	}
	char *r = xstrndup(name, len);
	if (strncasecmp(r, "INBOX", 5) == 0 && (r[5] == '\0' || r[5] == '/'))
		memcpy(r, "INBOX", 5);
	return r;
}

char *imap_client_mailbox_name(const struct imap_client *c, const char *name, size_t len,
			       const char **error_r)
{
	if (!c->rev2)
		return imap_mailbox_name(name, len, error_r);
	char *m = imap_utf8_to_mutf7(name, len);
	if (m == NULL) {
		*error_r = "Mailbox name is not valid UTF-8";
		return NULL;
	}
	char *r = imap_mailbox_name(m, strlen(m), error_r);
	free(m);
	return r;
}

char *imap_client_mailbox_display(const struct imap_client *c, const char *name)
{
	char *u = c->rev2 ? imap_mutf7_to_utf8(name, strlen(name)) : NULL;
	/* a stored name that is not valid modified UTF-7 is shown as is */
	return u != NULL ? u : xstrdup(name);
}

void imap_append_mailbox(const struct imap_client *c, struct buf *out, const char *name)
{
	char *d = imap_client_mailbox_display(c, name);
	imap_append_astring(out, d, strlen(d));
	free(d);
}

const char *imap_arg_cstr(const struct imap_arg *arg)
{
	if (arg->type == IMAP_ARG_LIST || strlen(arg->str) != arg->len)
		return NULL;
	return arg->str;
}
