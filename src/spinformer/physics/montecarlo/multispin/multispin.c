/* Fused sweeps and measurements of the multi-spin coded checkerboard Metropolis engine.
 *
 * The lattice is stored as four sublattice quarters BE, BO, WE, WO, each (planes, H, W)
 * int64 words (bit i of a word = replica i, set = spin down). One sweep updates the black
 * quarters (BE, BO) from the white ones, then the white quarters from the black ones, with
 * exactly the word logic of the torch backend (torch_backend.py): the four "unsatisfied bond" bits, [k >= 2] and
 * [k >= 1] by full-adder logic, and each replica's exact Metropolis test from 12 bit-sliced
 * random digits plus a 63-bit tail shared by the word.
 *
 * Random words come from tempered additive lagged Fibonacci streams (lfg.h), one stream per
 * (plane, row) of the quarters: row i of
 * BE and BO (black half-sweep) and of WE and WO (white half-sweep) draw from stream (p, i),
 * so the result does not depend on the number of threads. The block recurrence is the one of
 * _LaggedFibonacci in torch_backend.py.
 *
 * Threads (POSIX) split the (plane, row) tasks into contiguous ranges and meet at a barrier
 * after each half-sweep. The whole call releases the Python GIL (ctypes).
 */
#define _POSIX_C_SOURCE 200809L /* pthread barriers under -std=c11 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#include "lfg.h"

#define DIGITS 12
#define DRAWS (DIGITS + 1)
#define MAX63 0x7FFFFFFFFFFFFFFFULL
#define BLOCK 64 /* sites per random draw: the DRAWS * BLOCK words stay in L1 */
#define SLOTS 8   /* recent states of the per-site sums (see spf_multispin_fold) */

typedef uint64_t u64;
typedef int64_t i64;

/* One acceptance constant p = 0.p_1..p_12 + 2^-12 q / 2^63: digit masks (0 or all ones). */
typedef struct {
    u64 d1[DIGITS], d0[DIGITS];
    i64 q1, q0;
    /* lazy Metropolis: k >= 2 moves are declined when u's first `lazy` digits are all 1;
     * lz[j] = all ones for j < lazy, keep0 = all ones when lazy = 0 (plain Metropolis) */
    u64 lz[DIGITS], keep0;
} accept_t;

/* ---- per-replica bit counts (flips in the sweeps, and measurements) ----------------------
 *
 * Words are counted per replica (bit) with a Harley-Seal carry-save tree: 16 words at a time
 * are reduced by carry-save adders into running "ones, twos, fours, eights" words and one
 * "sixteens" word, which goes into a bit-sliced counter (ripple-carry increment, flushed into
 * 64 per-replica totals every 255 additions). About five word operations per counted word,
 * and no branch on the data; runs of words are counted four at a time as vectors (hs_many). */
#define PLANES 8
#define CSA(high, low, a, b, c)                                                                \
    do {                                                                                       \
        __typeof__(a) u_ = (a) ^ (b); /* u64 or v4 */                                          \
        high = ((a) & (b)) | (u_ & (c));                                                       \
        low = u_ ^ (c);                                                                        \
    } while (0)

typedef struct {
    u64 c[PLANES];
    int n;
} vcount_t;

/* Four words as one vector (GNU C vector extension: AVX2 registers where the CPU has them,
 * pairs or single words otherwise), loaded from any 8-byte aligned address. */
typedef u64 v4 __attribute__((vector_size(32), aligned(8)));
#define VW 4 /* words per v4 */

/* The same carry-save counter for four words at a time: lane l of each running vector counts
 * the words at positions = l mod 4 of the blocks of 64 it was given; its lanes are summed when
 * flushed. */
typedef struct {
    v4 ones, twos, fours, eights, c[PLANES];
    int n;
} hsv_t;

typedef struct {
    u64 ones, twos, fours, eights, buf[16];
    int n;
    vcount_t sixteens;
    hsv_t v; /* blocks of 64 words */
    i64 *out, stride; /* 64 totals, stride apart */
} hs_t;

static void lanes_add(i64 *out, i64 stride, u64 word, int shift) {
    if (word)
        for (int i = 0; i < 64; ++i) out[i * stride] += (i64)((word >> i) & 1) << shift;
}

static void vc_flush(vcount_t *v, i64 *out, i64 stride, int shift) {
    for (int j = 0; j < PLANES; ++j) {
        lanes_add(out, stride, v->c[j], j + shift);
        v->c[j] = 0;
    }
    v->n = 0;
}

/* Four words into the running ones and twos; returns the carry into the fours. */
static inline u64 csa4(u64 *ones, u64 *twos, const u64 *d) {
    u64 twos_a, twos_b, fours;
    CSA(twos_a, *ones, *ones, d[0], d[1]);
    CSA(twos_b, *ones, *ones, d[2], d[3]);
    CSA(fours, *twos, *twos, twos_a, twos_b);
    return fours;
}

/* Eight words into the running ones, twos and fours; returns the carry into the eights. */
static inline u64 csa8(u64 *ones, u64 *twos, u64 *fours, const u64 *d) {
    u64 fours_a = csa4(ones, twos, d), fours_b = csa4(ones, twos, d + 4), eights;
    CSA(eights, *fours, *fours, fours_a, fours_b);
    return eights;
}

/* Sixteen words d into the running words of s (passed apart, so that a caller may keep them in
 * registers); the carry into the sixteens enters the bit-sliced counter. */
static inline void csa16(hs_t *s, u64 *ones, u64 *twos, u64 *fours, u64 *eights,
                         const u64 *d) {
    u64 eights_a = csa8(ones, twos, fours, d), eights_b = csa8(ones, twos, fours, d + 8);
    u64 sixteens;
    CSA(sixteens, *eights, *eights, eights_a, eights_b);
    vcount_t *v = &s->sixteens;
    for (int j = 0; j < PLANES; ++j) { /* ripple-carry increment, fixed length */
        u64 carry = v->c[j] & sixteens;
        v->c[j] ^= sixteens;
        sixteens = carry;
    }
    if (++v->n == 255) vc_flush(v, s->out, s->stride, 4);
}

/* csa4 and csa8 of vectors. */
static inline v4 csa4v(v4 *ones, v4 *twos, const v4 *d) {
    v4 twos_a, twos_b, fours;
    CSA(twos_a, *ones, *ones, d[0], d[1]);
    CSA(twos_b, *ones, *ones, d[2], d[3]);
    CSA(fours, *twos, *twos, twos_a, twos_b);
    return fours;
}

static inline v4 csa8v(v4 *ones, v4 *twos, v4 *fours, const v4 *d) {
    v4 fours_a = csa4v(ones, twos, d), fours_b = csa4v(ones, twos, d + 4), eights;
    CSA(eights, *fours, *fours, fours_a, fours_b);
    return eights;
}

/* The vector counter of sixteens into the totals (each lane), emptied. */
static void hsv_flush_counter(hsv_t *v, i64 *out, i64 stride) {
    for (int j = 0; j < PLANES; ++j) {
        for (int l = 0; l < VW; ++l) lanes_add(out, stride, v->c[j][l], j + 4);
        v->c[j] = (v4){0};
    }
    v->n = 0;
}

static void hs_block(hs_t *s) {
    csa16(s, &s->ones, &s->twos, &s->fours, &s->eights, s->buf);
    s->n = 0;
}

static inline void hs_add(hs_t *s, u64 x) {
    s->buf[s->n++] = x;
    if (s->n == 16) hs_block(s);
}

/* hs_add of the n words d[0..n) (the same totals as word by word): whole blocks of 64 words
 * into the vector counter, four words per operation, the next blocks of 16 with the running
 * words in registers, the rest one by one. */
static void hs_many(hs_t *s, const u64 *d, i64 n) {
    for (; n > 0 && s->n; --n) hs_add(s, *d++);
    if (n >= 16 * VW) { /* whole blocks of 16 vectors */
        hsv_t *v = &s->v;
        v4 ones = v->ones, twos = v->twos, fours = v->fours, eights = v->eights;
        for (; n >= 16 * VW; n -= 16 * VW, d += 16 * VW) {
            const v4 *x = (const v4 *)d;
            v4 eights_a = csa8v(&ones, &twos, &fours, x);
            v4 eights_b = csa8v(&ones, &twos, &fours, x + 8);
            v4 sixteens;
            CSA(sixteens, eights, eights, eights_a, eights_b);
            for (int j = 0; j < PLANES; ++j) { /* ripple-carry increment, fixed length */
                v4 carry = v->c[j] & sixteens;
                v->c[j] ^= sixteens;
                sixteens = carry;
            }
            if (++v->n == 255) hsv_flush_counter(v, s->out, s->stride);
        }
        v->ones = ones;
        v->twos = twos;
        v->fours = fours;
        v->eights = eights;
    }
    u64 ones = s->ones, twos = s->twos, fours = s->fours, eights = s->eights;
    for (; n >= 16; n -= 16, d += 16) csa16(s, &ones, &twos, &fours, &eights, d);
    s->ones = ones;
    s->twos = twos;
    s->fours = fours;
    s->eights = eights;
    for (; n > 0; --n) hs_add(s, *d++);
}

static void hs_flush(hs_t *s) {
    for (int i = 0; i < s->n; ++i) lanes_add(s->out, s->stride, s->buf[i], 0);
    lanes_add(s->out, s->stride, s->ones, 0);
    lanes_add(s->out, s->stride, s->twos, 1);
    lanes_add(s->out, s->stride, s->fours, 2);
    lanes_add(s->out, s->stride, s->eights, 3);
    vc_flush(&s->sixteens, s->out, s->stride, 4);
    s->ones = s->twos = s->fours = s->eights = 0;
    s->n = 0;
    hsv_t *v = &s->v;
    for (int l = 0; l < VW; ++l) {
        lanes_add(s->out, s->stride, v->ones[l], 0);
        lanes_add(s->out, s->stride, v->twos[l], 1);
        lanes_add(s->out, s->stride, v->fours[l], 2);
        lanes_add(s->out, s->stride, v->eights[l], 3);
    }
    v->ones = v->twos = v->fours = v->eights = (v4){0};
    hsv_flush_counter(v, s->out, s->stride);
}

/* Update t[k0:k1] in place; h2 is the side neighbour row already offset by +-1. Digit j of
 * site k is rnd[j * stride + k - r0]. The flip masks go to flips[k]. */
static inline void update_span(u64 *restrict t, const u64 *restrict v1, const u64 *restrict v2,
                               const u64 *restrict h1, const u64 *restrict h2,
                               const u64 *restrict rnd, i64 stride, i64 r0, const accept_t *acc,
                               u64 *restrict flips, i64 k0, i64 k1) {
    rnd -= r0;
    for (i64 k = k0; k < k1; ++k) {
        u64 s = t[k];
        u64 a = s ^ v1[k], b = s ^ v2[k], c = s ^ h1[k], d = s ^ h2[k];
        u64 ge2 = (a & b) | (c & d) | ((a | b) & (c | d));
        u64 ge1 = a | b | c | d;
        u64 keep = acc->keep0; /* r_j = NOT u_j: some r_j set <=> u's digits not all 1 */
        i64 tail = (i64)(rnd[DIGITS * stride + k] & MAX63);
        u64 a1 = -(u64)(tail < acc->q1), a0 = -(u64)(tail < acc->q0);
        for (int j = DIGITS - 1; j >= 0; --j) { /* last digit first */
            u64 r = rnd[j * stride + k];
            a1 = (a1 & r) | (acc->d1[j] & (a1 ^ r)); /* d = 1: a | r, d = 0: a & r */
            a0 = (a0 & r) | (acc->d0[j] & (a0 ^ r));
            keep |= r & acc->lz[j];
        }
        u64 m = (ge2 & keep) | (ge1 & a1) | a0;
        t[k] = s ^ m;
        flips[k] = m;
    }
}

/* Row update with periodic side neighbour h[(k + dk) mod w], dk = +-1, in blocks of BLOCK
 * sites, each with DRAWS * BLOCK fresh words of stream (x, pos) in rnd. */
static void update_row(u64 *t, const u64 *v1, const u64 *v2, const u64 *h, int dk, i64 w,
                       u64 *x, i64 *pos, u64 *rnd, const accept_t *acc, u64 *flips) {
    for (i64 k0 = 0; k0 < w; k0 += BLOCK) {
        i64 k1 = k0 + BLOCK < w ? k0 + BLOCK : w, n = k1 - k0;
        lfg_draw(x, pos, rnd, DRAWS * n);
        if (w == 1) {
            update_span(t, v1, v2, h, h, rnd, n, k0, acc, flips, 0, 1);
        } else if (dk < 0) {
            i64 start = k0;
            if (k0 == 0) { /* site 0's left neighbour wraps to w - 1 */
                update_span(t, v1, v2, h, h + w - 1, rnd, n, k0, acc, flips, 0, 1);
                start = 1;
            }
            update_span(t, v1, v2, h, h - 1, rnd, n, k0, acc, flips, start, k1);
        } else {
            i64 end = k1 == w ? w - 1 : k1; /* site w - 1's right neighbour wraps to 0 */
            update_span(t, v1, v2, h, h + 1, rnd, n, k0, acc, flips, k0, end);
            if (end < k1) update_span(t, v1, v2, h, h + 1 - w, rnd, n, k0, acc, flips, end, k1);
        }
    }
}

typedef struct {
    u64 *q[4];     /* BE, BO, WE, WO */
    u64 *flips[4]; /* NULL, or where the last sweep's flip masks go */
    i64 *flip_counts; /* NULL, or (planes * 64) totals of the last sweep's flips */
    i64 *measure;     /* NULL, or (2, groups * 64, batch) counts of the state after the sweeps */
    const u64 *gauge; /* (batch) gauge words of the white quarters (with measure) */
    u64 *slot;        /* NULL, or the slot of the per-site sums for that state (4, quarter) */
    i64 planes, h, w, batch;
    const accept_t *acc; /* one per batch entry; plane p uses acc[p % batch] */
    u64 *rng_state;      /* (planes * h, LAG_R) */
    i64 *rng_pos;        /* (planes * h) */
    i64 sweeps;
    int stream; /* the slots are written with non-temporal stores */
    pthread_barrier_t barrier;
    pthread_mutex_t lock; /* the gate: workers start once every thread exists */
    pthread_cond_t opened;
    int open;
} shared_t;

typedef struct {
    shared_t *sh;
    i64 begin, end; /* task range, task = p * h + i */
    u64 *rnd;       /* DRAWS * BLOCK words */
    u64 *scratch;   /* w words: flip masks not recorded */
    i64 *partial;   /* (planes * 64) flip totals of this job, then (2, planes * 64) counts */
    hs_t flips;     /* counting the flips of the current plane */
    hs_t bonds, down; /* counting unsatisfied bonds and down spins of the current plane */
    u64 *row;       /* 5 BLOCK words: a block's bond and spin words */
} job_t;

/* Quarter indices and neighbour geometry (see MultispinEngine._neighbours):
 * BE[i,k]: WO[i], WO[i-1], WE[i,k], WE[i,k-1]     BO[i,k]: WE[i], WE[i+1], WO[i,k], WO[i,k+1]
 * WE[i,k]: BO[i], BO[i-1], BE[i,k], BE[i,k+1]     WO[i,k]: BE[i], BE[i+1], BO[i,k], BO[i,k-1] */
enum { BE, BO, WE, WO };
static const int TARGET[2][2] = {{BE, BO}, {WE, WO}};
static const int VERT[2][2] = {{WO, WE}, {BO, BE}};
static const int VSTEP[2][2] = {{-1, +1}, {-1, +1}};
static const int SIDE[2][2] = {{WE, WO}, {BE, BO}};
static const int SSTEP[2][2] = {{-1, +1}, {+1, -1}};

/* Stores of words that are not read again soon (the slots of the per-site sums): non-temporal
 * where the CPU has them (x86-64: no read for ownership, no eviction of the lattice from the
 * caches), plain stores elsewhere; store_fence orders them before later stores. */
#define STREAM_BYTES (16 << 20) /* slots that may stay in a large last-level cache: stored */
#if defined(__x86_64__) && defined(__SSE2__)
#define STREAM_STORES 1
#include <emmintrin.h>
static inline void store_stream(u64 *p, u64 x) { _mm_stream_si64((long long *)p, (long long)x); }
static inline void store_fence(void) { _mm_sfence(); }
#else
#define STREAM_STORES 0
static inline void store_stream(u64 *p, u64 x) { *p = x; }
static inline void store_fence(void) {}
#endif

/* The measurement of a white row just updated (target, with vertical neighbours v1, v2 and
 * side neighbours s[k], s[(k + dk) mod w], all final): its four bonds per site (each bond of
 * the lattice has one white end), its down spins (gauge undone) and those of the black row v1
 * (each black row is v1 of one white row), and both rows into the slot. The counts do not
 * depend on the order of the words, so each kind of bond is one contiguous run of words
 * (loops the compiler vectorises), in blocks of BLOCK sites that stay in L1. */
static void measure_row(job_t *job, const u64 *t, const u64 *v1, const u64 *v2, const u64 *s,
                        int dk, u64 gauge, u64 *slot_t, u64 *slot_v) {
    i64 w = job->sh->w;
    u64 *b = job->row, *spins = job->row + 4 * BLOCK;
    for (i64 k0 = 0; k0 < w; k0 += BLOCK) {
        i64 n = w - k0 < BLOCK ? w - k0 : BLOCK;
        const u64 *tk = t + k0, *v1k = v1 + k0, *v2k = v2 + k0, *sk = s + k0;
        for (i64 k = 0; k < n; ++k) {
            b[k] = tk[k] ^ v1k[k];
            b[BLOCK + k] = tk[k] ^ v2k[k];
            b[2 * BLOCK + k] = tk[k] ^ sk[k];
        }
        /* the side neighbours s[k + dk], wrapped at the ends of the row */
        i64 lo = k0 + dk < 0 ? 1 : 0, hi = k0 + n + dk > w ? n - 1 : n;
        for (i64 k = lo; k < hi; ++k) b[3 * BLOCK + k] = tk[k] ^ sk[k + dk];
        if (lo) b[3 * BLOCK] = tk[0] ^ s[w - 1];
        if (hi < n) b[3 * BLOCK + n - 1] = tk[n - 1] ^ s[0];
        for (i64 k = 0; k < n; ++k) spins[k] = tk[k] ^ gauge;
        if (n == BLOCK) {
            hs_many(&job->bonds, b, 4 * BLOCK);
        } else {
            for (int q = 0; q < 4; ++q) hs_many(&job->bonds, b + q * BLOCK, n);
        }
        hs_many(&job->down, spins, n);
        hs_many(&job->down, v1k, n);
        if (slot_t && job->sh->stream) { /* read only at the next fold: past the caches */
            for (i64 k = 0; k < n; ++k) store_stream(slot_t + k0 + k, spins[k]);
            for (i64 k = 0; k < n; ++k) store_stream(slot_v + k0 + k, v1k[k]);
        } else if (slot_t) {
            for (i64 k = 0; k < n; ++k) slot_t[k0 + k] = spins[k];
            for (i64 k = 0; k < n; ++k) slot_v[k0 + k] = v1k[k];
        }
    }
    if (slot_t && job->sh->stream) store_fence();
}

static void half_sweep(job_t *job, int colour, int record, int count, int measure) {
    const shared_t *sh = job->sh;
    i64 h = sh->h, w = sh->w, plane_words = h * w, quarter_words = sh->planes * plane_words;
    i64 lanes = sh->planes * 64;
    for (i64 task = job->begin; task < job->end; ++task) {
        i64 p = task / h, i = task % h;
        const accept_t *acc = sh->acc + (p % sh->batch);
        if (count && (task == job->begin || i == 0)) { /* a new plane: its own totals */
            if (task != job->begin) hs_flush(&job->flips);
            job->flips.out = job->partial + p * 64;
            job->flips.stride = 1;
        }
        if (measure && (task == job->begin || i == 0)) { /* lane 64 g, entry b of the counts */
            if (task != job->begin) {
                hs_flush(&job->bonds);
                hs_flush(&job->down);
            }
            i64 first = (p / sh->batch) * 64 * sh->batch + p % sh->batch;
            job->bonds.out = job->partial + lanes + first;
            job->down.out = job->partial + 2 * lanes + first;
            job->bonds.stride = job->down.stride = sh->batch;
        }
        for (int half = 0; half < 2; ++half) {
            int target = TARGET[colour][half], vert = VERT[colour][half];
            int side = SIDE[colour][half];
            i64 i2 = (i + VSTEP[colour][half] + h) % h;
            u64 *row = sh->q[target] + p * plane_words + i * w;
            const u64 *v = sh->q[vert] + p * plane_words;
            const u64 *s = sh->q[side] + p * plane_words + i * w;
            u64 *flips = record ? sh->flips[target] + p * plane_words + i * w : job->scratch;
            update_row(row, v + i * w, v + i2 * w, s, SSTEP[colour][half], w,
                       sh->rng_state + task * LAG_R, sh->rng_pos + task, job->rnd, acc, flips);
            if (count) hs_many(&job->flips, flips, w); /* the row's masks are still in L1 */
            if (measure) { /* so are the rows */
                u64 *slot = sh->slot ? sh->slot + p * plane_words + i * w : NULL;
                measure_row(job, row, v + i * w, v + i2 * w, s, (int)SSTEP[colour][half],
                            sh->gauge[p % sh->batch], slot ? slot + target * quarter_words : NULL,
                            slot ? slot + vert * quarter_words : NULL);
            }
        }
    }
    if (count && job->end > job->begin) hs_flush(&job->flips);
    if (measure && job->end > job->begin) {
        hs_flush(&job->bonds);
        hs_flush(&job->down);
    }
}

static void *worker(void *arg) {
    job_t *job = arg;
    shared_t *sh = job->sh;
    pthread_mutex_lock(&sh->lock);
    while (!sh->open) pthread_cond_wait(&sh->opened, &sh->lock);
    pthread_mutex_unlock(&sh->lock);
    for (i64 sweep = 0; sweep < sh->sweeps; ++sweep) {
        int last = sweep == sh->sweeps - 1;
        int record = sh->flips[0] != NULL && last, count = sh->flip_counts != NULL && last;
        int measure = sh->measure != NULL && last;
        for (int colour = 0; colour < 2; ++colour) {
            half_sweep(job, colour, record, count, measure && colour == 1);
            pthread_barrier_wait(&sh->barrier);
        }
    }
    return NULL;
}

/* Run `sweeps` sweeps. digits1/digits0: (batch, DIGITS) masks 0 / -1 of p1 = e^{-4 beta |J|}
 * and p0 = p1^2 (times 1 - 2^-lazy); tail1/tail0: (batch) 63-bit tails; lazy: digits whose
 * all-ones pattern declines a k >= 2 move (0: plain Metropolis). flips: four quarter-shaped
 * outputs for the last sweep's flip masks, or all NULL; flip_counts: (planes * 64) per-replica
 * numbers of flips in the last sweep (set here), or NULL. measure: NULL, or (2, groups * 64,
 * batch) per-replica counts of the final state (set here; see spf_multispin_measure, which
 * counts the same numbers in a pass of its own), counted in the white half of the last sweep
 * while its rows are in cache, with gauge (batch) and slot: NULL, or where the final state's
 * down spins go (slot `slot` of spf_multispin_measure's slots). Threads that cannot be created
 * are done without (the tasks are split over those that exist). Returns 0, or -1 when memory
 * runs out (nothing is changed then). */
int spf_multispin_sweeps(i64 *be, i64 *bo, i64 *we, i64 *wo, i64 planes, i64 h, i64 w,
                         const i64 *digits1, const i64 *digits0, const i64 *tail1,
                         const i64 *tail0, i64 batch, i64 lazy, i64 *rng_state, i64 *rng_pos, i64 *fbe,
                         i64 *fbo, i64 *fwe, i64 *fwo, i64 *flip_counts, i64 sweeps,
                         i64 threads, i64 *measure, const i64 *gauge, i64 *slot) {
    i64 tasks = planes * h;
    if (threads > tasks) threads = tasks;
    if (threads < 1) threads = 1;
    accept_t *acc = malloc(sizeof(accept_t) * (size_t)batch);
    job_t *jobs = malloc(sizeof(job_t) * (size_t)threads);
    pthread_t *ids = malloc(sizeof(pthread_t) * (size_t)threads);
    i64 per_job = DRAWS * BLOCK + w + 5 * BLOCK, counted = 3 * planes * 64;
    u64 *buffers = malloc(sizeof(u64) * (size_t)(threads * per_job));
    i64 *partial = calloc((size_t)(threads * counted), sizeof(i64));
    shared_t *sh = malloc(sizeof(shared_t));
    int status = 0;
    if (!acc || !jobs || !ids || !buffers || !partial || !sh) {
        status = -1;
        goto done;
    }
    for (i64 b = 0; b < batch; ++b) {
        for (int j = 0; j < DIGITS; ++j) {
            acc[b].d1[j] = (u64)digits1[b * DIGITS + j];
            acc[b].d0[j] = (u64)digits0[b * DIGITS + j];
        }
        acc[b].q1 = tail1[b];
        acc[b].q0 = tail0[b];
        for (int j = 0; j < DIGITS; ++j) acc[b].lz[j] = j < lazy ? ~(u64)0 : 0;
        acc[b].keep0 = lazy ? 0 : ~(u64)0;
    }
    *sh = (shared_t){
        .q = {(u64 *)be, (u64 *)bo, (u64 *)we, (u64 *)wo},
        .flips = {(u64 *)fbe, (u64 *)fbo, (u64 *)fwe, (u64 *)fwo},
        .flip_counts = flip_counts, .measure = measure, .gauge = (const u64 *)gauge,
        .slot = (u64 *)slot, .planes = planes, .h = h, .w = w, .batch = batch, .acc = acc,
        .rng_state = (u64 *)rng_state, .rng_pos = rng_pos, .sweeps = sweeps, .open = 0,
        .stream = STREAM_STORES && SLOTS * 4 * planes * h * w * 8 > STREAM_BYTES,
    };
    pthread_mutex_init(&sh->lock, NULL);
    pthread_cond_init(&sh->opened, NULL);
    for (i64 t = 0; t < threads; ++t) {
        u64 *buffer = buffers + t * per_job;
        jobs[t] = (job_t){.sh = sh, .rnd = buffer, .scratch = buffer + DRAWS * BLOCK,
                          .partial = partial + t * counted, .row = buffer + DRAWS * BLOCK + w};
    }
    i64 running = 1; /* this thread is worker 0 */
    while (running < threads && !pthread_create(&ids[running], NULL, worker, &jobs[running]))
        ++running;
    for (i64 t = 0; t < running; ++t) {
        jobs[t].begin = tasks * t / running;
        jobs[t].end = tasks * (t + 1) / running;
    }
    pthread_barrier_init(&sh->barrier, NULL, (unsigned)running);
    pthread_mutex_lock(&sh->lock);
    sh->open = 1;
    pthread_cond_broadcast(&sh->opened);
    pthread_mutex_unlock(&sh->lock);
    worker(&jobs[0]);
    for (i64 t = 1; t < running; ++t) pthread_join(ids[t], NULL);
    if (flip_counts) {
        for (i64 j = 0; j < planes * 64; ++j) flip_counts[j] = 0;
        for (i64 t = 0; t < running; ++t)
            for (i64 j = 0; j < planes * 64; ++j) flip_counts[j] += partial[t * counted + j];
    }
    if (measure) {
        for (i64 j = 0; j < 2 * planes * 64; ++j) measure[j] = 0;
        for (i64 t = 0; t < running; ++t)
            for (i64 j = 0; j < 2 * planes * 64; ++j)
                measure[j] += partial[t * counted + planes * 64 + j];
    }
    pthread_barrier_destroy(&sh->barrier);
    pthread_cond_destroy(&sh->opened);
    pthread_mutex_destroy(&sh->lock);
done:
    free(acc);
    free(jobs);
    free(ids);
    free(buffers);
    free(partial);
    free(sh);
    return status;
}

/* The quarters of words (planes, 2h, 2w) in row-major site order (plane p = g * batch + b):
 * BE[p,i,k] = words[p,2i,2k], WE[p,i,k] = words[p,2i,2k+1] ^ gauge[b], WO[p,i,k] =
 * words[p,2i+1,2k] ^ gauge[b], BO[p,i,k] = words[p,2i+1,2k+1] (the layout of
 * MultispinEngine), in one pass. */
void spf_multispin_split(const i64 *words, i64 planes, i64 h, i64 w, i64 batch,
                         const i64 *gauge, i64 *be, i64 *bo, i64 *we, i64 *wo) {
    for (i64 p = 0; p < planes; ++p) {
        i64 g = gauge[p % batch];
        for (i64 i = 0; i < h; ++i) {
            const i64 *even = words + (p * 2 * h + 2 * i) * 2 * w, *odd = even + 2 * w;
            i64 at = (p * h + i) * w;
            for (i64 k = 0; k < w; ++k) {
                be[at + k] = even[2 * k];
                we[at + k] = even[2 * k + 1] ^ g;
                wo[at + k] = odd[2 * k] ^ g;
                bo[at + k] = odd[2 * k + 1];
            }
        }
    }
}

/* Per-site sums of down spins: SLOTS recent states, slot-major (slot j of all n site words
 * contiguous, so a measurement writes one stream), and `planes` (at least 4) bit-sliced counter
 * planes per site word, in groups of four site words (n is a multiple of 4): plane j of word
 * i at counter[((i / 4) * planes + j) * 4 + i % 4], so that four words fold as one vector.
 * When the slots are full (or the sums are read) the slots of a site are folded into its
 * planes: a carry-save tree makes the four bit planes of their sum, added with ripple carries
 * (continued only while a carry is left in one of the four words), or stored as they are into
 * an empty counter (which then needs no clearing pass). The caller empties the counter
 * (spf_multispin_spill) before its count could pass 2^planes - 1. */
/* slot j of site word i is slots[j * (n + SLOT_PAD) + i]: a stride that is no multiple of the
 * page size, so that the eight slots of a word do not compete for one cache set */
#define SLOT_PAD 8

static inline void fold(const u64 *slots, i64 n, v4 *c, i64 planes, int empty) {
    v4 d[SLOTS];
    for (int j = 0; j < SLOTS; ++j) d[j] = *(const v4 *)(slots + j * n);
    v4 t1, o1, t2, o2, t3, o3, f1, w1;
    CSA(t1, o1, d[0], d[1], d[2]);
    CSA(t2, o2, o1, d[3], d[4]);
    CSA(t3, o3, o2, d[5], d[6]);
    v4 add[4], t4 = o3 & d[7];
    add[0] = o3 ^ d[7];
    CSA(f1, w1, t1, t2, t3);
    add[1] = w1 ^ t4;
    v4 f2 = w1 & t4;
    add[2] = f1 ^ f2;
    add[3] = f1 & f2;
    if (empty) {
        for (i64 j = 0; j < planes; ++j) c[j] = j < 4 ? add[j] : (v4){0};
        return;
    }
    v4 carry = {0};
    for (i64 j = 0; j < planes; ++j) {
        v4 a = j < 4 ? add[j] : (v4){0}, x = c[j] ^ a;
        v4 next = (c[j] & a) | (carry & x);
        c[j] = x ^ carry;
        carry = next;
        if (j >= 3 && !(carry[0] | carry[1] | carry[2] | carry[3])) break;
    }
}

/* Fold the slots of all n site words into their planes (the unused slots must be zero; empty:
 * the counter holds nothing yet, its contents are ignored), four words after four: nine
 * sequential streams (folding inside the measurement's row loop, 36 interleaved streams, cost
 * four times as much). */
void spf_multispin_fold(i64 *slots, i64 *counter, i64 n, i64 planes, i64 empty) {
    for (i64 i = 0; i < n; i += VW)
        fold((const u64 *)slots + i, n + SLOT_PAD, (v4 *)((u64 *)counter + i * planes), planes,
             (int)empty);
}

/* Add the `planes` planes of the n site words of counter into the wide_planes planes of wide
 * (both in groups of four words; empty: wide holds nothing yet and is overwritten), the counter
 * left as it is. The caller keeps the sums below 2^wide_planes. */
void spf_multispin_spill(const i64 *counter, i64 *wide, i64 n, i64 planes, i64 wide_planes,
                         i64 empty) {
    for (i64 i = 0; i < n; i += VW) {
        const v4 *c = (const v4 *)((const u64 *)counter + i * planes);
        v4 *x = (v4 *)((u64 *)wide + i * wide_planes), carry = {0};
        for (i64 j = 0; j < wide_planes; ++j) {
            v4 a = j < planes ? c[j] : (v4){0};
            if (empty) {
                x[j] = a;
                continue;
            }
            v4 sum = x[j] ^ a, next = (x[j] & a) | (carry & sum);
            x[j] = sum ^ carry;
            carry = next;
        }
    }
}

typedef struct {
    const u64 *q[4], *flips[4];
    u64 *slots;   /* (SLOTS, 4, planes, h, w), or NULL */
    const u64 *gauge;
    i64 planes, h, w, batch, slot;
    i64 begin, end; /* task range, task = p * h + i */
    i64 *counts;    /* (3, groups * 64, batch): unsatisfied bonds, down spins, flips */
    u64 *row;       /* 12 w words: a row's bond and spin words, counted in blocks */
} measure_t;

static void *measure_rows(void *arg) {
    const measure_t *m = arg;
    i64 h = m->h, w = m->w, plane_words = h * w, quarter_words = m->planes * plane_words;
    i64 groups = m->planes / m->batch, lanes = groups * 64 * m->batch;
    hs_t bonds = {0}, down = {0}, flips = {0};
    for (i64 task = m->begin; task < m->end; ++task) {
        i64 p = task / h, i = task % h;
        if (task == m->begin || i == 0) { /* a new plane: its own totals */
            if (task != m->begin) {
                hs_flush(&bonds);
                hs_flush(&down);
                hs_flush(&flips);
            }
            i64 first = (p / m->batch) * 64 * m->batch + p % m->batch; /* lane 64 g, entry b */
            bonds.out = m->counts + first;
            down.out = m->counts + lanes + first;
            flips.out = m->counts + 2 * lanes + first;
            bonds.stride = down.stride = flips.stride = m->batch;
        }
        u64 gauge = m->gauge[p % m->batch];
        i64 up = (i - 1 + h) % h, dn = (i + 1) % h, base = p * plane_words + i * w;
        const u64 *be = m->q[BE] + base, *bo = m->q[BO] + base;
        const u64 *we = m->q[WE] + base, *wo = m->q[WO] + base;
        const u64 *wo_up = m->q[WO] + p * plane_words + up * w;
        const u64 *we_dn = m->q[WE] + p * plane_words + dn * w;
        u64 *bond_words = m->row, *spin_words = m->row + 8 * w;
        for (i64 k = 0; k < w; ++k) {
            i64 left = k ? k - 1 : w - 1, right = k + 1 < w ? k + 1 : 0;
            u64 s = be[k], *b = bond_words + 8 * k; /* BE[i,k]: WO[i], WO[i-1], WE[i,k], WE[i,k-1] */
            b[0] = s ^ wo[k];
            b[1] = s ^ wo_up[k];
            b[2] = s ^ we[k];
            b[3] = s ^ we[left];
            s = bo[k]; /* BO[i,k]: WE[i], WE[i+1], WO[i,k], WO[i,k+1] */
            b[4] = s ^ we[k];
            b[5] = s ^ we_dn[k];
            b[6] = s ^ wo[k];
            b[7] = s ^ wo[right];
            spin_words[4 * k] = be[k];
            spin_words[4 * k + 1] = bo[k];
            spin_words[4 * k + 2] = we[k] ^ gauge;
            spin_words[4 * k + 3] = wo[k] ^ gauge;
        }
        hs_many(&bonds, bond_words, 8 * w);
        hs_many(&down, spin_words, 4 * w);
        if (m->slots) { /* folded after the pass (spf_multispin_fold) */
            u64 *slot = m->slots + m->slot * (4 * quarter_words + SLOT_PAD) + base;
            for (int q = 0; q < 4; ++q)
                for (i64 k = 0; k < w; ++k) slot[q * quarter_words + k] = spin_words[4 * k + q];
        }
        if (m->flips[0])
            for (i64 k = 0; k < w; ++k)
                for (int q = 0; q < 4; ++q) hs_add(&flips, m->flips[q][base + k]);
    }
    if (m->end > m->begin) {
        hs_flush(&bonds);
        hs_flush(&down);
        hs_flush(&flips);
    }
    return NULL;
}

/* From per-replica counts (3, groups * 64, batch) (see spf_multispin_measure) into out
 * (2, groups * 64, batch): the energy scale[b] (u - N) and the magnetization 1 - 2 d / N, and
 * into accepted (groups * 64, batch) added the flipped fraction f / N of flip_counts
 * (planes * 64; NULL: none). */
void spf_multispin_values_into(const i64 *counts, i64 planes, i64 h, i64 w, i64 batch,
                               const double *scale, double *out, double *accepted,
                               const i64 *flip_counts) {
    i64 lanes = planes * 64;
    double sites = 4.0 * (double)(h * w);
    for (i64 j = 0; j < lanes; ++j) {
        out[j] = scale[j % batch] * (double)(counts[j] - 4 * h * w); /* -|J|(2N - 2u) */
        out[lanes + j] = 1.0 - 2.0 * (double)counts[lanes + j] / sites;
        if (flip_counts) {
            i64 b = j % batch, lane = (j / batch) % 64, g = j / (batch * 64);
            accepted[j] += (double)flip_counts[(g * batch + b) * 64 + lane] / sites;
        }
    }
}

/* spf_multispin_values_into with out (3, groups * 64, batch): accepted = out[2]. */
void spf_multispin_values(const i64 *counts, i64 planes, i64 h, i64 w, i64 batch,
                          const double *scale, double *out, const i64 *flip_counts) {
    spf_multispin_values_into(counts, planes, h, w, batch, scale, out, out + 2 * planes * 64,
                              flip_counts);
}

/* Per-replica counts of the current state into counts (3, groups * 64, batch) (replica
 * 64 g + i of batch entry b; plane p = g * batch + b), and from them into out (same shape)
 * the energy scale[b] (u - N) (scale = 2|J|), the magnetization 1 - 2 d / N and, added to
 * out[2], the flipped fraction f / N of flip_counts (planes * 64; NULL: none); the counts:
 * unsatisfied bonds (each bond once, from its black end; stored spins, so the gauge keeps
 * every bond ferromagnetic), down spins (white spins with the gauge of batch entry p % batch
 * undone) and the flip masks fbe..fwo (all NULL: none). slots, when not NULL, receive the
 * down spins in slot `slot` of the per-site sums (see fold, which the caller runs after
 * every SLOTS of them).
 * Threads split the rows, each with its own totals, summed at the end. Returns 0, or -1 when
 * memory runs out (nothing is changed then). */
int spf_multispin_measure(const i64 *be, const i64 *bo, const i64 *we, const i64 *wo, i64 planes,
                          i64 h, i64 w, i64 batch, const i64 *gauge, const i64 *fbe,
                          const i64 *fbo, const i64 *fwe, const i64 *fwo, i64 *slots,
                          i64 slot, i64 *counts, const double *scale,
                          double *out, const i64 *flip_counts, i64 threads) {
    i64 tasks = planes * h, size = 3 * planes * 64; /* = 3 * groups * 64 * batch */
    if (slots && (slot < 0 || slot >= SLOTS)) return -2;
    if (threads > tasks) threads = tasks;
    if (threads < 1) threads = 1;
    measure_t *jobs = malloc(sizeof(measure_t) * (size_t)threads);
    pthread_t *ids = malloc(sizeof(pthread_t) * (size_t)threads);
    i64 *partial = calloc((size_t)(threads * size), sizeof(i64));
    u64 *rows = malloc(sizeof(u64) * (size_t)(threads * 12 * w));
    if (!jobs || !ids || !partial || !rows) {
        free(jobs);
        free(ids);
        free(partial);
        free(rows);
        return -1;
    }
    for (i64 t = 0; t < threads; ++t) {
        jobs[t] = (measure_t){
            .q = {(const u64 *)be, (const u64 *)bo, (const u64 *)we, (const u64 *)wo},
            .flips = {(const u64 *)fbe, (const u64 *)fbo, (const u64 *)fwe, (const u64 *)fwo},
            .slots = (u64 *)slots, .gauge = (const u64 *)gauge, .planes = planes, .h = h,
            .w = w, .batch = batch, .slot = slot,
            .begin = tasks * t / threads, .end = tasks * (t + 1) / threads,
            .counts = partial + t * size, .row = rows + t * 12 * w,
        };
    }
    i64 running = 1; /* this thread is worker 0 */
    while (running < threads && !pthread_create(&ids[running], NULL, measure_rows, &jobs[running]))
        ++running;
    measure_rows(&jobs[0]);
    for (i64 t = running; t < threads; ++t) measure_rows(&jobs[t]); /* threads not started */
    for (i64 t = 1; t < running; ++t) pthread_join(ids[t], NULL);
    for (i64 j = 0; j < size; ++j) counts[j] = 0;
    for (i64 t = 0; t < threads; ++t)
        for (i64 j = 0; j < size; ++j) counts[j] += partial[t * size + j];
    spf_multispin_values(counts, planes, h, w, batch, scale, out, flip_counts);
    free(jobs);
    free(ids);
    free(partial);
    free(rows);
    return 0;
}

/* Unpack per-replica numbers into an output laid out (chains, batch, L * W) in row-major site
 * order: replica r = 64 g + bit of plane p = g * batch + b gets value a + scale * count at
 * site (row, col), count = sum_j bit(word_j) 2^j over the planes j < nplanes of the site's
 * words, plane j of element (p, i, k) of quarter q at
 * src[q][((p * h + i) * w + k) * stride + offset + j], after XOR with gauge[b] (white quarters
 * only); with quarter_words > 0, src[0] is a counter in groups of four words (see fold):
 * element e = (p * h + i) * w + k of quarter q is its word q * quarter_words + e, whose plane j
 * is read (stride = its planes, offset 0). Writes doubles when is_double, else floats. The two
 * quarters of a lattice row (BE and
 * WE for even rows, WO and BO for odd ones) are read in blocks of 64 site words per plane, each
 * block transposed as a 64 x 64 bit matrix (word lane of the result holds the bits of the 64
 * sites for replica lane), then each replica's row is assembled from its words with loops the
 * compiler vectorises, and written in order. Returns 0, or -1 when memory runs out. */

/* In place: bit c of a[r] <-> bit r of a[c] (recursive block swaps, Warren, Hacker's Delight,
 * 2nd ed., 2013, section 7-3). */
static void transpose64(u64 *a) {
    u64 m = 0x00000000FFFFFFFFULL;
    for (int j = 32; j; j >>= 1, m ^= m << j)
        for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
            u64 t = ((a[k] >> j) ^ a[k | j]) & m;
            a[k] ^= t << j;
            a[k | j] ^= t;
        }
}

/* The row of quarter words row[k * stride + j] (k < w, j < nplanes; grouped > 0: row is a
 * counter in groups of four and word k of the row is its word grouped - 1 + k), XOR flip, as
 * transposed blocks: out[(j * blocks + kb) * 64 + lane] bit kk = bit lane of plane j of word 64 kb + kk. */
static void transpose_row(const u64 *row, i64 w, i64 stride, i64 nplanes, u64 flip, u64 *out,
                          i64 grouped) {
    i64 blocks = (w + 63) / 64;
    for (i64 kb = 0; kb < blocks; ++kb) {
        i64 n = w - 64 * kb < 64 ? w - 64 * kb : 64;
        for (i64 j = 0; j < nplanes; ++j) {
            u64 *block = out + (j * blocks + kb) * 64;
            if (grouped) /* row = the counter, word e = grouped - 1 + 64 kb + k */
                for (i64 k = 0; k < n; ++k) {
                    i64 e = grouped - 1 + 64 * kb + k;
                    block[k] = row[((e / 4) * stride + j) * 4 + e % 4] ^ flip;
                }
            else
                for (i64 k = 0; k < n; ++k) block[k] = row[(64 * kb + k) * stride + j] ^ flip;
            for (i64 k = n; k < 64; ++k) block[k] = 0;
        }
        for (i64 j = 0; j < nplanes; ++j) transpose64(out + (j * blocks + kb) * 64);
    }
}

/* c[k] = count of site k (k < 64 * blocks) for replica lane, from transpose_row's blocks (in
 * 32-bit halves, so that the shifts vectorise). */
static void lane_counts(const u64 *t, i64 blocks, i64 nplanes, int lane, uint32_t *c) {
    for (i64 kb = 0; kb < blocks; ++kb) {
        uint32_t *ck = c + 64 * kb;
        for (int k = 0; k < 64; ++k) ck[k] = 0;
        for (i64 j = 0; j < nplanes; ++j) {
            u64 x = t[(j * blocks + kb) * 64 + lane];
            uint32_t lo = (uint32_t)x, hi = (uint32_t)(x >> 32);
            for (uint32_t k = 0; k < 32; ++k) {
                ck[k] |= ((lo >> k) & 1u) << j;
                ck[k + 32] |= ((hi >> k) & 1u) << j;
            }
        }
    }
}

int spf_multispin_unpack(const i64 *be, const i64 *bo, const i64 *we, const i64 *wo,
                         i64 nplanes, i64 stride, i64 offset, i64 groups, i64 batch, i64 h,
                         i64 w, i64 chains, const i64 *gauge, double a, double scale, void *out,
                         i64 is_double, i64 quarter_words) {
    const u64 *src[4] = {(const u64 *)be, (const u64 *)bo, (const u64 *)we, (const u64 *)wo};
    static const int LEFT[2] = {BE, WO}, RIGHT[2] = {WE, BO}; /* columns 2k, 2k + 1 */
    i64 width = 2 * w, sites = 2 * h * width, blocks = (w + 63) / 64;
    u64 *planes = malloc(sizeof(u64) * (size_t)(2 * nplanes * blocks * 64));
    uint32_t *counts = malloc(sizeof(uint32_t) * (size_t)(2 * blocks * 64));
    if (!planes || !counts) {
        free(planes);
        free(counts);
        return -1;
    }
    u64 *pl = planes, *pr = planes + nplanes * blocks * 64;
    uint32_t *cl = counts, *cr = counts + blocks * 64;
    for (i64 g = 0; g < groups; ++g) {
        i64 lanes = chains - 64 * g < 64 ? chains - 64 * g : 64;
        for (i64 b = 0; b < batch; ++b) {
            i64 p = g * batch + b;
            for (i64 r = 0; r < 2 * h; ++r) {
                i64 i = r / 2, base = (p * h + i) * w * stride + offset;
                int left = LEFT[r % 2], right = RIGHT[r % 2];
                u64 flip_left = left >= WE ? (u64)gauge[b] : 0;
                u64 flip_right = right >= WE ? (u64)gauge[b] : 0;
                if (quarter_words) { /* the counter's groups of four: by word index */
                    i64 e = (p * h + i) * w;
                    transpose_row(src[0], w, stride, nplanes, flip_left, pl,
                                  1 + left * quarter_words + e);
                    transpose_row(src[0], w, stride, nplanes, flip_right, pr,
                                  1 + right * quarter_words + e);
                } else {
                    transpose_row(src[left] + base, w, stride, nplanes, flip_left, pl, 0);
                    transpose_row(src[right] + base, w, stride, nplanes, flip_right, pr, 0);
                }
                for (int lane = 0; lane < lanes; ++lane) {
                    lane_counts(pl, blocks, nplanes, lane, cl);
                    lane_counts(pr, blocks, nplanes, lane, cr);
                    i64 at = ((64 * g + lane) * batch + b) * sites + r * width;
                    if (is_double) {
                        double *o = (double *)out + at;
                        for (i64 k = 0; k < w; ++k) {
                            o[2 * k] = a + scale * (double)cl[k];
                            o[2 * k + 1] = a + scale * (double)cr[k];
                        }
                    } else {
                        float *o = (float *)out + at;
                        float fa = (float)a, fs = (float)scale;
                        for (i64 k = 0; k < w; ++k) {
                            o[2 * k] = fa + fs * (float)cl[k];
                            o[2 * k + 1] = fa + fs * (float)cr[k];
                        }
                    }
                }
            }
        }
    }
    free(planes);
    free(counts);
    return 0;
}
