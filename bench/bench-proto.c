/* Throughput of the replication protocol codec (SPEC.md): writing and
 * parsing a stream of SAVE commands with 4 KiB message texts, plain and
 * through DEFLATE as a compressed link does it, beside memcpy() of the same
 * bytes measured in the same run (copied chunk by chunk into one cache-sized
 * buffer, which is what the parser's literal copies amount to).
 *
 *   bench-proto [COMMANDS]     (default 16384, about 68 MB of stream)
 *
 * Each figure is the best of three rounds, in MB/s of uncompressed stream
 * (1 MB = 10^6 bytes).  The goal is parsing at least half as fast as memcpy. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "lib/buf.h"
#include "lib/clock.h"
#include "lib/guid.h"
#include "lib/xalloc.h"
#include "protocol/protocol.h"

#define TEXT_SIZE 4096
#define CHUNK 65536
#define ROUNDS 3

static volatile size_t sink;

static void make_text(char *text, unsigned seed)
{
	static const char *const words[] = { "mail ", "the ", "replication ", "of ", "Subject: ",
					     "and ", "message\r\n", "Starling ", "node ", "42 " };
	size_t n = 0;
	while (n < TEXT_SIZE) {
		seed = seed * 1103515245u + 12345u;
		const char *w = words[(seed >> 16) % 10];
		size_t l = strlen(w);
		if (n + l > TEXT_SIZE)
			l = TEXT_SIZE - n;
		memcpy(text + n, w, l);
		n += l;
	}
}

static void write_stream(struct buf *out, char **texts, size_t ntexts, size_t count)
{
	struct proto_wr w;
	struct guid g;
	memset(&g, 0x5a, sizeof(g));
	proto_wr_init(&w, out);
	char tag[24];
	for (size_t i = 0; i < count; i++) {
		snprintf(tag, sizeof(tag), "C%zu", i + 1);
		proto_wr_begin(&w, tag, "SAVE");
		proto_wr_date(&w, 1700000000 + (int64_t)i, 60);
		proto_wr_u64(&w, i + 1);
		proto_wr_u64(&w, 1000 + i);
		proto_wr_guid(&w, &g);
		proto_wr_list_begin(&w);
		proto_wr_atom(&w, "\\Seen");
		proto_wr_atom(&w, "$Label1");
		proto_wr_list_end(&w);
		proto_wr_literal(&w, texts[i % ntexts], TEXT_SIZE);
		proto_wr_end(&w);
	}
}

static size_t parse_stream(const unsigned char *data, size_t len)
{
	struct proto_parser *p = proto_parser_create(NULL);
	size_t cmds = 0;
	for (size_t pos = 0; pos < len;) {
		size_t end = pos + CHUNK < len ? pos + CHUNK : len;
		while (pos < end) {
			size_t used;
			const struct proto_cmd *cmd;
			int r = proto_parser_parse(p, data + pos, end - pos, &used, &cmd);
			pos += used;
			if (r < 0) {
				fprintf(stderr, "bench-proto: parse error\n");
				exit(1);
			}
			if (r == 1) {
				cmds++;
				sink += cmd->args[cmd->arg_count - 1].len;
			}
		}
	}
	proto_parser_destroy(&p);
	return cmds;
}

/* Deflates in CHUNK pieces with a sync flush each, like a link does. */
static void deflate_stream(const unsigned char *data, size_t len, struct buf *out)
{
	z_stream z;
	memset(&z, 0, sizeof(z));
	if (deflateInit2(&z, 1, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
		exit(1);
	for (size_t pos = 0; pos < len; pos += CHUNK) {
		size_t n = len - pos < CHUNK ? len - pos : CHUNK;
		z.next_in = (unsigned char *)data + pos;
		z.avail_in = (uInt)n;
		do {
			unsigned char *dst = buf_reserve(out, CHUNK + 1024);
			z.next_out = dst;
			z.avail_out = CHUNK + 1024;
			deflate(&z, Z_SYNC_FLUSH);
			buf_commit(out, CHUNK + 1024 - z.avail_out);
		} while (z.avail_in > 0 || z.avail_out == 0);
	}
	deflateEnd(&z);
}

static size_t inflate_parse_stream(const unsigned char *data, size_t len)
{
	z_stream z;
	memset(&z, 0, sizeof(z));
	if (inflateInit2(&z, -15) != Z_OK)
		exit(1);
	struct proto_parser *p = proto_parser_create(NULL);
	unsigned char *tmp = xmalloc(CHUNK);
	size_t cmds = 0;
	z.next_in = (unsigned char *)data;
	z.avail_in = (uInt)len;
	for (;;) {
		z.next_out = tmp;
		z.avail_out = CHUNK;
		int r = inflate(&z, Z_SYNC_FLUSH);
		size_t n = CHUNK - z.avail_out;
		for (size_t pos = 0; pos < n;) {
			size_t used;
			const struct proto_cmd *cmd;
			if (proto_parser_parse(p, tmp + pos, n - pos, &used, &cmd) == 1)
				cmds++;
			pos += used;
		}
		if ((r != Z_OK && r != Z_BUF_ERROR) || (n == 0 && z.avail_in == 0))
			break;
	}
	free(tmp);
	proto_parser_destroy(&p);
	inflateEnd(&z);
	return cmds;
}

static double mbps(size_t bytes, uint64_t us)
{
	return us == 0 ? 0 : (double)bytes / (double)us;
}

int main(int argc, char **argv)
{
	size_t count = argc > 1 ? strtoul(argv[1], NULL, 10) : 16384;
	if (count == 0)
		count = 1;
	char *texts[16];
	for (unsigned i = 0; i < 16; i++) {
		texts[i] = xmalloc(TEXT_SIZE);
		make_text(texts[i], i + 1);
	}
	struct buf stream = BUF_INIT, z = BUF_INIT;
	write_stream(&stream, texts, 16, count);
	size_t len = stream.len;
	unsigned char *copy = xmalloc(CHUNK);
	memset(copy, 0, CHUNK);

	uint64_t best_memcpy = UINT64_MAX, best_write = UINT64_MAX, best_parse = UINT64_MAX;
	uint64_t best_zwrite = UINT64_MAX, best_zparse = UINT64_MAX;
	size_t zlen = 0;
	/* Output buffers are allocated and touched once, so that page faults
	 * (very expensive in some VMs) are not counted as codec time. */
	struct buf out = BUF_INIT;
	memset(buf_reserve(&out, len), 0, len);
	memset(buf_reserve(&z, len), 0, len);
	for (int round = 0; round < ROUNDS; round++) {
		uint64_t t0 = clock_mono_us();
		/* The same reads as the parser: every byte of the stream, in
		 * CHUNK pieces, into a destination that stays in cache, as
		 * the parser's literal buffers do. */
		for (size_t pos = 0; pos < len; pos += CHUNK) {
			memcpy(copy, stream.data + pos, len - pos < CHUNK ? len - pos : CHUNK);
			sink += copy[pos % CHUNK];
		}
		uint64_t t1 = clock_mono_us();
		if (t1 - t0 < best_memcpy)
			best_memcpy = t1 - t0;

		buf_reset(&out);
		t0 = clock_mono_us();
		write_stream(&out, texts, 16, count);
		t1 = clock_mono_us();
		if (out.len != len)
			return 1;
		if (t1 - t0 < best_write)
			best_write = t1 - t0;

		t0 = clock_mono_us();
		size_t cmds = parse_stream(stream.data, len);
		t1 = clock_mono_us();
		if (cmds != count) {
			fprintf(stderr, "bench-proto: parsed %zu of %zu\n", cmds, count);
			return 1;
		}
		if (t1 - t0 < best_parse)
			best_parse = t1 - t0;

		/* Compressed: write + deflate, then inflate + parse. */
		buf_reset(&out);
		buf_reset(&z);
		t0 = clock_mono_us();
		write_stream(&out, texts, 16, count);
		deflate_stream(out.data, out.len, &z);
		t1 = clock_mono_us();
		if (t1 - t0 < best_zwrite)
			best_zwrite = t1 - t0;
		zlen = z.len;
		t0 = clock_mono_us();
		cmds = inflate_parse_stream(z.data, z.len);
		t1 = clock_mono_us();
		if (cmds != count) {
			fprintf(stderr, "bench-proto: compressed parse got %zu of %zu\n", cmds, count);
			return 1;
		}
		if (t1 - t0 < best_zparse)
			best_zparse = t1 - t0;
	}
	printf("stream: %zu SAVE commands, %zu bytes (4 KiB texts), deflated to %zu bytes\n",
	       count, len, zlen);
	printf("memcpy                 %8.1f MB/s\n", mbps(len, best_memcpy));
	printf("write                  %8.1f MB/s\n", mbps(len, best_write));
	printf("parse                  %8.1f MB/s  (%.2f x memcpy)\n", mbps(len, best_parse),
	       (double)best_memcpy / (double)best_parse);
	printf("write+deflate          %8.1f MB/s\n", mbps(len, best_zwrite));
	printf("inflate+parse          %8.1f MB/s\n", mbps(len, best_zparse));
	for (unsigned i = 0; i < 16; i++)
		free(texts[i]);
	free(copy);
	buf_free(&out);
	buf_free(&stream);
	buf_free(&z);
	return 0;
}
