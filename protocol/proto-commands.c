/* The command table of SPEC.md section 12: argument signatures, options,
 * and a validator, so that a receiver can refuse a malformed command with
 * BAD [ARGS] before any handler looks at it.
 *
 * This is syntax only: what a command means is the replicator's business.
 * Signature letters (one per positional argument, '?' marks the rest as
 * optional):
 *   i  number 1..2^32-1 (ids, sids, nonzero UIDs, UIDVALIDITY)
 *   u  number 0..2^32-1 (a UID that may be "not assigned")
 *   n  number 0..2^64-1      m  modseq 0..2^63-1
 *   s  string                g  GUID (32 hex digits)
 *   d  date                  S  UID set
 *   f  flag list             T  message text: a literal, or NIL
 *   l  list of UID sets (SYNC-BEGIN's known UIDs)
 *   M  a mailbox-master message (section 9.6): its name and fields, the
 *      rest of the line, checked against mm_messages below; MM takes no
 *      options, since it only ever travels one hop */
#include "protocol/protocol.h"

#include "lib/str.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const struct proto_cmd_info commands[] = {
	/* Handshake (sections 2-4): proto-conn answers these itself. */
	{ "STARTTLS", "", 0 },
	{ "AUTH", "ss", 0 },
	{ "COMPRESS", "s", 0 },
	{ "PING", "", 0 },
	{ "LOGOUT", "", 0 },
	{ "MBOX", "issig", 0 },
	{ "SELECT", "i", 0 },
	{ "CREATE", "ssgi",
	  PROTO_CMDF_OPT_SPECIAL_USE | PROTO_CMDF_FORWARD | PROTO_CMDF_OPT_ORIGIN | PROTO_CMDF_OPT_RSTAMP },
	{ "DELETE", "ssg", PROTO_CMDF_FORWARD | PROTO_CMDF_OPT_ORIGIN | PROTO_CMDF_OPT_UIDNEXT },
	{ "RENAME", "sssg", PROTO_CMDF_FORWARD | PROTO_CMDF_OPT_ORIGIN | PROTO_CMDF_OPT_RSTAMP },
	{ "SUBSCRIBE", "ss", PROTO_CMDF_FORWARD | PROTO_CMDF_OPT_ORIGIN },
	{ "UNSUBSCRIBE", "ss", PROTO_CMDF_FORWARD | PROTO_CMDF_OPT_ORIGIN },
	{ "ACL-PUT", "sgssn", PROTO_CMDF_FORWARD | PROTO_CMDF_OPT_ORIGIN },
	{ "SAVE", "dumgfT",
	  PROTO_CMDF_SELECTED | PROTO_CMDF_FORWARD | PROTO_CMDF_OPT_ORIGIN | PROTO_CMDF_OPT_STAMPS |
		  PROTO_CMDF_OPT_REQ | PROTO_CMDF_OPT_HOLDER },
	{ "COPY", "iigumdf",
	  PROTO_CMDF_SELECTED | PROTO_CMDF_FORWARD | PROTO_CMDF_OPT_ORIGIN | PROTO_CMDF_OPT_REQ },
	{ "EXPUNGE", "Sm",
	  PROTO_CMDF_SELECTED | PROTO_CMDF_FORWARD | PROTO_CMDF_OPT_ORIGIN | PROTO_CMDF_OPT_GUIDS |
		  PROTO_CMDF_OPT_BY },
	{ "STORE", "Smff",
	  PROTO_CMDF_SELECTED | PROTO_CMDF_FORWARD | PROTO_CMDF_OPT_UNCHANGEDSINCE | PROTO_CMDF_OPT_ORIGIN |
		  PROTO_CMDF_OPT_GUIDS | PROTO_CMDF_OPT_STAMPS | PROTO_CMDF_OPT_SEEN_OF |
		  PROTO_CMDF_OPT_REQ },
	/* A private \Seen record (7.7): streamed with ORIGIN, in a sync and
	 * its answer; the codec (proto-pseen.c) checks seen and the name. */
	{ "PSEEN", "sgumm", PROTO_CMDF_SELECTED | PROTO_CMDF_OPT_ORIGIN },
	/* Only in a bundle, before its records (7.7 "Bundles"). */
	{ "PSEEN-MBOX", "sgi", 0 },
	{ "FETCH", "S", PROTO_CMDF_SELECTED },
	{ "SYNC-BEGIN", "mmii?l", PROTO_CMDF_SELECTED },
	{ "SYNC-END", "", PROTO_CMDF_SELECTED },
	{ "UIDFIX", "SS", PROTO_CMDF_SELECTED },
	/* In a sync, and as a data line of its answer (10.2, 10.3). */
	{ "GONE", "", PROTO_CMDF_SELECTED | PROTO_CMDF_OPT_GUIDS },
	{ "LIST", "s", 0 },
	{ "MM", "M", 0 },
	{ "USER-PUT", "snis", 0 },
	{ "USER-LIST", "", 0 },
	{ "HIGHEST", "sg", 0 },
	/* Data lines (answers carrying the command's tag). */
	{ "FLAGS", "imf", PROTO_CMDF_DATA | PROTO_CMDF_OPT_STAMPS },
	{ "TEXT", "igT", PROTO_CMDF_DATA },
	{ "MAILBOX", "sgiimgs", PROTO_CMDF_DATA | PROTO_CMDF_OPT_RSTAMP },
	{ "SUBSCRIBED", "s", PROTO_CMDF_DATA },
	{ "ACL", "gssn", PROTO_CMDF_DATA },
	{ "USER-ENTRY", "snis", PROTO_CMDF_DATA },
};

/* The messages of SPEC.md 9.6, after their name.  Letters as above, plus:
 *   k  granule key: an atom or a quoted string of 1..400 bytes
 *   L  SID list: "-", or nonzero SIDs joined by ","
 *   o  SOFT or FORCE          r  REFUSED, LOOP or HOPS
 * Names are matched exactly (mm_msg_parse() does).  Ranges that are
 * meaning, not syntax (TTL at most 32, epochs with a root, generation
 * above 0), are left to mm_msg_validate(). */
static const struct {
	const char *name;
	const char *sig;
} mm_messages[] = {
	{ "LINKS", "innL" },
	{ "ROOT-ANNOUNCE", "iiin" },
	{ "DROPPED", "iiin" },
	{ "STALE-EPOCH", "iiin" },
	{ "MASTER-WHO", "iiink" },
	{ "MASTER-IS", "iiinkin" },
	{ "MASTER-MOVE", "iiinkiLou" },
	{ "MASTER-RELEASE", "iiinkinL" },
	{ "MASTER-MOVE-FAIL", "iiinkiur" },
};

#define MM_KEY_MAX 400

size_t proto_cmd_info_count(void)
{
	return sizeof(commands) / sizeof(commands[0]);
}

const struct proto_cmd_info *proto_cmd_info_get(size_t i)
{
	return i < proto_cmd_info_count() ? &commands[i] : NULL;
}

const struct proto_cmd_info *proto_cmd_info_find(const char *name)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcasecmp(commands[i].name, name) == 0)
			return &commands[i];
	}
	return NULL;
}

static bool is_flag_list(const struct proto_arg *a)
{
	if (a->type != PROTO_ARG_LIST)
		return false;
	for (size_t i = 0; i < a->count; i++) {
		const struct proto_arg *f = &a->list[i];
		if (f->type != PROTO_ARG_ATOM)
			return false;
		/* A system flag is one backslash and a word; keywords have none. */
		const char *bs = memchr(f->str, '\\', f->len);
		if (bs != NULL && (bs != f->str || f->len < 2 || memchr(f->str + 1, '\\', f->len - 1)))
			return false;
	}
	return true;
}

static bool is_uidset(const struct proto_arg *a)
{
	struct proto_uid_range *r;
	size_t n;
	if (proto_arg_uidset(a, UINT32_MAX, SIZE_MAX, &r, &n) < 0)
		return false;
	free(r);
	return true;
}

static bool check_arg(char type, const struct proto_arg *a)
{
	uint64_t v;
	uint32_t v32;
	struct guid g;
	int64_t secs;
	int tz;
	switch (type) {
	case 'i':
		return proto_arg_u32(a, &v32) == 0 && v32 != 0;
	case 'u':
		return proto_arg_u32(a, &v32) == 0;
	case 'n':
		return proto_arg_u64(a, UINT64_MAX, &v) == 0;
	case 'm':
		return proto_arg_u64(a, INT64_MAX, &v) == 0;
	case 's':
		return a->type != PROTO_ARG_LIST;
	case 'g':
		return proto_arg_guid(a, &g) == 0;
	case 'd':
		return proto_arg_date(a, &secs, &tz) == 0;
	case 'S':
		return is_uidset(a);
	case 'f':
		return is_flag_list(a);
	case 'T':
		return a->type == PROTO_ARG_LITERAL ||
		       (a->type == PROTO_ARG_ATOM && strcmp(a->str, "NIL") == 0);
	case 'l':
		if (a->type != PROTO_ARG_LIST)
			return false;
		for (size_t i = 0; i < a->count; i++) {
			if (!is_uidset(&a->list[i]))
				return false;
		}
		return true;
	}
	return false;
}

static bool atom_is(const struct proto_arg *a, const char *s)
{
	return a->type == PROTO_ARG_ATOM && strcmp(a->str, s) == 0;
}

static bool is_sid_list(const struct proto_arg *a)
{
	if (a->type != PROTO_ARG_ATOM)
		return false;
	if (strcmp(a->str, "-") == 0)
		return true;
	const char *p = a->str;
	for (;;) {
		const char *end = strchr(p, ',');
		size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
		uint64_t v;
		if (len == 0 || (len > 1 && p[0] == '0') || str_to_u64_n(p, len, UINT32_MAX, &v) < 0 ||
		    v == 0)
			return false;
		if (end == NULL)
			return true;
		p = end + 1;
	}
}

static bool check_mm_field(char type, const struct proto_arg *a)
{
	switch (type) {
	case 'k':
		return (a->type == PROTO_ARG_ATOM || a->type == PROTO_ARG_QUOTED) && a->len > 0 &&
		       a->len <= MM_KEY_MAX;
	case 'L':
		return is_sid_list(a);
	case 'o':
		return atom_is(a, "SOFT") || atom_is(a, "FORCE");
	case 'r':
		return atom_is(a, "REFUSED") || atom_is(a, "LOOP") || atom_is(a, "HOPS");
	}
	return check_arg(type, a);
}

/* args are everything after "MM": a message name, then exactly its fields. */
static bool check_mm(const struct proto_arg *args, size_t count)
{
	if (count == 0 || args[0].type != PROTO_ARG_ATOM)
		return false;
	for (size_t i = 0; i < sizeof(mm_messages) / sizeof(mm_messages[0]); i++) {
		if (strcmp(mm_messages[i].name, args[0].str) != 0)
			continue;
		const char *sig = mm_messages[i].sig;
		if (count - 1 != strlen(sig))
			return false;
		for (size_t j = 0; sig[j] != '\0'; j++) {
			if (!check_mm_field(sig[j], &args[j + 1]))
				return false;
		}
		return true;
	}
	return false;
}

static int fail(char *buf, size_t size, const char **error_r, const char *fmt, const char *name,
		size_t n)
{
	snprintf(buf, size, fmt, name, n);
	*error_r = buf;
	return -1;
}

int proto_cmd_validate(const struct proto_cmd *cmd, size_t *npos_r, const char **error_r)
{
	static char errbuf[128];
	const struct proto_cmd_info *info = proto_cmd_info_find(cmd->name);
	if (info == NULL)
		return fail(errbuf, sizeof(errbuf), error_r, "%s: unknown command%.0zu", cmd->name, 0);
	const char *sig = info->sig;
	size_t i = 0;
	bool optional = false;
	for (; *sig != '\0'; sig++) {
		if (*sig == '?') {
			optional = true;
			continue;
		}
		if (i >= cmd->arg_count) {
			if (optional)
				break;
			return fail(errbuf, sizeof(errbuf), error_r, "%s: argument %zu missing",
				    info->name, i + 1);
		}
		if (*sig == 'M') {
			if (!check_mm(&cmd->args[i], cmd->arg_count - i))
				return fail(errbuf, sizeof(errbuf), error_r,
					    "%s: not a mailbox-master message%.0zu", info->name, 0);
			i = cmd->arg_count;
			continue;
		}
		const struct proto_arg *a = &cmd->args[i];
		/* An optional argument may be absent with options following. */
		if (optional && a->type == PROTO_ARG_ATOM && *sig != 's' &&
		    !check_arg(*sig, a) && proto_cmd_is_option(info, a->str))
			break;
		if (!check_arg(*sig, a))
			return fail(errbuf, sizeof(errbuf), error_r, "%s: argument %zu is malformed",
				    info->name, i + 1);
		i++;
	}
	size_t npos = i;
	bool seen_via = false, seen_to = false, seen_opt = false, seen_origin = false;
	bool seen_guids = false, seen_stamps = false, seen_epoch = false, seen_by = false;
	bool seen_req = false, seen_holder = false, seen_rstamp = false, seen_seen_of = false;
	bool seen_uidnext = false;
	while (i < cmd->arg_count) {
		const struct proto_arg *key = &cmd->args[i];
		if (key->type != PROTO_ARG_ATOM || i + 1 >= cmd->arg_count)
			return fail(errbuf, sizeof(errbuf), error_r, "%s: extra argument %zu",
				    info->name, i + 1);
		const struct proto_arg *val = &cmd->args[i + 1];
		bool ok;
		if (strcasecmp(key->str, "VIA") == 0 && !seen_via) {
			seen_via = true;
			ok = val->type == PROTO_ARG_LIST && val->count <= PROTO_MAX_HOPS;
			for (size_t j = 0; ok && j < val->count; j++)
				ok = check_arg('i', &val->list[j]);
		} else if (strcasecmp(key->str, "TO") == 0 && !seen_to) {
			seen_to = true;
			ok = check_arg('i', val);
		} else if (strcasecmp(key->str, "UNCHANGEDSINCE") == 0 && !seen_opt &&
			   (info->flags & PROTO_CMDF_OPT_UNCHANGEDSINCE) != 0) {
			seen_opt = true;
			ok = check_arg('m', val);
		} else if (strcasecmp(key->str, "SPECIAL-USE") == 0 && !seen_opt &&
			   (info->flags & PROTO_CMDF_OPT_SPECIAL_USE) != 0) {
			seen_opt = true;
			ok = check_arg('f', val);
		} else if (strcasecmp(key->str, "ORIGIN") == 0 && !seen_origin &&
			   (info->flags & PROTO_CMDF_OPT_ORIGIN) != 0) {
			seen_origin = true;
			ok = check_arg('i', val);
		} else if (strcasecmp(key->str, "EPOCH") == 0 && !seen_epoch &&
			   (info->flags & PROTO_CMDF_OPT_ORIGIN) != 0) {
			/* The sender's mastership epoch (SPEC 6.3): wherever ORIGIN
			 * may be, so on forwarded requests and streamed changes. */
			seen_epoch = true;
			ok = check_arg('n', val) && strcmp(val->str, "0") != 0;
		} else if (strcasecmp(key->str, "GUIDS") == 0 && !seen_guids &&
			   (info->flags & PROTO_CMDF_OPT_GUIDS) != 0) {
			seen_guids = true;
			ok = val->type == PROTO_ARG_LIST && val->count > 0;
			for (size_t j = 0; ok && j < val->count; j++)
				ok = check_arg('g', &val->list[j]);
		} else if (strcasecmp(key->str, "BY") == 0 && !seen_by &&
			   (info->flags & PROTO_CMDF_OPT_BY) != 0) {
			seen_by = true;
			ok = val->type == PROTO_ARG_ATOM && strcasecmp(val->str, "USER") == 0;
		} else if (strcasecmp(key->str, "REQ") == 0 && !seen_req &&
			   (info->flags & PROTO_CMDF_OPT_REQ) != 0) {
			uint32_t sid;
			uint64_t n;
			seen_req = true;
			ok = proto_arg_req(val, &sid, &n) == 0;
		} else if (strcasecmp(key->str, "SEEN-OF") == 0 && !seen_seen_of &&
			   (info->flags & PROTO_CMDF_OPT_SEEN_OF) != 0) {
			const char *u;
			size_t ulen;
			seen_seen_of = true;
			ok = (val->type == PROTO_ARG_ATOM || val->type == PROTO_ARG_QUOTED) &&
			     proto_arg_str(val, &u, &ulen) == 0 && proto_user_name_valid(u, ulen);
		} else if (strcasecmp(key->str, "HOLDER") == 0 && !seen_holder &&
			   (info->flags & PROTO_CMDF_OPT_HOLDER) != 0) {
			seen_holder = true;
			ok = check_arg('i', val);
		} else if (strcasecmp(key->str, "RSTAMP") == 0 && !seen_rstamp &&
			   (info->flags & PROTO_CMDF_OPT_RSTAMP) != 0) {
			seen_rstamp = true;
			ok = check_arg('m', val);
		} else if (strcasecmp(key->str, "UIDNEXT") == 0 && !seen_uidnext &&
			   (info->flags & PROTO_CMDF_OPT_UIDNEXT) != 0) {
			seen_uidnext = true;
			ok = check_arg('i', val);
		} else if (strcasecmp(key->str, "STAMPS") == 0 && !seen_stamps &&
			   (info->flags & PROTO_CMDF_OPT_STAMPS) != 0) {
			seen_stamps = true;
			ok = val->type == PROTO_ARG_LIST && val->count % 3 == 0 &&
			     val->count <= 3 * PROTO_MAX_STAMPS;
			for (size_t j = 0; ok && j < val->count; j += 3)
				ok = val->list[j].type == PROTO_ARG_ATOM &&
				     check_arg('m', &val->list[j + 1]) && check_arg('m', &val->list[j + 2]);
		} else {
			return fail(errbuf, sizeof(errbuf), error_r, "%s: unknown or repeated option %zu",
				    info->name, i + 1);
		}
		if (!ok)
			return fail(errbuf, sizeof(errbuf), error_r, "%s: option value %zu is malformed",
				    info->name, i + 2);
		i += 2;
	}
	if (seen_holder && seen_origin)
		/* A holder promises to hold a request's change; a change
		 * already made (ORIGIN) has none (SPEC 8.8). */
		return fail(errbuf, sizeof(errbuf), error_r, "%s: HOLDER with ORIGIN%.0zu", info->name,
			    0);
	*npos_r = npos;
	return 0;
}

bool proto_cmd_is_option(const struct proto_cmd_info *info, const char *key)
{
	return strcasecmp(key, "VIA") == 0 || strcasecmp(key, "TO") == 0 ||
	       ((info->flags & PROTO_CMDF_OPT_UNCHANGEDSINCE) != 0 &&
		strcasecmp(key, "UNCHANGEDSINCE") == 0) ||
	       ((info->flags & PROTO_CMDF_OPT_SPECIAL_USE) != 0 && strcasecmp(key, "SPECIAL-USE") == 0) ||
	       ((info->flags & PROTO_CMDF_OPT_ORIGIN) != 0 && strcasecmp(key, "ORIGIN") == 0) ||
	       ((info->flags & PROTO_CMDF_OPT_ORIGIN) != 0 && strcasecmp(key, "EPOCH") == 0) ||
	       ((info->flags & PROTO_CMDF_OPT_GUIDS) != 0 && strcasecmp(key, "GUIDS") == 0) ||
	       ((info->flags & PROTO_CMDF_OPT_BY) != 0 && strcasecmp(key, "BY") == 0) ||
	       ((info->flags & PROTO_CMDF_OPT_REQ) != 0 && strcasecmp(key, "REQ") == 0) ||
	       ((info->flags & PROTO_CMDF_OPT_SEEN_OF) != 0 && strcasecmp(key, "SEEN-OF") == 0) ||
	       ((info->flags & PROTO_CMDF_OPT_HOLDER) != 0 && strcasecmp(key, "HOLDER") == 0) ||
	       ((info->flags & PROTO_CMDF_OPT_STAMPS) != 0 && strcasecmp(key, "STAMPS") == 0) ||
	       ((info->flags & PROTO_CMDF_OPT_RSTAMP) != 0 && strcasecmp(key, "RSTAMP") == 0) ||
	       ((info->flags & PROTO_CMDF_OPT_UIDNEXT) != 0 && strcasecmp(key, "UIDNEXT") == 0);
}

const struct proto_arg *proto_cmd_option(const struct proto_cmd *cmd, size_t npos, const char *key)
{
	for (size_t i = npos; i + 1 < cmd->arg_count; i += 2) {
		if (cmd->args[i].type == PROTO_ARG_ATOM && strcasecmp(cmd->args[i].str, key) == 0)
			return &cmd->args[i + 1];
	}
	return NULL;
}
