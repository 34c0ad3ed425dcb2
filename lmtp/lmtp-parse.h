/* LMTP (RFC 2033) parsing without I/O, so it can be tested on its own:
 * command lines, addresses and their parameters, recipient names, and the
 * DATA decoder (dot-unstuffing, line ends).  Everything here is fed bytes
 * from the network and bounds what it keeps. */
#ifndef LMTP_LMTP_PARSE_H
#define LMTP_LMTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

/* Longest command line accepted, without its line end.  RFC 5321 4.5.3.1.4
 * allows 512 with CRLF; extensions may add to that, so a margin. */
#define LMTP_MAX_LINE 2048
/* Longest address between < and > (RFC 5321 4.5.3.1.3: 256 with the
 * brackets). */
#define LMTP_MAX_ADDR 256

enum lmtp_cmd {
	LMTP_CMD_UNKNOWN,
	LMTP_CMD_LHLO,
	LMTP_CMD_MAIL,  /* args: what follows "MAIL FROM:" */
	LMTP_CMD_RCPT,  /* args: what follows "RCPT TO:" */
	LMTP_CMD_DATA,
	LMTP_CMD_RSET,
	LMTP_CMD_NOOP,
	LMTP_CMD_QUIT,
	LMTP_CMD_VRFY,
	LMTP_CMD_HELO,  /* HELO or EHLO: SMTP's, not LMTP's */
	LMTP_CMD_BDAT,  /* BDAT, STARTTLS, AUTH...: known but not offered */
};

/* The command in line (verbs are case-insensitive) and *args_r pointing
 * at its arguments (leading blanks skipped; "" when none). */
enum lmtp_cmd lmtp_cmd_parse(const char *line, const char **args_r);

/* MAIL FROM / RCPT TO arguments: "<path>" then blank-separated
 * KEYWORD[=VALUE] parameters.  A source route (<@a,@b:u@d>) is dropped.
 * On success copies the address (without brackets; "" for the null path
 * <>) into addr (size >= LMTP_MAX_ADDR + 1), sets *params_r to the
 * parameters and returns 0; -1 on a syntax error. */
int lmtp_parse_path(const char *args, char *addr, size_t size, const char **params_r);

/* MAIL FROM parameters: SIZE=n and BODY=7BIT|8BITMIME.  Returns 0 and
 * *size_r (0 when not given), or -1 with *bad_r pointing at the first
 * parameter that is unknown or malformed. */
int lmtp_parse_mail_params(const char *params, uint64_t *size_r, const char **bad_r);

/* Splits a recipient address "local[+detail][@domain]": the local part
 * before the first '+' into user, the detail after it into detail ("" if
 * none), the domain (after the last '@', "" if none) into domain.  Each
 * buffer holds size bytes.  Returns -1 when a part does not fit or the
 * local part is empty. */
int lmtp_split_rcpt(const char *addr, char *user, char *detail, char *domain, size_t size);

/* The DATA decoder.  Feed it what arrived after "354"; it appends the
 * message, unstuffed and with every line ending in CRLF (a bare LF counts
 * as a line end), to out until "." on a line by itself.  Once out would
 * exceed max it keeps reading to the end but stores no more and sets
 * too_big. */
struct lmtp_data {
	struct buf *out;
	uint64_t max;
	bool line_start;  /* the next byte starts a line */
	bool too_big;
	uint64_t size;    /* decoded bytes seen, stored or not */
};

void lmtp_data_init(struct lmtp_data *d, struct buf *out, uint64_t max);
/* Consumes a prefix of p[0..n) (*consumed_r bytes).  Returns 1 when the
 * terminating line was consumed (the bytes after it are the next
 * commands), 0 when more input is needed.  An incomplete line shorter
 * than LMTP_MAX_LINE is left unconsumed until its end arrives; a longer
 * one is taken in pieces. */
int lmtp_data_feed(struct lmtp_data *d, const unsigned char *p, size_t n, size_t *consumed_r);

#endif
