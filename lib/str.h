/* Small string helpers. */
#ifndef LIB_STR_H
#define LIB_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

bool str_has_prefix(const char *s, const char *prefix);
bool str_has_prefix_ci(const char *s, const char *prefix);
/* Strips ASCII whitespace at both ends in place; returns s advanced. */
char *str_trim(char *s);

/* Parses a whole decimal string into *v_r.  Returns 0, or -1 when s is empty,
 * has anything but digits, or the value exceeds max. */
int str_to_u64(const char *s, uint64_t max, uint64_t *v_r);
/* The same for a counted, not NUL-terminated, string. */
int str_to_u64_n(const char *s, size_t n, uint64_t max, uint64_t *v_r);

/* Lowercase hex of n bytes into out, which holds 2n+1 bytes. */
void hex_encode(const unsigned char *p, size_t n, char *out);
/* The value of one hex digit (either case), or -1. */
int hex_digit_value(int c);
/* Parses exactly 2n hex digits of s into out.  Returns 0 or -1. */
int hex_decode(const char *s, size_t slen, unsigned char *out, size_t n);

/* Constant-time comparison of two equal-length byte strings. */
bool mem_equal_ct(const void *a, const void *b, size_t n);

#endif
