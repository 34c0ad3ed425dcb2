/* Test tool: writes one ACL record straight into a stopped node's store,
 * past the replication log, so that a cluster test can make two nodes
 * differ in ACLs only (what the periodic check must notice).
 *
 *   acl-put STORE_DIR OWNER MAILBOX IDENTIFIER RIGHTS TIME_MS */
#include <stdio.h>
#include <stdlib.h>

#include "storage/storage-acl.h"
#include "storage/storage.h"

int main(int argc, char **argv)
{
	if (argc != 7) {
		fprintf(stderr, "usage: acl-put STORE_DIR OWNER MAILBOX IDENTIFIER RIGHTS TIME_MS\n");
		return 2;
	}
	struct stor_settings set = { .dir = argv[1] };
	struct stor_db *db;
	char *err = NULL;
	if (stor_open(&set, &db, &err) < 0) {
		fprintf(stderr, "acl-put: %s\n", err);
		free(err);
		return 1;
	}
	struct stor_mailbox mb;
	const char *e;
	int r = stor_mailbox_get(db, argv[2], argv[3], &mb, &e);
	if (r <= 0) {
		fprintf(stderr, "acl-put: %s\n", r < 0 ? e : "no such mailbox");
		stor_close(&db);
		return 1;
	}
	bool applied = false;
	r = stor_acl_put(db, argv[2], &mb.guid, argv[4], argv[5], strtoll(argv[6], NULL, 10),
			 &applied, &e);
	if (r == 0 && !applied) {
		e = "an equal or newer record is held";
		r = -1;
	}
	if (r == 0)
		r = stor_sync(db, &e);
	stor_mailbox_free(&mb);
	stor_close(&db);
	if (r < 0) {
		fprintf(stderr, "acl-put: %s\n", e);
		return 1;
	}
	return 0;
}
