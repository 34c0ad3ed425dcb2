/* Internals shared by the imap-mime*.c files: the part tree, header field
 * iteration and RFC 2045 value lexing.  Nothing outside the MIME layer
 * (imap-mime*.c and imap-sortkeys.c, see mime.am) includes this. */
#ifndef IMAP_IMAP_MIME_PRIVATE_H
#define IMAP_IMAP_MIME_PRIVATE_H

#include "imap/imap-mime.h"
#include "lib/arr.h"

/* Parameters per Content-Type/Disposition header we keep; more are ignored. */
#define MIME_MAX_PARAMS 64
/* RFC 2231 continuation sections per parameter. */
#define MIME_MAX_SECTIONS 100

struct mime_param {
	char *name;  /* uppercased; ends in '*' for an RFC 2231 extended value */
	char *value;
};

typedef ARRAY(struct mime_param) mime_param_array;

struct mime_part {
	/* header is [hdr_start, body_start), body is [body_start, end) */
	size_t hdr_start, body_start, end;
	unsigned depth;
	int parent, first_child, last_child, next; /* indexes, -1 for none */
	unsigned child_count;
	bool is_message; /* top level or enclosed in message/rfc822: has an envelope */
	bool multipart;  /* has parsed children split at boundaries */
	bool rfc822;     /* message/rfc822 with its enclosed message as child */

	char *type, *subtype; /* uppercased, never NULL after parsing */
	mime_param_array params;
	char *id, *description, *encoding, *md5, *location, *language;
	char *disposition; /* uppercased, NULL if none */
	mime_param_array disp_params;
};

struct imap_mime {
	const unsigned char *text;
	size_t len;
	ARRAY(struct mime_part) parts; /* parts.items[0] is the message */
};

/* Iterates over the fields of a header in [pos, end). */
struct mime_hdr_iter {
	const unsigned char *text;
	size_t pos, end;
};

struct mime_field {
	const unsigned char *name;
	size_t name_len;
	const unsigned char *value; /* raw, after the colon, folding included */
	size_t value_len;
	size_t line_start, line_end; /* whole field lines in the text */
};

void mime_hdr_iter_init(struct mime_hdr_iter *it, const struct imap_mime *m,
			const struct mime_part *part);
/* Returns the next well-formed field, false at the end of the header.  Lines
 * without a colon are skipped. */
bool mime_hdr_next(struct mime_hdr_iter *it, struct mime_field *f);
/* Finds the first field called name (case-insensitive) in part's header. */
bool mime_hdr_find(const struct imap_mime *m, const struct mime_part *part, const char *name,
		   struct mime_field *f_r);
/* Appends value with CR and LF removed and surrounding whitespace trimmed. */
void mime_unfold(const unsigned char *v, size_t len, struct buf *out);

/* RFC 822/2045 lexing helpers over [*p, end).  Comments are skipped with a
 * counter, not recursion. */
void mime_skip_cfws(const unsigned char **p, const unsigned char *end);
/* Appends the content of a quoted string starting at *p (which is '"'),
 * unescaping quoted-pairs; stops at the closing quote or end. */
void mime_read_quoted(const unsigned char **p, const unsigned char *end, struct buf *out);
/* Parses ";"-separated parameters (RFC 2045, with RFC 2231 sections
 * merged) into params. */
void mime_parse_params(const unsigned char *p, const unsigned char *end, mime_param_array *params);
void mime_params_free(mime_param_array *params);
const char *mime_param_get(const mime_param_array *params, const char *name);

struct mime_part *mime_part_child(const struct imap_mime *m, const struct mime_part *part,
				  unsigned n);

/* Decoding (imap-mime-decode.c). */
/* A dotted part number (RFC 3501 6.4.5) to its part; NULL if none. */
const struct mime_part *mime_resolve_part(const struct imap_mime *m, const char *spec);
void mime_decode_qp(const unsigned char *p, size_t len, bool header, struct buf *out);
void mime_decode_base64(const unsigned char *p, size_t len, struct buf *out);
/* Appends the RFC 5051 (i;unicode-casemap) form of UTF-8 text, which
 * substring comparison works on: titlecased and decomposed; bytes that are
 * not UTF-8 are copied. */
void mime_fold_utf8(const unsigned char *p, size_t len, struct buf *out);

/* IMAP string output (imap-mime-struct.c). */
void mime_append_nstring(struct buf *out, const char *s);
void mime_append_string_n(struct buf *out, const unsigned char *p, size_t len);
/* An address list as plain "name <local@domain>, " text, comments and
 * folding removed, for SEARCH FROM/TO/CC/BCC. */
void mime_address_text(const unsigned char *value, size_t len, struct buf *out);
/* The first entry of an address list as ENVELOPE shows it, for SORT (see
 * imap-sortkeys.c): a group start is an entry whose mailbox is the group's
 * name.  Appends to the caller's (initialised) buffers; name is raw (RFC
 * 2047 words not decoded), a comment when there is no phrase.  Returns
 * whether there was an entry. */
struct mime_first_addr {
	struct buf name, mailbox, host;
	bool found;
};
bool mime_first_address(const unsigned char *value, size_t len, struct mime_first_addr *first);
void mime_envelope_part(const struct imap_mime *m, const struct mime_part *part, struct buf *out);

#endif
