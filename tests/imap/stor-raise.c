/* Test tool: raises a stopped node's mailbox to the top of the UIDs a new
 * message may get (MAIL_UID_ASSIGN_MAX), so that an end-to-end test can make
 * the second message of a MULTIAPPEND fail with NO [LIMIT] on purpose.
 *
 *   stor-raise STORE_DIR USER MAILBOX */
#include <stdio.h>
#include <stdlib.h>

#include "lib/mail-limits.h"
#include "storage/storage.h"

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: stor-raise STORE_DIR USER MAILBOX\n");
		return 2;
	}
	struct stor_settings set = { .dir = argv[1] };
	struct stor_db *db;
	char *err = NULL;
	if (stor_open(&set, &db, &err) < 0) {
		fprintf(stderr, "stor-raise: %s\n", err);
		free(err);
		return 1;
	}
	struct stor_mailbox mb;
	const char *e;
	int r = stor_mailbox_get(db, argv[2], argv[3], &mb, &e);
	if (r <= 0) {
		fprintf(stderr, "stor-raise: %s\n", r < 0 ? e : "no such mailbox");
		stor_close(&db);
		return 1;
	}
	r = stor_mailbox_raise(db, &mb.guid, MAIL_UID_ASSIGN_MAX, 0, &e);
	if (r == 0)
		r = stor_sync(db, &e);
	stor_mailbox_free(&mb);
	stor_close(&db);
	if (r < 0) {
		fprintf(stderr, "stor-raise: %s\n", e);
		return 1;
	}
	return 0;
}
