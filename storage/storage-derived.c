/* Derived data of message texts: an opaque record per text GUID that the
 * IMAP layer computes from the text (ENVELOPE, BODYSTRUCTURE, sort and
 * thread keys, the header block) and keeps here so that it need not parse
 * the text again.  Copies of a message share the text and so the record.
 *
 * The record is a cache: a pure function of the text, rebuilt from it when
 * it is missing.  So it is never journaled, replicated or synced; it goes
 * straight into LevelDB with an unsynced write, and a crash may lose it
 * (the next use rebuilds it).  It is deleted in the batch that deletes its
 * text (stor_text_delete_batch), and stor_derived_put() refuses to write
 * one for a text the store does not hold, so it cannot outlive its text
 * except by a crash between a put and the staged creation of the text
 * being written out; such a record names a GUID no text has any more, and
 * the reader checks the text size it was made from besides. */
#include "storage/storage-private.h"

#include <stdlib.h>
#include <string.h>

static void derived_key(struct stor_key *k, const struct guid *guid)
{
	stor_key_init(k, STOR_KEY_DERIVED);
	stor_key_guid(k, guid);
}

int stor_derived_get(struct stor_db *db, const struct guid *text_guid, struct buf *out,
		     const char **error_r)
{
	struct stor_key k;
	char *v;
	size_t len;
	derived_key(&k, text_guid);
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	buf_append(out, v, len);
	free(v);
	return 1;
}

int stor_derived_put(struct stor_db *db, const struct guid *text_guid, const void *data,
		     size_t len, const char **error_r)
{
	if (len > STOR_DERIVED_MAX)
		return stor_err(db, error_r, "derived record of %zu bytes is over the limit", len);
	/* A store that refuses changes after a failure refuses these too. */
	if (stor_jnl_usable(db, error_r) < 0)
		return -1;
	struct stor_text_rec rec;
	int ret = stor_text_rec_get(db, text_guid, &rec, error_r);
	if (ret <= 0)
		return ret;
	struct stor_key k;
	derived_key(&k, text_guid);
	struct stor_batch *wb = stor_batch_new();
	stor_batch_put(wb, &k, data, len);
	ret = stor_ldb_write(db, stor_batch_ldb(wb), false, error_r);
	stor_batch_free(wb);
	return ret < 0 ? -1 : 1;
}

void stor_derived_delete_batch(struct stor_batch *wb, const struct guid *text_guid)
{
	struct stor_key k;
	derived_key(&k, text_guid);
	stor_batch_del(wb, &k);
}
