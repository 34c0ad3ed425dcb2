/* The replication wire protocol: codec and connection (see SPEC.md).
 *
 * This is the only header other components include from protocol/.  It has
 * three layers, each usable alone:
 *
 *   - the parser turns bytes into complete lines ("commands": requests,
 *     completions and data lines alike), whatever the split of the input;
 *   - the writer produces lines in exactly the SPEC's syntax;
 *   - the connection runs one peer link on a libev loop: greeting, version
 *     check, optional TLS, mutual HMAC-SHA256 authentication, optional
 *     DEFLATE compression, tags with completion callbacks and timeouts,
 *     keepalive and back-pressure.
 *
 * Beside them, typed codecs read and write the arguments of the message
 * commands (flag lists, UID sets, SAVE, STORE, EXPUNGE, UIDFIX, FETCH, FLAGS) with the
 * rules of their syntax and the bounds of lib/mail-limits.h, so that every
 * component reads them alike.  protocol/ knows nothing of storage or of replication
 * policy: what a command does is the receiver's business.
 *
 * Both ends of a link run the same code; a link has an initiator (who
 * connected) and an acceptor, and the two differ only in who starts TLS and
 * who authenticates first. */
#ifndef PROTOCOL_PROTOCOL_H
#define PROTOCOL_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/guid.h"

#define PROTO_VERSION_MAJOR 1
#define PROTO_VERSION_MINOR 2

/* Defaults of the limits (SPEC.md "Limits"). */
#define PROTO_DEFAULT_MAX_LINE 65536               /* bytes outside literals */
#define PROTO_DEFAULT_MAX_LITERAL (64u * 1024 * 1024) /* literal bytes per line */
#define PROTO_DEFAULT_MAX_ARGS 1024                /* arguments incl. list items */
#define PROTO_DEFAULT_MAX_DEPTH 8                  /* list nesting */
/* Before authentication: no literals, short lines, few arguments. */
#define PROTO_PREAUTH_MAX_LINE 1024
#define PROTO_PREAUTH_MAX_ARGS 16
#define PROTO_PREAUTH_MAX_DEPTH 2

#define PROTO_MAX_TAG 32   /* characters of a tag */
#define PROTO_MAX_NAME 32  /* characters of a command or response name */
/* Strings up to this size that need no literal are written quoted. */
#define PROTO_MAX_QUOTED 1024

/* ------------------------------------------------------------------ */
/* Parsed lines */

enum proto_arg_type {
	PROTO_ARG_ATOM,    /* 1*ATOM-CHAR */
	PROTO_ARG_QUOTED,  /* "..." (already unescaped) */
	PROTO_ARG_LITERAL, /* {N}CRLF followed by N octets */
	PROTO_ARG_LIST,    /* ( ... ) */
};

struct proto_arg {
	enum proto_arg_type type;
	/* Atom, quoted and literal: the bytes, NUL-terminated (a literal may
	 * also contain NULs, so use len). */
	const char *str;
	size_t len;
	/* List: its elements. */
	const struct proto_arg *list;
	size_t count;
};

/* One complete line (with its literals).  For a completion or status line
 * (name OK, NO, BAD or BYE) args are the items of the bracketed response
 * code, has_code tells whether there was one, and text is the
 * human-readable rest of the line.  For any other line text is "". */
struct proto_cmd {
	const char *tag;  /* "*" for untagged lines */
	const char *name; /* as received; compare with proto_cmd_is() */
	const struct proto_arg *args;
	size_t arg_count;
	bool has_code;
	const char *text;
};

/* Case-insensitive comparison of the line's name. */
bool proto_cmd_is(const struct proto_cmd *cmd, const char *name);
/* True for OK/NO/BAD/BYE lines. */
bool proto_cmd_is_status(const struct proto_cmd *cmd);

/* ------------------------------------------------------------------ */
/* Parser */

struct proto_parser_settings {
	size_t max_line;    /* bytes of a line outside literals, CRLF included */
	size_t max_literal; /* total literal bytes in one line; 0 refuses literals */
	size_t max_args;    /* arguments in one line, list elements included */
	unsigned max_depth; /* nesting of parenthesised lists */
};

/* Parse errors.  Every one is fatal for the connection: a receiver sends
 * "* BYE [code] text" and closes (SPEC.md "Errors"). */
enum proto_parse_error {
	PROTO_PARSE_OK = 0,
	PROTO_PARSE_ERR_SYNTAX,          /* code PARSE */
	PROTO_PARSE_ERR_LINE_TOO_LONG,   /* code LINE-TOO-LONG */
	PROTO_PARSE_ERR_LITERAL_TOO_BIG, /* code TOOBIG */
	PROTO_PARSE_ERR_TOO_MANY_ARGS,   /* code TOO-MANY-ARGS */
	PROTO_PARSE_ERR_TOO_DEEP,        /* code TOO-DEEP */
};

struct proto_parser;

/* set NULL means the PROTO_DEFAULT_* limits. */
struct proto_parser *proto_parser_create(const struct proto_parser_settings *set);
void proto_parser_destroy(struct proto_parser **pp);
/* Changes the limits; applies from the next line (used after auth). */
void proto_parser_set_limits(struct proto_parser *p, const struct proto_parser_settings *set);
void proto_parser_settings_default(struct proto_parser_settings *set_r);
void proto_parser_settings_preauth(struct proto_parser_settings *set_r);

/* Consumes bytes from data[0..len) up to the end of at most one line.
 * *consumed_r gets the number of bytes used (the rest belongs to later
 * lines: call again with them).  Returns:
 *    1  a line is complete: *cmd_r points to it; it and all its strings stay
 *       valid until the next call on this parser;
 *    0  all len bytes were consumed and the line is not complete yet;
 *   -1  the input is invalid: see proto_parser_get_error(); every later
 *       call returns -1 again.
 * Literal bytes are copied once, into one buffer of the announced size. */
int proto_parser_parse(struct proto_parser *p, const unsigned char *data, size_t len,
		       size_t *consumed_r, const struct proto_cmd **cmd_r);
/* True while no partial line is buffered (between lines). */
bool proto_parser_is_idle(const struct proto_parser *p);
/* The error of the last -1: enum, response code (e.g. "TOOBIG") and text. */
enum proto_parse_error proto_parser_get_error(const struct proto_parser *p,
					      const char **code_r, const char **text_r);
/* Takes ownership of the bytes of literal argument arg of the line just
 * returned (malloc()ed, NUL-terminated, arg->len bytes): saves a copy when
 * the receiver keeps a message text.  Returns NULL if arg is not a literal
 * of the current line or was taken already. */
unsigned char *proto_parser_steal_literal(struct proto_parser *p, const struct proto_arg *arg);

/* A parsed line kept past its parser's next call (a command that waits
 * until its receiver is free), so that it need not be written back to
 * text and parsed again.  The copy owns its tag, name, text and arguments;
 * its literals are taken from p when p is the parser that returned cmd
 * (a held SAVE's text is not copied), copied otherwise (p NULL).  Free it
 * with proto_cmd_kept_free(). */
struct proto_cmd *proto_cmd_keep(const struct proto_cmd *cmd, struct proto_parser *p);
/* Bytes a kept line holds, literals included (for the holder's bounds). */
size_t proto_cmd_kept_size(const struct proto_cmd *kept);
void proto_cmd_kept_free(struct proto_cmd **cmdp);

/* ------------------------------------------------------------------ */
/* Writer: appends one line at a time to a buffer. */

struct proto_wr {
	struct buf *out;
	bool need_sp;
	unsigned depth;
};

void proto_wr_init(struct proto_wr *w, struct buf *out);
/* Starts a line "TAG NAME".  tag is "*" for untagged lines. */
void proto_wr_begin(struct proto_wr *w, const char *tag, const char *name);
/* An atom: the caller guarantees the characters (asserted). */
void proto_wr_atom(struct proto_wr *w, const char *atom);
void proto_wr_u64(struct proto_wr *w, uint64_t v);
/* A string argument: written as an atom when it is one, quoted when it is
 * short and has no CR, LF or NUL, and as a literal otherwise. */
void proto_wr_str(struct proto_wr *w, const void *s, size_t len);
void proto_wr_cstr(struct proto_wr *w, const char *s);
/* Always a literal (message texts). */
void proto_wr_literal(struct proto_wr *w, const void *s, size_t len);
void proto_wr_guid(struct proto_wr *w, const struct guid *g);
/* A date "1700000000+0100": epoch seconds and the zone offset in minutes. */
void proto_wr_date(struct proto_wr *w, int64_t secs, int tz_minutes);
/* An UID set "1:5,7" from n UIDs (sorted or not, duplicates allowed). */
void proto_wr_uidset(struct proto_wr *w, const uint32_t *uids, size_t n);
void proto_wr_list_begin(struct proto_wr *w);
void proto_wr_list_end(struct proto_wr *w);
/* A parsed argument written back (a command passed on to another node):
 * atoms stay atoms, literals literals, lists lists. */
void proto_wr_arg(struct proto_wr *w, const struct proto_arg *a);
/* Ends the line with CRLF. */
void proto_wr_end(struct proto_wr *w);
/* A whole status line: "TAG STATUS [CODE] TEXT".  code may be NULL; it is
 * the inside of the brackets, e.g. "MASTER 3 EPOCH 7", and must be made of
 * atoms, quoted strings and lists.  text may be NULL. */
void proto_wr_status(struct buf *out, const char *tag, const char *status,
		     const char *code, const char *text);
/* What follows "TAG STATUS" in such a line: " [CODE] TEXT", no CRLF (for a
 * link that writes the tag and the name itself). */
void proto_wr_status_rest(struct buf *out, const char *code, const char *text);

/* True if s[0..len) can be sent as an atom. */
bool proto_is_atom(const void *s, size_t len);

/* ------------------------------------------------------------------ */
/* Typed argument access.  All return 0, or -1 when the argument has the
 * wrong type or syntax (the caller answers BAD). */

/* Any of atom, quoted, literal: the bytes (NUL-terminated). */
int proto_arg_str(const struct proto_arg *a, const char **s_r, size_t *len_r);
/* Decimal without sign or leading zeros (except "0"), at most max. */
int proto_arg_u64(const struct proto_arg *a, uint64_t max, uint64_t *v_r);
/* A REQ value (SPEC 6.3): an atom "<sid>.<n>", sid a nonzero 32-bit and n a
 * 64-bit decimal number, at most PROTO_MAX_REQ_LEN characters. */
int proto_arg_req(const struct proto_arg *a, uint32_t *sid_r, uint64_t *n_r);
int proto_arg_u32(const struct proto_arg *a, uint32_t *v_r);
/* Exactly 32 hex digits. */
int proto_arg_guid(const struct proto_arg *a, struct guid *g_r);

/* "SECONDS+HHMM" or "SECONDS-HHMM" (SPEC.md "Dates"). */
int proto_arg_date(const struct proto_arg *a, int64_t *secs_r, int *tz_minutes_r);

/* Response codes (SPEC.md 1.5): keys are atoms of A-Z and '-', each
 * followed by at most one value.  proto_code_has() tells whether a status
 * line's code holds key; proto_code_value() returns the key's value, or
 * NULL if the key is absent or has none.  Keys compare case-sensitively. */
bool proto_code_has(const struct proto_cmd *line, const char *key);
const struct proto_arg *proto_code_value(const struct proto_cmd *line, const char *key);

/* A UID set: ranges lo..hi (lo <= hi, both >= 1), in the order given. */
struct proto_uid_range {
	uint32_t lo, hi;
};
/* Parses "1:5,7,9:*": '*' stands for star_value.  *ranges_r is malloc()ed
 * and freed by the caller.  Refuses 0, empty items and more than max_ranges
 * ranges. */
int proto_arg_uidset(const struct proto_arg *a, uint32_t star_value, size_t max_ranges,
		     struct proto_uid_range **ranges_r, size_t *count_r);

/* ------------------------------------------------------------------ */
/* Flag lists and UID sets of the replication commands (SPEC.md 8, 10). */

/* The system flags a flag list may hold, as bits (\Recent is never
 * replicated).  Storage uses the same bits. */
#define PROTO_FLAG_SEEN 0x01
#define PROTO_FLAG_ANSWERED 0x02
#define PROTO_FLAG_FLAGGED 0x04
#define PROTO_FLAG_DELETED 0x08
#define PROTO_FLAG_DRAFT 0x10
#define PROTO_FLAGS_ALL 0x1f
#define PROTO_MAX_KEYWORDS 64      /* keywords in one flag list */
#define PROTO_MAX_KEYWORD_LEN 128  /* bytes of one keyword */
/* UIDs a sync writes in one EXPUNGE or FETCH line, so that lines stay far
 * below the line limit. */
#define PROTO_MAX_UIDS_PER_LINE 1000
/* UIDs in one live change (a STORE or EXPUNGE forwarded or streamed): a
 * larger one is split by its sender. */
#define PROTO_MAX_CHANGE_UIDS (PROTO_MAX_UIDS_PER_LINE * 64)
/* UID ranges in one uidset argument. */
#define PROTO_MAX_RANGES 100000

/* "\Seen" for PROTO_FLAG_SEEN and so on; NULL for anything but one bit
 * of PROTO_FLAGS_ALL. */
const char *proto_flag_name(uint32_t bit);
/* The bit of a system flag's name (case-insensitive); -1 if it is none. */
int proto_flag_from_name(const char *name, uint32_t *bit_r);

/* A parsed flag list: system flag bits and keywords (malloc()ed strings;
 * items/count/cap as lib/arr.h's ARRAY). */
struct proto_flags {
	uint32_t flags;
	struct {
		char **items;
		size_t count, cap;
	} keywords;
};
void proto_flags_free(struct proto_flags *f);
/* Writes "(\Seen kw ...)": system flags first, in bit order. */
void proto_wr_flags(struct proto_wr *w, uint32_t flags, const char *const *keywords,
		    size_t keyword_count);
/* Parses a flag list: atoms only, system flags by name, at most
 * PROTO_MAX_KEYWORDS keywords of at most PROTO_MAX_KEYWORD_LEN bytes; -1
 * on anything else (*f_r is then empty). */
int proto_arg_flags(const struct proto_arg *a, struct proto_flags *f_r);
/* Expands a UID set ("1:5,7") into UIDs, in the order given: *uids_r is
 * malloc()ed, at most max of them; -1 if more or malformed.  '*' stands for
 * 4294967295 (the codec knows no mailbox). */
int proto_arg_uids(const struct proto_arg *a, size_t max, uint32_t **uids_r, size_t *count_r);

/* ------------------------------------------------------------------ */
/* Typed codecs of the message commands (SPEC.md 8).  A reader takes a
 * parsed line (name and options are the caller's: proto_cmd_validate(),
 * proto_cmd_option()) and returns one of these; error_r gets a static
 * text for the answer. */

enum proto_codec_result {
	PROTO_CODEC_OK = 0,
	PROTO_CODEC_BAD = -1,   /* malformed: BAD [ARGS] */
	PROTO_CODEC_LIMIT = -2, /* a UID or modseq past lib/mail-limits.h: NO [LIMIT] */
};

/* SAVE <date> <uid> <modseq> <guid> <flags> <text> (SPEC.md 8.1). */
struct proto_save {
	int64_t date;
	int tz;             /* minutes east of UTC */
	uint32_t uid;
	uint64_t modseq;
	struct guid guid;   /* never zero */
	struct proto_flags f;
	/* The text: a literal's bytes, or NULL for NIL (a text the receiver
	 * may hold already).  Read: text_arg is that literal argument, for
	 * proto_parser_steal_literal(). */
	const void *text;
	size_t text_len;
	const struct proto_arg *text_arg;
};

enum proto_save_rule {
	/* A request to the master: UID 0 and modseq 0, the master assigns
	 * them (8.1, 6.2). */
	PROTO_SAVE_ASSIGN,
	/* Replication, a sync, a bundle: both given, neither 0, both within
	 * lib/mail-limits.h. */
	PROTO_SAVE_GIVEN,
};

/* Reads the six arguments of a SAVE (options after them are left to the
 * caller).  On PROTO_CODEC_OK the caller frees *s_r with proto_save_free();
 * on anything else there is nothing to free. */
int proto_read_save(const struct proto_cmd *cmd, enum proto_save_rule rule,
		    struct proto_save *s_r, const char **error_r);
void proto_save_free(struct proto_save *s);
/* The HOLDER option of a validated SAVE (SPEC 8.8): the node that took the
 * client's command promises to hold the change before its client hears OK.
 * 0 with *sid_r = 0 when absent, 0 with the SID (never 0), or -1 when
 * malformed (not a nonzero 32-bit number, or with ORIGIN: a change already
 * made has no holder).  proto_cmd_validate() refuses the same. */
int proto_save_holder(const struct proto_cmd *cmd, size_t npos, uint32_t *sid_r);
/* Writes " HOLDER <sid>" after a SAVE's arguments; sid must not be 0. */
void proto_wr_holder(struct proto_wr *w, uint32_t sid);
/* Writes the six arguments after the caller's "TAG SAVE" (options, such as
 * STAMPS, follow). */
void proto_wr_save(struct proto_wr *w, const struct proto_save *s);

/* STORE <uidset> <modseq> <added-flags> <removed-flags> (SPEC.md 8.4, 8.6,
 * 10.2).  The removed list "(\\*)" means "replace by the added list": it
 * reads as replace set, the new flags in add and rm empty. */
struct proto_store {
	uint32_t *uids;     /* read: malloc()ed, in the set's order */
	size_t uid_count;
	/* A request: the highest modseq the sender knew; a change: its
	 * modseq. */
	uint64_t modseq;
	struct proto_flags add, rm; /* never both non-empty */
	bool replace;
};

enum proto_store_rule {
	/* A request to the master (8.4): add, remove or replace. */
	PROTO_STORE_REQUEST,
	/* A change made (replication 8.6, a sync 10.2): replace, modseq not 0,
	 * UIDs and modseq within lib/mail-limits.h. */
	PROTO_STORE_GIVEN,
};

/* Reads the four arguments of a STORE, at most max_uids UIDs (options are
 * the caller's).  On PROTO_CODEC_OK the caller frees *s_r with
 * proto_store_free(); otherwise there is nothing to free. */
int proto_read_store(const struct proto_cmd *cmd, enum proto_store_rule rule, size_t max_uids,
		     struct proto_store *s_r, const char **error_r);
void proto_store_free(struct proto_store *s);
/* Writes the four arguments after the caller's "TAG STORE". */
void proto_wr_store(struct proto_wr *w, const struct proto_store *s);

/* EXPUNGE <uidset> <modseq> (SPEC.md 8.3, 8.6, 10). */
struct proto_expunge {
	uint32_t *uids; /* read: malloc()ed, in the set's order */
	size_t uid_count;
	uint64_t modseq;
};

enum proto_expunge_rule {
	/* A request to the master: modseq 0, the master assigns one. */
	PROTO_EXPUNGE_REQUEST,
	/* An expunge made (replication, a bundle): modseq not 0, UIDs and
	 * modseq within lib/mail-limits.h. */
	PROTO_EXPUNGE_GIVEN,
	/* In a sync or a bundle (10.2, 11.2): the client's lines carry
	 * modseq 0 (the server gives the expunge its own), the server's and
	 * a bundle's the expunge's; UIDs and modseq within lib/mail-limits.h.
	 * A GUIDS option is the caller's. */
	PROTO_EXPUNGE_SYNC,
};

/* Reads the two arguments of an EXPUNGE, at most max_uids UIDs (options
 * are the caller's).  On PROTO_CODEC_OK the caller frees *e_r with
 * proto_expunge_free(); otherwise there is nothing to free. */
int proto_read_expunge(const struct proto_cmd *cmd, enum proto_expunge_rule rule,
		       size_t max_uids, struct proto_expunge *e_r, const char **error_r);
void proto_expunge_free(struct proto_expunge *e);
/* Writes the two arguments after the caller's "TAG EXPUNGE". */
void proto_wr_expunge(struct proto_wr *w, const struct proto_expunge *e);

/* UIDFIX <old-uidset> <new-uidset> (SPEC.md 10.2, 10.3): in a sync, the
 * i-th old UID of a message becomes the i-th new one.  A UID set has no
 * order of its own (a writer sorts it), so both lists ascend: the reader
 * refuses sets that do not, or differ in count, or hold more than max_uids
 * UIDs or UIDs past lib/mail-limits.h. */
struct proto_uidfix {
	uint32_t *old_uids, *new_uids; /* read: malloc()ed, in the sets' order */
	size_t count;
};

/* Reads both arguments; on PROTO_CODEC_OK the caller frees *f_r with
 * proto_uidfix_free(), otherwise there is nothing to free. */
int proto_read_uidfix(const struct proto_cmd *cmd, size_t max_uids, struct proto_uidfix *f_r,
		      const char **error_r);
void proto_uidfix_free(struct proto_uidfix *f);
/* How many of the count pairs (at least 1 when count > 0, at most max) the
 * next UIDFIX line carries: the leading ones in which both lists ascend. */
size_t proto_uidfix_run(const uint32_t *old_uids, const uint32_t *new_uids, size_t count,
			size_t max);
/* Writes the two sets of count UIDs after the caller's "TAG UIDFIX"; count
 * comes from proto_uidfix_run(). */
void proto_wr_uidfix(struct proto_wr *w, const uint32_t *old_uids, const uint32_t *new_uids,
		     size_t count);

/* FETCH <uidset> (SPEC.md 8.5): asks for the texts of these UIDs, in the
 * set's order.  The answer names a UID the receiver does not hold in
 * OK [MISSING], and a UID past lib/mail-limits.h names no message, so the
 * reader refuses only what is malformed (a set that is not one, more than
 * max_uids UIDs, any other argument): there is no NO [LIMIT] for FETCH. */
struct proto_fetch {
	uint32_t *uids; /* read: malloc()ed, in the set's order */
	size_t uid_count;
};

/* Reads the one argument; on PROTO_CODEC_OK the caller frees *f_r with
 * proto_fetch_free(), otherwise there is nothing to free. */
int proto_read_fetch(const struct proto_cmd *cmd, size_t max_uids, struct proto_fetch *f_r,
		     const char **error_r);
void proto_fetch_free(struct proto_fetch *f);
/* Writes the set of count UIDs (count > 0) after the caller's
 * "TAG FETCH". */
void proto_wr_fetch(struct proto_wr *w, const uint32_t *uids, size_t count);

/* The data line FLAGS <uid> <modseq> <flags>: a message's whole flag
 * state, as a master answers a STORE (8.4) and a sync server a SYNC-END
 * (10.3).  The UID names a message and the modseq is the message's: neither
 * is 0, both within lib/mail-limits.h. */
struct proto_flags_line {
	uint32_t uid;
	uint64_t modseq;
	struct proto_flags f;
};

/* Reads the three arguments (options, such as STAMPS, are the caller's).
 * On PROTO_CODEC_OK the caller frees l_r->f with proto_flags_free();
 * otherwise there is nothing to free. */
int proto_read_flags_line(const struct proto_cmd *cmd, struct proto_flags_line *l_r,
			  const char **error_r);
/* Writes the three arguments after the caller's "TAG FLAGS". */
void proto_wr_flags_line(struct proto_wr *w, const struct proto_flags_line *l);

/* ------------------------------------------------------------------ */
/* Private \Seen on the wire (SPEC.md 7.7): the PSEEN record line, the
 * PSEEN-MBOX header of a bundle's records and STORE's SEEN-OF option. */

/* Bytes of a user name (7.5: 1..255 of letters, digits and ". _ @ + -",
 * not starting with '.'). */
#define PROTO_MAX_USER_LEN 255
/* Users' records of one message, and PSEEN lines of one sync (7.7 "Syncs"):
 * beyond them a sync answers NO [LIMIT]. */
#define PROTO_MAX_PSEEN_PER_MESSAGE 4000
#define PROTO_MAX_PSEEN_PER_SYNC 100000

/* True for a login name of 7.5's alphabet (so never ".public"). */
bool proto_user_name_valid(const char *s, size_t len);

/* PSEEN <user> <message-guid> <seen> <modseq> <time-ms>: one user's record
 * of one message, streamed (with ORIGIN and EPOCH), in a sync or in a
 * bundle. */
struct proto_pseen {
	char user[PROTO_MAX_USER_LEN + 1];
	struct guid guid; /* never zero */
	bool seen;
	uint64_t modseq;
	int64_t time_ms;
};

enum proto_pseen_rule {
	/* Streamed or in a sync: the record's modseq, not 0, within
	 * lib/mail-limits.h. */
	PROTO_PSEEN_GIVEN,
	/* In a bundle: modseq 0, the importer assigns it. */
	PROTO_PSEEN_ASSIGN,
};

/* Reads the five arguments (options are the caller's); nothing to free. */
int proto_read_pseen(const struct proto_cmd *cmd, enum proto_pseen_rule rule,
		     struct proto_pseen *p_r, const char **error_r);
/* Writes the five arguments after the caller's "TAG PSEEN". */
void proto_wr_pseen(struct proto_wr *w, const struct proto_pseen *p);

/* PSEEN-MBOX <owner> <mailbox-guid> <uidvalidity> (a bundle, 11.2): the
 * owner is a login name or ".public". */
struct proto_pseen_mbox {
	char owner[PROTO_MAX_USER_LEN + 1];
	struct guid mailbox; /* never zero */
	uint32_t uidvalidity; /* never zero */
};
int proto_read_pseen_mbox(const struct proto_cmd *cmd, struct proto_pseen_mbox *m_r,
			  const char **error_r);
void proto_wr_pseen_mbox(struct proto_wr *w, const struct proto_pseen_mbox *m);

/* The SEEN-OF <user> option of a validated STORE whose positional
 * arguments end at npos: PROTO_CODEC_OK with *user_r NULL when absent, or
 * the user (pointing into cmd) when present with a valid name and a GUIDS
 * option beside it (7.7 requires it); PROTO_CODEC_BAD otherwise. */
int proto_read_seen_of(const struct proto_cmd *cmd, size_t npos, const char **user_r,
		       const char **error_r);

/* ------------------------------------------------------------------ */
/* The command table of SPEC.md section 12 (syntax only, no meaning). */

#define PROTO_MAX_HOPS 8 /* SIDs in a VIA option */

#define PROTO_CMDF_SELECTED 0x01            /* acts on the selected mailbox */
#define PROTO_CMDF_FORWARD 0x02             /* goes to a master/root, may be forwarded */
#define PROTO_CMDF_OPT_UNCHANGEDSINCE 0x04  /* accepts UNCHANGEDSINCE <modseq> */
#define PROTO_CMDF_OPT_SPECIAL_USE 0x08     /* accepts SPECIAL-USE <flags> */
#define PROTO_CMDF_DATA 0x10                /* a data line, not a command */
#define PROTO_CMDF_OPT_ORIGIN 0x20          /* accepts ORIGIN <sid>: a change already applied there */
#define PROTO_CMDF_OPT_GUIDS 0x40           /* accepts GUIDS (<guid> ...): the UIDs' messages */
#define PROTO_CMDF_OPT_STAMPS 0x80          /* accepts STAMPS (<flag> <modseq> <ms> ...): SPEC 10.3 */
#define PROTO_CMDF_OPT_BY 0x100             /* accepts BY USER: a user's expunge (SPEC 8.6) */
#define PROTO_CMDF_OPT_REQ 0x200            /* accepts REQ <sid>.<n>: a request's identity (SPEC 6.4) */
#define PROTO_CMDF_OPT_HOLDER 0x400         /* accepts HOLDER <sid>: the originator holds it (SPEC 8.8) */
#define PROTO_CMDF_OPT_SEEN_OF 0x800        /* accepts SEEN-OF <user>: private \Seen (SPEC 7.7) */
#define PROTO_CMDF_OPT_RSTAMP 0x1000        /* accepts RSTAMP <n>: a mailbox's rename stamp (SPEC 7.3, 1.1) */
#define PROTO_MAX_REQ_LEN 31                /* characters of a REQ value */
#define PROTO_MAX_STAMPS 256                /* triplets in a STAMPS option (syntax bound) */
#define PROTO_MIN_MINOR_RSTAMP 1            /* the minor version that brought RSTAMP */
#define PROTO_CMDF_OPT_UIDNEXT 0x2000       /* accepts UIDNEXT <n>: what a deleted mailbox held (SPEC 7.3, 1.2) */
#define PROTO_MIN_MINOR_DELETE_UIDNEXT 2    /* the minor version that brought DELETE's UIDNEXT */

struct proto_cmd_info {
	const char *name;
	const char *sig;   /* argument signature, see proto-commands.c */
	unsigned flags;
};

/* The entry of a command or data line name (case-insensitive), or NULL. */
const struct proto_cmd_info *proto_cmd_info_find(const char *name);
/* The table's rows in order, for tests and tools: i < proto_cmd_info_count(),
 * else NULL. */
size_t proto_cmd_info_count(void);
const struct proto_cmd_info *proto_cmd_info_get(size_t i);
/* Checks arguments and options of a command or data line against the
 * table.  Returns 0 with *npos_r = the number of positional arguments
 * (options follow them as KEY value pairs), or -1 with *error_r (static,
 * valid until the next call): answer BAD [ARGS], or BAD [UNKNOWN-COMMAND]
 * when proto_cmd_info_find() fails. */
int proto_cmd_validate(const struct proto_cmd *cmd, size_t *npos_r, const char **error_r);
/* True if key is an option the command accepts (VIA, TO, ...). */
bool proto_cmd_is_option(const struct proto_cmd_info *info, const char *key);
/* The value of option key of a validated command, or NULL if absent. */
const struct proto_arg *proto_cmd_option(const struct proto_cmd *cmd, size_t npos, const char *key);

/* ------------------------------------------------------------------ */
/* HMAC-SHA256 helpers shared by the handshake and by change bundles. */

#define PROTO_NONCE_SIZE 32
#define PROTO_HMAC_SIZE 32

/* The proof one side sends (SPEC.md "Authentication"): label is
 * "initiator" or "acceptor"; channel may be NULL (no TLS) or the 32-byte
 * TLS exporter value.  Returns 0, -1 on a crypto library failure. */
int proto_auth_proof(const unsigned char *secret, size_t secret_len, const char *label,
		     const unsigned char init_nonce[PROTO_NONCE_SIZE],
		     const unsigned char acc_nonce[PROTO_NONCE_SIZE],
		     uint32_t init_sid, uint32_t acc_sid, const unsigned char *channel,
		     unsigned char out[PROTO_HMAC_SIZE]);

/* ------------------------------------------------------------------ */
/* Connection */

struct ev_loop;
struct proto_conn;

enum proto_tls_mode {
	PROTO_TLS_NONE,     /* plain text; STARTTLS neither offered nor used */
	PROTO_TLS_STARTTLS, /* plain greeting, then STARTTLS before AUTH (required) */
	PROTO_TLS_IMPLICIT, /* TLS from the first byte */
};

struct proto_conn_settings {
	uint32_t my_sid;
	/* 0 accepts any peer SID; otherwise the peer must greet with this one. */
	uint32_t expected_peer_sid;
	bool initiator;               /* we connected (TLS client, AUTH first) */
	const unsigned char *secret;  /* cluster secret, copied */
	size_t secret_len;
	enum proto_tls_mode tls;
	const char *tls_cert, *tls_key, *tls_ca; /* PEM files (needed unless NONE) */
	bool compress;                /* initiator asks for COMPRESS DEFLATE */
	struct proto_parser_settings limits; /* after auth; each 0 field = default */
	unsigned handshake_timeout_ms; /* 0 = 10000 */
	unsigned ping_interval_ms;     /* idle time before PING; 0 = 30000 */
	unsigned dead_timeout_ms;      /* silence before the peer is dead; 0 = 90000 */
	size_t out_high_water;         /* stop reading above; 0 = 4 MiB */
	size_t out_low_water;          /* resume reading below; 0 = 1 MiB */
};

/* What a pending command's callback is told. */
enum proto_reply_kind {
	PROTO_REPLY_DATA,    /* a data line carrying the command's tag */
	PROTO_REPLY_DONE,    /* the completion (OK, NO or BAD): the last call */
	PROTO_REPLY_TIMEOUT, /* no completion in time: the last call; line NULL */
	PROTO_REPLY_CLOSED,  /* the link closed first: the last call; line NULL */
};

typedef void proto_reply_cb(struct proto_conn *conn, enum proto_reply_kind kind,
			    const struct proto_cmd *line, void *ctx);

struct proto_conn_callbacks {
	/* Handshake, authentication (and compression, if asked) done. */
	void (*ready)(struct proto_conn *conn, void *ctx);
	/* A command from the peer (not a handshake command, not PING or
	 * LOGOUT, which the connection answers itself).  The receiver answers
	 * it, now or later, with proto_conn_reply() or data lines. */
	void (*command)(struct proto_conn *conn, const struct proto_cmd *cmd, void *ctx);
	/* Untagged lines other than BYE (announcements). May be NULL. */
	void (*untagged)(struct proto_conn *conn, const struct proto_cmd *line, void *ctx);
	/* Output fell below the low-water mark after being above it.  May be NULL. */
	void (*drained)(struct proto_conn *conn, void *ctx);
	/* The host of node sid's `peer` line (borrowed until the callback
	 * returns), or NULL if none: under TLS the peer's certificate must
	 * name that host or "starling-node-SID" (SPEC.md 4.1).  May be NULL:
	 * then only "starling-node-SID" names a peer. */
	const char *(*peer_host)(struct proto_conn *conn, uint32_t sid, void *ctx);
	/* The link is gone; reason is for logs.  Called exactly once, unless
	 * proto_conn_destroy() came first.  After it returns the connection
	 * is freed (later, out of its callback chain): don't use it again. */
	void (*closed)(struct proto_conn *conn, const char *reason, void *ctx);
};

/* Wraps a connected non-blocking socket; the connection owns and closes fd.
 * The greeting is sent at once.  Returns NULL with *error_r (static or
 * valid until the next call) if TLS setup or the greeting fails; the caller
 * then still owns fd and closes it. */
struct proto_conn *proto_conn_create(struct ev_loop *loop, int fd,
				     const struct proto_conn_settings *set,
				     const struct proto_conn_callbacks *cb, void *ctx,
				     const char **error_r);
/* Closes at once without calling closed(); pending callbacks get
 * PROTO_REPLY_CLOSED.  Safe inside callbacks: the memory is freed once the
 * callback chain has unwound.  Sets *connp to NULL. */
void proto_conn_destroy(struct proto_conn **connp);
/* Orderly close: LOGOUT, wait for its completion (bounded), then close;
 * closed() follows. */
void proto_conn_logout(struct proto_conn *conn);
/* Sends "* BYE [code] text" and closes after flushing; closed() follows. */
void proto_conn_bye(struct proto_conn *conn, const char *code, const char *text);

bool proto_conn_is_ready(const struct proto_conn *conn);
uint32_t proto_conn_peer_sid(const struct proto_conn *conn);
/* Negotiated minor version (min of both sides). */
unsigned proto_conn_minor(const struct proto_conn *conn);
bool proto_conn_is_tls(const struct proto_conn *conn);
bool proto_conn_is_compressed(const struct proto_conn *conn);
/* Bytes queued for the peer and not yet written to the socket. */
size_t proto_conn_output_size(const struct proto_conn *conn);
/* True while output is above the high-water mark. */
bool proto_conn_is_congested(const struct proto_conn *conn);
/* The parser of the link's input.  Inside the command() callback its
 * current line is the command passed: a receiver that keeps the command
 * takes its literals from it (proto_cmd_keep()). */
struct proto_parser *proto_conn_parser(struct proto_conn *conn);

/* Starts a command with a fresh tag: returns a writer with "TAG NAME"
 * written; add arguments, then call proto_conn_cmd_send().  Only one line
 * may be under construction at a time.  A command begun while the link is
 * not ready (handshake running, closing, closed) is dropped: cb then gets
 * PROTO_REPLY_CLOSED before proto_conn_cmd_send() returns. */
struct proto_wr *proto_conn_cmd_begin(struct proto_conn *conn, const char *name);
/* Ends the line and registers the tag: cb gets the data lines and exactly
 * one final call (DONE, TIMEOUT or CLOSED).  timeout_ms 0 = none.  Returns
 * the tag (valid while pending), or NULL if the command was dropped. */
const char *proto_conn_cmd_send(struct proto_conn *conn, unsigned timeout_ms,
				proto_reply_cb *cb, void *ctx);
/* Starts a data line "TAG NAME" answering the peer's command tag (or an
 * untagged line with tag "*"); finish with proto_conn_line_end().  Lines
 * written before authentication or once closing are dropped. */
struct proto_wr *proto_conn_line_begin(struct proto_conn *conn, const char *tag,
				       const char *name);
void proto_conn_line_end(struct proto_conn *conn);
/* Completes the peer's command tag: status is "OK", "NO" or "BAD"; code
 * and text as for proto_wr_status(). */
void proto_conn_reply(struct proto_conn *conn, const char *tag, const char *status,
		      const char *code, const char *text);

#endif
