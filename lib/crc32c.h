/* CRC-32C (Castagnoli), the checksum of the store's journal records.
 *
 * Uses the SSE 4.2 crc32 instruction when the CPU has it (a record's
 * checksum is computed for every message written and read), a table
 * otherwise; both give the same values.  The first call sets the choice
 * up: make it from one thread before others use it. */
#ifndef LIB_CRC32C_H
#define LIB_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extends crc (0 to start) over len bytes. */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);
/* The table version alone, for tests comparing the two. */
uint32_t crc32c_portable(uint32_t crc, const void *data, size_t len);

#endif
