/* The per-head row passes of the one-step cosine spin block, for one floating type.
 *
 * Included twice by cosine_step.c with REAL (float, double) and NAME (the symbol suffix).
 * A row is one head of one token, d contiguous numbers; the rows run over (b, n, h) in
 * token-major order, r = (b N + n) H + h. Inputs written by torch's flash attention arrive
 * in its (B, H, N, d) layout, given by the element strides (sb, sn, sh) of (b, n, h).
 */

/* Forward of the rows before attention: per head h, the queries and keys v = parts[1], parts[2]
 * (optionally rotated pairwise by the rotary phases), their inverse RMS 1/sqrt(|v|^2/d + eps),
 * the per-site coefficients s/rms (s = tau_h/d for queries, 1 for keys) and s v/rms; and the
 * learned start phi(W_V x) = beta v/(1 + u) with u = sqrt(1 + beta^2 |v|^2/R^2). */
void NAME(spf_cosine_step_forward)(const REAL *parts, int64_t batch, int64_t n, int64_t heads,
                                   int64_t d, const REAL *temperature, const REAL *beta,
                                   double radius, double eps, const REAL *rotation,
                                   REAL *scaled, REAL *rotated, REAL *inverse,
                                   REAL *coefficient, REAL *start, REAL *u_start) {
    const int64_t rows = batch * n * heads, size = rows * d;
    const REAL r2 = (REAL)(radius * radius), e = (REAL)eps, dd = (REAL)d;
    for (int64_t r = 0; r < rows; r++) {
        const int64_t h = r % heads, token = r / heads;
        for (int which = 0; which < 2; which++) {
            const REAL *v = parts + (which + 1) * size + r * d;
            REAL *out = scaled + which * size + r * d;
            if (rotation != NULL) {
                const REAL *phase = rotation + ((token % n) * heads + h) * d;
                REAL *turned = rotated + which * size + r * d;
                for (int64_t a = 0; a < d; a += 2) {
                    const REAL c = phase[a], s = phase[a + 1];
                    turned[a] = v[a] * c - v[a + 1] * s;
                    turned[a + 1] = v[a] * s + v[a + 1] * c;
                }
                v = turned;
            }
            REAL norm2 = 0;
            for (int64_t a = 0; a < d; a++) norm2 += v[a] * v[a];
            const REAL inv = (REAL)1 / SQRT(norm2 / dd + e);
            const REAL coef = inv * (which == 0 ? temperature[h] / dd : (REAL)1);
            inverse[which * rows + r] = inv;
            coefficient[which * rows + r] = coef;
            for (int64_t a = 0; a < d; a++) out[a] = v[a] * coef;
        }
        const REAL *v = parts + 3 * size + r * d;
        REAL norm2 = 0;
        for (int64_t a = 0; a < d; a++) norm2 += v[a] * v[a];
        const REAL b = beta[h], u = SQRT((REAL)1 + b * b * norm2 / r2), g = b / ((REAL)1 + u);
        u_start[r] = u;
        for (int64_t a = 0; a < d; a++) start[r * d + a] = v[a] * g;
    }
}

/* Forward of the rows after attention: theta = W_F x + (sum of the other fields) + attention
 * output [+ phi^{-1}(stream) = scale * stream, scale = 2R^2/(beta gap), gap = max(R^2 - |x|^2,
 * R^2 eps)], and phi(theta), with what the backward needs per site (u, scale, d scale/d|x|^2). */
void NAME(spf_phi_sum_forward)(int64_t batch, int64_t n, int64_t heads, int64_t d,
                               const REAL *linear, const REAL *mixed, int64_t msb, int64_t msn,
                               int64_t msh, const REAL *extra, const REAL *stream,
                               const REAL *beta, double radius, double eps, REAL *out,
                               REAL *theta, REAL *u_out, REAL *scale_out, REAL *radial_out) {
    const int64_t rows = batch * n * heads;
    const REAL r2 = (REAL)(radius * radius), floor = (REAL)(radius * radius * eps);
    for (int64_t r = 0; r < rows; r++) {
        const int64_t h = r % heads, bn = r / heads;
        const REAL *m = mixed + (bn / n) * msb + (bn % n) * msn + h * msh;
        REAL *t = theta + r * d;
        const REAL b = beta[h];
        for (int64_t a = 0; a < d; a++) t[a] = linear[r * d + a] + m[a];
        if (extra != NULL)
            for (int64_t a = 0; a < d; a++) t[a] += extra[r * d + a];
        if (stream != NULL) {
            const REAL *x = stream + r * d;
            REAL norm2 = 0;
            for (int64_t a = 0; a < d; a++) norm2 += x[a] * x[a];
            REAL gap = r2 - norm2;
            const int free = gap > floor;
            if (!free) gap = floor;
            const REAL scale = (REAL)2 * r2 / (b * gap);
            scale_out[r] = scale;
            radial_out[r] = free ? scale / gap : (REAL)0;
            for (int64_t a = 0; a < d; a++) t[a] += x[a] * scale;
        }
        REAL norm2 = 0;
        for (int64_t a = 0; a < d; a++) norm2 += t[a] * t[a];
        const REAL u = SQRT((REAL)1 + b * b * norm2 / r2), g = b / ((REAL)1 + u);
        u_out[r] = u;
        for (int64_t a = 0; a < d; a++) out[r * d + a] = t[a] * g;
    }
}

/* The closed-form vector-Jacobian product of phi at one row (see vmf._Phi): writes
 * dL/dtheta = g grad + (g'/r)(theta . grad) theta to gt and returns dL/dbeta at the site. */
static inline REAL NAME(phi_row_vjp)(const REAL *grad, const REAL *t, REAL u, REAL b, REAL r2,
                                     int64_t d, REAL *gt) {
    const REAL one_u = (REAL)1 + u, w = (REAL)1 / (u * one_u), g = b / one_u;
    REAL along = 0;
    for (int64_t a = 0; a < d; a++) along += t[a] * grad[a];
    const REAL grad_beta = w * along, coef = g * grad_beta * (b * b / -r2);
    for (int64_t a = 0; a < d; a++) gt[a] = grad[a] * g + t[a] * coef;
    return grad_beta;
}

/* Backward of spf_phi_sum_forward: dL/dtheta (every field's gradient), dL/dstream (if asked)
 * and dL/dbeta per site. */
void NAME(spf_phi_sum_backward)(int64_t rows, int64_t heads, int64_t d, const REAL *grad,
                                const REAL *theta, const REAL *u, const REAL *stream,
                                const REAL *scale, const REAL *radial, const REAL *beta,
                                double radius, REAL *grad_theta, REAL *grad_stream,
                                REAL *grad_beta) {
    const REAL r2 = (REAL)(radius * radius);
    for (int64_t r = 0; r < rows; r++) {
        const REAL b = beta[r % heads];
        REAL *gt = grad_theta + r * d;
        REAL gb = NAME(phi_row_vjp)(grad + r * d, theta + r * d, u[r], b, r2, d, gt);
        if (stream != NULL) {
            const REAL *x = stream + r * d;
            REAL across = 0;
            for (int64_t a = 0; a < d; a++) across += x[a] * gt[a];
            if (grad_stream != NULL) {
                const REAL s = scale[r], radial2 = (REAL)2 * radial[r] * across;
                for (int64_t a = 0; a < d; a++) grad_stream[r * d + a] = gt[a] * s + x[a] * radial2;
            }
            gb -= scale[r] / b * across;
        }
        grad_beta[r] = gb;
    }
}

/* Backward of spf_cosine_step_forward from the attention's gradients of the scaled queries and
 * keys and of the start: dL/d(parts[1..3]) into grads (3, rows, d), dL/dbeta of the start per
 * site, and dL/ds s/tau per query site (summed over the sites it is dL/dtau). */
void NAME(spf_cosine_step_backward)(int64_t batch, int64_t n, int64_t heads, int64_t d,
                                    const REAL *grad_q, const REAL *grad_k, const REAL *grad_v,
                                    const int64_t *strides, const REAL *rotated,
                                    const REAL *inverse, const REAL *coefficient,
                                    const REAL *rotation, const REAL *value, const REAL *u_start,
                                    const REAL *beta, double radius, REAL *grads,
                                    REAL *grad_beta, REAL *grad_tau) {
    const int64_t rows = batch * n * heads, size = rows * d;
    const REAL r2 = (REAL)(radius * radius), dd = (REAL)d;
    const REAL *incoming[3] = {grad_q, grad_k, grad_v};
    for (int64_t r = 0; r < rows; r++) {
        const int64_t h = r % heads, bn = r / heads, bb = bn / n, nn = bn % n;
        const REAL *in[3];
        for (int i = 0; i < 3; i++)
            in[i] = incoming[i] + bb * strides[3 * i] + nn * strides[3 * i + 1] +
                    h * strides[3 * i + 2];
        for (int which = 0; which < 2; which++) {
            const REAL *v = rotated + which * size + r * d, *g = in[which];
            const REAL inv = inverse[which * rows + r], coef = coefficient[which * rows + r];
            REAL *out = grads + which * size + r * d;
            REAL along = 0;
            for (int64_t a = 0; a < d; a++) along += v[a] * g[a];
            const REAL radial = coef * inv * inv * along / dd;
            for (int64_t a = 0; a < d; a++) out[a] = g[a] * coef - v[a] * radial;
            if (rotation != NULL) {  /* back through the rotation: times the conjugate phase */
                const REAL *phase = rotation + (nn * heads + h) * d;
                for (int64_t a = 0; a < d; a += 2) {
                    const REAL c = phase[a], s = phase[a + 1], x = out[a], y = out[a + 1];
                    out[a] = x * c + y * s;
                    out[a + 1] = y * c - x * s;
                }
            }
            if (which == 0) grad_tau[r] = along * inv / dd;
        }
        grad_beta[r] = NAME(phi_row_vjp)(in[2], value + r * d, u_start[r], beta[h], r2, d,
                                         grads + 2 * size + r * d);
    }
}
