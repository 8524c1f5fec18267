/* The random words of the native Monte Carlo kernels (multispin/multispin.c, checkerboard.c).
 *
 * An additive lagged Fibonacci generator x_n = x_{n-607} + x_{n-273} mod 2^64 (Knuth, The Art
 * of Computer Programming, vol. 2, 3rd ed., 1997, section 3.2.2; the lags of a primitive
 * trinomial, period >= 2^63 (2^607 - 1) with an odd word in the state), its outputs tempered,
 * y = x ^ (x >> 32), so that every bit depends on the carries of the high half. A stream is
 * its LAG_R words of state, renewed a block at a time, and the number of words of the current
 * block already used.
 */
#ifndef SPINFORMER_LFG_H
#define SPINFORMER_LFG_H

#include <stdint.h>

#define LAG_R 607
#define LAG_S 273

/* The next LAG_R words of the stream, in place. */
static inline void lfg_refill(uint64_t *x) {
    for (int j = 0; j < LAG_S; ++j) x[j] += x[j + LAG_R - LAG_S];
    for (int j = LAG_S; j < LAG_R; ++j) x[j] += x[j - LAG_S];
}

/* n tempered words of stream (x, *pos) into out; *pos = words of the current block used. */
static inline void lfg_draw(uint64_t *x, int64_t *pos, uint64_t *out, int64_t n) {
    int64_t p = *pos;
    while (n > 0) {
        if (p >= LAG_R) {
            lfg_refill(x);
            p = 0;
        }
        int64_t m = LAG_R - p < n ? LAG_R - p : n;
        for (int64_t j = 0; j < m; ++j) {
            uint64_t v = x[p + j];
            out[j] = v ^ (v >> 32);
        }
        out += m;
        p += m;
        n -= m;
    }
    *pos = p;
}

#endif
