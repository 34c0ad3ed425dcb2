/* LIST's OLDNAME extended data item (RFC 9051 7.3.1; RFC 5465 5.4): after
 * a RENAME, an IMAP4rev2 session is told each name that changed as an
 * untagged LIST of the new name carrying the old one, so a client that
 * caches its mailbox list can move what it knows instead of treating the
 * new name as a mailbox it never saw.  Only the renaming session learns it
 * (no NOTIFY here), and only under IMAP4rev2: a rev1 client does not
 * expect extended data in a LIST it did not ask for. */
#include "imap/imap-commands.h"

#include <string.h>

void imap_rename_report_oldnames(struct imap_client *c, const char *old_name,
				 const char *new_name, const char *const *new_names, size_t n)
{
	if (!c->rev2)
		return;
	size_t nlen = strlen(new_name);
	struct buf line = BUF_INIT;
	struct buf old = BUF_INIT;
	for (size_t i = 0; i < n; i++) {
		/* Every renamed name is new_name or one of its inferiors
		 * (cmd-mailbox.c made them so): the old one has old_name's
		 * prefix instead. */
		const char *nn = new_names[i];
		if (strncmp(nn, new_name, nlen) != 0 || (nn[nlen] != '\0' && nn[nlen] != '/'))
			continue;
		buf_reset(&old);
		buf_append_str(&old, old_name);
		buf_append_str(&old, nn + nlen);
		/* The attributes are left out (an empty list is a valid
		 * answer): the client asks LIST for them if it wants them. */
		buf_append_str(&line, "* LIST () \"/\" ");
		imap_append_mailbox(c, &line, nn);
		buf_append_str(&line, " (\"OLDNAME\" (");
		imap_append_mailbox(c, &line, buf_cstr(&old));
		buf_append_str(&line, "))\r\n");
	}
	if (line.len > 0)
		imap_client_write(c, line.data, line.len);
	buf_free(&line);
	buf_free(&old);
}
