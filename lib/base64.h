/* Base64 (RFC 4648 section 4) for data that must be exactly that: SASL
 * responses and password hashes.  MIME bodies are decoded leniently
 * elsewhere (imap/imap-mime-decode.c), as RFC 2045 asks. */
#ifndef LIB_BASE64_H
#define LIB_BASE64_H

#include <stddef.h>

/* Decodes len characters of in into out, which holds at least len / 4 * 3
 * bytes.  The input must be a multiple of 4 characters of the alphabet,
 * with '=' padding only at its end.  Returns the decoded length, or -1. */
long base64_decode(const char *in, size_t len, unsigned char *out);

#endif
