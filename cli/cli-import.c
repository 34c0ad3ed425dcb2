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
	"usage: starling -c FILE import maildir -u USER [--batch N] PATH";

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

static void rm_tree(const char *path);
static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(p) < 0 ? 0 : 0;
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
			if (sync_bundle_import(db, &set, bundle->data, bundle->len, &res, &err) < 0)
				cli_error("merge failed: %s", err);
			else
				ret = 0;
			sync_bundle_import_result_free(&res);
			stor_close(&db);
		}
		free(err);
		free(dir);
		break;
	}
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
		if (fd >= 0)
			close(fd);
		if (ret == 0 && file_read(fpath, im->cfg->max_message_size, &raw, &err) < 0) {
			cli_error("%s", err);
			free(err);
			err = NULL;
			ret = -1;
		}
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
	struct existing ex = { BUF_INIT, NULL, 0 };
	if (ret == 0 && load_existing(cfg, user, &ex) < 0)
		ret = 1;
	/* A mailbox the user has with another UIDVALIDITY cannot keep
	 * Dovecot's UIDs; refuse before anything is merged. */
	for (size_t i = 0; ret == 0 && i < nmbs; i++) {
		const char *line = dump_find(&ex, "mailbox ", mbs[i].name, " guid=");
		if (line == NULL)
			continue;
		uint32_t v = field_u32(line, " uidvalidity=");
		if (v != mbs[i].uidvalidity) {
			cli_error("mailbox '%s' of %s exists here with UIDVALIDITY %u, Dovecot's is "
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
		fprintf(stderr, "import: %s: %zu mailboxes, %zu messages\n", root, nmbs, im.total);
	for (size_t i = 0; ret == 0 && i < nmbs; i++) {
		if (import_mailbox(&im, &mbs[i], &ex, batch) < 0)
			ret = 1;
	}
	if (ret == 0) {
		double t = elapsed(&im);
		printf("imported %s into %s: %zu mailboxes, %zu messages (%zu were there "
		       "already), %.1f MiB in %.1f s\n", root, user, nmbs, im.done, im.skipped,
		       (double)im.bytes / (1024.0 * 1024.0), t);
	}
	buf_free(&ex.dump);
	free(ex.msgs);
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
	cli_error("%s", import_usage);
	return 2;
}
