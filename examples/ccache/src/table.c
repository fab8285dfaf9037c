/* Enough code for the compiler to have work worth caching: a table unrolled by macros. */
#include "greet.h"

#define ROW(n) ((n) * 2654435761UL) ^ ((n) >> 3),
#define ROW4(n) ROW(n) ROW((n) + 1) ROW((n) + 2) ROW((n) + 3)
#define ROW16(n) ROW4(n) ROW4((n) + 4) ROW4((n) + 8) ROW4((n) + 12)
#define ROW64(n) ROW16(n) ROW16((n) + 16) ROW16((n) + 32) ROW16((n) + 48)
#define ROW256(n) ROW64(n) ROW64((n) + 64) ROW64((n) + 128) ROW64((n) + 192)

static const unsigned long table[] = {ROW256(0) ROW256(256) ROW256(512) ROW256(768)};

unsigned long table_checksum(void) {
    unsigned long sum = 0;
    for (unsigned long i = 0; i < sizeof table / sizeof table[0]; i++)
        sum = sum * 31 + table[i];
    return sum;
}
