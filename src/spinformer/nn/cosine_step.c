/* Compiled row passes of the one-step cosine spin block (spinformer.nn._native): the per-head
 * elementwise math around the projections and the attention, each in one pass over the rows.
 * Plain C11, no Python or torch headers; float32 and float64 versions of every function. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define REAL float
#define SQRT sqrtf
#define NAME(x) x##_f32
#include "cosine_step.h"
#undef REAL
#undef SQRT
#undef NAME

#define REAL double
#define SQRT sqrt
#define NAME(x) x##_f64
#include "cosine_step.h"
