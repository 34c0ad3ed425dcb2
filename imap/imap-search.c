/* SEARCH program parsing and evaluation: see imap-search.h. */
#include "imap/imap-search.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap/imap-mime.h"
#include "imap/imap-private.h"
#include "imap/imap-seqset.h"
#include "lib/arr.h"
#include "lib/str.h"
#include "lib/xalloc.h"

#define SEARCH_MAX_DEPTH 64
#define SEARCH_MAX_KEYS 1000

enum key_type {
	K_ALL,
	K_AND,
	K_OR,
	K_NOT,
	K_SEQSET,
	K_UIDSET,
	K_SAVED,         /* "$" (RFC 5182): set from the saved UIDs when resolved */
	K_FLAGS_SET,     /* all of flags set */
	K_FLAGS_UNSET,   /* all of flags unset */
	K_NEW,           /* recent and unseen */
	K_RECENT,
	K_OLD,
	K_KEYWORD,
	K_UNKEYWORD,
	K_HEADER,        /* str = field, str2 = needle */
	K_BODY,
	K_TEXT,
	K_BEFORE,
	K_ON,
	K_SINCE,
	K_SENTBEFORE,
	K_SENTON,
	K_SENTSINCE,
	K_LARGER,
	K_SMALLER,
	K_MODSEQ,
};

struct key {
	enum key_type type;
	uint32_t flags;
	char *str, *str2;
	size_t str2_len;
	int64_t date;
	uint64_t num;
	imap_seqset set;
	struct key **children;
	size_t child_count;
};

struct imap_search {
	struct key *root;
	bool needs_text;
	bool needs_body;        /* BODY or TEXT: more than the header */
	bool uses_modseq;
	bool uses_saved;
	size_t keys;
};

static void key_free(struct key *k)
{
	if (k == NULL)
		return;
	for (size_t i = 0; i < k->child_count; i++)
		key_free(k->children[i]);
	free(k->children);
	free(k->str);
	free(k->str2);
	ARRAY_FREE(&k->set);
	free(k);
}

void imap_search_free(struct imap_search **sp)
{
	if (*sp == NULL)
		return;
	key_free((*sp)->root);
	free(*sp);
	*sp = NULL;
}

struct parse_state {
	const struct imap_arg *args;
	size_t count, pos;
	struct imap_search *s;
	const char *error;
	enum imap_search_error kind;
	const char *charset; /* of the string arguments */
	size_t charset_len;
};

static struct key *key_new(struct parse_state *ps, enum key_type type)
{
	if (++ps->s->keys > SEARCH_MAX_KEYS) {
		ps->error = "Too many search keys";
		return NULL;
	}
	struct key *k = xcalloc(1, sizeof(*k));
	k->type = type;
	return k;
}

static void add_child(struct key *parent, struct key *child)
{
	parent->children = xreallocarray(parent->children, parent->child_count + 1,
					 sizeof(struct key *));
	parent->children[parent->child_count++] = child;
}

static const struct imap_arg *next_arg(struct parse_state *ps)
{
	if (ps->pos >= ps->count) {
		ps->error = "Missing search argument";
		return NULL;
	}
	return &ps->args[ps->pos++];
}

/* Sets the string a text key looks for, converted from the SEARCH CHARSET
 * to UTF-8 (what the message side is converted to). */
static void set_needle(struct parse_state *ps, struct key *k, const char *s, size_t len)
{
	struct buf b = BUF_INIT;
	(void)imap_mime_charset_to_utf8(ps->charset, ps->charset_len, (const unsigned char *)s, len,
					&b);
	k->str2 = (char *)buf_steal(&b, &k->str2_len);
}

static const char *next_string(struct parse_state *ps, size_t *len_r)
{
	const struct imap_arg *a = next_arg(ps);
	if (a == NULL)
		return NULL;
	if (a->type == IMAP_ARG_LIST) {
		ps->error = "Expected a string";
		return NULL;
	}
	if (len_r != NULL)
		*len_r = a->len;
	return a->str;
}

static int next_date(struct parse_state *ps, int64_t *t_r)
{
	const char *s = next_string(ps, NULL);
	if (s == NULL)
		return -1;
	if (imap_parse_date(s, t_r) < 0) {
		ps->error = "Invalid date";
		return -1;
	}
	return 0;
}

static int next_number(struct parse_state *ps, uint64_t max, uint64_t *n_r)
{
	const struct imap_arg *a = next_arg(ps);
	if (a == NULL)
		return -1;
	if (a->type != IMAP_ARG_ATOM || str_to_u64(a->str, max, n_r) < 0) {
		ps->error = "Invalid number";
		return -1;
	}
	return 0;
}

static bool is_seqset_atom(const struct imap_arg *a)
{
	if (a->type != IMAP_ARG_ATOM)
		return false;
	for (size_t i = 0; i < a->len; i++)
		if (!isdigit((unsigned char)a->str[i]) && a->str[i] != ':' && a->str[i] != ',' &&
		    a->str[i] != '*')
			return false;
	return true;
}

static const struct {
	const char *name;
	enum key_type type;
	uint32_t flags;
} simple_keys[] = {
	{ "ALL", K_ALL, 0 },
	{ "ANSWERED", K_FLAGS_SET, STOR_FLAG_ANSWERED },
	{ "DELETED", K_FLAGS_SET, STOR_FLAG_DELETED },
	{ "DRAFT", K_FLAGS_SET, STOR_FLAG_DRAFT },
	{ "FLAGGED", K_FLAGS_SET, STOR_FLAG_FLAGGED },
	{ "SEEN", K_FLAGS_SET, STOR_FLAG_SEEN },
	{ "UNANSWERED", K_FLAGS_UNSET, STOR_FLAG_ANSWERED },
	{ "UNDELETED", K_FLAGS_UNSET, STOR_FLAG_DELETED },
	{ "UNDRAFT", K_FLAGS_UNSET, STOR_FLAG_DRAFT },
	{ "UNFLAGGED", K_FLAGS_UNSET, STOR_FLAG_FLAGGED },
	{ "UNSEEN", K_FLAGS_UNSET, STOR_FLAG_SEEN },
	{ "NEW", K_NEW, 0 },
	{ "OLD", K_OLD, 0 },
	{ "RECENT", K_RECENT, 0 },
};

static const struct {
	const char *name;
	const char *field;
} header_keys[] = {
	{ "FROM", "From" }, { "TO", "To" }, { "CC", "Cc" }, { "BCC", "Bcc" },
	{ "SUBJECT", "Subject" },
};

static const struct {
	const char *name;
	enum key_type type;
} date_keys[] = {
	{ "BEFORE", K_BEFORE }, { "ON", K_ON }, { "SINCE", K_SINCE },
	{ "SENTBEFORE", K_SENTBEFORE }, { "SENTON", K_SENTON }, { "SENTSINCE", K_SENTSINCE },
};

static struct key *parse_key(struct parse_state *ps, unsigned depth);

/* Keys until the end of the list: an implicit AND. */
static struct key *parse_and(struct parse_state *ps, const struct imap_arg *args, size_t count,
			     unsigned depth)
{
	const struct imap_arg *save_args = ps->args;
	size_t save_count = ps->count, save_pos = ps->pos;
	ps->args = args;
	ps->count = count;
	ps->pos = 0;
	struct key *and = key_new(ps, K_AND);
	if (and == NULL)
		goto out;
	if (count == 0) {
		ps->error = "Empty search list";
		goto fail;
	}
	while (ps->pos < ps->count) {
		struct key *k = parse_key(ps, depth + 1);
		if (k == NULL)
			goto fail;
		add_child(and, k);
	}
	goto out;
fail:
	key_free(and);
	and = NULL;
out:
	ps->args = save_args;
	ps->count = save_count;
	ps->pos = save_pos;
	return and;
}

static struct key *parse_key(struct parse_state *ps, unsigned depth)
{
	if (depth > SEARCH_MAX_DEPTH) {
		ps->error = "Search nested too deeply";
		return NULL;
	}
	const struct imap_arg *a = next_arg(ps);
	if (a == NULL)
		return NULL;
	if (a->type == IMAP_ARG_LIST)
		return parse_and(ps, a->list, a->count, depth);
	if (a->type != IMAP_ARG_ATOM) {
		ps->error = "Expected a search key";
		return NULL;
	}
	const char *name = a->str;
	struct key *k;
	if (strcmp(name, "$") == 0) {
		ps->s->uses_saved = true;
		return key_new(ps, K_SAVED);
	}
	if (is_seqset_atom(a)) {
		if ((k = key_new(ps, K_SEQSET)) == NULL)
			return NULL;
		if (imap_seqset_parse(name, &k->set) < 0) {
			ps->error = "Invalid sequence set";
			key_free(k);
			return NULL;
		}
		return k;
	}
	for (size_t i = 0; i < sizeof(simple_keys) / sizeof(simple_keys[0]); i++) {
		if (strcasecmp(name, simple_keys[i].name) == 0) {
			if ((k = key_new(ps, simple_keys[i].type)) != NULL)
				k->flags = simple_keys[i].flags;
			return k;
		}
	}
	for (size_t i = 0; i < sizeof(header_keys) / sizeof(header_keys[0]); i++) {
		if (strcasecmp(name, header_keys[i].name) == 0) {
			size_t len;
			const char *s = next_string(ps, &len);
			if (s == NULL || (k = key_new(ps, K_HEADER)) == NULL)
				return NULL;
			k->str = xstrdup(header_keys[i].field);
			set_needle(ps, k, s, len);
			ps->s->needs_text = true;
			return k;
		}
	}
	for (size_t i = 0; i < sizeof(date_keys) / sizeof(date_keys[0]); i++) {
		if (strcasecmp(name, date_keys[i].name) == 0) {
			int64_t t;
			if (next_date(ps, &t) < 0 || (k = key_new(ps, date_keys[i].type)) == NULL)
				return NULL;
			k->date = t;
			if (date_keys[i].type >= K_SENTBEFORE)
				ps->s->needs_text = true;
			return k;
		}
	}
	if (strcasecmp(name, "HEADER") == 0) {
		const char *field = next_string(ps, NULL);
		size_t len;
		const char *s = field != NULL ? next_string(ps, &len) : NULL;
		if (s == NULL || (k = key_new(ps, K_HEADER)) == NULL)
			return NULL;
		if (*field == '\0' || strchr(field, ':') != NULL) {
			ps->error = "Invalid header name";
			key_free(k);
			return NULL;
		}
		k->str = xstrdup(field);
		set_needle(ps, k, s, len);
		ps->s->needs_text = true;
		return k;
	}
	if (strcasecmp(name, "BODY") == 0 || strcasecmp(name, "TEXT") == 0) {
		size_t len;
		const char *s = next_string(ps, &len);
		if (s == NULL || (k = key_new(ps, strcasecmp(name, "BODY") == 0 ? K_BODY : K_TEXT)) == NULL)
			return NULL;
		set_needle(ps, k, s, len);
		ps->s->needs_text = true;
		ps->s->needs_body = true;
		return k;
	}
	if (strcasecmp(name, "KEYWORD") == 0 || strcasecmp(name, "UNKEYWORD") == 0) {
		const char *s = next_string(ps, NULL);
		if (s == NULL ||
		    (k = key_new(ps, strcasecmp(name, "KEYWORD") == 0 ? K_KEYWORD : K_UNKEYWORD)) == NULL)
			return NULL;
		k->str = xstrdup(s);
		return k;
	}
	if (strcasecmp(name, "LARGER") == 0 || strcasecmp(name, "SMALLER") == 0) {
		uint64_t n;
		if (next_number(ps, UINT64_MAX, &n) < 0 ||
		    (k = key_new(ps, strcasecmp(name, "LARGER") == 0 ? K_LARGER : K_SMALLER)) == NULL)
			return NULL;
		k->num = n;
		return k;
	}
	if (strcasecmp(name, "UID") == 0) {
		const struct imap_arg *s = next_arg(ps);
		if (s == NULL)
			return NULL;
		if (s->type == IMAP_ARG_ATOM && strcmp(s->str, "$") == 0) {
			ps->s->uses_saved = true;
			return key_new(ps, K_SAVED);
		}
		if (!is_seqset_atom(s)) {
			ps->error = "Invalid UID set";
			return NULL;
		}
		if ((k = key_new(ps, K_UIDSET)) == NULL)
			return NULL;
		if (imap_seqset_parse(s->str, &k->set) < 0) {
			ps->error = "Invalid UID set";
			key_free(k);
			return NULL;
		}
		return k;
	}
	if (strcasecmp(name, "MODSEQ") == 0) {
		/* MODSEQ [entry-name entry-type] mod-sequence-valzer */
		if (ps->pos < ps->count && ps->args[ps->pos].type == IMAP_ARG_STRING)
			ps->pos += 2;
		uint64_t n;
		if (next_number(ps, UINT64_MAX, &n) < 0 || (k = key_new(ps, K_MODSEQ)) == NULL)
			return NULL;
		k->num = n;
		ps->s->uses_modseq = true;
		return k;
	}
	if (strcasecmp(name, "NOT") == 0) {
		struct key *child = parse_key(ps, depth + 1);
		if (child == NULL)
			return NULL;
		if ((k = key_new(ps, K_NOT)) == NULL) {
			key_free(child);
			return NULL;
		}
		add_child(k, child);
		return k;
	}
	if (strcasecmp(name, "OR") == 0) {
		struct key *x = parse_key(ps, depth + 1);
		if (x == NULL)
			return NULL;
		struct key *y = parse_key(ps, depth + 1);
		if (y == NULL || (k = key_new(ps, K_OR)) == NULL) {
			key_free(x);
			key_free(y);
			return NULL;
		}
		add_child(k, x);
		add_child(k, y);
		return k;
	}
	ps->error = "Unknown search key";
	return NULL;
}

int imap_search_parse(const struct imap_arg *args, size_t count, struct imap_search **search_r,
		      enum imap_search_error *kind_r, const char **error_r)
{
	*kind_r = IMAP_SEARCH_BAD;
	size_t start = 0;
	const char *charset = "UTF-8";
	size_t charset_len = 5;
	if (count >= 2 && imap_arg_atom_eq(&args[0], "CHARSET")) {
		if (args[1].type == IMAP_ARG_LIST || !imap_mime_charset_known(args[1].str, args[1].len)) {
			*kind_r = IMAP_SEARCH_BADCHARSET;
			*error_r = "Unsupported charset";
			return -1;
		}
		charset = args[1].str;
		charset_len = args[1].len;
		start = 2;
	}
	if (start >= count) {
		*error_r = "Missing search keys";
		return -1;
	}
	struct imap_search *s = xcalloc(1, sizeof(*s));
	struct parse_state ps;
	memset(&ps, 0, sizeof(ps));
	ps.s = s;
	ps.charset = charset;
	ps.charset_len = charset_len;
	s->root = parse_and(&ps, args + start, count - start, 0);
	if (s->root == NULL) {
		*error_r = ps.error != NULL ? ps.error : "Invalid search";
		imap_search_free(&s);
		return -1;
	}
	*search_r = s;
	return 0;
}

static void resolve_key(struct key *k, uint32_t max_seq, uint32_t max_uid)
{
	if (k->type == K_SEQSET)
		imap_seqset_resolve(&k->set, max_seq);
	else if (k->type == K_UIDSET)
		imap_seqset_resolve(&k->set, max_uid);
	for (size_t i = 0; i < k->child_count; i++)
		resolve_key(k->children[i], max_seq, max_uid);
}

void imap_search_resolve(struct imap_search *search, uint32_t max_seq, uint32_t max_uid)
{
	resolve_key(search->root, max_seq, max_uid);
}

static void resolve_saved_key(struct key *k, const uint32_t *uids, size_t n)
{
	if (k->type == K_SAVED) {
		k->type = K_UIDSET;
		for (size_t i = 0; i < n; i++) {
			if (k->set.count > 0 && k->set.items[k->set.count - 1].hi + 1 == uids[i]) {
				k->set.items[k->set.count - 1].hi = uids[i];
			} else {
				struct imap_seq_range r = { uids[i], uids[i] };
				ARRAY_PUSH(&k->set, r);
			}
		}
	}
	for (size_t i = 0; i < k->child_count; i++)
		resolve_saved_key(k->children[i], uids, n);
}

void imap_search_resolve_saved(struct imap_search *search, const uint32_t *uids, size_t n)
{
	resolve_saved_key(search->root, uids, n);
}

bool imap_search_uses_saved(const struct imap_search *search)
{
	return search->uses_saved;
}

bool imap_search_needs_text(const struct imap_search *search)
{
	return search->needs_text;
}

bool imap_search_needs_body(const struct imap_search *search)
{
	return search->needs_body;
}

bool imap_search_uses_modseq(const struct imap_search *search)
{
	return search->uses_modseq;
}

bool imap_search_contains(const char *hay, size_t hay_len, const char *needle, size_t needle_len)
{
	if (needle_len == 0)
		return true;
	if (needle_len > hay_len)
		return false;
	unsigned char first = (unsigned char)tolower((unsigned char)needle[0]);
	for (size_t i = 0; i + needle_len <= hay_len; i++) {
		if ((unsigned char)tolower((unsigned char)hay[i]) != first)
			continue;
		size_t k = 1;
		while (k < needle_len &&
		       tolower((unsigned char)hay[i + k]) == tolower((unsigned char)needle[k]))
			k++;
		if (k == needle_len)
			return true;
	}
	return false;
}

static bool load_text(struct imap_search_msg *m)
{
	if (!m->text_loaded) {
		m->text_loaded = true;
		if (m->load_text == NULL || m->load_text(m->load_ctx, &m->text, &m->text_len) < 0)
			m->text_failed = true;
	}
	return !m->text_failed;
}

static struct imap_mime *get_mime(struct imap_search_msg *m)
{
	if (m->mime == NULL && load_text(m))
		m->mime = imap_mime_parse((const unsigned char *)m->text, m->text_len);
	return m->mime;
}

/* The epoch second of midnight UTC of the day t falls on at offset tz. */
static int64_t day_of(int64_t t, int32_t tz_min)
{
	int64_t local = t + (int64_t)tz_min * 60;
	int64_t day = local / 86400;
	if (local % 86400 < 0)
		day--;
	return day * 86400;
}

static bool date_cmp(enum key_type t, int64_t day, int64_t key_day)
{
	switch (t) {
	case K_BEFORE:
	case K_SENTBEFORE:
		return day < key_day;
	case K_ON:
	case K_SENTON:
		return day == key_day;
	default:
		return day >= key_day;
	}
}

static bool match_key(const struct key *k, struct imap_search_msg *m)
{
	switch (k->type) {
	case K_ALL:
		return true;
	case K_AND:
		for (size_t i = 0; i < k->child_count; i++)
			if (!match_key(k->children[i], m))
				return false;
		return true;
	case K_OR:
		return match_key(k->children[0], m) || match_key(k->children[1], m);
	case K_NOT:
		return !match_key(k->children[0], m);
	case K_SEQSET:
		return imap_seqset_contains(&k->set, m->seq);
	case K_UIDSET:
		return imap_seqset_contains(&k->set, m->uid);
	case K_SAVED:
		return false; /* never resolved: no saved result */
	case K_FLAGS_SET:
		return (m->flags & k->flags) == k->flags;
	case K_FLAGS_UNSET:
		return (m->flags & k->flags) == 0;
	case K_NEW:
		return m->recent && (m->flags & STOR_FLAG_SEEN) == 0;
	case K_RECENT:
		return m->recent;
	case K_OLD:
		return !m->recent;
	case K_KEYWORD:
		return m->keywords != NULL && stor_keywords_have(m->keywords, k->str);
	case K_UNKEYWORD:
		return m->keywords == NULL || !stor_keywords_have(m->keywords, k->str);
	case K_HEADER: {
		struct imap_mime *mime = get_mime(m);
		return mime != NULL && imap_mime_header_contains(mime, k->str, k->str2);
	}
	case K_BODY: {
		struct imap_mime *mime = get_mime(m);
		return mime != NULL && imap_mime_body_contains(mime, k->str2);
	}
	case K_TEXT: {
		if (!load_text(m))
			return false;
		if (imap_search_contains(m->text, m->text_len, k->str2, k->str2_len))
			return true;
		/* Also decoded headers and bodies (encoded words, charsets,
		 * base64), compared as RFC 5051 says. */
		struct imap_mime *mime = get_mime(m);
		return mime != NULL && (imap_mime_header_contains(mime, NULL, k->str2) ||
					imap_mime_body_contains(mime, k->str2));
	}
	case K_BEFORE:
	case K_ON:
	case K_SINCE:
		return date_cmp(k->type, day_of(m->internaldate, m->internaldate_tz), k->date);
	case K_SENTBEFORE:
	case K_SENTON:
	case K_SENTSINCE: {
		struct imap_mime *mime = get_mime(m);
		int64_t t;
		int32_t tz;
		if (mime == NULL || imap_mime_date(mime, &t, &tz) != 1) {
			/* No usable Date: header: RFC 3501 falls back to the
			 * internal date. */
			t = m->internaldate;
			tz = m->internaldate_tz;
		}
		return date_cmp(k->type, day_of(t, tz), k->date);
	}
	case K_LARGER:
		return m->size > k->num;
	case K_SMALLER:
		return m->size < k->num;
	case K_MODSEQ:
		return m->modseq >= k->num;
	}
	return false;
}

bool imap_search_match(const struct imap_search *search, struct imap_search_msg *msg)
{
	return match_key(search->root, msg);
}

void imap_search_msg_done(struct imap_search_msg *msg)
{
	imap_mime_free(&msg->mime);
	msg->text = NULL;
	msg->text_len = 0;
	msg->text_loaded = msg->text_failed = false;
}

void imap_search_msg_init(struct imap_search_msg *sm, const struct stor_msg *m, uint32_t seq,
			  bool recent, int (*load)(void *ctx, const char **text_r, size_t *len_r),
			  void *load_ctx)
{
	memset(sm, 0, sizeof(*sm));
	sm->seq = seq;
	sm->uid = m->uid;
	sm->flags = m->flags;
	sm->keywords = &m->keywords;
	sm->internaldate = m->internaldate;
	sm->internaldate_tz = m->internaldate_tz;
	sm->size = m->size;
	sm->modseq = m->modseq;
	sm->recent = recent;
	sm->load_text = load;
	sm->load_ctx = load_ctx;
}
