/* Compiled row passes of the one-step cosine spin block (spinformer.nn._native): the per-head
 * elementwise math around the projections and the attention, and the block's per-head RMS
 * norm, each in one pass over the rows.
 * Plain C11 and POSIX threads, no Python or torch headers; float32 and float64 versions of
 * every function. */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define SPF_MAX_THREADS 64

typedef void (*spf_run)(const void *arguments, int64_t first, int64_t last);

#ifndef _OPENMP
typedef struct {
    spf_run run;
    const void *arguments;
    int64_t first, last;
} spf_chunk;

static void *spf_worker(void *given) {
    const spf_chunk *chunk = given;
    chunk->run(chunk->arguments, chunk->first, chunk->last);
    return NULL;
}
#endif

/* run(arguments, first, last) over [0, count) in `threads` contiguous ranges. Built with
 * OpenMP, the ranges run on the OpenMP runtime's threads -- the process's one libgomp, whose
 * pool torch's own parallel operations use (threads of our own would compete with its workers
 * spinning after each operation); otherwise the first range runs on the calling thread and the
 * others on threads started for the call (a range whose thread cannot be started runs on the
 * calling thread). The ranges are disjoint and each item's work does not depend on the split. */
static void spf_parallel(int64_t threads, int64_t count, spf_run run, const void *arguments) {
    if (threads > count) threads = count;
    if (threads > SPF_MAX_THREADS) threads = SPF_MAX_THREADS;
    if (threads <= 1) {
        if (count > 0) run(arguments, 0, count);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads((int)threads) schedule(static, 1)
    for (int64_t i = 0; i < threads; i++)
        run(arguments, count * i / threads, count * (i + 1) / threads);
#else
    spf_chunk chunks[SPF_MAX_THREADS];
    pthread_t ids[SPF_MAX_THREADS];
    int started[SPF_MAX_THREADS] = {0};
    for (int64_t i = 0; i < threads; i++)
        chunks[i] = (spf_chunk){run, arguments, count * i / threads, count * (i + 1) / threads};
    for (int64_t i = 1; i < threads; i++)
        started[i] = pthread_create(&ids[i], NULL, spf_worker, &chunks[i]) == 0;
    run(arguments, chunks[0].first, chunks[0].last);
    for (int64_t i = 1; i < threads; i++) {
        if (started[i])
            pthread_join(ids[i], NULL);
        else
            run(arguments, chunks[i].first, chunks[i].last);
    }
#endif
}

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
