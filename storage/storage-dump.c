/* The canonical per-user dump (compared byte for byte between nodes) and
 * the consistency check of a mailbox record against its messages. */
#include "storage/storage-private.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "lib/str.h"
#include "lib/xalloc.h"

static void dump_flags(struct buf *out, uint32_t flags)
{
	bool first = true;
	for (uint32_t bit = 1; bit <= STOR_FLAG_DRAFT; bit <<= 1) {
		if ((flags & bit) == 0)
			continue;
		if (!first)
			buf_append_byte(out, ',');
		buf_append_str(out, stor_flag_name((enum stor_flag)bit));
		first = false;
	}
}

/* The SHA-256 of a text as the store holds it now, read a piece at a time
 * (a text can be as big as max_message_size). */
static int text_sha256(struct stor_db *db, const struct guid *guid, uint64_t size,
		       unsigned char out[32], const char **error_r)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (ctx == NULL || EVP_DigestInit_ex(ctx, stor_sha256(), NULL) != 1)
		abort();
	struct buf piece = BUF_INIT;
	int ret = 0;
	for (uint64_t off = 0; off < size && ret == 0; off += piece.len) {
		uint64_t n = size - off < 1024 * 1024 ? size - off : 1024 * 1024;
		buf_reset(&piece);
		ret = stor_text_read(db, guid, off, n, &piece, error_r);
		if (ret == 0 && piece.len != n)
			ret = stor_err(db, error_r, "%s: store is corrupted: a text is shorter than "
				       "its record", db->dir);
		if (ret == 0)
			EVP_DigestUpdate(ctx, piece.data, piece.len);
	}
	unsigned len = 0;
	if (ret == 0 && (EVP_DigestFinal_ex(ctx, out, &len) != 1 || len != 32))
		abort();
	EVP_MD_CTX_free(ctx);
	buf_free(&piece);
	return ret;
}

static int dump_mailbox_msgs(struct stor_db *db, const struct stor_mailbox *mb, struct buf *out,
			     const char **error_r)
{
	stor_msg_list msgs;
	char hex[GUID_HEX_SIZE], sha[65];
	if (stor_msg_list_range(db, &mb->guid, 1, UINT32_MAX, &msgs, error_r) < 0)
		return -1;
	int ret = 0;
	for (size_t i = 0; i < msgs.count && ret == 0; i++) {
		const struct stor_msg *m = &msgs.items[i];
		struct stor_text_rec rec;
		int r = stor_text_rec_get(db, &m->guid, &rec, error_r);
		if (r <= 0) {
			ret = r < 0 ? -1 : stor_err(db, error_r, "%s: store is corrupted: text of a "
						    "message in %s is missing", db->dir, mb->name);
			break;
		}
		unsigned char md[32];
		if (text_sha256(db, &m->guid, rec.size, md, error_r) < 0) {
			ret = -1;
			break;
		}
		guid_to_hex(&m->guid, hex);
		hex_encode(md, sizeof(md), sha);
		buf_appendf(out, "msg %s uid=%u guid=%s flags=", mb->name, m->uid, hex);
		dump_flags(out, m->flags);
		buf_append_str(out, " keywords=");
		for (size_t j = 0; j < m->keywords.count; j++) {
			if (j > 0)
				buf_append_byte(out, ',');
			buf_append_str(out, m->keywords.items[j]);
		}
		buf_appendf(out, " internaldate=%lld size=%llu sha256=%s\n",
			    (long long)m->internaldate, (unsigned long long)m->size, sha);
	}
	stor_msg_list_free(&msgs);
	if (ret == 0)
		ret = stor_pseen_dump(db, mb, out, error_r);
	return ret;
}

int stor_dump_user(struct stor_db *db, const char *user, struct buf *out, const char **error_r)
{
	stor_mailbox_array mbs;
	stor_string_list subs;
	char hex[GUID_HEX_SIZE];
	if (stor_mailbox_list(db, user, &mbs, error_r) < 0)
		return -1;
	if (stor_subscriptions(db, user, &subs, error_r) < 0) {
		stor_mailbox_list_free(&mbs);
		return -1;
	}
	for (size_t i = 0; i < mbs.count; i++) {
		const struct stor_mailbox *mb = &mbs.items[i];
		guid_to_hex(&mb->guid, hex);
		buf_appendf(out, "mailbox %s guid=%s uidvalidity=%u uidnext=%u special=%s\n",
			    mb->name, hex, mb->uidvalidity, mb->uidnext, mb->special_use);
	}
	for (size_t i = 0; i < subs.count; i++)
		buf_appendf(out, "subscribed %s\n", subs.items[i]);
	int ret = 0;
	for (size_t i = 0; i < mbs.count && ret == 0; i++)
		ret = dump_mailbox_msgs(db, &mbs.items[i], out, error_r);
	stor_string_list_free(&subs);
	stor_mailbox_list_free(&mbs);
	return ret;
}

/* 1 when the key exists, 0 not, -1 error. */
static int key_exists(struct stor_db *db, const struct stor_key *k, const char **error_r)
{
	char *v;
	int ret = stor_db_get(db, k, &v, NULL, error_r);
	if (ret > 0)
		free(v);
	return ret;
}

static int count_prefix(struct stor_db *db, char kind, const struct guid *mailbox, size_t *count_r,
			const char **error_r)
{
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	stor_key_init(&prefix, kind);
	stor_key_guid(&prefix, mailbox);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	size_t n = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		n++;
		leveldb_iter_next(it);
	}
	*count_r = n;
	return stor_iter_end(db, it, error_r);
}

static int check_fail(struct stor_db *db, const char **error_r, const struct stor_mailbox *mb,
		      const char *what)
{
	return stor_err(db, error_r, "%s: mailbox %s of %s is inconsistent: %s", db->dir,
			mb->name, mb->user, what);
}

int stor_mailbox_check(struct stor_db *db, const struct guid *mailbox, const char **error_r)
{
	struct stor_mailbox mb;
	stor_msg_list msgs;
	stor_msg_list changed;
	stor_tombstone_list tombs;
	struct stor_key k;
	int ret = stor_mailbox_get_by_guid(db, mailbox, &mb, error_r);
	if (ret <= 0)
		return ret < 0 ? -1 : stor_err(db, error_r, "mailbox does not exist");
	if (stor_msg_list_range(db, mailbox, 1, UINT32_MAX, &msgs, error_r) < 0) {
		stor_mailbox_free(&mb);
		return -1;
	}
	ret = 0;
	unsigned char digest[16];
	uint32_t unseen = 0;
	memset(digest, 0, sizeof(digest));
	for (size_t i = 0; i < msgs.count && ret == 0; i++) {
		const struct stor_msg *m = &msgs.items[i];
		unsigned char h[16];
		stor_msg_hash(m, h);
		for (int j = 0; j < 16; j++)
			digest[j] ^= h[j];
		if ((m->flags & STOR_FLAG_SEEN) == 0)
			unseen++;
		if (m->uid >= mb.uidnext && mb.uidnext != UINT32_MAX) {
			ret = check_fail(db, error_r, &mb, "a UID is not below UIDNEXT");
			break;
		}
		if (m->modseq > mb.highestmodseq) {
			ret = check_fail(db, error_r, &mb, "a modseq is above HIGHESTMODSEQ");
			break;
		}
		struct stor_text_rec rec;
		int r = stor_text_rec_get(db, &m->guid, &rec, error_r);
		if (r < 0) {
			ret = -1;
			break;
		}
		if (r == 0 || rec.refcount == 0 || rec.size != m->size) {
			ret = check_fail(db, error_r, &mb, "a message text is missing or wrong");
			break;
		}
		stor_key_init(&k, STOR_KEY_MODSEQ);
		stor_key_guid(&k, mailbox);
		stor_key_u64(&k, m->modseq);
		stor_key_u32(&k, m->uid);
		r = key_exists(db, &k, error_r);
		if (r == 0)
			ret = check_fail(db, error_r, &mb, "modseq index entry missing");
		if (r <= 0)
			break;
		stor_key_init(&k, STOR_KEY_GUID);
		stor_key_guid(&k, mailbox);
		stor_key_guid(&k, &m->guid);
		stor_key_u32(&k, m->uid);
		r = key_exists(db, &k, error_r);
		if (r == 0)
			ret = check_fail(db, error_r, &mb, "GUID index entry missing");
		if (r <= 0)
			break;
		stor_key_init(&k, STOR_KEY_TOMB);
		stor_key_guid(&k, mailbox);
		stor_key_u32(&k, m->uid);
		r = key_exists(db, &k, error_r);
		if (r > 0)
			ret = check_fail(db, error_r, &mb, "a message has a tombstone");
		if (r != 0)
			break;
	}
	if (ret == 0 && stor_pseen_check(db, &mb, digest, error_r) < 0)
		ret = -1;
	if (ret == 0 && msgs.count != mb.messages)
		ret = check_fail(db, error_r, &mb, "message count differs");
	if (ret == 0 && unseen != mb.unseen)
		ret = check_fail(db, error_r, &mb, "unseen count differs");
	if (ret == 0 && memcmp(digest, mb.digest, 16) != 0)
		ret = check_fail(db, error_r, &mb, "digest differs");
	size_t n;
	if (ret == 0 && count_prefix(db, STOR_KEY_MODSEQ, mailbox, &n, error_r) < 0)
		ret = -1;
	if (ret == 0 && n != msgs.count)
		ret = check_fail(db, error_r, &mb, "stray modseq index entries");
	if (ret == 0 && count_prefix(db, STOR_KEY_GUID, mailbox, &n, error_r) < 0)
		ret = -1;
	if (ret == 0 && n != msgs.count)
		ret = check_fail(db, error_r, &mb, "stray GUID index entries");
	stor_msg_list_free(&msgs);
	/* Every tombstone is reachable from the modseq index. */
	if (ret == 0 && stor_changes_since(db, mailbox, 0, &changed, &tombs, error_r) < 0)
		ret = -1;
	else if (ret == 0) {
		if (count_prefix(db, STOR_KEY_TOMB, mailbox, &n, error_r) < 0)
			ret = -1;
		else if (n != tombs.count)
			ret = check_fail(db, error_r, &mb, "tombstone index differs");
		for (size_t i = 0; i < tombs.count && ret == 0; i++) {
			if (tombs.items[i].modseq > mb.highestmodseq)
				ret = check_fail(db, error_r, &mb,
						 "a tombstone modseq is above HIGHESTMODSEQ");
			else if (tombs.items[i].uid >= mb.uidnext && mb.uidnext != UINT32_MAX)
				ret = check_fail(db, error_r, &mb, "a tombstone UID is not below UIDNEXT");
		}
		stor_msg_list_free(&changed);
		ARRAY_FREE(&tombs);
	}
	stor_mailbox_free(&mb);
	return ret;
}
