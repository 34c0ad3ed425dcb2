/* APPEND with MULTIAPPEND (RFC 3502), CATENATE (RFC 4469) and literal8
 * messages (BINARY, RFC 3516); APPENDUID (UIDPLUS).  Literals stay in the parser's buffer until the command ends;
 * catenated texts are built here.
 *
 * MULTIAPPEND is all-or-nothing.  The seam has no batch append, and the
 * mailbox's master may be another node (repl_append forwards to it), so
 * every message is checked before anything is submitted (mailbox, flags,
 * dates, sizes, CATENATE URLs), the appends are then submitted one after
 * the other (each when the previous one completed: RFC 3502 wants the UIDs
 * in the order of the messages, and forwarded appends submitted together
 * may be applied in any order), and if one fails, the ones that were made
 * are expunged again before the tagged NO.
 * This is compensation, not atomicity: another session may see the first
 * messages before they are expunged, and a crash in between leaves them. */
#include "imap/imap-commands.h"
#include "imap/imap-acl.h"
#include "imap/imap-pseen.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "imap/imap-mime.h"
#include "lib/clock.h"
#include "lib/str.h"
#include "lib/xalloc.h"

/* Hostile-input bounds.  The parser already caps the whole command at
 * max_message_size + 256 KB; these cap the work CATENATE URLs can cause. */
#define APPEND_MAX_MESSAGES 1000
#define CATENATE_MAX_PARTS 256
#define CATENATE_MAX_URLS 64       /* per command: each reads a stored text */
#define CATENATE_MAX_URL 2048
/* Stored text the URLs of one command may read, in max_message_size units:
 * each URL reads its whole source message. */
#define CATENATE_READ_FACTOR 4

struct append_msg {
	struct repl_append req;
	imap_str_array keywords;
	struct buf built;          /* the catenated text, for CATENATE */
	bool done;
	/* Private \Seen in force and \Seen asked for: the appender's
	 * record is set once the message has its UID (SPEC.md 7.7). */
	bool seen_wanted;
	enum repl_error error;
	char *error_msg;
	uint32_t uid, uidvalidity;
};

struct append_done_ctx;

struct append_ctx {
	struct guid mailbox;
	char *owner;               /* the mailbox's user (another one's for shared/) */
	/* The seam call in flight.  At shutdown the session can be freed
	 * while it is (after the seam's last flush): the completion then
	 * finds it cancelled and touches nothing else. */
	struct append_done_ctx *inflight;
	struct append_msg *msgs;
	size_t count;
	size_t next;               /* the message to submit next */
	enum repl_error error;     /* the first failure, for the tagged NO */
	char *error_msg;
	stor_uid_list rollback;
	/* The appender's private \Seen: the STORE after the appends. */
	char *seen_user;
	stor_uid_list seen_uids;
	struct stor_store seen_req;
};

struct append_done_ctx {
	struct imap_cmd *cmd;
	size_t index;
	bool cancelled;
};

static void append_ctx_free(void *p)
{
	struct append_ctx *ac = p;
	if (ac->inflight != NULL)
		ac->inflight->cancelled = true;
	for (size_t i = 0; i < ac->count; i++) {
		ARRAY_FREE(&ac->msgs[i].keywords);
		buf_free(&ac->msgs[i].built);
		free(ac->msgs[i].error_msg);
	}
	free(ac->msgs);
	free(ac->owner);
	free(ac->error_msg);
	ARRAY_FREE(&ac->rollback);
	free(ac->seen_user);
	ARRAY_FREE(&ac->seen_uids);
	free(ac);
}

static int uid_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static void append_fail(struct imap_cmd *cmd)
{
	struct append_ctx *ac = cmd->ctx;
	imap_cmd_done(cmd, "NO", "%s%s", imap_repl_error_code(ac->error),
		      ac->error_msg != NULL ? ac->error_msg : "APPEND failed");
}

/* Starts a seam call for cmd: the context its completion gets. */
static struct append_done_ctx *inflight_new(struct imap_cmd *cmd, size_t index)
{
	struct append_ctx *ac = cmd->ctx;
	struct append_done_ctx *dc = xcalloc(1, sizeof(*dc));
	dc->cmd = cmd;
	dc->index = index;
	ac->inflight = dc;
	return dc;
}

/* Ends a seam call: its command, or NULL if that is gone. */
static struct imap_cmd *inflight_end(struct append_done_ctx *dc)
{
	struct imap_cmd *cmd = dc->cancelled ? NULL : dc->cmd;
	if (cmd != NULL)
		((struct append_ctx *)cmd->ctx)->inflight = NULL;
	free(dc);
	return cmd;
}

static void rollback_done(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = inflight_end(ctx);
	if (cmd == NULL)
		return;
	struct append_ctx *ac = cmd->ctx;
	cmd->waiting = false;
	if (res->error != REPL_OK) {
		char *m = xasprintf("%s (and %zu message(s) appended before the failure could "
				    "not be removed: %s)",
				    ac->error_msg != NULL ? ac->error_msg : "APPEND failed",
				    ac->rollback.count,
				    res->error_msg != NULL ? res->error_msg : "failed");
		free(ac->error_msg);
		ac->error_msg = m;
	}
	append_fail(cmd);
}

static void submit_next(struct imap_cmd *cmd);

static void append_ok(struct imap_cmd *cmd)
{
	struct append_ctx *ac = cmd->ctx;
	cmd->waiting = false;
	for (size_t i = 0; i < ac->count; i++) {
		if (ac->msgs[i].uid == 0) {
			/* Made at the master, but its UID is not held here
			 * (this node's store failed): a UID told now could be
			 * given again by this node after a restart. */
			imap_cmd_done_str(cmd, "OK", "APPEND completed");
			return;
		}
	}
	uint32_t *uids = xcalloc(ac->count, sizeof(uint32_t));
	for (size_t i = 0; i < ac->count; i++)
		uids[i] = ac->msgs[i].uid;
	struct buf set = BUF_INIT;
	imap_seqset_format(uids, ac->count, &set);
	free(uids);
	/* Not imap_cmd_done(): its 1 KB text would cut a long UID set (the
	 * UIDs of 1,000 messages interleaved with another session's). */
	char *text = xasprintf("[APPENDUID %u %.*s] APPEND completed", ac->msgs[0].uidvalidity,
			       (int)set.len, (const char *)set.data);
	buf_free(&set);
	imap_cmd_done_str(cmd, "OK", text);
	free(text);
}

/* The messages are stored: a failure to set the appender's \Seen record
 * does not undo them (the user sees them unseen, as a STORE that failed
 * would leave them), so the APPEND is still OK. */
static void seen_done(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = inflight_end(ctx);
	if (cmd == NULL)
		return;
	if (res->error != REPL_OK)
		log_warnx("APPEND: private \\Seen of the new messages not set: %s",
			  res->error_msg != NULL ? res->error_msg : "failed");
	append_ok(cmd);
}

static void all_done(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	struct append_ctx *ac = cmd->ctx;
	if (ac->error != REPL_OK) {
		size_t unknown = 0;
		for (size_t i = 0; i < ac->count; i++) {
			if (!ac->msgs[i].done || ac->msgs[i].error != REPL_OK)
				continue;
			if (ac->msgs[i].uid != 0)
				ARRAY_PUSH(&ac->rollback, ac->msgs[i].uid);
			else
				unknown++;
		}
		if (unknown > 0) {
			/* Made at the master under a UID this node does not
			 * know: it cannot be named to remove it. */
			char *m = xasprintf("%s (and %zu message(s) appended before the failure "
					    "could not be removed: their UIDs are not known here)",
					    ac->error_msg != NULL ? ac->error_msg : "APPEND failed",
					    unknown);
			free(ac->error_msg);
			ac->error_msg = m;
		}
		if (ac->rollback.count == 0 || c->server->stopping) {
			cmd->waiting = false;
			append_fail(cmd);
			return;
		}
		qsort(ac->rollback.items, ac->rollback.count, sizeof(uint32_t), uid_cmp);
		repl_expunge(c->server->repl, ac->owner, &ac->mailbox, ac->rollback.items,
			     ac->rollback.count, rollback_done, inflight_new(cmd, 0));
		return;
	}
	for (size_t i = 0; i < ac->count; i++)
		if (ac->msgs[i].seen_wanted && ac->msgs[i].uid != 0)
			ARRAY_PUSH(&ac->seen_uids, ac->msgs[i].uid);
	if (ac->seen_uids.count > 0 && !c->server->stopping) {
		/* As the user's STORE +FLAGS (\Seen) would, through the
		 * master, before the OK: a FETCH after it shows the flag. */
		qsort(ac->seen_uids.items, ac->seen_uids.count, sizeof(uint32_t), uid_cmp);
		ac->seen_user = xstrdup(c->user);
		memset(&ac->seen_req, 0, sizeof(ac->seen_req));
		ac->seen_req.op = STOR_FLAGS_ADD;
		ac->seen_req.flags = STOR_FLAG_SEEN;
		ac->seen_req.seen_of = ac->seen_user;
		repl_store(c->server->repl, ac->owner, &ac->mailbox, ac->seen_uids.items,
			   ac->seen_uids.count, &ac->seen_req, seen_done, inflight_new(cmd, 0));
		return;
	}
	append_ok(cmd);
}

static void append_done(void *ctx, const struct repl_result *res)
{
	struct append_done_ctx *dc = ctx;
	size_t index = dc->index;
	struct imap_cmd *cmd = inflight_end(dc);
	if (cmd == NULL)
		return;
	struct append_ctx *ac = cmd->ctx;
	struct append_msg *m = &ac->msgs[index];
	m->done = true;
	m->error = res->error;
	if (res->error != REPL_OK) {
		if (ac->error == REPL_OK) {
			ac->error = res->error;
			ac->error_msg = xstrdup(res->error_msg != NULL ? res->error_msg : "failed");
		}
	} else {
		m->uid = res->uid;
		m->uidvalidity = res->uidvalidity;
	}
	if (res->error != REPL_OK || ac->next == ac->count)
		all_done(cmd);
	else
		submit_next(cmd);
}

static void submit_next(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	struct append_ctx *ac = cmd->ctx;
	size_t index = ac->next++;
	repl_append(c->server->repl, ac->owner, &ac->mailbox, &ac->msgs[index].req, append_done,
		    inflight_new(cmd, index));
}

/* ---- CATENATE URLs (RFC 4469 5, a subset of RFC 5092): the user's own
 * messages on this server, "/mailbox[;UIDVALIDITY=n]/;UID=n
 * [/;SECTION=s][/;PARTIAL=o[.l]]", alone or after an "imap://" server
 * part that names this server and user (imap-url.c).  Sections: empty, HEADER, TEXT, a part
 * number, part.HEADER, part.TEXT, part.MIME. ---- */

static int hexval(int ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	ch = tolower(ch);
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

/* Percent-decodes [s, s + len) into a new string; NULL on a bad escape or
 * an encoded NUL. */
static char *url_decode(const char *s, size_t len)
{
	char *out = xmalloc(len + 1);
	size_t k = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '%') {
			int h, l;
			if (i + 2 >= len || (h = hexval((unsigned char)s[i + 1])) < 0 ||
			    (l = hexval((unsigned char)s[i + 2])) < 0 || (h == 0 && l == 0)) {
				free(out);
				return NULL;
			}
			out[k++] = (char)(h * 16 + l);
			i += 2;
		} else {
			out[k++] = s[i];
		}
	}
	out[k] = '\0';
	return out;
}

static const char *find_ci(const char *hay, const char *needle)
{
	size_t n = strlen(needle);
	for (const char *p = hay; *p != '\0'; p++)
		if (strncasecmp(p, needle, n) == 0)
			return p;
	return NULL;
}

/* Parses a decimal uint32 at *s (no sign, no overflow); advances *s. */
static int parse_u32(const char **s, uint32_t *v_r)
{
	const char *p = *s;
	uint64_t v = 0;
	if (!isdigit((unsigned char)*p))
		return -1;
	while (isdigit((unsigned char)*p)) {
		v = v * 10 + (uint64_t)(*p - '0');
		if (v > UINT32_MAX)
			return -1;
		p++;
	}
	*s = p;
	*v_r = (uint32_t)v;
	return 0;
}

static int parse_url_section(const char *sec, char **part_r, enum imap_section_kind *kind_r)
{
	const char *s = sec, *part_end = sec;
	unsigned levels = 0;
	while (isdigit((unsigned char)*s)) {
		if (*s == '0' || ++levels > 32)
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
	bool has_part = part_end != sec;
	s = part_end;
	if (*s == '\0') {
		*kind_r = IMAP_SECTION_ALL;
	} else {
		if (has_part && *s++ != '.')
			return -1;
		if (strcasecmp(s, "HEADER") == 0)
			*kind_r = IMAP_SECTION_HEADER;
		else if (strcasecmp(s, "TEXT") == 0)
			*kind_r = IMAP_SECTION_TEXT;
		else if (has_part && strcasecmp(s, "MIME") == 0)
			*kind_r = IMAP_SECTION_MIME;
		else
			return -1;
	}
	*part_r = xstrndup(sec, (size_t)(part_end - sec));
	return 0;
}

/* Appends the bytes the URL names to out, adding the size of the stored
 * text it read to *read.  Returns 0, or -1 if the URL is not one we
 * resolve (BADURL), or -2 when *read would pass read_max (nothing read). */
static int url_fetch(struct imap_client *c, const char *url, struct buf *out, uint64_t *read,
		     uint64_t read_max, const char **err_r)
{
	struct stor_db *db = c->server->db;
	*err_r = NULL;
	url = imap_url_local_path(c, url);
	if (url == NULL)
		return -1;  /* not this server's, or not the user's */
	const char *mb_start = url + 1;
	const char *uv = find_ci(mb_start, ";UIDVALIDITY=");
	const char *ud = find_ci(mb_start, "/;UID=");
	if (ud == NULL || (uv != NULL && uv > ud))
		uv = NULL;
	const char *mb_end = uv != NULL ? uv : ud;
	if (ud == NULL || mb_end == mb_start)
		return -1;
	uint32_t uidvalidity = 0, uid;
	if (uv != NULL) {
		const char *p = uv + strlen(";UIDVALIDITY=");
		if (parse_u32(&p, &uidvalidity) < 0 || p != ud || uidvalidity == 0)
			return -1;
	}
	const char *p = ud + strlen("/;UID=");
	if (parse_u32(&p, &uid) < 0 || uid == 0)
		return -1;
	char *section = NULL;
	uint64_t offset = 0, count = UINT64_MAX;
	if (strncasecmp(p, "/;SECTION=", 10) == 0) {
		const char *s = p + 10;
		const char *e = find_ci(s, "/;PARTIAL=");
		if (e == NULL)
			e = s + strlen(s);
		section = url_decode(s, (size_t)(e - s));
		if (section == NULL)
			return -1;
		p = e;
	}
	if (strncasecmp(p, "/;PARTIAL=", 10) == 0) {
		p += 10;
		uint32_t o, l;
		if (parse_u32(&p, &o) < 0) {
			free(section);
			return -1;
		}
		offset = o;
		if (*p == '.') {
			p++;
			if (parse_u32(&p, &l) < 0 || l == 0) {
				free(section);
				return -1;
			}
			count = l;
		}
	}
	if (*p != '\0') {
		free(section);
		return -1;
	}
	char *part = NULL;
	enum imap_section_kind kind = IMAP_SECTION_ALL;
	if (section != NULL && parse_url_section(section, &part, &kind) < 0) {
		free(section);
		return -1;
	}
	free(section);
	char *encname = url_decode(mb_start, (size_t)(mb_end - mb_start));
	const char *err;
	char *name = encname != NULL ? imap_mailbox_name(encname, strlen(encname), &err) : NULL;
	free(encname);
	int ret = -1;
	struct stor_mailbox mb;
	struct stor_msg m;
	struct buf text = BUF_INIT;
	struct imap_mime *mime = NULL;
	if (name == NULL)
		goto out;
	uint32_t rights = 0;
	int r = imap_acl_mailbox_get(c, name, &mb, &rights, &err);
	free(name);
	if (r <= 0) {
		if (r < 0)
			*err_r = err;
		goto out;
	}
	if ((rights & ACL_READ) == 0) {
		stor_mailbox_free(&mb);
		goto out;
	}
	bool mb_ok = uidvalidity == 0 || uidvalidity == mb.uidvalidity;
	struct guid mbguid = mb.guid;
	stor_mailbox_free(&mb);
	if (!mb_ok)
		goto out;
	r = stor_msg_get(db, &mbguid, uid, &m, &err);
	if (r <= 0) {
		if (r < 0)
			*err_r = err;
		goto out;
	}
	if (m.size > read_max || *read > read_max - m.size) {
		stor_msg_free(&m);
		ret = -2;
		goto out;
	}
	*read += m.size;
	r = stor_text_read(db, &m.guid, 0, m.size, &text, &err);
	stor_msg_free(&m);
	if (r < 0) {
		*err_r = err;
		goto out;
	}
	mime = imap_mime_parse(text.data != NULL ? text.data : (const unsigned char *)"",
			       text.len);
	if (imap_mime_section_partial(mime, part != NULL ? part : "", kind, NULL, 0, offset, count,
				      out, NULL) < 0)
		goto out;
	ret = 0;
out:
	imap_mime_free(&mime);
	buf_free(&text);
	free(part);
	return ret;
}

/* ---- Parsing ---- */

static bool is_message_start(const struct imap_arg *a, const struct imap_arg *next)
{
	if (a->type == IMAP_ARG_LITERAL)
		return true;
	return imap_arg_atom_eq(a, "CATENATE") && next != NULL && next->type == IMAP_ARG_LIST;
}

/* Builds the text of CATENATE (parts) into m->built.  Returns 0, or -1
 * after answering the command. */
static int catenate(struct imap_cmd *cmd, struct append_msg *m, const struct imap_arg *list,
		    uint64_t *total, unsigned *urls, uint64_t *read)
{
	struct imap_client *c = cmd->client;
	uint64_t max = c->server->cfg->max_message_size;
	if (list->count == 0 || list->count % 2 != 0 || list->count / 2 > CATENATE_MAX_PARTS) {
		imap_cmd_done(cmd, "BAD", "CATENATE takes 1 to %d TEXT or URL parts",
			      CATENATE_MAX_PARTS);
		return -1;
	}
	for (size_t k = 0; k < list->count; k += 2) {
		const struct imap_arg *kw = &list->list[k], *val = &list->list[k + 1];
		size_t before = m->built.len;
		if (imap_arg_atom_eq(kw, "TEXT")) {
			if (val->type != IMAP_ARG_LITERAL) {
				imap_cmd_done(cmd, "BAD", "CATENATE TEXT takes a literal");
				return -1;
			}
			if (memchr(val->str, '\0', val->len) != NULL) {
				imap_cmd_done(cmd, "NO", "CATENATE TEXT may not contain NUL");
				return -1;
			}
			if (m->built.len + val->len <= max)
				buf_append(&m->built, val->str, val->len);
			else
				before = m->built.len + 1; /* marks overflow below */
		} else if (imap_arg_atom_eq(kw, "URL")) {
			const char *url = imap_arg_cstr(val);
			if (url == NULL || val->type == IMAP_ARG_LIST || val->len > CATENATE_MAX_URL) {
				imap_cmd_done(cmd, "BAD", "CATENATE URL takes a URL");
				return -1;
			}
			if (++*urls > CATENATE_MAX_URLS) {
				imap_cmd_done(cmd, "NO", "[LIMIT] At most %d CATENATE URLs per command",
					      CATENATE_MAX_URLS);
				return -1;
			}
			const char *err;
			int ur = url_fetch(c, url, &m->built, read, CATENATE_READ_FACTOR * max,
					   &err);
			if (ur == -2) {
				imap_cmd_done(cmd, "NO", "[LIMIT] CATENATE URLs read over %llu octets",
					      (unsigned long long)(CATENATE_READ_FACTOR * max));
				return -1;
			}
			if (ur < 0) {
				if (err != NULL) {
					imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
				} else {
					/* RFC 4469's url-resp-text: the URL as
					 * text, any octet but NUL, CR, LF and ']'
					 * (those percent-encoded here); whole, as
					 * imap_cmd_done() would cut it at 1 KB. */
					struct buf q = BUF_INIT;
					buf_append_str(&q, "[BADURL ");
					for (const char *u = url; *u != '\0'; u++) {
						if (*u == ']' || *u == '\r' || *u == '\n')
							buf_appendf(&q, "%%%02X", (unsigned char)*u);
						else
							buf_append_byte(&q, (unsigned char)*u);
					}
					buf_append_str(&q, "] Unusable URL");
					buf_append_byte(&q, '\0');
					imap_cmd_done_str(cmd, "NO", (const char *)q.data);
					buf_free(&q);
				}
				return -1;
			}
		} else {
			imap_cmd_done(cmd, "BAD", "CATENATE parts are TEXT or URL");
			return -1;
		}
		if (before > m->built.len || m->built.len > max) {
			imap_cmd_done(cmd, "NO", "[TOOBIG] Message over %llu octets",
				      (unsigned long long)max);
			return -1;
		}
		*total += m->built.len - before;
		/* The command's literals are bounded by the parser; what URLs
		 * bring in is bounded here, as one command's worth. */
		if (*total > max + 262144) {
			imap_cmd_done(cmd, "NO", "[TOOBIG] APPEND over %llu octets in all",
				      (unsigned long long)(max + 262144));
			return -1;
		}
	}
	return 0;
}

bool imap_cmd_append(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	const struct imap_arg *args = cmd->args;
	size_t n = cmd->count;
	if (n < 2 || !imap_arg_is_string(&args[0]))
		return imap_cmd_done(cmd, "BAD", "APPEND takes a mailbox, flags, a date and a message");
	struct append_ctx *ac = xcalloc(1, sizeof(*ac));
	cmd->ctx = ac;
	cmd->ctx_free = append_ctx_free;
	/* The mailbox first: RFC 4469 5 wants [TRYCREATE] even when a URL is
	 * bad too. */
	const char *err;
	char *name = imap_client_mailbox_name(c, args[0].str, args[0].len, &err);
	if (name == NULL)
		return imap_cmd_done(cmd, "NO", "%s", err);
	struct stor_mailbox mb;
	uint32_t rights = 0;
	int r = imap_acl_mailbox_get(c, name, &mb, &rights, &err);
	free(name);
	if (r < 0)
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	if (r > 0 && (rights & ACL_INSERT) == 0) {
		stor_mailbox_free(&mb);
		return imap_acl_refuse(cmd, rights, ACL_INSERT, "[TRYCREATE] Mailbox does not exist");
	}

	/* Count the messages to size the array once: msgs[] must not move
	 * while requests point into it. */
	size_t nmsgs = 0;
	for (size_t i = 1; i < n; i++)
		if (is_message_start(&args[i], i + 1 < n ? &args[i + 1] : NULL) ||
		    (args[i].type == IMAP_ARG_STRING && i == n - 1))
			nmsgs++;
	if (nmsgs > APPEND_MAX_MESSAGES) {
		if (r > 0)
			stor_mailbox_free(&mb);
		return imap_cmd_done(cmd, "NO", "[LIMIT] At most %d messages per APPEND",
				     APPEND_MAX_MESSAGES);
	}
	ac->msgs = xcalloc(nmsgs ? nmsgs : 1, sizeof(*ac->msgs));
	uint64_t total = 0;
	unsigned urls = 0;
	uint64_t read = 0;
	size_t i = 1;
	bool bad = false;
	const char *bad_msg = "APPEND takes a mailbox, flags, a date and a message";
	while (i < n && !bad) {
		if (ac->count == nmsgs) {
			bad = true;
			break;
		}
		struct append_msg *m = &ac->msgs[ac->count++];
		if (args[i].type == IMAP_ARG_LIST) {
			if (imap_parse_flags(&args[i], &m->req.flags, &m->keywords, true, &err) < 0) {
				bad = true;
				bad_msg = err;
				break;
			}
			i++;
		}
		m->req.internaldate = clock_wall_s();
		m->req.internaldate_tz = 0;
		if (i + 1 < n && args[i].type == IMAP_ARG_STRING &&
		    args[i + 1].type != IMAP_ARG_LIST) {
			const char *d = imap_arg_cstr(&args[i]);
			if (d == NULL ||
			    imap_parse_datetime(d, &m->req.internaldate, &m->req.internaldate_tz) < 0) {
				bad = true;
				bad_msg = "Invalid date-time";
				break;
			}
			i++;
		}
		if (i < n && (args[i].type == IMAP_ARG_LITERAL ||
			      (args[i].type == IMAP_ARG_STRING && i == n - 1))) {
			m->req.text = args[i].str;
			m->req.text_len = args[i].len;
			/* RFC 3516 4.2: binary content sent as a literal8 is
			 * stored base64-encoded, so that BODY[] never has to
			 * carry a NUL; BINARY[] undoes it. */
			if (args[i].literal8 && memchr(args[i].str, '\0', args[i].len) != NULL &&
			    imap_mime_binary_to_base64((const unsigned char *)args[i].str,
						       args[i].len, &m->built) > 0) {
				m->req.text = m->built.data;
				m->req.text_len = m->built.len;
			} else {
				buf_reset(&m->built);
			}
			i++;
		} else if (i + 1 < n && imap_arg_atom_eq(&args[i], "CATENATE") &&
			   args[i + 1].type == IMAP_ARG_LIST) {
			if (r == 0)
				break;  /* [TRYCREATE] below, before any URL */
			if (catenate(cmd, m, &args[i + 1], &total, &urls, &read) < 0) {
				stor_mailbox_free(&mb);
				return true;
			}
			m->req.text = m->built.data != NULL ? (const void *)m->built.data : "";
			m->req.text_len = m->built.len;
			i += 2;
		} else {
			bad = true;
			if (i < n && args[i].type != IMAP_ARG_LITERAL && args[i].type != IMAP_ARG_LIST)
				bad_msg = "The message must be a literal";
		}
		m->req.keywords = m->keywords.items;
		m->req.keyword_count = m->keywords.count;
	}
	if (bad || ac->count == 0) {
		if (r > 0)
			stor_mailbox_free(&mb);
		return imap_cmd_done(cmd, "BAD", "%s", bad_msg);
	}
	if (r == 0)
		return imap_cmd_done(cmd, "NO", "[TRYCREATE] Mailbox does not exist");
	ac->mailbox = mb.guid;
	ac->owner = xstrdup(mb.user);
	stor_mailbox_free(&mb);
	/* RFC 4314 4: flags the user may not set are left off, silently. */
	for (size_t k = 0; k < ac->count; k++) {
		struct repl_append *req = &ac->msgs[k].req;
		/* With private \Seen the message's own \Seen is the owner's
		 * (or nobody's, in Public/): not this user's to set. */
		bool pseen = imap_pseen_for(c, ac->owner);
		ac->msgs[k].seen_wanted = pseen && (rights & ACL_SEEN) != 0 &&
					  (req->flags & STOR_FLAG_SEEN) != 0;
		if ((rights & ACL_SEEN) == 0 || pseen)
			req->flags &= ~(uint32_t)STOR_FLAG_SEEN;
		if ((rights & ACL_DELETE_MSG) == 0)
			req->flags &= ~(uint32_t)STOR_FLAG_DELETED;
		if ((rights & ACL_WRITE) == 0) {
			req->flags &= STOR_FLAG_SEEN | STOR_FLAG_DELETED;
			req->keyword_count = 0;
		}
	}
	cmd->waiting = true;
	submit_next(cmd);
	return false;
}
