/* Compiled checkerboard sweeps of Ising chains on an even periodic L x W lattice (checkerboard.py).
 *
 * Spins are int8 +-1 in the compact layout of the tensor engine: black[p][r][k] is site
 * (r, 2k + r % 2) of plane p, white[p][r][k] is site (r, 2k + 1 - r % 2); a black site's four
 * neighbours are white (r - 1, k), (r + 1, k), (r, k) and (r, k - 1) for even r, (r, k + 1) for
 * odd r, and mirrored for white sites. One sweep updates all black sites, then all white ones.
 * A site with spin s and neighbour sum n flips when a uniform u < p[s][n]: the table holds,
 * per batch entry (plane p uses entry p % batch), floor(2^53 P(flip)) for the five values of n
 * and both s, so Metropolis and the heat bath differ only in the table. u is the top 53 bits
 * of a tempered additive lagged Fibonacci word, x_n = x_{n-607} + x_{n-273} mod 2^64,
 * y = x ^ (x >> 32) (Knuth, TAOCP vol. 2, 3.2.2), one stream per plane.
 */
#include <stdint.h>
#include <stdlib.h>

#define LAG_R 607
#define LAG_S 273

typedef uint64_t u64;
typedef int64_t i64;
typedef int8_t i8;

static void refill(u64 *x) {
    for (int j = 0; j < LAG_S; ++j) x[j] += x[j + LAG_R - LAG_S];
    for (int j = LAG_S; j < LAG_R; ++j) x[j] += x[j - LAG_S];
}

/* n uniforms (top 53 bits of tempered words) of stream (x, *pos) into out. */
static void draw(u64 *x, i64 *pos, u64 *out, i64 n) {
    i64 p = *pos;
    while (n > 0) {
        if (p >= LAG_R) {
            refill(x);
            p = 0;
        }
        i64 m = LAG_R - p < n ? LAG_R - p : n;
        for (i64 j = 0; j < m; ++j) {
            u64 v = x[p + j];
            out[j] = (v ^ (v >> 32)) >> 11;
        }
        out += m;
        p += m;
        n -= m;
    }
    *pos = p;
}

/* Half-sweep of one plane: target sites from the other sublattice. black: 1 for the black
 * sublattice. Returns the number of flips. */
static i64 half_sweep(i8 *t, const i8 *o, i64 h, i64 w, int black, const u64 *thr, u64 *x,
                      i64 *pos, u64 *u) {
    i64 flips = 0;
    for (i64 r = 0; r < h; ++r) {
        const i8 *up = o + ((r - 1 + h) % h) * w, *dn = o + ((r + 1) % h) * w, *mid = o + r * w;
        i8 *row = t + r * w;
        int left = (r % 2 == 0) == black; /* side neighbour k - 1, else k + 1 */
        draw(x, pos, u, w);
        for (i64 k = 0; k < w; ++k) {
            i64 side = left ? (k ? k - 1 : w - 1) : (k + 1 < w ? k + 1 : 0);
            int n = up[k] + dn[k] + mid[k] + mid[side];
            int s = row[k];
            int flip = u[k] < thr[(s > 0) * 5 + (n + 4) / 2];
            row[k] = (i8)(flip ? -s : s);
            flips += flip;
        }
    }
    return flips;
}

/* Run `sweeps` sweeps of every plane. thresholds: (batch, 2, 5) as above (s = -1 first);
 * rng_state (planes, LAG_R), rng_pos (planes); flips (planes), when not NULL, accumulates the
 * flips. Returns 0, or -1 when memory runs out. */
int spf_checkerboard_sweeps(i8 *black, i8 *white, i64 planes, i64 h, i64 w, i64 batch,
                            const i64 *thresholds, i64 *rng_state, i64 *rng_pos, i64 *flips,
                            i64 sweeps) {
    u64 *u = malloc(sizeof(u64) * (size_t)w);
    if (!u) return -1;
    for (i64 p = 0; p < planes; ++p) {
        const u64 *thr = (const u64 *)thresholds + (p % batch) * 10;
        i8 *b = black + p * h * w, *wh = white + p * h * w;
        u64 *x = (u64 *)rng_state + p * LAG_R;
        i64 count = 0;
        for (i64 s = 0; s < sweeps; ++s) {
            count += half_sweep(b, wh, h, w, 1, thr, x, rng_pos + p, u);
            count += half_sweep(wh, b, h, w, 0, thr, x, rng_pos + p, u);
        }
        if (flips) flips[p] += count;
    }
    free(u);
    return 0;
}

/* Per plane: bonds[p] = sum over bonds of s_i s_j (each bond once, from its white end),
 * spins[p] = sum of s; when sum_black / sum_white are not NULL the spins are added to them. */
void spf_checkerboard_measure(const i8 *black, const i8 *white, i64 planes, i64 h, i64 w,
                              i64 *bonds, i64 *spins, i64 *sum_black, i64 *sum_white) {
    for (i64 p = 0; p < planes; ++p) {
        const i8 *b = black + p * h * w, *wh = white + p * h * w;
        i64 bond = 0, total = 0;
        for (i64 r = 0; r < h; ++r) {
            const i8 *up = b + ((r - 1 + h) % h) * w, *dn = b + ((r + 1) % h) * w;
            const i8 *mid = b + r * w, *row = wh + r * w;
            int left = r % 2 != 0; /* a white site's side neighbour: k + 1 for even r */
            for (i64 k = 0; k < w; ++k) {
                i64 side = left ? (k ? k - 1 : w - 1) : (k + 1 < w ? k + 1 : 0);
                bond += row[k] * (up[k] + dn[k] + mid[k] + mid[side]);
                total += row[k] + mid[k];
            }
        }
        bonds[p] = bond;
        spins[p] = total;
        if (sum_black) {
            i64 n = h * w, offset = p * h * w;
            for (i64 j = 0; j < n; ++j) {
                sum_black[offset + j] += b[j];
                sum_white[offset + j] += wh[j];
            }
        }
    }
}
