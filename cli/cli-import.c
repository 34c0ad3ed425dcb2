/* `starling import maildir -u USER [--batch N] PATH`: moves a user's mail
 * from a Dovecot Maildir++ keeping UIDVALIDITY, UIDs, UIDNEXT, flags,
 * keywords and INTERNALDATE, so a client's cache stays valid.
 *
 * How: the Maildir is read into scratch stores, a batch of messages at a
 * time, with the exact UIDs and UIDVALIDITY; each scratch store is written
 * as a change bundle (sync/sync-bundle.h) and merged like `bundle import`:
 * through the running node's admin socket (so the import replicates like
 * any change), or into DATA_DIR/store when no node runs.  The merge is the
 * sync engine's, so a mailbox new to the user gets Dovecot's UIDVALIDITY
 * and a message already there (same UID, same GUID) is left alone.
 *
 * Resume: message GUIDs are derived from the mailbox's identity, the UID
 * and the Maildir base name, and mailbox GUIDs from the uidlist (or the
 * user, name and UIDVALIDITY), so importing again finds what an earlier,
 * interrupted run merged (read from the user's dump) and skips it.
 *
 * Everything read from the Maildir is hostile: a bad uidlist or keywords
 * line is one error naming file:line, a file above max_message_size is
 * one error naming it, and nothing is merged before every mailbox's
 * UIDVALIDITY was checked against the user's existing mailboxes. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "lib/buf.h"
#include "lib/file.h"
#include "lib/guid.h"
#include "lib/mail-limits.h"
#include "lib/passwd.h"
#include "lib/xalloc.h"
#include "storage/storage.h"
#include "sync/sync-bundle.h"

static const char import_usage[] =
	"usage: starling -c FILE import maildir -u USER [--batch N] PATH\n"
	"       starling -c FILE import imap -u USER --host HOST [--port PORT] --user LOGIN "
	"[--batch N]\n"
	"       (the password on stdin)";

/* Bundles from an import carry this SOURCE: a node id no cluster is
 * expected to use, so the merge state of imports is kept apart from any
 * real node's (SPEC.md 11.3). */
#define IMPORT_SOURCE_SID 0x7ffffffeu
#define IMPORT_WAIT_MS (30 * 60 * 1000)
#define UIDLIST_MAX_SIZE (256u * 1024 * 1024)
#define SMALL_FILE_MAX (1024u * 1024)
/* A batch also ends at this many bytes of text, so a bundle stays far
 * below SYNC_BUNDLE_MAX_SIZE whatever the batch size. */
#define BATCH_MAX_BYTES (128ull * 1024 * 1024)
#define MAILBOX_NAME_MAX 255
/* Dovecot's modseqs live in its binary index, which this does not read.
 * They count changes from 1, so every imported mailbox's HIGHESTMODSEQ is
 * raised to at least this: a CONDSTORE/QRESYNC client's cached modseq from
 * Dovecot stays below every later change here (it then refetches flags
 * once, never bodies). */
#define IMPORT_MIN_MODSEQ (UINT64_C(1) << 32)

struct im_msg {
	uint32_t uid;
	char *dir;       /* "cur" or "new" */
	char *file;      /* full file name */
	char *base;      /* up to ':' */
	char *gfield;    /* uidlist G value, or NULL */
	uint32_t flags;
	unsigned kwbits; /* letters a-z */
	uint64_t size;   /* bytes, as the source tells it */
	/* From an IMAP server: keywords, date and (for one batch) text. */
	char **kws;
	size_t nkw;
	bool have_date;
	int64_t date;
	int32_t tz;
	struct buf text;
	bool have_text;
};

struct im_mailbox {
	char *name;      /* Starling name ("INBOX", "Sent", "A/B") */
	char *path;      /* the Maildir directory */
	uint32_t uidvalidity, nextuid;
	struct guid guid;
	char *keywords[26];
	struct im_msg *msgs;
	size_t count, cap;
};

struct existing {
	struct buf dump;
	/* The dump's "msg " lines (past "msg "), sorted, so a resumed
	 * import of many messages finds each in log time. */
	const char **msgs;
	size_t nmsgs;
};

static char *file_line_error(const char *path, unsigned line, const char *why)
{
	return xasprintf("%s:%u: %s", path, line, why);
}

static void derive(const char *what, const void *a, size_t alen, const void *b, size_t blen,
		   uint32_t n, struct guid *g_r)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	struct buf in = BUF_INIT;
	buf_append(&in, what, strlen(what) + 1);
	buf_append(&in, a, alen);
	buf_append_byte(&in, 0);
	buf_append(&in, b, blen);
	buf_append_byte(&in, 0);
	buf_append_be32(&in, n);
	SHA256(in.data, in.len, md);
	buf_free(&in);
	memcpy(g_r->b, md, GUID_SIZE);
	if (guid_is_zero(g_r))
		g_r->b[0] = 1;
}

static int parse_u32(const char *s, size_t len, uint32_t *v_r)
{
	uint64_t v = 0;
	if (len == 0 || len > 10)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > UINT32_MAX)
		return -1;
	*v_r = (uint32_t)v;
	return 0;
}

static void mailbox_free(struct im_mailbox *mb)
{
	for (size_t i = 0; i < mb->count; i++) {
		free(mb->msgs[i].dir);
		free(mb->msgs[i].file);
		free(mb->msgs[i].base);
		free(mb->msgs[i].gfield);
		for (size_t k = 0; k < mb->msgs[i].nkw; k++)
			free(mb->msgs[i].kws[k]);
		free(mb->msgs[i].kws);
		buf_free(&mb->msgs[i].text);
	}
	free(mb->msgs);
	for (int i = 0; i < 26; i++)
		free(mb->keywords[i]);
	free(mb->name);
	free(mb->path);
}

static struct im_msg *msg_add(struct im_mailbox *mb)
{
	if (mb->count == mb->cap) {
		mb->cap = mb->cap == 0 ? 64 : mb->cap * 2;
		mb->msgs = xreallocarray(mb->msgs, mb->cap, sizeof(*mb->msgs));
	}
	struct im_msg *m = &mb->msgs[mb->count++];
	memset(m, 0, sizeof(*m));
	return m;
}

static bool is_atom_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && strchr("(){%*\"\\]", c) == NULL;
}

static int read_keywords(struct im_mailbox *mb, char **error_r)
{
	char *path = xasprintf("%s/dovecot-keywords", mb->path);
	struct buf b = BUF_INIT;
	char *err = NULL;
	int ret = 0;
	if (access(path, F_OK) < 0) {
		free(path);
		return 0;
	}
	if (file_read(path, SMALL_FILE_MAX, &b, &err) < 0) {
		*error_r = err;
		free(path);
		buf_free(&b);
		return -1;
	}
	buf_append_byte(&b, '\0');
	char *save = NULL;
	unsigned line = 0;
	char *text = (char *)b.data;
	for (char *l = text; l != NULL && ret == 0; l = save) {
		char *nl = strchr(l, '\n');
		save = nl != NULL ? nl + 1 : NULL;
		if (nl != NULL)
			*nl = '\0';
		line++;
		size_t len = strlen(l);
		if (len > 0 && l[len - 1] == '\r')
			l[--len] = '\0';
		if (len == 0)
			continue;
		char *sp = strchr(l, ' ');
		uint32_t idx;
		if (sp == NULL || parse_u32(l, (size_t)(sp - l), &idx) < 0 || idx >= 26) {
			*error_r = file_line_error(path, line, "expected '<index 0-25> <keyword>'");
			ret = -1;
			break;
		}
		const char *kw = sp + 1;
		bool ok = kw[0] != '\0' && kw[0] != '\\' && strlen(kw) <= 128;
		for (const char *p = kw; ok && *p != '\0'; p++)
			ok = is_atom_char((unsigned char)*p);
		if (!ok) {
			*error_r = file_line_error(path, line, "not a keyword (an IMAP atom)");
			ret = -1;
			break;
		}
		free(mb->keywords[idx]);
		mb->keywords[idx] = xstrdup(kw);
	}
	free(path);
	buf_free(&b);
	return ret;
}

/* dovecot-uidlist, version 3 ("3 V<uidvalidity> N<nextuid> G<guid> ...")
 * or 1 ("1 <uidvalidity> <nextuid>"), then "<uid> [<ext>...] :<file>". */
static int read_uidlist(struct im_mailbox *mb, const char *user, char **error_r)
{
	char *path = xasprintf("%s/dovecot-uidlist", mb->path);
	struct buf b = BUF_INIT;
	char *err = NULL;
	int ret = 0;
	bool have_guid = false;
	mb->uidvalidity = 0;
	mb->nextuid = 1;
	if (access(path, F_OK) == 0) {
		if (file_read(path, UIDLIST_MAX_SIZE, &b, &err) < 0) {
			*error_r = err;
			free(path);
			buf_free(&b);
			return -1;
		}
	}
	buf_append_byte(&b, '\0');
	char *text = (char *)b.data, *next;
	unsigned line = 0;
	uint32_t last_uid = 0;
	for (char *l = text; l != NULL && *l != '\0' && ret == 0; l = next) {
		char *nl = strchr(l, '\n');
		next = nl != NULL ? nl + 1 : NULL;
		if (nl != NULL)
			*nl = '\0';
		line++;
		size_t len = strlen(l);
		if (len > 0 && l[len - 1] == '\r')
			l[--len] = '\0';
		if (line == 1) {
			char *tok, *sv = NULL;
			int field = 0;
			bool v1 = false;
			for (tok = strtok_r(l, " ", &sv); tok != NULL && ret == 0;
			     tok = strtok_r(NULL, " ", &sv), field++) {
				uint32_t v;
				if (field == 0) {
					if (strcmp(tok, "3") != 0 && strcmp(tok, "1") != 0) {
						*error_r = file_line_error(path, line,
							"unknown uidlist version (1 or 3 expected)");
						ret = -1;
					}
					v1 = strcmp(tok, "1") == 0;
				} else if (v1 && field <= 2) {
					if (parse_u32(tok, strlen(tok), &v) < 0) {
						*error_r = file_line_error(path, line, "bad number");
						ret = -1;
					} else if (field == 1) {
						mb->uidvalidity = v;
					} else {
						mb->nextuid = v;
					}
				} else if (!v1 && (tok[0] == 'V' || tok[0] == 'N')) {
					if (parse_u32(tok + 1, strlen(tok + 1), &v) < 0) {
						*error_r = file_line_error(path, line, "bad V or N value");
						ret = -1;
					} else if (tok[0] == 'V') {
						mb->uidvalidity = v;
					} else {
						mb->nextuid = v;
					}
				} else if (!v1 && tok[0] == 'G' && guid_from_hex(tok + 1, &mb->guid) == 0 &&
					   strlen(tok + 1) == 32 && !guid_is_zero(&mb->guid)) {
					have_guid = true;
				}
			}
			if (ret == 0 && (mb->uidvalidity == 0 || mb->nextuid == 0 ||
					 mb->nextuid > MAIL_UIDNEXT_MAX)) {
				*error_r = file_line_error(path, line,
							   "header without a valid UIDVALIDITY and next UID");
				ret = -1;
			}
			continue;
		}
		if (len == 0)
			continue;
		char *colon = strstr(l, " :");
		if (colon == NULL && l[0] != ':') {
			/* Dovecot writes "<uid> :<file>" or "<uid> <ext> :<file>". */
			*error_r = file_line_error(path, line, "no ' :<filename>'");
			ret = -1;
			break;
		}
		char *fname = colon != NULL ? colon + 2 : l + 1;
		if (colon != NULL)
			*colon = '\0';
		char *sv = NULL;
		char *tok = strtok_r(l, " ", &sv);
		uint32_t uid;
		if (tok == NULL || parse_u32(tok, strlen(tok), &uid) < 0 || uid == 0 ||
		    uid > MAIL_UID_MAX) {
			*error_r = file_line_error(path, line, "bad UID");
			ret = -1;
			break;
		}
		if (uid <= last_uid) {
			*error_r = file_line_error(path, line, "UIDs not ascending");
			ret = -1;
			break;
		}
		last_uid = uid;
		/* Dovecot appends lines without rewriting the header, whose
		 * next UID is then behind: the file's is past its last UID. */
		if (uid >= mb->nextuid)
			mb->nextuid = uid + 1;
		size_t flen = strlen(fname);
		if (flen == 0 || flen > NAME_MAX || strchr(fname, '/') != NULL || fname[0] == '.') {
			*error_r = file_line_error(path, line, "bad file name");
			ret = -1;
			break;
		}
		struct im_msg *m = msg_add(mb);
		m->uid = uid;
		m->base = xstrndup(fname, strcspn(fname, ":"));
		for (tok = strtok_r(NULL, " ", &sv); tok != NULL; tok = strtok_r(NULL, " ", &sv)) {
			if (tok[0] == 'G' && tok[1] != '\0' && strlen(tok) <= 64 && m->gfield == NULL)
				m->gfield = xstrdup(tok + 1);
		}
	}
	if (ret == 0 && mb->uidvalidity == 0) {
		/* No uidlist: Dovecot would make a new UIDVALIDITY, so clients
		 * had nothing cached.  Derive one so a resumed import agrees. */
		struct guid g;
		derive("starling maildir uidvalidity", user, strlen(user), mb->name,
		       strlen(mb->name), 0, &g);
		mb->uidvalidity = ((uint32_t)g.b[0] << 24 | (uint32_t)g.b[1] << 16 |
				   (uint32_t)g.b[2] << 8 | g.b[3]) & 0x7fffffff;
		if (mb->uidvalidity == 0)
			mb->uidvalidity = 1;
	}
	if (ret == 0) {
		/* Mailbox GUIDs are unique in a store across users: the same
		 * Maildir imported for two users must make two mailboxes, so
		 * the user is part of it, with Dovecot's mailbox GUID when
		 * the uidlist has one (it survives a rename in Dovecot). */
		char hex[GUID_HEX_SIZE];
		if (have_guid)
			guid_to_hex(&mb->guid, hex);
		const char *id = have_guid ? hex : mb->name;
		derive("starling maildir mailbox", user, strlen(user), id, strlen(id),
		       mb->uidvalidity, &mb->guid);
	}
	free(path);
	buf_free(&b);
	return ret;
}

static int msg_base_cmp(const void *a, const void *b)
{
	return strcmp(((const struct im_msg *)a)->base, ((const struct im_msg *)b)->base);
}

static int msg_uid_cmp(const void *a, const void *b)
{
	uint32_t x = ((const struct im_msg *)a)->uid, y = ((const struct im_msg *)b)->uid;
	return x < y ? -1 : x > y;
}

/* Flags from the ":2," info: letters in ASCII order. */
static void parse_info(struct im_msg *m, const char *file)
{
	const char *info = strstr(file, ":2,");
	if (info == NULL)
		return;
	for (const char *p = info + 3; *p != '\0'; p++) {
		switch (*p) {
		case 'D': m->flags |= STOR_FLAG_DRAFT; break;
		case 'F': m->flags |= STOR_FLAG_FLAGGED; break;
		case 'R': m->flags |= STOR_FLAG_ANSWERED; break;
		case 'S': m->flags |= STOR_FLAG_SEEN; break;
		case 'T': m->flags |= STOR_FLAG_DELETED; break;
		default:
			if (*p >= 'a' && *p <= 'z')
				m->kwbits |= 1u << (*p - 'a');
			/* P (passed) has no IMAP flag. */
			break;
		}
	}
}

/* Matches the files of cur/ and new/ with the uidlist; files it does not
 * list get UIDs from its next UID on, in name order (their names start
 * with the delivery time), as Dovecot would give them. */
static int scan_files(struct im_mailbox *mb, uint64_t max_size, char **error_r)
{
	int ret = 0;
	size_t listed = mb->count;
	if (listed > 0)
		qsort(mb->msgs, listed, sizeof(*mb->msgs), msg_base_cmp);
	struct im_msg *extra = NULL;
	size_t nextra = 0, capextra = 0;
	static const char *const dirs[] = { "new", "cur" };
	for (int d = 0; d < 2; d++) {
		char *dpath = xasprintf("%s/%s", mb->path, dirs[d]);
		DIR *dir = opendir(dpath);
		if (dir == NULL) {
			free(dpath);
			continue;
		}
		struct dirent *de;
		while (ret == 0 && (de = readdir(dir)) != NULL) {
			if (de->d_name[0] == '.')
				continue;
			/* Every file is checked before anything is merged, so
			 * one that cannot be imported stops the import early. */
			struct stat st;
			char *fpath = xasprintf("%s/%s", dpath, de->d_name);
			if (lstat(fpath, &st) < 0 || !S_ISREG(st.st_mode)) {
				*error_r = xasprintf("%s: not a regular file", fpath);
				ret = -1;
			} else if ((uint64_t)st.st_size > max_size) {
				*error_r = xasprintf("%s: %lld bytes, above max_message_size (%llu): "
						     "raise it in the config of every node, or move "
						     "the message away, and import again", fpath,
						     (long long)st.st_size,
						     (unsigned long long)max_size);
				ret = -1;
			}
			free(fpath);
			if (ret < 0)
				break;
			uint64_t fsize = (uint64_t)st.st_size;
			char *base = xstrndup(de->d_name, strcspn(de->d_name, ":"));
			struct im_msg key = { .base = base };
			struct im_msg *m = listed == 0 ? NULL :
				bsearch(&key, mb->msgs, listed, sizeof(key), msg_base_cmp);
			if (m != NULL && m->file != NULL) {
				/* The same base twice (a crash between link and
				 * unlink): one copy is enough. */
				free(base);
				continue;
			}
			if (m == NULL) {
				if (nextra == capextra) {
					capextra = capextra == 0 ? 64 : capextra * 2;
					extra = xreallocarray(extra, capextra, sizeof(*extra));
				}
				m = &extra[nextra++];
				memset(m, 0, sizeof(*m));
				m->base = base;
			} else {
				free(base);
			}
			m->dir = xstrdup(dirs[d]);
			m->file = xstrdup(de->d_name);
			m->size = fsize;
			parse_info(m, de->d_name);
		}
		closedir(dir);
		free(dpath);
	}
	/* Uidlist lines whose file is gone: expunged since. */
	size_t w = 0;
	for (size_t i = 0; i < listed; i++) {
		if (mb->msgs[i].file != NULL) {
			mb->msgs[w++] = mb->msgs[i];
		} else {
			free(mb->msgs[i].base);
			free(mb->msgs[i].gfield);
		}
	}
	mb->count = w;
	if (nextra > 0)
		qsort(extra, nextra, sizeof(*extra), msg_base_cmp);
	for (size_t i = 0; i < nextra; i++) {
		if (ret == 0 && mb->nextuid >= MAIL_UIDNEXT_MAX) {
			*error_r = xasprintf("%s: no UIDs left for new files", mb->path);
			ret = -1;
		}
		if (ret < 0) {
			free(extra[i].base);
			free(extra[i].dir);
			free(extra[i].file);
			continue;
		}
		extra[i].uid = mb->nextuid++;
		*msg_add(mb) = extra[i];
	}
	free(extra);
	if (mb->count > 0)
		qsort(mb->msgs, mb->count, sizeof(*mb->msgs), msg_uid_cmp);
	return ret;
}

/* ---- What the user has already ---- */

/* From the user's canonical dump (storage.h): the mailbox line of name. */
static const char *dump_find(const struct existing *ex, const char *prefix, const char *name,
			     const char *after)
{
	size_t plen = strlen(prefix), nlen = strlen(name), alen = strlen(after);
	const char *p = (const char *)ex->dump.data, *end = p + ex->dump.len;
	while (p != NULL && p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t len = nl != NULL ? (size_t)(nl - p) : (size_t)(end - p);
		if (len > plen + nlen + alen && memcmp(p, prefix, plen) == 0 &&
		    memcmp(p + plen, name, nlen) == 0 && memcmp(p + plen + nlen, after, alen) == 0)
			return p + plen + nlen;
		p = nl != NULL ? nl + 1 : NULL;
	}
	return NULL;
}

static uint32_t field_u32(const char *line, const char *key)
{
	const char *nl = strchr(line, '\n');
	const char *p = strstr(line, key);
	if (p == NULL || (nl != NULL && p > nl))
		return 0;
	return (uint32_t)strtoul(p + strlen(key), NULL, 10);
}

/* Orders dump lines up to their end of line. */
static int line_cmp(const void *a, const void *b)
{
	const unsigned char *x = *(const unsigned char *const *)a;
	const unsigned char *y = *(const unsigned char *const *)b;
	while (*x == *y && *x != '\n' && *x != '\0')
		x++, y++;
	unsigned cx = *x == '\n' ? 0 : *x, cy = *y == '\n' ? 0 : *y;
	return cx < cy ? -1 : cx > cy;
}

static int prefix_cmp(const void *key, const void *elem)
{
	const char *k = key, *l = *(const char *const *)elem;
	size_t n = strlen(k);
	for (size_t i = 0; i < n; i++) {
		unsigned char ck = (unsigned char)k[i];
		unsigned char cl = l[i] == '\n' ? 0 : (unsigned char)l[i];
		if (ck != cl)
			return ck < cl ? -1 : 1;
		if (cl == 0)
			break;
	}
	return 0;
}

static bool existing_has_msg(const struct existing *ex, const char *key)
{
	return ex->nmsgs > 0 &&
	       bsearch(key, ex->msgs, ex->nmsgs, sizeof(*ex->msgs), prefix_cmp) != NULL;
}

static int load_existing(const struct config *cfg, const char *user, struct existing *ex)
{
	const char *tokens[] = { "DUMP", user };
	char *text = NULL;
	int ret = 0;
	switch (cli_admin_request(cfg, tokens, 2, NULL, 0, &ex->dump, &text, IMPORT_WAIT_MS)) {
	case CLI_ADMIN_OK:
		break;
	case CLI_ADMIN_UNREACHABLE: {
		buf_reset(&ex->dump);
		char *dir = xasprintf("%s/store", cfg->data_dir);
		struct stor_settings set = { .dir = dir, .max_message_size = cfg->max_message_size };
		struct stor_db *db = NULL;
		char *err = NULL;
		const char *e;
		if (stor_open(&set, &db, &err) < 0) {
			cli_error("%s", err);
			free(err);
			ret = -1;
		} else {
			if (stor_dump_user(db, user, &ex->dump, &e) < 0) {
				cli_error("reading the user's mailboxes: %s", e);
				ret = -1;
			}
			stor_close(&db);
		}
		free(dir);
		break;
	}
	default:
		cli_error("reading the user's mailboxes: %s", text);
		ret = -1;
		break;
	}
	free(text);
	buf_append_byte(&ex->dump, '\0');
	ex->dump.len--;
	size_t cap = 0;
	const char *p = (const char *)ex->dump.data, *end = p + ex->dump.len;
	while (ret == 0 && p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if (strncmp(p, "msg ", 4) == 0) {
			if (ex->nmsgs == cap) {
				cap = cap == 0 ? 256 : cap * 2;
				ex->msgs = xreallocarray(ex->msgs, cap, sizeof(*ex->msgs));
			}
			ex->msgs[ex->nmsgs++] = p + 4;
		}
		p = nl != NULL ? nl + 1 : end;
	}
	if (ex->nmsgs > 0)
		qsort(ex->msgs, ex->nmsgs, sizeof(*ex->msgs), line_cmp);
	return ret;
}

/* ---- Batches ---- */

/* The scratch store is removed best effort: a leftover only costs disk. */
static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	(void)remove(p);
	return 0;
}
static void rm_tree(const char *path)
{
	nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Bare LF line ends become CRLF, as Dovecot sends a Maildir file to IMAP
 * clients (and counts RFC822.SIZE). */
static void to_crlf(const struct buf *in, struct buf *out)
{
	buf_reset(out);
	for (size_t i = 0; i < in->len; i++) {
		if (in->data[i] == '\n' && (i == 0 || in->data[i - 1] != '\r'))
			buf_append_byte(out, '\r');
		buf_append_byte(out, in->data[i]);
	}
}

struct importer {
	const struct config *cfg;
	const char *user;
	unsigned char *secret;
	size_t secret_len;
	char **subs;
	size_t nsubs;
	bool subs_sent;
	bool through_node;      /* merged by a running node: resync its peers */
	/* IMAP: fetches the texts of msgs [from, to) not skipped. */
	int (*fetch)(struct importer *im, struct im_mailbox *mb, const bool *skip, size_t from,
		     size_t to);
	void *fetch_ctx;
	size_t total, done, skipped;
	uint64_t bytes;
	struct timespec start;
};

static double elapsed(const struct importer *im)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - im->start.tv_sec) +
	       (double)(now.tv_nsec - im->start.tv_nsec) / 1e9;
}

static int merge_bundle(struct importer *im, const struct buf *bundle)
{
	char size[32];
	snprintf(size, sizeof(size), "%zu", bundle->len);
	const char *tokens[] = { "BUNDLE-IMPORT", size };
	char *text = NULL;
	struct buf state = BUF_INIT;
	int ret = -1;
	switch (cli_admin_request(im->cfg, tokens, 2, bundle->data, bundle->len, &state, &text,
				  IMPORT_WAIT_MS)) {
	case CLI_ADMIN_OK:
		ret = 0;
		im->through_node = true;
		break;
	case CLI_ADMIN_UNREACHABLE: {
		char *dir = xasprintf("%s/store", im->cfg->data_dir);
		struct stor_settings sset = { .dir = dir,
					      .max_message_size = im->cfg->max_message_size };
		struct stor_db *db = NULL;
		char *err = NULL;
		if (stor_open(&sset, &db, &err) < 0) {
			cli_error("%s", err);
		} else {
			struct sync_bundle_import_settings set = {
				.own_sid = im->cfg->node_id,
				.key = { im->secret, im->secret_len, false },
				.scratch_parent = im->cfg->data_dir,
				.max_message_size = im->cfg->max_message_size,
			};
			struct sync_bundle_import_result res;
			if (sync_bundle_import(db, &set, bundle->data, bundle->len, &res, &err) == 0 ||
			    strstr(err, "already imported (a replay)") != NULL)
				ret = 0;
			else
				cli_error("merge failed: %s", err);
			sync_bundle_import_result_free(&res);
			stor_close(&db);
		}
		free(err);
		free(dir);
		break;
	}
	case CLI_ADMIN_NO:
		/* The very same bundle (same digest) was merged already: an
		 * earlier run sent it and was stopped before it heard the
		 * answer, or made the same batch in the same second. */
		if (text != NULL && strstr(text, "already imported (a replay)") != NULL) {
			ret = 0;
			im->through_node = true;
			break;
		}
		cli_error("merge failed: %s", text);
		break;
	default:
		cli_error("merge failed: %s", text);
		break;
	}
	free(text);
	buf_free(&state);
	return ret;
}

static void msg_guid(const struct im_mailbox *mb, const struct im_msg *m, struct guid *g_r)
{
	const char *id = m->gfield != NULL ? m->gfield : m->base;
	derive("starling maildir message", mb->guid.b, GUID_SIZE, id, strlen(id), m->uid, g_r);
}

static int append_one(struct importer *im, struct stor_db *db, const struct im_mailbox *mb,
		      const struct im_msg *m, const struct buf *text, int64_t mtime,
		      const char *what)
{
	struct guid g;
	const char *e;
	msg_guid(mb, m, &g);
	const char *kws[STOR_MAX_KEYWORDS];
	size_t nkw = 0;
	for (int k = 0; k < 26; k++) {
		if ((m->kwbits & (1u << k)) && mb->keywords[k] != NULL && nkw < STOR_MAX_KEYWORDS)
			kws[nkw++] = mb->keywords[k];
	}
	for (size_t k = 0; k < m->nkw && nkw < STOR_MAX_KEYWORDS; k++)
		kws[nkw++] = m->kws[k];
	struct stor_append ap = {
		.uid = m->uid, .guid = &g, .flags = m->flags, .keywords = kws,
		.keyword_count = nkw, .internaldate = m->have_date ? m->date : mtime,
		.internaldate_tz = m->have_date ? m->tz : 0,
		.text = text->data != NULL ? (const void *)text->data : "",
		.text_len = text->len,
	};
	if (stor_msg_append(db, &mb->guid, &ap, NULL, NULL, &e) < 0) {
		cli_error("%s: %s", what, e);
		return -1;
	}
	im->bytes += text->len;
	return 0;
}

/* Imports msgs [from, to) of mb (to == from: only the mailbox itself). */
static int import_batch(struct importer *im, struct im_mailbox *mb, const bool *skip,
			size_t from, size_t to)
{
	char *tmpl = xasprintf("%s/import-XXXXXX", im->cfg->data_dir);
	if (mkdtemp(tmpl) == NULL) {
		cli_error("%s: %s", tmpl, strerror(errno));
		free(tmpl);
		return -1;
	}
	struct stor_settings sset = { .dir = tmpl, .max_message_size = im->cfg->max_message_size };
	struct stor_db *db = NULL;
	char *err = NULL;
	const char *e = NULL;
	int ret = 0;
	if (stor_open(&sset, &db, &err) < 0) {
		cli_error("%s", err);
		free(err);
		rm_tree(tmpl);
		free(tmpl);
		return -1;
	}
	struct stor_mailbox_create req = { .user = im->user, .name = mb->name, .guid = &mb->guid,
					   .uidvalidity = mb->uidvalidity };
	if (stor_mailbox_create(db, &req, NULL, &e) < 0) {
		cli_error("mailbox '%s': %s", mb->name, e);
		ret = -1;
	}
	for (size_t i = 0; ret == 0 && !im->subs_sent && i < im->nsubs; i++) {
		if (stor_subscribe(db, im->user, im->subs[i], true, &e) < 0) {
			cli_error("subscription '%s': %s", im->subs[i], e);
			ret = -1;
		}
	}
	struct buf raw = BUF_INIT, text = BUF_INIT;
	for (size_t i = from; ret == 0 && i < to; i++) {
		const struct im_msg *m = &mb->msgs[i];
		if (skip[i])
			continue;
		struct stat st;
		memset(&st, 0, sizeof(st));
		if (m->file == NULL) {
			if (m->text.len > im->cfg->max_message_size) {
				cli_error("mailbox '%s' UID %u: %zu bytes, above max_message_size "
					  "(%llu)", mb->name, m->uid, m->text.len,
					  (unsigned long long)im->cfg->max_message_size);
				ret = -1;
				break;
			}
			/* As the server sent it: an IMAP text is CRLF already. */
			ret = append_one(im, db, mb, m, &m->text, 0, mb->name);
			continue;
		}
		char *fpath = xasprintf("%s/%s/%s", mb->path, m->dir, m->file);
		buf_reset(&raw);
		int fd = open(fpath, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0 || fstat(fd, &st) < 0) {
			cli_error("%s: %s", fpath, strerror(errno));
			ret = -1;
		} else if (!S_ISREG(st.st_mode)) {
			cli_error("%s: not a regular file", fpath);
			ret = -1;
		} else if ((uint64_t)st.st_size > im->cfg->max_message_size) {
			cli_error("%s: %lld bytes, above max_message_size (%llu): raise it in the "
				  "config of every node, or move the message away, and import again",
				  fpath, (long long)st.st_size,
				  (unsigned long long)im->cfg->max_message_size);
			ret = -1;
		}
		/* The descriptor checked is the one read: a second open would
		 * follow a link put in place meanwhile. */
		if (ret == 0 && file_read_fd(fd, fpath, im->cfg->max_message_size, &raw, &err) < 0) {
			cli_error("%s", err);
			free(err);
			err = NULL;
			ret = -1;
		}
		if (fd >= 0)
			close(fd);
		if (ret == 0) {
			to_crlf(&raw, &text);
			if (text.len > im->cfg->max_message_size) {
				cli_error("%s: %zu bytes with CRLF line ends, above max_message_size "
					  "(%llu)", fpath, text.len,
					  (unsigned long long)im->cfg->max_message_size);
				ret = -1;
			}
		}
		if (ret == 0)
			ret = append_one(im, db, mb, m, &text, (int64_t)st.st_mtime, fpath);
		free(fpath);
	}
	buf_free(&raw);
	buf_free(&text);
	if (ret == 0 && stor_mailbox_raise(db, &mb->guid, mb->nextuid, IMPORT_MIN_MODSEQ, &e) < 0) {
		cli_error("mailbox '%s': %s", mb->name, e);
		ret = -1;
	}
	struct buf bundle = BUF_INIT;
	if (ret == 0) {
		struct sync_bundle_export_settings xs = {
			.user = im->user, .source_sid = IMPORT_SOURCE_SID,
			.key = { im->secret, im->secret_len, false },
		};
		struct sync_bundle_export_report rep;
		if (sync_bundle_export(db, &xs, &bundle, &rep, &err) < 0) {
			cli_error("making the bundle: %s", err);
			free(err);
			ret = -1;
		}
	}
	stor_close(&db);
	rm_tree(tmpl);
	free(tmpl);
	if (ret == 0)
		ret = merge_bundle(im, &bundle);
	buf_free(&bundle);
	if (ret == 0)
		im->subs_sent = true;
	return ret;
}

/* A bundle merge changes the node's store without going through the
 * replication stream, so the peers are brought up to date by a resync
 * with every up peer, as `starling resync` does. */
static void resync_peers(struct importer *im)
{
	if (!im->through_node || im->cfg->peers.count == 0)
		return;
	const char *tokens[] = { "RESYNC", im->user, "0" };
	char *text = NULL;
	if (cli_admin_request(im->cfg, tokens, 3, NULL, 0, NULL, &text, IMPORT_WAIT_MS) !=
	    CLI_ADMIN_OK)
		fprintf(stderr, "import: warning: the peers are not up to date yet (%s); the "
			"node's periodic check or `starling resync -u %s` will bring them\n",
			text != NULL ? text : "no answer", im->user);
	free(text);
}

static int import_mailbox(struct importer *im, struct im_mailbox *mb, const struct existing *ex,
			  size_t batch)
{
	bool *skip = xcalloc(mb->count + 1, sizeof(bool));
	const char *line = dump_find(ex, "mailbox ", mb->name, " guid=");
	bool exists = line != NULL;
	bool need_mailbox = !exists || field_u32(line, " uidnext=") < mb->nextuid;
	size_t todo = 0;
	if (exists) {
		char hex[GUID_HEX_SIZE];
		for (size_t i = 0; i < mb->count; i++) {
			struct guid g;
			const struct im_msg *m = &mb->msgs[i];
			msg_guid(mb, m, &g);
			guid_to_hex(&g, hex);
			char *key = xasprintf("%s uid=%u guid=%s ", mb->name, m->uid, hex);
			skip[i] = existing_has_msg(ex, key);
			free(key);
		}
	}
	for (size_t i = 0; i < mb->count; i++)
		todo += !skip[i];
	im->skipped += mb->count - todo;
	int ret = 0;
	size_t from = 0;
	if (todo == 0 && (need_mailbox || !im->subs_sent)) {
		ret = import_batch(im, mb, skip, 0, 0);
		if (ret == 0)
			resync_peers(im);
	}
	while (ret == 0 && todo > 0 && from < mb->count) {
		size_t to = from, n = 0;
		uint64_t bytes = 0;
		while (to < mb->count && n < batch && bytes < BATCH_MAX_BYTES) {
			if (!skip[to]) {
				bytes += mb->msgs[to].size;
				n++;
			}
			to++;
		}
		if (n > 0 && im->fetch != NULL)
			ret = im->fetch(im, mb, skip, from, to);
		if (ret == 0 && (n > 0 || need_mailbox))
			ret = import_batch(im, mb, skip, from, to);
		for (size_t i = from; i < to; i++)
			buf_free(&mb->msgs[i].text);
		need_mailbox = false;
		if (ret == 0)
			resync_peers(im);
		if (ret < 0)
			break;
		im->done += n;
		from = to;
		double t = elapsed(im);
		fprintf(stderr, "import: %s: %zu/%zu messages (%zu already there), %.1f MiB, "
			"%.0f msg/s\n", mb->name, im->done + im->skipped, im->total, im->skipped,
			(double)im->bytes / (1024.0 * 1024.0), t > 0 ? (double)im->done / t : 0.0);
	}
	free(skip);
	return ret;
}

/* ---- The Maildir++ tree ---- */

static int add_mailbox(struct im_mailbox **mbs, size_t *n, const char *name, const char *path)
{
	*mbs = xreallocarray(*mbs, (*n + 1), sizeof(**mbs));
	struct im_mailbox *mb = &(*mbs)[(*n)++];
	memset(mb, 0, sizeof(*mb));
	mb->name = xstrdup(name);
	mb->path = xstrdup(path);
	return 0;
}

/* ".A.B" -> "A/B" (the names stay in modified UTF-7, as Starling stores
 * them); NULL for names Starling cannot hold. */
static char *folder_name(const char *entry)
{
	size_t len = strlen(entry);
	if (len < 2 || len > MAILBOX_NAME_MAX + 1 || entry[1] == '.' || entry[len - 1] == '.' ||
	    strstr(entry, "..") != NULL)
		return NULL;
	char *name = xstrdup(entry + 1);
	for (char *p = name; *p != '\0'; p++) {
		if (*p == '.')
			*p = '/';
		else if (*p == '/' || (unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
			goto bad;
	}
	if (strcasecmp(name, "INBOX") == 0)
		goto bad;
	return name;
bad:
	free(name);
	return NULL;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(((const struct im_mailbox *)a)->name, ((const struct im_mailbox *)b)->name);
}

static int read_subscriptions(const char *root, struct importer *im)
{
	char *path = xasprintf("%s/subscriptions", root);
	struct buf b = BUF_INIT;
	char *err = NULL;
	int ret = 0;
	if (access(path, F_OK) == 0) {
		if (file_read(path, SMALL_FILE_MAX, &b, &err) < 0) {
			cli_error("%s", err);
			free(err);
			ret = -1;
		}
		buf_append_byte(&b, '\0');
		char *next;
		unsigned line = 0;
		for (char *l = (char *)b.data; ret == 0 && l != NULL && *l != '\0'; l = next) {
			char *nl = strchr(l, '\n');
			next = nl != NULL ? nl + 1 : NULL;
			if (nl != NULL)
				*nl = '\0';
			line++;
			/* Version 2 files start with "V\t2" and a blank line;
			 * hierarchy levels are separated by a tab there. */
			if (line == 1 && strncmp(l, "V\t", 2) == 0)
				continue;
			size_t len = strlen(l);
			if (len > 0 && l[len - 1] == '\r')
				l[--len] = '\0';
			if (len == 0)
				continue;
			if (len > MAILBOX_NAME_MAX) {
				cli_error("%s:%u: name too long", path, line);
				ret = -1;
				break;
			}
			for (char *p = l; *p != '\0'; p++) {
				if (*p == '\t' || *p == '.')
					*p = '/';
			}
			im->subs = xreallocarray(im->subs, (im->nsubs + 1), sizeof(char *));
			im->subs[im->nsubs++] = xstrdup(l);
		}
	}
	free(path);
	buf_free(&b);
	return ret;
}

/* The common part of every source: checks the user's mailboxes, then
 * imports mailbox after mailbox.  Returns the exit status. */
static int run_import(struct importer *im, struct im_mailbox *mbs, size_t nmbs,
		      const char *source, size_t batch)
{
	const struct config *cfg = im->cfg;
	const char *user = im->user;
	int ret = 0;
	struct existing ex = { BUF_INIT, NULL, 0 };
	if (ret == 0 && load_existing(cfg, user, &ex) < 0)
		ret = 1;
	/* Subscriptions the user has already need no bundle (a run with
	 * nothing left to do sends none). */
	bool subs_missing = false;
	for (size_t i = 0; ret == 0 && i < im->nsubs && !subs_missing; i++) {
		char *l = xasprintf("\nsubscribed %s\n", im->subs[i]);
		subs_missing = ex.dump.len == 0 ||
			       (memmem(ex.dump.data, ex.dump.len, l, strlen(l)) == NULL &&
				strncmp((const char *)ex.dump.data, l + 1, strlen(l + 1)) != 0);
		free(l);
	}
	if (!subs_missing)
		im->subs_sent = true;
	/* A mailbox the user has with another UIDVALIDITY cannot keep
	 * the source's UIDs; refuse before anything is merged. */
	for (size_t i = 0; ret == 0 && i < nmbs; i++) {
		const char *line = dump_find(&ex, "mailbox ", mbs[i].name, " guid=");
		if (line == NULL)
			continue;
		uint32_t v = field_u32(line, " uidvalidity=");
		if (v != mbs[i].uidvalidity) {
			cli_error("mailbox '%s' of %s exists here with UIDVALIDITY %u, the source's is "
				  "%u: its UIDs cannot be kept.  Import before the user logs in or "
				  "gets mail here, or delete (or rename) the mailbox here first; "
				  "nothing was imported", mbs[i].name, user, v, mbs[i].uidvalidity);
			ret = 1;
		}
		char hex[GUID_HEX_SIZE];
		const char *g = strstr(line, "guid=");
		if (ret == 0 && g != NULL && (size_t)(strcspn(g + 5, " \n")) == 32) {
			memcpy(hex, g + 5, 32);
			hex[32] = '\0';
			/* Merge into that very mailbox. */
			(void)guid_from_hex(hex, &mbs[i].guid);
		}
	}
	if (ret == 0)
		fprintf(stderr, "import: %s: %zu mailboxes, %zu messages\n", source, nmbs, im->total);
	for (size_t i = 0; ret == 0 && i < nmbs; i++) {
		if (import_mailbox(im, &mbs[i], &ex, batch) < 0)
			ret = 1;
	}
	if (ret == 0) {
		double t = elapsed(im);
		printf("imported %s into %s: %zu mailboxes, %zu messages (%zu were there "
		       "already), %.1f MiB in %.1f s\n", source, user, nmbs, im->done, im->skipped,
		       (double)im->bytes / (1024.0 * 1024.0), t);
	}
	buf_free(&ex.dump);
	free(ex.msgs);
	return ret;
}

static int cmd_maildir(const struct config *cfg, int argc, char **argv)
{
	const char *user = NULL, *root = NULL;
	size_t batch = 1000;
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "-u") == 0 && i + 1 < argc) {
			user = argv[++i];
		} else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) {
			uint32_t v;
			if (parse_u32(argv[i + 1], strlen(argv[i + 1]), &v) < 0 || v == 0 ||
			    v > 1000000) {
				cli_error("--batch: a number from 1 to 1000000");
				return 2;
			}
			batch = v;
			i++;
		} else if (argv[i][0] != '-' && root == NULL) {
			root = argv[i];
		} else {
			user = NULL;
			break;
		}
	}
	if (user == NULL || root == NULL) {
		cli_error("%s", import_usage);
		return 2;
	}
	if (!passwd_user_name_valid(user)) {
		cli_error("invalid user name '%s'", user);
		return 1;
	}
	struct stat st;
	if (stat(root, &st) < 0 || !S_ISDIR(st.st_mode)) {
		cli_error("%s: not a Maildir directory", root);
		return 1;
	}
	struct importer im = { .cfg = cfg, .user = user };
	clock_gettime(CLOCK_MONOTONIC, &im.start);
	char *err = NULL;
	if (cfg->cluster_secret_file == NULL) {
		cli_error("an import is merged as a change bundle, signed with the cluster "
			  "secret: cluster_secret_file is not configured");
		return 1;
	}
	if (file_read_secret("cluster_secret_file", cfg->cluster_secret_file, CONFIG_SECRET_MIN,
			     CONFIG_SECRET_MAX, &im.secret, &im.secret_len, &err) < 0) {
		cli_error("%s", err);
		free(err);
		return 1;
	}
	struct im_mailbox *mbs = NULL;
	size_t nmbs = 0;
	int ret = 0;
	add_mailbox(&mbs, &nmbs, "INBOX", root);
	DIR *dir = opendir(root);
	if (dir == NULL) {
		cli_error("%s: %s", root, strerror(errno));
		ret = 1;
	}
	struct dirent *de;
	while (dir != NULL && (de = readdir(dir)) != NULL) {
		if (de->d_name[0] != '.' || strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		char *path = xasprintf("%s/%s", root, de->d_name);
		char *cur = xasprintf("%s/cur", path);
		if (stat(cur, &st) == 0 && S_ISDIR(st.st_mode)) {
			char *name = folder_name(de->d_name);
			if (name == NULL) {
				cli_error("%s: a folder name Starling cannot hold; rename it in "
					  "Dovecot first", path);
				ret = 1;
			} else {
				add_mailbox(&mbs, &nmbs, name, path);
			}
			free(name);
		}
		free(cur);
		free(path);
	}
	if (dir != NULL)
		closedir(dir);
	if (nmbs > 1)
		qsort(mbs + 1, nmbs - 1, sizeof(*mbs), name_cmp);
	if (ret == 0 && read_subscriptions(root, &im) < 0)
		ret = 1;
	for (size_t i = 0; ret == 0 && i < nmbs; i++) {
		if (read_uidlist(&mbs[i], user, &err) < 0 || read_keywords(&mbs[i], &err) < 0 ||
		    scan_files(&mbs[i], cfg->max_message_size, &err) < 0) {
			cli_error("%s", err);
			free(err);
			ret = 1;
		}
		im.total += mbs[i].count;
	}
	if (ret == 0)
		ret = run_import(&im, mbs, nmbs, root, batch);
	for (size_t i = 0; i < nmbs; i++)
		mailbox_free(&mbs[i]);
	free(mbs);
	for (size_t i = 0; i < im.nsubs; i++)
		free(im.subs[i]);
	free(im.subs);
	free(im.secret);
	return ret;
}

/* ---- From an IMAP server ---- */

/* A line of a response (without its literals) and a response as a whole
 * are bounded, so a hostile server cannot make the tool grow without end. */
#define IMC_LINE_MAX (1024u * 1024)
#define IMC_TIMEOUT_S 120

struct imc {
	int fd;
	const char *host;
	struct buf in;
	unsigned tag;
	uint64_t max_literal;
	char *selected;        /* the mailbox EXAMINEd, or NULL */
	uint32_t selected_uidvalidity;
};

/* Reads one whole response (its literals inline) into out.  0, or -1 with
 * a message printed. */
static int imc_fill(struct imc *c)
{
	unsigned char *p = buf_reserve(&c->in, 65536);
	ssize_t n = read(c->fd, p, 65536);
	if (n <= 0) {
		cli_error("%s: %s", c->host, n == 0 ? "the server closed the connection" :
			  errno == EAGAIN || errno == EWOULDBLOCK ? "the server did not answer "
			  "in time" : strerror(errno));
		return -1;
	}
	buf_commit(&c->in, (size_t)n);
	return 0;
}

static int imc_read(struct imc *c, struct buf *out)
{
	buf_reset(out);
	size_t line_bytes = 0;
	for (;;) {
		const unsigned char *start = buf_rptr(&c->in);
		const unsigned char *nl = buf_avail(&c->in) == 0 ? NULL :
					  memchr(start, '\n', buf_avail(&c->in));
		if (nl == NULL) {
			if (buf_avail(&c->in) + line_bytes > IMC_LINE_MAX) {
				cli_error("%s: a response line longer than %u bytes", c->host,
					  IMC_LINE_MAX);
				return -1;
			}
			buf_compact(&c->in);
			if (imc_fill(c) < 0)
				return -1;
			continue;
		}
		size_t len = (size_t)(nl - start) + 1;
		line_bytes += len;
		if (line_bytes > IMC_LINE_MAX) {
			cli_error("%s: a response longer than %u bytes besides its literals", c->host,
				  IMC_LINE_MAX);
			return -1;
		}
		buf_append(out, start, len);
		buf_consume(&c->in, len);
		/* A literal announced at the end of the line: "{n}\r\n". */
		size_t ol = out->len;
		const char *o = (const char *)out->data;
		if (ol >= 4 && o[ol - 2] == '\r' && o[ol - 3] == '}') {
			size_t k = ol - 4;
			uint64_t v = 0, mul = 1;
			bool digits = false;
			while (k > 0 && o[k] >= '0' && o[k] <= '9' && mul <= 1000000000000ull) {
				v += (uint64_t)(o[k] - '0') * mul;
				mul *= 10;
				digits = true;
				k--;
			}
			if (digits && o[k] == '{') {
				if (v > c->max_literal) {
					cli_error("%s: a literal of %llu bytes, above max_message_size",
						  c->host, (unsigned long long)v);
					return -1;
				}
				while (buf_avail(&c->in) < v) {
					buf_compact(&c->in);
					if (imc_fill(c) < 0)
						return -1;
				}
				buf_append(out, buf_rptr(&c->in), (size_t)v);
				buf_consume(&c->in, (size_t)v);
				continue;
			}
		}
		buf_append_byte(out, '\0');
		out->len--;
		return 0;
	}
}

static int imc_send(struct imc *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int imc_send(struct imc *c, const char *fmt, ...)
{
	struct buf b = BUF_INIT;
	va_list ap;
	va_start(ap, fmt);
	buf_appendf(&b, "s%u ", ++c->tag);
	buf_vappendf(&b, fmt, ap);
	va_end(ap);
	buf_append(&b, "\r\n", 2);
	size_t off = 0;
	while (off < b.len) {
		ssize_t n = write(c->fd, b.data + off, b.len - off);
		if (n <= 0) {
			cli_error("%s: %s", c->host, n == 0 ? "write failed" : strerror(errno));
			buf_free(&b);
			return -1;
		}
		off += (size_t)n;
	}
	buf_free(&b);
	return 0;
}

/* Whether resp is the tagged answer to the last command: 1 OK, 0 not
 * tagged, -1 NO/BAD (printed). */
static int imc_tagged(struct imc *c, const struct buf *resp, const char *what)
{
	char tag[32];
	int n = snprintf(tag, sizeof(tag), "s%u ", c->tag);
	if (resp->len < (size_t)n || memcmp(resp->data, tag, (size_t)n) != 0)
		return 0;
	const char *rest = (const char *)resp->data + n;
	if (strncasecmp(rest, "OK", 2) == 0)
		return 1;
	size_t l = strcspn(rest, "\r\n");
	cli_error("%s: %s: %.*s", c->host, what, (int)(l > 200 ? 200 : l), rest);
	return -1;
}

/* Token reader over one response. */
struct imt {
	const unsigned char *p, *end;
};
enum imt_kind { IMT_END, IMT_ERR, IMT_ATOM, IMT_STRING, IMT_NIL, IMT_LPAREN, IMT_RPAREN };

static enum imt_kind imt_next(struct imt *t, struct buf *val)
{
	buf_reset(val);
	while (t->p < t->end && *t->p == ' ')
		t->p++;
	if (t->p >= t->end || *t->p == '\r' || *t->p == '\n')
		return IMT_END;
	unsigned char ch = *t->p;
	if (ch == '(') {
		t->p++;
		return IMT_LPAREN;
	}
	if (ch == ')') {
		t->p++;
		return IMT_RPAREN;
	}
	if (ch == '"') {
		t->p++;
		while (t->p < t->end && *t->p != '"') {
			if (*t->p == '\\' && t->p + 1 < t->end)
				t->p++;
			if (*t->p == '\r' || *t->p == '\n')
				return IMT_ERR;
			buf_append_byte(val, *t->p++);
		}
		if (t->p >= t->end)
			return IMT_ERR;
		t->p++;
		buf_append_byte(val, '\0');
		val->len--;
		return IMT_STRING;
	}
	if (ch == '{') {
		const unsigned char *q = t->p + 1;
		uint64_t v = 0;
		while (q < t->end && *q >= '0' && *q <= '9' && v < (1ull << 40))
			v = v * 10 + (uint64_t)(*q++ - '0');
		if (q < t->end && *q == '+')
			q++;
		if (q + 3 > t->end || q[0] != '}' || q[1] != '\r' || q[2] != '\n' ||
		    v > (uint64_t)(t->end - (q + 3)))
			return IMT_ERR;
		buf_append(val, q + 3, (size_t)v);
		t->p = q + 3 + v;
		buf_append_byte(val, '\0');
		val->len--;
		return IMT_STRING;
	}
	/* An atom, with the brackets of BODY[] and [UIDVALIDITY n]. */
	int depth = 0;
	while (t->p < t->end) {
		ch = *t->p;
		if (ch == '[')
			depth++;
		else if (ch == ']')
			depth--;
		else if (depth <= 0 && (ch == ' ' || ch == '(' || ch == ')' || ch == '\r' ||
					ch == '\n'))
			break;
		else if (ch == '\r' || ch == '\n' || ch == '"' || ch == '{')
			break;
		buf_append_byte(val, ch);
		t->p++;
	}
	buf_append_byte(val, '\0');
	val->len--;
	if (val->len == 0)
		return IMT_ERR;
	return strcasecmp((const char *)val->data, "NIL") == 0 ? IMT_NIL : IMT_ATOM;
}

/* Skips one value (after its first token k). */
static int imt_skip(struct imt *t, enum imt_kind k, struct buf *tmp)
{
	if (k == IMT_LPAREN) {
		for (int depth = 1, guard = 0; depth > 0; guard++) {
			if (guard > 100000)
				return -1;
			k = imt_next(t, tmp);
			if (k == IMT_END || k == IMT_ERR)
				return -1;
			depth += k == IMT_LPAREN ? 1 : k == IMT_RPAREN ? -1 : 0;
		}
		return 0;
	}
	return k == IMT_ATOM || k == IMT_STRING || k == IMT_NIL ? 0 : -1;
}

static int parse_u32_str(const struct buf *v, uint32_t *r)
{
	return parse_u32((const char *)v->data, v->len, r);
}

/* "dd-Mon-yyyy hh:mm:ss +zzzz". */
static int parse_idate(const char *s, int64_t *t_r, int32_t *tz_r)
{
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	char mon[4];
	int d, y, hh, mm, ss, consumed = 0;
	char sign;
	int zone;
	if (*s == ' ')
		s++;
	if (sscanf(s, "%2d-%3c-%4d %2d:%2d:%2d %c%4d%n", &d, mon, &y, &hh, &mm, &ss, &sign,
		   &zone, &consumed) != 8 || s[consumed] != '\0' || (sign != '+' && sign != '-'))
		return -1;
	mon[3] = '\0';
	const char *m = strstr(months, mon);
	if (m == NULL || (m - months) % 3 != 0 || d < 1 || d > 31 || y < 1900 || y > 9999 ||
	    hh > 23 || mm > 59 || ss > 60 || zone > 2359 || zone % 100 > 59)
		return -1;
	tm.tm_mday = d;
	tm.tm_mon = (int)((m - months) / 3);
	tm.tm_year = y - 1900;
	tm.tm_hour = hh;
	tm.tm_min = mm;
	tm.tm_sec = ss;
	int32_t tz = (zone / 100) * 60 + zone % 100;
	if (sign == '-')
		tz = -tz;
	*t_r = (int64_t)timegm(&tm) - (int64_t)tz * 60;
	*tz_r = tz;
	return 0;
}

static void add_keyword(struct im_msg *m, const char *kw)
{
	if (m->nkw >= STOR_MAX_KEYWORDS || strlen(kw) > 128)
		return;
	for (const char *p = kw; *p != '\0'; p++) {
		if (!is_atom_char((unsigned char)*p))
			return;
	}
	m->kws = xreallocarray(m->kws, m->nkw + 1, sizeof(char *));
	m->kws[m->nkw++] = xstrdup(kw);
}

/* One "* n FETCH (...)" into the fields it names.  uid_r gets its UID (0
 * when none); with m NULL only the UID is read; text_r (may be NULL) gets
 * BODY[]. */
static int parse_fetch(const struct buf *resp, uint32_t *uid_r, struct im_msg *m,
		       struct buf *text_r, bool *have_text_r)
{
	struct imt t = { resp->data, resp->data + resp->len };
	struct buf v = BUF_INIT, tmp = BUF_INIT;
	int ret = -1;
	*uid_r = 0;
	if (have_text_r != NULL)
		*have_text_r = false;
	if (imt_next(&t, &v) != IMT_ATOM || strcmp((char *)v.data, "*") != 0 ||
	    imt_next(&t, &v) != IMT_ATOM || imt_next(&t, &v) != IMT_ATOM ||
	    strcasecmp((char *)v.data, "FETCH") != 0 || imt_next(&t, &v) != IMT_LPAREN)
		goto out;
	for (int guard = 0; guard < 64; guard++) {
		enum imt_kind k = imt_next(&t, &v);
		if (k == IMT_RPAREN) {
			ret = 0;
			break;
		}
		if (k != IMT_ATOM)
			goto out;
		char name[64];
		snprintf(name, sizeof(name), "%s", (char *)v.data);
		k = imt_next(&t, &v);
		if (strcasecmp(name, "UID") == 0) {
			if (k != IMT_ATOM || parse_u32_str(&v, uid_r) < 0 || *uid_r == 0 ||
			    *uid_r > MAIL_UID_MAX)
				goto out;
		} else if (strcasecmp(name, "FLAGS") == 0 && m != NULL) {
			if (k != IMT_LPAREN)
				goto out;
			for (int g2 = 0;; g2++) {
				k = imt_next(&t, &v);
				if (k == IMT_RPAREN)
					break;
				if (k != IMT_ATOM || g2 > 1000)
					goto out;
				const char *f = (const char *)v.data;
				if (strcasecmp(f, "\\Seen") == 0)
					m->flags |= STOR_FLAG_SEEN;
				else if (strcasecmp(f, "\\Answered") == 0)
					m->flags |= STOR_FLAG_ANSWERED;
				else if (strcasecmp(f, "\\Flagged") == 0)
					m->flags |= STOR_FLAG_FLAGGED;
				else if (strcasecmp(f, "\\Deleted") == 0)
					m->flags |= STOR_FLAG_DELETED;
				else if (strcasecmp(f, "\\Draft") == 0)
					m->flags |= STOR_FLAG_DRAFT;
				else if (f[0] != '\\')
					add_keyword(m, f);
			}
		} else if (strcasecmp(name, "INTERNALDATE") == 0 && m != NULL) {
			if (k != IMT_STRING ||
			    parse_idate((const char *)v.data, &m->date, &m->tz) < 0)
				goto out;
			m->have_date = true;
		} else if (strcasecmp(name, "RFC822.SIZE") == 0 && m != NULL) {
			uint32_t sz;
			if (k != IMT_ATOM || parse_u32_str(&v, &sz) < 0)
				goto out;
			m->size = sz;
		} else if (strcasecmp(name, "BODY[]") == 0 && text_r != NULL) {
			if (k != IMT_STRING)
				goto out;
			buf_reset(text_r);
			buf_append(text_r, v.data != NULL ? (const void *)v.data : "", v.len);
			*have_text_r = true;
		} else if (imt_skip(&t, k, &tmp) < 0) {
			goto out;
		}
	}
out:
	buf_free(&v);
	buf_free(&tmp);
	return ret;
}

static int imc_examine(struct imc *c, struct im_mailbox *mb, const char *remote,
		       uint32_t *exists_r, uint32_t *uidnext_r)
{
	struct buf resp = BUF_INIT;
	struct buf q = BUF_INIT;
	buf_append_quoted(&q, remote, strlen(remote));
	int ret = imc_send(c, "EXAMINE %.*s", (int)q.len, (const char *)q.data);
	uint32_t uv = 0, un = 0, ex = 0;
	while (ret == 0) {
		if (imc_read(c, &resp) < 0) {
			ret = -1;
			break;
		}
		int r = imc_tagged(c, &resp, "EXAMINE");
		if (r != 0) {
			ret = r < 0 ? -1 : 0;
			break;
		}
		const char *l = (const char *)resp.data;
		const char *x;
		if ((x = strstr(l, "[UIDVALIDITY ")) != NULL)
			uv = (uint32_t)strtoul(x + 13, NULL, 10);
		if ((x = strstr(l, "[UIDNEXT ")) != NULL)
			un = (uint32_t)strtoul(x + 9, NULL, 10);
		if (strncmp(l, "* ", 2) == 0 && (x = strstr(l, " EXISTS")) != NULL)
			ex = (uint32_t)strtoul(l + 2, NULL, 10);
	}
	buf_free(&resp);
	buf_free(&q);
	if (ret == 0 && uv == 0) {
		cli_error("%s: mailbox '%s' has no UIDVALIDITY", c->host, remote);
		ret = -1;
	}
	if (ret == 0 && mb->uidvalidity != 0 && uv != mb->uidvalidity) {
		cli_error("%s: the UIDVALIDITY of '%s' changed during the import: run it again",
			  c->host, remote);
		ret = -1;
	}
	if (ret == 0) {
		mb->uidvalidity = uv;
		free(c->selected);
		c->selected = xstrdup(remote);
		if (exists_r != NULL)
			*exists_r = ex;
		if (uidnext_r != NULL)
			*uidnext_r = un > MAIL_UIDNEXT_MAX ? MAIL_UIDNEXT_MAX : un;
	}
	return ret;
}

static int uid_cmp_key(const void *key, const void *elem)
{
	uint32_t k = *(const uint32_t *)key, u = ((const struct im_msg *)elem)->uid;
	return k < u ? -1 : k > u;
}

/* Reads a mailbox's messages (no texts yet). */
static int imc_scan(struct imc *c, struct im_mailbox *mb)
{
	uint32_t exists = 0, uidnext = 0;
	if (imc_examine(c, mb, mb->path, &exists, &uidnext) < 0)
		return -1;
	mb->nextuid = uidnext > 0 ? uidnext : 1;
	if (exists == 0)
		return 0;
	if (imc_send(c, "UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE)") < 0)
		return -1;
	struct buf resp = BUF_INIT;
	int ret = 0;
	for (;;) {
		if (imc_read(c, &resp) < 0) {
			ret = -1;
			break;
		}
		int r = imc_tagged(c, &resp, "UID FETCH");
		if (r != 0) {
			ret = r < 0 ? -1 : 0;
			break;
		}
		if (strstr((const char *)resp.data, " FETCH ") == NULL)
			continue;
		struct im_msg tmp;
		memset(&tmp, 0, sizeof(tmp));
		uint32_t uid;
		if (parse_fetch(&resp, &uid, &tmp, NULL, NULL) < 0 || uid == 0 || !tmp.have_date) {
			cli_error("%s: mailbox '%s': a FETCH response without a valid UID, FLAGS "
				  "or INTERNALDATE", c->host, mb->path);
			for (size_t k = 0; k < tmp.nkw; k++)
				free(tmp.kws[k]);
			free(tmp.kws);
			ret = -1;
			break;
		}
		if (mb->count >= (size_t)exists + 100000) {
			cli_error("%s: mailbox '%s': more FETCH responses than messages", c->host,
				  mb->path);
			for (size_t k = 0; k < tmp.nkw; k++)
				free(tmp.kws[k]);
			free(tmp.kws);
			ret = -1;
			break;
		}
		tmp.uid = uid;
		tmp.base = xstrdup("imap");
		*msg_add(mb) = tmp;
	}
	buf_free(&resp);
	if (ret == 0 && mb->count > 0) {
		qsort(mb->msgs, mb->count, sizeof(*mb->msgs), msg_uid_cmp);
		/* One message per UID (a server may repeat one). */
		size_t w = 1;
		for (size_t i = 1; i < mb->count; i++) {
			if (mb->msgs[i].uid != mb->msgs[w - 1].uid) {
				mb->msgs[w++] = mb->msgs[i];
			} else {
				free(mb->msgs[i].base);
				for (size_t k = 0; k < mb->msgs[i].nkw; k++)
					free(mb->msgs[i].kws[k]);
				free(mb->msgs[i].kws);
			}
		}
		mb->count = w;
		if (mb->msgs[w - 1].uid >= mb->nextuid)
			mb->nextuid = mb->msgs[w - 1].uid + 1;
	}
	for (size_t i = 0; ret == 0 && i < mb->count; i++) {
		if (mb->msgs[i].size > c->max_literal) {
			cli_error("%s: mailbox '%s' UID %u: %llu bytes, above max_message_size (%llu)",
				  c->host, mb->path, mb->msgs[i].uid,
				  (unsigned long long)mb->msgs[i].size,
				  (unsigned long long)c->max_literal);
			ret = -1;
		}
	}
	return ret;
}

static int imc_fetch_texts(struct importer *im, struct im_mailbox *mb, const bool *skip,
			   size_t from, size_t to)
{
	struct imc *c = im->fetch_ctx;
	if ((c->selected == NULL || strcmp(c->selected, mb->path) != 0) &&
	    imc_examine(c, mb, mb->path, NULL, NULL) < 0)
		return -1;
	struct buf set = BUF_INIT, resp = BUF_INIT, text = BUF_INIT;
	for (size_t i = from; i < to; i++) {
		if (!skip[i])
			buf_appendf(&set, "%s%u", set.len > 0 ? "," : "", mb->msgs[i].uid);
	}
	int ret = imc_send(c, "UID FETCH %s (UID BODY.PEEK[])", (const char *)buf_cstr(&set));
	while (ret == 0) {
		if (imc_read(c, &resp) < 0) {
			ret = -1;
			break;
		}
		int r = imc_tagged(c, &resp, "UID FETCH");
		if (r != 0) {
			ret = r < 0 ? -1 : 0;
			break;
		}
		if (strstr((const char *)resp.data, " FETCH ") == NULL)
			continue;
		uint32_t uid;
		bool have = false;
		if (parse_fetch(&resp, &uid, NULL, &text, &have) < 0) {
			cli_error("%s: mailbox '%s': a malformed FETCH response", c->host, mb->path);
			ret = -1;
			break;
		}
		struct im_msg *m = uid == 0 || !have ? NULL :
			bsearch(&uid, mb->msgs + from, to - from, sizeof(*mb->msgs), uid_cmp_key);
		if (m != NULL) {
			buf_reset(&m->text);
			buf_append(&m->text, text.data != NULL ? (const void *)text.data : "",
				   text.len);
			m->have_text = true;
		}
	}
	for (size_t i = from; ret == 0 && i < to; i++) {
		if (!skip[i] && !mb->msgs[i].have_text) {
			cli_error("%s: mailbox '%s': UID %u was not sent (expunged meanwhile?): "
				  "run the import again", c->host, mb->path, mb->msgs[i].uid);
			ret = -1;
		}
	}
	buf_free(&set);
	buf_free(&resp);
	buf_free(&text);
	return ret;
}

static char *read_password(void)
{
	char line[1024];
	if (fgets(line, sizeof(line), stdin) == NULL)
		return NULL;
	line[strcspn(line, "\r\n")] = '\0';
	return line[0] == '\0' ? NULL : xstrdup(line);
}

static void quote_into(struct buf *b, const char *s)
{
	buf_append_quoted(b, s, strlen(s));
}

/* LIST or LSUB: the names, converted to Starling's '/' hierarchy. */
static int imc_list(struct imc *c, const char *cmd, struct im_mailbox **mbs, size_t *nmbs,
		    struct importer *im)
{
	if (imc_send(c, "%s \"\" \"*\"", cmd) < 0)
		return -1;
	struct buf resp = BUF_INIT, v = BUF_INIT;
	int ret = 0;
	for (;;) {
		if (imc_read(c, &resp) < 0) {
			ret = -1;
			break;
		}
		int r = imc_tagged(c, &resp, cmd);
		if (r != 0) {
			ret = r < 0 ? -1 : 0;
			break;
		}
		struct imt t = { resp.data, resp.data + resp.len };
		if (imt_next(&t, &v) != IMT_ATOM || strcmp((char *)v.data, "*") != 0 ||
		    imt_next(&t, &v) != IMT_ATOM || strcasecmp((char *)v.data, cmd) != 0)
			continue;
		bool noselect = false;
		if (imt_next(&t, &v) != IMT_LPAREN) {
			ret = -1;
		}
		for (int g = 0; ret == 0; g++) {
			enum imt_kind k = imt_next(&t, &v);
			if (k == IMT_RPAREN)
				break;
			if (k != IMT_ATOM || g > 100) {
				ret = -1;
				break;
			}
			if (strcasecmp((char *)v.data, "\\Noselect") == 0 ||
			    strcasecmp((char *)v.data, "\\NonExistent") == 0)
				noselect = true;
		}
		char delim = 0;
		enum imt_kind k = ret == 0 ? imt_next(&t, &v) : IMT_ERR;
		if (k == IMT_STRING && v.len == 1)
			delim = (char)v.data[0];
		else if (k != IMT_NIL)
			ret = -1;
		if (ret == 0 && (k = imt_next(&t, &v)) != IMT_STRING && k != IMT_ATOM)
			ret = -1;
		if (ret < 0) {
			cli_error("%s: a malformed %s response", c->host, cmd);
			break;
		}
		const char *remote = (const char *)v.data;
		if (v.len == 0 || v.len > MAILBOX_NAME_MAX || strlen(remote) != v.len) {
			cli_error("%s: a mailbox name Starling cannot hold", c->host);
			ret = -1;
			break;
		}
		char *name = xstrdup(remote);
		bool ok = true;
		for (char *p = name; *p != '\0'; p++) {
			if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
				ok = false;
			else if (delim != '/' && *p == '/')
				ok = false;
			else if (delim != 0 && *p == delim)
				*p = '/';
		}
		if (strncasecmp(name, "INBOX", 5) == 0 && (name[5] == '\0' || name[5] == '/'))
			memcpy(name, "INBOX", 5);
		if (ok && (name[0] == '/' || name[strlen(name) - 1] == '/' || strstr(name, "//")))
			ok = false;
		if (!ok) {
			cli_error("%s: mailbox '%s': a name Starling cannot hold (rename it on the "
				  "server first)", c->host, remote);
			free(name);
			ret = -1;
			break;
		}
		if (mbs != NULL && !noselect) {
			add_mailbox(mbs, nmbs, name, remote);
		} else if (mbs == NULL) {
			im->subs = xreallocarray(im->subs, im->nsubs + 1, sizeof(char *));
			im->subs[im->nsubs++] = xstrdup(name);
		}
		free(name);
		if (mbs != NULL && *nmbs > 100000) {
			cli_error("%s: more than 100000 mailboxes", c->host);
			ret = -1;
			break;
		}
	}
	buf_free(&resp);
	buf_free(&v);
	return ret;
}

static int imc_connect(const char *host, const char *port)
{
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	int r = getaddrinfo(host, port, &hints, &res);
	if (r != 0) {
		cli_error("%s: %s", host, gai_strerror(r));
		return -1;
	}
	int fd = -1;
	for (struct addrinfo *a = res; a != NULL && fd < 0; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
		if (fd < 0)
			continue;
		struct timeval tv = { .tv_sec = IMC_TIMEOUT_S };
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (connect(fd, a->ai_addr, a->ai_addrlen) < 0) {
			close(fd);
			fd = -1;
		}
	}
	freeaddrinfo(res);
	if (fd < 0)
		cli_error("%s port %s: cannot connect: %s", host, port, strerror(errno));
	return fd;
}

static int cmd_imap(const struct config *cfg, int argc, char **argv)
{
	const char *user = NULL, *host = NULL, *port = "143", *ruser = NULL;
	size_t batch = 1000;
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "-u") == 0 && i + 1 < argc) {
			user = argv[++i];
		} else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) {
			host = argv[++i];
		} else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
			port = argv[++i];
		} else if (strcmp(argv[i], "--user") == 0 && i + 1 < argc) {
			ruser = argv[++i];
		} else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) {
			uint32_t v;
			if (parse_u32(argv[i + 1], strlen(argv[i + 1]), &v) < 0 || v == 0 ||
			    v > 1000000) {
				cli_error("--batch: a number from 1 to 1000000");
				return 2;
			}
			batch = v;
			i++;
		} else {
			user = NULL;
			break;
		}
	}
	if (user == NULL || host == NULL || ruser == NULL) {
		cli_error("%s", import_usage);
		return 2;
	}
	if (!passwd_user_name_valid(user)) {
		cli_error("invalid user name '%s'", user);
		return 1;
	}
	if (strpbrk(ruser, "\r\n") != NULL) {
		cli_error("invalid --user");
		return 2;
	}
	char *password = read_password();
	if (password == NULL) {
		cli_error("no password on stdin");
		return 1;
	}
	struct importer im = { .cfg = cfg, .user = user };
	clock_gettime(CLOCK_MONOTONIC, &im.start);
	char *err = NULL;
	if (cfg->cluster_secret_file == NULL) {
		cli_error("an import is merged as a change bundle, signed with the cluster "
			  "secret: cluster_secret_file is not configured");
		free(password);
		return 1;
	}
	if (file_read_secret("cluster_secret_file", cfg->cluster_secret_file, CONFIG_SECRET_MIN,
			     CONFIG_SECRET_MAX, &im.secret, &im.secret_len, &err) < 0) {
		cli_error("%s", err);
		free(err);
		free(password);
		return 1;
	}
	struct imc c = { .fd = -1, .host = host, .max_literal = cfg->max_message_size };
	struct buf resp = BUF_INIT;
	struct im_mailbox *mbs = NULL;
	size_t nmbs = 0;
	int ret = 0;
	c.fd = imc_connect(host, port);
	if (c.fd < 0 || imc_read(&c, &resp) < 0) {
		ret = 1;
	} else if (strncmp((const char *)resp.data, "* OK", 4) != 0) {
		cli_error("%s: no IMAP greeting", host);
		ret = 1;
	}
	if (ret == 0) {
		struct buf login = BUF_INIT;
		quote_into(&login, ruser);
		buf_append_byte(&login, ' ');
		quote_into(&login, password);
		if (imc_send(&c, "LOGIN %s", buf_cstr(&login)) < 0)
			ret = 1;
		while (ret == 0) {
			if (imc_read(&c, &resp) < 0) {
				ret = 1;
				break;
			}
			int r = imc_tagged(&c, &resp, "LOGIN");
			if (r != 0) {
				ret = r < 0 ? 1 : 0;
				break;
			}
		}
		buf_free(&login);
	}
	memset(password, 0, strlen(password));
	free(password);
	if (ret == 0 && (imc_list(&c, "LIST", &mbs, &nmbs, &im) < 0 ||
			 imc_list(&c, "LSUB", NULL, NULL, &im) < 0))
		ret = 1;
	if (nmbs > 1)
		qsort(mbs, nmbs, sizeof(*mbs), name_cmp);
	for (size_t i = 0; ret == 0 && i < nmbs; i++) {
		if (i > 0 && strcmp(mbs[i].name, mbs[i - 1].name) == 0) {
			cli_error("%s: two mailboxes named '%s'", host, mbs[i].name);
			ret = 1;
			break;
		}
		if (imc_scan(&c, &mbs[i]) < 0) {
			ret = 1;
			break;
		}
		char *id = xasprintf("%s\n%s", host, mbs[i].name);
		derive("starling imap mailbox", user, strlen(user), id, strlen(id),
		       mbs[i].uidvalidity, &mbs[i].guid);
		free(id);
		im.total += mbs[i].count;
	}
	char *source = xasprintf("%s:%s", host, port);
	im.fetch = imc_fetch_texts;
	im.fetch_ctx = &c;
	if (ret == 0)
		ret = run_import(&im, mbs, nmbs, source, batch);
	if (c.fd >= 0) {
		/* After an error the stream may be anywhere in a response. */
		if (ret == 0 && imc_send(&c, "LOGOUT") == 0)
			(void)imc_read(&c, &resp);
		close(c.fd);
	}
	free(source);
	free(c.selected);
	buf_free(&c.in);
	buf_free(&resp);
	for (size_t i = 0; i < nmbs; i++)
		mailbox_free(&mbs[i]);
	free(mbs);
	for (size_t i = 0; i < im.nsubs; i++)
		free(im.subs[i]);
	free(im.subs);
	free(im.secret);
	return ret;
}

int cli_cmd_import(const struct config *cfg, int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "maildir") == 0)
		return cmd_maildir(cfg, argc, argv);
	if (argc >= 2 && strcmp(argv[1], "imap") == 0)
		return cmd_imap(cfg, argc, argv);
	cli_error("%s", import_usage);
	return 2;
}
