/* Little-endian fields of the protocol's messages (docs/protocol.md),
 * independent of the host's byte order: the one place the shim reads or
 * writes a multi-byte field.  p need not be aligned.
 *
 * Plain byte stores and loads: no locks, no libc, safe in a signal
 * handler and a vfork()ed child like everything that uses them. */
#ifndef LCS_LE_H
#define LCS_LE_H

#include <stdint.h>

static inline void lcs_put16(unsigned char *p, uint16_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
}

static inline void lcs_put32(unsigned char *p, uint32_t v)
{
	lcs_put16(p, (uint16_t)v);
	lcs_put16(p + 2, (uint16_t)(v >> 16));
}

static inline void lcs_put64(unsigned char *p, uint64_t v)
{
	lcs_put32(p, (uint32_t)v);
	lcs_put32(p + 4, (uint32_t)(v >> 32));
}

static inline uint16_t lcs_get16(const unsigned char *p)
{
	return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}

static inline uint32_t lcs_get32(const unsigned char *p)
{
	return lcs_get16(p) | (uint32_t)lcs_get16(p + 2) << 16;
}

static inline uint64_t lcs_get64(const unsigned char *p)
{
	return lcs_get32(p) | (uint64_t)lcs_get32(p + 4) << 32;
}

#endif
