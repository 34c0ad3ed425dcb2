/* Growable byte buffers with a read position.
 *
 * A buffer holds bytes [rpos, len) of data; writers append at len, readers
 * consume from rpos.  data is always NUL-terminated one past len so that a
 * buffer holding text can be handed to C string functions, but it may also
 * contain NULs.  The public fields are read-only for users: change them only
 * through the functions below. */
#ifndef LIB_BUF_H
#define LIB_BUF_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf {
	unsigned char *data;
	size_t len;  /* bytes written */
	size_t rpos; /* bytes consumed by the reader */
	size_t cap;
};

#define BUF_INIT { NULL, 0, 0, 0 }

void buf_init(struct buf *b);
/* Frees the bytes; the buffer can be reused after buf_init(). */
void buf_free(struct buf *b);
/* Forgets all content but keeps the allocation. */
void buf_reset(struct buf *b);

/* Makes room for n more bytes after len and returns where they go. */
unsigned char *buf_reserve(struct buf *b, size_t n);
/* Declares n bytes written at the pointer buf_reserve() returned. */
void buf_commit(struct buf *b, size_t n);

void buf_append(struct buf *b, const void *p, size_t n);
void buf_append_str(struct buf *b, const char *s);
void buf_append_byte(struct buf *b, unsigned char c);
/* s[0..len) as a quoted string, '"' and '\\' escaped by a backslash (the
 * quoted strings of IMAP and of the replication protocol).  The caller
 * makes sure s has no byte the grammar at hand forbids (CR, LF, NUL). */
void buf_append_quoted(struct buf *b, const void *s, size_t len);
void buf_appendf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_vappendf(struct buf *b, const char *fmt, va_list ap);
/* Big-endian integers, as used in storage keys. */
void buf_append_be32(struct buf *b, uint32_t v);
void buf_append_be64(struct buf *b, uint64_t v);

/* Unread bytes. */
static inline size_t buf_avail(const struct buf *b) { return b->len - b->rpos; }
static inline const unsigned char *buf_rptr(const struct buf *b) { return b->data + b->rpos; }
/* Marks n unread bytes as consumed; compacts when everything was read. */
void buf_consume(struct buf *b, size_t n);
/* Drops the unread bytes past the first avail (a writer taking back what
 * it appended since buf_avail() was avail). */
void buf_truncate(struct buf *b, size_t avail);
/* Moves unread bytes to the front, reclaiming consumed space. */
void buf_compact(struct buf *b);

/* Returns the next line without its LF (and without a CR before it),
 * NUL-terminated in place, and consumes it; *len_r gets its length.
 * Returns NULL when no complete line has arrived. The pointer stays valid
 * until the next call that modifies the buffer. */
char *buf_getline(struct buf *b, size_t *len_r);

/* Takes the bytes out of the buffer: the caller frees the result (which is
 * NUL-terminated); the buffer is left empty.  len_r may be NULL. */
unsigned char *buf_steal(struct buf *b, size_t *len_r);

/* Returns the content as a C string (empty string for an empty buffer). */
const char *buf_cstr(struct buf *b);

#endif
