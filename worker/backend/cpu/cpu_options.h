/* The CPU backend's options (struct cpu_options, worker/backend/backend.h) as worker flags: the
 * flag table entries both `sluice-worker` and `sluice-worker bench` take, so the two parse them
 * alike and into the same fields. f32_weights and fp8_act_rows have no flag: tests and benchmarks
 * set them in the struct. */
#ifndef SLUICE_BACKEND_CPU_OPTIONS_H
#define SLUICE_BACKEND_CPU_OPTIONS_H

#include "common/flags.h"
#include "worker/backend/backend.h"

/* The flag table entries for o (a struct cpu_options *). */
#define CPU_OPTIONS_FLAG_SPECS(o)                                                                              \
    {"threads", FLAG_INT, &(o)->n_threads, NULL, "N", "CPU: threads (0: all cores)", 0, 1024}

#endif
