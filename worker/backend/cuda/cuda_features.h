/* Which model_config features the CUDA backend computes. Plain C: built with and without
 * nvcc, so the refusal is unit-tested on any machine. */
#ifndef SLUICE_BACKEND_CUDA_FEATURES_H
#define SLUICE_BACKEND_CUDA_FEATURES_H

#include <stdbool.h>
#include <stddef.h>

#include "worker/model/model.h"

/* 0 when the CUDA backend computes everything c asks (the families' additions only when
 * families: --cuda-options families=1); otherwise -1 with a message naming the architecture and
 * the first feature it lacks: a model is refused at load, never computed wrong on the GPU. */
int cuda_config_supported(const struct model_config *c, bool families, char *err, size_t errlen);

#endif
