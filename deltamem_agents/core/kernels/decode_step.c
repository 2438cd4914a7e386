/* One δ-mem layer's decode step for one token per conversation, in one call (see core/native.py).
 *
 * The same math as core/fastpath.py's `_decode_host`:
 *   p = W x + b                      (W = [W_q; W_k; W_v; W_β], b with the input centring folded in)
 *   q̂, k̂ = normalise(tanh(p_q)), normalise(tanh(p_k)) per head   (when `normalize`)
 *   β = sigmoid(p_β), written when `write` and mean(β) ≥ threshold
 *   read = S q̂;  S' = κ⊙S + (ω⊙v − ε⊙(S k̂)) k̂ᵀ   (κ, ε, ω from β by the update mode)
 *   δ = C read  (C = the pre-scaled correction matrices stacked: δq rows, then δo rows; passed transposed, Cᵀ[R, rows])
 * δq is added in place to `q_out_buf` (q_proj's output) and δo written to `o_buf`. S_new always receives the new
 * state (S itself when the token is not written; S_new may then alias S).
 * `step_row` returns a bit set: 1 = the state was written, 2 = a read was made (corrections filled). */
#include <string.h>
#include <math.h>

enum { MODE_STANDARD = 0, MODE_LAMBDA_OUTSIDE = 1, MODE_NO_LAMBDA = 2 };
enum { ROW_WRITE = 1, ROW_VALID = 2 };

/* A layer's constant arguments (core/native.py's `_Layer` mirrors this layout). */
typedef struct {
    const float *proj, *bias, *corr_t;
    int d, H, r, G, normalize, mode, q_rows, o_rows;
    float threshold;
} dm_layer;

static float dot(const float *restrict a, const float *restrict b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int j = 0; j < n; j++) s += a[j] * b[j];
    return s;
}

static int step_row(const dm_layer *L, const float *restrict x, const float *S, float *S_new,
                    float *restrict q_out_buf, float *restrict o_buf, int write, int state_zero) {
    const float *restrict proj = L->proj, *restrict bias = L->bias, *restrict corr_t = L->corr_t;
    const int d = L->d, H = L->H, r = L->r, G = L->G, normalize = L->normalize, mode = L->mode;
    const int q_rows = L->q_rows, o_rows = L->o_rows;
    const float threshold = L->threshold;
    const int R = H * r, P = 3 * R + G;
    float p[P];
    for (int i = 0; i < P; i++) p[i] = dot(proj + (long)i * d, x, d) + bias[i];
    float *q = p, *k = p + R, *v = p + 2 * R, *g = p + 3 * R;
    int rankwise = G == R;
    if (write) {
        float mean = 0.0f;
        for (int i = 0; i < G; i++) {
            g[i] = 1.0f / (1.0f + expf(-g[i]));
            mean += g[i];
        }
        mean /= (float)G;
        if (threshold > 0.0f && mean < threshold) write = 0;
    }
    if (normalize) {
        for (int h = 0; h < 2 * H; h++) {
            float *u = p + h * r, n2 = 0.0f;
            for (int i = 0; i < r; i++) {
                u[i] = tanhf(u[i]);
                n2 += u[i] * u[i];
            }
            float n = sqrtf(n2);
            n = n < 1e-6f ? 1e-6f : n;
            for (int i = 0; i < r; i++) u[i] /= n;
        }
    }
    int flags = 0;
    float read[R > 0 ? R : 1], sk[R > 0 ? R : 1];
    if (!state_zero) {
        for (int h = 0; h < H; h++)
            for (int i = 0; i < r; i++) {
                const float *row = S + ((long)h * r + i) * r;
                read[h * r + i] = dot(row, q + h * r, r);
                sk[h * r + i] = dot(row, k + h * r, r);
            }
        flags |= 2;
    }
    if (write) {
        for (int h = 0; h < H; h++)
            for (int i = 0; i < r; i++) {
                int hi = h * r + i;
                float b = rankwise ? g[hi] : g[h];
                float keep = 1.0f, erase = b, wr = b;
                if (mode == MODE_STANDARD) keep = 1.0f - b;
                else if (mode == MODE_LAMBDA_OUTSIDE) { keep = 1.0f - b; erase = keep * b; }
                float u = state_zero ? wr * v[hi] : wr * v[hi] - erase * sk[hi];
                const float *row = S + (long)hi * r;
                float *restrict out = S_new + (long)hi * r;
                const float *kh = k + h * r;
                if (mode == MODE_NO_LAMBDA)
                    for (int j = 0; j < r; j++) out[j] = row[j] + u * kh[j];
                else
                    for (int j = 0; j < r; j++) out[j] = keep * row[j] + u * kh[j];
            }
        flags |= 1;
    } else if (S_new != S) {
        memcpy(S_new, S, sizeof(float) * (size_t)H * r * r);
    }
    if ((flags & 2) && corr_t) {  /* column by column: each step a vectorised axpy over the output rows */
        const int rows = q_rows + o_rows;
        for (int i = 0; i < o_rows; i++) o_buf[i] = 0.0f;
        for (int j = 0; j < R; j++) {
            const float *c = corr_t + (long)j * rows;
            const float a = read[j];
#pragma omp simd
            for (int i = 0; i < q_rows; i++) q_out_buf[i] += a * c[i];
#pragma omp simd
            for (int i = 0; i < o_rows; i++) o_buf[i] += a * c[q_rows + i];
        }
    }
    return flags;
}

/* B rows (one token each, conversations side by side): x[B,d], S and S_new [B,H,r,r], q_out_buf [B,q_stride],
 * o_buf [B,o_rows]; row_flags[b]: ROW_VALID (a padding row only reads nothing) | ROW_WRITE (a write candidate).
 * `state_zero`: every row's S is zero. A row that makes no read gets a zero δo row (its δq is left as it is).
 * Returns the bits of all rows or-ed together. */
int dm_decode_rows(const dm_layer *L, int B, const float *x, const float *S, float *S_new, float *q_out_buf,
                   int q_stride, float *o_buf, const unsigned char *row_flags, int state_zero) {
    const long sz = (long)L->H * L->r * L->r;
    int all = 0;
    for (int b = 0; b < B; b++) {
        const float *Sb = S + b * sz;
        float *Sn = S_new + b * sz, *ob = o_buf ? o_buf + (long)b * L->o_rows : 0;
        int f = 0;
        if (row_flags[b] & ROW_VALID)
            f = step_row(L, x + (long)b * L->d, Sb, Sn, q_out_buf + (long)b * q_stride, ob,
                         row_flags[b] & ROW_WRITE, state_zero);
        else if (Sn != Sb)
            memcpy(Sn, Sb, sizeof(float) * (size_t)sz);
        if (!(f & 2) && ob)
            for (int i = 0; i < L->o_rows; i++) ob[i] = 0.0f;
        all |= f;
    }
    return all;
}
