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
	uint32_t *uids;
	if (proto_arg_uids(a, 1000, &uids, &count) == 0)
		free(uids);
	struct proto_flags f;
	if (proto_arg_flags(a, &f) == 0)
		proto_flags_free(&f);
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

/* A SAVE the codec reads is written back by it to a line that reads back
 * to the same values. */
static void save_round_trip(const struct proto_cmd *cmd)
{
	for (int rule = PROTO_SAVE_ASSIGN; rule <= PROTO_SAVE_GIVEN; rule++) {
		struct proto_save s, again;
		const char *error;
		if (proto_read_save(cmd, (enum proto_save_rule)rule, &s, &error) != PROTO_CODEC_OK)
			continue;
		struct buf b = BUF_INIT;
		struct proto_wr w;
		proto_wr_init(&w, &b);
		proto_wr_begin(&w, "C1", "SAVE");
		proto_wr_save(&w, &s);
		proto_wr_end(&w);
		struct proto_parser *p = proto_parser_create(NULL);
		size_t used;
		const struct proto_cmd *line;
		if (proto_parser_parse(p, b.data, b.len, &used, &line) != 1 || used != b.len ||
		    proto_read_save(line, (enum proto_save_rule)rule, &again, &error) !=
			    PROTO_CODEC_OK)
			abort();
		if (again.date != s.date || again.tz != s.tz || again.uid != s.uid ||
		    again.modseq != s.modseq || !guid_equal(&again.guid, &s.guid) ||
		    again.f.flags != s.f.flags || again.f.keywords.count != s.f.keywords.count ||
		    (again.text == NULL) != (s.text == NULL) || again.text_len != s.text_len ||
		    (s.text != NULL && memcmp(again.text, s.text, s.text_len) != 0))
			abort();
		for (size_t i = 0; i < s.f.keywords.count; i++) {
			if (strcmp(again.f.keywords.items[i], s.f.keywords.items[i]) != 0)
				abort();
		}
		proto_save_free(&again);
		proto_parser_destroy(&p);
		buf_free(&b);
		proto_save_free(&s);
	}
}

/* Likewise for a STORE. */
static void store_round_trip(const struct proto_cmd *cmd)
{
	for (int rule = PROTO_STORE_REQUEST; rule <= PROTO_STORE_GIVEN; rule++) {
		struct proto_store s, again;
		const char *error;
		if (proto_read_store(cmd, (enum proto_store_rule)rule, 1000, &s, &error) !=
		    PROTO_CODEC_OK)
			continue;
		struct buf b = BUF_INIT;
		struct proto_wr w;
		proto_wr_init(&w, &b);
		proto_wr_begin(&w, "C1", "STORE");
		proto_wr_store(&w, &s);
		proto_wr_end(&w);
		struct proto_parser *p = proto_parser_create(NULL);
		size_t used;
		const struct proto_cmd *line;
		if (proto_parser_parse(p, b.data, b.len, &used, &line) != 1 || used != b.len ||
		    proto_read_store(line, (enum proto_store_rule)rule, 1000, &again, &error) !=
			    PROTO_CODEC_OK)
			abort();
		/* The writer sorts and merges the set. */
		if (again.modseq != s.modseq || again.replace != s.replace ||
		    again.add.flags != s.add.flags || again.rm.flags != s.rm.flags ||
		    again.add.keywords.count != s.add.keywords.count ||
		    again.rm.keywords.count != s.rm.keywords.count || again.uid_count > s.uid_count)
			abort();
		proto_store_free(&again);
		proto_parser_destroy(&p);
		buf_free(&b);
		proto_store_free(&s);
	}
}

/* And for an EXPUNGE. */
static void expunge_round_trip(const struct proto_cmd *cmd)
{
	for (int rule = PROTO_EXPUNGE_REQUEST; rule <= PROTO_EXPUNGE_GIVEN; rule++) {
		struct proto_expunge e, again;
		const char *error;
		if (proto_read_expunge(cmd, (enum proto_expunge_rule)rule, 1000, &e, &error) !=
		    PROTO_CODEC_OK)
			continue;
		struct buf b = BUF_INIT;
		struct proto_wr w;
		proto_wr_init(&w, &b);
		proto_wr_begin(&w, "C1", "EXPUNGE");
		proto_wr_expunge(&w, &e);
		proto_wr_end(&w);
		struct proto_parser *p = proto_parser_create(NULL);
		size_t used;
		const struct proto_cmd *line;
		if (proto_parser_parse(p, b.data, b.len, &used, &line) != 1 || used != b.len ||
		    proto_read_expunge(line, (enum proto_expunge_rule)rule, 1000, &again, &error) !=
			    PROTO_CODEC_OK ||
		    again.modseq != e.modseq || again.uid_count > e.uid_count)
			abort();
		proto_expunge_free(&again);
		proto_parser_destroy(&p);
		buf_free(&b);
		proto_expunge_free(&e);
	}
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
				save_round_trip(cmd);
				store_round_trip(cmd);
				expunge_round_trip(cmd);
				struct proto_flags_line fl;
				if (proto_read_flags_line(cmd, &fl, &error) == PROTO_CODEC_OK)
					proto_flags_free(&fl.f);
			}
			else if (pos != end)
				abort();
		}
	}
out:
	proto_parser_destroy(&p);
	return 0;
}
