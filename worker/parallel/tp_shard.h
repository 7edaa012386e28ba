/* A rank's model: the whole model's struct with each weight replaced by the part the sharding
 * plan gives the rank (tp_plan.h), so that a backend loads a shard exactly as it loads a model.
 *
 * Rows are contiguous in a row-major matrix, so a block of rows (column-parallel weights, the
 * vocabulary's rows, bias elements) is a view into the model's own mapping: no copy. A block
 * of columns (o_proj, down) is copied, row by row, in the weight's dtype; a GGUF block type
 * cut inside its blocks is dequantized to float32 instead. Replicated tensors (norms) are the
 * model's own. --load-format dummy tensors have no data and their values depend on their
 * index in the whole tensor, so their parts are filled as float32 from the whole tensor's
 * indices (tensor_range_to_f32); dummy norms stay dummies. A sparse layer's experts are split
 * inside each expert (tp_plan.h). The shard borrows the model: free the shard first. */
#ifndef SLUICE_WORKER_PARALLEL_TP_SHARD_H
#define SLUICE_WORKER_PARALLEL_TP_SHARD_H

#include <stddef.h>

#include "worker/model/model.h"
#include "worker/parallel/tp_plan.h"

int tp_shard_make(struct model **out, const struct model *m, const struct tp_plan *p, int rank, char *err,
                  size_t errlen);
/* Frees what tp_shard_make made (never model_free: the shard's source is the model's). */
void tp_shard_free(struct model *shard);

#endif
