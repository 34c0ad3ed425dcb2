/* Texts read in place (stor_text_map, storage.h): the journal segments
 * mapped read-only, each chunk checked against its record's CRC where it
 * lies, and handed out as pieces that point into the mapping.  A FETCH of
 * a whole text then sends it from the page cache without first copying it
 * into the connection's buffer (the copy a pread makes was a quarter of
 * starlingd's CPU per fetched body).
 *
 * A mapping covers its segment as long as the file was when it was made;
 * one that does not reach a chunk is replaced (pieces keep the old one
 * alive: each holds a reference, the cache one more).  Segments only grow
 * while mapped (a failed write cuts the file back to what was written
 * before, never below a record already read), and a deleted segment is
 * unlinked, which leaves its mappings readable, so a piece stays valid
 * until it is released.  Pages are brought in with MADV_POPULATE_READ
 * before the CRC reads them: a read error then fails that call (and the
 * caller falls back to stor_text_read, which reports it) instead of
 * raising SIGBUS. */
#include "storage/storage-private.h"
#include "storage/storage-journal-private.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/xalloc.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

#define JNL_MAPS 8

struct stor_jnl_map {
	unsigned char *base;
	size_t len;
	unsigned refs;
};

struct jnl_map_slot {
	uint32_t seg; /* 0: empty */
	struct stor_jnl_map *map;
};

struct jnl_maps {
	struct jnl_map_slot slot[JNL_MAPS];
	unsigned next;
	long page;
	bool unsupported; /* MADV_POPULATE_READ refused: read with pread */
};

static void map_unref(struct stor_jnl_map *m)
{
	if (m == NULL || --m->refs > 0)
		return;
	if (m->len > 0)
		munmap(m->base, m->len);
	free(m);
}

void stor_text_pieces_free(stor_text_piece_list *l)
{
	for (size_t i = 0; i < l->count; i++)
		map_unref(l->items[i].map);
	ARRAY_FREE(l);
}

void stor_text_piece_release(struct stor_text_piece *p)
{
	map_unref(p->map);
	p->map = NULL;
}

void stor_jnl_maps_forget(struct stor_journal *j, uint32_t seg)
{
	struct jnl_maps *ms = j->maps;
	if (ms == NULL)
		return;
	for (unsigned i = 0; i < JNL_MAPS; i++) {
		if (ms->slot[i].map != NULL && (seg == 0 || ms->slot[i].seg == seg)) {
			map_unref(ms->slot[i].map);
			ms->slot[i].map = NULL;
			ms->slot[i].seg = 0;
		}
	}
	if (seg == 0) {
		free(ms);
		j->maps = NULL;
	}
}

/* A mapping of seg that reaches end, or NULL (with errno) */
static struct stor_jnl_map *map_get(struct stor_db *db, uint32_t seg, uint64_t end,
				    const char **error_r)
{
	struct stor_journal *j = db->jnl;
	struct jnl_maps *ms = j->maps;
	struct jnl_map_slot *slot = NULL;
	for (unsigned i = 0; i < JNL_MAPS; i++) {
		if (ms->slot[i].map != NULL && ms->slot[i].seg == seg) {
			if (ms->slot[i].map->len >= end)
				return ms->slot[i].map;
			slot = &ms->slot[i];
			break;
		}
	}
	int fd = seg_read_fd(db, seg, error_r);
	if (fd < 0)
		return NULL;
	struct stat st;
	if (fstat(fd, &st) < 0 || (uint64_t)st.st_size < end)
		return NULL;
	void *base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED)
		return NULL;
	struct stor_jnl_map *m = xcalloc(1, sizeof(*m));
	m->base = base;
	m->len = (size_t)st.st_size;
	m->refs = 1; /* the cache's */
	if (slot == NULL)
		slot = &ms->slot[ms->next++ % JNL_MAPS];
	map_unref(slot->map);
	slot->seg = seg;
	slot->map = m;
	return m;
}

int stor_text_map(struct stor_db *db, const struct guid *guid, uint64_t offset, uint64_t len,
		  stor_text_piece_list *out, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	if (j->maps == NULL) {
		j->maps = xcalloc(1, sizeof(*j->maps));
		j->maps->page = sysconf(_SC_PAGESIZE);
		if (j->maps->page <= 0)
			j->maps->unsupported = true;
	}
	struct jnl_maps *ms = j->maps;
	if (ms->unsupported)
		return 1;
	struct stor_text_rec rec;
	stor_extent_list ext = ARRAY_INIT;
	int ret = stor_text_get(db, guid, &rec, &ext, error_r);
	if (ret <= 0)
		return ret < 0 ? -1 : stor_err(db, error_r, "message text is not in the store");
	ret = 0;
	if (offset < rec.size && len > rec.size - offset)
		len = rec.size - offset;
	uint64_t end = offset + len, pos = 0;
	for (size_t i = 0; i < ext.count && ret == 0 && pos < end && offset < rec.size; i++) {
		const struct stor_extent *e = &ext.items[i];
		uint64_t clen = e->len;
		if (pos + clen > offset) {
			uint64_t from = offset > pos ? offset - pos : 0;
			uint64_t to = end - pos < clen ? end - pos : clen;
			uint64_t rend = e->off + JNL_HDR + JNL_TEXT_HDR + clen;
			if (e->seg == j->seg && e->off + text_record_size(e->len) > j->end &&
			    flush_pending(db, error_r) < 0) {
				ret = -1;
				break;
			}
			struct stor_jnl_map *m = map_get(db, e->seg, rend, error_r);
			if (m == NULL) {
				ret = 1;
				break;
			}
			uint64_t pstart = e->off - e->off % (uint64_t)ms->page;
			if (madvise(m->base + pstart, (size_t)(rend - pstart), MADV_POPULATE_READ) < 0) {
				if (errno == EINVAL)
					ms->unsupported = true;
				ret = 1;
				break;
			}
			const unsigned char *hdr = m->base + e->off;
			const unsigned char *data = hdr + JNL_HDR + JNL_TEXT_HDR;
			if (get_le32(hdr + 4) != JNL_TEXT_HDR + clen || hdr[8] != JNL_REC_TEXT ||
			    crc32c(crc32c(crc32c(0, hdr + 4, 5), hdr + JNL_HDR, JNL_TEXT_HDR), data,
				   clen) != get_le32(hdr) ||
			    memcmp(hdr + JNL_HDR, guid->b, GUID_SIZE) != 0 ||
			    get_le32(hdr + JNL_HDR + GUID_SIZE) != (uint32_t)i) {
				/* stor_text_read says what is wrong */
				ret = 1;
				break;
			}
			if (to > from) {
				struct stor_text_piece p = { data + from, (size_t)(to - from), m };
				m->refs++;
				ARRAY_PUSH(out, p);
			}
		}
		pos += clen;
	}
	ARRAY_FREE(&ext);
	if (ret != 0) {
		for (size_t i = 0; i < out->count; i++)
			map_unref(out->items[i].map);
		out->count = 0;
	}
	return ret;
}
