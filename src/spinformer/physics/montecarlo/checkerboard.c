/* Compiled checkerboard sweeps of Ising chains on an even periodic L x W lattice (checkerboard.py).
 *
 * Spins are int8 +-1 in the compact layout of the tensor engine: black[p][r][k] is site
 * (r, 2k + r % 2) of plane p, white[p][r][k] is site (r, 2k + 1 - r % 2); a black site's four
 * neighbours are white (r - 1, k), (r + 1, k), (r, k) and (r, k - 1) for even r, (r, k + 1) for
 * odd r, and mirrored for white sites. One sweep updates all black sites, then all white ones.
 * A site with spin s and neighbour sum n flips when a uniform u < p[s][n]: the table holds,
 * per batch entry (plane p uses entry p % batch), floor(2^32 P(flip)) for the five values of n
 * and both s (capped at 2^32 - 1: exact except for P(flip) > 1 - 2^-32, which lazy Metropolis
 * never has), so Metropolis and the heat bath differ only in the table. u is a 32-bit half of
 * a tempered additive lagged Fibonacci word (lfg.h), one stream per plane. A row is done in
 * two passes: neighbour sums and table indices (vectorised by the compiler), then look-up,
 * compare and flip, applied arithmetically so that no branch follows the random decision.
 */
#include <stdint.h>
#include <stdlib.h>

#include "lfg.h"

typedef uint64_t u64;
typedef int64_t i64;
typedef int8_t i8;

/* n uniforms (32-bit halves of tempered words, low half first) of stream (x, *pos) into out
 * (n even), through words (n / 2 of them). */
static void draw(u64 *x, i64 *pos, uint32_t *out, u64 *words, i64 n) {
    lfg_draw(x, pos, words, n / 2);
    for (i64 j = 0; j < n / 2; ++j) {
        out[2 * j] = (uint32_t)words[j];
        out[2 * j + 1] = (uint32_t)(words[j] >> 32);
    }
}

typedef struct {
    uint32_t *u;  /* w + 1 uniforms */
    u64 *words;   /* (w + 1) / 2 random words */
    i8 *ext;      /* w + 2: a row with its periodic neighbours */
    uint8_t *idx; /* w table indices */
} scratch_t;

/* What a white half-sweep measures of the state it leaves (each bond has one white end):
 * sum over bonds of s_i s_j and sum of s, and the spins added to the int8 per-site sums. */
typedef struct {
    i64 bond, total;
    i8 *sum_white, *sum_black; /* (h, w) of the plane */
} tally_t;

/* Half-sweep of one plane: target sites from the other sublattice. black: 1 for the black
 * sublattice. With tally (white half-sweeps only) each row is also measured once updated,
 * while it and its neighbours are in L1 (the same sums as spf_checkerboard_measure). Returns
 * the number of flips. */
static i64 half_sweep(i8 *t, const i8 *o, i64 h, i64 w, int black, const u64 *thr, u64 *x,
                      i64 *pos, const scratch_t *sc, tally_t *tally) {
    uint32_t *u = sc->u;
    i8 *ext = sc->ext;
    uint8_t *idx = sc->idx;
    uint32_t table[10]; /* local: the int8 stores below cannot alias it; 2^32 -> 2^32 - 1 */
    for (int j = 0; j < 10; ++j) table[j] = thr[j] > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)thr[j];
    i64 flips = 0;
    for (i64 r = 0; r < h; ++r) {
        const i8 *up = o + ((r - 1 + h) % h) * w, *dn = o + ((r + 1) % h) * w, *mid = o + r * w;
        i8 *row = t + r * w;
        int left = (r % 2 == 0) == black; /* side neighbour k - 1, else k + 1 */
        ext[0] = mid[w - 1]; /* the row with its periodic neighbours: ext[k + 1] = mid[k] */
        for (i64 k = 0; k < w; ++k) ext[k + 1] = mid[k];
        ext[w + 1] = mid[0];
        const i8 *side = ext + (left ? 0 : 2);
        draw(x, pos, u, sc->words, w + (w & 1));
        for (i64 k = 0; k < w; ++k) /* index s = -1: 0..4, s = +1: 5..9 */
            idx[k] = (uint8_t)(((up[k] + dn[k] + mid[k] + side[k] + 4) >> 1) + 5 * (row[k] > 0));
        i64 count = 0;
        for (i64 k = 0; k < w; ++k) {
            int flip = u[k] < table[idx[k]];
            row[k] = (i8)(row[k] * (1 - 2 * flip));
            count += flip;
        }
        flips += count;
        if (tally) { /* the white row r and the black row r (mid) are final */
            int32_t row_bond = 0, row_total = 0;
            for (i64 k = 0; k < w; ++k) {
                row_bond += row[k] * (up[k] + dn[k] + mid[k] + side[k]);
                row_total += row[k] + mid[k];
            }
            tally->bond += row_bond;
            tally->total += row_total;
            if (tally->sum_white) {
                i8 *sw = tally->sum_white + r * w, *sb = tally->sum_black + r * w;
                for (i64 k = 0; k < w; ++k) sb[k] = (i8)(sb[k] + mid[k]);
                for (i64 k = 0; k < w; ++k) sw[k] = (i8)(sw[k] + row[k]);
            }
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
    scratch_t sc = {malloc(sizeof(uint32_t) * (size_t)(w + 1)),
                    malloc(sizeof(u64) * (size_t)((w + 1) / 2)), malloc((size_t)(w + 2)),
                    malloc((size_t)w)};
    int status = sc.u && sc.words && sc.ext && sc.idx ? 0 : -1;
    for (i64 p = 0; p < planes && !status; ++p) {
        const u64 *thr = (const u64 *)thresholds + (p % batch) * 10;
        i8 *b = black + p * h * w, *wh = white + p * h * w;
        u64 *x = (u64 *)rng_state + p * LAG_R;
        i64 count = 0;
        for (i64 s = 0; s < sweeps; ++s) {
            count += half_sweep(b, wh, h, w, 1, thr, x, rng_pos + p, &sc, NULL);
            count += half_sweep(wh, b, h, w, 0, thr, x, rng_pos + p, &sc, NULL);
        }
        if (flips) flips[p] += count;
    }
    free(sc.u);
    free(sc.words);
    free(sc.ext);
    free(sc.idx);
    return status;
}

/* Per plane p (batch entry p % batch): out[p] = E = -J B - h M and out[planes + p] = M / N,
 * with B = sum over bonds of s_i s_j (each bond once, from its white end) and M = sum of s,
 * both exact integers; when sum_black / sum_white (int8, emptied by the caller at least every
 * 127 additions) are not NULL the spins are added to them in the same pass.
 * Returns 0, or -1 when memory runs out. */
int spf_checkerboard_measure(const i8 *black, const i8 *white, i64 planes, i64 h, i64 w,
                             i64 batch, const double *coupling, const double *field, double *out,
                             i8 *sum_black, i8 *sum_white) {
    i8 *ext = malloc((size_t)(w + 2));
    if (!ext) return -1;
    for (i64 p = 0; p < planes; ++p) {
        const i8 *b = black + p * h * w, *wh = white + p * h * w;
        i64 bond = 0, total = 0;
        for (i64 r = 0; r < h; ++r) {
            const i8 *up = b + ((r - 1 + h) % h) * w, *dn = b + ((r + 1) % h) * w;
            const i8 *mid = b + r * w, *row = wh + r * w;
            ext[0] = mid[w - 1];
            for (i64 k = 0; k < w; ++k) ext[k + 1] = mid[k];
            ext[w + 1] = mid[0];
            const i8 *side = ext + (r % 2 ? 0 : 2); /* a white site's side: k + 1 for even r */
            int32_t row_bond = 0, row_total = 0;
            for (i64 k = 0; k < w; ++k) {
                row_bond += row[k] * (up[k] + dn[k] + mid[k] + side[k]);
                row_total += row[k] + mid[k];
            }
            bond += row_bond;
            total += row_total;
            if (sum_black) { /* the two rows are still in L1 */
                i8 *sb = sum_black + (p * h + r) * w, *sw = sum_white + (p * h + r) * w;
                for (i64 k = 0; k < w; ++k) sb[k] = (i8)(sb[k] + mid[k]);
                for (i64 k = 0; k < w; ++k) sw[k] = (i8)(sw[k] + row[k]);
            }
        }
        double j = coupling[p % batch], f = field[p % batch];
        out[p] = -j * (double)bond - f * (double)total;
        out[planes + p] = (double)total / (double)(2 * h * w);
    }
    free(ext);
    return 0;
}

/* The inverse of the state case of spf_checkerboard_grid: int8 values on the (planes, h, 2 w)
 * grid in row-major site order into the compact arrays black / white (planes, h, w), as spins
 * 2 g - 1 of bits g when from_bits, else as they are. */
void spf_checkerboard_compact(const i8 *grid, i64 planes, i64 h, i64 w, i8 *black, i8 *white,
                              i64 from_bits) {
    for (i64 p = 0; p < planes; ++p)
        for (i64 r = 0; r < h; ++r) {
            const i8 *g = grid + (p * h + r) * 2 * w;
            i8 *b = black + (p * h + r) * w, *wh = white + (p * h + r) * w;
            i8 *even = r % 2 ? wh : b, *odd = r % 2 ? b : wh; /* columns 2k, 2k + 1 */
            if (from_bits)
                for (i64 k = 0; k < w; ++k) {
                    even[k] = (i8)(2 * g[2 * k] - 1);
                    odd[k] = (i8)(2 * g[2 * k + 1] - 1);
                }
            else
                for (i64 k = 0; k < w; ++k) {
                    even[k] = g[2 * k];
                    odd[k] = g[2 * k + 1];
                }
        }
}

/* The compact int8 arrays black / white (planes, h, w) as values on the (planes, h, 2 w) grid
 * in row-major site order: out = (add + s) / divisor per site (add: NULL for 0, else doubles
 * in the order of out; it may be out itself), in double precision, written as doubles when
 * is_double, else as floats. Each row goes through a buffer of doubles, one simple
 * (vectorised) loop per step. Returns 0, or -1 when memory runs out. */
int spf_checkerboard_grid(const i8 *black, const i8 *white, i64 planes, i64 h, i64 w,
                          const double *add, double divisor, void *out, i64 is_double) {
    i64 width = 2 * w;
    double *row = malloc(sizeof(double) * (size_t)width);
    if (!row) return -1;
    for (i64 p = 0; p < planes; ++p)
        for (i64 r = 0; r < h; ++r) {
            const i8 *b = black + (p * h + r) * w, *wh = white + (p * h + r) * w;
            const i8 *even = r % 2 ? wh : b, *odd = r % 2 ? b : wh; /* columns 2k, 2k + 1 */
            i64 at = (p * h + r) * width;
            if (!add && divisor == 1.0 && !is_double) { /* the state: straight to floats */
                float *o = (float *)out + at;
                for (i64 k = 0; k < w; ++k) {
                    o[2 * k] = (float)even[k];
                    o[2 * k + 1] = (float)odd[k];
                }
                continue;
            }
            for (i64 k = 0; k < w; ++k) {
                row[2 * k] = (double)even[k];
                row[2 * k + 1] = (double)odd[k];
            }
            if (add)
                for (i64 k = 0; k < width; ++k) row[k] += add[at + k];
            if (divisor != 1.0)
                for (i64 k = 0; k < width; ++k) row[k] /= divisor;
            if (is_double) {
                double *o = (double *)out + at;
                for (i64 k = 0; k < width; ++k) o[k] = row[k];
            } else {
                float *o = (float *)out + at;
                for (i64 k = 0; k < width; ++k) o[k] = (float)row[k];
            }
        }
    free(row);
    return 0;
}

/* The sampling loop of `records` measurements: each is `every` sweeps (flips counted as in
 * spf_checkerboard_sweeps) and a measurement of the state they leave, taken in the white half
 * of the last sweep, written to out + 2 t planes (see spf_checkerboard_measure) and added to
 * the int8 per-site sums. *pending counts the states in those sums; when it reaches 127 they
 * are added to the doubles totals (planes, h, 2 w) in site order (see spf_checkerboard_grid)
 * and emptied. The same numbers as the separate calls, without a return to the caller or a
 * pass of its own per measurement. Returns 0, or -1 when memory runs out. */
int spf_checkerboard_run(i8 *black, i8 *white, i64 planes, i64 h, i64 w, i64 batch,
                         const i64 *thresholds, i64 *rng_state, i64 *rng_pos, i64 *flips,
                         i64 every, i64 records, const double *coupling, const double *field,
                         double *out, i8 *sum_black, i8 *sum_white, i64 *pending,
                         double *totals) {
    scratch_t sc = {malloc(sizeof(uint32_t) * (size_t)(w + 1)),
                    malloc(sizeof(u64) * (size_t)((w + 1) / 2)), malloc((size_t)(w + 2)),
                    malloc((size_t)w)};
    int status = sc.u && sc.words && sc.ext && sc.idx ? 0 : -1;
    for (i64 t = 0; t < records && !status; ++t) {
        for (i64 p = 0; p < planes; ++p) {
            const u64 *thr = (const u64 *)thresholds + (p % batch) * 10;
            i8 *b = black + p * h * w, *wh = white + p * h * w;
            u64 *x = (u64 *)rng_state + p * LAG_R;
            tally_t tally = {0, 0, sum_white + p * h * w, sum_black + p * h * w};
            i64 count = 0;
            for (i64 s = 0; s < every; ++s) {
                count += half_sweep(b, wh, h, w, 1, thr, x, rng_pos + p, &sc, NULL);
                count += half_sweep(wh, b, h, w, 0, thr, x, rng_pos + p, &sc,
                                    s == every - 1 ? &tally : NULL);
            }
            flips[p] += count;
            double j = coupling[p % batch], f = field[p % batch];
            out[2 * t * planes + p] = -j * (double)tally.bond - f * (double)tally.total;
            out[(2 * t + 1) * planes + p] = (double)tally.total / (double)(2 * h * w);
        }
        if (++*pending == 127) {
            status = spf_checkerboard_grid(sum_black, sum_white, planes, h, w, totals, 1.0,
                                           totals, 1);
            for (i64 j = 0; j < planes * h * w; ++j) sum_black[j] = sum_white[j] = 0;
            *pending = 0;
        }
    }
    free(sc.u);
    free(sc.words);
    free(sc.ext);
    free(sc.idx);
    return status;
}
