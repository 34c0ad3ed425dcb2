/* Modified UTF-7 (RFC 3501 5.1.3), the form mailbox names are stored and
 * shown to IMAP4rev1 clients in, and UTF-8, their form for a client that
 * has enabled IMAP4rev2 (RFC 9051 5.1).  Pure. */
#ifndef IMAP_IMAP_MUTF7_H
#define IMAP_IMAP_MUTF7_H

#include <stddef.h>

/* The UTF-8 form of a modified UTF-7 name (malloc'd), or NULL when s is not
 * valid modified UTF-7 (bad base64, an unpaired surrogate, a run that
 * encodes printable US-ASCII or nothing). */
char *imap_mutf7_to_utf8(const char *s, size_t len);
/* The modified UTF-7 form of a UTF-8 name (malloc'd), or NULL when s is not
 * valid UTF-8 or holds a control character. */
char *imap_utf8_to_mutf7(const char *s, size_t len);

#endif
