/* The command handlers, one family per cmd-*.c file, and their table in
 * imap-commands.c.  Each handler gets a command whose state and argument
 * shape were not checked beyond the table's state requirement. */
#ifndef IMAP_IMAP_COMMANDS_H
#define IMAP_IMAP_COMMANDS_H

#include "imap/imap-private.h"

/* cmd-auth.c */
bool imap_cmd_capability(struct imap_cmd *cmd);
bool imap_cmd_noop(struct imap_cmd *cmd);
bool imap_cmd_logout(struct imap_cmd *cmd);
bool imap_cmd_starttls(struct imap_cmd *cmd);
bool imap_cmd_login(struct imap_cmd *cmd);
bool imap_cmd_authenticate(struct imap_cmd *cmd);
bool imap_cmd_id(struct imap_cmd *cmd);
bool imap_cmd_enable(struct imap_cmd *cmd);
/* The client's line after "+ " during AUTHENTICATE. */
void imap_auth_continue(struct imap_client *c, const char *line);

/* cmd-mailbox.c */
bool imap_cmd_create(struct imap_cmd *cmd);
bool imap_cmd_delete(struct imap_cmd *cmd);
bool imap_cmd_rename(struct imap_cmd *cmd);
bool imap_cmd_subscribe(struct imap_cmd *cmd);
bool imap_cmd_unsubscribe(struct imap_cmd *cmd);
bool imap_cmd_namespace(struct imap_cmd *cmd);
bool imap_cmd_status(struct imap_cmd *cmd);
/* STATUS items shared with LIST-STATUS (RFC 5819): whether every item is
 * one we know, and the untagged STATUS line for mb. */
bool imap_status_items_valid(const struct imap_client *c, const struct imap_arg *items, size_t n);
void imap_status_write(struct imap_client *c, const struct stor_mailbox *mb,
		       const struct imap_arg *items, size_t n);

/* imap-list-oldname.c: after a RENAME of old_name to new_name that moved
 * new_names[0..n) (new_name and its inferiors), an IMAP4rev2 session gets
 * an untagged LIST with OLDNAME for each. */
void imap_rename_report_oldnames(struct imap_client *c, const char *old_name,
				 const char *new_name, const char *const *new_names, size_t n);

/* imap-url.c: the "/mailbox..." path of a CATENATE URL, either given so
 * (server-relative) or after an "imap://" server part that names this
 * server and the session's user (RFC 5092 3); NULL for any other URL. */
const char *imap_url_local_path(const struct imap_client *c, const char *url);

/* cmd-list.c */
bool imap_cmd_list(struct imap_cmd *cmd);
bool imap_cmd_lsub(struct imap_cmd *cmd);

/* cmd-select.c */
bool imap_cmd_select(struct imap_cmd *cmd);
bool imap_cmd_examine(struct imap_cmd *cmd);
bool imap_cmd_close(struct imap_cmd *cmd);
bool imap_cmd_unselect(struct imap_cmd *cmd);
bool imap_cmd_check(struct imap_cmd *cmd);

/* cmd-append.c */
bool imap_cmd_append(struct imap_cmd *cmd);

/* cmd-fetch.c */
bool imap_cmd_fetch(struct imap_cmd *cmd);

/* cmd-store.c */
bool imap_cmd_store(struct imap_cmd *cmd);

/* cmd-copy.c */
bool imap_cmd_copy(struct imap_cmd *cmd);
bool imap_cmd_move(struct imap_cmd *cmd);

/* cmd-expunge.c */
bool imap_cmd_expunge(struct imap_cmd *cmd);

/* cmd-search.c */
bool imap_cmd_search(struct imap_cmd *cmd);
/* imap-search-update.c */
bool imap_cmd_cancelupdate(struct imap_cmd *cmd);

/* cmd-thread.c */
bool imap_cmd_thread(struct imap_cmd *cmd);

/* cmd-sort.c */
bool imap_cmd_sort(struct imap_cmd *cmd);

/* cmd-idle.c */
bool imap_cmd_idle(struct imap_cmd *cmd);

#endif
