/* Incremental, bounded parser for IMAP client commands (RFC 3501 section 9).
 *
 * The connection feeds whatever bytes arrived; the parser frames one whole
 * command (its lines and the literals between them), answering "need more",
 * "send a continuation" (a synchronizing literal is announced), "complete"
 * or an error.  Only when the command is complete is it tokenized into an
 * argument tree.  Every size is bounded before anything is allocated: line
 * length, literal size, total command size, argument count, nesting depth.
 *
 * Tokens: atoms (which may contain a bracketed section, so that
 * `BODY[HEADER.FIELDS (From)]<0.10>` is one atom), quoted strings, literals
 * ({N} synchronizing, {N+} non-synchronizing, either one as a literal8
 * ~{N} of RFC 3516) and parenthesised lists.  The
 * command name is uppercased; everything else is kept as sent. */
#ifndef IMAP_IMAP_PARSER_H
#define IMAP_IMAP_PARSER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum imap_arg_type {
	IMAP_ARG_ATOM,
	IMAP_ARG_STRING,  /* quoted */
	IMAP_ARG_LITERAL,
	IMAP_ARG_LIST,
};

struct imap_arg {
	enum imap_arg_type type;
	/* ATOM, STRING, LITERAL: the bytes, NUL-terminated (a literal may also
	 * contain NULs; len is authoritative). */
	const char *str;
	size_t len;
	/* LITERAL: sent as a literal8, ~{N} (RFC 3516: may hold any octet). */
	bool literal8;
	/* LIST: the elements. */
	const struct imap_arg *list;
	size_t count;
};

struct imap_command {
	const char *tag;
	const char *name;  /* uppercased */
	const struct imap_arg *args;
	size_t count;
};

struct imap_parser_limits {
	size_t max_line;        /* bytes of one line, without CRLF */
	uint64_t max_literal;   /* bytes of one literal */
	uint64_t max_total;     /* bytes of the whole command */
	size_t max_args;        /* tokens in the whole command */
	unsigned max_depth;     /* list nesting */
};

enum imap_parse_result {
	IMAP_PARSE_MORE,      /* everything given was consumed; feed more */
	IMAP_PARSE_CONTINUE,  /* send "+ OK" continuation, then feed more */
	IMAP_PARSE_DONE,      /* a command is complete: imap_parser_command() */
	IMAP_PARSE_BAD,       /* a malformed command was consumed and dropped:
				 reply BAD with imap_parser_tag() and
				 imap_parser_error(); the parser is reset */
	IMAP_PARSE_FATAL,     /* the stream cannot be resynchronised (a
				 non-synchronizing literal over the limit):
				 reply BYE and close */
};

struct imap_parser;

struct imap_parser *imap_parser_create(const struct imap_parser_limits *limits);
void imap_parser_destroy(struct imap_parser **p);
/* Takes effect for the next command. */
void imap_parser_set_limits(struct imap_parser *p, const struct imap_parser_limits *limits);

/* Consumes up to len bytes of data (*used_r says how many) and reports
 * progress.  Stops right after a complete or rejected command so that the
 * caller can act before feeding the rest. */
enum imap_parse_result imap_parser_feed(struct imap_parser *p, const unsigned char *data,
					size_t len, size_t *used_r);

/* After IMAP_PARSE_DONE: the command, valid until imap_parser_reset() or
 * the next feed. */
const struct imap_command *imap_parser_command(const struct imap_parser *p);
/* After IMAP_PARSE_BAD/FATAL: a reason for humans, and the tag if one could
 * be read ("*" otherwise).  Valid until the next feed. */
const char *imap_parser_error(const struct imap_parser *p);
const char *imap_parser_tag(const struct imap_parser *p);

/* Drops the current command and its memory; called after handling one. */
void imap_parser_reset(struct imap_parser *p);

/* True while a command is partly received (a line or literal is pending). */
bool imap_parser_busy(const struct imap_parser *p);

/* Helpers for handlers. */
/* An atom, quoted string or literal (an IMAP astring); false for lists. */
bool imap_arg_is_string(const struct imap_arg *arg);
/* An atom equal to word, case-insensitively. */
bool imap_arg_atom_eq(const struct imap_arg *arg, const char *word);

#endif
