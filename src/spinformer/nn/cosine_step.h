/* The per-head row passes of the one-step cosine spin block, for one floating type.
 *
 * Included twice by cosine_step.c with REAL (float, double), SQRT and NAME (the symbol suffix).
 * A row is one head of one token, d contiguous numbers; the rows run over (b, n, h) in
 * token-major order, r = (b N + n) H + h. Inputs written by torch's flash attention arrive
 * in its (B, H, N, d) layout, given by the element strides (sb, sn, sh) of (b, n, h).
 * Every function is an inlined body specialized by its exported entry for the common head
 * widths (a constant d lets the compiler unroll and vectorize the row loops).
 */

#define SPF_INLINE static inline __attribute__((always_inline))

/* x . y over d numbers in eight interleaved partial sums (a fixed order, so vectorizable) */
SPF_INLINE REAL NAME(dot)(const REAL *restrict x, const REAL *restrict y, int64_t d) {
    REAL acc[8] = {0};
    int64_t a = 0;
    for (; a + 8 <= d; a += 8)
        for (int l = 0; l < 8; l++) acc[l] += x[a + l] * y[a + l];
    for (; a < d; a++) acc[0] += x[a] * y[a];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* out = x rotated pairwise (x_{2a} + i x_{2a+1}) e^{+-i phi_a} from the phases as two rows of d:
 * cosines (c_a, c_a) and signed sines (-s_a, s_a); sign -1 rotates by the conjugate. */
SPF_INLINE void NAME(rotate)(const REAL *restrict x, const REAL *restrict phase, int64_t d,
                             int sign, REAL *restrict out) {
    const REAL *cosine = phase, *sine = phase + d;
    for (int64_t a = 0; a < d; a += 2) {
        out[a] = x[a] * cosine[a] + (REAL)sign * x[a + 1] * sine[a];
        out[a + 1] = x[a + 1] * cosine[a + 1] + (REAL)sign * x[a] * sine[a + 1];
    }
}

/* Forward of the rows before attention: per head h, the queries and keys v = parts[1], parts[2]
 * (optionally rotated pairwise by the rotary phases of (n, h), see rotate), their inverse RMS
 * 1/sqrt(|v|^2/d + eps), the per-site
 * coefficients s/rms (s = tau_h/d for queries, 1 for keys) and s v/rms; and the learned start
 * phi(W_V x) = beta v/(1 + u), u = sqrt(1 + beta^2|v|^2/R^2). */
SPF_INLINE void NAME(cosine_forward)(const REAL *restrict parts, int64_t batch, int64_t n, int64_t heads,
                                     int64_t d, const REAL *restrict temperature, const REAL *restrict beta,
                                     double radius, double eps, const REAL *restrict rotation,
                                     REAL *restrict scaled, REAL *restrict inverse, REAL *restrict coefficient,
                                     REAL *restrict start, REAL *restrict u_start, int64_t first, int64_t last) {
    const int64_t rows = batch * n * heads, size = rows * d;
    const REAL r2 = (REAL)(radius * radius), e = (REAL)eps, dd = (REAL)d;
    for (int64_t token = first; token < last; token++)
        for (int64_t h = 0, nn = token % n, r = token * heads; h < heads; h++, r++) {
            for (int which = 0; which < 2; which++) {
                const REAL *v = parts + (which + 1) * size + r * d;
                REAL *out = scaled + which * size + r * d;
                REAL turned[d];
                if (rotation != NULL) {
                    NAME(rotate)(v, rotation + (nn * heads + h) * 2 * d, d, 1, turned);
                    v = turned;
                }
                const REAL norm2 = NAME(dot)(v, v, d);
                const REAL inv = (REAL)1 / SQRT(norm2 / dd + e);
                const REAL coef = inv * (which == 0 ? temperature[h] / dd : (REAL)1);
                inverse[which * rows + r] = inv;
                coefficient[which * rows + r] = coef;
                for (int64_t a = 0; a < d; a++) out[a] = v[a] * coef;
            }
            const REAL *v = parts + 3 * size + r * d;
            const REAL norm2 = NAME(dot)(v, v, d);
            const REAL b = beta[h], u = SQRT((REAL)1 + b * b * norm2 / r2);
            const REAL g = b / ((REAL)1 + u);
            u_start[r] = u;
            for (int64_t a = 0; a < d; a++) start[r * d + a] = v[a] * g;
        }
}

/* Forward of the rows after attention: theta = W_F x + attention output [+ the other fields]
 * [+ phi^{-1}(stream) = scale * stream, scale = 2R^2/(beta gap), gap = max(R^2 - |x|^2,
 * R^2 eps)], and phi(theta) = g theta, with what the backward needs per site (u, scale,
 * d scale/d|x|^2); theta itself is not kept: the backward has it as phi(theta) (1 + u)/beta. */
SPF_INLINE void NAME(phi_forward)(int64_t batch, int64_t n, int64_t heads, int64_t d,
                                  const REAL *restrict linear, const REAL *restrict mixed, int64_t msb,
                                  int64_t msn, int64_t msh, const REAL *restrict extra,
                                  const REAL *restrict extra2, const REAL *restrict stream, const REAL *restrict beta, double radius,
                                  double eps, REAL *restrict out, REAL *restrict u_out,
                                  REAL *restrict scale_out, REAL *restrict radial_out, int64_t first,
                                  int64_t last) {
    const REAL r2 = (REAL)(radius * radius), floor = (REAL)(radius * radius * eps);
    (void)batch;
    for (int64_t token = first; token < last; token++)
        for (int64_t h = 0, bb = token / n, nn = token % n, r = token * heads; h < heads; h++, r++) {
            const REAL *m = mixed + bb * msb + nn * msn + h * msh;
            REAL t[d];
            const REAL b = beta[h];
            for (int64_t a = 0; a < d; a++) t[a] = linear[r * d + a] + m[a];
            if (extra != NULL)
                for (int64_t a = 0; a < d; a++) t[a] += extra[r * d + a];
            if (extra2 != NULL)
                for (int64_t a = 0; a < d; a++) t[a] += extra2[r * d + a];
            if (stream != NULL) {
                const REAL *x = stream + r * d;
                const REAL norm2 = NAME(dot)(x, x, d);
                REAL gap = r2 - norm2;
                const int free = gap > floor;
                if (!free) gap = floor;
                const REAL scale = (REAL)2 * r2 / (b * gap);
                scale_out[r] = scale;
                radial_out[r] = free ? scale / gap : (REAL)0;
                for (int64_t a = 0; a < d; a++) t[a] += x[a] * scale;
            }
            const REAL norm2 = NAME(dot)(t, t, d);
            const REAL u = SQRT((REAL)1 + b * b * norm2 / r2), g = b / ((REAL)1 + u);
            u_out[r] = u;
            for (int64_t a = 0; a < d; a++) out[r * d + a] = t[a] * g;
        }
}

/* The closed-form vector-Jacobian product of phi at one row (see vmf._Phi) with the field
 * theta = k t: writes dL/dtheta = g grad + (g'/r)(theta . grad) theta to gt and returns dL/dbeta
 * at the site. */
SPF_INLINE REAL NAME(phi_row_vjp)(const REAL *restrict grad, const REAL *restrict t, REAL k, REAL u, REAL b,
                                  REAL r2, int64_t d, REAL *restrict gt) {
    const REAL one_u = (REAL)1 + u, w = (REAL)1 / (u * one_u), g = b / one_u;
    const REAL along = k * NAME(dot)(t, grad, d);
    const REAL grad_beta = w * along, coef = k * g * grad_beta * (b * b / -r2);
    for (int64_t a = 0; a < d; a++) gt[a] = grad[a] * g + t[a] * coef;
    return grad_beta;
}

/* Backward of the field sum and phi from the forward's response phi(theta) = g theta, g =
 * beta/(1 + u): dL/dtheta (every field's gradient), dL/dstream (if asked) and dL/dbeta per
 * site. */
SPF_INLINE void NAME(phi_backward)(int64_t rows, int64_t heads, int64_t d, const REAL *restrict grad,
                                   const REAL *restrict response, const REAL *restrict u, const REAL *restrict stream,
                                   const REAL *restrict scale, const REAL *restrict radial, const REAL *restrict beta,
                                   double radius, REAL *restrict grad_theta, REAL *restrict grad_stream,
                                   REAL *restrict grad_beta, int64_t first, int64_t last) {
    const REAL r2 = (REAL)(radius * radius);
    (void)rows;
    for (int64_t token = first; token < last; token++)
        for (int64_t h = 0, r = token * heads; h < heads; h++, r++) {
            const REAL b = beta[h];
            REAL *gt = grad_theta + r * d;
            REAL gb = NAME(phi_row_vjp)(grad + r * d, response + r * d, ((REAL)1 + u[r]) / b, u[r], b,
                                        r2, d, gt);
            if (stream != NULL) {
                const REAL *x = stream + r * d;
                const REAL across = NAME(dot)(x, gt, d);
                if (grad_stream != NULL) {
                    const REAL s = scale[r], radial2 = (REAL)2 * radial[r] * across;
                    for (int64_t a = 0; a < d; a++)
                        grad_stream[r * d + a] = gt[a] * s + x[a] * radial2;
                }
                gb -= scale[r] / b * across;
            }
            grad_beta[r] = gb;
        }
}

/* Backward of the rows before attention from the attention's gradients of the scaled queries,
 * keys and of the start: dL/d(parts[1..3]) into grads (3, rows, d), dL/dbeta of the start per
 * site, and dL/ds s/tau per query site (summed over the sites it is dL/dtau). It reads what the
 * attention's backward has just read -- the scaled queries and keys c v (v rotated, c the
 * coefficient s/rms) and the start phi(W_V x) = g W_V x, g = beta/(1 + u) -- instead of the
 * projections the forward wrote long before: c v . grad = c (v . grad), and W_V x = start/g. */
SPF_INLINE void NAME(cosine_backward)(int64_t batch, int64_t n, int64_t heads, int64_t d,
                                      const REAL *restrict grad_q, const REAL *restrict grad_k,
                                      const REAL *restrict grad_v, const int64_t *strides,
                                      const REAL *restrict scaled, const REAL *restrict inverse,
                                      const REAL *restrict coefficient, const REAL *restrict rotation,
                                      const REAL *restrict start, const REAL *restrict u_start, const REAL *restrict beta,
                                      double radius, REAL *restrict grads, REAL *restrict grad_beta,
                                      REAL *restrict grad_tau, int64_t first, int64_t last) {
    const int64_t rows = batch * n * heads, size = rows * d;
    const REAL r2 = (REAL)(radius * radius), dd = (REAL)d;
    const REAL *incoming[3] = {grad_q, grad_k, grad_v};
    for (int64_t token = first; token < last; token++)
        for (int64_t h = 0, bb = token / n, nn = token % n, r = token * heads; h < heads; h++, r++) {
            const REAL *in[3];
            for (int i = 0; i < 3; i++)
                in[i] = incoming[i] + bb * strides[3 * i] + nn * strides[3 * i + 1] +
                        h * strides[3 * i + 2];
            for (int which = 0; which < 2; which++) {
                const REAL *v = scaled + which * size + r * d, *g = in[which];
                const REAL inv = inverse[which * rows + r];
                const REAL coef = coefficient[which * rows + r];
                REAL *out = grads + which * size + r * d;
                const REAL along = NAME(dot)(v, g, d) / coef; /* the rotated projection's */
                const REAL radial = inv * inv * along / dd;   /* times the scaled row c v */
                if (rotation != NULL) { /* back through the rotation: the conjugate phase */
                    REAL local[d];
                    for (int64_t a = 0; a < d; a++) local[a] = g[a] * coef - v[a] * radial;
                    NAME(rotate)(local, rotation + (nn * heads + h) * 2 * d, d, -1, out);
                } else {
                    for (int64_t a = 0; a < d; a++) out[a] = g[a] * coef - v[a] * radial;
                }
                if (which == 0) grad_tau[r] = along * inv / dd;
            }
            const REAL b = beta[h];
            grad_beta[r] = NAME(phi_row_vjp)(in[2], start + r * d, ((REAL)1 + u_start[r]) / b, u_start[r],
                                             b, r2, d, grads + 2 * size + r * d);
        }
}

/* The per-head RMS norm of the block's tokens, y = g x/rms(x) per row (HeadRMSNorm): y and
 * 1/rms(x) = 1/sqrt(|x|^2/d + eps) per row. */
SPF_INLINE void NAME(rms_forward)(const REAL *restrict x, int64_t heads, int64_t d, const REAL *restrict weight,
                                  double eps, REAL *restrict out, REAL *restrict inverse, int64_t first,
                                  int64_t last) {
    const REAL e = (REAL)eps, dd = (REAL)d;
    for (int64_t token = first; token < last; token++)
        for (int64_t h = 0, r = token * heads; h < heads; h++, r++) {
            const REAL *v = x + r * d, *g = weight + h * d;
            const REAL inv = (REAL)1 / SQRT(NAME(dot)(v, v, d) / dd + e);
            inverse[r] = inv;
            for (int64_t a = 0; a < d; a++) out[r * d + a] = v[a] * inv * g[a];
        }
}

/* Its vector-Jacobian products in closed form: dL/dx = (gg - xh (gg . xh)/d)/rms(x) with
 * gg = g dL/dy and xh = x/rms(x) (if grad_x is given; plus add, e.g. the gradient of another
 * use of x, if given), and dL/dg summed over the tokens of each block of SPF_BLOCK tokens in
 * order into partial (one row of heads d per block; if given). */
#define SPF_BLOCK 32
SPF_INLINE void NAME(rms_backward)(const REAL *restrict grad, const REAL *restrict x,
                                   const REAL *restrict inverse, int64_t tokens, int64_t heads, int64_t d,
                                   const REAL *restrict weight, REAL *restrict grad_x, const REAL *restrict add,
                                   REAL *restrict partial, int64_t first, int64_t last) {
    const REAL dd = (REAL)d;
    for (int64_t block = first; block < last; block++) {
        REAL *sum = partial == NULL ? NULL : partial + block * heads * d;
        if (sum != NULL)
            for (int64_t a = 0; a < heads * d; a++) sum[a] = 0;
        const int64_t end = (block + 1) * SPF_BLOCK < tokens ? (block + 1) * SPF_BLOCK : tokens;
        for (int64_t token = block * SPF_BLOCK; token < end; token++)
            for (int64_t h = 0, r = token * heads; h < heads; h++, r++) {
                const REAL *gy = grad + r * d, *v = x + r * d, *g = weight + h * d;
                const REAL inv = inverse[r];
                REAL normed[d], scaled[d];
                for (int64_t a = 0; a < d; a++) {
                    normed[a] = v[a] * inv;
                    scaled[a] = gy[a] * g[a];
                }
                if (sum != NULL)
                    for (int64_t a = 0; a < d; a++) sum[h * d + a] += gy[a] * normed[a];
                if (grad_x != NULL) {
                    const REAL along = NAME(dot)(scaled, normed, d) / dd;
                    if (add != NULL)
                        for (int64_t a = 0; a < d; a++)
                            grad_x[r * d + a] = (scaled[a] - normed[a] * along) * inv + add[r * d + a];
                    else
                        for (int64_t a = 0; a < d; a++)
                            grad_x[r * d + a] = (scaled[a] - normed[a] * along) * inv;
                }
            }
    }
}

/* The exported entries: the bodies above with d a constant where it is 16, 32 or 64, over the
 * tokens (b, n) split into contiguous ranges among `threads` threads (spf_parallel in
 * cosine_step.c). Every row's arithmetic is the same whatever the split, so the results are
 * bit for bit those of one thread. */
#define SPF_WIDTHS(call, d) \
    if ((d) == 16) call(16); \
    else if ((d) == 32) call(32); \
    else if ((d) == 64) call(64); \
    else call(d)

struct NAME(spf_forward_args) {
    const REAL *parts; int64_t batch, n, heads, d; const REAL *temperature, *beta; double radius, eps;
    const REAL *rotation; REAL *scaled, *inverse, *coefficient, *start, *u_start;
};

/* Each exported entry runs its rows through a function whose pointer arguments are restrict
 * parameters (the compiler's aliasing information for the inlined body, which a call through
 * the argument struct would lose), kept out of line for that reason. */
#define SPF_ROWS static __attribute__((noinline)) void

SPF_ROWS NAME(spf_forward_rows)(const REAL *restrict parts, int64_t batch, int64_t n, int64_t heads, int64_t d,
                                const REAL *restrict temperature, const REAL *restrict beta, double radius,
                                double eps, const REAL *restrict rotation, REAL *restrict scaled,
                                REAL *restrict inverse, REAL *restrict coefficient, REAL *restrict start,
                                REAL *restrict u_start, int64_t first, int64_t last) {
#define SPF_CALL(w) NAME(cosine_forward)(parts, batch, n, heads, w, temperature, beta, radius, eps, \
                                         rotation, scaled, inverse, coefficient, start, u_start, \
                                         first, last)
    SPF_WIDTHS(SPF_CALL, d);
#undef SPF_CALL
}

static void NAME(spf_forward_run)(const void *given, int64_t first, int64_t last) {
    const struct NAME(spf_forward_args) *a = given;
    NAME(spf_forward_rows)(a->parts, a->batch, a->n, a->heads, a->d, a->temperature, a->beta, a->radius,
                           a->eps, a->rotation, a->scaled, a->inverse, a->coefficient, a->start,
                           a->u_start, first, last);
}

void NAME(spf_cosine_step_forward)(const REAL *parts, int64_t batch, int64_t n, int64_t heads, int64_t d,
                                   const REAL *temperature, const REAL *beta, double radius, double eps,
                                   const REAL *rotation, REAL *scaled, REAL *inverse, REAL *coefficient,
                                   REAL *start, REAL *u_start, int64_t threads) {
    const struct NAME(spf_forward_args) a = {parts, batch, n, heads, d, temperature, beta, radius, eps,
                                             rotation, scaled, inverse, coefficient, start, u_start};
    spf_parallel(threads, batch * n, NAME(spf_forward_run), &a);
}

struct NAME(spf_phi_forward_args) {
    int64_t batch, n, heads, d; const REAL *linear, *mixed; int64_t msb, msn, msh;
    const REAL *extra, *extra2, *stream, *beta; double radius, eps; REAL *out, *u, *scale, *radial;
};

SPF_ROWS NAME(spf_phi_forward_rows)(int64_t batch, int64_t n, int64_t heads, int64_t d,
                                    const REAL *restrict linear, const REAL *restrict mixed, int64_t msb,
                                    int64_t msn, int64_t msh, const REAL *restrict extra,
                                    const REAL *restrict extra2, const REAL *restrict stream, const REAL *restrict beta, double radius,
                                    double eps, REAL *restrict out, REAL *restrict u, REAL *restrict scale,
                                    REAL *restrict radial, int64_t first, int64_t last) {
#define SPF_CALL(w) NAME(phi_forward)(batch, n, heads, w, linear, mixed, msb, msn, msh, extra, extra2, stream, \
                                      beta, radius, eps, out, u, scale, radial, first, last)
    SPF_WIDTHS(SPF_CALL, d);
#undef SPF_CALL
}

static void NAME(spf_phi_forward_run)(const void *given, int64_t first, int64_t last) {
    const struct NAME(spf_phi_forward_args) *a = given;
    NAME(spf_phi_forward_rows)(a->batch, a->n, a->heads, a->d, a->linear, a->mixed, a->msb, a->msn,
                               a->msh, a->extra, a->extra2, a->stream, a->beta, a->radius, a->eps, a->out,
                               a->u, a->scale, a->radial, first, last);
}

void NAME(spf_phi_sum_forward)(int64_t batch, int64_t n, int64_t heads, int64_t d, const REAL *linear,
                               const REAL *mixed, int64_t msb, int64_t msn, int64_t msh, const REAL *extra,
                               const REAL *extra2, const REAL *stream, const REAL *beta, double radius, double eps, REAL *out,
                               REAL *u, REAL *scale, REAL *radial, int64_t threads) {
    const struct NAME(spf_phi_forward_args) a = {batch, n, heads, d, linear, mixed, msb, msn, msh, extra,
                                                 extra2, stream, beta, radius, eps, out, u, scale, radial};
    spf_parallel(threads, batch * n, NAME(spf_phi_forward_run), &a);
}

struct NAME(spf_phi_backward_args) {
    int64_t rows, heads, d; const REAL *grad, *response, *u, *stream, *scale, *radial, *beta;
    double radius; REAL *grad_theta, *grad_stream, *grad_beta;
};

SPF_ROWS NAME(spf_phi_backward_rows)(int64_t rows, int64_t heads, int64_t d, const REAL *restrict grad,
                                     const REAL *restrict response, const REAL *restrict u,
                                     const REAL *restrict stream, const REAL *restrict scale,
                                     const REAL *restrict radial, const REAL *restrict beta, double radius,
                                     REAL *restrict grad_theta, REAL *restrict grad_stream,
                                     REAL *restrict grad_beta, int64_t first, int64_t last) {
#define SPF_CALL(w) NAME(phi_backward)(rows, heads, w, grad, response, u, stream, scale, radial, beta, \
                                       radius, grad_theta, grad_stream, grad_beta, first, last)
    SPF_WIDTHS(SPF_CALL, d);
#undef SPF_CALL
}

static void NAME(spf_phi_backward_run)(const void *given, int64_t first, int64_t last) {
    const struct NAME(spf_phi_backward_args) *a = given;
    NAME(spf_phi_backward_rows)(a->rows, a->heads, a->d, a->grad, a->response, a->u, a->stream, a->scale,
                                a->radial, a->beta, a->radius, a->grad_theta, a->grad_stream,
                                a->grad_beta, first, last);
}

void NAME(spf_phi_sum_backward)(int64_t rows, int64_t heads, int64_t d, const REAL *grad, const REAL *response,
                                const REAL *u, const REAL *stream, const REAL *scale, const REAL *radial,
                                const REAL *beta, double radius, REAL *grad_theta, REAL *grad_stream,
                                REAL *grad_beta, int64_t threads) {
    const struct NAME(spf_phi_backward_args) a = {rows, heads, d, grad, response, u, stream, scale, radial,
                                                  beta, radius, grad_theta, grad_stream, grad_beta};
    spf_parallel(threads, rows / heads, NAME(spf_phi_backward_run), &a);
}

struct NAME(spf_backward_args) {
    int64_t batch, n, heads, d; const REAL *grad_q, *grad_k, *grad_v; const int64_t *strides;
    const REAL *scaled, *inverse, *coefficient, *rotation, *start, *u_start, *beta; double radius;
    REAL *grads, *grad_beta, *grad_tau;
};

SPF_ROWS NAME(spf_backward_rows)(int64_t batch, int64_t n, int64_t heads, int64_t d,
                                 const REAL *restrict grad_q, const REAL *restrict grad_k,
                                 const REAL *restrict grad_v, const int64_t *strides,
                                 const REAL *restrict scaled, const REAL *restrict inverse,
                                 const REAL *restrict coefficient, const REAL *restrict rotation,
                                 const REAL *restrict start, const REAL *restrict u_start,
                                 const REAL *restrict beta, double radius, REAL *restrict grads,
                                 REAL *restrict grad_beta, REAL *restrict grad_tau, int64_t first,
                                 int64_t last) {
#define SPF_CALL(w) NAME(cosine_backward)(batch, n, heads, w, grad_q, grad_k, grad_v, strides, \
                                          scaled, inverse, coefficient, rotation, start, u_start, \
                                          beta, radius, grads, grad_beta, grad_tau, first, last)
    SPF_WIDTHS(SPF_CALL, d);
#undef SPF_CALL
}

static void NAME(spf_backward_run)(const void *given, int64_t first, int64_t last) {
    const struct NAME(spf_backward_args) *a = given;
    NAME(spf_backward_rows)(a->batch, a->n, a->heads, a->d, a->grad_q, a->grad_k, a->grad_v, a->strides,
                            a->scaled, a->inverse, a->coefficient, a->rotation, a->start,
                            a->u_start, a->beta, a->radius, a->grads, a->grad_beta, a->grad_tau,
                            first, last);
}

void NAME(spf_cosine_step_backward)(int64_t batch, int64_t n, int64_t heads, int64_t d, const REAL *grad_q,
                                    const REAL *grad_k, const REAL *grad_v, const int64_t *strides,
                                    const REAL *scaled, const REAL *inverse, const REAL *coefficient,
                                    const REAL *rotation, const REAL *start, const REAL *u_start,
                                    const REAL *beta, double radius, REAL *grads, REAL *grad_beta,
                                    REAL *grad_tau, int64_t threads) {
    const struct NAME(spf_backward_args) a = {batch, n, heads, d, grad_q, grad_k, grad_v, strides, scaled,
                                              inverse, coefficient, rotation, start, u_start, beta,
                                              radius, grads, grad_beta, grad_tau};
    spf_parallel(threads, batch * n, NAME(spf_backward_run), &a);
}

struct NAME(spf_rms_forward_args) {
    const REAL *x; int64_t heads, d; const REAL *weight; double eps; REAL *out, *inverse;
};

SPF_ROWS NAME(spf_rms_forward_rows)(const REAL *restrict x, int64_t heads, int64_t d, const REAL *restrict weight,
                                    double eps, REAL *restrict out, REAL *restrict inverse, int64_t first,
                                    int64_t last) {
#define SPF_CALL(w) NAME(rms_forward)(x, heads, w, weight, eps, out, inverse, first, last)
    SPF_WIDTHS(SPF_CALL, d);
#undef SPF_CALL
}

static void NAME(spf_rms_forward_run)(const void *given, int64_t first, int64_t last) {
    const struct NAME(spf_rms_forward_args) *a = given;
    NAME(spf_rms_forward_rows)(a->x, a->heads, a->d, a->weight, a->eps, a->out, a->inverse, first, last);
}

void NAME(spf_head_rms_forward)(const REAL *x, int64_t tokens, int64_t heads, int64_t d, const REAL *weight,
                                double eps, REAL *out, REAL *inverse, int64_t threads) {
    const struct NAME(spf_rms_forward_args) a = {x, heads, d, weight, eps, out, inverse};
    spf_parallel(threads, tokens, NAME(spf_rms_forward_run), &a);
}

struct NAME(spf_rms_backward_args) {
    const REAL *grad, *x, *inverse; int64_t tokens, heads, d; const REAL *weight; REAL *grad_x;
    const REAL *add; REAL *partial;
};

SPF_ROWS NAME(spf_rms_backward_rows)(const REAL *restrict grad, const REAL *restrict x,
                                     const REAL *restrict inverse, int64_t tokens, int64_t heads, int64_t d,
                                     const REAL *restrict weight, REAL *restrict grad_x, const REAL *restrict add,
                                     REAL *restrict partial, int64_t first, int64_t last) {
#define SPF_CALL(w) NAME(rms_backward)(grad, x, inverse, tokens, heads, w, weight, grad_x, add, \
                                       partial, first, last)
    SPF_WIDTHS(SPF_CALL, d);
#undef SPF_CALL
}

static void NAME(spf_rms_backward_run)(const void *given, int64_t first, int64_t last) {
    const struct NAME(spf_rms_backward_args) *a = given;
    NAME(spf_rms_backward_rows)(a->grad, a->x, a->inverse, a->tokens, a->heads, a->d, a->weight,
                                a->grad_x, a->add, a->partial, first, last);
}

/* partial: (ceil(tokens / SPF_BLOCK), heads, d), split over threads by whole blocks */
void NAME(spf_head_rms_backward)(const REAL *grad, const REAL *x, const REAL *inverse, int64_t tokens,
                                 int64_t heads, int64_t d, const REAL *weight, REAL *grad_x,
                                 const REAL *add, REAL *partial, int64_t threads) {
    const struct NAME(spf_rms_backward_args) a = {grad, x, inverse, tokens, heads, d, weight, grad_x,
                                                  add, partial};
    spf_parallel(threads, (tokens + SPF_BLOCK - 1) / SPF_BLOCK, NAME(spf_rms_backward_run), &a);
}

#undef SPF_ROWS
#undef SPF_BLOCK
#undef SPF_WIDTHS
#undef SPF_INLINE
