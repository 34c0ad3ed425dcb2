/* libFuzzer harness for the protocol parser.
 *
 * The input is fed in pieces whose sizes come from the input's first byte,
 * with small limits so every limit path is reachable.  Each parsed line is
 * written back with the writer and parsed again: the second parse must
 * succeed, which checks that the writer only produces what the parser
 * accepts.  Typed accessors run on every argument, and the command table
 * validator on every line. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "protocol/protocol.h"

/* Every accessor on every argument, nested ones included. */
static void probe(const struct proto_arg *a)
{
	uint64_t v;
	struct guid g;
	int64_t secs;
	int tz;
	(void)proto_arg_u64(a, UINT64_MAX, &v);
	(void)proto_arg_guid(a, &g);
	(void)proto_arg_date(a, &secs, &tz);
	struct proto_uid_range *r;
	size_t count;
	if (proto_arg_uidset(a, 100, 64, &r, &count) == 0)
		free(r);
	if (a->type == PROTO_ARG_LIST)
		for (size_t i = 0; i < a->count; i++)
			probe(&a->list[i]);
}

static void write_args(struct proto_wr *w, const struct proto_arg *args, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		probe(&args[i]);
		proto_wr_arg(w, &args[i]);
	}
}

static void reparse(const struct proto_cmd *cmd, const struct proto_parser_settings *set)
{
	if (proto_cmd_is_status(cmd))
		return; /* the code is free text to the writer */
	struct buf b = BUF_INIT;
	struct proto_wr w;
	proto_wr_init(&w, &b);
	proto_wr_begin(&w, cmd->tag, cmd->name);
	write_args(&w, cmd->args, cmd->arg_count);
	proto_wr_end(&w);
	struct proto_parser_settings big = *set;
	big.max_line = b.len + 16;
	struct proto_parser *p = proto_parser_create(&big);
	size_t used;
	const struct proto_cmd *again;
	if (proto_parser_parse(p, b.data, b.len, &used, &again) != 1 || used != b.len ||
	    again->arg_count != cmd->arg_count)
		abort();
	proto_parser_destroy(&p);
	buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t step = (size_t)(data[0] % 17) + 1;
	data++;
	size--;
	struct proto_parser_settings set = {
		.max_line = 512, .max_literal = 4096, .max_args = 64, .max_depth = 4,
	};
	struct proto_parser *p = proto_parser_create(&set);
	size_t pos = 0;
	while (pos < size) {
		size_t end = pos + step < size ? pos + step : size;
		while (pos < end) {
			size_t used;
			const struct proto_cmd *cmd;
			int r = proto_parser_parse(p, data + pos, end - pos, &used, &cmd);
			if (used > end - pos)
				abort();
			pos += used;
			if (r < 0) {
				const char *code, *text;
				if (proto_parser_get_error(p, &code, &text) == PROTO_PARSE_OK)
					abort();
				goto out;
			}
			if (r == 1) {
				size_t npos;
				const char *error;
				if (proto_cmd_validate(cmd, &npos, &error) == 0 && npos > cmd->arg_count)
					abort();
				reparse(cmd, &set);
			}
			else if (pos != end)
				abort();
		}
	}
out:
	proto_parser_destroy(&p);
	return 0;
}
