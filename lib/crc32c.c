/* CRC-32C: see crc32c.h. */
#include "lib/crc32c.h"

#include <stdbool.h>
#include <string.h>

/* The reflected Castagnoli polynomial. */
#define POLY 0x82f63b78u

static uint32_t table[256];
static bool table_ready;

static void table_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
		table[i] = c;
	}
	table_ready = true;
}

uint32_t crc32c_portable(uint32_t crc, const void *data, size_t len)
{
	const unsigned char *p = data;
	if (!table_ready)
		table_init();
	crc = ~crc;
	while (len-- > 0)
		crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>

/* The crc32 instruction takes 3 cycles but can start one per cycle: three
 * independent runs over three stretches of a long buffer, then combined,
 * go about three times as fast as one run (the journal checks every 256
 * KiB text chunk it reads).  Combining shifts a CRC over n zero bytes: a
 * linear map, kept as four byte-indexed tables per stretch length. */
#define STRETCH_LONG 8192
#define STRETCH_SHORT 256

static uint32_t shift_long[4][256], shift_short[4][256];

static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
	uint32_t sum = 0;
	while (vec != 0) {
		if (vec & 1)
			sum ^= *mat;
		vec >>= 1;
		mat++;
	}
	return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat)
{
	for (int n = 0; n < 32; n++)
		square[n] = gf2_times(mat, mat[n]);
}

/* The tables that advance a CRC register over len zero bytes (len a power
 * of two, at least 1). */
static void shift_tables(uint32_t tab[4][256], size_t len)
{
	uint32_t even[32], odd[32];
	odd[0] = POLY; /* one zero bit */
	for (int n = 1; n < 32; n++)
		odd[n] = 1u << (n - 1);
	gf2_square(even, odd); /* two bits */
	gf2_square(odd, even); /* four bits */
	const uint32_t *op = odd;
	for (;;) {
		gf2_square(even, odd); /* doubles: 8 bits (1 byte) first */
		op = even;
		len >>= 1;
		if (len == 0)
			break;
		gf2_square(odd, even);
		op = odd;
		len >>= 1;
		if (len == 0)
			break;
	}
	for (uint32_t n = 0; n < 256; n++) {
		tab[0][n] = gf2_times(op, n);
		tab[1][n] = gf2_times(op, n << 8);
		tab[2][n] = gf2_times(op, n << 16);
		tab[3][n] = gf2_times(op, n << 24);
	}
}

/* At load, before any thread can use them. */
__attribute__((constructor)) static void shift_init(void)
{
	shift_tables(shift_long, STRETCH_LONG);
	shift_tables(shift_short, STRETCH_SHORT);
}

static inline uint32_t shift(uint32_t tab[4][256], uint32_t crc)
{
	return tab[0][crc & 0xff] ^ tab[1][(crc >> 8) & 0xff] ^ tab[2][(crc >> 16) & 0xff] ^
	       tab[3][crc >> 24];
}

__attribute__((target("sse4.2")))
static const unsigned char *three_ways(uint64_t *c0, const unsigned char *p, size_t *len,
				       size_t stretch, uint32_t tab[4][256])
{
	while (*len >= 3 * stretch) {
		uint64_t c1 = 0, c2 = 0, v;
		const unsigned char *end = p + stretch;
		do {
			memcpy(&v, p, 8);
			*c0 = _mm_crc32_u64(*c0, v);
			memcpy(&v, p + stretch, 8);
			c1 = _mm_crc32_u64(c1, v);
			memcpy(&v, p + 2 * stretch, 8);
			c2 = _mm_crc32_u64(c2, v);
			p += 8;
		} while (p < end);
		*c0 = shift(tab, (uint32_t)*c0) ^ (uint32_t)c1;
		*c0 = shift(tab, (uint32_t)*c0) ^ (uint32_t)c2;
		p += 2 * stretch;
		*len -= 3 * stretch;
	}
	return p;
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const void *data, size_t len)
{
	const unsigned char *p = data;
	uint64_t c = ~crc;
	while (len > 0 && ((uintptr_t)p & 7) != 0) {
		c = _mm_crc32_u8((uint32_t)c, *p++);
		len--;
	}
	p = three_ways(&c, p, &len, STRETCH_LONG, shift_long);
	p = three_ways(&c, p, &len, STRETCH_SHORT, shift_short);
	while (len >= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		c = _mm_crc32_u64(c, v);
		p += 8;
		len -= 8;
	}
	while (len-- > 0)
		c = _mm_crc32_u8((uint32_t)c, *p++);
	return ~(uint32_t)c;
}

uint32_t crc32c(uint32_t crc, const void *data, size_t len)
{
	static int have = -1;
	if (have < 0) {
		__builtin_cpu_init();
		have = __builtin_cpu_supports("sse4.2") ? 1 : 0;
	}
	return have ? crc32c_sse42(crc, data, len) : crc32c_portable(crc, data, len);
}
#else
uint32_t crc32c(uint32_t crc, const void *data, size_t len)
{
	return crc32c_portable(crc, data, len);
}
#endif
