/* Clocks: monotonic for timeouts and lag, wall for timestamps. */
#ifndef LIB_CLOCK_H
#define LIB_CLOCK_H

#include <stdint.h>

/* Milliseconds of CLOCK_MONOTONIC. */
uint64_t clock_mono_ms(void);
/* Microseconds of CLOCK_MONOTONIC, for benchmarks and latency figures. */
uint64_t clock_mono_us(void);
/* Seconds since the Unix epoch. */
int64_t clock_wall_s(void);

#endif
