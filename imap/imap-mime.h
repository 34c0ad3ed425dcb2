/* The IMAP server's MIME layer: a pure module (no I/O) that parses a stored
 * message text into a tree of parts and answers what FETCH and SEARCH need:
 * BODY/BODYSTRUCTURE, ENVELOPE, BODY[section] bytes, header and body search
 * and the Date: header.
 *
 * Parts keep byte offsets into the caller's text, never copies, so the text
 * must outlive the parsed object.  Byte counts (sizes, offsets) are of the
 * text as stored: if the store keeps CRLF line ends, sizes are in CRLF form.
 *
 * Parsing never fails.  Malformed MIME degrades the way real servers do:
 * an unparsable Content-Type becomes text/plain; charset=us-ascii, a
 * multipart without a boundary parameter or whose boundary never occurs
 * becomes a text/plain leaf, an unclosed multipart ends where its enclosing
 * range ends.  A delimiter line only has to start with "--boundary"
 * (RFC 2046 5.1.1), unless a nested multipart declared a longer boundary
 * that the line matches.  Work is bounded: at most IMAP_MIME_MAX_DEPTH levels of nesting
 * and IMAP_MIME_MAX_PARTS parts (containers past either limit become
 * text/plain leaves), and the parser itself does not recurse. */
#ifndef IMAP_IMAP_MIME_H
#define IMAP_IMAP_MIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

#define IMAP_MIME_MAX_DEPTH 50
#define IMAP_MIME_MAX_PARTS 5000

struct imap_mime;

/* Parses a message text (any bytes; CRLF or bare LF line ends; text may be
 * NULL when len is 0).  Never returns NULL.  The caller frees the result with imap_mime_free(). */
struct imap_mime *imap_mime_parse(const unsigned char *text, size_t len);
/* Frees the object and sets *m to NULL; harmless on NULL. */
void imap_mime_free(struct imap_mime **m);

/* Number of parts in the tree (the message itself counts as one); for
 * tests and limits. */
size_t imap_mime_part_count(const struct imap_mime *m);

/* Appends the IMAP BODYSTRUCTURE (extended=true) or BODY (extended=false)
 * response value, e.g.
 *   ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 12 1 NIL NIL NIL NIL)
 * Media types, subtypes, parameter names and disposition types are
 * uppercased; parameter values are as written.  A text part (type TEXT) without a
 * charset parameter gets ("CHARSET" "us-ascii").  RFC 2231 continuations are
 * joined: name*0="a" name*1="b" becomes "NAME" "ab", and extended values
 * (name*=utf-8''x or name*0*=...) become one "NAME*" "charset'lang'%XX.."
 * parameter, still percent-encoded, as Dovecot sends and clients decode.
 * Sizes are body bytes as stored; the line count of a part is its number of
 * LF characters, plus one if the body is not empty and does not end in LF
 * (the LF before a multipart delimiter belongs to the delimiter).
 * Strings are quoted, or sent as literals {N}\r\n when they hold CR, LF or
 * 8-bit bytes or are long; missing values are NIL. */
void imap_mime_bodystructure(const struct imap_mime *m, bool extended, struct buf *out);

/* Appends the ENVELOPE value of the top-level message:
 * (date subject from sender reply-to to cc bcc in-reply-to message-id).
 * Header values are unfolded (CR and LF removed) and trimmed but not
 * decoded; sender and reply-to default to from.  Addresses are
 * (name adl mailbox host); a group is (NIL NIL "name" NIL) members
 * (NIL NIL NIL NIL); a mailbox without a domain gets host "MISSING_DOMAIN"
 * (NIL would read as a group marker); an old-style "a@b (Name)" comment
 * becomes the name when there is no display name. */
void imap_mime_envelope(const struct imap_mime *m, struct buf *out);

enum imap_section_kind {
	IMAP_SECTION_ALL,               /* BODY[part] */
	IMAP_SECTION_HEADER,            /* BODY[part.HEADER] */
	IMAP_SECTION_HEADER_FIELDS,     /* BODY[part.HEADER.FIELDS (..)] */
	IMAP_SECTION_HEADER_FIELDS_NOT, /* BODY[part.HEADER.FIELDS.NOT (..)] */
	IMAP_SECTION_TEXT,              /* BODY[part.TEXT] */
	IMAP_SECTION_MIME,              /* BODY[part.MIME] */
};

/* Appends the bytes of BODY[part.kind (fields)] to out.
 *
 * part is "" (or NULL) for the whole message, or a dotted part number such
 * as "1.2".  Numbering follows RFC 3501 6.4.5: the parts of a multipart are
 * 1..n; a non-multipart message (top level or inside a message/rfc822 part)
 * has one part, 1, which is its body; the parts of a message/rfc822 part are
 * those of the message it holds.
 *
 * kind ALL: the whole message for part "", else the part's body (for a
 * message/rfc822 part: the whole enclosed message).  HEADER, TEXT and
 * HEADER.FIELDS[.NOT] apply to the top-level message (part "") or to a
 * message/rfc822 part, whose enclosed message they then describe.  MIME is
 * the MIME header of a numbered part (for part 1 of a non-multipart message,
 * that message's header).  HEADER includes the blank line that ends it, as
 * stored.  HEADER.FIELDS[.NOT] copies whole matching field lines (with their
 * folded continuation lines) in message order, names compared
 * case-insensitively, and always ends with a blank line (CRLF, or LF if the
 * header uses bare LF line ends).  fields/field_count are used only by the
 * HEADER.FIELDS kinds.
 *
 * Returns 0, or -1 if the part does not exist or the kind does not apply to
 * it (out is then unchanged; the caller answers with an empty string, as
 * servers commonly do). */
int imap_mime_section(const struct imap_mime *m, const char *part, enum imap_section_kind kind,
		      const char *const *fields, size_t field_count, struct buf *out);

/* BODY[section]<offset.count>: like imap_mime_section() but appends only
 * bytes [offset, offset + count) of the section, clamped to its end (nothing
 * when offset is past it), without copying the rest; count UINT64_MAX means
 * to the end.  If full_size_r is not NULL it gets the whole section's size.
 * Returns 0, or -1 if the section does not exist. */
int imap_mime_section_partial(const struct imap_mime *m, const char *part,
			      enum imap_section_kind kind, const char *const *fields,
			      size_t field_count, uint64_t offset, uint64_t count,
			      struct buf *out, uint64_t *full_size_r);

/* BINARY[part] (RFC 3516): appends the part's body with its
 * Content-Transfer-Encoding undone (base64, quoted-printable; 7bit, 8bit
 * and binary as they are).  part "" is the whole message as stored; a
 * multipart or message/rfc822 part is given as BODY[part] gives it.
 * Returns 0, -1 if the part does not exist, -2 if its encoding is one we
 * do not know (UNKNOWN-CTE); out is unchanged on failure. */
int imap_mime_binary(const struct imap_mime *m, const char *part, struct buf *out);

/* For APPEND of a literal8 (RFC 3516 4.2): copies text to out with every
 * leaf part whose body holds a NUL octet re-encoded as base64 (its
 * Content-Transfer-Encoding field replaced), so that BODY[...] never has to
 * send a NUL.  Returns the number of parts re-encoded. */
size_t imap_mime_binary_to_base64(const unsigned char *text, size_t len, struct buf *out);

/* For SEARCH HEADER/FROM/SUBJECT/...: does header field `field`
 * (case-insensitive) of the top-level message contain needle?  The value is
 * unfolded and RFC 2047 decoded to UTF-8 first; the comparison is
 * case-insensitive as RFC 5051 (i;unicode-casemap) defines it: both sides
 * are titlecased and fully decomposed, so precomposed and decomposed
 * letters match, as do final and medial sigma, dotless i and I (but not
 * sharp s and "SS").  field NULL matches the value of any header field
 * (names are not searched).  An empty needle matches when the field
 * exists.  needle is UTF-8 and NUL-terminated. */
bool imap_mime_header_contains(const struct imap_mime *m, const char *field, const char *needle);

/* For SEARCH BODY: does the decoded body of any text part (type TEXT, including
 * parts that default to text/plain and those of attached messages) contain
 * needle, case-insensitively as above?  Bodies are quoted-printable or base64
 * decoded and converted to UTF-8 from their charset parameter as
 * imap_mime_charset_to_utf8() does (us-ascii when there is none).  An empty
 * needle always matches. */
bool imap_mime_body_contains(const struct imap_mime *m, const char *needle);

/* Appends text in charset (a MIME or IMAP label such as "koi8-r",
 * "ISO-2022-JP", "windows-1251"; any that glibc's iconv(3) knows, and a few
 * aliases mailers use) converted to UTF-8.  UTF-8 and US-ASCII text is
 * copied as it is.  Invalid or truncated sequences become U+FFFD and the
 * conversion goes on; the output is at most 8 times the input plus 64 bytes.
 * Returns 0, or -1 if the charset is unknown: the bytes are then appended
 * unchanged.  Keeps up to 8 iconv descriptors open per calling thread. */
int imap_mime_charset_to_utf8(const char *charset, size_t charset_len, const unsigned char *p,
			      size_t len, struct buf *out);
/* Whether imap_mime_charset_to_utf8() converts from charset. */
bool imap_mime_charset_known(const char *charset, size_t charset_len);

/* The top-level Date: header as UTC epoch seconds and the zone offset it
 * was written in (minutes east of UTC).  Returns 1 if there is a Date:
 * header that imap_mime_parse_date() accepts, else 0 (outputs untouched). */
int imap_mime_date(const struct imap_mime *m, int64_t *t_r, int32_t *tz_minutes_r);

/* Parses a date as found in Date: headers: RFC 5322 dates and the obsolete
 * and real-world forms seen in mail (no weekday, 2- or 3-digit years, zone
 * names such as GMT/UTC/EST and military letters, "+01:00" zones, missing
 * seconds, missing zone, trailing "(comments)", full or dotted month names,
 * asctime "Mon Jan  2 15:04:05 2006", RFC 850 "Monday, 02-Jan-06 ..." and
 * ISO 8601 "2006-01-02T15:04:05Z").  Returns 1 and sets *t_r (UTC epoch
 * seconds) and *tz_minutes_r, or returns 0 if s is not a valid date. */
int imap_mime_parse_date(const char *s, size_t len, int64_t *t_r, int32_t *tz_minutes_r);

/* Appends the RFC 2047 decoded, unfolded form of a header value to out as
 * UTF-8 (charsets as for imap_mime_charset_to_utf8(); encoded words in
 * unknown charsets are decoded to their raw bytes; adjacent words in one
 * charset are converted together, as mailers split characters across them).  Exposed for tests and for
 * callers that display or sort by decoded values. */
void imap_mime_decode_header(const unsigned char *value, size_t len, struct buf *out);

#endif
