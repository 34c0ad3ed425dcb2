/* Growable byte buffers: see buf.h. */
#include "lib/buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"

void buf_init(struct buf *b)
{
	b->data = NULL;
	b->len = b->rpos = b->cap = 0;
}

void buf_free(struct buf *b)
{
	free(b->data);
	buf_init(b);
}

void buf_reset(struct buf *b)
{
	b->len = b->rpos = 0;
	if (b->data != NULL)
		b->data[0] = '\0';
}

unsigned char *buf_reserve(struct buf *b, size_t n)
{
	/* Reclaim consumed space before growing, so a long-lived connection
	 * buffer stays as small as its largest unread backlog. */
	if (b->rpos > 0 && (b->rpos == b->len || b->rpos >= b->cap / 2))
		buf_compact(b);
	/* +1 keeps room for the terminating NUL. */
	if (n > SIZE_MAX / 2 - b->len)
		xreallocarray(NULL, SIZE_MAX, 1); /* dies with a message */
	size_t need = b->len + n + 1;
	if (need > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap < need)
			cap *= 2;
		b->data = xreallocarray(b->data, cap, 1);
		b->cap = cap;
	}
	return b->data + b->len;
}

void buf_commit(struct buf *b, size_t n)
{
	b->len += n;
	b->data[b->len] = '\0';
}

void buf_append(struct buf *b, const void *p, size_t n)
{
	unsigned char *dst = buf_reserve(b, n);
	if (n > 0)
		memcpy(dst, p, n);
	buf_commit(b, n);
}

void buf_append_str(struct buf *b, const char *s)
{
	buf_append(b, s, strlen(s));
}

void buf_append_byte(struct buf *b, unsigned char c)
{
	buf_append(b, &c, 1);
}

void buf_append_quoted(struct buf *b, const void *s, size_t len)
{
	const unsigned char *p = s;
	unsigned char *dst = buf_reserve(b, 2 * len + 2);
	size_t n = 0;
	dst[n++] = '"';
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '"' || p[i] == '\\')
			dst[n++] = '\\';
		dst[n++] = p[i];
	}
	dst[n++] = '"';
	buf_commit(b, n);
}

void buf_vappendf(struct buf *b, const char *fmt, va_list ap)
{
	va_list ap2;
	va_copy(ap2, ap);
	char small[256];
	int n = vsnprintf(small, sizeof(small), fmt, ap);
	if (n < 0) {
		va_end(ap2);
		return;
	}
	if ((size_t)n < sizeof(small)) {
		buf_append(b, small, (size_t)n);
	} else {
		unsigned char *dst = buf_reserve(b, (size_t)n);
		vsnprintf((char *)dst, (size_t)n + 1, fmt, ap2);
		buf_commit(b, (size_t)n);
	}
	va_end(ap2);
}

void buf_appendf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	buf_vappendf(b, fmt, ap);
	va_end(ap);
}

void buf_append_be32(struct buf *b, uint32_t v)
{
	unsigned char p[4] = { v >> 24, v >> 16, v >> 8, v };
	buf_append(b, p, 4);
}

void buf_append_be64(struct buf *b, uint64_t v)
{
	buf_append_be32(b, (uint32_t)(v >> 32));
	buf_append_be32(b, (uint32_t)v);
}

void buf_consume(struct buf *b, size_t n)
{
	if (n > buf_avail(b))
		n = buf_avail(b);
	b->rpos += n;
	if (b->rpos == b->len)
		buf_reset(b);
}

void buf_truncate(struct buf *b, size_t avail)
{
	if (avail >= buf_avail(b))
		return;
	b->len = b->rpos + avail;
	b->data[b->len] = '\0';
}

void buf_compact(struct buf *b)
{
	if (b->rpos == 0)
		return;
	memmove(b->data, b->data + b->rpos, b->len - b->rpos);
	b->len -= b->rpos;
	b->rpos = 0;
	b->data[b->len] = '\0';
}

char *buf_getline(struct buf *b, size_t *len_r)
{
	if (buf_avail(b) == 0)
		return NULL;
	unsigned char *start = b->data + b->rpos;
	unsigned char *lf = memchr(start, '\n', buf_avail(b));
	if (lf == NULL)
		return NULL;
	size_t len = (size_t)(lf - start);
	b->rpos += len + 1;
	if (len > 0 && start[len - 1] == '\r')
		len--;
	start[len] = '\0';
	*len_r = len;
	/* Don't reset here even if everything was read: the caller still
	 * holds a pointer into data. The next append compacts lazily. */
	return (char *)start;
}

unsigned char *buf_steal(struct buf *b, size_t *len_r)
{
	buf_compact(b);
	if (b->data == NULL)
		buf_reserve(b, 0);
	unsigned char *p = b->data;
	if (len_r != NULL)
		*len_r = b->len;
	buf_init(b);
	return p;
}

const char *buf_cstr(struct buf *b)
{
	if (b->data == NULL)
		return "";
	return (const char *)b->data + b->rpos;
}
