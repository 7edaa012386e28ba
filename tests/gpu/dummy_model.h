/* A model with random weights (--load-format dummy) from a config.json given as a string, for
 * the GPU tests that need real shapes without weight files. */
#ifndef SLUICE_TESTS_GPU_DUMMY_MODEL_H
#define SLUICE_TESTS_GPU_DUMMY_MODEL_H

#include "tests/gpu/gpu_test.h"

#include <unistd.h>

#include "worker/model/model.h"

/* The model, or NULL after a failed check that says why. model_load reads the config from a
 * directory, so the string goes through a temporary one, removed before returning. */
static inline struct model *gt_dummy_model(const char *config_json)
{
    char dir[] = "/tmp/sluice_gpu_XXXXXX", path[256], err[512];
    if (!mkdtemp(dir)) {
        GT_CHECK(0, "mkdtemp for a dummy model's config.json");
        return NULL;
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    int ok = f && fputs(config_json, f) >= 0;
    if (f && fclose(f)) ok = 0;
    struct model *m = NULL;
    int rc = ok ? model_load(&m, dir, MODEL_LOAD_DUMMY, err, sizeof err) : -1;
    if (!ok) snprintf(err, sizeof err, "cannot write %s", path);
    unlink(path);
    rmdir(dir);
    GT_CHECK(rc == 0, "dummy model from its config.json%s%s", rc ? ": " : "", rc ? err : "");
    return rc == 0 ? m : NULL;
}

#endif
