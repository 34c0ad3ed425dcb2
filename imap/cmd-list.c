/* LIST and LSUB: patterns with '*' and '%', hierarchy separator '/',
 * \HasChildren/\HasNoChildren, SPECIAL-USE attributes (RFC 6154),
 * LIST-EXTENDED (RFC 5258: selection options SUBSCRIBED, REMOTE,
 * RECURSIVEMATCH and SPECIAL-USE, return options SUBSCRIBED, CHILDREN and
 * SPECIAL-USE, several patterns in parentheses, CHILDINFO) and LIST-STATUS
 * (RFC 5819: RETURN (STATUS (...))).  Parents that exist only as the prefix
 * of another mailbox are listed as \Noselect (\NonExistent in the extended
 * form). */
#include "imap/imap-commands.h"
#include "imap/imap-barrier.h"
#include "imap/imap-acl.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/str.h"
#include "lib/xalloc.h"

#define LIST_MAX_PATTERN 1024
#define LIST_MAX_PATTERNS 16

/* Matches name against an IMAP pattern ('*' anything, '%' anything but the
 * separator) by dynamic programming: linear memory, no backtracking blowup. */
static bool pattern_match(const char *pat, const char *name)
{
	size_t m = strlen(pat), n = strlen(name);
	bool *prev = xcalloc(n + 1, sizeof(bool)), *cur = xcalloc(n + 1, sizeof(bool));
	prev[0] = true;
	for (size_t i = 1; i <= m; i++) {
		char p = pat[i - 1];
		cur[0] = prev[0] && (p == '*' || p == '%');
		for (size_t j = 1; j <= n; j++) {
			if (p == '*')
				cur[j] = prev[j] || cur[j - 1];
			else if (p == '%')
				cur[j] = prev[j] || (cur[j - 1] && name[j - 1] != '/');
			else
				cur[j] = prev[j - 1] && p == name[j - 1];
		}
		bool *t = prev;
		prev = cur;
		cur = t;
	}
	bool r = prev[n];
	free(prev);
	free(cur);
	return r;
}

/* Builds the pattern from reference and mailbox pattern, with INBOX
 * case-insensitive. */
static char *make_pattern(const char *ref, const char *pat)
{
	char *full = xasprintf("%s%s", ref, pat);
	if (strncasecmp(full, "INBOX", 5) == 0 && (full[5] == '\0' || full[5] == '/'))
		memcpy(full, "INBOX", 5);
	return full;
}

struct list_entry {
	char *name;
	bool exists;
	bool subscribed;
	const char *special_use;
	const struct stor_mailbox *mb; /* in the listing's array; NULL if none */
};

static int entry_cmp(const void *a, const void *b)
{
	const struct list_entry *x = a, *y = b;
	return strcmp(x->name, y->name);
}

typedef ARRAY(struct list_entry) list_entries;

static struct list_entry *find_entry(list_entries *e, const char *name)
{
	for (size_t i = 0; i < e->count; i++)
		if (strcmp(e->items[i].name, name) == 0)
			return &e->items[i];
	return NULL;
}

static struct list_entry *add_entry(list_entries *e, const char *name)
{
	struct list_entry *x = find_entry(e, name);
	if (x != NULL)
		return x;
	struct list_entry ne = { xstrdup(name), false, false, NULL, NULL };
	ARRAY_PUSH(e, ne);
	return &e->items[e->count - 1];
}

static bool has_children(const stor_mailbox_array *mbs, const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < mbs->count; i++)
		if (strncmp(mbs->items[i].name, name, n) == 0 && mbs->items[i].name[n] == '/')
			return true;
	return false;
}

static bool has_subscribed_child(const list_entries *e, const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < e->count; i++)
		if (e->items[i].subscribed && strncmp(e->items[i].name, name, n) == 0 &&
		    e->items[i].name[n] == '/')
			return true;
	return false;
}

/* Whether a mailbox meets the LIST-EXTENDED selection criteria. */
static bool meets_selection(const struct list_entry *e, bool sel_subscribed, bool sel_special)
{
	if (sel_subscribed && !e->subscribed)
		return false;
	if (sel_special && (!e->exists || e->special_use == NULL))
		return false;
	return true;
}

/* RFC 5258 3.5: with RECURSIVEMATCH, a matching mailbox that does not meet
 * the selection is returned (with CHILDINFO) when a descendant meets it;
 * only when that descendant is not returned itself, as the RFC recommends,
 * so that CHILDINFO tells the client something the list does not.  entries
 * are sorted, so the descendants of entry i follow it. */
static bool childinfo_wanted(const list_entries *e, const bool *matched, size_t i,
			     bool sel_subscribed, bool sel_special)
{
	const char *name = e->items[i].name;
	size_t n = strlen(name);
	for (size_t k = 0; k < e->count; k++) {
		const struct list_entry *d = &e->items[k];
		if (strncmp(d->name, name, n) != 0 || d->name[n] != '/')
			continue;
		if (!matched[k] && meets_selection(d, sel_subscribed, sel_special))
			return true;
	}
	return false;
}

/* LIST-STATUS shows the state of the mailboxes it lists, so each that a
 * pattern matches waits as STATUS would (all at once); the command runs
 * again once they are through. */
static bool list_status_barrier(struct imap_cmd *cmd, const stor_mailbox_array *mbs,
				const char *ref, const struct imap_arg *pats, size_t npats)
{
	if (cmd->barrier_passed || mbs->count == 0)
		return true;
	struct guid *guids = xcalloc(mbs->count, sizeof(*guids));
	size_t n = 0;
	for (size_t i = 0; i < mbs->count; i++) {
		char *disp = imap_client_mailbox_display(cmd->client, mbs->items[i].name);
		bool match = false;
		for (size_t k = 0; k < npats && !match; k++) {
			char *pat = make_pattern(ref, pats[k].str);
			match = pattern_match(pat, disp);
			free(pat);
		}
		free(disp);
		if (match)
			guids[n++] = mbs->items[i].guid;
	}
	bool now = imap_read_barrier_many(cmd, imap_cmd_list, guids, n);
	free(guids);
	return now;
}

/* LIST-STATUS of another user's mailbox needs "r", as STATUS does. */
static bool list_status_allowed(struct imap_client *c, const struct stor_mailbox *mb)
{
	uint32_t rights = 0;
	const char *err;
	if (strcmp(mb->user, c->user) == 0)
		return true;
	return imap_acl_rights(c, mb->user, &mb->guid, &rights, &err) == 0 &&
	       (rights & ACL_READ) != 0;
}

static bool do_list(struct imap_cmd *cmd, bool lsub)
{
	struct imap_client *c = cmd->client;
	const struct imap_arg *args = cmd->args;
	size_t count = cmd->count;
	bool sel_subscribed = false, sel_special = false, sel_recursive = false;
	bool ret_subscribed = false, ret_children = true, ret_special = true, extended = false;
	const struct imap_arg *status_items = NULL;
	size_t status_count = 0;
	if (!lsub && count > 0 && args[0].type == IMAP_ARG_LIST) {
		extended = true;
		for (size_t i = 0; i < args[0].count; i++) {
			if (imap_arg_atom_eq(&args[0].list[i], "SUBSCRIBED"))
				sel_subscribed = true;
			else if (imap_arg_atom_eq(&args[0].list[i], "SPECIAL-USE"))
				sel_special = true;
			else if (imap_arg_atom_eq(&args[0].list[i], "RECURSIVEMATCH"))
				sel_recursive = true;
			else if (!imap_arg_atom_eq(&args[0].list[i], "REMOTE"))
				return imap_cmd_done(cmd, "BAD", "Unknown LIST selection option");
		}
		/* RFC 5258 3: RECURSIVEMATCH alone (or with only REMOTE)
		 * selects nothing to recurse on. */
		if (sel_recursive && !sel_subscribed && !sel_special)
			return imap_cmd_done(cmd, "BAD",
					     "RECURSIVEMATCH needs another selection option");
		args++;
		count--;
	}
	if (!lsub && count == 4 && imap_arg_atom_eq(&args[2], "RETURN") &&
	    args[3].type == IMAP_ARG_LIST) {
		extended = true;
		const struct imap_arg *ro = args[3].list;
		for (size_t i = 0; i < args[3].count; i++) {
			if (imap_arg_atom_eq(&ro[i], "SUBSCRIBED")) {
				ret_subscribed = true;
			} else if (imap_arg_atom_eq(&ro[i], "CHILDREN")) {
				ret_children = true;
			} else if (imap_arg_atom_eq(&ro[i], "SPECIAL-USE")) {
				ret_special = true;
			} else if (imap_arg_atom_eq(&ro[i], "STATUS") && i + 1 < args[3].count &&
				   ro[i + 1].type == IMAP_ARG_LIST && ro[i + 1].count > 0 &&
				   status_items == NULL) {
				i++;
				if (!imap_status_items_valid(c, ro[i].list, ro[i].count))
					return imap_cmd_done(cmd, "BAD", "Unknown STATUS item");
				status_items = ro[i].list;
				status_count = ro[i].count;
			} else {
				return imap_cmd_done(cmd, "BAD", "Unknown LIST return option");
			}
		}
		count -= 2;
	}
	if (count != 2 || !imap_arg_is_string(&args[0]))
		return imap_cmd_done(cmd, "BAD", "%s takes a reference and a pattern", cmd->name);
	const char *ref = imap_arg_cstr(&args[0]);
	const struct imap_arg *pats = &args[1];
	size_t npats = 1;
	if (args[1].type == IMAP_ARG_LIST) {
		if (lsub || args[1].count == 0 || args[1].count > LIST_MAX_PATTERNS)
			return imap_cmd_done(cmd, "BAD", "Invalid patterns");
		pats = args[1].list;
		npats = args[1].count;
		extended = true;
	}
	if (ref == NULL || strlen(ref) > LIST_MAX_PATTERN)
		return imap_cmd_done(cmd, "BAD", "Invalid reference");
	for (size_t i = 0; i < npats; i++)
		if (imap_arg_cstr(&pats[i]) == NULL || pats[i].len > LIST_MAX_PATTERN)
			return imap_cmd_done(cmd, "BAD", "Invalid pattern");
	if (sel_subscribed)
		ret_subscribed = true;

	if (npats == 1 && pats[0].len == 0) {
		/* The hierarchy delimiter and root. */
		imap_client_printf(c, "* %s (\\Noselect) \"/\" \"\"\r\n", lsub ? "LSUB" : "LIST");
		return imap_cmd_done(cmd, "OK", "%s completed", cmd->name);
	}

	struct stor_db *db = c->server->db;
	const char *err;
	stor_mailbox_array mbs = ARRAY_INIT;
	stor_string_list subs = ARRAY_INIT;
	if (stor_mailbox_list(db, c->user, &mbs, &err) < 0)
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	if (imap_acl_list_shared(c, &mbs, &err) < 0 ||
	    stor_subscriptions(db, c->user, &subs, &err) < 0) {
		stor_mailbox_list_free(&mbs);
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	}
	if (status_items != NULL && !list_status_barrier(cmd, &mbs, ref, pats, npats)) {
		stor_mailbox_list_free(&mbs);
		stor_string_list_free(&subs);
		return false;
	}
	list_entries entries = ARRAY_INIT;
	for (size_t i = 0; i < mbs.count; i++) {
		struct list_entry *e = add_entry(&entries, mbs.items[i].name);
		e->exists = true;
		e->special_use = mbs.items[i].special_use[0] != '\0' ? mbs.items[i].special_use : NULL;
		e->mb = &mbs.items[i];
	}
	for (size_t i = 0; i < subs.count; i++) {
		struct list_entry *e = find_entry(&entries, subs.items[i]);
		if (e == NULL && (lsub || sel_subscribed))
			e = add_entry(&entries, subs.items[i]);
		if (e != NULL)
			e->subscribed = true;
	}
	/* Parents implied by hierarchy. */
	size_t real = entries.count;
	for (size_t i = 0; i < real; i++) {
		char *name = xstrdup(entries.items[i].name);
		for (char *slash = strrchr(name, '/'); slash != NULL; slash = strrchr(name, '/')) {
			*slash = '\0';
			if (find_entry(&entries, name) == NULL)
				add_entry(&entries, name);
		}
		free(name);
	}
	qsort(entries.items, entries.count, sizeof(entries.items[0]), entry_cmp);

	char **patterns = xcalloc(npats, sizeof(char *));
	for (size_t i = 0; i < npats; i++)
		patterns[i] = make_pattern(ref, pats[i].str);
	/* IMAP4rev2 patterns and names are UTF-8 (RFC 9051 6.3.9): match and
	 * show the names in the session's form. */
	char **disp = xcalloc(entries.count ? entries.count : 1, sizeof(char *));
	for (size_t i = 0; i < entries.count; i++)
		disp[i] = imap_client_mailbox_display(c, entries.items[i].name);
	bool *matched = xcalloc(entries.count ? entries.count : 1, sizeof(bool));
	bool *pct = xcalloc(entries.count ? entries.count : 1, sizeof(bool));
	for (size_t i = 0; i < entries.count; i++) {
		for (size_t k = 0; k < npats && !matched[i]; k++) {
			matched[i] = pattern_match(patterns[k], disp[i]);
			pct[i] = matched[i] && strchr(patterns[k], '%') != NULL;
		}
	}
	struct buf line = BUF_INIT;
	for (size_t i = 0; i < entries.count; i++) {
		const struct list_entry *e = &entries.items[i];
		if (!matched[i])
			continue;
		/* LSUB with '%': an unsubscribed parent of a subscribed name
		 * is listed with \Noselect (RFC 3501 6.3.9), so that a client
		 * can walk down to the subscribed name. */
		bool lsub_parent = lsub && !e->subscribed && pct[i] &&
				   has_subscribed_child(&entries, e->name);
		if (lsub && !e->subscribed && !lsub_parent)
			continue;
		bool childinfo = false;
		if (!lsub && !meets_selection(e, sel_subscribed, sel_special)) {
			/* CHILDINFO is defined for SUBSCRIBED only. */
			if (!sel_recursive || !sel_subscribed ||
			    !childinfo_wanted(&entries, matched, i, sel_subscribed, sel_special))
				continue;
			childinfo = true;
		}
		buf_reset(&line);
		buf_appendf(&line, "* %s (", lsub ? "LSUB" : "LIST");
		size_t attr_start = line.len;
#define ATTR(s) do { if (line.len > attr_start) buf_append_byte(&line, ' '); \
		     buf_append_str(&line, s); } while (0)
		if (!e->exists || lsub_parent)
			ATTR(extended && !lsub ? "\\NonExistent" : "\\Noselect");
		if (ret_subscribed && e->subscribed && !lsub)
			ATTR("\\Subscribed");
		if (ret_children && !lsub)
			ATTR(has_children(&mbs, e->name) ? "\\HasChildren" : "\\HasNoChildren");
		if (ret_special && e->special_use != NULL && !lsub)
			ATTR(e->special_use);
#undef ATTR
		buf_append_str(&line, ") \"/\" ");
		imap_append_astring(&line, disp[i], strlen(disp[i]));
		if (childinfo)
			buf_append_str(&line, " (\"CHILDINFO\" (\"SUBSCRIBED\"))");
		buf_append_str(&line, "\r\n");
		imap_client_write(c, line.data, line.len);
		/* RFC 5819: STATUS follows the LIST line of each selectable
		 * mailbox, from the listing's own snapshot. */
		if (status_items != NULL && e->mb != NULL && list_status_allowed(c, e->mb))
			imap_status_write(c, e->mb, status_items, status_count);
	}
	buf_free(&line);
	free(matched);
	free(pct);
	for (size_t i = 0; i < npats; i++)
		free(patterns[i]);
	free(patterns);
	for (size_t i = 0; i < entries.count; i++) {
		free(entries.items[i].name);
		free(disp[i]);
	}
	free(disp);
	ARRAY_FREE(&entries);
	stor_mailbox_list_free(&mbs);
	stor_string_list_free(&subs);
	return imap_cmd_done(cmd, "OK", "%s completed", cmd->name);
}

bool imap_cmd_list(struct imap_cmd *cmd)
{
	return do_list(cmd, false);
}

bool imap_cmd_lsub(struct imap_cmd *cmd)
{
	return do_list(cmd, true);
}
