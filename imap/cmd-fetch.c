/* FETCH and UID FETCH.
 *
 * Items: FLAGS UID INTERNALDATE RFC822.SIZE RFC822 RFC822.HEADER RFC822.TEXT
 * ENVELOPE BODY BODYSTRUCTURE BODY[section]<partial> BODY.PEEK[...] MODSEQ,
 * BINARY[part]<partial>, BINARY.PEEK[...] and BINARY.SIZE[part] (RFC 3516),
 * the macros ALL FAST FULL, and CONDSTORE/QRESYNC's (CHANGEDSINCE n
 * [VANISHED]) modifier.
 *
 * Output is produced in steps: each continuation writes the responses of a
 * bounded number of messages and yields when the client's output buffer is
 * above the high-water mark, so fetching a huge mailbox never holds more
 * than about one message and the output buffer in memory.  A non-PEEK body
 * fetch first sets \Seen through the seam, then produces the responses
 * (which then include FLAGS). */
#include "imap/imap-commands.h"
#include "imap/imap-barrier.h"
#include "imap/imap-acl.h"
#include "imap/imap-pseen.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#include "imap/imap-derived.h"
#include "imap/imap-mime.h"
#include "lib/str.h"
#include "lib/xalloc.h"

#define FETCH_MAX_ITEMS 64
#define FETCH_MAX_FIELDS 64
#define FETCH_MSGS_PER_STEP 200
/* Texts shorter than this are copied into the output, not sent from the
 * store's mapping: a few pages' worth costs less to copy than to map. */
#define FETCH_PIECES_MIN 8192
/* Part numbers deeper than this are refused as malformed. */
#define FETCH_MAX_PART_LEVELS 16

enum fetch_kind {
	F_FLAGS,
	F_UID,
	F_INTERNALDATE,
	F_SIZE,
	F_ENVELOPE,
	F_BODY,           /* non-extended BODYSTRUCTURE */
	F_BODYSTRUCTURE,
	F_MODSEQ,
	F_SECTION,        /* BODY[...], BODY.PEEK[...], RFC822, RFC822.HEADER/TEXT */
	F_BINARY,         /* BINARY[...], BINARY.PEEK[...] */
	F_BINARY_SIZE,    /* BINARY.SIZE[...] */
};

struct fetch_item {
	enum fetch_kind kind;
	bool peek;
	char *label;            /* as echoed in the response, e.g. "BODY[TEXT]" */
	char *part;             /* "1.2", or "" for the whole message */
	enum imap_section_kind skind;
	char **fields;
	size_t field_count;
	bool partial;
	uint64_t offset, length;
};

struct fetch_ctx {
	struct fetch_item items[FETCH_MAX_ITEMS];
	size_t item_count;
	stor_uid_list uids;
	size_t next;
	uint64_t changedsince;
	bool has_changedsince;
	bool vanished;
	bool sets_seen;
	bool need_text;
	bool enables_condstore;
	struct guid mailbox;
	stor_uid_list unseen;
	struct stor_store seen_req;
};

static void fetch_ctx_free(void *p)
{
	struct fetch_ctx *fc = p;
	for (size_t i = 0; i < fc->item_count; i++) {
		free(fc->items[i].label);
		free(fc->items[i].part);
		for (size_t k = 0; k < fc->items[i].field_count; k++)
			free(fc->items[i].fields[k]);
		free(fc->items[i].fields);
	}
	ARRAY_FREE(&fc->uids);
	ARRAY_FREE(&fc->unseen);
	free(fc);
}

static struct fetch_item *add_item(struct fetch_ctx *fc, enum fetch_kind kind)
{
	if (fc->item_count == FETCH_MAX_ITEMS)
		return NULL;
	for (size_t i = 0; i < fc->item_count; i++)
		if (fc->items[i].kind == kind && kind != F_SECTION && kind != F_BINARY &&
		    kind != F_BINARY_SIZE)
			return &fc->items[i];
	struct fetch_item *it = &fc->items[fc->item_count++];
	memset(it, 0, sizeof(*it));
	it->kind = kind;
	return it;
}

/* Parses the header list "(A B ...)" of HEADER.FIELDS. */
static int parse_fields(const char *s, struct fetch_item *it)
{
	while (*s == ' ')
		s++;
	if (*s != '(')
		return -1;
	s++;
	it->fields = xcalloc(FETCH_MAX_FIELDS, sizeof(char *));
	for (;;) {
		while (*s == ' ')
			s++;
		if (*s == ')')
			break;
		if (*s == '\0' || it->field_count == FETCH_MAX_FIELDS)
			return -1;
		const char *start = s;
		size_t len;
		if (*s == '"') {
			start = ++s;
			while (*s != '\0' && *s != '"')
				s++;
			if (*s != '"')
				return -1;
			len = (size_t)(s - start);
			s++;
		} else {
			while (*s != '\0' && *s != ' ' && *s != ')')
				s++;
			len = (size_t)(s - start);
		}
		if (len == 0)
			return -1;
		for (size_t i = 0; i < len; i++) {
			unsigned char ch = (unsigned char)start[i];
			if (ch <= 0x20 || ch >= 0x7f || ch == ':')
				return -1;
		}
		it->fields[it->field_count++] = xstrndup(start, len);
	}
	if (it->field_count == 0 || s[1] != '\0')
		return -1;
	return 0;
}

/* Parses the inside of [...]: [part] [. HEADER | HEADER.FIELDS[.NOT] (...) |
 * TEXT | MIME]. */
static int parse_section(const char *sec, struct fetch_item *it)
{
	const char *s = sec;
	const char *part_end = s;
	unsigned levels = 0;
	while (isdigit((unsigned char)*s)) {
		if (*s == '0' || ++levels > FETCH_MAX_PART_LEVELS)
			return -1;
		while (isdigit((unsigned char)*s))
			s++;
		part_end = s;
		if (*s != '.')
			break;
		s++;
		if (!isdigit((unsigned char)*s))
			break;
	}
	if (part_end - sec > 200)
		return -1;
	it->part = xstrndup(sec, (size_t)(part_end - sec));
	if (*part_end == '\0') {
		it->skind = IMAP_SECTION_ALL;
		return 0;
	}
	bool has_part = part_end != sec;
	s = part_end;
	if (has_part) {
		if (*s != '.')
			return -1;
		s++;
	}
	if (strcasecmp(s, "HEADER") == 0) {
		it->skind = IMAP_SECTION_HEADER;
	} else if (strcasecmp(s, "TEXT") == 0) {
		it->skind = IMAP_SECTION_TEXT;
	} else if (strcasecmp(s, "MIME") == 0) {
		if (!has_part)
			return -1;
		it->skind = IMAP_SECTION_MIME;
	} else if (strncasecmp(s, "HEADER.FIELDS.NOT", 17) == 0 && (s[17] == ' ' || s[17] == '(')) {
		it->skind = IMAP_SECTION_HEADER_FIELDS_NOT;
		return parse_fields(s + 17, it);
	} else if (strncasecmp(s, "HEADER.FIELDS", 13) == 0 && (s[13] == ' ' || s[13] == '(')) {
		it->skind = IMAP_SECTION_HEADER_FIELDS;
		return parse_fields(s + 13, it);
	} else {
		return -1;
	}
	return 0;
}

/* Parses "BODY[...]<o.l>" or "BODY.PEEK[...]<o.l>". */
static int parse_body_section(struct fetch_ctx *fc, const char *atom)
{
	bool peek = strncasecmp(atom, "BODY.PEEK[", 10) == 0;
	const char *open = strchr(atom, '[');
	const char *close = strrchr(atom, ']');
	if (close == NULL || close < open)
		return -1;
	struct fetch_item *it = add_item(fc, F_SECTION);
	if (it == NULL)
		return -1;
	it->peek = peek;
	char *sec = xstrndup(open + 1, (size_t)(close - open - 1));
	int r = parse_section(sec, it);
	const char *rest = close + 1;
	if (r == 0 && *rest == '<') {
		uint64_t o, l;
		const char *dot = strchr(rest, '.');
		const char *gt = strchr(rest, '>');
		if (dot == NULL || gt == NULL || dot > gt || gt[1] != '\0' ||
		    str_to_u64_n(rest + 1, (size_t)(dot - rest - 1), UINT32_MAX, &o) < 0 ||
		    str_to_u64_n(dot + 1, (size_t)(gt - dot - 1), UINT32_MAX, &l) < 0 || l == 0) {
			r = -1;
		} else {
			it->partial = true;
			it->offset = o;
			it->length = l;
		}
	} else if (r == 0 && *rest != '\0') {
		r = -1;
	}
	if (r == 0) {
		/* Echo the section as the client sent it (upper-cased keywords
		 * matter to nobody, the field names keep their case). */
		if (it->partial)
			it->label = xasprintf("BODY[%s]<%llu>", sec, (unsigned long long)it->offset);
		else
			it->label = xasprintf("BODY[%s]", sec);
	}
	free(sec);
	if (!peek)
		fc->sets_seen = true;
	fc->need_text = true;
	return r;
}

/* Parses "BINARY[part]<o.l>", "BINARY.PEEK[part]<o.l>" or
 * "BINARY.SIZE[part]" (RFC 3516: the section is a part number or empty). */
static int parse_binary_section(struct fetch_ctx *fc, const char *atom)
{
	bool size = strncasecmp(atom, "BINARY.SIZE[", 12) == 0;
	bool peek = strncasecmp(atom, "BINARY.PEEK[", 12) == 0;
	const char *open = strchr(atom, '[');
	const char *close = strchr(open, ']');
	if (close == NULL)
		return -1;
	size_t n = (size_t)(close - open - 1);
	unsigned levels = 0;
	for (size_t i = 0; i < n; i++) {
		char ch = open[1 + i];
		bool first = i == 0 || open[i] == '.';
		if (ch == '.') {
			if (first || i + 1 == n)
				return -1;
			continue;
		}
		if (!isdigit((unsigned char)ch) || (first && ch == '0'))
			return -1;
		if (first && ++levels > FETCH_MAX_PART_LEVELS)
			return -1;
	}
	struct fetch_item *it = add_item(fc, size ? F_BINARY_SIZE : F_BINARY);
	if (it == NULL)
		return -1;
	it->peek = peek || size;
	it->part = xstrndup(open + 1, n);
	const char *rest = close + 1;
	if (*rest == '<' && !size) {
		uint64_t o, l;
		const char *dot = strchr(rest, '.');
		const char *gt = strchr(rest, '>');
		if (dot == NULL || gt == NULL || dot > gt || gt[1] != '\0' ||
		    str_to_u64_n(rest + 1, (size_t)(dot - rest - 1), UINT32_MAX, &o) < 0 ||
		    str_to_u64_n(dot + 1, (size_t)(gt - dot - 1), UINT32_MAX, &l) < 0 || l == 0)
			return -1;
		it->partial = true;
		it->offset = o;
		it->length = l;
		it->label = xasprintf("BINARY[%s]<%llu>", it->part, (unsigned long long)o);
	} else if (*rest != '\0') {
		return -1;
	} else {
		it->label = xasprintf("%s[%s]", size ? "BINARY.SIZE" : "BINARY", it->part);
	}
	if (!it->peek)
		fc->sets_seen = true;
	fc->need_text = true;
	return 0;
}

static int parse_item(struct fetch_ctx *fc, const struct imap_arg *arg)
{
	if (arg->type != IMAP_ARG_ATOM)
		return -1;
	const char *s = arg->str;
	struct fetch_item *it;
	if (strncasecmp(s, "BODY[", 5) == 0 || strncasecmp(s, "BODY.PEEK[", 10) == 0)
		return parse_body_section(fc, s);
	if (strncasecmp(s, "BINARY[", 7) == 0 || strncasecmp(s, "BINARY.PEEK[", 12) == 0 ||
	    strncasecmp(s, "BINARY.SIZE[", 12) == 0)
		return parse_binary_section(fc, s);
	if (strcasecmp(s, "FLAGS") == 0)
		return add_item(fc, F_FLAGS) ? 0 : -1;
	if (strcasecmp(s, "UID") == 0)
		return add_item(fc, F_UID) ? 0 : -1;
	if (strcasecmp(s, "INTERNALDATE") == 0)
		return add_item(fc, F_INTERNALDATE) ? 0 : -1;
	if (strcasecmp(s, "RFC822.SIZE") == 0)
		return add_item(fc, F_SIZE) ? 0 : -1;
	if (strcasecmp(s, "MODSEQ") == 0) {
		/* FETCH MODSEQ is a CONDSTORE enabling command (RFC 7162 3.1). */
		fc->enables_condstore = true;
		return add_item(fc, F_MODSEQ) ? 0 : -1;
	}
	if (strcasecmp(s, "ENVELOPE") == 0 || strcasecmp(s, "BODY") == 0 ||
	    strcasecmp(s, "BODYSTRUCTURE") == 0) {
		enum fetch_kind k = strcasecmp(s, "ENVELOPE") == 0 ? F_ENVELOPE :
				    strcasecmp(s, "BODY") == 0 ? F_BODY : F_BODYSTRUCTURE;
		fc->need_text = true;
		return add_item(fc, k) ? 0 : -1;
	}
	if (strcasecmp(s, "RFC822") == 0 || strcasecmp(s, "RFC822.HEADER") == 0 ||
	    strcasecmp(s, "RFC822.TEXT") == 0) {
		it = add_item(fc, F_SECTION);
		if (it == NULL)
			return -1;
		it->part = xstrdup("");
		if (strcasecmp(s, "RFC822") == 0) {
			it->skind = IMAP_SECTION_ALL;
			it->label = xstrdup("RFC822");
		} else if (strcasecmp(s, "RFC822.HEADER") == 0) {
			it->skind = IMAP_SECTION_HEADER;
			it->label = xstrdup("RFC822.HEADER");
			it->peek = true;
		} else {
			it->skind = IMAP_SECTION_TEXT;
			it->label = xstrdup("RFC822.TEXT");
		}
		if (!it->peek)
			fc->sets_seen = true;
		fc->need_text = true;
		return 0;
	}
	return -1;
}

static int parse_items(struct fetch_ctx *fc, const struct imap_arg *arg)
{
	if (arg->type == IMAP_ARG_ATOM) {
		const char *s = arg->str;
		if (strcasecmp(s, "ALL") == 0 || strcasecmp(s, "FAST") == 0 ||
		    strcasecmp(s, "FULL") == 0) {
			add_item(fc, F_FLAGS);
			add_item(fc, F_INTERNALDATE);
			add_item(fc, F_SIZE);
			if (strcasecmp(s, "FAST") != 0) {
				add_item(fc, F_ENVELOPE);
				fc->need_text = true;
			}
			if (strcasecmp(s, "FULL") == 0)
				add_item(fc, F_BODY);
			return 0;
		}
		return parse_item(fc, arg);
	}
	if (arg->type != IMAP_ARG_LIST || arg->count == 0)
		return -1;
	for (size_t i = 0; i < arg->count; i++)
		if (parse_item(fc, &arg->list[i]) < 0)
			return -1;
	return 0;
}

/* Appends "{n}\r\n" and the bytes [offset, offset+length) of data; a
 * literal8 "~{n}" when they hold a NUL (RFC 3516 4.1, BINARY only). */
static void append_literal_range(struct buf *out, const unsigned char *data, size_t len,
				 const struct fetch_item *it)
{
	size_t start = 0, n = len;
	if (it->partial) {
		start = it->offset < len ? (size_t)it->offset : len;
		n = len - start;
		if (n > it->length)
			n = (size_t)it->length;
	}
	bool lit8 = it->kind == F_BINARY && memchr(data + start, '\0', n) != NULL;
	buf_appendf(out, "%s{%zu}\r\n", lit8 ? "~" : "", n);
	buf_append(out, data + start, n);
}

/* The part of a derived record (imap-derived.h) that answers the item, or
 * 0 if it needs the text itself. */
static unsigned derived_have(const struct fetch_item *it)
{
	switch (it->kind) {
	case F_ENVELOPE:
		return IMAP_DERIVED_ENVELOPE;
	case F_BODY:
		return IMAP_DERIVED_BODY;
	case F_BODYSTRUCTURE:
		return IMAP_DERIVED_BODYSTRUCTURE;
	case F_SECTION:
		if (it->part[0] == '\0' && (it->skind == IMAP_SECTION_HEADER ||
					    it->skind == IMAP_SECTION_HEADER_FIELDS ||
					    it->skind == IMAP_SECTION_HEADER_FIELDS_NOT))
			return IMAP_DERIVED_HEADER;
		return 0;
	default:
		return 0;
	}
}

/* BODY[], BODY.PEEK[], RFC822 and their partials: the text itself, which
 * can go from the journal straight into the output. */
static bool item_whole_text(const struct fetch_item *it)
{
	return it->kind == F_SECTION && it->part[0] == '\0' && it->skind == IMAP_SECTION_ALL;
}

/* Appends "{n}\r\n" and the bytes [offset, offset+length) of the text
 * read straight from the store into out. */
static int stream_literal_range(struct stor_db *db, const struct stor_msg *m, struct buf *out,
				const struct fetch_item *it, const char **error_r)
{
	uint64_t start = 0, n = m->size;
	if (it->partial) {
		start = it->offset < m->size ? it->offset : m->size;
		n = m->size - start;
		if (n > it->length)
			n = it->length;
	}
	buf_appendf(out, "{%llu}\r\n", (unsigned long long)n);
	if (n == 0)
		return 0;
	size_t before = buf_avail(out);
	if (stor_text_read(db, &m->guid, start, n, out, error_r) < 0)
		return -1;
	if (buf_avail(out) - before != n) {
		/* The literal's length was announced from the message record:
		 * a text of another size must not desynchronise the stream. */
		*error_r = "message text is shorter than its record says";
		return -1;
	}
	return 0;
}

/* The same, the text sent from where it lies in the store instead of
 * being copied into out first (storage's stor_text_map; plain connections
 * only).  Returns 0, -1 on an error, 1 when the text is to be read the
 * other way (nothing written then). */
static int send_literal_range(struct imap_client *c, struct stor_db *db, const struct stor_msg *m,
			      const struct fetch_item *it, const char **error_r)
{
	if (!imap_client_can_send_pieces(c))
		return 1;
	uint64_t start = 0, n = m->size;
	if (it->partial) {
		start = it->offset < m->size ? it->offset : m->size;
		n = m->size - start;
		if (n > it->length)
			n = it->length;
	}
	/* Small ranges are cheaper copied than mapped. */
	if (n < FETCH_PIECES_MIN)
		return 1;
	stor_text_piece_list pl = ARRAY_INIT;
	int r = stor_text_map(db, &m->guid, start, n, &pl, error_r);
	if (r != 0) {
		stor_text_pieces_free(&pl);
		return r;
	}
	uint64_t got = 0;
	for (size_t i = 0; i < pl.count; i++)
		got += pl.items[i].len;
	if (got != n) {
		/* the record's size and the text disagree: the copying path
		 * says so */
		stor_text_pieces_free(&pl);
		return 1;
	}
	imap_client_printf(c, "{%llu}\r\n", (unsigned long long)n);
	for (size_t i = 0; i < pl.count; i++)
		imap_client_write_text(c, &pl.items[i]);
	ARRAY_FREE(&pl);
	return 0;
}

static bool item_needs_text(const struct fetch_item *it)
{
	return it->kind == F_SECTION || it->kind == F_BINARY || it->kind == F_BINARY_SIZE ||
	       derived_have(it) != 0;
}

/* The message records of the next UIDs of a step, read with one LevelDB
 * iterator pass (a seek, then nexts) instead of a lookup each.  Only
 * within one step: between steps other sessions may change or expunge
 * them, and then the text a record names may be gone. */
#define FETCH_BATCH 16

struct msg_batch {
	stor_msg_list list;
	uint32_t first, last;  /* the UID range looked up; last 0: none */
};

/* Reads the records of fc->uids[i...] (up to FETCH_BATCH of them) when
 * they are dense enough that the pass visits few other messages. */
static int batch_fill(struct stor_db *db, const struct fetch_ctx *fc, size_t i,
		      struct msg_batch *b, const char **error_r)
{
	stor_msg_list_free(&b->list);
	b->first = b->last = 0;
	size_t n = fc->uids.count - i < FETCH_BATCH ? fc->uids.count - i : FETCH_BATCH;
	if (n < 2)
		return 0;
	uint32_t first = fc->uids.items[i], last = fc->uids.items[i + n - 1];
	if (last - first >= 2 * n)
		return 0;
	if (stor_msg_list_range(db, &fc->mailbox, first, last, &b->list, error_r) < 0)
		return -1;
	b->first = first;
	b->last = last;
	return 0;
}

/* 1 and the record (now the caller's), 0 when the batch's range holds no
 * such message (expunged), -1 when uid is outside the range. */
static int batch_take(struct msg_batch *b, uint32_t uid, struct stor_msg *m_r)
{
	if (b == NULL || b->last == 0 || uid < b->first || uid > b->last)
		return -1;
	size_t lo = 0, hi = b->list.count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (b->list.items[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == b->list.count || b->list.items[lo].uid != uid)
		return 0;
	*m_r = b->list.items[lo];
	/* Moved out: what stays is freed as empty. */
	memset(&b->list.items[lo].keywords, 0, sizeof(b->list.items[lo].keywords));
	memset(&b->list.items[lo].stamps, 0, sizeof(b->list.items[lo].stamps));
	return 1;
}

/* Writes one message's FETCH response into the client's output.  Returns
 * 0, -1 on a storage error (*error_r), or -2 (nothing written) when a BINARY
 * item names a part whose transfer encoding we cannot undo. */
static int fetch_one(struct imap_cmd *cmd, struct fetch_ctx *fc, uint32_t uid,
		     struct msg_batch *mb, const char **error_r)
{
	struct imap_client *c = cmd->client;
	struct stor_db *db = c->server->db;
	if (c->dead)
		return 0;  /* its output would go nowhere */
	struct stor_msg m;
	int r = batch_take(mb, uid, &m);
	if (r < 0)
		r = stor_msg_get(db, &fc->mailbox, uid, &m, error_r);
	if (r < 0)
		return -1;
	if (r == 0)
		return 0;  /* expunged meanwhile; its EXPUNGE comes later */
	imap_pseen_view(c, &fc->mailbox, &m, 1);
	if (fc->changedsince != 0 && m.modseq <= fc->changedsince) {
		stor_msg_free(&m);
		return 0;
	}
	uint32_t seq = imap_sel_seq(c->sel, uid);
	if (seq == 0) {
		stor_msg_free(&m);
		return 0;
	}
	struct buf text = BUF_INIT;
	struct imap_mime *mime = NULL, *hmime = NULL;
	/* ENVELOPE, BODY[STRUCTURE] and the top-level header come from the
	 * text's derived record (imap-derived.h); the text is read only for
	 * what the record does not hold. */
	struct imap_derived d;
	bool want_derived = false, need_text = false, text_read = false;
	unsigned whole = 0;
	memset(&d, 0, sizeof(d));
	for (size_t i = 0; i < fc->item_count; i++) {
		if (derived_have(&fc->items[i]) != 0)
			want_derived = true;
		else if (item_whole_text(&fc->items[i]))
			whole++;
		else if (item_needs_text(&fc->items[i]))
			need_text = true;
	}
	/* One whole-text item alone streams from the journal into the output;
	 * with anything else that needs the text it is read once for all. */
	if (whole > 1 || (whole == 1 && need_text))
		need_text = true;
	if (want_derived) {
		if (imap_derived_load(db, &m.guid, m.size, &d, &text, &text_read, error_r) < 0) {
			stor_msg_free(&m);
			buf_free(&text);
			return -1;
		}
		for (size_t i = 0; i < fc->item_count; i++) {
			unsigned have = derived_have(&fc->items[i]);
			if (have != 0 && (d.have & have) == 0)
				need_text = true;
		}
	}
	if (need_text && !text_read) {
		if (stor_text_read(db, &m.guid, 0, m.size, &text, error_r) < 0) {
			imap_derived_free(&d);
			stor_msg_free(&m);
			buf_free(&text);
			return -1;
		}
	}
	/* An empty text leaves text.data NULL; nobody wants to see that. */
	const unsigned char *text_data = text.data != NULL ? text.data : (const unsigned char *)"";
	imap_sel_announce_keywords(c, &m.keywords);
	/* The response is written straight into the connection's output (no
	 * copy of a literal in between); mark is where it starts, to take it
	 * back if the FETCH fails half-way. */
	struct buf *outp = &c->out;
	struct imap_out_mark mark = imap_client_out_mark(c);
	bool failed = false;
	buf_appendf(outp, "* %u FETCH (", seq);
	bool first = true, unknown_cte = false;
#define SEP() do { if (!first) buf_append_byte(outp, ' '); first = false; } while (0)
	if (cmd->uid) {
		SEP();
		buf_appendf(outp, "UID %u", uid);
	}
	for (size_t i = 0; i < fc->item_count; i++) {
		struct fetch_item *it = &fc->items[i];
		switch (it->kind) {
		case F_UID:
			if (!cmd->uid) {
				SEP();
				buf_appendf(outp, "UID %u", uid);
			}
			break;
		case F_FLAGS:
			SEP();
			buf_append_str(outp, "FLAGS ");
			imap_append_flags(outp, m.flags, &m.keywords, imap_sel_is_recent(c->sel, uid));
			break;
		case F_INTERNALDATE:
			SEP();
			buf_append_str(outp, "INTERNALDATE ");
			imap_append_internaldate(outp, m.internaldate, m.internaldate_tz);
			break;
		case F_SIZE:
			SEP();
			buf_appendf(outp, "RFC822.SIZE %llu", (unsigned long long)m.size);
			break;
		case F_MODSEQ:
			SEP();
			buf_appendf(outp, "MODSEQ (%llu)", (unsigned long long)m.modseq);
			break;
		case F_ENVELOPE:
		case F_BODY:
		case F_BODYSTRUCTURE:
			if ((d.have & derived_have(it)) != 0) {
				SEP();
				if (it->kind == F_ENVELOPE) {
					buf_append_str(outp, "ENVELOPE ");
					buf_append(outp, d.envelope, d.envelope_len);
				} else if (it->kind == F_BODY) {
					buf_append_str(outp, "BODY ");
					buf_append(outp, d.body, d.body_len);
				} else {
					buf_append_str(outp, "BODYSTRUCTURE ");
					buf_append(outp, d.bodystructure, d.bodystructure_len);
				}
				break;
			}
			if (mime == NULL)
				mime = imap_mime_parse(text_data, text.len);
			SEP();
			if (it->kind == F_ENVELOPE) {
				buf_append_str(outp, "ENVELOPE ");
				imap_mime_envelope(mime, outp);
			} else {
				buf_append_str(outp, it->kind == F_BODY ? "BODY " : "BODYSTRUCTURE ");
				imap_mime_bodystructure(mime, it->kind == F_BODYSTRUCTURE, outp);
			}
			break;
		case F_SECTION:
			SEP();
			buf_append_str(outp, it->label);
			buf_append_byte(outp, ' ');
			if (item_whole_text(it) && !need_text && !text_read) {
				int sr = send_literal_range(c, db, &m, it, error_r);
				if (sr < 0 || (sr > 0 &&
					       stream_literal_range(db, &m, outp, it, error_r) < 0))
					failed = true;
			} else if (item_whole_text(it)) {
				append_literal_range(outp, text_data, text.len, it);
			} else if ((d.have & derived_have(it)) != 0 && it->skind == IMAP_SECTION_HEADER) {
				append_literal_range(outp, d.header != NULL ? d.header : (const unsigned char *)"",
						     d.header_len, it);
			} else if ((d.have & derived_have(it)) != 0) {
				/* HEADER.FIELDS[.NOT] of the top level: the header
				 * alone has the same fields as the whole text. */
				if (hmime == NULL)
					hmime = imap_mime_parse(d.header, d.header_len);
				struct buf sec = BUF_INIT;
				if (imap_mime_section(hmime, "", it->skind,
						      (const char *const *)it->fields, it->field_count,
						      &sec) < 0)
					buf_append_str(outp, "\"\"");
				else
					append_literal_range(outp, sec.data != NULL ? sec.data : (const unsigned char *)"", sec.len, it);
				buf_free(&sec);
			} else {
				if (mime == NULL)
					mime = imap_mime_parse(text_data, text.len);
				struct buf sec = BUF_INIT;
				if (imap_mime_section(mime, it->part, it->skind,
						      (const char *const *)it->fields, it->field_count,
						      &sec) < 0)
					buf_append_str(outp, "\"\"");
				else
					append_literal_range(outp, sec.data != NULL ? sec.data : (const unsigned char *)"", sec.len, it);
				buf_free(&sec);
			}
			break;
		case F_BINARY:
		case F_BINARY_SIZE: {
			if (mime == NULL)
				mime = imap_mime_parse(text_data, text.len);
			struct buf bin = BUF_INIT;
			int br = imap_mime_binary(mime, it->part, &bin);
			if (br == -2) {
				/* RFC 3516 4.3: the whole FETCH fails. */
				buf_free(&bin);
				unknown_cte = true;
				break;
			}
			SEP();
			buf_append_str(outp, it->label);
			buf_append_byte(outp, ' ');
			if (it->kind == F_BINARY_SIZE)
				buf_appendf(outp, "%zu", bin.len);
			else if (br < 0)
				buf_append_str(outp, "NIL");
			else
				append_literal_range(outp, bin.data != NULL ? bin.data :
							   (const unsigned char *)"", bin.len, it);
			buf_free(&bin);
			break;
		}
		}
		if (unknown_cte || failed)
			break;
	}
	if (fc->has_changedsince) {
		bool has_modseq = false;
		for (size_t i = 0; i < fc->item_count; i++)
			has_modseq |= fc->items[i].kind == F_MODSEQ;
		if (!has_modseq) {
			SEP();
			buf_appendf(outp, "MODSEQ (%llu)", (unsigned long long)m.modseq);
		}
	}
#undef SEP
	buf_append_str(outp, ")\r\n");
	if (unknown_cte || failed)
		imap_client_out_truncate(c, mark);
	/* Nothing more to append: this only wakes the writer. */
	imap_client_write(c, NULL, 0);
	imap_mime_free(&mime);
	imap_mime_free(&hmime);
	imap_derived_free(&d);
	buf_free(&text);
	stor_msg_free(&m);
	if (failed)
		return -1;
	if (unknown_cte) {
		*error_r = "Unknown Content-Transfer-Encoding";
		return -2;
	}
	return 0;
}

static bool fetch_step(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	struct fetch_ctx *fc = cmd->ctx;
	if (c->sel == NULL)
		return imap_cmd_done(cmd, "NO", "Mailbox closed");
	struct msg_batch mb = { ARRAY_INIT, 0, 0 };
	for (unsigned n = 0; n < FETCH_MSGS_PER_STEP && fc->next < fc->uids.count; n++) {
		const char *err;
		uint32_t uid = fc->uids.items[fc->next];
		int r = 0;
		if (uid > mb.last)
			r = batch_fill(c->server->db, fc, fc->next, &mb, &err);
		fc->next++;
		if (r == 0)
			r = fetch_one(cmd, fc, uid, &mb, &err);
		if (r < 0)
			stor_msg_list_free(&mb.list);
		if (r == -2)
			return imap_cmd_done(cmd, "NO", "[UNKNOWN-CTE] %s", err);
		if (r < 0)
			return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
		if (imap_client_out_pending(c) >= IMAP_OUT_HIGHWATER)
			break;
	}
	stor_msg_list_free(&mb.list);
	if (fc->next < fc->uids.count) {
		cmd->cont = fetch_step;
		imap_client_kick(c);
		return false;
	}
	return imap_cmd_done(cmd, "OK", "FETCH completed");
}

static void seen_done(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	struct imap_client *c = cmd->client;
	cmd->waiting = false;
	if (res->error != REPL_OK || c->dead) {
		imap_cmd_done(cmd, "NO", "%s%s", imap_repl_error_code(res->error),
			      res->error_msg != NULL ? res->error_msg : "connection closed");
		return;
	}
	if (c->sel != NULL)
		for (size_t i = 0; i < res->changed_count; i++)
			imap_sel_own_change(c->sel, res->changed[i].uid, res->changed[i].modseq);
	cmd->cont = fetch_step;
	imap_client_kick(c);
}

static void send_vanished(struct imap_cmd *cmd, struct fetch_ctx *fc)
{
	struct imap_client *c = cmd->client;
	stor_msg_list msgs = ARRAY_INIT;
	stor_tombstone_list tombs = ARRAY_INIT;
	const char *err;
	if (stor_changes_since(c->server->db, &fc->mailbox, fc->changedsince, &msgs, &tombs,
			       &err) < 0)
		return;
	/* The UID set as sent, resolved against UIDs ever used. */
	imap_seqset set = ARRAY_INIT;
	if (imap_seqset_parse(cmd->args[0].str, &set) == 0) {
		imap_seqset_resolve(&set, UINT32_MAX);
		stor_uid_list gone = ARRAY_INIT;
		for (size_t i = 0; i < tombs.count; i++) {
			uint32_t u = tombs.items[i].uid;
			if (imap_seqset_contains(&set, u) && imap_sel_seq(c->sel, u) == 0 &&
			    (gone.count == 0 || gone.items[gone.count - 1] != u))
				ARRAY_PUSH(&gone, u);
		}
		if (gone.count > 0) {
			struct buf line = BUF_INIT;
			buf_append_str(&line, "* VANISHED (EARLIER) ");
			imap_seqset_format(gone.items, gone.count, &line);
			buf_append_str(&line, "\r\n");
			imap_client_write(c, line.data, line.len);
			buf_free(&line);
		}
		ARRAY_FREE(&gone);
	}
	ARRAY_FREE(&set);
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&tombs);
}

bool imap_cmd_fetch(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	if (cmd->count < 2 || cmd->count > 3 || cmd->args[0].type != IMAP_ARG_ATOM)
		return imap_cmd_done(cmd, "BAD", "FETCH takes a set and items");
	struct fetch_ctx *fc = xcalloc(1, sizeof(*fc));
	cmd->ctx = fc;
	cmd->ctx_free = fetch_ctx_free;
	fc->mailbox = c->sel->guid;
	if (parse_items(fc, &cmd->args[1]) < 0)
		return imap_cmd_done(cmd, "BAD", "Invalid FETCH item");
	if (fc->enables_condstore)
		imap_enable_condstore(c);
	if (cmd->count == 3) {
		const struct imap_arg *mods = &cmd->args[2];
		if (mods->type != IMAP_ARG_LIST)
			return imap_cmd_done(cmd, "BAD", "Invalid FETCH modifiers");
		for (size_t i = 0; i < mods->count; i++) {
			const struct imap_arg *a = &mods->list[i];
			if (imap_arg_atom_eq(a, "CHANGEDSINCE") && i + 1 < mods->count &&
			    mods->list[i + 1].type == IMAP_ARG_ATOM &&
			    str_to_u64(mods->list[i + 1].str, UINT64_MAX, &fc->changedsince) == 0) {
				i++;
				fc->has_changedsince = true;
				imap_enable_condstore(c);
			} else if (imap_arg_atom_eq(a, "VANISHED") && cmd->uid && c->qresync) {
				fc->vanished = true;
			} else {
				return imap_cmd_done(cmd, "BAD", "Invalid FETCH modifier");
			}
		}
		if (fc->vanished && !fc->has_changedsince)
			return imap_cmd_done(cmd, "BAD", "VANISHED needs CHANGEDSINCE");
	}
	/* A client that saw a newer state on another node (RFC 7162). */
	if (fc->has_changedsince &&
	    !imap_read_barrier_modseq(cmd, imap_cmd_fetch, &fc->mailbox, fc->changedsince))
		return false;
	if (imap_sel_resolve(c->sel, cmd->args[0].str, cmd->uid, &fc->uids) < 0)
		return imap_cmd_done(cmd, "BAD", "Invalid sequence set");
	if (fc->has_changedsince && fc->uids.count > 0) {
		/* Ask the modseq index instead of visiting every message: a
		 * CONDSTORE client's periodic "1:* (FLAGS) (CHANGEDSINCE n)" on a
		 * big mailbox then costs only what changed. */
		stor_msg_list changed = ARRAY_INIT;
		stor_tombstone_list tombs = ARRAY_INIT;
		const char *err;
		if (stor_changes_since(c->server->db, &fc->mailbox, fc->changedsince, &changed,
				       &tombs, &err) < 0 ||
		    imap_pseen_changes(c, &fc->mailbox, fc->changedsince, &changed, &err) < 0) {
			stor_msg_list_free(&changed);
			ARRAY_FREE(&tombs);
			return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
		}
		stor_uid_list keep = ARRAY_INIT;
		for (size_t i = 0; i < changed.count; i++) {
			uint32_t u = changed.items[i].uid;
			size_t lo = 0, hi = fc->uids.count;
			while (lo < hi) {
				size_t mid = lo + (hi - lo) / 2;
				if (fc->uids.items[mid] < u)
					lo = mid + 1;
				else
					hi = mid;
			}
			if (lo < fc->uids.count && fc->uids.items[lo] == u)
				ARRAY_PUSH(&keep, u);
		}
		stor_msg_list_free(&changed);
		ARRAY_FREE(&tombs);
		ARRAY_FREE(&fc->uids);
		fc->uids = keep;
	}
	if (fc->vanished)
		send_vanished(cmd, fc);
	/* RFC 4314 4: without "s" a FETCH does not set \Seen, silently. */
	if (fc->sets_seen && !c->sel->readonly && fc->uids.count > 0 &&
	    (imap_acl_sel_rights(c) & ACL_SEEN) != 0) {
		/* Which messages lack \Seen: they get it (and FLAGS) first.  The
		 * records are read in batches as the responses' are. */
		struct msg_batch mb = { ARRAY_INIT, 0, 0 };
		for (size_t i = 0; i < fc->uids.count; i++) {
			struct stor_msg m;
			const char *err;
			uint32_t uid = fc->uids.items[i];
			if (uid > mb.last && batch_fill(c->server->db, fc, i, &mb, &err) < 0)
				mb.first = mb.last = 0;  /* one by one, as below */
			int r = batch_take(&mb, uid, &m);
			if (r < 0)
				r = stor_msg_get(c->server->db, &fc->mailbox, uid, &m, &err);
			if (r != 1)
				continue;
			imap_pseen_view(c, &fc->mailbox, &m, 1);
			if ((m.flags & STOR_FLAG_SEEN) == 0)
				ARRAY_PUSH(&fc->unseen, m.uid);
			stor_msg_free(&m);
		}
		stor_msg_list_free(&mb.list);
		if (fc->unseen.count > 0) {
			add_item(fc, F_FLAGS);
			fc->seen_req.op = STOR_FLAGS_ADD;
			fc->seen_req.flags = STOR_FLAG_SEEN;
			fc->seen_req.seen_of = imap_pseen_sel(c) ? c->user : NULL;
			cmd->waiting = true;
			repl_store(c->server->repl, c->sel->owner, &fc->mailbox, fc->unseen.items,
				   fc->unseen.count, &fc->seen_req, seen_done, cmd);
			return false;
		}
	}
	return fetch_step(cmd);
}
