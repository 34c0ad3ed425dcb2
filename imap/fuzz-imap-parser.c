/* libFuzzer harness for the IMAP command parser.
 *
 * The input is fed in pieces whose sizes come from the input itself, under
 * both the pre-authentication and the authenticated limits, acting on each
 * result as the server does (reset after a command, continue after a
 * continuation, stop after a fatal error).  Every token of a parsed
 * command is walked so that the sanitizers see any bad pointer or length. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "imap/imap-parser.h"
#include "imap/imap-seqset.h"
#include "lib/arr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t walk(const struct imap_arg *args, size_t count)
{
	size_t sum = 0;
	for (size_t i = 0; i < count; i++) {
		if (args[i].type == IMAP_ARG_LIST) {
			sum += walk(args[i].list, args[i].count);
			continue;
		}
		for (size_t k = 0; k < args[i].len; k++)
			sum += (unsigned char)args[i].str[k];
		if (args[i].str[args[i].len] != '\0')
			__builtin_trap();
		if (args[i].type == IMAP_ARG_ATOM) {
			imap_seqset set = ARRAY_INIT;
			if (imap_seqset_parse(args[i].str, &set) == 0) {
				imap_seqset_resolve(&set, 1000);
				sum += imap_seqset_contains(&set, 7);
			}
			ARRAY_FREE(&set);
		}
	}
	return sum;
}

static void run(const uint8_t *data, size_t size, const struct imap_parser_limits *limits)
{
	struct imap_parser *p = imap_parser_create(limits);
	size_t pos = 0, step = 1;
	volatile size_t sink = 0;
	while (pos < size) {
		size_t n = size - pos < step ? size - pos : step;
		size_t used = 0;
		enum imap_parse_result r = imap_parser_feed(p, data + pos, n, &used);
		if (used > n)
			__builtin_trap();
		pos += used;
		/* Vary the chunk size with the data seen. */
		step = 1 + (data[pos > 0 ? pos - 1 : 0] % 64);
		if (r == IMAP_PARSE_DONE) {
			const struct imap_command *c = imap_parser_command(p);
			sink += strlen(c->tag) + strlen(c->name) + walk(c->args, c->count);
			imap_parser_reset(p);
		} else if (r == IMAP_PARSE_BAD) {
			sink += strlen(imap_parser_tag(p)) + strlen(imap_parser_error(p));
		} else if (r == IMAP_PARSE_FATAL) {
			break;
		} else if (r == IMAP_PARSE_MORE && used < n) {
			__builtin_trap();
		}
	}
	(void)sink;
	imap_parser_destroy(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct imap_parser_limits preauth = {
		.max_line = 256, .max_literal = 64, .max_total = 1024, .max_args = 16, .max_depth = 2,
	};
	static const struct imap_parser_limits auth = {
		.max_line = 4096, .max_literal = 65536, .max_total = 1 << 20, .max_args = 1000,
		.max_depth = 16,
	};
	run(data, size, &preauth);
	run(data, size, &auth);
	return 0;
}
